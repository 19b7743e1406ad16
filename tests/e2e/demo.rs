//! The demo a newcomer runs: its figures agree on every surface (the events, `governance
//! budget`, the console and the report), and running it again never locks them out or leaves
//! half-made state behind.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gov_testdb::TestDb;

use crate::support::{SECRET, bare_governance, governance};

/// `governance` as a process to spawn, pointing at `db`.
fn process(db: &TestDb) -> std::process::Command {
    let mut cmd = bare_governance();
    cmd.env("GOVERNANCE_DATABASE_URL", db.url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET);
    cmd
}

/// A free port on the loopback interface (released for the process that binds it next).
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    format!("127.0.0.1:{port}")
}

/// One HTTP/1.1 request, `Connection: close`; returns the whole response (head and body).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the console");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

/// Waits until something answers on `addr`.
fn wait_for_port(addr: &str, child: &mut Child, deadline: Instant) {
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the server exited before listening"
        );
        assert!(Instant::now() < deadline, "nothing listened on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Signs in and returns the session cookie (`name=value`).
fn sign_in(addr: &str, user: &str, password: &str) -> String {
    let resp = http(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("username={user}&password={password}"),
    );
    assert!(resp.starts_with("HTTP/1.1 303"), "sign-in failed: {resp}");
    resp.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

fn micros(v: &serde_json::Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

fn dollars(m: i64) -> String {
    gov_sdk::MicroUsd(m).to_string()
}

#[tokio::test]
async fn the_demos_figures_agree_on_every_surface_to_the_micro_dollar() {
    let db = TestDb::new().await;
    let out = governance(&db)
        .args(["--json", "demo", "--events", "120", "--no-serve"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let demo: serde_json::Value = serde_json::from_str(stdout.trim()).expect("demo JSON");
    let demo_calls = demo["llm"]["calls"].as_u64().expect("calls");
    let demo_cost = micros(&demo["llm"]["cost_micros"]);
    assert!(demo_calls > 5 && demo_cost > 0, "{demo}");

    // The events: every call has its llm.request and llm.response, and the responses' costs add
    // up to what the demo says it spent.
    let gov = gov_sdk::Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let of_kind = |kind: &str| gov_sdk::EventFilter {
        kind: Some(kind.to_owned()),
        limit: Some(10_000),
        ..Default::default()
    };
    let responses = gov
        .audit()
        .events(&of_kind("llm.response"))
        .await
        .expect("responses");
    let requests = gov
        .audit()
        .events(&of_kind("llm.request"))
        .await
        .expect("requests");
    gov.close().await;
    let event_cost: i64 = responses
        .iter()
        .map(|r| {
            let p: serde_json::Value = serde_json::from_str(&r.payload).expect("payload JSON");
            micros(&p["cost_micros"])
        })
        .sum();
    assert_eq!(responses.len() as u64, demo_calls);
    assert_eq!(requests.len() as u64, demo_calls);
    assert_eq!(
        event_cost, demo_cost,
        "events against the demo's own figure"
    );

    // `governance budget`: today's spend, by model.
    let out = governance(&db)
        .args(["--json", "budget", "demo-agent"])
        .output()
        .expect("run budget");
    assert!(out.status.success());
    let budget: serde_json::Value = serde_json::from_slice(&out.stdout).expect("budget JSON");
    let budget_cost: i64 = budget["by_model"]
        .as_array()
        .expect("by_model")
        .iter()
        .map(|m| micros(&m["cost"]))
        .sum();
    let budget_calls: u64 = budget["by_model"]
        .as_array()
        .expect("by_model")
        .iter()
        .map(|m| m["calls"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(budget_cost, event_cost, "budget against the events");
    assert_eq!(micros(&budget["status"]["day"]["spent"]), event_cost);
    assert_eq!(budget_calls, demo_calls);

    // The report: one governed call per llm.request, every response counted.
    let out = governance(&db)
        .args(["--json", "report", "--as", "json"])
        .output()
        .expect("run report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    assert_eq!(
        report["coverage"]["governed_calls"].as_u64(),
        Some(demo_calls)
    );
    assert_eq!(
        report["events_by_kind"]["llm.response"].as_u64(),
        Some(demo_calls)
    );

    // The console, signed in over HTTP: the dashboard's spend today and the costs page.
    let mut add = process(&db)
        .args([
            "console",
            "add-user",
            "--username",
            "figures",
            "--role",
            "viewer",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("add-user");
    let password = "figures-agree-to-the-micro-dollar";
    writeln!(add.stdin.take().expect("stdin"), "{password}").expect("write password");
    assert!(add.wait().expect("add-user").success());
    let addr = free_addr();
    let server = process(&db)
        .args(["console", "serve", "--bind", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut server = Kill(server);
    wait_for_port(
        &addr,
        &mut server.0,
        Instant::now() + Duration::from_secs(60),
    );
    let cookie = sign_in(&addr, "figures", password);
    let dashboard = http(&addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert!(dashboard.starts_with("HTTP/1.1 200"), "{dashboard}");
    assert!(
        dashboard.contains(&dollars(event_cost)),
        "the dashboard's spend today is {}: {dashboard}",
        dollars(event_cost)
    );
    let costs = http(&addr, "GET", "/costs", &[("Cookie", &cookie)], "");
    assert!(costs.starts_with("HTTP/1.1 200"), "{costs}");
    let row = format!("<td>demo-agent</td><td>gpt-4o-mini</td><td>{demo_calls}</td>");
    assert!(costs.contains(&row), "{row}: {costs}");
    assert!(
        costs.contains(&format!("<td>{}</td></tr>", dollars(event_cost))),
        "the costs page shows {}: {costs}",
        dollars(event_cost)
    );
}

/// Starts a serving demo on `addr` and returns it with the password it printed.
fn serving_demo(db: &TestDb, addr: &str) -> (Kill, String) {
    let child = process(db)
        .args(["demo", "--events", "8", "--bind", addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the demo");
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut password = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read the demo's output");
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("console")
            && let Some((_, rest)) = line.split_once("password ")
        {
            password = Some(rest.trim().to_owned());
        }
        if line.starts_with("workload") {
            break;
        }
    }
    let password = password.unwrap_or_else(|| panic!("no password printed: {seen}"));
    assert!(
        seen.contains("keeps working while the console is served"),
        "{seen}"
    );
    (child, password)
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let pool = db.admin_pool().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .expect(sql);
    pool.close().await;
    n
}

#[tokio::test]
async fn a_second_demo_on_a_taken_port_writes_nothing_and_the_password_is_kept() {
    let db = TestDb::empty().await;
    // On a port already taken, before anything else: nothing is created, not even the schema.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let out = governance(&db)
        .args(["demo", "--events", "8", "--bind", &taken_addr])
        .output()
        .expect("run the demo");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing was written") && stderr.contains("--bind"),
        "{stderr}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        .await,
        0,
        "a demo that cannot serve migrates nothing"
    );

    // A served demo, its console signed in to, and the live workload appending meanwhile.
    let addr = free_addr();
    let (mut first, password) = serving_demo(&db, &addr);
    let cookie = sign_in(&addr, "demo", &password);
    let before = count(&db, "SELECT count(*) FROM audit_events").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&db, "SELECT count(*) FROM audit_events").await <= before {
        assert!(Instant::now() < deadline, "the workload appended nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second demo on the port the first one serves: refused, nothing written, and the first
    // demo's password and session still work.
    let events = count(&db, "SELECT count(*) FROM audit_events WHERE kind <> 'tool.call' AND kind <> 'tool.result' AND kind NOT LIKE 'llm.%'").await;
    let requests = count(&db, "SELECT count(*) FROM gate_requests").await;
    let out = governance(&db)
        .args(["demo", "--events", "8", "--bind", &addr])
        .output()
        .expect("run the demo");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM audit_events WHERE kind <> 'tool.call' AND kind <> 'tool.result' AND kind NOT LIKE 'llm.%'").await,
        events,
        "the refused demo logged nothing (only the first demo's workload appends)"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM gate_requests").await,
        requests
    );
    let page = http(&addr, "GET", "/approvals", &[("Cookie", &cookie)], "");
    assert!(page.starts_with("HTTP/1.1 200"), "still signed in: {page}");
    sign_in(&addr, "demo", &password);
    // Ctrl-C: the demo stops, and its undecided request does not stay waiting.
    let pid = first.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM gate_requests WHERE status = 'pending'"
        )
        .await,
        0,
        "no request is left waiting"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM oversight_decisions WHERE kind = 'gate.denied' \
             AND operator = 'demo-operator'"
        )
        .await,
        1
    );

    // The next demo that serves reuses the kept password.
    let (_second, again) = serving_demo(&db, &free_addr());
    assert_eq!(again, password, "the demo password is kept between runs");
    drop(taken);
}
