//! An agent loop in a Rust service, governed by gov-sdk against an OpenAI-compatible endpoint.
//!
//! Every model call goes through the guarded path (halt → scope → budget reservation →
//! `llm.request` → the call → settlement → `llm.response`), every tool call through the scope
//! check and the loop detector, and the agent reports heartbeats so operators can see it and
//! halt it. Run it with:
//!
//! ```sh
//! export GOVERNANCE_DATABASE_URL=sqlite://$HOME/.local/share/governance/governance.db  # after `governance demo`
//! export GOVERNANCE_AUDIT_SECRET=$(openssl rand -hex 32)
//! export OPENAI_API_KEY=sk-...              # optional for a local server
//! export OPENAI_BASE_URL=http://127.0.0.1:8000   # default https://api.openai.com
//! export OPENAI_MODEL=gpt-4o-mini           # default gpt-4o-mini
//! cargo run -p gov-sdk --example agent_loop
//! ```
//!
//! Then `governance tail` shows the calls as they happen, `governance budget research-agent`
//! their cost, and `governance report` counts them in the coverage section.

use gov_sdk::llm::openai::{ChatMessage, ChatRequest};
use gov_sdk::{BudgetPolicy, Error, Governance, MicroUsd, ScopePolicy};

const AGENT: &str = "research-agent";
const MAX_STEPS: usize = 4;

/// The one tool of this agent: a stand-in for a real lookup.
fn lookup(topic: &str) -> String {
    format!("(lookup result for {topic:?}: 3 documents found)")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com".into());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into());
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();

    // One handle per service, shared by every task.
    let gov = Governance::builder()
        .database_url_from_env()
        .audit_secret_from_env()
        .connect()
        .await?;

    // Policies are usually set by operators; set here so the example runs on its own. The agent
    // may use this model of OpenAI (scope names are `provider` or `provider:model`) and one tool,
    // and may spend at most $0.05 per session.
    let agent = AGENT.parse()?;
    gov.scope()
        .register(
            ScopePolicy::new(agent)
                .allow_apis([format!("openai:{model}")])
                .allow_tools(["lookup"]),
        )
        .await?;
    gov.cost()
        .register(BudgetPolicy::new(AGENT.parse()?).per_session(MicroUsd::from_cents(5)))
        .await?;

    // Built once, registered in the coverage registry (the host only as a salted digest).
    let mut builder = gov.llm().openai(&base).model_family(&model);
    if !key.is_empty() {
        builder = builder.api_key(key);
    }
    let client = builder.build().await?;

    let session = format!("run-{}", std::process::id());
    let mut messages = vec![
        ChatMessage::system(
            "You are a research agent. To look something up, answer exactly `LOOKUP: <topic>`. \
             When you can answer, start your answer with `ANSWER:`.",
        ),
        ChatMessage::user("What should a Rust service log for EU AI Act Article 12?"),
    ];

    for step in 1..=MAX_STEPS {
        gov.presence().heartbeat(AGENT).await?;
        let req = ChatRequest::new(&model, messages.clone()).max_tokens(300);
        let reply = match client.chat(AGENT, &session, req).await {
            Ok(reply) => reply,
            // Refusals are decisions, already audited: stop the loop and say why.
            Err(
                e @ (Error::Halted { .. }
                | Error::BudgetExceeded { .. }
                | Error::ScopeViolation { .. }),
            ) => {
                println!("step {step}: stopped by governance: {e}");
                break;
            }
            // A provider failure is audited as llm.error and its reservation released.
            Err(e @ Error::Provider { .. }) => {
                println!("step {step}: the provider failed: {e}");
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let text = reply.output.text();
        let r = &reply.receipt;
        println!(
            "step {step}: {} in / {} out tokens, {} (reserved {}){}",
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.cost,
            r.reserved,
            if r.estimated { ", estimated" } else { "" }
        );
        messages.push(ChatMessage::assistant(text.clone()));

        if let Some(topic) = text.trim().strip_prefix("LOOKUP:") {
            let topic = topic.trim();
            // A tool call: in scope, and not the same call over and over.
            gov.scope().check(AGENT, "lookup").await?;
            gov.loops()
                .record(
                    AGENT,
                    &session,
                    "lookup",
                    &serde_json::json!({ "topic": topic }),
                )
                .await?;
            messages.push(ChatMessage::user(lookup(topic)));
            continue;
        }
        println!("{text}");
        break;
    }

    // Calls settle in the background: wait for the last one before reading the counters.
    gov.llm().settled().await;
    let spent = gov
        .cost()
        .snapshot(AGENT, &session)
        .await?
        .status
        .session
        .spent;
    println!("session {session}: spent {spent}");
    gov.close().await;
    Ok(())
}
