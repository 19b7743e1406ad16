//! Contracts: pre and post conditions on a tool call, and the governed tool runner.
//!
//! [`Contracts::run`] checks, in order: the agent is not halted; every precondition
//! (`scope_allowed`, `budget_available`, `hitl_approved`, or a custom predicate); the loop
//! detector. Only then does it run the tool, auditing `tool.started` (with the SHA-256 of the call,
//! the hash an approval is bound to) and `tool.finished`, and
//! check the postconditions on the tool's output. Any failed condition is audited as
//! `contract.violated` and returned as [`Error::ContractViolation`]; nothing runs after a failed
//! precondition.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use gov_core::events::{self, SystemEvent};
use serde_json::Value;

use crate::gates::Approval;
use crate::{Error, Governance, Result};

/// What a condition sees.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The agent.
    pub agent: &'a str,
    /// Its session.
    pub session: &'a str,
    /// The tool.
    pub tool: &'a str,
    /// The arguments.
    pub args: &'a Value,
}

/// A custom predicate over the call: `Ok(())` or why not.
pub type Predicate = Arc<dyn Fn(&CallContext<'_>) -> std::result::Result<(), String> + Send + Sync>;
/// A custom predicate over the call and the tool's output.
pub type PostPredicate =
    Arc<dyn Fn(&CallContext<'_>, &Value) -> std::result::Result<(), String> + Send + Sync>;

/// A precondition.
#[derive(Clone)]
pub enum Pre {
    /// The agent's scope allows the tool.
    ScopeAllowed,
    /// The agent's budget has headroom for the session and the day.
    BudgetAvailable,
    /// A human approved this exact call; the approval is consumed.
    HitlApproved,
    /// A named custom predicate.
    Custom(String, Predicate),
}

impl Pre {
    fn name(&self) -> &str {
        match self {
            Self::ScopeAllowed => "scope_allowed",
            Self::BudgetAvailable => "budget_available",
            Self::HitlApproved => "hitl_approved",
            Self::Custom(n, _) => n,
        }
    }
}

impl std::fmt::Debug for Pre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A postcondition: a named predicate over the output.
#[derive(Clone)]
pub struct Post(pub String, pub PostPredicate);

impl std::fmt::Debug for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The conditions of one tool.
#[derive(Debug, Clone, Default)]
pub struct Contract {
    /// Checked before the tool runs, in order.
    pub pre: Vec<Pre>,
    /// Checked on the output, in order.
    pub post: Vec<Post>,
}

impl Contract {
    /// An empty contract.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a precondition.
    #[must_use]
    pub fn require(mut self, pre: Pre) -> Self {
        self.pre.push(pre);
        self
    }

    /// Adds a custom precondition.
    #[must_use]
    pub fn require_that(
        mut self,
        name: &str,
        f: impl Fn(&CallContext<'_>) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.pre.push(Pre::Custom(name.to_owned(), Arc::new(f)));
        self
    }

    /// Adds a postcondition.
    #[must_use]
    pub fn ensure_that(
        mut self,
        name: &str,
        f: impl Fn(&CallContext<'_>, &Value) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.post.push(Post(name.to_owned(), Arc::new(f)));
        self
    }
}

/// Contracts and the governed runner of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Contracts<'g> {
    gov: &'g Governance,
}

impl<'g> Contracts<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    async fn audit<P: SystemEvent>(&self, ctx: &CallContext<'_>, payload: P) {
        let event = payload.event(ctx.agent).session(ctx.session).build();
        let result = match event {
            Ok(ev) => self.gov.audit().record(ev).await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(agent = ctx.agent, kind = %P::KIND, error = %e, "could not audit a governed call");
        }
    }

    async fn violated(
        &self,
        ctx: &CallContext<'_>,
        phase: &'static str,
        condition: &str,
        detail: String,
    ) -> Error {
        self.audit(
            ctx,
            events::ContractViolated {
                tool: ctx.tool.to_owned(),
                phase: phase.to_owned(),
                condition: condition.to_owned(),
                detail: detail.clone(),
            },
        )
        .await;
        Error::ContractViolation {
            agent: ctx.agent.to_owned(),
            tool: ctx.tool.to_owned(),
            phase,
            condition: condition.to_owned(),
            detail,
        }
    }

    /// Checks the preconditions only (consuming the approval for `hitl_approved`).
    pub async fn check_pre(
        &self,
        contract: &Contract,
        ctx: &CallContext<'_>,
        approval: Option<&Approval>,
    ) -> Result<()> {
        self.gov.presence().assert_not_halted(ctx.agent).await?;
        for pre in &contract.pre {
            let outcome = match pre {
                Pre::ScopeAllowed => self.gov.scope().check(ctx.agent, ctx.tool).await,
                Pre::BudgetAvailable => self
                    .gov
                    .cost()
                    .check_or_raise(ctx.agent, ctx.session)
                    .await
                    .map(|_| ()),
                Pre::HitlApproved => match approval {
                    Some(a) => {
                        self.gov
                            .gates()
                            .consume(a, ctx.agent, Some(ctx.session), ctx.tool, ctx.args)
                            .await
                    }
                    None => Err(Error::Config(
                        "no approval was given for a call that requires one".into(),
                    )),
                },
                Pre::Custom(_, f) => f(ctx).map_err(Error::Config),
            };
            if let Err(e) = outcome {
                // Storage outages are not contract violations; they fail closed as they are.
                if e.is_unavailable() {
                    return Err(e);
                }
                return Err(self.violated(ctx, "pre", pre.name(), e.to_string()).await);
            }
        }
        Ok(())
    }

    /// Runs `tool` under `contract`: halt check, preconditions, loop detection, the tool
    /// (audited as `tool.started` and `tool.finished`), postconditions on its output.
    pub async fn run<F, Fut, E>(
        &self,
        contract: &Contract,
        ctx: CallContext<'_>,
        approval: Option<&Approval>,
        tool: F,
    ) -> Result<Value>
    where
        F: FnOnce(Value) -> Fut,
        Fut: Future<Output = std::result::Result<Value, E>>,
        E: std::fmt::Display,
    {
        self.check_pre(contract, &ctx, approval).await?;
        self.gov
            .loops()
            .record(ctx.agent, ctx.session, ctx.tool, ctx.args)
            .await?;
        let hash = gov_core::action_hash(ctx.tool, ctx.args)?;
        self.audit(
            &ctx,
            events::ToolStarted {
                tool: ctx.tool.to_owned(),
                args_sha256: Some(hash.iter().map(|b| format!("{b:02x}")).collect()),
            },
        )
        .await;
        let started = Instant::now();
        let output = tool(ctx.args.clone()).await;
        let ms = started.elapsed().as_millis() as u64;
        let output = match output {
            Ok(v) => {
                self.audit(
                    &ctx,
                    events::ToolFinished {
                        tool: ctx.tool.to_owned(),
                        ok: true,
                        duration_ms: ms,
                        error: None,
                    },
                )
                .await;
                v
            }
            Err(e) => {
                let message = e.to_string();
                self.audit(
                    &ctx,
                    events::ToolFinished {
                        tool: ctx.tool.to_owned(),
                        ok: false,
                        duration_ms: ms,
                        error: Some(message.clone()),
                    },
                )
                .await;
                return Err(Error::ToolFailed {
                    tool: ctx.tool.to_owned(),
                    message,
                });
            }
        };
        for Post(name, f) in &contract.post {
            if let Err(detail) = f(&ctx, &output) {
                return Err(self.violated(&ctx, "post", name, detail).await);
            }
        }
        Ok(output)
    }
}
