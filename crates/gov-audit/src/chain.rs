//! Appending to the chain with group commit, and verification over storage.
//!
//! Each chain has one writer task. Concurrent `append` calls queue on it; the writer takes
//! everything queued (up to a batch limit) and appends it in one transaction that holds the
//! chain's head row lock, so appends are serialised per chain across processes. Each caller is
//! answered only after the transaction that holds its row has committed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventFilter, EventId};
use gov_store::Store;
use tokio::sync::{mpsc, oneshot};

use crate::AuditError;
use crate::checkpoint::Checkpoint;
use crate::keys::KeyRing;
use crate::signing::{RowSealer, Signer, SigningState};
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
    /// Whether rows are signed (default: off, rows are `unsigned`).
    pub signing: SigningState,
    /// With a signer on, store a signed checkpoint of the head each time a chain's seq passes
    /// a multiple of this (default: never).
    pub checkpoint_every: Option<u64>,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            max_batch_events: 1_000,
            max_batch_bytes: 8 << 20,
            queue_depth: 16_384,
            signing: SigningState::Off,
            checkpoint_every: None,
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

/// Work for a chain's writer: one event, or events that must commit in one transaction
/// (never split between transactions, so a failure never leaves a later one committed before
/// an earlier one).
enum Job {
    One {
        event: Box<AuditEvent>,
        done: oneshot::Sender<Result<Appended, AuditError>>,
    },
    All {
        events: Vec<AuditEvent>,
        done: oneshot::Sender<Result<Vec<Appended>, AuditError>>,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Self::One { .. } => 1,
            Self::All { events, .. } => events.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::One { event, .. } => event.payload.len(),
            Self::All { events, .. } => events.iter().map(|e| e.payload.len()).sum(),
        }
    }
}

struct Inner {
    store: Store,
    guard: Arc<HeadGuard>,
    sealer: RowSealer,
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
            .field("key_id", &self.inner.guard.keys.current().key_id())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// An audit log over `store`, sealing with the current key of `keys`.
    pub fn new(store: Store, keys: KeyRing, opts: AuditLogOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                sealer: RowSealer::new(keys.current().clone(), opts.signing.clone()),
                guard: Arc::new(HeadGuard {
                    store: store.clone(),
                    keys,
                    writable: Mutex::new(HashSet::new()),
                }),
                store,
                opts,
                writers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The key ring.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.guard.keys
    }

    /// Checks, once per chain for this log, that this log may append to `chain`: the chain is
    /// new, or its head row is proven sealed by the current key, or is a rotation marker proven
    /// to move the chain to it (see [`crate::owner::check_head`]). Appends through
    /// [`Self::append`] check by themselves; a caller that appends through the store in a
    /// transaction of its own (gate decisions, budget changes) calls this first. A refusal is
    /// [`AuditError::NotWritable`] (another key sealed the chain) or
    /// [`AuditError::ChainBroken`] (the head row is damaged), and is not cached.
    pub async fn ensure_writable(&self, chain: &str) -> Result<(), AuditError> {
        self.inner.guard.ensure(chain).await
    }

