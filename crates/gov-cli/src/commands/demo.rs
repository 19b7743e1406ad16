//! `governance demo`: a simulated agent a newcomer can watch. It listens first (so a demo that
//! cannot serve writes nothing), migrates, runs concurrent sessions through the SDK, takes an
//! agent through every gate, verifies the chain, then serves the console with a demo admin
//! while a small simulated workload keeps running.
//!
//! Every LLM call the demo makes goes through the SDK's guarded path ([`gov_sdk::llm::GuardClient`])
//! against a provider simulated in this process: real reservations and settlements, real
//! `llm.request`/`llm.response` events, so the events, `governance budget`, the console and the
//! report all count the same records. Nothing leaves the machine.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use gov_sdk::admin::Admin;
use gov_sdk::llm::{Completion, GuardClient, LlmCall};
use gov_sdk::{AuditEvent, AuditSecret, Governance, TokenUsage};
use owo_colors::OwoColorize;

use crate::cli::{DemoArgs, Global};
use crate::output::{Out, plural};

/// The user the demo signs in to the console as.
const DEMO_USER: &str = "demo";
/// The simulated provider's name and model: priced as OpenAI's gpt-4o-mini.
const PROVIDER: &str = "openai";
const MODEL: &str = "gpt-4o-mini";
/// How often the workload served with the console acts.
const WORKLOAD_TICK: Duration = Duration::from_secs(2);

/// The URL without credentials or parameters, for display.
pub(crate) fn display_url(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split('?').next().unwrap_or(rest).to_owned()
}

/// One tool step of the simulated agent: kind and payload (the host's own kinds: what
/// governance itself records comes from the real gates).
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

/// An LLM provider simulated in this process, called through the SDK's guarded path: the
/// gates, the reservation, `llm.request`, the (simulated) answer, the settlement with its usage
/// and `llm.response` are all real.
#[derive(Clone)]
struct SimulatedLlm {
    client: GuardClient,
}

impl SimulatedLlm {
    async fn new(gov: &Governance) -> Result<Self, gov_sdk::Error> {
        let client = gov
            .llm()
            .client(PROVIDER)
            .model_family(MODEL)
            .build()
            .await?;
        Ok(Self { client })
    }

    /// One call: `input` tokens in, `output` out, at most `max_tokens`.
    async fn chat(
        &self,
        agent: &str,
        session: &str,
        input: u64,
        output: u64,
        max_tokens: u64,
    ) -> Result<gov_sdk::llm::Receipt, gov_sdk::Error> {
        let call = LlmCall::new(agent, session, MODEL)
            .max_tokens(max_tokens)
            .input_tokens(input);
        let answer = self
            .client
            .guard(call, || async move {
                Ok::<_, std::convert::Infallible>(
                    Completion::new("(a simulated answer)")
                        .usage(TokenUsage {
                            input_tokens: input,
                            output_tokens: output,
                            cached_input_tokens: 0,
                        })
                        .finish_reason("stop"),
                )
            })
            .await?;
        Ok(answer.receipt)
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

/// Listens on the console's address before anything is written, so a demo that cannot serve
/// (the port is taken) leaves nothing behind.
async fn listen(bind: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        anyhow::Error::new(gov_sdk::Error::Config(format!(
            "cannot listen on {bind}: {e}; nothing was written. Is another demo or console running? Choose another address with --bind 127.0.0.1:8081, or pass --no-serve"
        )))
    })
}

/// Connects the demo's handle: the operator tools' settings, and settlements made before each
/// call returns, so every figure printed is already in the record.
async fn connect(url: &str, secret: AuditSecret) -> anyhow::Result<Governance> {
    Ok(Governance::builder()
        .database_url(url)
        .audit_secret_parsed(secret)
        .previous_audit_secrets_from_env()
        .spool(false)
        .settle_in_background(false)
        .check_chains_on_connect(Vec::<String>::new())
        .connect()
        .await?)
}

/// What the sessions did.
#[derive(Default)]
struct SessionTotals {
    by_kind: BTreeMap<&'static str, u64>,
    llm_calls: u64,
    llm_cost: i64,
    llm_refused: u64,
}

