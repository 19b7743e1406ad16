//! Gateway keys: shown once, stored hashed, listed without secrets, revocable, on both
//! backends; and the application role (the gateway's, or a thief's) can neither mint, list,
//! revoke nor read them.

use gov_sdk::admin::Admin;
use secrecy::{ExposeSecret as _, SecretString};

use crate::support::{AGENT, SECRET, connect};

#[tokio::test]
async fn keys_are_made_listed_and_revoked_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let admin = Admin::connect_or_create(&url).await.expect("admin");
    admin.migrate().await.expect("migrate");
    let k = admin.add_gateway_key(AGENT, "laptop").await.expect("add");
    assert!(k.key.expose_secret().starts_with(&format!("gk1_{}_", k.id)));
    assert!(
        !format!("{k:?}").contains(k.key.expose_secret()),
        "Debug redacts the key"
    );
    let listed = admin.gateway_keys(None).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].agent.as_str(), listed[0].label.as_str()),
        (AGENT, "laptop")
    );
    let gov = gov_sdk::Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .spool(false)
        .connect()
        .await
        .expect("connect");
    assert_eq!(
        gov.authenticate_agent_key(&k.key)
            .await
            .expect("auth")
            .as_deref(),
        Some(AGENT)
    );
    let wrong = SecretString::from(format!(
        "{}x",
        &k.key.expose_secret()[..k.key.expose_secret().len() - 1]
    ));
    assert_eq!(
        gov.authenticate_agent_key(&wrong).await.expect("auth"),
        None
    );
    assert!(admin.revoke_gateway_key(&k.id).await.expect("revoke"));
    assert!(
        !admin.revoke_gateway_key(&k.id).await.expect("again"),
        "revoked once"
    );
    assert_eq!(
        gov.authenticate_agent_key(&k.key).await.expect("auth"),
        None
    );
    assert!(
        admin.gateway_keys(Some(AGENT)).await.expect("list")[0]
            .revoked_at
            .is_some()
    );
    gov.close().await;
    admin.close().await;
}

#[tokio::test]
async fn the_application_role_can_only_check_the_key_it_was_given() {
    let db = gov_testdb::TestDb::new().await;
    let owner = Admin::connect(db.url()).await.expect("owner");
    let k = owner.add_gateway_key(AGENT, "").await.expect("add");

    // Through the SDK, as the gateway runs it: authenticate yes, mint / list / revoke no.
    let app = Admin::connect(&db.app_url()).await.expect("app admin");
    assert!(
        app.add_gateway_key("intruder", "").await.is_err(),
        "the app role minted a key"
    );
    assert!(
        app.gateway_keys(None).await.is_err(),
        "the app role listed keys"
    );
    assert!(
        app.revoke_gateway_key(&k.id).await.is_err(),
        "the app role revoked a key"
    );
    app.close().await;
    let gov = connect(&db.app_url()).await;
    assert_eq!(
        gov.authenticate_agent_key(&k.key)
            .await
            .expect("auth")
            .as_deref(),
        Some(AGENT)
    );

    // Raw SQL with the app role's credentials: no hash to read, no row to write.
    let pool = sqlx_pool(&db.app_url()).await;
    for sql in [
        "SELECT key_hash FROM gateway_keys",
        "INSERT INTO gateway_keys (id, agent_id, key_hash) VALUES (repeat('a', 32), 'x', sha256('k'))",
        "UPDATE gateway_keys SET revoked_at = NULL",
        "DELETE FROM gateway_keys",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    // The lookup answers only for the id asked, and a revoked key is gone from it.
    assert!(owner.revoke_gateway_key(&k.id).await.expect("revoke"));
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM governance_gateway_key($1)")
        .bind(&k.id)
        .fetch_one(&pool)
        .await
        .expect("lookup");
    assert_eq!(n, 0);
    assert_eq!(
        gov.authenticate_agent_key(&k.key).await.expect("auth"),
        None
    );
    // Even the owner cannot bring a revoked key back.
    let admin = db.admin_pool().await;
    let err = sqlx::query("UPDATE gateway_keys SET revoked_at = NULL")
        .execute(&admin)
        .await
        .expect_err("unrevoke");
    assert!(err.to_string().contains("only ever revoked"), "{err}");
    pool.close().await;
    gov.close().await;
    owner.close().await;
}

async fn sqlx_pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool")
}
