//! Presence and halts: heartbeats, live/idle/unresponsive/halted states, and the halt switch
//! operators pull.
//!
//! `assert_not_halted` runs before every gate. It answers from a cache that NOTIFY invalidates
//! the moment any process halts or resumes the agent, bounded by `halt_cache_ttl` in case a
//! notification is lost; while the listener is down it reads storage each time; and when the
//! halt state cannot be read at all it refuses (fail closed). A heartbeat never clears a halt.

use gov_core::events::{self, SystemEvent};
use gov_core::{AgentId, AgentPresence, OperatorRole, PresenceState};

use crate::{Error, Governance, Operator, Result};

/// An agent's presence, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// The state now.
    pub state: PresenceState,
    /// The stored row (absent for an agent never seen).
    pub presence: Option<AgentPresence>,
}

/// Presence and halts of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Presence<'g> {
    gov: &'g Governance,
}

fn check_reason(reason: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(Error::Config(
            "a halt or resume needs a reason; say why".into(),
        ));
    }
    if reason.chars().count() > 1_000 {
        return Err(Error::Config(
            "the reason is longer than 1,000 characters".into(),
        ));
    }
    Ok(())
}

/// The actor a service's own halts are recorded under.
pub(crate) const SERVICE_ACTOR: &str = "governance:service";
/// The actor the loop detector's halts are recorded under.
pub(crate) const LOOP_DETECTOR_ACTOR: &str = "governance:loop-detector";

