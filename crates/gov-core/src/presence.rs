//! Presence states and loop detection windows: pure logic over times and counts.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where an agent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// A heartbeat arrived within the idle threshold.
    Live,
    /// The last heartbeat is older than the idle threshold.
    Idle,
    /// The last heartbeat is older than the unresponsive threshold, or there was none.
    Unresponsive,
    /// An operator halted the agent; only a resume clears it.
    Halted,
}

/// An agent's presence row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The agent.
    pub agent_id: String,
    /// Time since its last heartbeat, measured by the database clock (`None`: never).
    pub since_heartbeat: Option<Duration>,
    /// Whether it is halted.
    pub halted: bool,
    /// Who halted it.
    pub halted_by: Option<String>,
    /// Why.
    pub halt_reason: Option<String>,
    /// Who last resumed it.
    pub resumed_by: Option<String>,
}

/// Thresholds for [`PresenceState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceThresholds {
    /// Idle after this long without a heartbeat (default 60 s).
    pub idle_after: Duration,
    /// Unresponsive after this long without a heartbeat (default 300 s).
    pub unresponsive_after: Duration,
}

impl Default for PresenceThresholds {
    fn default() -> Self {
        Self {
            idle_after: Duration::from_secs(60),
            unresponsive_after: Duration::from_secs(300),
        }
    }
}

impl PresenceThresholds {
    /// The state of an agent whose last heartbeat was `since_heartbeat` ago (`None`: never).
    pub fn classify(&self, halted: bool, since_heartbeat: Option<Duration>) -> PresenceState {
        match (halted, since_heartbeat) {
            (true, _) => PresenceState::Halted,
            (false, None) => PresenceState::Unresponsive,
            (false, Some(d)) if d >= self.unresponsive_after => PresenceState::Unresponsive,
            (false, Some(d)) if d >= self.idle_after => PresenceState::Idle,
            _ => PresenceState::Live,
        }
    }
}

/// A sliding window of recent actions of one session, by count and optionally by time.
#[derive(Debug, Clone)]
pub struct LoopWindow {
    entries: VecDeque<([u8; 32], Duration)>,
    max_entries: usize,
    max_age: Option<Duration>,
}

impl LoopWindow {
    /// A window holding the last `max_entries` actions, none older than `max_age`.
    pub fn new(max_entries: usize, max_age: Option<Duration>) -> Self {
        Self {
            entries: VecDeque::with_capacity(max_entries.min(1024)),
            max_entries: max_entries.max(1),
            max_age,
        }
    }

    /// Records `action` at time `now` (any monotonic clock) and returns how many times it
    /// occurs in the window, this one included.
    pub fn record(&mut self, action: [u8; 32], now: Duration) -> usize {
        if let Some(age) = self.max_age {
            while self
                .entries
                .front()
                .is_some_and(|(_, t)| now.saturating_sub(*t) > age)
            {
                self.entries.pop_front();
            }
        }
        if self.entries.len() == self.max_entries {
            self.entries.pop_front();
        }
        self.entries.push_back((action, now));
        self.entries.iter().filter(|(a, _)| *a == action).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_thresholds_and_halts_win() {
        let t = PresenceThresholds::default();
        assert_eq!(
            t.classify(false, Some(Duration::from_secs(5))),
            PresenceState::Live
        );
        assert_eq!(
            t.classify(false, Some(Duration::from_secs(60))),
            PresenceState::Idle
        );
        assert_eq!(
            t.classify(false, Some(Duration::from_secs(301))),
            PresenceState::Unresponsive
        );
        assert_eq!(t.classify(false, None), PresenceState::Unresponsive);
        assert_eq!(
            t.classify(true, Some(Duration::ZERO)),
            PresenceState::Halted
        );
    }

    #[test]
    fn window_counts_by_size_and_age() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut w = LoopWindow::new(4, None);
        let s = Duration::from_secs;
        assert_eq!(w.record(a, s(0)), 1);
        assert_eq!(w.record(b, s(1)), 1);
        assert_eq!(w.record(a, s(2)), 2);
        assert_eq!(w.record(a, s(3)), 3);
        // The first `a` falls out of a window of four.
        assert_eq!(w.record(a, s(4)), 3);
        let mut timed = LoopWindow::new(100, Some(s(10)));
        assert_eq!(timed.record(a, s(0)), 1);
        assert_eq!(timed.record(a, s(5)), 2);
        // At 16 s both earlier entries are older than 10 s.
        assert_eq!(timed.record(a, s(16)), 1);
        assert_eq!(timed.record(a, s(20)), 2);
    }
}
