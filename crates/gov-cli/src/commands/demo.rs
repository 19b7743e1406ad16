//! `governance demo`: a simulated agent a newcomer can watch. It migrates, logs events from
//! concurrent sessions through the SDK, takes an agent through every gate, verifies the chain,
//! then serves the console with a demo admin.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use gov_sdk::admin::Admin;
use gov_sdk::{AuditEvent, AuditSecret, Governance};
use owo_colors::OwoColorize;

use crate::cli::{DemoArgs, Global};
use crate::output::Out;

/// The URL without credentials or parameters, for display.
pub(crate) fn display_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

/// One step of the simulated agent: kind and payload (the host's own kinds: what governance
/// itself records comes from the real gates in `walk_gates`).
fn step(i: u32) -> (&'static str, serde_json::Value) {
    let tools = ["read_invoice", "send_email", "search_docs", "update_crm"];
    let tool = tools[(i as usize / 2) % tools.len()];
    match i % 2 {
        0 => (
            "tool.call",
            serde_json::json!({ "tool": tool, "args": { "id": format!("INV-{}", 1000 + i) } }),
        ),
        _ => (
            "tool.result",
            serde_json::json!({ "tool": tool, "ok": true, "latency_ms": 12 + i % 40 }),
        ),
    }
}

/// The demo's audit secret when none is configured: generated once and kept (mode 600) in the
/// user's data directory beside the local database, so later runs (and other commands on the
/// local database) verify the same chain.
fn demo_secret() -> anyhow::Result<(AuditSecret, std::path::PathBuf)> {
    let config = |m: String| anyhow::Error::new(gov_sdk::Error::Config(m));
    let path = crate::local::secret_path()?;
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok((
            AuditSecret::parse(&text).map_err(gov_sdk::Error::from)?,
            path,
        ));
    }
    crate::local::ensure_data_dir()?;
    let (secret, text) = AuditSecret::generate().map_err(gov_sdk::Error::from)?;
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| {
        config(format!(
            "cannot write {}: {e}; set GOVERNANCE_AUDIT_SECRET",
            path.display()
        ))
    })?;
    Ok((secret, path))
}

