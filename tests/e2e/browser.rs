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

/// axe-core's script: installed with npm under the target directory on first use (the test
/// tooling's cache; nothing in the repository), read from there afterwards.
fn axe_source() -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("axe");
    let script = dir.join("node_modules/axe-core/axe.min.js");
    if !script.exists() {
        std::fs::create_dir_all(&dir).expect("the axe folder");
        let status = crate::support::hermetic(&mut Command::new("npm"))
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--silent",
                "axe-core@4",
            ])
            .current_dir(&dir)
            .status()
            .expect("npm: install Node.js and npm to check accessibility with axe-core");
        assert!(
            status.success(),
            "npm install axe-core failed in {}",
            dir.display()
        );
    }
    std::fs::read_to_string(&script).expect("axe.min.js")
}

/// Runs axe-core in the page; panics naming every serious or critical violation.
async fn axe_check(c: &Client, axe: &str, page: &str) {
    let loaded = c
        .execute(&format!("{axe}\n;return typeof axe;"), vec![])
        .await
        .expect("inject axe-core");
    assert_eq!(loaded, "object", "{page}: axe-core did not load");
    let found = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then((r) => done(r.violations
                 .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                 .map((v) => v.impact + ' ' + v.id + ': ' + v.help + ' at ' +
                      v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', '))))
               .catch((e) => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("run axe-core");
    let list = found.as_array().cloned().unwrap_or_default();
    assert!(
        list.is_empty(),
        "{page}: accessibility violations:\n{}",
        list.iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The page does not scroll sideways (tables scroll inside themselves or stack).
async fn no_sideways_scroll(c: &Client, page: &str) {
    let v = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth,
                     document.documentElement.clientWidth, document.body.scrollWidth];",
            vec![],
        )
        .await
        .expect("widths");
    let (scroll, inner) = (v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(0));
    if scroll > inner {
        let wide = c
            .execute(
                "return Array.from(document.querySelectorAll('body *'))
                   .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
                                  )
                   .slice(0, 8)
                   .map((e) => e.tagName + '#' + e.id + '.' + e.className + ' ' +
                                Math.round(e.getBoundingClientRect().right));",
                vec![],
            )
            .await
            .expect("the wide elements");
        panic!(
            "{page}: the page scrolls sideways ({scroll} px of content in {inner} px; {v}): {wide}"
        );
    }
}

