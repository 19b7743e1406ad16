//! Operator commands never touch a service's spool: `governance tail` or `verify` on a
//! database whose service left a spool behind adopts none of it (only a service's handle on
//! that database replays it).

use std::time::Duration;

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::{Proxy, TestDb};

use crate::support::{SECRET, governance};

fn event(n: u64) -> AuditEvent {
    AuditEvent::builder("agent-1", "tool.call")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("event")
}

async fn service(url: &str, root: &std::path::Path) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .spool_dir(root)
        .acquire_timeout(Duration::from_secs(1))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn operator_commands_adopt_no_spool() {
    let db = TestDb::new().await;
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let root = tmp.path().to_path_buf();
    // A service logs one event, loses the database, spools three, and stops.
    let (proxy, through) = Proxy::for_url(db.url()).await;
    let gov = service(&through, &root).await;
    gov.audit().log(event(0)).await.expect("log");
    proxy.cut();
    for n in 1..4 {
        let at = gov.audit().log(event(n)).await.expect("spooled");
        assert!(at.seq().is_none());
    }
    let dir = gov.audit().spool_dir().expect("a spool").to_owned();
    gov.close().await;
    drop(gov);
    let spool_files = || std::fs::read_dir(&dir).expect("the spool folder").count();
    assert_eq!(spool_files(), 1);

    // Operator commands, pointed at the same spool folder, leave it alone.
    governance(&db)
        .env("GOVERNANCE_SPOOL_DIR", &root)
        .arg("verify")
        .assert()
        .success();
    let out = governance(&db)
        .env("GOVERNANCE_SPOOL_DIR", &root)
        .args(["--json", "tail", "--since", "1h", "--limit", "1"])
        .timeout(Duration::from_secs(20))
        .assert()
        .success();
    let tailed = String::from_utf8_lossy(&out.get_output().stdout)
        .lines()
        .count();
    assert_eq!(tailed, 1);
    assert_eq!(spool_files(), 1, "the spool is still there");
    let reader = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .expect("connect");
    assert_eq!(
        reader
            .audit()
            .head("default")
            .await
            .expect("head")
            .map(|h| h.seq),
        Some(1)
    );

    // The service's next handle on this database replays it.
    let gov = service(db.url(), &root).await;
    let start = std::time::Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the spool did not drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        reader
            .audit()
            .head("default")
            .await
            .expect("head")
            .map(|h| h.seq),
        Some(4)
    );
    gov.close().await;
    reader.close().await;
}
