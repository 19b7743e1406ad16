//! The notification listener: one dedicated connection per handle, listening for policy
//! changes and halts made by any process, keeping the in-process caches true.
//!
//! While the listener is down the caches are not trusted: checks read storage directly, and
//! fail closed when storage is out of reach. After a reconnect the caches are rebuilt before
//! they are trusted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gov_store::{GATE_CHANNEL, HALT_CHANNEL, Listener, Notice, POLICY_CHANNEL, Store};

use crate::presence::HaltCache;
use crate::scope::ScopeCache;

/// State shared between the handle and its listener task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Whether the listener is connected and the caches were rebuilt since it connected.
    pub(crate) healthy: AtomicBool,
    pub(crate) scope: ScopeCache,
    pub(crate) halts: HaltCache,
    /// Gate notifications (`<id>:<status>`), for `wait_for`.
    pub(crate) gates: tokio::sync::broadcast::Sender<String>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(false),
            scope: ScopeCache::default(),
            halts: HaltCache::default(),
            gates: tokio::sync::broadcast::channel(1_024).0,
        }
    }
}

impl Shared {
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Rebuilds every cache from storage.
    async fn resync(&self, store: &Store) -> gov_store::Result<()> {
        self.halts.clear();
        self.scope.replace_all(store.scope_policies().await?);
        Ok(())
    }

    async fn apply(&self, store: &Store, channel: &str, payload: &str) {
        match channel {
            POLICY_CHANNEL => match store.scope_policy(payload).await {
                Ok(p) => self.scope.put(payload, p),
                Err(e) => {
                    // The cache can no longer be trusted for this agent: drop its entry and
                    // let checks read storage until the next successful reload.
                    tracing::warn!(agent = payload, error = %e, "could not reload a scope policy");
                    self.healthy.store(false, Ordering::Release);
                }
            },
            HALT_CHANNEL => self.halts.invalidate(payload),
            GATE_CHANNEL => {
                // No receiver is fine: nobody is waiting.
                let _ = self.gates.send(payload.to_owned());
            }
            _ => {}
        }
    }
}

/// Starts listening; returns the task. The first connection is made before returning, so a
/// fresh handle starts with trusted caches when storage is reachable.
pub(crate) async fn start(store: Store, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let first = connect(&store, &shared).await;
    tokio::spawn(run(store, shared, first))
}

const CHANNELS: &[&str] = &[POLICY_CHANNEL, HALT_CHANNEL, GATE_CHANNEL];

async fn connect(store: &Store, shared: &Shared) -> Option<Listener> {
    let listener = match store.listen(CHANNELS).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "notification listener could not connect");
            return None;
        }
    };
    match shared.resync(store).await {
        Ok(()) => {
            shared.healthy.store(true, Ordering::Release);
            Some(listener)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not load policies after connecting");
            None
        }
    }
}

async fn run(store: Store, shared: Arc<Shared>, mut listener: Option<Listener>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(l) = listener.as_mut() else {
            shared.healthy.store(false, Ordering::Release);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            listener = connect(&store, &shared).await;
            continue;
        };
        match l.recv().await {
            Ok(Notice::Message { channel, payload }) => {
                backoff = Duration::from_millis(100);
                shared.apply(&store, &channel, &payload).await;
            }
            Ok(Notice::Lost) | Err(_) => {
                tracing::warn!(
                    "notification listener lost its connection; checks read storage until it is back"
                );
                shared.healthy.store(false, Ordering::Release);
                shared.halts.clear();
                listener = None;
            }
        }
    }
}
