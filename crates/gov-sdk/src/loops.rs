//! Loop detection: a sliding window, by count and optionally by time, over (tool, hash of the
//! canonical arguments) per agent session. When the same action reaches `max_repeats` in the
//! window the detector warns (audited as `loop.detected`) or halts the agent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gov_core::events::{self, SystemEvent};
use gov_core::{LoopWindow, action_hash};

use crate::{Error, Governance, Result};

/// What to do when a loop is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoopAction {
    /// Audit `loop.detected` and let the call through ([`LoopVerdict::Warned`]).
    #[default]
    Warn,
    /// Audit, halt the agent (operator `governance:loop-detector`) and refuse.
    Halt,
}

/// Loop detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopConfig {
    /// The detector trips when one action occurs this many times in the window (default 3).
    pub max_repeats: usize,
    /// The window holds this many recent actions per session (default 20).
    pub window_size: usize,
    /// Actions older than this leave the window (default: none, count only).
    pub window_age: Option<Duration>,
    /// What to do on a trip.
    pub action: LoopAction,
    /// Sessions tracked at most; the least recently active are forgotten first (default 10,000).
    pub max_sessions: usize,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            max_repeats: 3,
            window_size: 20,
            window_age: None,
            action: LoopAction::Warn,
            max_sessions: 10_000,
        }
    }
}

/// The outcome of recording an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopVerdict {
    /// Below the threshold; `repeats` is how often the action is in the window.
    Ok {
        /// Occurrences in the window, this one included.
        repeats: usize,
    },
    /// At or above the threshold, with [`LoopAction::Warn`].
    Warned {
        /// Occurrences in the window, this one included.
        repeats: usize,
    },
}

/// Windows by (agent, session).
#[derive(Debug)]
pub(crate) struct LoopState {
    started: Instant,
    windows: Mutex<HashMap<(String, String), (LoopWindow, Instant)>>,
}

impl Default for LoopState {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            windows: Mutex::new(HashMap::new()),
        }
    }
}

/// The loop detector of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Loops<'g> {
    gov: &'g Governance,
}

impl<'g> Loops<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Records a tool call of `agent` in `session` and judges it.
    pub async fn record(
        &self,
        agent: &str,
        session: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<LoopVerdict> {
        let cfg = self.gov.inner.config.loops;
        let hash = action_hash(tool, args)?;
        if !self.gov.inner.config.modules.loops {
            return Ok(LoopVerdict::Ok { repeats: 0 });
        }
        let repeats = {
            let state = &self.gov.inner.loops;
            let now = state.started.elapsed();
            let mut windows = state.windows.lock().unwrap_or_else(|p| p.into_inner());
            let key = (agent.to_owned(), session.to_owned());
            if !windows.contains_key(&key) && windows.len() >= cfg.max_sessions {
                let oldest = windows
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    windows.remove(&k);
                }
            }
            let (window, used) = windows.entry(key).or_insert_with(|| {
                (
                    LoopWindow::new(cfg.window_size, cfg.window_age),
                    Instant::now(),
                )
            });
            *used = Instant::now();
            window.record(hash, now)
        };
        if repeats < cfg.max_repeats.max(1) {
            return Ok(LoopVerdict::Ok { repeats });
        }
        let event = events::LoopDetected {
            tool: tool.to_owned(),
            repeats: repeats as u64,
            window_size: cfg.window_size as u64,
            action: match cfg.action {
                LoopAction::Warn => events::LoopResponse::Warn,
                LoopAction::Halt => events::LoopResponse::Halt,
            },
        }
        .event(agent)
        .session(session)
        .build()?;
        if let Err(e) = self.gov.audit().record(event).await {
            tracing::warn!(agent, error = %e, "could not audit a detected loop");
        }
        match cfg.action {
            LoopAction::Warn => {
                tracing::warn!(agent, session, tool, repeats, "loop detected");
                Ok(LoopVerdict::Warned { repeats })
            }
            LoopAction::Halt => {
                let reason = format!(
                    "loop detected: {tool} repeated {repeats} times with the same arguments"
                );
                self.gov
                    .presence()
                    .system_halt(agent, crate::presence::LOOP_DETECTOR_ACTOR, &reason)
                    .await?;
                Err(Error::LoopDetected {
                    agent: agent.to_owned(),
                    session: session.to_owned(),
                    tool: tool.to_owned(),
                    repeats,
                })
            }
        }
    }
}
