//! `governance report --format article12`: golden files for each form, a report over real SDK
//! decisions, halts and denials, and every bad input.

use gov_sdk::{AuditEvent, AuditEventBuilder, Governance, OperatorRole, ScopePolicy};
use gov_testdb::TestDb;
use predicates::prelude::*;
use serde_json::json;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::support::{OTHER_SECRET, SECRET, governance};

/// 2026-12-01T00:00:00Z: the fixed "now" of the golden reports.
const NOW_EPOCH: &str = "1796083200";
const PERIOD: [&str; 4] = ["--from", "2026-11-01", "--to", "2026-11-30"];

async fn connect(url: &str, secret: &str) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(secret)
        .connect()
        .await
        .expect("connect")
}

/// An event with a fixed time.
fn ev(
    chain: &str,
    t: OffsetDateTime,
    agent: &str,
    kind: &str,
    payload: serde_json::Value,
) -> AuditEventBuilder {
    AuditEvent::builder(agent, kind)
        .chain(chain)
        .occurred_at(t)
        .payload(payload)
}

/// Appends one event as it is, reserved kind and actor included (test support's forge: the
/// SDK's `log` refuses those, but an attacker with the secret could write them).
async fn log(url: &str, b: AuditEventBuilder) {
    gov_testdb::forge::append_unchecked(url, SECRET, vec![b.build().expect("event")]).await;
}

/// Two chains of events with fixed times, ids and payloads, some outside the period, one with
/// text that Markdown and HTML must escape.
/// One seeded event: time, kind, session, actor, payload.
type Seed<'a> = (
    OffsetDateTime,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    serde_json::Value,
);

async fn seed_fixed(db: &TestDb) {
    let r1 = "0193a0f0-0000-7000-8000-000000000001";
    let r2 = "0193a0f0-0000-7000-8000-000000000002";
    // (time, kind, session, actor, payload) on the default chain, agent support-bot.
    let default: [Seed; 14] = [
        (
            datetime!(2026-10-15 12:00 UTC),
            "tool.call",
            Some("s-1"),
            None,
            json!({ "tool": "search" }),
        ),
        (
            datetime!(2026-11-02 09:00 UTC),
            "tool.call",
            Some("s-1"),
            None,
            json!({ "tool": "search" }),
        ),
        (
            datetime!(2026-11-02 09:00:01 UTC),
            "llm.call",
            Some("s-1"),
            None,
            json!({ "model": "gpt-4o" }),
        ),
        (
            datetime!(2026-11-02 09:01 UTC),
            "gate.requested",
            Some("s-1"),
            None,
            json!({ "request_id": r1, "tool": "refund" }),
        ),
        (
            datetime!(2026-11-02 09:02 UTC),
            "gate.approved",
            Some("s-1"),
            Some("alice"),
            json!({ "request_id": r1, "tool": "refund", "reason": "customer verified" }),
        ),
        (
            datetime!(2026-11-02 09:03 UTC),
            "gate.requested",
            Some("s-2"),
            None,
            json!({ "request_id": r2, "tool": "refund" }),
        ),
        (
            datetime!(2026-11-02 09:04 UTC),
            "gate.denied",
            Some("s-2"),
            Some("bob"),
            json!({ "request_id": r2, "tool": "refund", "reason": "amount <over> | *limit*" }),
        ),
        (
            datetime!(2026-11-02 09:05 UTC),
            "scope.denied",
            None,
            None,
            json!({ "tool": "delete_account", "reason": "tool_not_allowed" }),
        ),
        (
            datetime!(2026-11-02 09:06 UTC),
            "budget.denied",
            Some("s-1"),
            None,
            json!({ "reason": "session_usd", "cap": 1_000_000, "used": 990_000, "requested_micros": 20_000, "model": "gpt-4o" }),
        ),
        (
            datetime!(2026-11-02 09:07 UTC),
            "loop.detected",
            Some("s-1"),
            None,
            json!({ "tool": "search", "repeats": 5, "window_size": 10, "action": "halt" }),
        ),
        (
            datetime!(2026-11-02 09:07:01 UTC),
            "agent.halted",
            None,
            Some("carol"),
            json!({ "reason": "runaway loop", "changed": true }),
        ),
        (
            datetime!(2026-11-02 10:00 UTC),
            "agent.resumed",
            None,
            Some("carol"),
            json!({ "reason": "prompt fixed", "changed": true }),
        ),
        // Written with the secret but outside every operator path: no oversight record backs it.
        (
            datetime!(2026-11-02 10:04 UTC),
            "gate.approved",
            Some("s-3"),
            Some("mallory"),
            json!({ "request_id": r2, "tool": "refund", "reason": "trust me" }),
        ),
        (
            datetime!(2026-11-02 10:05 UTC),
            "contract.violated",
            Some("s-1"),
            None,
            json!({ "tool": "refund", "phase": "pre", "condition": "hitl_approved", "detail": "no approval" }),
        ),
    ];
    for (t, kind, session, actor, payload) in default {
        let mut b = ev("default", t, "support-bot", kind, payload);
        if let Some(s) = session {
            b = b.session(s);
        }
        if let Some(a) = actor {
            b = b.actor(a);
        }
        let event = b.build().expect("event");
        let id = event.event_id.as_uuid();
        gov_testdb::forge::append_unchecked(db.url(), SECRET, vec![event]).await;
        // The operators' decisions, halts and resumes get the record their operator path
        // writes in the same transaction; mallory's claim gets none.
        if let Some(operator) = actor.filter(|a| *a != "mallory") {
            let pool = db.admin_pool().await;
            sqlx::query(
                "INSERT INTO oversight_decisions (event_id, kind, agent_id, operator, reason) \
                 VALUES ($1, $2, 'support-bot', $3, 'seeded')",
            )
            .bind(id)
            .bind(kind)
            .bind(operator)
            .execute(&pool)
            .await
            .expect("seed an oversight record");
            pool.close().await;
        }
    }
    for (i, t) in [
        datetime!(2026-11-03 08:00 UTC),
        datetime!(2026-11-03 08:30 UTC),
        datetime!(2026-11-29 23:59:59 UTC),
        datetime!(2026-12-02 08:00 UTC),
    ]
    .into_iter()
    .enumerate()
    {
        let b = ev(
            "billing",
            t,
            "invoice-agent",
            "tool.call",
            json!({ "tool": "issue_invoice", "n": i }),
        );
        log(db.url(), b.session("b-1")).await;
    }
}

