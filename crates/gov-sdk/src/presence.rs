//! Presence and halts: heartbeats, live/idle/unresponsive/halted states, and the halt switch
//! operators pull.
//!
//! `assert_not_halted` runs before every gate. It answers from a cache that NOTIFY invalidates
//! the moment any process halts or resumes the agent, bounded by `halt_cache_ttl` in case a
//! notification is lost; while the listener is down it reads storage each time; and when the
//! halt state cannot be read at all it refuses (fail closed). A heartbeat never clears a halt.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use gov_core::events::{self, SystemEvent};
use gov_core::{AgentId, AgentPresence, PresenceState};

use crate::{Error, Governance, Result};

/// Halt states by agent, with when each was read and the invalidation generation it was read in.
#[derive(Debug, Default)]
pub(crate) struct HaltCache {
    map: Mutex<HashMap<String, (bool, Instant)>>,
    generation: AtomicU64,
}

impl HaltCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn invalidate(&self, agent: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().remove(agent);
    }

    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    fn get(&self, agent: &str, ttl: std::time::Duration) -> Option<bool> {
        self.lock()
            .get(agent)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(h, _)| *h)
    }

    /// Stores a value read in `generation`, unless an invalidation happened since.
    fn put(&self, agent: &str, halted: bool, generation: u64) {
        let mut map = self.lock();
        if self.generation.load(Ordering::Acquire) == generation {
            map.insert(agent.to_owned(), (halted, Instant::now()));
        }
    }
}

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

fn check_operator(operator: &str, reason: &str) -> Result<()> {
    AgentId::new(operator).map_err(|e| Error::Config(format!("operator identity: {e}")))?;
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

impl<'g> Presence<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Records that the agent is alive. Never clears a halt.
    pub async fn heartbeat(&self, agent: &str) -> Result<()> {
        AgentId::new(agent)?;
        Ok(self.gov.inner.store.heartbeat(agent).await?)
    }

    /// Halts an agent: every gate refuses it until an operator resumes it. Audited as
    /// `agent.halted` with the operator as actor. Returns whether it was running before.
    pub async fn halt(&self, agent: &str, operator: &str, reason: &str) -> Result<bool> {
        self.switch(agent, true, operator, reason).await
    }

    /// Resumes a halted agent. Audited as `agent.resumed`. Returns whether it was halted.
    pub async fn resume(&self, agent: &str, operator: &str, reason: &str) -> Result<bool> {
        self.switch(agent, false, operator, reason).await
    }

    async fn switch(&self, agent: &str, halt: bool, operator: &str, reason: &str) -> Result<bool> {
        AgentId::new(agent)?;
        check_operator(operator, reason)?;
        let inner = &self.gov.inner;
        let changed = inner
            .store
            .set_halted(agent, halt, operator, reason)
            .await?;
        inner.shared.halts.invalidate(agent);
        let change = events::HaltChange {
            reason: reason.to_owned(),
            changed,
        };
        let b = if halt {
            events::AgentHalted(change).event(agent)
        } else {
            events::AgentResumed(change).event(agent)
        };
        let event = b.actor(operator).build()?;
        self.gov.audit().record(event).await?;
        Ok(changed)
    }

    /// Refuses with [`Error::Halted`] when the agent is halted, and with
    /// [`Error::HaltStateUnknown`] when that cannot be established.
    pub async fn assert_not_halted(&self, agent: &str) -> Result<()> {
        let inner = &self.gov.inner;
        if !inner.config.modules.halts {
            return Ok(());
        }
        let cache = &inner.shared.halts;
        let ttl = inner.config.halt_cache_ttl;
        let trusted = inner.shared.healthy();
        if trusted && let Some(halted) = cache.get(agent, ttl) {
            return if halted {
                Err(self.halted_error(agent).await)
            } else {
                Ok(())
            };
        }
        let generation = cache.generation.load(Ordering::Acquire);
        let halted = inner
            .store
            .is_halted(agent)
            .await
            .map_err(|e| Error::HaltStateUnknown {
                agent: agent.to_owned(),
                cause: e.to_string(),
            })?;
        if trusted {
            cache.put(agent, halted, generation);
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
