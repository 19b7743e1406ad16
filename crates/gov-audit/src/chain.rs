//! Appending to the chain with group commit, and verification over storage.
//!
//! Each chain has one writer task. Concurrent `append` calls queue on it; the writer takes
//! everything queued (up to a batch limit) and appends it in one transaction that holds the
//! chain's head row lock, so appends are serialised per chain across processes. Each caller is
//! answered only after the transaction that holds its row has committed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventFilter, EventId};
use gov_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::AuditError;
use crate::keys::{ChainKey, KeyRing};
use crate::verify::{self, ChainCheck, Finding, Reason, VerifyOptions, VerifyReport};

/// Tuning for [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditLogOptions {
    /// Most events in one transaction (default 1,000).
    pub max_batch_events: usize,
    /// Most payload bytes in one transaction (default 8 MiB).
    pub max_batch_bytes: usize,
    /// Queue depth per chain before callers wait (default 16,384).
    pub queue_depth: usize,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            max_batch_events: 1_000,
            max_batch_bytes: 8 << 20,
            queue_depth: 16_384,
        }
    }
}

/// Where an event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its event id.
    pub event_id: EventId,
    /// Its seq in its chain.
    pub seq: i64,
}

struct Job {
    event: AuditEvent,
    done: oneshot::Sender<Result<Appended, AuditError>>,
}

struct Inner {
    store: Store,
    keys: KeyRing,
    opts: AuditLogOptions,
    writers: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

/// The audit chain over a store: append, read, verify. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("key_id", &self.inner.keys.current().key_id())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log over `store`, sealing with the current key of `keys`.
    pub fn new(store: Store, keys: KeyRing, opts: AuditLogOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                keys,
                opts,
                writers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    fn writer(&self, chain: &str) -> mpsc::Sender<Job> {
        let mut writers = match self.inner.writers.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tx) = writers.get(chain)
            && !tx.is_closed()
        {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(self.inner.opts.queue_depth);
        tokio::spawn(run_writer(
            self.inner.store.clone(),
            self.inner.keys.current().clone(),
            chain.to_owned(),
            self.inner.opts.clone(),
            rx,
        ));
        writers.insert(chain.to_owned(), tx.clone());
        tx
    }

    /// Appends one event; returns once its row is durable.
    pub async fn append(&self, event: AuditEvent) -> Result<Appended, AuditError> {
        let (done, wait) = oneshot::channel();
        let tx = self.writer(event.chain_id.as_str());
        tx.send(Job { event, done })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        wait.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Appends events in the given order (per chain) and waits until all are durable. Used to
    /// replay a spool: jobs are queued before any is awaited, so they share transactions.
    pub async fn append_many(&self, events: Vec<AuditEvent>) -> Vec<Result<Appended, AuditError>> {
        let mut waits = Vec::with_capacity(events.len());
        for event in events {
            let (done, wait) = oneshot::channel();
            let tx = self.writer(event.chain_id.as_str());
            if tx.send(Job { event, done }).await.is_err() {
                waits.push(None);
            } else {
                waits.push(Some(wait));
            }
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Some(w) => w.await.unwrap_or(Err(AuditError::WriterStopped)),
                None => Err(AuditError::WriterStopped),
            });
        }
        out
    }

    /// Which of `ids` are already in the chain (so a replay never writes an event twice).
    pub async fn existing(&self, ids: &[EventId]) -> Result<Vec<EventId>, AuditError> {
        let uuids: Vec<uuid::Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
        Ok(self
            .inner
            .store
            .existing_event_ids(&uuids)
            .await?
            .into_iter()
            .map(EventId::from_uuid)
            .collect())
    }

    /// The head of one chain.
    pub async fn head(&self, chain: &str) -> Result<Option<ChainHead>, AuditError> {
        Ok(self.inner.store.chain_head(chain).await?)
    }

    /// Verifies one chain, or every chain when `chain` is `None`, from seq 1 to the head, on
    /// every core. Verifying nothing is an error, never a pass.
    pub async fn verify(&self, chain: Option<&str>) -> Result<VerifyReport, AuditError> {
        self.verify_with(chain, &VerifyOptions::default()).await
    }

