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
        "SELECT governance_decide(gen_random_uuid(), 'me', true, 'x', NULL, NULL, now())",
        "SELECT * FROM operators",
        // No temporary objects, nothing new in the schema: nothing to shadow the owner's with.
        "CREATE TEMP TABLE gate_requests (id uuid)",
        "CREATE TABLE public.shadow (id uuid)",
        "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'",
        // A request is asked for, never decided: status, decider and token are the owner's.
        "INSERT INTO gate_requests (id, agent_id, tool, action_hash, args, expires_at, status, \
             decided_by, token_hash, token_expires_at) VALUES (gen_random_uuid(), 'a', 'wire', \
             sha256('x'), '{}', now() + interval '1 hour', 'approved', 'alice', sha256('t'), \
             now() + interval '1 hour')",
        "INSERT INTO gate_requests (id, agent_id, tool, action_hash, args, expires_at, \
             decided_by) VALUES (gen_random_uuid(), 'a', 'wire', sha256('x'), '{}', \
             now() + interval '1 hour', 'alice')",
        // Halting in an operator's name, and evidence of oversight, are the operators'.
        "SELECT governance_halt('a', 'alice', 'x')",
        "INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, reason) \
             VALUES (gen_random_uuid(), 'gate.approved', 'a', 'alice', 'x')",
        "UPDATE oversight_decisions SET operator = 'alice'",
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

/// Every function in the schema, definer or not, resolves names through
/// `pg_catalog, public, pg_temp`; the application role holds exactly its allowlist and can
/// create nothing.
#[tokio::test]
async fn the_catalog_holds_the_boundary() {
    let db = TestDb::new().await;
    let pool = db.admin_pool().await;
    let functions: Vec<(String, bool, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig FROM pg_proc p \
         WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(functions.iter().any(|(_, definer, _)| *definer));
    for (f, _, config) in &functions {
        assert_eq!(
            config.as_deref(),
            Some(&["search_path=pg_catalog, public, pg_temp".to_owned()][..]),
            "{f}"
        );
    }

    let role = APP_ROLE;
    let tables: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.relname::text, string_agg(pr.p, ', ' ORDER BY pr.p) FROM pg_class c \
         CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', \
             'REFERENCES', 'TRIGGER']) AS pr(p) \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S') \
           AND has_table_privilege('{role}', c.oid, pr.p) \
         GROUP BY 1 ORDER BY 1"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let tables: Vec<(&str, &str)> = tables
        .iter()
        .map(|(t, p)| (t.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        tables,
        [
            ("_sqlx_migrations", "SELECT"),
            ("agent_presence", "SELECT"),
            ("applied_records", "INSERT, SELECT"),
            ("audit_events", "INSERT, SELECT"),
            // The Merkle tree's tiles: a cache the owner writes; the service reads it only.
            ("audit_tree_tiles", "SELECT"),
            ("budget_counters", "INSERT, SELECT, UPDATE"),
            ("budget_policies", "DELETE, INSERT, SELECT, UPDATE"),
            ("budget_reservations", "INSERT, SELECT, UPDATE"),
            ("budget_usage", "INSERT, SELECT, UPDATE"),
            ("budget_usage_hourly", "INSERT, SELECT, UPDATE"),
            ("chain_heads", "INSERT, SELECT, UPDATE"),
            ("chain_retention", "SELECT"),
            ("checkpoints", "INSERT, SELECT"),
            // Tombstones of erased data subjects: the owner's `governance erase` writes them.
            ("erased_subjects", "SELECT"),
            ("gate_requests", "SELECT"),
            ("governance_instance", "SELECT"),
            ("llm_clients", "INSERT, SELECT"),
            ("oversight_decisions", "SELECT"),
            ("policy_sets", "SELECT"),
            ("scope_policies", "DELETE, INSERT, SELECT, UPDATE"),
            ("signer_keys", "INSERT, SELECT"),
            // Data subjects' wrapped keys: stored and read, never changed or removed.
            ("subject_keys", "INSERT, SELECT"),
            ("witness_cosignatures", "SELECT"),
        ]
    );
    // Column privileges: on gate_requests, inserting the asking columns only.
    let columns: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT a.attname::text, pr.p FROM pg_attribute a \
         CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE']) AS pr(p) \
         WHERE a.attrelid = 'gate_requests'::regclass AND a.attnum > 0 AND NOT a.attisdropped \
           AND has_column_privilege('{role}', a.attrelid, a.attnum, pr.p) ORDER BY a.attnum, 2"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let columns: Vec<String> = columns.iter().map(|(c, p)| format!("{p} {c}")).collect();
    assert_eq!(
        columns,
        [
            "INSERT id",
            "INSERT agent_id",
            "INSERT session_id",
            "INSERT tool",
            "INSERT action_hash",
            "INSERT args",
            "INSERT requested_at",
            "INSERT expires_at",
        ]
    );
    // Functions it may call (trigger functions aside: they cannot be called directly). The
    // budget functions run with the caller's privileges; the definer functions are the
    // heartbeat, the service's own halt, spending an approval and looking up a gateway key.
    let callable: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT p.proname::text FROM pg_proc p \
         WHERE p.pronamespace = 'public'::regnamespace AND p.prorettype <> 'trigger'::regtype \
           AND has_function_privilege('{role}', p.oid, 'EXECUTE') ORDER BY 1"
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        callable,
        [
            "governance_append_batch_expected",
            "governance_append_expected",
            "governance_consume",
            "governance_expire_reservations",
            // Looks up the one gateway key presented; the table itself is the owner's.
            "governance_gateway_key",
            "governance_heartbeat",
            "governance_lock_counters",
            "governance_record_hourly_spend",
            "governance_record_spend",
            "governance_reserve",
            "governance_reserve_logged",
            "governance_service_halt",
            "governance_settle",
            "governance_settle_logged",
            "governance_settle_once",
            "governance_track",
            "governance_track_once",
        ]
    );
    let (temp, create): (bool, bool) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT has_database_privilege('{role}', current_database(), 'TEMP'), \
                has_schema_privilege('{role}', 'public', 'CREATE')"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((temp, create), (false, false));
    pool.close().await;
}

