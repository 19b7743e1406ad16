//! Quick start: a service's first governed actions, against a private in-memory SQLite database
//! (nothing to install). Run it with `cargo run -p gov-sdk --example quickstart`.

use gov_sdk::TokenUsage;
use gov_sdk::{AuditEvent, AuditSecret, BudgetPolicy, Governance, MicroUsd, ScopePolicy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    quickstart().await
}

async fn quickstart() -> Result<(), Box<dyn std::error::Error>> {
    // In a service: .database_url("postgres://governance_app@db/app") (or
    // .database_url_from_env()) and .audit_secret_from_env() (GOVERNANCE_AUDIT_SECRET, made
    // with `openssl rand -hex 32`). Here: a migrated in-memory database and a fresh secret.
    let gov = Governance::builder()
        .database_url("sqlite::memory:")
        .migrate_on_connect(true)
        .audit_secret_parsed(AuditSecret::generate()?.0)
        .connect()
        .await?;

    // What the agent may do and spend (an agent without a budget policy may not spend).
    gov.scope()
        .register(ScopePolicy {
            agent_id: "billing-agent".parse()?,
            allowed_tools: ["read_invoice", "send_email"].map(String::from).into(),
            allowed_apis: ["openai".to_owned()].into(),
            hidden_tools: Default::default(),
        })
        .await?;
    gov.cost()
        .register(BudgetPolicy::new("billing-agent".parse()?).per_session(MicroUsd(50_000)))
        .await?;

    // Record what happened: returns once the row is durable in the audit chain.
    let event = AuditEvent::builder("billing-agent", "invoice.read")
        .session("s-42")
        .payload(serde_json::json!({ "invoice": "INV-7" }))
        .build()?;
    gov.audit().log(event).await?;

    // Before a tool call: halted? in scope?
    gov.presence().assert_not_halted("billing-agent").await?;
    gov.scope().check("billing-agent", "send_email").await?;
    let refused = gov.scope().check("billing-agent", "delete_customer").await;
    assert!(
        refused.is_err(),
        "not in scope: refused and audited as scope.denied"
    );

    // Around a model call: reserve from max_tokens, settle with the real usage. (Clients built
    // with gov.llm() do this, and record llm.request and llm.response, for every call.)
    let hold = gov
        .cost()
        .reserve("billing-agent", "s-42", "gpt-4o-mini", 800, Some(512))
        .await?;
    // ... the call ...
    let usage = TokenUsage {
        input_tokens: 800,
        output_tokens: 120,
        cached_input_tokens: 0,
    };
    let settled = hold.settle(usage).await?;

    let report = gov.audit().verify_chain().await?;
    assert!(report.is_clean());
    println!(
        "the call cost {}; the chain holds {} events and verifies clean",
        settled.cost, report.events_checked
    );
    gov.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_quickstart_runs_as_written() {
        super::quickstart().await.expect("the quick start runs");
    }
}
