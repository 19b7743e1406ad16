//! The console in headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver): sign in, see a gate request made by another process appear without a reload,
//! approve it, and see that process's `wait_for` return. Saves a screenshot of every page under
//! `target/tmp/console-screenshots/`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use gov_sdk::{Governance, OperatorRole};
use gov_testdb::TestDb;

use crate::support::SECRET;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PW: &str = "correct horse battery staple";

/// Kills a child process when dropped, so a failed test leaves nothing running.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `governance console serve` on a free port; returns the process and its URL.
fn serve(db_url: &str) -> (Killed, String) {
    let mut child = crate::support::bare_governance()
        .env("GOVERNANCE_DATABASE_URL", db_url)
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .args(["console", "serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the console");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (Killed(child), url)
}

async fn browser() -> (Killed, Client) {
    for bin in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver); .ci/run does"
        );
    }
    let port = free_port();
    let driver = Killed(
        // Hermetic like every process a test starts: Chromium writes its profile, crash reports
        // and dconf cache under HOME and the XDG folders.
        crate::support::hermetic(&mut Command::new(CHROMEDRIVER))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-background-networking"],
        }
    });
    let caps = match caps {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object"),
    };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = ClientBuilder::rustls()
            .expect("tls")
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match attempt {
            Ok(client) => return (driver, client),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver did not start a session: {e}"),
        }
    }
}

async fn shot(client: &Client, prefix: &str, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{prefix}{name}.png")), png).expect("write screenshot");
}

#[tokio::test]
async fn an_operator_approves_in_the_browser_and_the_waiting_agent_goes_on() {
    let db = TestDb::new().await;
    approve_in_the_browser(db.url(), &db.app_url(), "").await;
}

/// The same on a SQLite file: the console is another process, so the request reaches its page
/// and the approval reaches the waiting agent only through the notification table, polled.
#[tokio::test]
async fn on_sqlite_an_operator_approves_in_the_browser_and_the_waiting_agent_goes_on() {
    let dir = std::env::temp_dir().join(format!("gov-e2e-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}/console.db", dir.display());
    let admin = gov_sdk::admin::Admin::connect_or_create(&url)
        .await
        .expect("admin");
    admin.migrate().await.expect("migrate");
    admin.close().await;
    approve_in_the_browser(&url, &url, "sqlite-").await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Signs in, sees a request made by this process appear without a reload, approves it, sees
/// `wait_for` return, visits every page (screenshots named with `shots` first) and verifies.
async fn approve_in_the_browser(db_url: &str, agent_url: &str, shots: &str) {
    let agent = Governance::builder()
        .database_url(agent_url)
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("agent handle");
    let ops = Governance::builder()
        .database_url(db_url)
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("operator handle");
    ops.operators()
        .add("ada", OperatorRole::Admin, PW)
        .await
        .expect("add admin");
    agent.presence().heartbeat("pay-bot").await.expect("beat");
    let (_console, base) = serve(db_url);
    let (_driver, c) = browser().await;

    c.goto(&format!("{base}/login")).await.expect("login page");
    shot(&c, shots, "login").await;
    c.find(Locator::Css("input[name=username]"))
        .await
        .expect("user field")
        .send_keys("ada")
        .await
        .expect("type");
    c.find(Locator::Css("input[name=password]"))
        .await
        .expect("password field")
        .send_keys(PW)
        .await
        .expect("type");
    c.find(Locator::Css("form[action='/login'] button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign in");
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#pending-count"))
        .await
        .expect("the dashboard after signing in");
    shot(&c, shots, "dashboard").await;

    // The approvals page is open; a separate SDK handle (as another process would) asks.
    c.goto(&format!("{base}/approvals"))
        .await
        .expect("approvals");
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#approvals"))
        .await
        .expect("approvals table");
    c.execute("window.__no_reload = 'still here'; return null;", vec![])
        .await
        .expect("mark the page");
    // Give the page's event stream a moment to connect before the request is made.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let req = agent
        .gates()
        .request(
            "pay-bot",
            Some("s-1"),
            "wire_money",
            &serde_json::json!({ "amount": 120 }),
        )
        .await
        .expect("request");
    let row = format!("#gate-{}", req.id);
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&row))
        .await
        .expect("the request appears without a reload");
    let marker = c
        .execute("return window.__no_reload;", vec![])
        .await
        .expect("read the mark");
    assert_eq!(marker, "still here", "the page was reloaded");
    shot(&c, shots, "approvals").await;

    let waiter = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .gates()
                .wait_for(req.id, Duration::from_secs(30))
                .await
        })
    };
    c.find(Locator::Css(&format!(
        "{row} form[action$='/approve'] input[name=reason]"
    )))
    .await
    .expect("reason field")
    .send_keys("looks right")
    .await
    .expect("type");
    c.find(Locator::Css(&format!(
        "{row} form[action$='/approve'] button"
    )))
    .await
    .expect("approve button")
    .click()
    .await
    .expect("approve");
    let approval = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("wait_for returned")
        .expect("task")
        .expect("approved");
    assert_eq!(approval.request_id, req.id);
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("p.flash"))
        .await
        .expect("the confirmation");

    // Every other page renders; one screenshot each.
    for (path, name, marker) in [
        ("/agents", "agents", "#agent-pay-bot"),
        ("/events", "events", "#events"),
        ("/costs", "costs", "h1"),
        ("/chain", "chain", "h1"),
        ("/users", "users", "h1"),
    ] {
        c.goto(&format!("{base}{path}")).await.expect("page");
        c.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(marker))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        shot(&c, shots, name).await;
    }
    // The chain page verifies in the background and shows the result.
    c.goto(&format!("{base}/chain")).await.expect("chain");
    c.find(Locator::Css("#verify-form button"))
        .await
        .expect("verify button")
        .click()
        .await
        .expect("verify");
    let result = c
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("#verify-result"))
        .await
        .expect("a verification result");
    let text = result.text().await.expect("text");
    assert!(text.starts_with("clean:"), "{text}");
    shot(&c, shots, "chain-verified").await;

    // The events page connects its live stream.
    c.goto(&format!("{base}/events")).await.expect("events");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = c
            .find(Locator::Css("#live-status"))
            .await
            .expect("status")
            .text()
            .await
            .expect("text");
        if text == "live" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event stream never connected: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.close().await.expect("close the browser");
    agent.close().await;
    ops.close().await;
}
