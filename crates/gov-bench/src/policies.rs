//! `gov-bench policies`: Cedar decision latency (p50, p99) with 10, 100 and 1,000 policies,
//! and the guarded path with no policy set against one of 100 policies enforced: the scope
//! check through the SDK alone (in-memory SQLite, so that nothing but the check is measured),
//! and a guarded tool call with its durable record on Postgres (the overhead a service sees).

use std::time::Instant;

use anyhow::Result;
use gov_sdk::policies::{PolicySet, Request, Resource, Slot};
use gov_sdk::{Governance, ScopePolicy};
use serde_json::{Value, json};

use crate::{SECRET, round};

/// `n` policies: one permit per tool (team and cost conditions), every tenth a forbid on an
/// argument, so that every policy's scope or condition is looked at.
fn policies(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i % 10 == 9 {
            s.push_str(&format!(
                "@id(\"f{i}\") forbid (principal, action == Governance::Action::\"tool_call\", resource == Governance::Tool::\"tool_{i}\") when {{ context.arguments has amount && context.arguments.amount > {i} }};\n"
            ));
        } else {
            s.push_str(&format!(
                "@id(\"p{i}\") permit (principal, action == Governance::Action::\"tool_call\", resource == Governance::Tool::\"tool_{i}\") when {{ principal.team == \"team-{}\" && context.estimated_cost_micros < 1000000 }};\n",
                i % 10
            ));
        }
    }
    s
}

const SETTINGS: &str = r#"{"agents": {"agent-0": {"team": "team-7", "environment": "prod"}}, "arguments": {"amount": "long"}}"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// p50 and p99 of `f`'s latency in microseconds over `n` calls.
fn latency_us(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_nanos() as f64 / 1_000.0);
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

/// Decision latency of a set of `n` policies.
fn decisions(n: usize) -> Result<Value> {
    let set = PolicySet::parse(&policies(n), SETTINGS)?;
    let args = json!({ "amount": 5 });
    let now = time::OffsetDateTime::now_utc();
    let req = Request {
        agent: "agent-0",
        resource: Resource::Tool("tool_7"),
        session: "s-1",
        arguments: Some(&args),
        estimated_cost_micros: 1_000,
        session_spend_micros: 0,
        now,
    };
    // Warm up, and check that it decides what it should.
    let d = set.decide(&req);
    anyhow::ensure!(d.determining == ["p7"], "unexpected decision {d:?}");
    let iterations = if n >= 1_000 { 2_000 } else { 20_000 };
    let (p50, p99) = latency_us(iterations, || {
        std::hint::black_box(set.decide(std::hint::black_box(&req)));
    });
    Ok(json!({ "policies": n, "p50_us": round(p50), "p99_us": round(p99) }))
}

/// p50 and p99 of a guarded scope check through the SDK, microseconds.
async fn guarded(gov: &Governance, n: usize) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        gov.scope().check("agent-0", "tool_7").await?;
        samples.push(t.elapsed().as_nanos() as f64 / 1_000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.50), percentile(&samples, 0.99)))
}

/// The guarded tool path as a service runs it, on Postgres: the scope check (with the Cedar
/// decision when a set is enforced) and the durable `tool.call` record, with no set on one
/// database and 100 policies enforced on another, calls interleaved; microseconds.
async fn guarded_tool_call(n: usize) -> Result<Value> {
    let (off_db, on_db) = (
        gov_testdb::TestDb::new().await,
        gov_testdb::TestDb::new().await,
    );
    let connect = |url: String| async move {
        Governance::builder()
            .database_url(url)
            .audit_secret(SECRET)
            .connect()
            .await
    };
    let off = connect(off_db.url().to_owned()).await?;
    let on = connect(on_db.url().to_owned()).await?;
    let set = PolicySet::parse(&policies(100), SETTINGS)?;
    on.policies()
        .apply(Slot::Enforced, Some(&set), "bench")
        .await?;
    for gov in [&off, &on] {
        gov.scope()
            .register(ScopePolicy::new("agent-0".parse()?).allow_tools(["tool_7"]))
            .await?;
    }
    let call = |gov: &Governance, i: usize| {
        let gov = gov.clone();
        async move {
            let t = Instant::now();
            gov.scope().check("agent-0", "tool_7").await?;
            let ev = gov_sdk::AuditEvent::builder("agent-0", "tool.call")
                .payload(json!({ "tool": "tool_7", "i": i }))
                .build()?;
            anyhow::ensure!(
                matches!(gov.audit().log(ev).await?, gov_sdk::Logged::Durable(_)),
                "not durable"
            );
            anyhow::Ok(t.elapsed().as_nanos() as f64 / 1_000.0)
        }
    };
    for i in 0..200 {
        call(&off, i).await?;
        call(&on, i).await?;
    }
    let (mut a, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // Alternate which goes first, so that neither gains from following the other.
    for i in 0..n {
        if i % 2 == 0 {
            a.push(call(&off, i).await?);
            b.push(call(&on, i).await?);
        } else {
            b.push(call(&on, i).await?);
            a.push(call(&off, i).await?);
        }
    }
    off.close().await;
    on.close().await;
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (off50, on50) = (percentile(&a, 0.5), percentile(&b, 0.5));
    Ok(json!({
        "calls": n,
        "no_set_p50_us": round(off50),
        "no_set_p99_us": round(percentile(&a, 0.99)),
        "with_100_policies_p50_us": round(on50),
        "with_100_policies_p99_us": round(percentile(&b, 0.99)),
        "overhead_p50_pct": round((on50 / off50 - 1.0) * 100.0),
        "aim_overhead_pct": 5,
        "note": "scope check (+ Cedar decision) + one durable tool.call append, Postgres on this host; no set and 100 policies on two databases, calls interleaved (alternating which goes first)",
    }))
}

/// The figures.
pub(crate) async fn bench() -> Result<Value> {
    let mut sizes = Vec::new();
    for n in [10, 100, 1_000] {
        sizes.push(decisions(n)?);
    }
    let gov = Governance::builder()
        .database_url("sqlite::memory:")
        .audit_secret(SECRET)
        .migrate_on_connect(true)
        .connect()
        .await?;
    gov.scope()
        .register(ScopePolicy::new("agent-0".parse()?).allow_tools(["tool_7"]))
        .await?;
    gov.scope().check("agent-0", "tool_7").await?;
    let (off_p50, off_p99) = guarded(&gov, 200_000).await?;
    let set = PolicySet::parse(&policies(100), SETTINGS)?;
    gov.policies()
        .apply(Slot::Enforced, Some(&set), "bench")
        .await?;
    gov.scope().check("agent-0", "tool_7").await?;
    let (on_p50, on_p99) = guarded(&gov, 20_000).await?;
    gov.close().await;
    let tool_call = guarded_tool_call(2_000).await?;
    Ok(json!({
        "policies": {
            "decision_latency": sizes,
            "aim_p50_us_at_100_policies": 20,
            "guarded_scope_check_no_set_p50_us": (off_p50 * 1000.0).round() / 1000.0,
            "guarded_scope_check_no_set_p99_us": (off_p99 * 1000.0).round() / 1000.0,
            "guarded_scope_check_100_policies_p50_us": round(on_p50),
            "guarded_scope_check_100_policies_p99_us": round(on_p99),
            "guarded_tool_call": tool_call,
        }
    }))
}
