//! `governance migrate`: idempotent, creates the least-privilege role.

use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::governance;

#[tokio::test]
async fn migrate_twice_then_the_app_role_is_least_privilege() {
    let db = TestDb::empty().await;
    let first = governance(&db).arg("migrate").output().unwrap();
    assert!(first.status.success());
    // "applied N of N migrations": every known migration was applied to the empty database.
    let text = String::from_utf8_lossy(&first.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"applied"), "{text}");
    assert_eq!(words.get(1), words.get(3), "{text}");
    let out = governance(&db)
        .args(["migrate", "--json", "--app-role"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["applied"], 0);
    assert_eq!(v["app_role"], "governance_app");

    // The role can append through the SDK and verify, but cannot change a row.
    let app_url = db.app_url();
    governance(&db)
        .env("GOVERNANCE_DATABASE_URL", &app_url)
        .args(["demo", "--events", "20", "--chain", "default", "--no-serve"])
        .assert()
        .success();
    // Serving the console needs an operator connection: the demo says so instead of failing
    // half-way.
    governance(&db)
        .env("GOVERNANCE_DATABASE_URL", &app_url)
        .args(["demo", "--events", "1", "--bind", "127.0.0.1:0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("schema owner"));
    let pool = db.admin_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET ROLE governance_app")
        .execute(&mut *conn)
        .await
        .unwrap();
    let err = sqlx::query("UPDATE audit_events SET kind = 'x.y'")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn bad_role_names_are_refused() {
    let db = TestDb::empty().await;
    governance(&db)
        .args(["migrate", "--app-role", "Robert'); DROP TABLE x;--"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("role name"));
}