pub(crate) async fn run(args: DemoArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let url = super::database_url(global).await?;
    let (secret, kept) = match (
        &args.secret.audit_secret_file,
        std::env::var(gov_sdk::ENV_AUDIT_SECRET),
    ) {
        (None, Err(_)) => {
            let (s, path) = demo_secret()?;
            (s, Some(path))
        }
        _ => (super::audit_secret(&args.secret)?, None),
    };
    let chain = args.chain.clone();
    gov_sdk::ChainId::new(&chain).map_err(gov_sdk::Error::from)?;
    gov_sdk::AgentId::new(&args.agent).map_err(gov_sdk::Error::from)?;

    let human = !out.json();
    if human {
        out.line(format!("{}", "governance demo".bold()));
        out.line(format!("  database  {}", display_url(&url)));
        out.line(format!("  chain     {chain}"));
        if let Some(p) = &kept {
            out.line(format!(
                "  secret    generated for demos and kept in {} (set GOVERNANCE_AUDIT_SECRET to use your own)",
                p.display()
            ));
        }
    }
    let admin = Admin::connect_or_create(&url).await?;
    if admin.schema_is_current().await? {
        if human {
            out.line("migrate   schema is current");
        }
    } else {
        let migrated = admin.migrate().await?;
        if human {
            out.line(format!(
                "migrate   {} applied, {} known",
                migrated.applied, migrated.known
            ));
        }
    }

    let gov = super::connect(&url, secret).await?;
    let started = Instant::now();
    let per_session = args.events.div_ceil(args.sessions);
    let bar = crate::progress::bar(out, u64::from(args.events), "logging");
    let mut tasks = Vec::new();
    for s in 0..args.sessions {
        let n = per_session.min(args.events.saturating_sub(s * per_session));
        let (gov, chain, agent) = (gov.clone(), chain.clone(), args.agent.clone());
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            simulate(&gov, &chain, &agent, s, n, &bar).await
        }));
    }
    let mut by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    for t in tasks {
        let kinds = t
            .await
            .map_err(|e| anyhow::anyhow!("a demo session stopped: {e}"))??;
        for k in kinds {
            *by_kind.entry(k).or_default() += 1;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let logged: u64 = by_kind.values().sum();
    if human {
        let rate = logged as f64 / elapsed.as_secs_f64().max(1e-9);
        out.line(format!(
            "logged    {logged} events from {} sessions in {:.2} s ({rate:.0} events/s)",
            args.sessions,
            elapsed.as_secs_f64()
        ));
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out.line(format!("          {}", kinds.join(", ")));
    }
    let gates = walk_gates(&gov, &admin, &args.agent).await?;
    if human {
        for line in &gates.lines {
            out.line(line);
        }
    }
    let report = gov.audit().verify_named(&chain).await?;
    let clean = report.is_clean();
    if out.json() {
        out.emit_json(&serde_json::json!({
            "status": report.verdict().as_str(),
            "chain": chain,
            "events": logged,
            "sessions": args.sessions,
            "elapsed_ms": elapsed.as_millis() as u64,
            "gates": gates.lines,
            "pending_request": gates.pending,
            "verify": report,
        }));
    } else {
        match &report.finding {
            None if !clean => out.line(format!(
                "verify    {} {}",
                "UNVERIFIABLE".yellow().bold(),
                report
                    .unverifiable
                    .as_ref()
                    .map_or("", |u| u.advice.as_str())
            )),
            None => out.line(format!(
                "verify    {} {} events, seq 1..{}, key {}",
                "clean".green().bold(),
                report.events_checked,
                report.head_seq,
                report
                    .key_ids
                    .iter()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("-")
            )),
            Some(f) => out.line(format!("verify    {} {f}", "TAMPERED".red().bold())),
        }
    }
    if !clean {
        gov.close().await;
        admin.close().await;
        return Ok(super::verify::conclude(out, std::slice::from_ref(&report)));
    }
    if args.no_serve {
        gov.close().await;
        admin.close().await;
        return Ok(ExitCode::SUCCESS);
    }

    // Serve the console, with a demo admin whose password is new each run.
    let (_, password) = AuditSecret::generate().map_err(gov_sdk::Error::from)?;
    let password: String = password.chars().take(20).collect();
    let demo_user = async {
        let exists = admin
            .operators()
            .await?
            .iter()
            .any(|u| u.username == "demo");
        if exists {
            admin.reset_operator_password("demo", &password).await?;
            admin.set_operator_disabled("demo", false).await
        } else {
            admin
                .add_operator("demo", gov_sdk::OperatorRole::Admin, &password)
                .await
        }
    };
    let made = demo_user.await;
    admin.close().await;
    if let Err(e) = made {
        gov.close().await;
        return Err(anyhow::Error::new(gov_sdk::Error::Config(format!(
            "the console needs the schema owner's database URL to manage its users and decide gates ({e}); run the demo as the owner, or pass --no-serve"
        ))));
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| {
            anyhow::Error::new(gov_sdk::Error::Config(format!(
                "cannot listen on {}: {e}; choose another address with --bind, or pass --no-serve",
                args.bind
            )))
        })?;
    let addr = listener.local_addr().unwrap_or(args.bind);
    out.line(format!(
        "console   http://{addr}/  user demo  password {password}"
    ));
    out.line("          approve the waiting wire_money request, halt or resume agents, watch events live (Ctrl-C to stop)");
    if let Some(id) = gates.pending {
        let waiter = gov.clone();
        tokio::spawn(async move {
            match waiter
                .gates()
                .wait_for(id, std::time::Duration::from_secs(3_600))
                .await
            {
                Ok(_) => {
                    println!("agent     the wire_money request was approved: the agent goes on")
                }
                Err(e) => println!("agent     the wire_money request ended: {e}"),
            }
        });
    }
    tokio::select! {
        r = gov_console::serve_on(gov.clone(), gov_console::ConsoleConfig::default(), listener) => {
            r.map_err(|e| anyhow::anyhow!("the console stopped: {e}"))?;
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    gov.close().await;
    Ok(ExitCode::SUCCESS)
}

/// What the walk through the gates did.
struct GateWalk {
    lines: Vec<String>,
    pending: Option<uuid::Uuid>,
}

/// Takes the simulated agent through every gate: an allowed and a denied tool, spend until the
/// session budget refuses, a loop, a request left waiting for approval, and a halted agent.
async fn walk_gates(gov: &Governance, admin: &Admin, agent: &str) -> anyhow::Result<GateWalk> {
    use gov_sdk::{BudgetPolicy, MicroUsd, ScopePolicy, TokenUsage};
    let mut lines = Vec::new();
    let session = format!("run-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    gov.presence().heartbeat(agent).await?;
    if gov.presence().is_halted(agent).await? {
        // Only an authenticated operator resumes: the demo signs in as its scripted operator.
        let operator = demo_operator(gov, admin).await?;
        gov.presence()
            .resume(&operator, agent, "a new demo run starts")
            .await?;
    }
    gov.scope()
        .register(ScopePolicy {
            agent_id: agent.parse()?,
            allowed_tools: [
                "read_invoice",
                "send_email",
                "search_docs",
                "update_crm",
                "wire_money",
            ]
            .map(String::from)
            .into(),
            allowed_apis: ["openai".to_owned()].into(),
            hidden_tools: ["delete_customer".to_owned()].into(),
        })
        .await?;
    gov.scope().check(agent, "search_docs").await?;
    let denied = gov.scope().check(agent, "delete_customer").await.is_err();
    lines.push(format!(
        "scope     search_docs allowed; delete_customer {}",
        if denied {
            "denied (audited as scope.denied)"
        } else {
            "ALLOWED?"
        }
    ));

    let mut policy = BudgetPolicy::new(agent.parse()?);
    policy.per_session = Some(MicroUsd(2_000));
    gov.cost().register(policy).await?;
    let mut calls = 0;
    let refused = loop {
        match gov
            .cost()
            .reserve(agent, &session, "gpt-4o-mini", 800, Some(512))
            .await
        {
            Ok(hold) => {
                calls += 1;
                hold.settle(TokenUsage {
                    input_tokens: 800,
                    output_tokens: 420,
                    cached_input_tokens: 0,
                })
                .await?;
            }
            Err(gov_sdk::Error::BudgetExceeded { .. }) => break true,
            Err(e) => return Err(e.into()),
        }
        if calls >= 100 {
            break false;
        }
    };
    lines.push(format!(
        "budget    {calls} calls settled in session {session}; the next {} (cap $0.002000)",
        if refused {
            "was refused: budget.denied"
        } else {
            "was not refused?"
        }
    ));

    let args = serde_json::json!({ "q": "refund policy" });
    let mut warned = false;
    for _ in 0..3 {
        if let gov_sdk::LoopVerdict::Warned { .. } = gov
            .loops()
            .record(agent, &session, "search_docs", &args)
            .await?
        {
            warned = true;
        }
    }
    lines.push(format!(
        "loops     search_docs with the same arguments 3 times: {}",
        if warned {
            "loop.detected (warn)"
        } else {
            "not detected?"
        }
    ));

    let request = gov
        .gates()
        .request(
            agent,
            Some(&session),
            "wire_money",
            &serde_json::json!({ "amount_usd": 2500, "to": "ACME GmbH" }),
        )
        .await?;
    lines.push(format!(
        "approval  wire_money is waiting for a human: request {}",
        request.id
    ));

    let other = format!("{agent}-2");
    gov.presence().heartbeat(&other).await?;
    gov.presence()
        .halt_self(&other, "runaway loop in a test session")
        .await?;
    lines.push(format!(
        "halt      {other} halted by its service (a heartbeat never clears it; only an operator resumes it)"
    ));
    Ok(GateWalk {
        lines,
        pending: Some(request.id),
    })
}

async fn simulate(
    gov: &Governance,
    chain: &str,
    agent: &str,
    session: u32,
    n: u32,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<&'static str>, gov_sdk::Error> {
    let session_id = format!("session-{session}");
    let mut kinds = Vec::with_capacity(n as usize);
    let mut parent = None;
    for i in 0..n {
        let (kind, payload) = step(i);
        let mut b = AuditEvent::builder(agent, kind)
            .chain(chain)
            .session(&session_id)
            .payload(payload);
        if let Some(p) = parent {
            b = b.parent(p);
        }
        let ev = b.build()?;
        let id = ev.event_id;
        gov.audit().log(ev).await?;
        parent = Some(id);
        kinds.push(kind);
        bar.inc(1);
    }
    Ok(kinds)
}

/// The demo's scripted operator (`demo-operator`, role operator), signed in with a password
/// made for this run: the demo's own resumes are an operator's, recorded as such.
async fn demo_operator(gov: &Governance, admin: &Admin) -> anyhow::Result<gov_sdk::Operator> {
    const NAME: &str = "demo-operator";
    let (_, password) = AuditSecret::generate().map_err(gov_sdk::Error::from)?;
    let password: String = password.chars().take(24).collect();
    if admin.operators().await?.iter().any(|u| u.username == NAME) {
        admin.reset_operator_password(NAME, &password).await?;
        admin.set_operator_disabled(NAME, false).await?;
    } else {
        admin
            .add_operator(NAME, gov_sdk::OperatorRole::Operator, &password)
            .await?;
    }
    Ok(gov.operators().authenticate(NAME, &password).await?)
}

#[cfg(test)]
mod tests {
    use super::display_url;

    #[test]
    fn display_url_drops_credentials_and_parameters() {
        assert_eq!(
            display_url("postgres://u:secret@h:5432/db?sslmode=require"),
            "h:5432/db"
        );
        assert_eq!(display_url("postgres://h/db"), "h/db");
    }
}
