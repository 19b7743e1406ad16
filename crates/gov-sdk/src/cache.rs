//! The per-agent cache the hot checks read: each agent's scope policy and its last halt state,
//! in one map, so a check that passes (not halted, allowed) is one lookup under one read lock.
//!
//! The notification listener keeps it true: a policy change replaces the agent's policy, a halt
//! or resume drops its halt state (and bumps a generation, so a storage read that raced with it
//! is not cached). A cached halt state is used for at most `halt_cache_ttl` (aged on a cheap
//! clock, [`coarse_now_ns`]) in case a notification is lost. Whether the cache is trusted at
//! all is the listener's health (`Shared::healthy`), checked by the callers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use gov_core::ScopePolicy;

/// What is cached of one agent.
#[derive(Debug, Default)]
struct Entry {
    /// Its scope policy (`None`: it has none, so scope refuses it).
    policy: Option<Arc<ScopePolicy>>,
    /// Its halt state and when it was read ([`coarse_now_ns`]).
    halt: Option<(bool, u64)>,
}

/// A map keyed by agent id, hashed with foldhash (the keys are ids the service chose).
type AgentMap = HashMap<String, Entry, foldhash::fast::RandomState>;

/// Whether a policy (`None`: the agent has none) allows what is being checked.
pub(crate) type Allowed<'a> = dyn Fn(Option<&ScopePolicy>) -> bool + 'a;

/// Scope policies and halt states by agent.
#[derive(Debug, Default)]
pub(crate) struct AgentCache {
    map: RwLock<AgentMap>,
    /// Bumped by every halt invalidation.
    halt_generation: AtomicU64,
}

/// A monotonic time in nanoseconds, cheap to read: on Linux the kernel's coarse monotonic
/// clock (it advances by the scheduler's tick, a few milliseconds, and costs a few nanoseconds
/// where the precise clock costs about 25), elsewhere the precise one. Cached halt answers are
/// aged by it, so one lives at most `halt_cache_ttl` plus one tick.
fn coarse_now_ns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        u64::try_from(
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }
}

/// Whether a halt state read at `at` may still be used at `now` (both [`coarse_now_ns`]).
fn fresh(at: u64, now: u64, ttl: Duration) -> bool {
    now.saturating_sub(at) < u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

impl AgentCache {
    fn read(&self) -> RwLockReadGuard<'_, AgentMap> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AgentMap> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the agent passes from the cache alone: when `halt_ttl` is given, a halt state
    /// younger than it says "not halted"; when `allowed` is given, it says yes of the cached
    /// policy. `false` means "ask storage" (a miss, a halt, a refusal), never "refused".
    pub(crate) fn passes(
        &self,
        agent: &str,
        halt_ttl: Option<Duration>,
        allowed: Option<&Allowed<'_>>,
    ) -> bool {
        let now = halt_ttl.map(|_| coarse_now_ns());
        let map = self.read();
        let entry = map.get(agent);
        if let (Some(ttl), Some(now)) = (halt_ttl, now) {
            let fresh_not_halted = entry
                .and_then(|e| e.halt)
                .is_some_and(|(halted, at)| !halted && fresh(at, now, ttl));
            if !fresh_not_halted {
                return false;
            }
        }
        allowed.is_none_or(|f| f(entry.and_then(|e| e.policy.as_deref())))
    }

    /// The agent's cached policy.
    pub(crate) fn policy(&self, agent: &str) -> Option<Arc<ScopePolicy>> {
        self.read().get(agent).and_then(|e| e.policy.clone())
    }

    /// `f` of the agent's cached policy, under the read lock.
    pub(crate) fn with_policy<R>(
        &self,
        agent: &str,
        f: impl FnOnce(Option<&ScopePolicy>) -> R,
    ) -> R {
        f(self.read().get(agent).and_then(|e| e.policy.as_deref()))
    }

    /// Sets (or removes) the agent's policy.
    pub(crate) fn put_policy(&self, agent: &str, policy: Option<ScopePolicy>) {
        let mut map = self.write();
        match policy {
            Some(p) => map.entry(agent.to_owned()).or_default().policy = Some(Arc::new(p)),
            None => {
                if let Some(e) = map.get_mut(agent) {
                    e.policy = None;
                    if e.halt.is_none() {
                        map.remove(agent);
                    }
                }
            }
        }
    }

    /// Replaces every policy and forgets every halt state (a resync after a reconnect).
    pub(crate) fn reset(&self, policies: Vec<ScopePolicy>) {
        self.halt_generation.fetch_add(1, Ordering::AcqRel);
        let fresh = policies
            .into_iter()
            .map(|p| {
                let agent = p.agent_id.as_str().to_owned();
                let entry = Entry {
                    policy: Some(Arc::new(p)),
                    halt: None,
                };
                (agent, entry)
            })
            .collect();
        *self.write() = fresh;
    }

    /// Forgets the agent's halt state (a halt or resume happened).
    pub(crate) fn invalidate_halt(&self, agent: &str) {
        self.halt_generation.fetch_add(1, Ordering::AcqRel);
        let mut map = self.write();
        if let Some(e) = map.get_mut(agent) {
            e.halt = None;
            if e.policy.is_none() {
                map.remove(agent);
            }
        }
    }

    /// Forgets every halt state.
    pub(crate) fn clear_halts(&self) {
        self.halt_generation.fetch_add(1, Ordering::AcqRel);
        let mut map = self.write();
        map.retain(|_, e| {
            e.halt = None;
            e.policy.is_some()
        });
    }

    /// The agent's halt state, when read less than `ttl` ago.
    pub(crate) fn halt(&self, agent: &str, ttl: Duration) -> Option<bool> {
        let now = coarse_now_ns();
        self.read()
            .get(agent)
            .and_then(|e| e.halt)
            .filter(|(_, at)| fresh(*at, now, ttl))
            .map(|(h, _)| h)
    }

    /// The invalidation generation, read before a storage read of a halt state.
    pub(crate) fn halt_generation(&self) -> u64 {
        self.halt_generation.load(Ordering::Acquire)
    }

    /// Stores a halt state read in `generation`, unless an invalidation happened since.
    pub(crate) fn put_halt(&self, agent: &str, halted: bool, generation: u64) {
        let mut map = self.write();
        if self.halt_generation.load(Ordering::Acquire) == generation {
            map.entry(agent.to_owned()).or_default().halt = Some((halted, coarse_now_ns()));
        }
    }
}
