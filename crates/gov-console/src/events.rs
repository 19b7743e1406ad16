//! Live events: one task follows the chain (LISTEN/NOTIFY through the SDK's `Tail`, so events
//! written by any process arrive as they commit) and broadcasts each as JSON; every SSE
//! subscriber reads from that broadcast, so a thousand browsers cost one database listener.
//!
//! Nothing is dropped silently. Each SSE event carries the id `<chain>:<seq>`. A subscriber
//! that falls further behind than the broadcast buffer holds is sent an `event: lagged`, then
//! the rows it missed are read from the database by seq and it continues live; a browser that
//! reconnects sends the id it saw last (`Last-Event-ID`, which `EventSource` does by itself) and
//! is sent everything after it from the database first.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use gov_sdk::{EventFilter, Governance};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::AppState;
use crate::auth::CurrentUser;

/// Events the broadcast holds for subscribers that are behind (default).
pub(crate) const DEFAULT_LIVE_BUFFER: usize = 4_096;
/// Rows read per query when a subscriber catches up from the database.
const CATCH_UP_PAGE: u32 = 500;
/// Events queued per subscriber connection before its task waits for the client to read.
const PER_CLIENT: usize = 64;

/// One event as sent to browsers.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) seq: i64,
    pub(crate) agent_id: String,
    pub(crate) kind: String,
    pub(crate) json: Arc<str>,
}

/// The feed every subscriber reads.
#[derive(Clone)]
pub(crate) struct Broadcaster {
    tx: broadcast::Sender<Live>,
    chain: Arc<str>,
    /// The seq of the last event broadcast, or of the head the feed started after.
    last: Arc<AtomicI64>,
    /// True once the feed follows the chain from a known seq (`last`).
    ready: tokio::sync::watch::Receiver<bool>,
}

