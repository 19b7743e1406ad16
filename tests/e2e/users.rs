//! `governance console …` user management and `governance budget`, run as processes.

use gov_sdk::{BudgetPolicy, Governance, MicroUsd, OperatorRole, TokenUsage};
use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::{SECRET, governance};

const PW: &str = "a long enough password";

#[tokio::test]
async fn users_are_added_listed_disabled_and_reset_without_passwords_on_the_command_line() {
    let db = TestDb::new().await;
    governance(&db)
        .args([
            "console",
            "add-user",
            "--username",
            "alice",
            "--role",
            "operator",
        ])
        .write_stdin(format!("{PW}\n"))
        .assert()
        .success()
        .stdout(predicate::str::contains("added alice (operator)"));
    // Duplicates, unknown roles, short or missing passwords: usage errors that say why.
    governance(&db)
        .args([
            "console",
            "add-user",
            "--username",
            "alice",
            "--role",
            "viewer",
        ])
        .write_stdin(format!("{PW}\n"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
    governance(&db)
        .args(["console", "add-user", "--username", "bob", "--role", "root"])
        .write_stdin(format!("{PW}\n"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values"));
    governance(&db)
        .args([
            "console",
            "add-user",
            "--username",
            "bob",
            "--role",
            "viewer",
        ])
        .write_stdin("short\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("at least 12"));
    governance(&db)
        .args([
            "console",
            "add-user",
            "--username",
            "bob",
            "--role",
            "viewer",
        ])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no password on standard input"));

    let out = governance(&db)
        .args(["--json", "console", "list-users"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["users"].as_array().unwrap().len(), 1);
    assert_eq!(v["users"][0]["role"], "operator");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("argon2"),
        "a hash was printed"
    );

    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    gov.operators().authenticate("alice", PW).await.unwrap();
    governance(&db)
        .args(["console", "disable-user", "--username", "alice"])
        .assert()
        .success();
    assert!(gov.operators().authenticate("alice", PW).await.is_err());
    governance(&db)
        .args(["console", "disable-user", "--username", "alice", "--enable"])
        .assert()
        .success();
    governance(&db)
        .args(["console", "reset-password", "--username", "alice"])
        .write_stdin("another long password\n")
        .assert()
        .success();
    assert!(gov.operators().authenticate("alice", PW).await.is_err());
    gov.operators()
        .authenticate("alice", "another long password")
        .await
        .unwrap();
    governance(&db)
        .args(["console", "disable-user", "--username", "nobody"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no user named nobody"));
}

#[tokio::test]
async fn each_user_command_ends_the_sessions_it_revokes_and_set_role_changes_the_role() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    gov.operators()
        .add("alice", OperatorRole::Operator, PW)
        .await
        .unwrap();
    let sign_in = |password: &'static str| {
        let gov = gov.clone();
        async move {
            let op = gov
                .operators()
                .authenticate("alice", password)
                .await
                .unwrap();
            let (token, _) = gov
                .operators()
                .start_session(&op, std::time::Duration::from_secs(3600))
                .await
                .unwrap();
            token
        }
    };
    let live = |token: String| {
        let gov = gov.clone();
        async move { gov.operators().session(&token).await.unwrap() }
    };
    // reset-password, disable-user then enable: the session taken before is gone each time.
    let stolen = sign_in(PW).await;
    governance(&db)
        .args(["console", "reset-password", "--username", "alice"])
        .write_stdin("another long password\n")
        .assert()
        .success();
    assert!(
        live(stolen).await.is_none(),
        "a session outlived reset-password"
    );
    let stolen = sign_in("another long password").await;
    governance(&db)
        .args(["console", "disable-user", "--username", "alice"])
        .assert()
        .success();
    governance(&db)
        .args(["console", "disable-user", "--username", "alice", "--enable"])
        .assert()
        .success();
    assert!(
        live(stolen).await.is_none(),
        "disable then enable revived a session"
    );
    // set-role: the session ends, the next one carries the new role.
    let stolen = sign_in("another long password").await;
    governance(&db)
        .args([
            "console",
            "set-role",
            "--username",
            "alice",
            "--role",
            "viewer",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("alice is now viewer"));
    assert!(live(stolen).await.is_none(), "a session outlived set-role");
    let token = sign_in("another long password").await;
    let session = live(token).await.expect("a new session");
    assert_eq!(session.operator.role(), OperatorRole::Viewer);
    let out = governance(&db)
        .args([
            "--json",
            "console",
            "set-role",
            "--username",
            "alice",
            "--role",
            "admin",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "admin");
    governance(&db)
        .args([
            "console",
            "set-role",
            "--username",
            "nobody",
            "--role",
            "admin",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no user named nobody"));
    governance(&db)
        .args([
            "console",
            "set-role",
            "--username",
            "alice",
            "--role",
            "root",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values"));
    gov.close().await;
}

#[tokio::test]
async fn budget_shows_caps_spend_and_models() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .unwrap();
    gov.cost()
        .register(
            BudgetPolicy::new("billing".parse().unwrap())
                .per_day(MicroUsd::from_cents(500))
                .per_session_tokens(10_000),
        )
        .await
        .unwrap();
    let usage = TokenUsage {
        input_tokens: 2_000,
        output_tokens: 500,
        cached_input_tokens: 0,
    };
    gov.cost()
        .track("billing", "s-1", "gpt-4o", usage)
        .await
        .unwrap();
    governance(&db)
        .args(["budget", "billing", "--session", "s-1"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("today (UTC)")
                .and(predicate::str::contains("$0.010000")) // 2,000 × $2.50 + 500 × $10 per Mtok
                .and(predicate::str::contains("$5.000000"))
                .and(predicate::str::contains("gpt-4o")),
        );
    let out = governance(&db)
        .args(["budget", "billing", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["day"]["spent"], 10_000);
    assert_eq!(v["by_model"][0]["model"], "gpt-4o");
    // An agent this database has never seen is most likely a typo or the wrong database.
    governance(&db)
        .args(["budget", "stranger"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("agent stranger was never seen"));
    governance(&db)
        .args(["budget", "bad agent"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("agent id"));
}
