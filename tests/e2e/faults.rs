//! Faults of operator commands run as processes (issue 14, item 10): an import into a chain a
//! service is appending to, and two `governance migrate` at once on a fresh SQLite file.

use std::process::Stdio;
use std::time::{Duration, Instant};

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;

use crate::support::SECRET;

/// `governance` pointed at `url` (hermetic, through the support helpers).
fn at(url: &str) -> std::process::Command {
    let mut cmd = crate::support::bare_governance();
    cmd.env("GOVERNANCE_DATABASE_URL", url)
        .env("GOVERNANCE_AUDIT_SECRET", SECRET);
    cmd
}

fn output(cmd: &mut std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two `governance migrate` started together on a new SQLite file both succeed (they take
/// turns), ten times over; the file then verifies clean and is at the latest schema.
#[test]
fn two_migrates_at_once_on_a_fresh_sqlite_file_both_succeed() {
    for round in 0..10 {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("governance.db").display());
        let children: Vec<_> = (0..2)
            .map(|_| {
                at(&url)
                    .arg("migrate")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn governance migrate")
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect();
        for o in &outs {
            assert!(
                o.status.success(),
                "round {round}: a concurrent migrate failed ({:?}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // Exactly one of them applied the migrations.
        let applied: Vec<String> = outs
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .collect();
        assert_eq!(
            applied.iter().filter(|s| s.starts_with("applied ")).count(),
            1,
            "round {round}: one applied the migrations: {applied:?}"
        );
        assert_eq!(
            applied
                .iter()
                .filter(|s| s.starts_with("schema is current"))
                .count(),
            1,
            "round {round}: the other found the schema current: {applied:?}"
        );
        let (code, stdout, stderr) = output(at(&url).arg("migrate"));
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("schema is current"), "{stdout}");
    }
}

async fn seed_sqlite(url: &str, n: usize) {
    let gov = Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let mut set = tokio::task::JoinSet::new();
    for t in 0..8 {
        let gov = gov.clone();
        set.spawn(async move {
            for i in 0..n / 8 {
                let ev = AuditEvent::builder(format!("agent-{t}"), "tool.call")
                    .payload(serde_json::json!({ "n": i }))
                    .build()
                    .expect("event");
                gov.audit().log(ev).await.expect("log");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("seed");
    }
    gov.close().await;
}

/// An import into a chain that a service starts appending to while the import runs either
/// lands whole, with the service's rows after it, or is refused with nothing of that chain
/// written: it never stops half-way with advice that cannot succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_racing_a_service_on_its_chain_is_whole_or_refused_before_writing() {
    const ROWS: usize = 4_000;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let source = format!("sqlite://{}", dir.path().join("source.db").display());
    seed_sqlite(&source, ROWS).await;
    let file = dir.path().join("chains.jsonl");
    let (code, _, stderr) = output(at(&source).args(["export", "--output"]).arg(&file));
    assert_eq!(code, 0, "export: {stderr}");

    let target = TestDb::new().await;
    let service = Governance::builder()
        .database_url(target.app_url())
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("the service connects");
    let import = at(target.url())
        .args(["import", "--input"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn governance import");
    // The service appends as soon as the import has written anything to the chain.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut appended = 0;
    loop {
        let head = service.audit().head("default").await.expect("head");
        if head.is_some_and(|h| h.seq > 0) {
            for n in 0..3 {
                let ev = AuditEvent::builder("service", "tool.call")
                    .payload(serde_json::json!({ "n": n }))
                    .build()
                    .expect("event");
                service.audit().log(ev).await.expect("the service logs");
                appended += 1;
            }
            break;
        }
        assert!(Instant::now() < deadline, "the import never wrote a row");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let out = tokio::task::spawn_blocking(move || import.wait_with_output())
        .await
        .expect("join")
        .expect("wait for import");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let head = service
        .audit()
        .head("default")
        .await
        .expect("head")
        .expect("the chain exists")
        .seq;
    if out.status.success() {
        // Whole: the file's rows, then the service's.
        assert_eq!(head, (ROWS + appended) as i64, "{stdout}");
    } else {
        // Refused before writing: only the service's rows are there.
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            head, appended as i64,
            "nothing of the chain was written: {stderr}"
        );
        assert!(
            !stderr.contains("run the same import again"),
            "no advice that cannot succeed: {stderr}"
        );
    }
    assert!(
        service
            .audit()
            .verify_all()
            .await
            .expect("verify")
            .is_clean(),
        "the chain verifies: {stdout}{stderr}"
    );
    service.close().await;
}
