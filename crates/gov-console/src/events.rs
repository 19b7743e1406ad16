//! Live events: one task follows the chain (LISTEN/NOTIFY through the SDK's `Tail`, so events
//! written by any process arrive as they commit) and broadcasts each as JSON; every SSE
//! subscriber reads from that broadcast, so a thousand browsers cost one database listener.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use gov_sdk::{EventFilter, Governance};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt as _};

use crate::AppState;
use crate::auth::CurrentUser;

/// One event as sent to browsers.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) agent_id: String,
    pub(crate) kind: String,
    pub(crate) json: Arc<str>,
}

/// The feed every subscriber reads.
#[derive(Clone)]
pub(crate) struct Broadcaster {
    tx: broadcast::Sender<Live>,
}

impl Broadcaster {
    /// Starts following `chain` from its current head.
    pub(crate) fn start(gov: Governance, chain: String) -> Self {
        let (tx, _) = broadcast::channel(4_096);
        let feed = tx.clone();
        tokio::spawn(async move {
            let mut after: Option<i64> = None;
            loop {
                let filter = EventFilter {
                    chain_id: chain.parse().ok(),
                    after_seq: after,
                    ..EventFilter::default()
                };
                match gov.audit().tail(filter).await {
                    Ok(mut tail) => loop {
                        match tail.next().await {
                            Ok(r) => {
                                after = Some(r.seq);
                                if let Ok(json) = serde_json::to_string(&r) {
                                    let _ = feed.send(Live {
                                        agent_id: r.agent_id.clone(),
                                        kind: r.kind.clone(),
                                        json: json.into(),
                                    });
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "live events: the tail stopped; following again");
                                break;
                            }
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "live events: cannot follow the chain yet")
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self { tx }
    }

    /// A new subscription.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.tx.subscribe()
    }

    /// Current subscribers.
    pub(crate) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LiveFilter {
    agent: Option<String>,
    kind: Option<String>,
}

/// `GET /events/stream`: server-sent events, one `audit` event per row (JSON), optionally only
/// one agent's or one kind's.
pub(crate) async fn stream(
    State(state): State<AppState>,
    _user: CurrentUser,
    Query(f): Query<LiveFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let agent = f.agent.filter(|a| !a.is_empty());
    let kind = f.kind.filter(|k| !k.is_empty());
    let events = BroadcastStream::new(state.events.subscribe()).filter_map(move |m| {
        let live = m.ok()?;
        if agent.as_ref().is_some_and(|a| *a != live.agent_id)
            || kind.as_ref().is_some_and(|k| *k != live.kind)
        {
            return None;
        }
        Some(Ok(Event::default().event("audit").data(live.json.as_ref())))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