    /// What seals (and signs) new rows.
    pub fn sealer(&self) -> &RowSealer {
        &self.inner.sealer
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
            Arc::clone(&self.inner.guard),
            self.inner.sealer.clone(),
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
        tx.send(Job::One {
            event: Box::new(event),
            done,
        })
        .await
        .map_err(|_| AuditError::WriterStopped)?;
        wait.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Appends events of one chain, in the given order, in one transaction: all of them
    /// commit or none does (the spool's replay relies on this: it stops at the first batch that
    /// fails and retries from there, so a later batch never lands before an earlier one).
    /// Queued behind the chain's other appends, like [`Self::append`].
    pub async fn append_all(&self, events: Vec<AuditEvent>) -> Result<Vec<Appended>, AuditError> {
        let Some(first) = events.first() else {
            return Ok(Vec::new());
        };
        let chain = first.chain_id.clone();
        if events.iter().any(|e| e.chain_id != chain) {
            return Err(AuditError::Internal(
                "append_all takes the events of one chain",
            ));
        }
        let (done, wait) = oneshot::channel();
        let tx = self.writer(chain.as_str());
        tx.send(Job::All { events, done })
            .await
            .map_err(|_| AuditError::WriterStopped)?;
        wait.await.map_err(|_| AuditError::WriterStopped)?
    }

    /// Tells the log that rows `first..=last` of `chain` were appended by a transaction of the
    /// store's own (a budget reservation or settlement committed with its event), not by the
    /// chain's writer: an automatic checkpoint due at a seq in that range is stored as it is
    /// after a batch (a failure is logged, never returned).
    pub async fn appended_elsewhere(&self, chain: &str, first: i64, last: i64) {
        let opts = &self.inner.opts;
        if let Some(signer) = self.inner.sealer.signer()
            && checkpoint_due(opts.checkpoint_every, first, last)
        {
            auto_checkpoint(&self.inner.store, signer, chain).await;
        }
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
                    signatures: Default::default(),
                    range: None,
                    archived_through: None,
                    finding: Some(Finding {
                        seq: 1,
                        reason: Reason::HeadMismatch,
                        detail: "the chain has rows but no head row: the head row was removed"
                            .into(),
                    }),
                    unverifiable: None,
                });
            }
        }
        let pool = verify::thread_pool(opts.threads)?;
        let signers = crate::signing::signers_from(&store.signer_keys().await?);
        let keys = Arc::new(self.keys().clone().with_signers(signers));
        let any_rows = heads.iter().any(|h| h.seq > 0);
        for head in heads {
            let mut report = verify::verify_chain(store, &keys, head, opts, &pool).await?;
            if report.finding.is_none() && !opts.is_range() {
                report.finding = cut_is_recorded(store, &report).await?;
            }
            if report.finding.is_none() && !opts.is_range() {
                report.finding = stored_checkpoints_hold(store, &keys, &report).await?;
                if report.finding.is_none() {
                    report.finding = stored_cosignatures_hold(store, &report).await?;
                }
            }
            chains.push(report);
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
        let keys = self.keys();
        let mut buf = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let fail = |reason, detail: &str| {
                AuditError::ChainBroken(Finding {
                    seq: row.seq,
                    reason,
                    detail: detail.to_owned(),
                })
            };
            // The same evidence as the verifier's: a rewritten key_id is tampering; a row no
            // configured key seals cannot be judged alone (its chain's verdict says whether it
            // is another secret's), so the read is refused without calling it either.
            match crate::owner::row_seal(keys, row, &mut buf) {
                crate::owner::RowSeal::Sealed => {}
                crate::owner::RowSeal::Mismatch => {
                    return Err(fail(
                        Reason::ModifiedRow,
                        "the row's contents do not match its HMAC",
                    ));
                }
                crate::owner::RowSeal::Relabelled { .. } => {
                    return Err(fail(
                        Reason::ModifiedRow,
                        "the row is sealed with a configured key, but its key_id was rewritten",
                    ));
                }
                crate::owner::RowSeal::Foreign => {
                    return Err(AuditError::KeyNotConfigured {
                        chain: row.chain_id.clone(),
                        seq: row.seq,
                        key_id: row.key_id.clone(),
                    });
                }
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

    /// Signs the head of `chain` with `signer` (registering its public key), stores the
    /// checkpoint and returns it.
    pub async fn checkpoint(&self, chain: &str, signer: &Signer) -> Result<Checkpoint, AuditError> {
        let store = &self.inner.store;
        let head = store
            .chain_head(chain)
            .await?
            .filter(|h| h.seq > 0)
            .ok_or_else(|| AuditError::NoSuchChain(chain.to_owned()))?;
        store_checkpoint(store, signer, &head).await
    }

    /// Signs the head of `chain` twice with `signer`: the v1 checkpoint (stored, as
    /// [`Self::checkpoint`]) and, at the same seq, the C2SP checkpoint note of origin
    /// `<log_name>/<chain>` whose root is recomputed from the stored rows, never read from the
    /// tree tiles, so a forged tile can never be signed.
    pub async fn checkpoint_note(
        &self,
        chain: &str,
        signer: &Signer,
        log_name: &str,
    ) -> Result<(Checkpoint, crate::checkpoint::NoteCheckpoint), AuditError> {
        crate::checkpoint::origin(log_name, chain)
            .map_err(|e| AuditError::InvalidOptions(e.to_string()))?;
        let cp = self.checkpoint(chain, signer).await?;
        let size = cp.seq.unsigned_abs();
        let roots = crate::proofs::roots_from_rows(&self.inner.store, chain, &[size]).await?;
        let root = *roots
            .get(&size)
            .ok_or(AuditError::Internal("the root of the checkpoint's size"))?;
        let note = crate::checkpoint::sign_note(signer, log_name, chain, size, root)
            .map_err(|e| AuditError::InvalidOptions(e.to_string()))?;
        Ok((cp, note))
    }

    /// What an evidence bundle of `chain`'s events in `period` is made of, from one pass over
    /// the rows (docs/audit-chain.md, "The evidence bundle"): the rows from the period's first
    /// event to its last, the checkpoint they are proven under, its note signed by `signer` (the
    /// log key) and the stored witness cosignatures of it, and the range proof's hashes.
    ///
    /// The checkpoint is the largest tree size that witnesses cosigned (for the origin
    /// `<log_name>/<chain>`) and that holds the last event, with its cosignatures; when none
    /// does, the chain's head, with none. Its root is recomputed from the rows; a cosigned root
    /// the rows no longer give is `cosignature_mismatch`, a stored cosignature that does not
    /// verify `bad_cosignature`. Nothing is written.
    pub async fn evidence(
        &self,
        chain: &str,
        period: &crate::bundle::Period,
        signer: &Signer,
        log_name: &str,
    ) -> Result<crate::bundle::Evidence, AuditError> {
        use crate::note::{Note, SignatureLine, TYPE_COSIGNATURE_V1, TYPE_ED25519, Vkey};
        let invalid = |e: crate::note::NoteError| AuditError::InvalidOptions(e.to_string());
        let origin = crate::checkpoint::origin(log_name, chain).map_err(invalid)?;
        let store = &self.inner.store;
        let head = store
            .chain_head(chain)
            .await?
            .ok_or_else(|| AuditError::NoSuchChain(chain.to_owned()))?;
        let head_size = head.seq.max(0).unsigned_abs();
        let cosigs: Vec<gov_store::CosignatureRow> = store
            .cosignatures(chain)
            .await?
            .into_iter()
            .filter(|c| c.origin == origin && c.tree_size >= 1)
            .filter(|c| c.tree_size.unsigned_abs() <= head_size)
            .collect();
        let mut sizes: Vec<u64> = cosigs.iter().map(|c| c.tree_size.unsigned_abs()).collect();
        sizes.push(head_size);
        let rows = crate::proofs::range_from_rows(
            store,
            chain,
            |r| period.contains(r.occurred_at),
            &sizes,
        )
        .await?;
        let Some(last) = rows.rows.last().map(|r| r.seq.unsigned_abs()) else {
            return Err(AuditError::InvalidOptions(format!(
                "chain {chain} holds no event in the period, so there is nothing to prove"
            )));
        };
        let size = cosigs
            .iter()
            .map(|c| c.tree_size.unsigned_abs())
            .filter(|s| *s >= last)
            .max()
            .unwrap_or(head_size);
        let root = *rows
            .roots
            .get(&size)
            .ok_or(AuditError::Internal("the root of the checkpoint's size"))?;
        let signed =
            crate::checkpoint::sign_note(signer, log_name, chain, size, root).map_err(invalid)?;
        let mut note = Note::parse(&signed.note).map_err(invalid)?;
        let mut witnesses: Vec<Vkey> = Vec::new();
        let seq = i64::try_from(size).unwrap_or(i64::MAX);
        for c in cosigs.iter().filter(|c| c.tree_size.unsigned_abs() == size) {
            if !crate::witness::stored_cosignature_verifies(c) {
                return Err(AuditError::ChainBroken(Finding {
                    seq,
                    reason: Reason::BadCosignature,
                    detail: format!(
                        "the stored cosignature of witness {} does not verify under the key stored with it",
                        c.witness_name
                    ),
                }));
            }
            if c.root_hash.as_slice() != root.as_slice() {
                return Err(AuditError::ChainBroken(Finding {
                    seq,
                    reason: Reason::CosignatureMismatch,
                    detail: format!(
                        "witness {} cosigned another root at tree size {size} than the rows give: the chain was rewritten up to there",
                        c.witness_name
                    ),
                }));
            }
            let key = <[u8; 32]>::try_from(c.witness_key.as_slice())
                .map_err(|_| AuditError::Internal("a stored witness key is not 32 bytes"))?;
            let vkey = Vkey::new(&c.witness_name, TYPE_COSIGNATURE_V1, key).map_err(invalid)?;
            if witnesses.contains(&vkey) {
                continue;
            }
            let mut signature = c.cosigned_at.unsigned_abs().to_be_bytes().to_vec();
            signature.extend_from_slice(&c.signature);
            note.signatures.push(SignatureLine {
                name: c.witness_name.clone(),
                key_id: vkey.key_id(),
                signature,
            });
            witnesses.push(vkey);
        }
        Ok(crate::bundle::Evidence {
            chain_id: chain.to_owned(),
            log: Vkey::new(&origin, TYPE_ED25519, signer.public_key()).map_err(invalid)?,
            size,
            root,
            note: note.render(),
            witnesses,
            left: rows.left.clone(),
            right: rows.right(size),
            rows: rows.rows,
        })
    }

    /// Checks that `chain`'s stored rows still hold the head `cp` recorded, and that `cp` is
    /// signed by the key it names. `Ok(None)` when it holds. Whether that key is trusted (for
    /// instance registered) is for the caller to judge; see [`Self::signer_registered`].
    pub async fn check_checkpoint(&self, cp: &Checkpoint) -> Result<Option<Finding>, AuditError> {
        if !cp.signature_is_valid() {
            return Ok(Some(Finding {
                seq: cp.seq,
                reason: Reason::BadCheckpoint,
                detail: format!(
                    "the checkpoint of chain {} at seq {} is not signed by the key it names ({})",
                    cp.chain_id, cp.seq, cp.signer_key_id
                ),
            }));
        }
        let Some(head) = cp.head_hmac_bytes() else {
            return Ok(Some(Finding {
                seq: cp.seq,
                reason: Reason::BadCheckpoint,
                detail: "the checkpoint's head_hmac is not 32 bytes of hex".into(),
            }));
        };
        let at = format!("the checkpoint signed at {}", cp.signed_at);
        holds_head(&self.inner.store, &cp.chain_id, cp.seq, &head, &at).await
    }

    /// Whether `signer_key_id` is registered and not revoked.
    pub async fn signer_registered(&self, signer_key_id: &str) -> Result<bool, AuditError> {
        Ok(self
            .inner
            .store
            .signer_keys()
            .await?
            .iter()
            .any(|k| k.signer_key_id == signer_key_id && k.revoked_at.is_none()))
    }

    /// A pure check of rows already in hand (for tools that stream rows themselves).
    pub fn checker(&self, head: ChainHead) -> ChainCheck<'_> {
        ChainCheck::new(self.keys(), head)
    }
}

