//! Shared helpers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gov_sdk::{AuditEvent, AuditRecord, EventFilter, Governance};
use gov_testdb::TestDb;

/// A strong test secret (hex, 32 bytes).
pub(crate) const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
/// Another strong secret: an attacker's, or a wrong configuration.
pub(crate) const OTHER_SECRET: &str =
    "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";

pub(crate) async fn connect(db: &TestDb) -> Governance {
    Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect")
}

pub(crate) fn event(agent: &str, kind: &str, n: u64) -> AuditEvent {
    AuditEvent::builder(agent, kind)
        .session("s-1")
        .payload(serde_json::json!({ "n": n }))
        .build()
        .expect("valid event")
}

/// The password of the operator accounts tests make.
pub(crate) const OPERATOR_PW: &str = "correct horse battery staple";

/// An operator account `name` (role operator) made on `gov` and signed in.
pub(crate) async fn operator(gov: &Governance, name: &str) -> gov_sdk::Operator {
    gov.operators()
        .add(name, gov_sdk::OperatorRole::Operator, OPERATOR_PW)
        .await
        .expect("add an operator");
    gov.operators()
        .authenticate(name, OPERATOR_PW)
        .await
        .expect("the operator signs in")
}

/// Set by `cargo xtask faults`: the folder fault tests write their figures to, one
/// `<scenario>.json` each.
pub(crate) const FAULTS_REPORT: &str = "GOV_TEST_FAULTS_REPORT";

/// Writes a fault scenario's figures to the fault report, when `cargo xtask faults` asks.
pub(crate) fn report(scenario: &str, figures: &serde_json::Value) {
    if let Some(dir) = std::env::var_os(FAULTS_REPORT) {
        let path = std::path::Path::new(&dir).join(format!("{scenario}.json"));
        let bytes = serde_json::to_vec_pretty(figures).expect("figures are JSON");
        std::fs::write(&path, bytes).expect("write the fault report");
    }
}

/// Waits for `f` to hold, checking every 5 ms, and fails naming `what` when it has not held
/// within `limit` (a liveness bound, not a speed figure); how long it took.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// A folder of its own under the system's temporary folder, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!(
            "gov-test-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&d).expect("a temporary folder");
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every row of every chain, in seq order per chain.
pub(crate) async fn all_rows(gov: &Governance) -> Vec<AuditRecord> {
    let mut rows = Vec::new();
    for chain in gov.audit().chain_ids().await.expect("chain ids") {
        let mut after = 0;
        loop {
            let page = gov
                .audit()
                .events(&EventFilter {
                    chain_id: Some(chain.parse().expect("chain id")),
                    after_seq: Some(after),
                    limit: Some(5_000),
                    ..EventFilter::default()
                })
                .await
                .expect("read events");
            let Some(last) = page.last() else { break };
            after = last.seq;
            rows.extend(page);
        }
    }
    rows
}