fn report(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = governance(db)
        .env("SOURCE_DATE_EPOCH", NOW_EPOCH)
        .arg("report")
        .args(args)
        .output()
        .expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compares with `tests/e2e/golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file instead.
fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/e2e/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if let Some((n, (e, a))) = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a)
    {
        panic!(
            "{name} differs at line {}:\n  expected: {e}\n  actual:   {a}\n(UPDATE_GOLDEN=1 rewrites it after a deliberate change)",
            n + 1
        );
    }
    assert_eq!(
        expected.lines().count(),
        actual.lines().count(),
        "{name}: line count differs"
    );
    assert_eq!(expected, actual, "{name}: line endings differ");
}

#[tokio::test]
async fn the_article12_report_matches_its_golden_file_in_each_form() {
    let db = TestDb::new().await;
    seed_fixed(&db).await;
    for (form, file) in [
        ("json", "article12.json"),
        ("md", "article12.md"),
        ("html", "article12.html"),
    ] {
        let mut args = vec!["--format", "article12", "--as", form];
        args.extend(PERIOD);
        let (code, out, err) = report(&db, &args);
        assert_eq!(code, 0, "{form}: {err}");
        golden(file, &out);
    }
    // The JSON form states what the period holds.
    let (_, out, _) = report(&db, &[&PERIOD[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["totals"]["events"], 16, "{v:#}");
    assert_eq!(v["events_by_kind"]["tool.call"], 4);
    assert_eq!(v["human_oversight"]["decisions"][0]["decided_by"], "alice");
    assert_eq!(v["human_oversight"]["decisions"][1]["decided_by"], "bob");
    assert_eq!(
        (
            v["human_oversight"]["approved"].as_u64(),
            v["events_by_kind"]["gate.approved"].as_u64()
        ),
        (Some(1), Some(2)),
        "mallory's claim is recorded but not counted"
    );
    assert_eq!(v["human_oversight"]["unbacked"][0]["claimed_by"], "mallory");
    assert_eq!(
        v["verification"]["events_checked"], 18,
        "every row verified"
    );
    assert_eq!(v["verification"]["status"], "clean");
    assert!(v["coverage"]["coverage_pct"].is_null());
    assert_eq!(v["coverage"]["reason_code"], "no_wrapped_clients");
    assert_eq!(v["coverage"]["governed_calls"], 0);
    assert_eq!(v["coverage"]["wrapped_clients"], json!([]));
    assert!(
        v["statement"]
            .as_str()
            .is_some_and(|s| s.contains("not a claim of compliance"))
    );

    // --output writes the same bytes, the form taken from the extension.
    let dir = tempdir();
    let file = dir.join("nov.html");
    let path = file.to_str().expect("utf-8 path");
    let (code, out, err) = report(&db, &[&PERIOD[..], &["--output", path]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("wrote the Article 12 evidence report"),
        "{out}"
    );
    let (_, html, _) = report(&db, &[&PERIOD[..], &["--as", "html"]].concat());
    assert_eq!(std::fs::read_to_string(&file).expect("read report"), html);

    // One chain only.
    let (code, out, _) = report(
        &db,
        &[&PERIOD[..], &["--chain", "billing", "--json"]].concat(),
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["chains"], json!(["billing"]));
    assert_eq!(v["totals"]["events"], 3);
    assert_eq!(v["verification"]["events_checked"], 4);
}

/// The report's JSON over the record up to now (no fixed clock: the registry's rows carry the
/// time they were written).
fn report_now(db: &TestDb) -> serde_json::Value {
    let out = governance(db)
        .args(["report", "--json"])
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
async fn coverage_comes_from_the_registry_and_the_recorded_calls() {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .allow_unbudgeted_agents(true)
        .connect()
        .await
        .expect("connect");
    log(
        db.url(),
        AuditEvent::builder("support-bot", "tool.call").payload(json!({ "tool": "search" })),
    )
    .await;

    // Nothing wrapped, nothing called.
    let c = &report_now(&db)["coverage"];
    assert!(c["coverage_pct"].is_null(), "{c:#}");
    assert_eq!(c["reason_code"], "no_wrapped_clients");
    assert!(
        c["definition"]
            .as_str()
            .is_some_and(|d| d.contains("upper bound"))
    );

    // A wrapped client, no call yet: the registry is listed, the host only as its digest.
    gov.llm()
        .openai("https://llm-gateway.internal.example")
        .model_family("gpt-4o")
        .build()
        .await
        .expect("client");
    let out = governance(&db)
        .args(["report", "--as", "md"])
        .output()
        .expect("run governance");
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(!md.contains("llm-gateway"), "the hostname leaked:\n{md}");
    let digest = gov.llm().host_digest("llm-gateway.internal.example");
    assert!(md.contains(&digest[4..]), "{md}"); // Markdown escapes the `_` of `hh1_`
    let c = report_now(&db)["coverage"].clone();
    assert!(c["coverage_pct"].is_null(), "{c:#}");
    assert_eq!(c["reason_code"], "no_llm_calls_in_period");
    assert_eq!(c["wrapped_clients"][0]["provider"], "openai");
    assert_eq!(c["wrapped_clients"][0]["wrapper"], "openai-http");
    assert_eq!(c["wrapped_clients"][0]["model_family"], "gpt-4o");
    assert_eq!(c["wrapped_clients"][0]["host_digest"], digest.as_str());

    // Three governed calls and one observed after the fact: 3 / 4 = 75.0 %.
    for _ in 0..3 {
        log(
            db.url(),
            AuditEvent::builder("support-bot", "llm.request")
                .payload(json!({ "provider": "openai", "model": "gpt-4o" })),
        )
        .await;
    }
    let usage = gov_sdk::TokenUsage {
        input_tokens: 10,
        output_tokens: 5,
        cached_input_tokens: 0,
    };
    gov.llm()
        .observe("support-bot", "s-1", "openai", "gpt-4o", usage)
        .await
        .expect("observe");
    let c = report_now(&db)["coverage"].clone();
    assert_eq!(c["coverage_pct"], 75.0, "{c:#}");
    assert!(c["reason_code"].is_null());
    assert_eq!(c["governed_calls"], 3);
    assert_eq!(c["observed_calls"], 1);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gov-report-{}", uuid_like()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos()
    )
}

#[tokio::test]
async fn the_report_records_decisions_halts_and_denials_made_through_the_sdk() {
    let db = TestDb::new().await;
    let agent = connect(&db.app_url(), SECRET).await;
    let ops = connect(db.url(), SECRET).await;
    let pw = "correct horse battery staple";
    ops.operators()
        .add("alice", OperatorRole::Operator, pw)
        .await
        .expect("add alice");
    let alice = ops
        .operators()
        .authenticate("alice", pw)
        .await
        .expect("alice signs in");
    agent
        .scope()
        .register(ScopePolicy {
            agent_id: "pay-bot".parse().expect("agent id"),
            allowed_tools: ["lookup".to_owned()].into(),
            allowed_apis: Default::default(),
            hidden_tools: Default::default(),
        })
        .await
        .expect("scope");
    agent
        .scope()
        .check("pay-bot", "wire_money")
        .await
        .expect_err("out of scope");
    let req = agent
        .gates()
        .request(
            "pay-bot",
            Some("s-9"),
            "wire_money",
            &json!({ "amount": 5 }),
        )
        .await
        .expect("request");
    ops.gates()
        .approve(&alice, req.id, "small amount")
        .await
        .expect("approve");
    let req = agent
        .gates()
        .request(
            "pay-bot",
            Some("s-9"),
            "wire_money",
            &json!({ "amount": 5000 }),
        )
        .await
        .expect("request");
    ops.gates()
        .deny(&alice, req.id, "too much")
        .await
        .expect("deny");
    ops.presence()
        .halt(&alice, "pay-bot", "investigating")
        .await
        .expect("halt");
    ops.presence()
        .resume(&alice, "pay-bot", "cleared")
        .await
        .expect("resume");
    agent.close().await;
    ops.close().await;

    let out = governance(&db)
        .args(["report", "--from", "1h", "--json"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let h = &v["human_oversight"];
    assert_eq!(
        (
            h["requested"].as_u64(),
            h["approved"].as_u64(),
            h["denied"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{h:#}"
    );
    let decisions = h["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 2);
    for (d, (decision, reason)) in decisions
        .iter()
        .zip([("approved", "small amount"), ("denied", "too much")])
    {
        assert_eq!(d["decided_by"], "alice");
        assert_eq!(d["decision"], decision);
        assert_eq!(d["reason"], reason);
        assert_eq!(d["tool"], "wire_money");
        assert_eq!(d["agent_id"], "pay-bot");
        assert_eq!(d["session_id"], "s-9");
    }
    let halts = &v["halts"];
    assert_eq!(
        (halts["halted"].as_u64(), halts["resumed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(halts["events"][0]["by"], "alice");
    assert_eq!(halts["events"][0]["reason"], "investigating");
    assert_eq!(halts["events"][1]["action"], "resumed");
    assert_eq!(v["denials"]["scope"], 1);
    assert_eq!(
        v["denials"]["events"][0]["detail"],
        "tool wire_money: tool_not_allowed"
    );
    assert_eq!(v["verification"]["status"], "clean");
    assert_eq!(h["unbacked"], json!([]));
    assert_eq!(halts["unbacked"], json!([]));

    // The agent's side holds the audit secret, so it can seal any row it likes into the chain
    // (here through the forge, as its own code could): an approval and a resume in alice's name.
    // The chain verifies clean, but no operator path recorded them: the report neither counts
    // nor lists them as oversight, and names them apart.
    let forged = |kind: &str, payload: serde_json::Value| {
        AuditEvent::builder("pay-bot", kind)
            .session("s-9")
            .actor("alice")
            .payload(payload)
            .build()
            .expect("event")
    };
    gov_testdb::forge::append_unchecked(
        &db.app_url(),
        SECRET,
        vec![
            forged(
                "gate.approved",
                json!({ "request_id": req.id, "tool": "wire_money", "reason": "looks fine" }),
            ),
            forged(
                "agent.resumed",
                json!({ "reason": "all clear", "changed": true }),
            ),
        ],
    )
    .await;
    let out = governance(&db)
        .args(["report", "--from", "1h", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["verification"]["status"], "clean");
    let h = &v["human_oversight"];
    assert_eq!(
        (h["approved"].as_u64(), h["denied"].as_u64()),
        (Some(1), Some(1)),
        "{h:#}"
    );
    assert_eq!(h["decisions"].as_array().map(Vec::len), Some(2));
    let claims = h["unbacked"].as_array().expect("unbacked");
    assert_eq!(claims.len(), 1, "{h:#}");
    assert_eq!(
        (&claims[0]["kind"], &claims[0]["claimed_by"]),
        (&json!("gate.approved"), &json!("alice"))
    );
    let halts = &v["halts"];
    assert_eq!(
        (halts["halted"].as_u64(), halts["resumed"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(halts["unbacked"][0]["kind"], "agent.resumed");
}

#[tokio::test]
async fn a_tampered_chain_is_reported_and_exits_1() {
    let db = TestDb::new().await;
    seed_fixed(&db).await;
    db.tamper(&["UPDATE audit_events SET payload = '{\"tool\":\"nothing-to-see\"}' WHERE chain_id = 'default' AND seq = 5"],
    )
    .await;
    let (code, out, err) = report(&db, &[&PERIOD[..], &["--json"]].concat());
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("the report is still written");
    assert_eq!(v["verification"]["status"], "tampered");
    let chain = &v["verification"]["chains"][1];
    assert_eq!(chain["chain_id"], "default");
    assert_eq!(chain["finding"]["seq"], 5);
    assert_eq!(chain["finding"]["reason"], "modified row");
    assert!(err.contains("chain default seq 5"), "{err}");
    let (code, md, _) = report(&db, &PERIOD);
    assert_eq!(code, 1);
    assert!(
        md.contains("TAMPERED: chain default fails at seq 5 (modified row)"),
        "{md}"
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_writes_nothing() {
    let db = TestDb::new().await;
    crate::support::seed(&db, 3).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--from", "2026-13-01"],
            "--from \"2026-13-01\" is not a time",
        ),
        (&["--to", "yesterday"], "--to \"yesterday\" is not a time"),
        (
            &["--from", "2026-11-30", "--to", "2026-11-01"],
            "--from must be before --to",
        ),
        (&["--chain", "no-such-chain"], "no-such-chain"),
        (&["--chain", "bad chain!"], "chain"),
        (
            &["--output", "/nonexistent-dir/r.md"],
            "cannot write the report to /nonexistent-dir/r.md",
        ),
        (&["--output", "report.txt"], "name it .json, .md or .html"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = report(&db, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
    }
    assert!(!std::path::Path::new("report.txt").exists());
    governance(&db)
        .args(["report", "--format", "soc2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values: article12"));
    governance(&db)
        .env("SOURCE_DATE_EPOCH", "soon")
        .arg("report")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("SOURCE_DATE_EPOCH"));
    // The wrong secret is a configuration error, not evidence of tampering.
    governance(&db)
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .arg("report")
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "no report was made: not verifiable with the configured keys: chain default:",
        ));
    // Unreachable storage and malformed URLs: the documented codes, no URL echoed.
    governance(&db)
        .env(
            "GOVERNANCE_DATABASE_URL",
            "postgres://nobody:hunter2@127.0.0.1:1/x",
        )
        .arg("report")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("hunter2").not());
    governance(&db)
        .env("GOVERNANCE_DATABASE_URL", "not a url")
        .arg("report")
        .assert()
        .code(2);
    governance(&db)
        .env_remove("GOVERNANCE_DATABASE_URL")
        .arg("report")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("GOVERNANCE_DATABASE_URL"));
}
