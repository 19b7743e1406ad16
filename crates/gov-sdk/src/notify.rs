//! The notification listener: one dedicated connection per handle, listening for policy
//! changes and halts made by any process, keeping the in-process caches true.
//!
//! While the listener is down the caches are not trusted: checks read storage directly, and
//! fail closed when storage is out of reach. After a reconnect the caches are rebuilt before
//! they are trusted again.
//!
//! A connection can die silently (a partition, a frozen server: nothing closes it, so nothing
//! is ever received). On Postgres a watchdog proves the listener still hears: after
//! [`HEARTBEAT`] without any notification it sends one on a channel of this handle's own and
//! expects it back within [`HEARTBEAT`]; when it does not come, the listener is dropped (the
//! caches stop being trusted at once) and connects again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "cedar")]
use gov_store::POLICY_SET_CHANNEL;
use gov_store::{GATE_CHANNEL, HALT_CHANNEL, Listener, Notice, POLICY_CHANNEL, Store};

use crate::cache::AgentCache;

/// State shared between the handle and its listener task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Whether the listener is connected and the caches were rebuilt since it connected.
    pub(crate) healthy: AtomicBool,
    /// Scope policies and halt states by agent.
    pub(crate) agents: AgentCache,
    /// The Cedar policy sets in force.
    #[cfg(feature = "cedar")]
    pub(crate) policies: crate::policies::PolicyState,
    /// Gate notifications (`<id>:<status>`), for `wait_for`.
    pub(crate) gates: tokio::sync::broadcast::Sender<String>,
    /// This handle's own channel, on which the watchdog proves the listener hears.
    ping_channel: String,
    /// When the listener last received anything, and the last watchdog payload it received.
    heard: Mutex<(Instant, String)>,
    /// Tells the listener task to drop a connection that no longer hears.
    restart: tokio::sync::Notify,
}

/// How long the listener may go without hearing anything before the watchdog checks it, and
/// how long the check may take.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

impl Default for Shared {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(false),
            agents: AgentCache::default(),
            #[cfg(feature = "cedar")]
            policies: crate::policies::PolicyState::default(),
            gates: tokio::sync::broadcast::channel(1_024).0,
            ping_channel: format!("gov_ping_{}", uuid::Uuid::now_v7().simple()),
            heard: Mutex::new((Instant::now(), String::new())),
            restart: tokio::sync::Notify::new(),
        }
    }
}

impl Shared {
    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Rebuilds every cache from storage.
    async fn resync(&self, store: &Store) -> gov_store::Result<()> {
        self.agents.reset(store.scope_policies().await?);
        #[cfg(feature = "cedar")]
        self.policies.reload(store).await?;
        Ok(())
    }

    fn heard(&self, payload: Option<&str>) -> std::sync::MutexGuard<'_, (Instant, String)> {
        let mut h = match self.heard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        h.0 = Instant::now();
        if let Some(p) = payload {
            p.clone_into(&mut h.1);
        }
        h
    }

    async fn apply(&self, store: &Store, channel: &str, payload: &str) {
        if channel == self.ping_channel {
            drop(self.heard(Some(payload)));
            return;
        }
        drop(self.heard(None));
        match channel {
            POLICY_CHANNEL => match store.scope_policy(payload).await {
                Ok(p) => self.agents.put_policy(payload, p),
                Err(e) => {
                    // The cache can no longer be trusted for this agent: drop its entry and
                    // let checks read storage until the next successful reload.
                    tracing::warn!(agent = payload, error = %e, "could not reload a scope policy");
                    self.healthy.store(false, Ordering::Release);
                }
            },
            HALT_CHANNEL => self.agents.invalidate_halt(payload),
            #[cfg(feature = "cedar")]
            POLICY_SET_CHANNEL => {
                if let Err(e) = self.policies.reload(store).await {
                    // Not trusted until the next successful reload: checks read storage.
                    tracing::warn!(error = %e, "could not reload the policy sets");
                    self.healthy.store(false, Ordering::Release);
                }
            }
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
    if matches!(store, Store::Postgres(_)) {
        tokio::spawn(watchdog(store.clone(), Arc::downgrade(&shared)));
    }
    tokio::spawn(run(store, shared, first))
}

#[cfg(not(feature = "cedar"))]
const CHANNELS: &[&str] = &[POLICY_CHANNEL, HALT_CHANNEL, GATE_CHANNEL];
#[cfg(feature = "cedar")]
const CHANNELS: &[&str] = &[
    POLICY_CHANNEL,
    HALT_CHANNEL,
    GATE_CHANNEL,
    POLICY_SET_CHANNEL,
];

/// Proves the listener still hears (see the module's doc); stops with the handle.
async fn watchdog(store: Store, shared: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let Some(sh) = shared.upgrade() else { return };
        if !sh.healthy() {
            continue;
        }
        let since = match sh.heard.lock() {
            Ok(g) => g.0.elapsed(),
            Err(p) => p.into_inner().0.elapsed(),
        };
        if since < HEARTBEAT {
            continue;
        }
        let token = uuid::Uuid::now_v7().simple().to_string();
        let sent =
            tokio::time::timeout(HEARTBEAT, store.notify_listener(&sh.ping_channel, &token)).await;
        let came_back = match sent {
            Ok(Ok(_)) => {
                let until = Instant::now() + HEARTBEAT;
                loop {
                    let got = match sh.heard.lock() {
                        Ok(g) => g.1 == token,
                        Err(p) => p.into_inner().1 == token,
                    };
                    if got || Instant::now() >= until {
                        break got;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            _ => false,
        };
        if !came_back {
            tracing::warn!(
                "the notification listener stopped hearing (a connection that went silent): reconnecting; checks read storage meanwhile"
            );
            sh.healthy.store(false, Ordering::Release);
            sh.agents.clear_halts();
            sh.restart.notify_one();
        }
    }
}

async fn connect(store: &Store, shared: &Shared) -> Option<Listener> {
    let mut channels = CHANNELS.to_vec();
    channels.push(&shared.ping_channel);
    let listener = match store.listen(&channels).await {
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
        let notice = tokio::select! {
            n = l.recv() => n,
            () = shared.restart.notified() => {
                // The watchdog found it deaf: drop it (cancelling its wait) and connect again.
                listener = None;
                continue;
            }
        };
        match notice {
            Ok(Notice::Message { channel, payload }) => {
                backoff = Duration::from_millis(100);
                shared.apply(&store, &channel, &payload).await;
            }
            Ok(Notice::Lost) | Err(_) => {
                tracing::warn!(
                    "notification listener lost its connection; checks read storage until it is back"
                );
                shared.healthy.store(false, Ordering::Release);
                shared.agents.clear_halts();
                listener = None;
            }
        }
    }
}
