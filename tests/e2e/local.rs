//! Zero setup: with no database URL anywhere, the CLI uses a local SQLite file in the platform's
//! data directory, says where it is, and every command works on it; several processes can
//! write one SQLite chain at once without forking it. No Postgres is involved in these tests.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A temporary home for one test (its data directory holds the local database).
struct Home(std::path::PathBuf);

impl Home {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("gov-e2e-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp home");
        Self(dir)
    }

    fn data(&self) -> std::path::PathBuf {
        self.0.join("data")
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `governance` with nothing configured: no GOVERNANCE_* variables, HOME and XDG_DATA_HOME in
/// the test's own directory.
fn bare(home: &Home) -> Command {
    let mut cmd = crate::support::bare_governance();
    cmd.env("HOME", &home.0)
        .env("XDG_DATA_HOME", home.data())
        .env("NO_COLOR", "1");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn with_nothing_configured_the_demo_and_every_command_use_a_local_sqlite_file() {
    let home = Home::new("local");
    let db = home.data().join("governance").join("governance.db");
    let (code, stdout, stderr) = run(bare(&home).args(["demo", "--events", "200", "--no-serve"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "created the local SQLite database {}",
            db.display()
        )),
        "it says where the database is: {stderr}"
    );
    assert!(db.exists(), "the file is where it said");
    // Only its owner may read the database (operator password hashes, the whole record), its
    // directory or the kept demo secret.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&db), 0o600, "the local database file");
        assert_eq!(mode(db.parent().expect("dir")), 0o700, "the data directory");
        assert_eq!(mode(&db.with_file_name("demo-audit-secret")), 0o600);
    }
    assert!(stdout.contains("logged    200 tool events"), "{stdout}");
    let sqlite_migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
    .expect("the SQLite migrations")
    .count();
    assert!(
        stdout.contains(&format!(
            "migrate   {sqlite_migrations} applied to the new local database"
        )),
        "a database just created is not reported as current: {stdout}"
    );
    // Without a console nobody could decide a request, so none is left waiting.
    assert!(
        stdout.contains("approval  skipped with --no-serve"),
        "{stdout}"
    );
    assert!(stdout.contains("verify    clean"), "{stdout}");

    // Later commands find the same database and the demo's kept secret, with nothing set.
    let (code, stdout, stderr) = run(bare(&home).args(["verify"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("clean"), "{stdout}");
    assert!(
        stderr.contains("using the local SQLite database"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(bare(&home).args(["--json", "budget", "demo-agent"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let (code, stdout, stderr) = run(bare(&home).args(["tail", "--since", "1d", "--limit", "3"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let report = home.0.join("report.json");
    let (code, stdout, stderr) = run(bare(&home)
        .args(["report", "--format", "article12", "--output"])
        .arg(&report));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&report).expect("report written");
    assert!(text.contains("\"rotation_aware\""), "{text}");
}

#[test]
fn two_processes_appending_to_one_sqlite_chain_never_fork_it() {
    let home = Home::new("sqlite-procs");
    let url = format!("sqlite://{}", home.0.join("shared.db").display());
    let spawn = || {
        bare(&home)
            .env("GOVERNANCE_DATABASE_URL", &url)
            .env("GOVERNANCE_AUDIT_SECRET", crate::support::SECRET)
            .args([
                "--json",
                "demo",
                "--chain",
                "shared",
                "--events",
                "600",
                "--sessions",
                "6",
                "--no-serve",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn governance")
    };
    // The first run creates and migrates the file; then two write at once.
    let (code, _, stderr) = run(bare(&home)
        .env("GOVERNANCE_DATABASE_URL", &url)
        .args(["migrate"]));
    assert_eq!(code, 0, "{stderr}");
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, stdout, stderr) = run(bare(&home)
        .env("GOVERNANCE_DATABASE_URL", &url)
        .env("GOVERNANCE_AUDIT_SECRET", crate::support::SECRET)
        .args(["--json", "verify", "--chain", "shared"]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let chain = &v["chains"][0];
    // Each demo run logs its events plus the gate walk's; both runs' rows are all there, in one
    // unbroken sequence.
    assert!(chain["events_checked"].as_u64().unwrap_or(0) >= 1200, "{v}");
    assert_eq!(v["status"], "clean", "{v}");
}

/// Waits for `url` to answer over plain HTTP/1.1 and returns the response.
fn http_get(addr: &str, path: &str, deadline: Instant) -> String {
    use std::io::{Read as _, Write as _};
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            );
            let mut body = String::new();
            if s.read_to_string(&mut body).is_ok() && !body.is_empty() {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the console never answered on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_serves_the_console_from_the_local_database() {
    let home = Home::new("local-console");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr = format!("127.0.0.1:{port}");
    let mut child = bare(&home)
        .args(["demo", "--events", "40", "--bind", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = String::new();
    // Read until the demo says it is serving.
    while let Some(Ok(line)) = lines.next() {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(&addr) {
            break;
        }
        assert!(Instant::now() < deadline, "{seen}");
    }
    let health = http_get(&addr, "/health/governance", deadline);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let login = http_get(&addr, "/login", deadline);
    assert!(login.starts_with("HTTP/1.1 200"), "{login}");
    assert!(
        Path::new(&home.data().join("governance").join("governance.db")).exists(),
        "{seen}"
    );
    let _ = child.0.kill();
}

#[tokio::test]
async fn tail_in_another_process_sees_events_appended_to_a_sqlite_file() {
    let home = Home::new("sqlite-tail");
    let url = format!("sqlite://{}", home.0.join("tail.db").display());
    let admin = gov_sdk::admin::Admin::connect_or_create(&url)
        .await
        .expect("admin");
    admin.migrate().await.expect("migrate");
    admin.close().await;
    let gov = gov_sdk::Governance::builder()
        .database_url(&url)
        .audit_secret(crate::support::SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let child = bare(&home)
        .env("GOVERNANCE_DATABASE_URL", &url)
        .env("GOVERNANCE_AUDIT_SECRET", crate::support::SECRET)
        .args(["--json", "tail", "--limit", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    // Give the follower time to start listening, then append from this (other) process: only
    // the notification table, polled, can tell the tail about these rows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        let ev = gov_sdk::AuditEvent::builder("agent-7", "tool.call")
            .session("s-1")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    // The tail exits after 3 events; a tail that never sees them is killed and fails the test.
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll tail").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("tail output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per event"))
        .collect();
    assert_eq!(kinds.len(), 3, "{stdout}");
    assert!(kinds.iter().all(|e| e["agent_id"] == "agent-7"), "{stdout}");
    gov.close().await;
}