/// Even where a database administrator grants TEMP back to the application role, a temporary
/// table cannot stand in for the one a definer function reads: consuming an approval that a
/// shadow table says exists is refused, because the function resolves `gate_requests` in the
/// schema before `pg_temp`.
#[tokio::test]
async fn a_temporary_table_cannot_stand_in_for_the_real_one() {
    let db = TestDb::new().await;
    let pool = db.admin_pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT TEMP ON DATABASE \"{}\" TO {APP_ROLE}",
        db.name()
    )))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut conn = sqlx::PgConnection::connect(&db.app_url()).await.unwrap();
    for sql in [
        "CREATE TEMP TABLE gate_requests (LIKE public.gate_requests INCLUDING DEFAULTS)",
        "INSERT INTO pg_temp.gate_requests (id, agent_id, tool, action_hash, args, requested_at, \
             expires_at, status, decided_by, token_hash, token_expires_at) VALUES \
             ('00000000-0000-0000-0000-000000000001', 'a', 'wire', sha256('x'), '{}', now(), \
             now() + interval '1 hour', 'approved', 'alice', sha256('t'), \
             now() + interval '1 hour')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let outcome: String = sqlx::query_scalar(
        "SELECT governance_consume('00000000-0000-0000-0000-000000000001', sha256('t'), \
             sha256('x'), 'a', NULL, now())",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(outcome, "unknown_request");
}

/// An approved request (id ...02, agent `a`, no session, action sha256('x'), token sha256('t'))
/// whose approval expires at `token_expires` (SQL), written as the owner; then the application
/// role's connection.
async fn approved(db: &TestDb, token_expires: &str) -> sqlx::PgConnection {
    let pool = db.admin_pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO gate_requests (id, agent_id, tool, action_hash, args, requested_at, \
             expires_at, status, decided_by, token_hash, token_expires_at) VALUES \
             ('00000000-0000-0000-0000-000000000002', 'a', 'wire', sha256('x'), '{{}}', now(), \
             now() + interval '1 hour', 'approved', 'alice', sha256('t'), {token_expires})"
    )))
    .execute(&pool)
    .await
    .expect("an approved request");
    pool.close().await;
    sqlx::PgConnection::connect(&db.app_url())
        .await
        .expect("connect as the app role")
}

