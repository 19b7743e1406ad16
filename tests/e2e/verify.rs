//! `governance verify` exit codes and output for every kind of bad input.

use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::{governance, seed, verify};

#[tokio::test]
async fn a_clean_chain_exits_0_and_counts_its_events() {
    let db = TestDb::new().await;
    seed(&db, 42).await;
    let (code, stdout, _) = verify(&db, &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("verified 42 events in 1 chain: clean"),
        "{stdout}"
    );
    let (code, stdout, _) = verify(&db, &["--json", "--chain", "default"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["status"], "clean");
    assert_eq!(v["events_checked"], 42);
    assert_eq!(v["chains"][0]["head_seq"], 42);
}

#[tokio::test]
async fn nothing_to_verify_is_not_a_pass() {
    let db = TestDb::new().await;
    let (code, _, stderr) = verify(&db, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing was verified"), "{stderr}");
    let (code, _, stderr) = verify(&db, &["--chain", "nope"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("\"nope\""), "{stderr}");
}

#[tokio::test]
async fn configuration_errors_exit_2_and_say_what_to_do() {
    let db = TestDb::new().await;
    seed(&db, 1).await;
    governance(&db)
        .env_remove("GOVERNANCE_DATABASE_URL")
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("set GOVERNANCE_DATABASE_URL"));
    governance(&db)
        .env_remove("GOVERNANCE_AUDIT_SECRET")
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("openssl rand -hex 32"));
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", "password1234")
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("weak"));
    for url in [
        "postgres://u:hunter2@127.0.0.1:notaport/db",
        "mysql://u:hunter2@h/db",
    ] {
        governance(&db)
            .args(["verify", "--database-url", url])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("URL").and(predicate::str::contains("hunter2").not()));
    }
    governance(&db).args(["verify", "--bogus"]).assert().code(2);
    governance(&db)
        .args(["verify", "--audit-secret-file", "/nonexistent/secret"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("/nonexistent/secret"));
}

#[tokio::test]
async fn unreachable_storage_exits_3_without_leaking_the_url() {
    let db = TestDb::new().await;
    governance(&db)
        .args([
            "verify",
            "--database-url",
            "postgres://u:hunter2@127.0.0.1:1/db",
            "--json",
        ])
        .assert()
        .code(3)
        .stdout(
            predicate::str::contains("\"exit_code\":3")
                .and(predicate::str::contains("\"kind\":\"unavailable\"")),
        )
        .stderr(
            predicate::str::contains("unreachable").and(predicate::str::contains("hunter2").not()),
        );
}

#[tokio::test]
async fn an_unmigrated_database_says_to_migrate() {
    let db = TestDb::empty().await;
    governance(&db)
        .arg("verify")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("governance migrate"));
}
