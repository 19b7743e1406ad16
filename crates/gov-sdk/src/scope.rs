//! Scope: which tools and APIs each agent may use. Default deny; every denial is audited.
//!
//! Policies are stored, loaded when the handle connects, and reloaded when any process changes
//! them (LISTEN/NOTIFY). A check is an in-memory lookup while the listener is healthy; otherwise
//! it reads storage, and refuses when storage is out of reach.

use std::sync::Arc;

use gov_core::events::{self, SystemEvent};
use gov_core::{ScopeDenial, ScopePolicy};

use crate::cache::Allowed;
use crate::{Error, Governance, Result};

/// What was checked.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Tool(&'a str),
    Api(&'a str),
    /// An LLM call: provider and model.
    Model(&'a str, &'a str),
}

/// The verdict of `policy` (`None`: the agent has none) on `target`.
fn judge(policy: Option<&ScopePolicy>, target: Target<'_>) -> std::result::Result<(), ScopeDenial> {
    match (policy, target) {
        (None, _) => Err(ScopeDenial::NoPolicy),
        (Some(p), Target::Tool(t)) => p.check_tool(t),
        (Some(p), Target::Api(a)) => p.check_api(a),
        (Some(p), Target::Model(provider, model)) => p
            .check_api(provider)
            .or_else(|_| p.check_api(&format!("{provider}:{model}"))),
    }
}

/// Scope policies of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'g> {
    gov: &'g Governance,
}