pub(crate) async fn run(args: DemoArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let chain = args.chain.clone();
    gov_sdk::ChainId::new(&chain).map_err(gov_sdk::Error::from)?;
    gov_sdk::AgentId::new(&args.agent).map_err(gov_sdk::Error::from)?;
    let listener = match args.no_serve {
        true => None,
        false => Some(listen(args.bind).await?),
    };
    let target = super::Target::resolve(global).await?;
    let url = target.url.clone();
    let (secret, kept) = match (
        &args.secret.audit_secret_file,
        std::env::var(gov_sdk::ENV_AUDIT_SECRET),
    ) {
        (None, Err(_)) => {
            let (s, path) = demo_secret()?;
            (s, Some(path))
        }
        _ => (target.audit_secret(&args.secret)?, None),
    };

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
    let migrate_line = match target.migrated_here() {
        Some(applied) => format!("migrate   {applied} applied to the new local database"),
        None if admin.schema_is_current().await? => "migrate   schema is current".to_owned(),
        None => {
            let m = admin.migrate().await?;
            format!("migrate   {} applied, {} known", m.applied, m.known)
        }
    };
    if human {
        out.line(migrate_line);
    }

    let gov = connect(&url, secret).await?;
    let llm = SimulatedLlm::new(&gov).await?;
    let run_id = time::OffsetDateTime::now_utc().unix_timestamp();
    let policies = register_policies(&gov, &admin, &args.agent).await?;
    if human {
        out.line(&policies);
    }
    let started = Instant::now();
    let per_session = args.events.div_ceil(args.sessions);
    let bar = crate::progress::bar(out, u64::from(args.events), "logging");
    let mut tasks = Vec::new();
    for s in 0..args.sessions {
        let n = per_session.min(args.events.saturating_sub(s * per_session));
        let (gov, llm, chain, agent) =
            (gov.clone(), llm.clone(), chain.clone(), args.agent.clone());
        let session = format!("demo-{run_id}-{s}");
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            simulate(&gov, &llm, &chain, &agent, &session, n, &bar).await
        }));
    }
    let mut totals = SessionTotals::default();
    for t in tasks {
        let one = t
            .await
            .map_err(|e| anyhow::anyhow!("a demo session stopped: {e}"))??;
        for (k, n) in one.by_kind {
            *totals.by_kind.entry(k).or_default() += n;
        }
        totals.llm_calls += one.llm_calls;
        totals.llm_cost += one.llm_cost;
        totals.llm_refused += one.llm_refused;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let logged: u64 = totals.by_kind.values().sum();
    if human {
        let rate = logged as f64 / elapsed.as_secs_f64().max(1e-9);
        out.line(format!(
            "logged    {logged} tool events from {} sessions in {:.2} s ({rate:.0} events/s)",
            args.sessions,
            elapsed.as_secs_f64()
        ));
        let kinds: Vec<String> = totals
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.line(format!("          {}", kinds.join(", ")));
        out.line(format!(
            "llm       {} through the SDK's guard to a simulated {MODEL} in this process: {} settled{}",
            plural(totals.llm_calls, "call", "calls"),
            gov_sdk::MicroUsd(totals.llm_cost),
            if totals.llm_refused > 0 {
                format!(", {} refused by the session budget", totals.llm_refused)
            } else {
                String::new()
            }
        ));
    }
    let gates = walk_gates(&gov, &llm, &args.agent, run_id, !args.no_serve).await?;
    let mut gate_lines = vec![policies];
    gate_lines.extend(gates.lines);
    if human {
        for line in &gate_lines[1..] {
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
            "llm": {
                "calls": totals.llm_calls + gates.llm_calls,
                "cost_micros": totals.llm_cost + gates.llm_cost,
            },
            "gates": gate_lines,
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
                "verify    {} {}, seq 1..{}, key {}",
                "clean".green().bold(),
                plural(report.events_checked, "event", "events"),
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
    let Some(listener) = listener.filter(|_| clean) else {
        gov.close().await;
        admin.close().await;
        return Ok(if clean {
            ExitCode::SUCCESS
        } else {
            super::verify::conclude(out, std::slice::from_ref(&report))
        });
    };

    // Serve the console, with a demo admin whose password is kept between runs.
    let login = demo_login(&gov, &admin).await;
    // Whoever stops the demo before deciding its request leaves nothing waiting: the demo's
    // scripted operator denies it on the way out.
    let closer = match gates.pending {
        Some(_) => demo_operator(&gov, &admin).await.ok(),
        None => None,
    };
    admin.close().await;
    let (password, kept_in) = match login {
        Ok(l) => l,
        Err(e) => {
            gov.close().await;
            return Err(anyhow::Error::new(gov_sdk::Error::Config(format!(
                "the console needs the schema owner's database URL to manage its users and decide gates ({e}); run the demo as the owner, or pass --no-serve"
            ))));
        }
    };
    let addr = listener.local_addr().unwrap_or(args.bind);
    out.line(format!(
        "console   http://{addr}/  user {DEMO_USER}  password {password}"
    ));
    if let Some(p) = kept_in {
        out.line(format!(
            "          (the password is kept in {}; later demos reuse it)",
            p.display()
        ));
    }
    out.line("          approve the waiting wire_money request, halt or resume agents, watch events live");
    if let Some(id) = gates.pending {
        let waiter = gov.clone();
        tokio::spawn(async move {
            match waiter
                .gates()
                .wait_for(id, Duration::from_secs(3_600))
                .await
            {
                Ok(_) => {
                    println!("agent     the wire_money request was approved: the agent goes on")
                }
                Err(e) => println!("agent     the wire_money request ended: {e}"),
            }
        });
    }
    out.line(format!(
        "workload  {} keeps working while the console is served (simulated: an LLM call and a tool call every {} s, in session demo-{run_id}-live…); Ctrl-C stops it and the console",
        args.agent,
        WORKLOAD_TICK.as_secs()
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(workload(
        gov.clone(),
        llm,
        chain.clone(),
        args.agent.clone(),
        format!("demo-{run_id}-live"),
        stopped,
    ));
    let served = tokio::select! {
        r = gov_console::serve_on(gov.clone(), gov_console::ConsoleConfig::default(), listener) => {
            r.map_err(|e| anyhow::anyhow!("the console stopped: {e}"))
        }
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = stop.send(true);
    match tokio::time::timeout(Duration::from_secs(10), worker).await {
        Ok(Ok(Err(e))) => out.warn(format!("workload  stopped: {e}")),
        Ok(_) => {}
        Err(_) => out.warn("workload  did not stop within 10 s"),
    }
    if let (Some(id), Some(operator)) = (gates.pending, &closer)
        && matches!(gov.gates().get(id).await, Ok(r) if r.status == gov_sdk::GateStatus::Pending)
    {
        match gov
            .gates()
            .deny(operator, id, "the demo stopped before anyone decided")
            .await
        {
            Ok(_) => out
                .line("approval  the undecided wire_money request was denied as the demo stopped"),
            Err(e) => out.warn(format!(
                "approval  the wire_money request stays pending: {e}"
            )),
        }
    }
    gov.close().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The demo user's password: the one kept from an earlier run when it still signs in, else a
/// new one (kept, mode 600, in the data directory when there is one). Returns it and where it
/// is kept.
async fn demo_login(
    gov: &Governance,
    admin: &Admin,
) -> Result<(String, Option<std::path::PathBuf>), gov_sdk::Error> {
    let path = crate::local::data_dir()
        .ok()
        .map(|d| d.join("demo-console-password"));
    let kept = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if let Some(p) = &kept
        && gov.operators().authenticate(DEMO_USER, p).await.is_ok()
    {
        return Ok((p.clone(), path));
    }
    let password = match kept.clone() {
        Some(p) => p,
        None => {
            let (_, text) = AuditSecret::generate()?;
            text.chars().take(20).collect()
        }
    };
    let exists = admin
        .operators()
        .await?
        .iter()
        .any(|u| u.username == DEMO_USER);
    if exists {
        admin.reset_operator_password(DEMO_USER, &password).await?;
        admin.set_operator_disabled(DEMO_USER, false).await?;
    } else {
        admin
            .add_operator(DEMO_USER, gov_sdk::OperatorRole::Admin, &password)
            .await?;
    }
    let kept_in = match (kept, path) {
        (Some(_), path) => path,
        (None, Some(path)) => keep_file(&path, &password).ok().map(|()| path),
        (None, None) => None,
    };
    Ok((password, kept_in))
}

/// Creates a new file (never one that exists, nor through a symlink planted at its name) that
/// only its owner may read.
fn keep_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    crate::local::ensure_data_dir().map_err(std::io::Error::other)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// Registers the demo agent's scope and budget, before any call.
async fn register_policies(gov: &Governance, admin: &Admin, agent: &str) -> anyhow::Result<String> {
    use gov_sdk::{BudgetPolicy, MicroUsd, ScopePolicy};
    if gov.presence().is_halted(agent).await? {
        // Only an authenticated operator resumes: the demo signs in as its scripted operator.
        let operator = demo_operator(gov, admin).await?;
        gov.presence()
            .resume(&operator, agent, "a new demo run starts")
            .await?;
    }
    gov.presence().heartbeat(agent).await?;
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
            allowed_apis: [PROVIDER.to_owned()].into(),
            hidden_tools: ["delete_customer".to_owned()].into(),
        })
        .await?;
    let mut policy = BudgetPolicy::new(agent.parse()?);
    policy.per_session = Some(MicroUsd(SESSION_CAP));
    gov.cost().register(policy).await?;
    Ok(format!(
        "policies  {agent} may use 5 tools and {PROVIDER}; at most {} per session",
        MicroUsd(SESSION_CAP)
    ))
}

/// The demo agent's budget per session, micro-USD.
const SESSION_CAP: i64 = 2_000;

/// What the walk through the gates did.
struct GateWalk {
    lines: Vec<String>,
    pending: Option<uuid::Uuid>,
    llm_calls: u64,
    llm_cost: i64,
}

/// Takes the simulated agent through every gate: an allowed and a denied tool, LLM calls until
/// the session budget refuses one, a loop, a request left waiting for approval (only when the
/// console is served, so someone can decide it), and a halted agent.
async fn walk_gates(
    gov: &Governance,
    llm: &SimulatedLlm,
    agent: &str,
    run_id: i64,
    serving: bool,
) -> anyhow::Result<GateWalk> {
    let mut lines = Vec::new();
    let session = format!("demo-{run_id}-budget");
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

    let (mut calls, mut cost) = (0u64, 0i64);
    let refused = loop {
        match llm.chat(agent, &session, 800, 420, 512).await {
            Ok(receipt) => {
                calls += 1;
                cost += receipt.cost.0;
            }
            Err(gov_sdk::Error::BudgetExceeded { .. }) => break true,
            Err(e) => return Err(e.into()),
        }
        if calls >= 100 {
            break false;
        }
    };
    lines.push(format!(
        "budget    {} to {MODEL} in session {session} ({} settled); the next {} (cap {})",
        plural(calls, "call", "calls"),
        gov_sdk::MicroUsd(cost),
        if refused {
            "was refused: budget.denied"
        } else {
            "was not refused?"
        },
        gov_sdk::MicroUsd(SESSION_CAP)
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

    let pending = if serving {
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
        Some(request.id)
    } else {
        lines.push(
            "approval  skipped with --no-serve: no console to decide a wire_money request".into(),
        );
        None
    };

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
        pending,
        llm_calls: calls,
        llm_cost: cost,
    })
}

/// One session: `n` tool events, and an LLM call before every fourth (until the session's
/// budget refuses one).
async fn simulate(
    gov: &Governance,
    llm: &SimulatedLlm,
    chain: &str,
    agent: &str,
    session_id: &str,
    n: u32,
    bar: &indicatif::ProgressBar,
) -> Result<SessionTotals, gov_sdk::Error> {
    let mut totals = SessionTotals::default();
    let mut parent = None;
    let mut budget_left = true;
    for i in 0..n {
        if i % 4 == 0 && budget_left {
            match llm.chat(agent, session_id, 300, 80, 120).await {
                Ok(receipt) => {
                    totals.llm_calls += 1;
                    totals.llm_cost += receipt.cost.0;
                }
                Err(gov_sdk::Error::BudgetExceeded { .. }) => {
                    totals.llm_refused += 1;
                    budget_left = false;
                }
                Err(e) => return Err(e),
            }
        }
        let (kind, payload) = step(i);
        let mut b = AuditEvent::builder(agent, kind)
            .chain(chain)
            .session(session_id)
            .payload(payload);
        if let Some(p) = parent {
            b = b.parent(p);
        }
        let ev = b.build()?;
        let id = ev.event_id;
        gov.audit().log(ev).await?;
        parent = Some(id);
        *totals.by_kind.entry(kind).or_default() += 1;
        bar.inc(1);
    }
    Ok(totals)
}

/// The workload served with the console: every tick a heartbeat, an LLM call and a tool call
/// and result, until `stop` says so. A halted agent or a spent session budget is shown by the
/// console as refusals; the workload goes on.
async fn workload(
    gov: Governance,
    llm: SimulatedLlm,
    chain: String,
    agent: String,
    session_prefix: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), gov_sdk::Error> {
    for tick in 0u32.. {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = tokio::time::sleep(WORKLOAD_TICK) => {}
        }
        // A new session every 10 calls, so the per-session budget is not the only thing shown.
        let session = format!("{session_prefix}{}", tick / 10);
        gov.presence().heartbeat(&agent).await?;
        match llm.chat(&agent, &session, 300, 80, 120).await {
            Ok(_)
            | Err(gov_sdk::Error::BudgetExceeded { .. })
            | Err(gov_sdk::Error::Halted { .. }) => {}
            Err(e) if e.is_config() => {}
            Err(e) => return Err(e),
        }
        for i in [tick * 2, tick * 2 + 1] {
            let (kind, payload) = step(i);
            let ev = AuditEvent::builder(&agent, kind)
                .chain(&chain)
                .session(&session)
                .payload(payload)
                .build()?;
            gov.audit().log(ev).await?;
        }
    }
    Ok(())
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