async fn consume_sql(conn: &mut sqlx::PgConnection, args: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT governance_consume('00000000-0000-0000-0000-000000000002', {args})"
    )))
    .fetch_one(conn)
    .await
    .expect("governance_consume")
}

/// The application role calls `governance_consume` directly, presenting NULL for the token
/// (or the action): `<>` with a NULL is NULL, which the function once took as a match and
/// spent the approval without its token. Every NULL is refused, and the approval stays
/// spendable by its token.
#[tokio::test]
async fn a_null_token_or_action_never_spends_an_approval() {
    let db = TestDb::new().await;
    let mut conn = approved(&db, "now() + interval '1 hour'").await;
    for (args, refusal) in [
        ("NULL, sha256('x'), 'a', NULL, now()", "bad_token"),
        ("sha256('t'), NULL, 'a', NULL, now()", "wrong_action"),
        ("sha256('t'), sha256('x'), NULL, NULL, now()", "wrong_agent"),
    ] {
        assert_eq!(consume_sql(&mut conn, args).await, refusal, "{args}");
    }
    assert_eq!(
        consume_sql(&mut conn, "sha256('t'), sha256('x'), 'a', NULL, now()").await,
        "ok"
    );
}

/// The caller's clock decides expiry, but across the privilege boundary the database's clock
/// is a floor: the application role cannot stretch an approval that expired an hour ago by
/// passing yesterday as the time.
#[tokio::test]
async fn an_old_caller_time_cannot_stretch_an_approval() {
    let db = TestDb::new().await;
    let mut conn = approved(&db, "now() - interval '1 hour'").await;
    assert_eq!(
        consume_sql(
            &mut conn,
            "sha256('t'), sha256('x'), 'a', NULL, now() - interval '1 day'"
        )
        .await,
        "expired"
    );
}

/// The approval token's hash is compared as SHA-256 digests of both sides (docs/security.md),
/// never with `<>` on the stored hash itself, whose timing could tell an attacker how much of
/// a guess matches.
#[tokio::test]
async fn the_token_is_compared_by_digest() {
    let db = TestDb::new().await;
    let pool = db.admin_pool().await;
    let body: String = sqlx::query_scalar(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname = 'governance_consume'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert!(
        body.contains("sha256(r.token_hash) <> sha256(p_token_hash)"),
        "{body}"
    );
    assert!(!body.contains("r.token_hash <> p_token_hash"), "{body}");
}

/// The console records each chain verification so a restarted console shows it. The
/// application role (a service's or an agent's credentials) cannot record one, change one or
/// delete one, so it cannot make a console show a forged "clean"; nor can it read or write when
/// operators sign in. The owner can, and reads back the newest by start time.
#[tokio::test]
async fn the_app_role_cannot_forge_a_clean_verification_or_read_sign_ins() {
    let db = TestDb::new().await;
    let gov = connect(&db).await;
    let tampered = gov_sdk::VerificationRow {
        started_at: time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time"),
        status: "tampered".into(),
        summary: "{\"integrity\":{\"status\":\"tampered\"}}".into(),
    };
    gov.audit()
        .record_verification(&tampered)
        .await
        .expect("the owner records");
    for sql in [
        "INSERT INTO chain_verifications (started_at, status, summary) \
             VALUES (now() + interval '1 day', 'clean', '{\"integrity\":{\"status\":\"clean\"}}')",
        "UPDATE chain_verifications SET status = 'clean'",
        "DELETE FROM chain_verifications",
        "SELECT * FROM chain_verifications",
        "SELECT * FROM console_sign_ins",
        "INSERT INTO console_sign_ins (username, signed_in_at) VALUES ('alice', now())",
    ] {
        let err = as_app_role(&db, sql).await.expect_err(sql);
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    let last = gov
        .audit()
        .last_verification()
        .await
        .expect("read")
        .expect("one");
    assert_eq!(last, tampered, "the owner's record stands");
    // A status the console does not write is refused before the database.
    let odd = gov_sdk::VerificationRow {
        status: "fine".into(),
        ..tampered
    };
    let err = gov
        .audit()
        .record_verification(&odd)
        .await
        .expect_err("odd");
    assert!(
        err.to_string().contains("not a verification status"),
        "{err}"
    );
    gov.close().await;
}