impl<'g> Scope<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Stores `policy` (replacing the agent's previous one); every process reloads it.
    pub async fn register(&self, policy: ScopePolicy) -> Result<()> {
        self.gov.inner.store.put_scope_policy(&policy).await?;
        // Apply locally at once; the notification will confirm it.
        let agent = policy.agent_id.as_str().to_owned();
        self.gov
            .inner
            .shared
            .agents
            .put_policy(&agent, Some(policy));
        Ok(())
    }

    /// Removes an agent's policy: from then on it is denied everything.
    pub async fn unregister(&self, agent: &str) -> Result<bool> {
        let removed = self.gov.inner.store.delete_scope_policy(agent).await?;
        self.gov.inner.shared.agents.put_policy(agent, None);
        Ok(removed)
    }

    /// The agent's policy as currently enforced.
    pub async fn policy(&self, agent: &str) -> Result<Option<Arc<ScopePolicy>>> {
        let shared = &self.gov.inner.shared;
        if shared.healthy() {
            return Ok(shared.agents.policy(agent));
        }
        Ok(self
            .gov
            .inner
            .store
            .scope_policy(agent)
            .await?
            .map(Arc::new))
    }

    /// Allows or refuses a tool call. An unknown agent is refused; a refusal is audited as
    /// `scope.denied`.
    pub async fn check(&self, agent: &str, tool: &str) -> Result<()> {
        self.decide(agent, Target::Tool(tool)).await
    }

    /// Allows or refuses use of an API (a model provider, an external service).
    pub async fn check_api(&self, agent: &str, api: &str) -> Result<()> {
        self.decide(agent, Target::Api(api)).await
    }

    /// Allows or refuses an LLM call to `model` of `provider`: allowed when the agent's
    /// `allowed_apis` hold the whole provider (`openai`) or exactly `provider:model`
    /// (`openai:gpt-4o-mini`). A refusal is audited as `scope.denied` with
    /// `api: "provider:model"`.
    pub async fn check_model(&self, agent: &str, provider: &str, model: &str) -> Result<()> {
        self.decide(agent, Target::Model(provider, model)).await
    }

    /// Whether [`Self::check_model`] would allow `provider`'s `model` for `agent` now, without
    /// auditing anything (for listing models; a call still goes through `check_model`).
    pub async fn allows_model(&self, agent: &str, provider: &str, model: &str) -> Result<bool> {
        if !self.gov.inner.config.modules.scope {
            return Ok(true);
        }
        let policy = self.policy(agent).await?;
        Ok(judge(policy.as_deref(), Target::Model(provider, model)).is_ok())
    }

    /// The tools of `offered` the agent may be shown: hidden and disallowed ones are dropped.
    /// An unknown agent is shown nothing.
    pub async fn filter_tools<S: AsRef<str> + Clone>(
        &self,
        agent: &str,
        offered: &[S],
    ) -> Result<Vec<S>> {
        if !self.gov.inner.config.modules.scope {
            return Ok(offered.to_vec());
        }
        let policy = match self.policy(agent).await {
            Ok(p) => p,
            // Fail closed: when the policy cannot be read, show nothing.
            Err(e) if e.is_unavailable() => None,
            Err(e) => return Err(e),
        };
        Ok(match policy {
            Some(p) => p.filter_tools(offered).into_iter().cloned().collect(),
            None => Vec::new(),
        })
    }

    /// Scope (and the halt check) without the Cedar policy sets: for
    /// [`crate::policies::Policies::check`], which evaluates them itself with the call's context.
    #[cfg(feature = "cedar")]
    pub(crate) async fn check_scope_only(&self, agent: &str, tool: &str) -> Result<()> {
        self.decide_scope(agent, Target::Tool(tool)).await
    }

    /// [`Scope::check_model`] without the Cedar policy sets.
    #[cfg(feature = "cedar")]
    pub(crate) async fn check_model_scope_only(
        &self,
        agent: &str,
        provider: &str,
        model: &str,
    ) -> Result<()> {
        self.decide_scope(agent, Target::Model(provider, model))
            .await
    }

    async fn decide(&self, agent: &str, target: Target<'_>) -> Result<()> {
        self.decide_scope(agent, target).await?;
        // The Cedar policy sets, evaluated beside scope (both must allow) when any is applied:
        // with no arguments and no cost here (`policies().check` gives them).
        #[cfg(feature = "cedar")]
        if self.gov.inner.shared.policies.active() || !self.gov.inner.shared.healthy() {
            let resource = match target {
                Target::Tool(t) => Some(crate::policies::Resource::Tool(t)),
                Target::Model(provider, model) => {
                    Some(crate::policies::Resource::Model { provider, model })
                }
                Target::Api(_) => None,
            };
            if let Some(resource) = resource {
                let check = crate::policies::PolicyCheck::new(agent, resource);
                return Box::pin(self.gov.policies().enforce(&check)).await;
            }
        }
        Ok(())
    }

    async fn decide_scope(&self, agent: &str, target: Target<'_>) -> Result<()> {
        // The hot path: not halted and allowed, both from trusted caches, with no storage and
        // no allocation. Anything else takes the full path below, boxed so that this future
        // stays small.
        let inner = &self.gov.inner;
        let (halts, scope) = (inner.config.modules.halts, inner.config.modules.scope);
        let allowed = |p: Option<&ScopePolicy>| judge(p, target).is_ok();
        let passes = (!halts && !scope)
            || (inner.shared.healthy()
                && inner.shared.agents.passes(
                    agent,
                    halts.then_some(inner.config.halt_cache_ttl),
                    scope.then_some(&allowed as &Allowed<'_>),
                ));
        if passes {
            return Ok(());
        }
        Box::pin(self.decide_slow(agent, target)).await
    }

    async fn decide_slow(&self, agent: &str, target: Target<'_>) -> Result<()> {
        // The halt check runs before every gate.
        self.gov.presence().assert_not_halted(agent).await?;
        if !self.gov.inner.config.modules.scope {
            return Ok(());
        }
        let shared = &self.gov.inner.shared;
        let verdict = if shared.healthy() {
            // The hot path: the cached policy, judged under the cache's read lock.
            shared.agents.with_policy(agent, |p| judge(p, target))
        } else {
            let policy = match self.policy(agent).await {
                Ok(p) => p,
                // Storage out of reach while the cache is untrusted: refuse.
                Err(e) if e.is_unavailable() => None,
                Err(e) => return Err(e),
            };
            judge(policy.as_deref(), target)
        };
        let Err(denial) = verdict else {
            return Ok(());
        };
        let (key, name) = match target {
            Target::Tool(t) => ("tool", t.to_owned()),
            Target::Api(a) => ("api", a.to_owned()),
            Target::Model(provider, model) => ("api", format!("{provider}:{model}")),
        };
        self.audit_denial(agent, key, &name, denial).await;
        Err(Error::ScopeViolation {
            agent: agent.to_owned(),
            target: format!("{key} {name}"),
            denial,
        })
    }

    async fn audit_denial(&self, agent: &str, key: &str, name: &str, denial: ScopeDenial) {
        let (tool, api) = if key == "tool" {
            (Some(name.to_owned()), None)
        } else {
            (None, Some(name.to_owned()))
        };
        let event = events::ScopeDenied {
            tool,
            api,
            reason: denial,
        }
        .event(agent)
        .build();
        let result = match event {
            Ok(ev) => self.gov.audit().record(ev).await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(agent, error = %e, "could not audit a scope denial (the denial stands)");
        }
    }
}
