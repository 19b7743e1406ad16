//! `governance checkpoint` and `governance verify --checkpoint FILE` as processes: a checkpoint
//! held outside the database catches a cut tail that the chain alone no longer shows.

use predicates::prelude::*;

use crate::support::{governance, seed, tamper, verify};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gov-checkpoint-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(name)
}

/// A key file with mode 600 holding a hex seed.
fn key_file() -> std::path::PathBuf {
    let path = temp("operator.key");
    std::fs::write(&path, "4f".repeat(16) + &"a1".repeat(16)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

#[tokio::test]
async fn a_checkpoint_file_proves_a_cut_tail() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 10).await;
    let key = format!("file://{}", key_file().display());
    let heads = temp("heads.json");
    governance(&db)
        .args(["checkpoint", "--signing-key", &key, "--output"])
        .arg(&heads)
        .assert()
        .success()
        .stdout(predicate::str::contains("signed chain default at seq 10"));
    let path = heads.to_str().expect("utf-8");
    governance(&db)
        .args(["verify", "--checkpoint", path])
        .assert()
        .success();
    tamper(
        &db,
        &[
            "DELETE FROM audit_events WHERE seq > 6",
            "UPDATE chain_heads h SET seq = 6, head_hmac = e.row_hmac FROM audit_events e WHERE e.seq = 6",
            "DELETE FROM checkpoints",
        ],
    )
    .await;
    // The chain alone looks whole; against the checkpoint the cut shows.
    assert_eq!(verify(&db, &[]).0, 0);
    let (code, _, stderr) = verify(&db, &["--checkpoint", path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("seq 10: missing row"), "{stderr}");
    assert!(stderr.contains("tail was cut off"), "{stderr}");
}

#[tokio::test]
async fn checkpoint_and_verify_refuse_bad_input() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 2).await;
    governance(&db)
        .arg("checkpoint")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("GOVERNANCE_SIGNING_KEY"));
    governance(&db)
        .args(["checkpoint", "--signing-key", "https://keys.example/k"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "file:///path, env://VAR or ephemeral",
        ));
    // A key file others may read is refused.
    let open = temp("open.key");
    std::fs::write(&open, "4f".repeat(32)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        governance(&db)
            .args(["checkpoint", "--signing-key"])
            .arg(format!("file://{}", open.display()))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("chmod 600"));
    }
    governance(&db)
        .env("GOVERNANCE_SIGNING_KEY", "ephemeral")
        .args(["checkpoint", "--chain", "nope"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope"));
    let junk = temp("junk.json");
    std::fs::write(&junk, "{}").expect("junk");
    governance(&db)
        .args(["verify", "--checkpoint"])
        .arg(&junk)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a checkpoint file"));
    governance(&db)
        .args(["verify", "--checkpoint", "/nonexistent/heads.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read the checkpoint file"));
}