/// What lets a log append to a chain: the chains whose head this log has checked.
struct HeadGuard {
    store: Store,
    keys: KeyRing,
    /// Chains this log may append to (checked once each; forgotten after this log rotates one).
    writable: Mutex<HashSet<String>>,
}

impl HeadGuard {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        match self.writable.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn ensure(&self, chain: &str) -> Result<(), AuditError> {
        if self.cache().contains(chain) {
            return Ok(());
        }
        let head = self.store.chain_head(chain).await?;
        let row = match &head {
            Some(h) if h.seq > 0 => self
                .store
                .read_chain_page(chain, h.seq - 1, 1)
                .await?
                .into_iter()
                .next(),
            _ => None,
        };
        crate::owner::check_head(&self.keys, chain, head.as_ref(), row.as_ref())?;
        self.cache().insert(chain.to_owned());
        Ok(())
    }

    /// After this log appended a rotation marker to `chain`, its key may no longer seal there.
    fn forget(&self, chain: &str) {
        self.cache().remove(chain);
    }
}

/// Who waits for the events of a batch: one caller per event, or one for several.
enum Waiter {
    One(oneshot::Sender<Result<Appended, AuditError>>),
    All(usize, oneshot::Sender<Result<Vec<Appended>, AuditError>>),
}

async fn run_writer(
    store: Store,
    guard: Arc<HeadGuard>,
    sealer: RowSealer,
    chain: String,
    opts: AuditLogOptions,
    mut rx: mpsc::Receiver<Job>,
) {
    let key_id = sealer.key().key_id().to_owned();
    let row_sealer = sealer.clone();
    let seal = move |r: &mut AuditRecord| row_sealer.seal(r);
    let mut events = Vec::with_capacity(opts.max_batch_events);
    let mut waiters = Vec::with_capacity(opts.max_batch_events);
    let take = |job: Job, events: &mut Vec<AuditEvent>, waiters: &mut Vec<Waiter>| match job {
        Job::One { event, done } => {
            events.push(*event);
            waiters.push(Waiter::One(done));
        }
        Job::All { events: all, done } => {
            waiters.push(Waiter::All(all.len(), done));
            events.extend(all);
        }
    };
    // A job taken from the queue that did not fit the batch: it starts the next one.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let mut bytes = first.bytes();
        take(first, &mut events, &mut waiters);
        while events.len() < opts.max_batch_events && bytes < opts.max_batch_bytes {
            match rx.try_recv() {
                // Jobs are taken whole: one that would pass the limit waits for the next batch.
                Ok(job) if events.len() + job.len() > opts.max_batch_events => {
                    held = Some(job);
                    break;
                }
                Ok(job) => {
                    bytes += job.bytes();
                    take(job, &mut events, &mut waiters);
                }
                Err(_) => break,
            }
        }
        // Never seal onto a chain whose head another key sealed (once per chain: cached).
        let result = match guard.ensure(&chain).await {
            Ok(()) => store
                .append_batch(&chain, &key_id, &events, &seal)
                .await
                .map_err(AuditError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(seqs) => {
                if events
                    .iter()
                    .any(|e| e.kind == crate::rotation::ROTATION_KIND)
                {
                    guard.forget(&chain);
                }
                if let (Some(signer), Some(first), Some(last)) =
                    (sealer.signer(), seqs.first(), seqs.last())
                    && checkpoint_due(opts.checkpoint_every, *first, *last)
                {
                    auto_checkpoint(&store, signer, &chain).await;
                }
                let mut landed = events.iter().zip(seqs).map(|(ev, seq)| Appended {
                    event_id: ev.event_id,
                    seq,
                });
                let short = || AuditError::Internal("a batch returned fewer seqs than events");
                for w in waiters.drain(..) {
                    match w {
                        Waiter::One(done) => {
                            let _ = done.send(landed.next().ok_or_else(short));
                        }
                        Waiter::All(n, done) => {
                            let got: Vec<Appended> = landed.by_ref().take(n).collect();
                            let _ = done.send(if got.len() == n {
                                Ok(got)
                            } else {
                                Err(short())
                            });
                        }
                    }
                }
            }
            Err(e) => {
                if matches!(e, AuditError::NotWritable(_)) {
                    // A configuration error, returned to every caller; not a failure to log.
                    tracing::debug!(chain = %chain, events = events.len(), error = %e, "audit append refused");
                } else {
                    tracing::warn!(chain = %chain, events = events.len(), error = %e, "audit append failed");
                }
                for w in waiters.drain(..) {
                    match w {
                        Waiter::One(done) => {
                            let _ = done.send(Err(e.clone()));
                        }
                        Waiter::All(_, done) => {
                            let _ = done.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        events.clear();
    }
}

/// Whether appending seqs `first..=last` passed a multiple of `every`.
fn checkpoint_due(every: Option<u64>, first: i64, last: i64) -> bool {
    match every.filter(|n| *n > 0) {
        Some(every) => {
            let every = i64::try_from(every).unwrap_or(i64::MAX);
            last / every > (first - 1) / every
        }
        None => false,
    }
}

/// Signs `head`, registers the signer's key and stores the checkpoint.
async fn store_checkpoint(
    store: &Store,
    signer: &Signer,
    head: &ChainHead,
) -> Result<Checkpoint, AuditError> {
    store
        .register_signer(signer.key_id(), &signer.public_key(), signer.label())
        .await?;
    let cp = Checkpoint::sign(
        signer,
        &head.chain_id,
        head.seq,
        &head.head_hmac,
        time::OffsetDateTime::now_utc(),
    );
    let signature = hex::decode(&cp.signature)
        .map_err(|_| AuditError::Internal("a checkpoint signature is not hex"))?;
    store
        .put_checkpoint(&gov_store::CheckpointRow {
            chain_id: cp.chain_id.clone(),
            seq: cp.seq,
            head_hmac: head.head_hmac.clone(),
            signed_at: cp.signed_at,
            signer_key_id: cp.signer_key_id.clone(),
            signature,
        })
        .await?;
    Ok(cp)
}

/// Whether the stored row at `seq` of `chain` has `head_hmac`.
async fn holds_head(
    store: &Store,
    chain: &str,
    seq: i64,
    head_hmac: &[u8],
    what: &str,
) -> Result<Option<Finding>, AuditError> {
    let row = store.read_chain_page(chain, seq - 1, 1).await?;
    Ok(match row.first() {
        Some(r) if r.seq == seq && r.row_hmac == head_hmac => None,
        Some(r) if r.seq == seq => Some(Finding {
            seq,
            reason: Reason::CheckpointMismatch,
            detail: format!(
                "{what} recorded another HMAC for seq {seq}: the chain was rebuilt or rewritten up to there"
            ),
        }),
        _ => {
            let head = store.chain_head(chain).await?.map_or(0, |h| h.seq);
            Some(Finding {
                seq,
                reason: Reason::MissingRow,
                detail: format!(
                    "{what} covers seq {seq}, but the chain now ends at seq {head}: the tail was cut off"
                ),
            })
        }
    })
}

/// A chain that verified clean from a retention cut: the cut counts only when the sealed
/// `chain.archived` event written in its transaction names it (the application role cannot
/// record a cut, and whoever records one without the audit secret cannot seal its event), so
/// rows removed behind the chain's back never read as archived.
async fn cut_is_recorded(
    store: &Store,
    report: &verify::ChainReport,
) -> Result<Option<Finding>, AuditError> {
    let Some(cut) = store.retention_cuts(&report.chain_id).await?.pop() else {
        return Ok(None);
    };
    let unrecorded = |detail: String| {
        Ok(Some(Finding {
            seq: cut.through_seq,
            reason: Reason::MissingRow,
            detail,
        }))
    };
    let row = store
        .read_chain_page(&report.chain_id, cut.record_seq - 1, 1)
        .await?;
    let Some(row) = row.first().filter(|r| r.seq == cut.record_seq) else {
        return unrecorded(format!(
            "rows up to seq {} were removed as archived, but the chain.archived event that must record it (seq {}) is missing",
            cut.through_seq, cut.record_seq
        ));
    };
    let named = row.kind == gov_core::events::EventKind::ChainArchived.as_str()
        && serde_json::from_str::<gov_core::events::ChainArchived>(&row.payload).is_ok_and(|a| {
            a.through_seq == cut.through_seq
                && a.row_hmac == hex::encode(&cut.row_hmac)
                && a.archive_sha256 == cut.archive_sha256
        });
    if named {
        Ok(None)
    } else {
        unrecorded(format!(
            "rows up to seq {} were removed as archived, but row {} is not the chain.archived event that records that cut",
            cut.through_seq, cut.record_seq
        ))
    }
}

/// Checks the checkpoints stored for a chain that verified clean: each must be signed by a
/// registered key and still match the row at its seq.
async fn stored_checkpoints_hold(
    store: &Store,
    keys: &KeyRing,
    report: &verify::ChainReport,
) -> Result<Option<Finding>, AuditError> {
    let cut = store.retention_cuts(&report.chain_id).await?.pop();
    for cp in store.checkpoints(&report.chain_id).await? {
        let what = format!(
            "the stored checkpoint signed at {} by {}",
            cp.signed_at, cp.signer_key_id
        );
        let signed = keys.signers().get(&cp.signer_key_id).is_some_and(|k| {
            let msg = crate::checkpoint::checkpoint_message(
                &cp.chain_id,
                cp.seq,
                &cp.head_hmac,
                cp.signed_at,
                &cp.signer_key_id,
            );
            crate::signing::verify_with(k.public.as_bytes(), &msg, &cp.signature)
        });
        if !signed {
            return Ok(Some(Finding {
                seq: cp.seq,
                reason: Reason::BadCheckpoint,
                detail: format!("{what} is not signed by a registered key"),
            }));
        }
        if cp.seq > report.head_seq {
            return Ok(Some(Finding {
                seq: cp.seq,
                reason: Reason::MissingRow,
                detail: format!(
                    "{what} covers seq {}, but the chain ends at seq {}: the tail was cut off",
                    cp.seq, report.head_seq
                ),
            }));
        }
        // A checkpoint inside an archived segment is checked against the archive, not here;
        // one at the cut is checked against the seal the cut recorded.
        match &cut {
            Some(c) if cp.seq < c.through_seq => continue,
            Some(c) if cp.seq == c.through_seq => {
                if cp.head_hmac != c.row_hmac {
                    return Ok(Some(Finding {
                        seq: cp.seq,
                        reason: Reason::CheckpointMismatch,
                        detail: format!(
                            "{what} recorded another HMAC for seq {} than the retention cut there: the chain was rebuilt or rewritten up to there",
                            cp.seq
                        ),
                    }));
                }
                continue;
            }
            _ => {}
        }
        if let Some(f) = holds_head(store, &cp.chain_id, cp.seq, &cp.head_hmac, &what).await? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Checks the witness cosignatures stored for a chain that verified clean: each must verify
/// under the witness key stored with it (`bad_cosignature`), and the rows must still give the
/// cosigned root at its size (`cosignature_mismatch`; `missing_row` beyond the head).
async fn stored_cosignatures_hold(
    store: &Store,
    report: &verify::ChainReport,
) -> Result<Option<Finding>, AuditError> {
    let cosigs = store.cosignatures(&report.chain_id).await?;
    if cosigs.is_empty() {
        return Ok(None);
    }
    let head = report.head_seq.max(0).unsigned_abs();
    let mut sizes = Vec::new();
    for c in &cosigs {
        let seq = c.tree_size;
        let what = format!(
            "the cosignature of {} by witness {} at size {}",
            c.origin, c.witness_name, c.tree_size
        );
        if !crate::witness::stored_cosignature_verifies(c) {
            return Ok(Some(Finding {
                seq,
                reason: Reason::BadCosignature,
                detail: format!("{what} does not verify under the witness key stored with it"),
            }));
        }
        if c.tree_size.unsigned_abs() > head {
            return Ok(Some(Finding {
                seq,
                reason: Reason::MissingRow,
                detail: format!(
                    "{what} covers seq {seq}, but the chain ends at seq {head}: the tail was cut off"
                ),
            }));
        }
        sizes.push(c.tree_size.unsigned_abs());
    }
    // Sizes inside an archived segment are checked against the archive, not here.
    let floor = crate::proofs::archived_leaves(store, &report.chain_id).await?;
    sizes.retain(|&s| s >= floor);
    let cosigs: Vec<_> = cosigs
        .into_iter()
        .filter(|c| c.tree_size.unsigned_abs() >= floor)
        .collect();
    let roots = crate::proofs::roots_from_rows(store, &report.chain_id, &sizes).await?;
    for c in &cosigs {
        let size = c.tree_size.unsigned_abs();
        if roots.get(&size).map(|r| r.as_slice()) != Some(c.root_hash.as_slice()) {
            return Ok(Some(Finding {
                seq: c.tree_size,
                reason: Reason::CosignatureMismatch,
                detail: format!(
                    "witness {} cosigned another root for {} at size {size} than the rows give: the chain was rebuilt or rewritten up to there",
                    c.witness_name, c.origin
                ),
            }));
        }
    }
    Ok(None)
}

/// Stores a checkpoint of the head after a batch passed a multiple of `checkpoint_every`; a
/// failure is logged, never returned to the appenders.
async fn auto_checkpoint(store: &Store, signer: &Signer, chain: &str) {
    let result = match store.chain_head(chain).await {
        Ok(Some(head)) => store_checkpoint(store, signer, &head).await.map(|_| ()),
        Ok(None) => Ok(()),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        tracing::warn!(chain, error = %e, "could not store an automatic checkpoint");
    }
}
