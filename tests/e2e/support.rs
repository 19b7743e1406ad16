//! Helpers: a configured `governance` command, seeding, and superuser tampering.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;
use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;

/// The audit secret the tests write with.
pub(crate) const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
/// Another strong secret (an attacker's, or a wrong configuration).
pub(crate) const OTHER_SECRET: &str =
    "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";

/// This test process's private home: HOME and the XDG folders of every process a test starts
/// point here (nextest runs each test in its own process), inside the run's temporary folder.
pub(crate) fn private_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gov-e2e-home-{}", std::process::id()));
        for sub in ["data", "state", "config", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).expect("the test's private home");
        }
        dir
    })
}

/// Makes `cmd` hermetic: none of the caller's `GOVERNANCE_*` or `PG*` variables, HOME and the
/// XDG folders in [`private_home`], no colours. Every process a test starts goes through this.
pub(crate) fn hermetic(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("GOVERNANCE_") || k.starts_with("PG") {
            cmd.env_remove(k.as_ref());
        }
    }
    let home = private_home();
    cmd.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("NO_COLOR", "1")
}

/// The `governance` binary with a hermetic environment and nothing configured.
pub(crate) fn bare_governance() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("governance"));
    hermetic(&mut cmd);
    cmd
}

/// `governance` with a hermetic environment pointing at `db`.
pub(crate) fn governance(db: &TestDb) -> Command {
    let mut cmd = Command::from_std(bare_governance());
    cmd.env("GOVERNANCE_DATABASE_URL", db.url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("NO_COLOR", "1");
    cmd
}

/// Logs `n` events to the `default` chain through the SDK.
pub(crate) async fn seed(db: &TestDb, n: u64) {
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    for i in 0..n {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .session("s-1")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.close().await;
}

/// Runs `governance verify` and returns (exit code, stdout, stderr).
pub(crate) fn verify(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = governance(db)
        .arg("verify")
        .args(args)
        .output()
        .expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
