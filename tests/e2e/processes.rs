//! Several processes writing one chain at once, and the demo a newcomer runs.

use gov_sdk::Governance;
use gov_testdb::TestDb;

use crate::support::{SECRET, governance};

#[tokio::test]
async fn two_processes_appending_to_one_chain_never_fork_it() {
    let db = TestDb::new().await;
    let spawn = || {
        let mut cmd = crate::support::bare_governance();
        cmd.env("GOVERNANCE_DATABASE_URL", db.url())
            .env("GOVERNANCE_AUDIT_SECRET", SECRET)
            .args([
                "--json",
                "demo",
                "--chain",
                "shared",
                "--events",
                "1500",
                "--sessions",
                "8",
                "--no-serve",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn governance")
    };
    let (a, b) = (spawn(), spawn());
    // A child still running when the test fails is killed, never left behind.
    struct Reaped(Option<std::process::Child>);
    impl Drop for Reaped {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    for mut child in [Reaped(Some(a)), Reaped(Some(b))] {
        let out = child.0.take().expect("a child").wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    let head = gov.audit().head("shared").await.unwrap().unwrap();
    assert_eq!(head.seq, 3000);
    let report = gov.audit().verify_named("shared").await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events_checked, 3000);
}

#[tokio::test]
async fn the_demo_logs_verifies_and_reports() {
    let db = TestDb::new().await;
    let out = governance(&db)
        .args(["demo", "--events", "300", "--no-serve"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("logged    300 tool events"), "{stdout}");
    // Every gate was walked, and the chain holds those events too.
    for line in [
        "scope     search_docs allowed; delete_customer denied",
        "the next was refused: budget.denied",
        "loop.detected (warn)",
        "approval  skipped with --no-serve",
        "calls through the SDK's guard to a simulated gpt-4o-mini",
        "demo-agent-2 halted by its service",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(stdout.contains("verify    clean"), "{stdout}");
    assert!(!stdout.contains("postgres@"), "credentials shown: {stdout}");
    // The chain it wrote verifies from a separate `governance verify` as well.
    let (code, stdout, _) = crate::support::verify(&db, &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("verified"), "{stdout}");
}