impl<'g> Presence<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Records that the agent is alive. Never clears a halt.
    pub async fn heartbeat(&self, agent: &str) -> Result<()> {
        AgentId::new(agent)?;
        Ok(self.gov.inner.store.heartbeat(agent).await?)
    }

    /// Halts an agent for an authenticated operator: every gate refuses it until an operator
    /// resumes it. Audited as `agent.halted` with the operator as actor, in one transaction with
    /// the oversight record that backs it in the report. Returns whether it was running before.
    /// A viewer may not; on Postgres only an operator connection may (the application role
    /// halts with [`Self::halt_self`]).
    pub async fn halt(&self, operator: &Operator, agent: &str, reason: &str) -> Result<bool> {
        self.operator_switch(operator, agent, true, reason).await
    }

    /// Resumes a halted agent for an authenticated operator. Audited as `agent.resumed`, backed
    /// by an oversight record. Returns whether it was halted. On Postgres only an operator
    /// connection may: the application role can never resume.
    pub async fn resume(&self, operator: &Operator, agent: &str, reason: &str) -> Result<bool> {
        self.operator_switch(operator, agent, false, reason).await
    }

    /// Halts an agent on the service's own behalf (a kill switch in its code). Recorded under
    /// the actor `governance:service`, never a person's name: halting is always safe, but only an
    /// operator's halt is evidence of human oversight. Returns whether it was running before.
    pub async fn halt_self(&self, agent: &str, reason: &str) -> Result<bool> {
        self.system_halt(agent, SERVICE_ACTOR, reason).await
    }

    /// A halt by a part of the system (`governance:…` actor).
    pub(crate) async fn system_halt(&self, agent: &str, actor: &str, reason: &str) -> Result<bool> {
        AgentId::new(agent)?;
        check_reason(reason)?;
        let inner = &self.gov.inner;
        let changed = inner.store.service_halt(agent, actor, reason).await?;
        inner.shared.agents.invalidate_halt(agent);
        let event = events::AgentHalted(events::HaltChange {
            reason: reason.to_owned(),
            changed,
        })
        .event(agent)
        .actor(actor)
        .build()?;
        self.gov.audit().record(event).await?;
        Ok(changed)
    }

    async fn operator_switch(
        &self,
        operator: &Operator,
        agent: &str,
        halt: bool,
        reason: &str,
    ) -> Result<bool> {
        AgentId::new(agent)?;
        check_reason(reason)?;
        if operator.role() < OperatorRole::Operator {
            return Err(Error::Config(format!(
                "{} is a viewer: only an operator or admin may halt or resume an agent",
                operator.username()
            )));
        }
        let inner = &self.gov.inner;
        let event = |changed: bool| {
            let change = events::HaltChange {
                reason: reason.to_owned(),
                changed,
            };
            let b = if halt {
                events::AgentHalted(change).event(agent)
            } else {
                events::AgentResumed(change).event(agent)
            };
            b.actor(operator.username()).build()
        };
        let (if_changed, if_unchanged) = (event(true)?, event(false)?);
        // Sealed in the store's transaction: never onto a chain whose head another key sealed.
        inner
            .audit
            .ensure_writable(if_changed.chain_id.as_str())
            .await?;
        let sealer = inner.audit.sealer();
        let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
        let switch = gov_store::HaltSwitch {
            agent,
            halt,
            operator: operator.username(),
            reason,
        };
        let changed = inner
            .store
            .operator_switch(
                &switch,
                (&if_changed, &if_unchanged),
                sealer.key().key_id(),
                &seal,
            )
            .await?;
        inner.shared.agents.invalidate_halt(agent);
        Ok(changed)
    }

    /// Refuses with [`Error::Halted`] when the agent is halted, and with
    /// [`Error::HaltStateUnknown`] when that cannot be established.
    pub async fn assert_not_halted(&self, agent: &str) -> Result<()> {
        if self.not_halted_cached(agent) {
            return Ok(());
        }
        // Everything else (a halt, a miss, an untrusted cache) reads storage; boxed, so the
        // future of the cached answer above stays small.
        Box::pin(self.assert_not_halted_slow(agent)).await
    }

    /// Whether the halt module is off, or the trusted cache says "not halted" (the hot path:
    /// no storage, no allocation).
    pub(crate) fn not_halted_cached(&self, agent: &str) -> bool {
        let inner = &self.gov.inner;
        !inner.config.modules.halts
            || (inner.shared.healthy()
                && inner
                    .shared
                    .agents
                    .passes(agent, Some(inner.config.halt_cache_ttl), None))
    }

    async fn assert_not_halted_slow(&self, agent: &str) -> Result<()> {
        let inner = &self.gov.inner;
        if !inner.config.modules.halts {
            return Ok(());
        }
        let cache = &inner.shared.agents;
        let ttl = inner.config.halt_cache_ttl;
        let trusted = inner.shared.healthy();
        if trusted && let Some(halted) = cache.halt(agent, ttl) {
            return if halted {
                Err(self.halted_error(agent).await)
            } else {
                Ok(())
            };
        }
        let generation = cache.halt_generation();
        let halted = inner
            .store
            .is_halted(agent)
            .await
            .map_err(|e| Error::HaltStateUnknown {
                agent: agent.to_owned(),
                cause: e.to_string(),
            })?;
        if trusted {
            cache.put_halt(agent, halted, generation);
        }
        if halted {
            Err(self.halted_error(agent).await)
        } else {
            Ok(())
        }
    }

    async fn halted_error(&self, agent: &str) -> Error {
        // Who and why, when it can be read; the refusal stands either way.
        let row = self.gov.inner.store.presence(agent).await.ok().flatten();
        Error::Halted {
            agent: agent.to_owned(),
            by: row.as_ref().and_then(|r| r.halted_by.clone()),
            reason: row.and_then(|r| r.halt_reason),
        }
    }

    /// Whether the agent is halted (read from storage).
    pub async fn is_halted(&self, agent: &str) -> Result<bool> {
        Ok(self.gov.inner.store.is_halted(agent).await?)
    }

    /// One agent's state (an agent never seen is unresponsive).
    pub async fn status(&self, agent: &str) -> Result<AgentStatus> {
        let row = self.gov.inner.store.presence(agent).await?;
        let thresholds = self.gov.inner.config.presence;
        let state = match &row {
            Some(r) => thresholds.classify(r.halted, r.since_heartbeat),
            None => PresenceState::Unresponsive,
        };
        Ok(AgentStatus {
            state,
            presence: row,
        })
    }

    /// Every known agent with its state.
    pub async fn list(&self) -> Result<Vec<AgentStatus>> {
        let thresholds = self.gov.inner.config.presence;
        Ok(self
            .gov
            .inner
            .store
            .presences()
            .await?
            .into_iter()
            .map(|r| AgentStatus {
                state: thresholds.classify(r.halted, r.since_heartbeat),
                presence: Some(r),
            })
            .collect())
    }
}
