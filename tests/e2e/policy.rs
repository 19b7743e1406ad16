//! `governance policy` as a process: validate and test in CI style (no database, nonzero exit
//! on failure with clear messages), apply as the schema owner (seen by a running handle in
//! another process), diff against the database, and the refusals (a bad set, a failing case,
//! the application role).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use gov_sdk::{Error, Governance, ScopePolicy};
use predicates::prelude::*;

use crate::support::{SECRET, bare_governance, governance};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../gov-policy/tests/fixtures/billing")
}

fn bare() -> Command {
    Command::from_std(bare_governance())
}

/// A copy of the fixture in a folder of this test's own, with `edit` applied to its policies.
fn edited(name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gov-policy-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for f in ["settings.json", "cases.json"] {
        std::fs::copy(fixture().join(f), dir.join(f)).expect("copy");
    }
    let policies = std::fs::read_to_string(fixture().join("policies.cedar")).expect("read");
    std::fs::write(dir.join("policies.cedar"), edit(policies)).expect("write");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn validate_and_test_need_no_database_and_fail_loudly() {
    let dir = fixture();
    bare()
        .args(["policy", "validate", path(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains("valid: 5 policies"));
    let cases = dir.join("cases.json");
    bare()
        .args(["policy", "test", path(&dir), "--cases", path(&cases)])
        .assert()
        .success()
        .stdout(predicate::str::contains("13 of 13 case(s) passed"));

    // A change that breaks a case: exit 1, the case named with what it expected and got.
    let loose = edited("loose", |p| p.replace("amount > 1000", "amount > 10"));
    bare()
        .args(["policy", "test", path(&loose), "--cases", path(&loose.join("cases.json"))])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "FAILED \"a small refund is permitted\": expected permit by [billing-tools], got approval by [large-refund-needs-approval]",
        ))
        .stdout(predicate::str::contains("12 of 13 case(s) passed"));

    // A policy the schema does not type: exit 1, the policy and the problem named.
    let typo = edited("typo", |p| {
        p.replace("principal.environment", "principal.enviroment")
    });
    bare()
        .args(["policy", "validate", path(&typo)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("policy no-prod-email-at-night"))
        .stderr(predicate::str::contains("enviroment"));

    // A malformed case file is a usage error (exit 2).
    let bad_cases = typo.join("bad-cases.json");
    std::fs::write(
        &bad_cases,
        r#"{"cases": [{"name": "x", "agent": "a", "tool": "t", "expect": "allow"}]}"#,
    )
    .expect("write");
    bare()
        .args(["policy", "test", path(&dir), "--cases", path(&bad_cases)])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a case file"));
}

#[tokio::test]
async fn apply_is_enforced_by_a_running_service_and_refuses_bad_sets_and_the_app_role() {
    let db = gov_testdb::TestDb::new().await;
    // The service: another process's handle, with scope open for the agent.
    let service = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    service
        .scope()
        .register(ScopePolicy {
            agent_id: "support-agent".parse().expect("id"),
            allowed_tools: ["refund".to_owned()].into(),
            allowed_apis: Default::default(),
            hidden_tools: Default::default(),
        })
        .await
        .expect("scope");
    service
        .scope()
        .check("support-agent", "refund")
        .await
        .expect("scope alone allows");

    // A bad set is refused at apply with the reason, and nothing is applied.
    let typo = edited("apply-typo", |p| {
        p.replace("principal.team", "principal.tema")
    });
    governance(&db)
        .args(["policy", "apply", path(&typo), "--operator", "alice"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing applied"))
        .stderr(predicate::str::contains("tema"));
    // So is a set whose cases fail.
    let loose = edited("apply-loose", |p| p.replace("amount > 1000", "amount > 10"));
    governance(&db)
        .args([
            "policy",
            "apply",
            path(&loose),
            "--cases",
            path(&loose.join("cases.json")),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing applied"));
    assert!(
        service
            .policies()
            .current()
            .await
            .expect("read")
            .enforced
            .is_none()
    );

    // The application role may not apply (exit 2, naming who may).
    Command::from_std(bare_governance())
        .env("GOVERNANCE_DATABASE_URL", db.app_url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .args(["policy", "apply", path(&fixture()), "--operator", "agent"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "only the schema owner may apply a policy set",
        ));

    // The owner applies; the running service enforces it without a restart.
    let dir = fixture();
    governance(&db)
        .args([
            "policy",
            "apply",
            path(&dir),
            "--cases",
            path(&dir.join("cases.json")),
            "--operator",
            "alice",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "applied the enforced set, version 1: 5 policies",
        ));
    let start = Instant::now();
    loop {
        match service.scope().check("support-agent", "refund").await {
            Err(Error::PolicyForbidden {
                policy_set_hash, ..
            }) => {
                assert_eq!(policy_set_hash.len(), 64);
                break;
            }
            other => assert!(
                start.elapsed() < Duration::from_secs(5),
                "the applied set is not enforced: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Diff against the database: none for the same set; a changed policy is listed (exit 1).
    governance(&db)
        .args(["policy", "diff", path(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "no difference from the enforced set",
        ));
    governance(&db)
        .args([
            "policy",
            "diff",
            path(&loose),
            "--cases",
            path(&loose.join("cases.json")),
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("~ large-refund-needs-approval"))
        .stdout(predicate::str::contains(
            "case \"a small refund is permitted\": permit -> approval",
        ));

    // The candidate as the shadow set: recorded, never enforced.
    governance(&db)
        .args([
            "policy",
            "apply",
            path(&loose),
            "--shadow",
            "--operator",
            "alice",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "applied the shadow set, version 1",
        ));
    let start = Instant::now();
    while service
        .policies()
        .current()
        .await
        .expect("read")
        .shadow
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the shadow set is not loaded"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.close().await;
}