    /// [`Self::verify`] with options: a seq range, the number of threads that recompute HMACs,
    /// and a progress callback (see [`VerifyOptions`]). A range that starts beyond the head of
    /// the named chain, or that holds no row of any chain, is refused.
    pub async fn verify_with(
        &self,
        chain: Option<&str>,
        opts: &VerifyOptions,
    ) -> Result<VerifyReport, AuditError> {
        opts.validate()?;
        let store = &self.inner.store;
        // Chains with rows are listed before the heads are read: a chain whose first append
        // commits in between then has a head and is verified, never mistaken for a headless one.
        let with_rows = match chain {
            // A named chain without a head row may still have rows: then its head was removed.
            Some(c) if store.read_chain_page(c, 0, 1).await?.is_empty() => Vec::new(),
            Some(c) => vec![c.to_owned()],
            None => store.chain_ids_with_rows().await?,
        };
        let heads = match chain {
            Some(c) => match store.chain_head(c).await? {
                Some(h) => vec![h],
                None if with_rows.is_empty() => return Err(AuditError::NoSuchChain(c.to_owned())),
                None => Vec::new(),
            },
            None => store.chain_heads().await?,
        };
        if let (Some(c), Some(from), Some(h)) = (chain, opts.from_seq, heads.first())
            && from > h.seq.max(1)
        {
            return Err(AuditError::InvalidOptions(format!(
                "the range starts at seq {from}, beyond the head of chain {c:?} (seq {})",
                h.seq
            )));
        }
        let mut chains = Vec::with_capacity(heads.len());
        // Rows whose chain has no head row: the head was removed behind the chain's back.
        for id in with_rows {
            if !heads.iter().any(|h| h.chain_id == id) {
                chains.push(verify::ChainReport {
                    chain_id: id,
                    events_checked: 0,
                    head_seq: 0,
                    key_ids: Default::default(),
                    range: None,
                    finding: Some(Finding {
                        seq: 1,
                        reason: Reason::HeadMismatch,
                        detail: "the chain has rows but no head row: the head row was removed"
                            .into(),
                    }),
                });
            }
        }
        let pool = verify::thread_pool(opts.threads)?;
        let keys = Arc::new(self.inner.keys.clone());
        let any_rows = heads.iter().any(|h| h.seq > 0);
        for head in heads {
            chains.push(verify::verify_chain(store, &keys, head, opts, &pool).await?);
        }
        chains.sort_by(|a, b| a.chain_id.cmp(&b.chain_id));
        let events_checked = chains.iter().map(|c| c.events_checked).sum();
        if chain.is_none() && events_checked == 0 && chains.iter().all(|c| c.is_clean()) {
            if opts.is_range() && any_rows {
                return Err(AuditError::InvalidOptions(format!(
                    "no chain has rows from seq {} to {}",
                    opts.from_seq.unwrap_or(1),
                    opts.to_seq
                        .map_or_else(|| "its head".to_owned(), |t| t.to_string())
                )));
            }
            return Err(AuditError::NothingToVerify);
        }
        Ok(VerifyReport {
            chains,
            events_checked,
        })
    }

    /// Reads events matching `filter`. With `verify_on_read`, every returned row's HMAC and its
    /// link to its predecessor are checked, and the read fails at the first broken one.
    pub async fn events(
        &self,
        filter: &EventFilter,
        verify_on_read: bool,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        let rows = self.inner.store.events(filter).await?;
        if verify_on_read {
            self.verify_rows(&rows).await?;
        }
        Ok(rows)
    }

    async fn verify_rows(&self, rows: &[AuditRecord]) -> Result<(), AuditError> {
        let keys = &self.inner.keys;
        let mut buf = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let fail = |reason, detail: &str| {
                AuditError::ChainBroken(Finding {
                    seq: row.seq,
                    reason,
                    detail: detail.to_owned(),
                })
            };
            let Some(key) = keys.get(&row.key_id) else {
                return Err(fail(
                    Reason::UnknownKey,
                    "the row is sealed with a key that is not configured",
                ));
            };
            if !key.verify(row, &mut buf) {
                return Err(fail(
                    Reason::ModifiedRow,
                    "the row's contents do not match its HMAC",
                ));
            }
            // The predecessor's seal must be what this row says it follows.
            let prev_hmac = match i.checked_sub(1).and_then(|j| rows.get(j)) {
                Some(p) if p.seq + 1 == row.seq && p.chain_id == row.chain_id => {
                    Some(p.row_hmac.clone())
                }
                _ if row.seq == 1 => Some(gov_core::ZERO_HMAC.to_vec()),
                _ => self
                    .inner
                    .store
                    .read_chain_page(&row.chain_id, row.seq - 2, 1)
                    .await?
                    .into_iter()
                    .find(|p| p.seq == row.seq - 1)
                    .map(|p| {
                        // The predecessor itself must be authentic for the link to mean anything.
                        if keys
                            .get(&p.key_id)
                            .is_some_and(|k| k.verify(&p, &mut Vec::new()))
                        {
                            p.row_hmac
                        } else {
                            Vec::new()
                        }
                    }),
            };
            match prev_hmac {
                None => return Err(fail(Reason::MissingRow, "the row before it is missing")),
                Some(h) if h != row.prev_hmac => {
                    return Err(fail(
                        Reason::Fork,
                        "the row does not follow an authentic predecessor",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// A pure check of rows already in hand (for tools that stream rows themselves).
    pub fn checker(&self, head: ChainHead) -> ChainCheck<'_> {
        ChainCheck::new(&self.inner.keys, head)
    }
}

async fn run_writer(
    store: Store,
    key: ChainKey,
    chain: String,
    opts: AuditLogOptions,
    mut rx: mpsc::Receiver<Job>,
) {
    let key_id = key.key_id().to_owned();
    let seal = move |r: &AuditRecord| key.seal(r);
    let mut events = Vec::with_capacity(opts.max_batch_events);
    let mut waiters = Vec::with_capacity(opts.max_batch_events);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.event.payload.len();
        events.push(first.event);
        waiters.push(first.done);
        while events.len() < opts.max_batch_events && bytes < opts.max_batch_bytes {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.event.payload.len();
                    events.push(job.event);
                    waiters.push(job.done);
                }
                Err(_) => break,
            }
        }
        let result = store.append_batch(&chain, &key_id, &events, &seal).await;
        match result {
            Ok(seqs) => {
                for ((done, ev), seq) in waiters.drain(..).zip(events.iter()).zip(seqs) {
                    let _ = done.send(Ok(Appended {
                        event_id: ev.event_id,
                        seq,
                    }));
                }
            }
            Err(e) => {
                tracing::warn!(chain = %chain, events = events.len(), error = %e, "audit append failed");
                let e = AuditError::from(e);
                for done in waiters.drain(..) {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
        events.clear();
    }
}
