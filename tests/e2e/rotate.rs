//! `governance rotate-chain-key` as a process: the new secret from the environment or stdin,
//! never argv; verification afterwards with the keyring; a tampered chain is not rotated.

use predicates::prelude::*;

use crate::support::{OTHER_SECRET, SECRET, governance, seed, verify};

const THIRD: &str = "c4d1e8f2a9b3c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2";

#[tokio::test]
async fn rotation_appends_a_marker_and_the_chain_verifies_with_the_previous_secret() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 3).await;
    // The new secret from the environment.
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET_NEW", OTHER_SECRET)
        .args([
            "rotate-chain-key",
            "--operator",
            "alice",
            "--reason",
            "yearly",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("rotated chain default at seq 4"))
        .stdout(predicate::str::contains(OTHER_SECRET).not());
    // Verified with the new secret and the old one as previous: clean; without it, the rows
    // before the rotation cannot be checked (a configuration problem, exit 2), and the
    // message says what to set.
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .env("GOVERNANCE_AUDIT_SECRET_PREVIOUS", SECRET)
        .arg("verify")
        .assert()
        .success();
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "not verifiable with the configured keys",
        ))
        .stderr(predicate::str::contains("GOVERNANCE_AUDIT_SECRET_PREVIOUS"));
    // The second rotation takes the new secret from stdin, and the old keys from a keyring
    // file, which must not be readable by others.
    let dir = std::env::temp_dir().join(format!("gov-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ring = dir.join("keyring");
    std::fs::write(&ring, format!("# retired keys\n{SECRET}\n")).expect("write keyring");
    let out = governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .env("GOVERNANCE_AUDIT_KEYRING_FILE", &ring)
        .args(["rotate-chain-key", "--json"])
        .write_stdin(format!("{THIRD}\n"))
        .output()
        .expect("run");
    #[cfg(unix)]
    {
        // The file was created with the default umask (readable by others): refused.
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
        std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let out = governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .env("GOVERNANCE_AUDIT_KEYRING_FILE", &ring)
        .args(["rotate-chain-key", "--json"])
        .write_stdin(format!("{THIRD}\n"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], "rotated");
    assert_eq!(v["chains"][0]["seq"], 5);
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", THIRD)
        .env(
            "GOVERNANCE_AUDIT_SECRET_PREVIOUS",
            format!("{SECRET}, {OTHER_SECRET}"),
        )
        .arg("verify")
        .assert()
        .success()
        .stdout(predicate::str::contains("5 events"))
        .stdout(predicate::str::contains("rotation-aware"));
    // The report says its verification is rotation-aware and finds the chain clean.
    let out = governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", THIRD)
        .env(
            "GOVERNANCE_AUDIT_SECRET_PREVIOUS",
            format!("{SECRET},{OTHER_SECRET}"),
        )
        .args(["report", "--json"])
        .output()
        .expect("run");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verification"]["rotation_aware"], true);
    assert_eq!(v["verification"]["status"], "clean");
    assert_eq!(
        v["verification"]["key_ids"].as_array().map(Vec::len),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rotation_refuses_bad_input_and_tampered_chains() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 3).await;
    // No new secret anywhere, a weak one, the same one.
    governance(&db)
        .arg("rotate-chain-key")
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("GOVERNANCE_AUDIT_SECRET_NEW"));
    governance(&db)
        .arg("rotate-chain-key")
        .write_stdin("changeme\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the new audit secret is refused"));
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET_NEW", SECRET)
        .arg("rotate-chain-key")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is the current one"));
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET_NEW", OTHER_SECRET)
        .args(["rotate-chain-key", "--chain", "bad chain"])
        .assert()
        .code(2);
    // A secret on the command line is not an option.
    governance(&db)
        .args(["rotate-chain-key", "--new-secret", OTHER_SECRET])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unexpected argument"));
    // A tampered chain is not rotated.
    db.tamper(&["UPDATE audit_events SET payload = '{}' WHERE seq = 2"])
        .await;
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET_NEW", OTHER_SECRET)
        .arg("rotate-chain-key")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing was rotated"));
    let (code, _, stderr) = verify(&db, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("seq 2: modified row"), "{stderr}");
}
