//! The append-only guarantees, enforced by the database itself.

use gov_sdk::admin::Admin;
use gov_testdb::{APP_ROLE, TestDb};
use sqlx::Connection;

use crate::support::{connect, event};

/// Runs `sql` as the application role on a fresh connection; returns the error text, if any.
async fn as_app_role(db: &TestDb, sql: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(db.url())
        .await
        .expect("connect as the app role");
    sqlx::query(sqlx::AssertSqlSafe(format!("SET ROLE {APP_ROLE}")))
        .execute(&mut conn)
        .await
        .expect("connect as the app role");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await;
    r.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_app_role_can_append_and_read_but_never_change_or_remove() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    for i in 0..3 {
        gov.audit().log(event("a", "tool.call", i)).await.unwrap();
    }
    assert!(
        as_app_role(&db, "SELECT count(*) FROM audit_events")
            .await
            .is_ok()
    );
    for sql in [
        "UPDATE audit_events SET payload = '{}' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "DROP TABLE audit_events",
        "DELETE FROM chain_heads",
        "UPDATE chain_heads SET seq = 0",
        "DROP TRIGGER audit_events_no_delete ON audit_events",
        "UPDATE agent_presence SET halted = false",
        "SELECT governance_resume('a', 'me')",
        "UPDATE gate_requests SET status = 'approved'",
        "SELECT governance_decide(gen_random_uuid(), 'me', true, 'x', NULL, NULL)",
        "SELECT * FROM operators",
    ] {
        let err = as_app_role(&db, sql).await.expect_err(sql);
        assert!(
            err.contains("permission denied")
                || err.contains("must be owner")
                || err.contains("append-only")
                || err.contains("only moves forward")
                || err.contains("cannot be removed"),
            "{sql}: {err}"
        );
    }
    // Nothing changed.
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
}

#[tokio::test]
async fn triggers_refuse_changes_even_from_the_owner() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    gov.audit().log(event("a", "tool.call", 1)).await.unwrap();
    let admin = db.admin_pool().await;
    for sql in [
        "UPDATE audit_events SET payload = '{}'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "TRUNCATE chain_heads CASCADE",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .expect_err(sql);
        assert!(err.to_string().contains("not allowed"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn privileges_report_tells_the_app_role_from_the_owner() {
    let db = TestDb::new().await;
    let owner = Admin::connect(db.url()).await.unwrap();
    let p = owner.privileges().await.unwrap();
    assert!(!p.is_least_privilege(), "{p:?}");
    // Connected as the application role: least privilege.
    let app = Admin::connect(&db.app_url()).await.unwrap();
    let p = app.privileges().await.unwrap();
    assert_eq!(p.role, APP_ROLE);
    assert!(p.is_least_privilege(), "{p:?}");
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_role() {
    let db = TestDb::empty().await;
    let admin = Admin::connect(db.url()).await.unwrap();
    let first = admin.migrate().await.unwrap();
    assert_eq!(first.applied, first.known);
    let again = admin.migrate().await.unwrap();
    assert_eq!(again.applied, 0);
    admin.ensure_app_role("governance_app", None).await.unwrap();
    admin.ensure_app_role("governance_app", None).await.unwrap();
    let err = admin.ensure_app_role("Bad-Name", None).await.unwrap_err();
    assert!(err.to_string().contains("role name"), "{err}");
    // A superuser name is refused as an application role.
    let err = admin.ensure_app_role("postgres", None).await.unwrap_err();
    assert!(err.to_string().contains("superuser"), "{err}");
}