impl Broadcaster {
    /// Starts following `chain` from its current head.
    pub(crate) fn start(gov: Governance, chain: String, buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        let feed = tx.clone();
        let last = Arc::new(AtomicI64::new(0));
        let chain_name: Arc<str> = chain.clone().into();
        let seen = last.clone();
        let (started, ready) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut after: Option<i64> = None;
            loop {
                // Start after a head read here, so `last` says exactly where the feed begins:
                // a subscriber catches up from the database to there, never from 0 and never
                // past an event the feed will not send.
                if after.is_none() {
                    match gov.audit().head(&chain).await {
                        Ok(h) => {
                            let h = h.map_or(0, |h| h.seq);
                            after = Some(h);
                            seen.fetch_max(h, Ordering::AcqRel);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "live events: cannot read the chain's head yet");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                let filter = EventFilter {
                    chain_id: chain.parse().ok(),
                    after_seq: after,
                    ..EventFilter::default()
                };
                match gov.audit().tail(filter).await {
                    Ok(mut tail) => loop {
                        started.send_if_modified(|r| !std::mem::replace(r, true));
                        match tail.next().await {
                            Ok(r) => {
                                after = Some(r.seq);
                                seen.store(r.seq, Ordering::Release);
                                if let Ok(json) = serde_json::to_string(&r) {
                                    let _ = feed.send(Live {
                                        seq: r.seq,
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
        Self {
            tx,
            chain: chain_name,
            last,
            ready,
        }
    }

    /// Waits (at most a few seconds) until the feed follows the chain from a known seq.
    pub(crate) async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
    }

    /// A new subscription, and the seq of the last event broadcast before it (read first, so
    /// an event broadcast in between is found again by the catch-up, never lost).
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Live>, i64) {
        let last = self.last.load(Ordering::Acquire);
        (self.tx.subscribe(), last)
    }

    /// Current subscribers.
    pub(crate) fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// Which live events a subscriber wants.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LiveFilter {
    /// Only this agent's events.
    agent: Option<String>,
    /// Only events of this kind.
    kind: Option<String>,
}

/// The data of an `event: lagged`: how many events this subscriber missed, and the id after
/// which the rows read from the database follow.
#[derive(Debug, serde::Serialize)]
struct Lagged {
    after: String,
    missed: u64,
}

/// What one subscriber wants, and where it is.
struct Subscriber {
    gov: Governance,
    chain: Arc<str>,
    agent: Option<String>,
    kind: Option<String>,
    /// The seq of the last row considered (sent, or filtered out).
    last: i64,
    out: mpsc::Sender<Event>,
}

impl Subscriber {
    fn wants(&self, agent: &str, kind: &str) -> bool {
        self.agent.as_deref().is_none_or(|a| a == agent)
            && self.kind.as_deref().is_none_or(|k| k == kind)
    }

    fn audit(&self, seq: i64, json: &str) -> Event {
        Event::default()
            .event("audit")
            .id(format!("{}:{seq}", self.chain))
            .data(json)
    }

    /// Sends every row after `last` from the database, in seq order; false when the client
    /// is gone.
    async fn catch_up(&mut self) -> bool {
        let agent = match &self.agent {
            Some(a) => match a.parse() {
                Ok(a) => Some(a),
                // No row can match an invalid agent id.
                Err(_) => return true,
            },
            None => None,
        };
        loop {
            let filter = EventFilter {
                chain_id: self.chain.parse().ok(),
                agent_id: agent.clone(),
                kind: self.kind.clone(),
                after_seq: Some(self.last),
                limit: Some(CATCH_UP_PAGE),
                ..EventFilter::default()
            };
            let rows = match self.gov.audit().events(&filter).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "live events: cannot catch a subscriber up; it continues live");
                    return true;
                }
            };
            let full = rows.len() >= CATCH_UP_PAGE as usize;
            for r in rows {
                self.last = r.seq;
                let Ok(json) = serde_json::to_string(&r) else {
                    continue;
                };
                if self.out.send(self.audit(r.seq, &json)).await.is_err() {
                    return false;
                }
            }
            if !full {
                return true;
            }
        }
    }

    /// Follows the broadcast until the client goes away.
    async fn run(mut self, mut feed: broadcast::Receiver<Live>) {
        if !self.catch_up().await {
            return;
        }
        loop {
            match feed.recv().await {
                Ok(live) => {
                    if live.seq <= self.last {
                        continue;
                    }
                    self.last = live.seq;
                    if self.wants(&live.agent_id, &live.kind)
                        && self
                            .out
                            .send(self.audit(live.seq, &live.json))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let lagged = Lagged {
                        after: format!("{}:{}", self.chain, self.last),
                        missed,
                    };
                    let note = Event::default()
                        .event("lagged")
                        .data(serde_json::to_string(&lagged).unwrap_or_default());
                    if self.out.send(note).await.is_err() || !self.catch_up().await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// The seq in a `Last-Event-ID` of this chain (`<chain>:<seq>`).
fn resume_after(headers: &HeaderMap, chain: &str) -> Option<i64> {
    let id = headers.get("last-event-id")?.to_str().ok()?;
    let (c, seq) = id.rsplit_once(':')?;
    if c != chain {
        return None;
    }
    seq.parse().ok().filter(|s: &i64| *s >= 0)
}

/// `GET /events/stream`: server-sent events, one `audit` event per row (JSON, id
/// `<chain>:<seq>`), optionally only one agent's or one kind's; `lagged` when this client fell
/// behind (what it missed follows, read from the database). With `Last-Event-ID`, the rows
/// after that id come first.
#[utoipa::path(
    get,
    path = "/events/stream",
    tag = "events",
    params(LiveFilter),
    responses(
        (status = 200, description = "Server-sent events: one `audit` event (the row as JSON, id `<chain>:<seq>`) per appended row, optionally filtered by agent or kind; `lagged` (`{\"after\": \"<chain>:<seq>\", \"missed\": n}`) when this client fell behind the broadcast, the rows it missed following, read from the database; a `Last-Event-ID` header resumes after that id", content_type = "text/event-stream", body = String),
        (status = 303, description = "not signed in: redirected to /login"),
    )
)]
pub(crate) async fn stream(
    State(state): State<AppState>,
    _user: CurrentUser,
    headers: HeaderMap,
    Query(f): Query<LiveFilter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    state.events.ready().await;
    let (feed, head) = state.events.subscribe();
    let chain = state.events.chain.clone();
    let last = resume_after(&headers, &chain).unwrap_or(head);
    let (out, rx) = mpsc::channel(PER_CLIENT);
    let subscriber = Subscriber {
        gov: state.gov.clone(),
        chain,
        agent: f.agent.filter(|a| !a.is_empty()),
        kind: f.kind.filter(|k| !k.is_empty()),
        last,
        out,
    };
    tokio::spawn(subscriber.run(feed));
    let events = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}
