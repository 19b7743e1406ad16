//! `governance checkpoint` and `governance verify --checkpoint FILE` as processes: a checkpoint
//! held outside the database catches a cut tail that the chain alone no longer shows.

use predicates::prelude::*;

use crate::support::{governance, seed, verify};

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
    db.tamper(&[
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

/// `governance ARGS --json` parsed, after asserting success.
fn json_of(db: &gov_testdb::TestDb, args: &[&str]) -> serde_json::Value {
    let out = governance(db)
        .args(args)
        .arg("--json")
        .output()
        .expect("run governance");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test]
async fn a_checkpoint_note_signs_the_root_of_the_rows_never_a_forged_tile() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 300).await;
    let key = format!("file://{}", key_file().display());
    // The honest root (the tiles are written from the rows here).
    let honest = json_of(&db, &["prove", "--seq", "1", "--size", "300"])["root"]
        .as_str()
        .expect("root")
        .to_owned();
    // Someone who bypasses the triggers forges the first tile: roots read from tiles change.
    db.tamper(&["UPDATE audit_tree_tiles SET hashes = decode(repeat('ab', 8192), 'hex'), root = decode(repeat('cd', 32), 'hex') WHERE level = 0 AND idx = 0"],
    )
    .await;
    let forged = json_of(&db, &["prove", "--seq", "300"])["root"]
        .as_str()
        .expect("root")
        .to_owned();
    assert_ne!(forged, honest, "the forged tile reaches tile-based roots");
    let v = json_of(
        &db,
        &[
            "checkpoint",
            "--signing-key",
            &key,
            "--format",
            "note",
            "--log-name",
            "example.com/gov",
        ],
    );
    assert_eq!(v["format"], "governance.checkpoint-notes.v1");
    let cp = &v["checkpoints"][0];
    assert_eq!(cp["root"].as_str(), Some(honest.as_str()), "{v}");
    assert_eq!(cp["origin"], "example.com/gov/default");
    // The note is a C2SP checkpoint that the log's vkey verifies.
    let vkey = gov_audit::note::Vkey::parse(cp["vkey"].as_str().expect("vkey")).expect("vkey");
    let (note, verified) =
        gov_audit::note::open(cp["note"].as_str().expect("note"), &[vkey]).expect("verifies");
    assert_eq!(verified.len(), 1);
    let text = gov_audit::note::CheckpointText::parse(&note.text).expect("checkpoint");
    assert_eq!(text.size, 300);
    assert_eq!(hex::encode(text.root), honest);
    // Without a log name the note form is refused.
    governance(&db)
        .args(["checkpoint", "--signing-key", &key, "--format", "note"])
        .env_remove("GOVERNANCE_LOG_NAME")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--log-name"));
}