async fn wait_for(c: &Client, css: &str, secs: u64) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(secs))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// The incident path at a laptop's and a phone's width: an agent misbehaves (a scope denial, a
/// budget refusal, a loop), the open dashboard lists it under attention without a reload, the
/// operator follows its session's events, halts it, and from the phone approves another
/// agent's request in one click. Every page is checked with axe-core (no serious or critical
/// violation) and for sideways scrolling, and screenshotted at both widths.
#[tokio::test]
async fn an_operator_runs_an_incident_at_laptop_and_phone_width() {
    let db = TestDb::new().await;
    let axe = axe_source();
    let agent = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("agent handle");
    let ops = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("operator handle");
    ops.operators()
        .add("ada", OperatorRole::Admin, PW)
        .await
        .expect("add admin");
    ops.scope()
        .register(gov_sdk::ScopePolicy::new("rogue-bot".parse().expect("id")))
        .await
        .expect("scope");
    ops.cost()
        .register(
            gov_sdk::BudgetPolicy::new("rogue-bot".parse().expect("id"))
                .per_day(gov_sdk::MicroUsd(1)),
        )
        .await
        .expect("budget");
    for a in ["rogue-bot", "pay-bot"] {
        agent.presence().heartbeat(a).await.expect("beat");
    }
    let (_console, base) = serve(db.url());
    let (_driver, c) = browser().await;
    c.goto(&format!("{base}/login")).await.expect("login page");
    for (w, h) in [(390, 844), (1440, 900)] {
        c.set_window_size(w, h).await.expect("size");
        axe_check(&c, &axe, &format!("/login at {w} px")).await;
        no_sideways_scroll(&c, &format!("/login at {w} px")).await;
        shot(&c, &format!("incident-{w}-"), "login").await;
    }
    c.find(Locator::Css("input[name=username]"))
        .await
        .expect("user")
        .send_keys("ada")
        .await
        .expect("type");
    c.find(Locator::Css("input[name=password]"))
        .await
        .expect("password")
        .send_keys(PW)
        .await
        .expect("type");
    c.find(Locator::Css("form[action='/login'] button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sign in");
    wait_for(&c, "#attention-empty", 10).await;
    // The dashboard follows the event feed before the agent misbehaves.
    wait_for(&c, "#dash[data-stream-open=true]", 10).await;

    // The agent misbehaves through the real gates.
    assert!(
        agent
            .scope()
            .check("rogue-bot", "wire_money")
            .await
            .is_err()
    );
    assert!(
        agent
            .cost()
            .reserve("rogue-bot", "s-7", "gpt-5-mini", 1_000, Some(1_000))
            .await
            .is_err()
    );
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        let v = agent
            .loops()
            .record(
                "rogue-bot",
                "s-7",
                "refund",
                &serde_json::json!({ "id": 7 }),
            )
            .await;
        if !matches!(v, Ok(gov_sdk::LoopVerdict::Ok { .. })) {
            break;
        }
    }
    wait_for(&c, "#attention-rogue-bot", 5).await;
    let shown_after = started.elapsed();
    eprintln!("the attention list showed the agent {shown_after:?} after its loop");
    let marker = c
        .execute(
            "return document.getElementById('attention-empty') === null;",
            vec![],
        )
        .await
        .expect("read");
    assert_eq!(marker, true, "the attention list replaced its empty state");

    // Its session's events, then the agent's page: halt it.
    c.goto(&format!("{base}/events?agent=rogue-bot&session=s-7"))
        .await
        .expect("session events");
    wait_for(&c, "#events tr.sev-high", 10).await;
    c.goto(&format!("{base}/agents/rogue-bot"))
        .await
        .expect("agent");
    let halt_reason = c
        .find(Locator::Css(
            "form[action='/agents/rogue-bot/halt'] input[name=reason]",
        ))
        .await;
    if let Ok(field) = halt_reason {
        field.send_keys("loops on refunds").await.expect("type");
        c.find(Locator::Css("form[action='/agents/rogue-bot/halt'] button"))
            .await
            .expect("halt button")
            .click()
            .await
            .expect("halt");
        wait_for(&c, "p.flash", 10).await;
    }
    assert!(ops.presence().is_halted("rogue-bot").await.expect("read"));

    // Another agent asks; the operator approves from the phone in one click.
    let req = agent
        .gates()
        .request(
            "pay-bot",
            Some("s-8"),
            "wire_money",
            &serde_json::json!({ "amount": 120, "to": "ACME GmbH" }),
        )
        .await
        .expect("request");
    c.set_window_size(390, 844).await.expect("phone size");
    c.goto(&format!("{base}/")).await.expect("dashboard");
    let row = format!("#dash-gate-{}", req.id);
    wait_for(&c, &row, 10).await;
    no_sideways_scroll(&c, "dashboard at 390 px").await;
    shot(&c, "incident-390-", "dashboard-pending").await;
    c.find(Locator::Css(&format!("{row} button[type=submit]")))
        .await
        .expect("approve button")
        .click()
        .await
        .expect("approve");
    wait_for(&c, "p.flash", 10).await;
    let approval = agent
        .gates()
        .wait_for(req.id, Duration::from_secs(10))
        .await
        .expect("approved");
    assert_eq!(approval.request_id, req.id);

    // The operator opens the misbehaving agent's session trace from its events.
    c.set_window_size(1440, 900).await.expect("laptop size");
    c.goto(&format!("{base}/events?agent=rogue-bot&session=s-7"))
        .await
        .expect("session events");
    wait_for(&c, "#session-trace", 10)
        .await
        .click()
        .await
        .expect("open the trace");
    let trace = wait_for(&c, "#trace", 10)
        .await
        .text()
        .await
        .expect("trace");
    for want in ["loop.detected", "budget.denied"] {
        assert!(trace.contains(want), "the trace shows {want}: {trace}");
    }

    // pay-bot spends; the costs page agrees with `governance budget`, run as a process.
    ops.cost()
        .register(
            gov_sdk::BudgetPolicy::new("pay-bot".parse().expect("id"))
                .per_session(gov_sdk::MicroUsd(2_000_000))
                .per_day(gov_sdk::MicroUsd(5_000_000))
                .per_day_tokens(100_000),
        )
        .await
        .expect("budget");
    for n in 1..=3 {
        agent
            .cost()
            .track(
                "pay-bot",
                "s-8",
                "gpt-4o-mini",
                gov_sdk::TokenUsage {
                    input_tokens: 1_000 * n,
                    output_tokens: 400 * n,
                    cached_input_tokens: 0,
                },
            )
            .await
            .expect("spend");
    }
    let out = crate::support::governance(&db)
        .args(["--json", "budget", "pay-bot", "--session", "s-8"])
        .output()
        .expect("run governance budget");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("budget JSON");
    let usd = |v: &serde_json::Value| {
        gov_sdk::MicroUsd(v.as_i64().unwrap_or_else(|| panic!("micro-USD: {v}"))).to_string()
    };
    let status = &cli["status"];
    let expected: Vec<Vec<String>> = vec![
        vec![
            "session s-8".into(),
            "USD".into(),
            usd(&status["session"]["spent"]),
            usd(&status["session"]["reserved"]),
            usd(&status["policy"]["per_session"]),
        ],
        vec![
            "today (UTC)".into(),
            "USD".into(),
            usd(&status["day"]["spent"]),
            usd(&status["day"]["reserved"]),
            usd(&status["policy"]["per_day"]),
        ],
        vec![
            "today (UTC)".into(),
            "tokens".into(),
            status["day"]["spent_tokens"].to_string(),
            status["day"]["reserved_tokens"].to_string(),
            status["policy"]["per_day_tokens"].to_string(),
        ],
    ];
    c.goto(&format!("{base}/costs?agent=pay-bot&session=s-8"))
        .await
        .expect("costs");
    wait_for(&c, "#budget", 10).await;
    let shown = c
        .execute(
            "return [...document.querySelectorAll('#budget tr')].slice(1).map(r => [...r.cells].slice(0, 5).map(c => c.textContent));",
            vec![],
        )
        .await
        .expect("read the caps");
    assert_eq!(
        shown,
        serde_json::json!(expected),
        "the page's caps are the CLI's"
    );
    let model = &cli["by_model"][0];
    let today = c
        .execute(
            "const r = document.querySelector('#today tr[data-agent=\"pay-bot\"]'); return [r.dataset.model, r.querySelector('.calls').textContent, r.querySelector('.cost').textContent];",
            vec![],
        )
        .await
        .expect("read today's row");
    assert_eq!(
        today,
        serde_json::json!([
            model["model"],
            model["calls"].to_string(),
            usd(&model["cost"])
        ]),
        "today's spend by model is the CLI's"
    );

    // Every page at both widths: axe-core, no sideways scroll, a screenshot.
    for (w, h) in [(1440, 900), (390, 844)] {
        c.set_window_size(w, h).await.expect("size");
        for (path, name) in [
            ("/", "dashboard"),
            ("/agents", "agents"),
            ("/agents/rogue-bot", "agent"),
            ("/approvals", "approvals"),
            ("/events", "events"),
            ("/events?kind=*.denied", "events-denied"),
            ("/costs", "costs"),
            ("/costs?agent=pay-bot&session=s-8", "costs-budget"),
            ("/topology", "topology"),
            ("/agents/rogue-bot/sessions/s-7", "session-trace"),
            ("/chain", "chain"),
            ("/users", "users"),
            ("/gateway-keys", "gateway-keys"),
        ] {
            c.goto(&format!("{base}{path}")).await.expect("page");
            wait_for(&c, "main h1", 10).await;
            let page = format!("{path} at {w} px");
            axe_check(&c, &axe, &page).await;
            no_sideways_scroll(&c, &page).await;
            shot(&c, &format!("incident-{w}-"), name).await;
        }
    }
    c.close().await.expect("close the browser");
    agent.close().await;
    ops.close().await;
}
