//! The spool: observation survives a storage outage, and nothing it acknowledges is lost.
//!
//! `audit().log`, `cost().track` and `gates().request` go through [`Spool::submit`]. While the
//! spool is empty a record is written to storage directly. When storage is out of reach the
//! record is appended to this handle's spool file and synced (the line, and on a new file the
//! folder entry) before [`Ack::Spooled`] is returned. While records wait, a later record takes
//! its place behind them, so order is kept: while storage is down it is spooled at once; while
//! storage answers it joins the replay in memory and the caller waits for the replay to reach
//! it (then it is durable), so a loaded process drains the spool instead of refilling it. Once
//! no spooled record waits (only callers' records in memory), new records are written
//! directly again: a caller waiting in memory has nothing else outstanding, so order holds,
//! and the replay empties instead of answered callers queueing again behind the others. No
//! caller waits longer than the observation deadline ([`Setup::deadline`]): a write to storage
//! that has no answer by then counts as storage out of reach, and a caller the replay has not
//! reached by then has its record (and every other one waiting in memory) written to the file.
//!
//! A background task replays the queue in order, one transaction per batch, and stops at the
//! first batch that fails (a later batch never lands before an earlier one). While storage is
//! down it probes it every [`PROBE`], and replays as soon as it answers. Replaying twice is
//! harmless: audit events are deduplicated by event id, tracked spend by record id (the
//! database applies an id once) and gate requests by request id.
//!
//! Spool files live in a folder private to the user, one subfolder per database (see
//! [`identity`]); each line is authenticated (see [`format`]). A handle adopts the files of
//! processes that are gone (a file's lock is free) for its own database only: it verifies
//! every record, validates it as a live call would be, copies what passes into its own file
//! and syncs it, and only then removes the original; anything refused is kept aside in the
//! quarantine folder and reported, never replayed. A kill at any point leaves every record in
//! a file someone will adopt.
//!
//! Enforcement never reads the spool: budget checks and gate decisions fail closed meanwhile.

mod dir;
pub(crate) mod format;

use std::collections::{HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gov_audit::Appended;
use gov_core::{AuditEvent, GateRecord, TokenUsage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

pub use dir::ENV_SPOOL_DIR;
pub(crate) use dir::default_root;

use crate::{Error, Governance};

/// How often the replayer probes storage while it is down.
pub(crate) const PROBE: Duration = Duration::from_millis(50);
/// How often the spool folder is scanned for files of stopped processes.
const SCAN_EVERY: Duration = Duration::from_secs(10);
/// Records per spool file before a new one is started (a file is removed once replayed).
const SEGMENT_RECORDS: u64 = 65_536;
/// A record refused by storage (not for being out of reach) this many times is set aside.
const MAX_ATTEMPTS: u8 = 3;

/// One spooled record: what a live call would have written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Record {
    /// An audit event (its id and time are those of the original call).
    Audit { event: AuditEvent },
    /// Spend observed without a reservation; `id` makes it count once.
    Track {
        id: Uuid,
        agent: String,
        session: String,
        model: String,
        micros: i64,
        usage: TokenUsage,
    },
    /// A pending gate request.
    GateRequest { record: GateRecord },
    /// A data subject's new key, wrapped (hex), made while storage was out of reach: spooled
    /// ahead of the first event encrypted under it, stored on replay (refused if the subject
    /// was erased meanwhile, and then never stored).
    SubjectKey {
        subject: String,
        kid: Uuid,
        wrapped: String,
    },
    /// The settlement of reservation `id`, whose first try failed and may have committed (its
    /// reply was lost): replayed, the spend counts once (`Store::settle_once`).
    Settle {
        id: Uuid,
        agent: String,
        session: String,
        model: String,
        micros: i64,
        usage: TokenUsage,
    },
}

impl Record {
    /// The id that makes replaying this record idempotent.
    fn id(&self) -> Uuid {
        match self {
            Self::Audit { event } => event.event_id.as_uuid(),
            Self::Track { id, .. } => *id,
            Self::GateRequest { record } => record.id,
            Self::Settle { id, .. } => *id,
            Self::SubjectKey { kid, .. } => *kid,
        }
    }

    /// The checks a live call makes, for a record read back from a file.
    fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Audit { event } if event.personal.is_some() => Err(Error::Config(
                "an event with personal fields not yet encrypted cannot be spooled".into(),
            )),
            Self::Audit { event } => Ok(event.validate()?),
            Self::SubjectKey {
                subject, wrapped, ..
            } => {
                gov_core::AgentId::new(subject)?;
                match hex::decode(wrapped) {
                    Ok(w) if w.len() == gov_audit::personal::WRAPPED_LEN => Ok(()),
                    _ => Err(Error::Config("a spooled subject key is malformed".into())),
                }
            }
            Self::Track {
                agent,
                session,
                model,
                micros,
                usage,
                ..
            }
            | Self::Settle {
                agent,
                session,
                model,
                micros,
                usage,
                ..
            } => crate::cost::check_track(agent, session, model, *micros, usage),
            Self::GateRequest { record } => crate::gates::check_pending(record),
        }
    }
}

/// Where a submitted record went.
#[derive(Debug)]
pub(crate) enum Ack {
    /// In storage (an audit event's row, when it was written by this call).
    Durable(Option<Appended>),
    /// In the spool file, synced.
    Spooled,
}

/// The answer to a writer that joined the replay.
#[derive(Debug)]
enum Outcome {
    Applied(Option<Appended>),
    Spooled,
    Refused(Error),
}

#[derive(Debug)]
struct Entry {
    record: Record,
    /// The spool file holding it (by serial), or `None` while it is only in memory (a writer
    /// that joined the replay waits for it).
    seg: Option<u64>,
    waiter: Option<oneshot::Sender<Outcome>>,
    /// It may be in storage already (a write was sent and its answer lost, or it was adopted).
    maybe_applied: bool,
    attempts: u8,
}

/// One of this handle's spool files, locked for as long as the handle holds it.
#[derive(Debug)]
struct Segment {
    serial: u64,
    id: Uuid,
    path: PathBuf,
    file: Arc<std::fs::File>,
    /// Position of the next record.
    next_n: u64,
    /// Bytes written (a failed write is cut back to this).
    len: u64,
    /// Queued records that live in it.
    live: usize,
    /// Written since the last sync.
    dirty: bool,
    /// Takes no more records (full, or a write or sync failed on it).
    closed: bool,
}

#[derive(Debug, Default)]
struct Segments {
    list: VecDeque<Segment>,
    next_serial: u64,
    /// Records written to files so far (the sync watermark counts the same).
    written: u64,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Entry>,
    /// Queued entries that live in a spool file (the rest wait in memory with their caller).
    filed: usize,
    segs: Segments,
    /// Replay one record per transaction until one succeeds (a batch was refused).
    solo: bool,
}

/// What [`Spool::open`] needs.
pub(crate) struct Setup {
    /// The spool folder, or `None` for a handle that never spools.
    pub(crate) root: Option<PathBuf>,
    pub(crate) instance: Option<gov_store::Instance>,
    pub(crate) keys: format::Keys,
    pub(crate) max_batch: usize,
    /// The longest a write to storage may take before its record is spooled instead.
    pub(crate) deadline: Duration,
}

/// The spool of one handle (or none, for a handle that never spools).
#[derive(Debug)]
pub(crate) struct Spool {
    shared: Option<Arc<Shared>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    root: PathBuf,
    /// This database's folder.
    dir: PathBuf,
    /// This database's identity.
    db: String,
    keys: format::Keys,
    max_batch: usize,
    /// See [`Setup::deadline`].
    deadline: Duration,
    state: Mutex<State>,
    len: AtomicUsize,
    /// [`State::filed`], readable without the lock.
    filed: AtomicUsize,
    /// Storage was last found out of reach: new records are spooled at once.
    down: AtomicBool,
    stopped: AtomicBool,
    kick: Notify,
    sync_lock: Mutex<()>,
    /// Records (counted as [`Segments::written`]) known to be on disk.
    synced: AtomicU64,
    /// Ranges of records whose sync failed: never acknowledged.
    unsynced: Mutex<Vec<(u64, u64)>>,
    /// Files already reported as written under a key this handle does not hold.
    foreign: Mutex<HashSet<PathBuf>>,
}

/// The identity a database's spool is filed under: a digest of the random id its schema was
/// created with and where it lives (see [`gov_store::Instance`]).
pub(crate) fn identity(instance: &gov_store::Instance) -> String {
    let mut h = Sha256::new();
    h.update(b"governance/spool-identity/v1\0");
    h.update(instance.id.as_bytes());
    h.update(instance.locator.as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Locks a mutex, taking over a poisoned one (every update below leaves the state whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Whether a failure may heal by itself (storage out of reach, a writer restarting).
fn transient(e: &Error) -> bool {
    e.is_unavailable() || matches!(e, Error::Audit(gov_audit::AuditError::WriterStopped))
}

impl Spool {
    /// Opens the spool of a handle: checks the folder, and adopts the files that processes
    /// which are gone left for this database.
    pub(crate) fn open(setup: Setup) -> Result<Self, Error> {
        let (Some(root), Some(instance)) = (setup.root, setup.instance) else {
            return Ok(Self { shared: None });
        };
        if root.exists() {
            dir::check_private(&root)?;
        }
        let db = identity(&instance);
        let folder = root.join(&db);
        if folder.exists() {
            dir::check_private(&folder)?;
        }
        let shared = Arc::new(Shared {
            root,
            dir: folder,
            db,
            keys: setup.keys,
            max_batch: setup.max_batch.max(1),
            deadline: setup.deadline,
            state: Mutex::new(State::default()),
            len: AtomicUsize::new(0),
            filed: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            kick: Notify::new(),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(0),
            unsynced: Mutex::new(Vec::new()),
            foreign: Mutex::new(HashSet::new()),
        });
        shared.report_others();
        shared.adopt_orphans();
        Ok(Self {
            shared: Some(shared),
        })
    }

    /// The replayer's share of the spool (`None` when the handle never spools).
    pub(crate) fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.clone()
    }

    /// Records waiting to reach storage.
    pub(crate) fn len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.len.load(Ordering::Acquire))
    }

    /// This database's spool folder (`None` when the handle never spools).
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.shared.as_ref().map(|s| s.dir.as_path())
    }

    /// Stops the replayer (records still queued stay in the spool file for the next handle).
    pub(crate) fn stop(&self) {
        if let Some(s) = &self.shared {
            s.stopped.store(true, Ordering::Release);
            s.kick.notify_one();
        }
    }

    /// Writes `record` to storage, or spools it: directly while nothing waits, at once into
    /// the file while storage is down, else behind what waits (see the module's doc).
    pub(crate) async fn submit(&self, gov: &Governance, record: Record) -> crate::Result<Ack> {
        let Some(sh) = &self.shared else {
            return apply_one(gov, &record).await.map(Ack::Durable);
        };
        // Direct while nothing spooled waits. Records that only wait in memory for the replay
        // belong to callers still waiting for them, so nothing a later call writes can pass
        // an earlier record of the same caller; writing directly then lets the replay finish
        // instead of every answered caller queueing again behind the others (a convoy that
        // never empties under load).
        if sh.filed.load(Ordering::Acquire) == 0 && !sh.stopped.load(Ordering::Acquire) {
            return match sh.in_time(apply_one(gov, &record)).await {
                Ok(a) => Ok(Ack::Durable(a)),
                Err(e) if transient(&e) => sh.spool_after(record, e).await,
                Err(e) => Err(e),
            };
        }
        match sh.join(record).await? {
            Outcome::Applied(a) => Ok(Ack::Durable(a)),
            Outcome::Spooled => Ok(Ack::Spooled),
            Outcome::Refused(e) => Err(e),
        }
    }

    /// Spools `record`, whose write to storage just failed with `cause`, at once (so the
    /// caller does not wait for storage a second time); any other failure is returned.
    pub(crate) async fn submit_after(
        &self,
        gov: &Governance,
        record: Record,
        cause: Error,
    ) -> crate::Result<Ack> {
        match &self.shared {
            Some(sh) if transient(&cause) => sh.spool_after(record, cause).await,
            _ => self.submit(gov, record).await,
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes one record to storage, as a live call does.
async fn apply_one(gov: &Governance, record: &Record) -> crate::Result<Option<Appended>> {
    let inner = &gov.inner;
    match record {
        Record::Audit { event } => Ok(Some(inner.audit.append(event.clone()).await?)),
        Record::Track {
            id,
            agent,
            session,
            model,
            micros,
            usage,
        } => {
            inner
                .store
                .track(*id, agent, session, model, *micros, usage)
                .await?;
            Ok(None)
        }
        Record::Settle {
            id,
            agent,
            session,
            model,
            micros,
            usage,
        } => {
            let outcome = inner
                .store
                .settle_once(*id, agent, session, model, *micros, usage)
                .await?;
            tracing::debug!(reservation = %id, outcome, "settled a reservation whose settlement had failed");
            Ok(None)
        }
        Record::SubjectKey {
            subject,
            kid,
            wrapped,
        } => {
            let row = gov_store::SubjectKeyRow {
                subject: subject.clone(),
                kid: kid.to_string(),
                wrapped: hex::decode(wrapped)
                    .map_err(|_| Error::Config("a spooled subject key is malformed".into()))?,
            };
            if !inner.store.put_subject_key(&row).await? {
                tracing::info!(
                    "a spooled key was not stored: its data subject was erased meanwhile"
                );
            }
            Ok(None)
        }
        Record::GateRequest { record } => match inner.store.insert_gate_request(record).await {
            // The id is taken: this request was stored before (a replay, or a lost answer).
            Ok(()) | Err(gov_store::StoreError::Conflict(_)) => Ok(None),
            Err(e) => Err(e.into()),
        },
    }
}

/// Writes a batch taken from the front of the queue: consecutive audit events of one chain in
/// one transaction (those already stored skipped), or one other record.
async fn apply_batch(
    gov: &Governance,
    records: Vec<Record>,
    maybe_applied: bool,
) -> crate::Result<Vec<Option<Appended>>> {
    if records.len() == 1 || !records.iter().all(|r| matches!(r, Record::Audit { .. })) {
        let mut out = Vec::with_capacity(records.len());
        for r in &records {
            out.push(match r {
                Record::Audit { event } if maybe_applied => {
                    if gov
                        .inner
                        .audit
                        .existing(&[event.event_id])
                        .await?
                        .is_empty()
                    {
                        apply_one(gov, r).await?
                    } else {
                        None
                    }
                }
                _ => apply_one(gov, r).await?,
            });
        }
        return Ok(out);
    }
    let events: Vec<AuditEvent> = records
        .into_iter()
        .filter_map(|r| match r {
            Record::Audit { event } => Some(event),
            _ => None,
        })
        .collect();
    let present: HashSet<gov_core::EventId> = if maybe_applied {
        let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
        gov.inner.audit.existing(&ids).await?.into_iter().collect()
    } else {
        HashSet::new()
    };
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let todo: Vec<AuditEvent> = events
        .into_iter()
        .filter(|e| !present.contains(&e.event_id))
        .collect();
    let mut landed = gov.inner.audit.append_all(todo).await?.into_iter();
    Ok(ids
        .iter()
        .map(|id| {
            if present.contains(id) {
                None
            } else {
                landed.next()
            }
        })
        .collect())
}

impl Shared {
    /// Runs a write to storage within the deadline; past it, the write counts as storage out
    /// of reach (an audit event still queued in its chain's writer may land later: the
    /// replay checks what is stored before writing again, and event ids are unique).
    async fn in_time<T>(
        &self,
        write: impl std::future::Future<Output = crate::Result<T>>,
    ) -> crate::Result<T> {
        match tokio::time::timeout(self.deadline, write).await {
            Ok(r) => r,
            Err(_) => Err(Error::Store(Arc::new(gov_store::StoreError::Unavailable(
                format!(
                    "storage did not answer within {} ms (the observation deadline)",
                    self.deadline.as_millis()
                ),
            )))),
        }
    }

    fn store_len(&self, st: &State) {
        self.filed.store(st.filed, Ordering::Release);
        self.len.store(st.queue.len(), Ordering::Release);
    }

    /// Marks storage as out of reach; says so once per outage.
    fn went_down(&self, cause: &Error) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %cause, "storage unreachable: observation is spooled locally until it returns");
        }
    }

    /// The file new records go to: the last one, or a new one (created private, locked,
    /// its header and folder entry synced before any record is written to it).
    fn active<'s>(&self, segs: &'s mut Segments) -> std::io::Result<&'s mut Segment> {
        let need_new = segs
            .list
            .back()
            .is_none_or(|s| s.closed || s.next_n >= SEGMENT_RECORDS);
        if need_new {
            if let Some(last) = segs.list.back_mut() {
                last.closed = true;
            }
            dir::ensure_private(&self.root).map_err(std::io::Error::other)?;
            dir::ensure_private(&self.dir).map_err(std::io::Error::other)?;
            let id = Uuid::now_v7();
            let path = self.dir.join(format!("{id}.spool"));
            let file = dir::create_private_file(&path)?;
            file.try_lock().map_err(std::io::Error::other)?;
            let header = format::header_line(&self.keys, &self.db, id);
            let written = (|| {
                (&file).write_all(&header)?;
                file.sync_all()?;
                dir::sync_dir(&self.dir)
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            segs.list.push_back(Segment {
                serial: segs.next_serial,
                id,
                path,
                file: Arc::new(file),
                next_n: 0,
                len: header.len() as u64,
                live: 0,
                dirty: false,
                closed: false,
            });
            segs.next_serial += 1;
        }
        match segs.list.back_mut() {
            Some(s) => Ok(s),
            None => unreachable!("a segment was just pushed"),
        }
    }

    /// Appends one record's line to the active file (not yet synced); its file's serial.
    fn write_line(&self, segs: &mut Segments, record: &Record) -> std::io::Result<u64> {
        let json = serde_json::to_vec(record)?;
        let seg = self.active(segs)?;
        let line = format::record_line(&self.keys, &self.db, seg.id, seg.next_n, &json);
        if let Err(e) = (&*seg.file).write_all(&line) {
            // Cut the partial line off, so the next record starts on a line of its own; and
            // write no more to this file either way.
            let _ = seg.file.set_len(seg.len);
            seg.closed = true;
            return Err(e);
        }
        seg.next_n += 1;
        seg.len += line.len() as u64;
        seg.live += 1;
        seg.dirty = true;
        let serial = seg.serial;
        segs.written += 1;
        Ok(serial)
    }

    /// Syncs every file written since the last sync, once for all the writers waiting (group
    /// sync); returns when the record numbered `ticket` is on disk.
    fn sync_blocking(&self, ticket: u64) -> std::io::Result<()> {
        let _one_at_a_time = lock(&self.sync_lock);
        // A record whose file failed to sync is never acknowledged: after a failed sync its
        // pages are in doubt, and a later sync that succeeds proves nothing about them.
        if let Some((from, to)) = lock(&self.unsynced)
            .iter()
            .find(|(from, to)| ticket > *from && ticket <= *to)
        {
            return Err(std::io::Error::other(format!(
                "syncing the spool failed for records {}..={to}",
                from + 1
            )));
        }
        let synced = self.synced.load(Ordering::Acquire);
        if synced >= ticket {
            return Ok(());
        }
        let (target, files) = {
            let mut st = lock(&self.state);
            let files: Vec<(u64, Arc<std::fs::File>)> = st
                .segs
                .list
                .iter_mut()
                .filter(|s| s.dirty)
                .map(|s| {
                    s.dirty = false;
                    (s.serial, s.file.clone())
                })
                .collect();
            (st.segs.written, files)
        };
        for (_, f) in &files {
            if let Err(e) = f.sync_data() {
                let mut st = lock(&self.state);
                for s in st.segs.list.iter_mut() {
                    if files.iter().any(|(serial, _)| *serial == s.serial) {
                        s.closed = true;
                    }
                }
                lock(&self.unsynced).push((synced, target));
                self.synced.fetch_max(target, Ordering::AcqRel);
                return Err(e);
            }
        }
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    async fn sync(self: &Arc<Self>, ticket: u64) -> std::io::Result<()> {
        if self.synced.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync_blocking(ticket))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Appends `record` to the spool file behind everything queued, and syncs it.
    async fn push(self: &Arc<Self>, record: Record, maybe_applied: bool) -> std::io::Result<()> {
        let ticket = {
            let mut st = lock(&self.state);
            let seg = self.write_line(&mut st.segs, &record)?;
            st.queue.push_back(Entry {
                record,
                seg: Some(seg),
                waiter: None,
                maybe_applied,
                attempts: 0,
            });
            st.filed += 1;
            self.store_len(&st);
            st.segs.written
        };
        self.kick.notify_one();
        dir::fault("spool-written");
        self.sync(ticket).await
    }

    /// Spools a record whose write just failed with `cause` (it may have reached storage: the
    /// answer may be what was lost).
    async fn spool_after(self: &Arc<Self>, record: Record, cause: Error) -> crate::Result<Ack> {
        self.went_down(&cause);
        match self.push(record, true).await {
            Ok(()) => Ok(Ack::Spooled),
            Err(io) => {
                tracing::error!(error = %io, folder = %self.dir.display(), "could not write the spool: the record is not kept");
                Err(cause)
            }
        }
    }

    /// Queues `record` behind what waits: into the file at once while storage is down, else in
    /// memory, waiting for the replay to write it.
    async fn join(self: &Arc<Self>, record: Record) -> crate::Result<Outcome> {
        let (tx, rx) = oneshot::channel();
        let record = {
            let mut st = lock(&self.state);
            if !self.down.load(Ordering::Acquire) && !self.stopped.load(Ordering::Acquire) {
                st.queue.push_back(Entry {
                    record,
                    seg: None,
                    waiter: Some(tx),
                    maybe_applied: false,
                    attempts: 0,
                });
                self.store_len(&st);
                None
            } else {
                Some(record)
            }
        };
        let stopped = |_| Error::Config("the spool stopped before the record was written".into());
        let Some(record) = record else {
            self.kick.notify_one();
            let mut rx = rx;
            return match tokio::time::timeout(self.deadline, &mut rx).await {
                Ok(answer) => answer.map_err(stopped),
                Err(_) => {
                    // The replay has not reached this record within the deadline (a long
                    // backlog, or a replay held up): what waits in memory goes to the file, so
                    // no caller waits longer than the deadline for the replay.
                    tracing::warn!(
                        deadline_ms = self.deadline.as_millis() as u64,
                        waiting = self.len.load(Ordering::Acquire),
                        "the replay did not reach a waiting record within the observation deadline: records waiting in memory are spooled"
                    );
                    self.persist_pending().await;
                    rx.await.map_err(stopped)
                }
            };
        };
        match self.push(record, false).await {
            Ok(()) => Ok(Outcome::Spooled),
            Err(io) => Err(Error::Config(format!(
                "storage is out of reach and the spool cannot be written ({io}); the record is not kept"
            ))),
        }
    }

    /// Writes every record that is only in memory to the file (in queue order), syncs, and
    /// answers its writer [`Outcome::Spooled`]; a record that cannot be written is dropped
    /// from the queue and its writer told so.
    async fn persist_pending(self: &Arc<Self>) {
        let (ticket, spooled, failed) = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let (mut spooled, mut failed) = (Vec::new(), Vec::new());
            let mut keep = VecDeque::with_capacity(st.queue.len());
            let mut broken: Option<String> = None;
            for mut e in st.queue.drain(..) {
                if e.seg.is_none() {
                    let written = match &broken {
                        Some(_) => None,
                        None => match self.write_line(&mut st.segs, &e.record) {
                            Ok(serial) => Some(serial),
                            Err(io) => {
                                broken = Some(io.to_string());
                                None
                            }
                        },
                    };
                    match written {
                        Some(serial) => {
                            e.seg = Some(serial);
                            st.filed += 1;
                            spooled.extend(e.waiter.take());
                        }
                        None => {
                            failed.extend(e.waiter.take());
                            continue;
                        }
                    }
                }
                keep.push_back(e);
            }
            st.queue = keep;
            self.store_len(st);
            let failed: Vec<_> = failed
                .into_iter()
                .map(|w| (w, broken.clone().unwrap_or_default()))
                .collect();
            (st.segs.written, spooled, failed)
        };
        for (w, why) in failed {
            let _ = w.send(Outcome::Refused(Error::Config(format!(
                "storage is out of reach and the spool cannot be written ({why}); the record is not kept"
            ))));
        }
        if spooled.is_empty() {
            return;
        }
        match self.sync(ticket).await {
            Ok(()) => {
                for w in spooled {
                    let _ = w.send(Outcome::Spooled);
                }
            }
            Err(io) => {
                tracing::error!(error = %io, "could not sync the spool");
                for w in spooled {
                    let _ = w.send(Outcome::Refused(Error::Config(format!(
                        "storage is out of reach and the spool cannot be synced ({io})"
                    ))));
                }
            }
        }
    }

    /// Takes the first `n` entries off the queue, removing the files nothing lives in any
    /// more (all of them once the queue is empty).
    fn remove_front(&self, n: usize) -> Vec<Entry> {
        let mut st = lock(&self.state);
        let n = n.min(st.queue.len());
        let taken: Vec<Entry> = st.queue.drain(..n).collect();
        for e in &taken {
            if let Some(serial) = e.seg {
                st.filed = st.filed.saturating_sub(1);
                if let Some(s) = st.segs.list.iter_mut().find(|s| s.serial == serial) {
                    s.live = s.live.saturating_sub(1);
                }
            }
        }
        let empty = st.queue.is_empty();
        let count = st.segs.list.len();
        let mut i = 0;
        st.segs.list.retain(|s| {
            i += 1;
            let last = i == count;
            let done = s.live == 0 && (!last || empty);
            if done && let Err(e) = std::fs::remove_file(&s.path) {
                tracing::warn!(file = %s.path.display(), error = %e, "could not remove a replayed spool file; its records will be skipped when it is adopted");
            }
            !done
        });
        self.store_len(&st);
        taken
    }

    /// Replays the queue from the front until it is empty or storage fails (see the module's
    /// doc). Returns `false` when it stopped at a record storage refused, to be retried later.
    async fn replay_pass(self: &Arc<Self>, gov: &Governance) -> bool {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return true;
            }
            let (records, maybe_applied) = {
                let st = lock(&self.state);
                let Some(front) = st.queue.front() else {
                    return true;
                };
                let n = match &front.record {
                    Record::Audit { event } if !st.solo => st
                        .queue
                        .iter()
                        .take(self.max_batch)
                        .take_while(|e| {
                            matches!(&e.record, Record::Audit { event: x } if x.chain_id == event.chain_id)
                        })
                        .count(),
                    _ => 1,
                };
                let batch: Vec<&Entry> = st.queue.iter().take(n).collect();
                (
                    batch.iter().map(|e| e.record.clone()).collect::<Vec<_>>(),
                    batch.iter().any(|e| e.maybe_applied),
                )
            };
            let n = records.len();
            match self.in_time(apply_batch(gov, records, maybe_applied)).await {
                Ok(landed) => {
                    dir::fault("replay-committed");
                    lock(&self.state).solo = false;
                    for (e, a) in self.remove_front(n).into_iter().zip(landed) {
                        if let Some(w) = e.waiter {
                            let _ = w.send(Outcome::Applied(a));
                        }
                    }
                }
                Err(e) => {
                    {
                        // Its answer may be what was lost: check before writing it again.
                        let mut st = lock(&self.state);
                        for entry in st.queue.iter_mut().take(n) {
                            entry.maybe_applied = true;
                        }
                    }
                    if transient(&e) {
                        self.went_down(&e);
                        self.persist_pending().await;
                        return true;
                    }
                    if !self.refused(n, e).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Storage refused a batch of `n` (not for being out of reach): retries one record at a
    /// time, and sets aside a record refused [`MAX_ATTEMPTS`] times (its writer gets the
    /// error; a spooled one goes to the quarantine). Returns whether to go on now.
    async fn refused(self: &Arc<Self>, n: usize, e: Error) -> bool {
        let give_up = {
            let mut st = lock(&self.state);
            if n > 1 {
                st.solo = true;
                return true;
            }
            match st.queue.front_mut() {
                Some(front) => {
                    front.attempts += 1;
                    front.attempts >= MAX_ATTEMPTS
                }
                None => return true,
            }
        };
        if !give_up {
            tracing::warn!(error = %e, "storage refused a spooled record; retrying");
            return false;
        }
        lock(&self.state).solo = false;
        for entry in self.remove_front(1) {
            match entry.waiter {
                Some(w) => {
                    let _ = w.send(Outcome::Refused(e));
                    return true;
                }
                None => {
                    let line = serde_json::to_vec(&entry.record).unwrap_or_default();
                    let kept = dir::quarantine_lines(
                        &self.dir,
                        "replay",
                        &[format::Rejected {
                            line: 0,
                            reason: format!("refused by storage: {e}"),
                            bytes: line,
                        }],
                    );
                    match kept {
                        Ok(path) => {
                            tracing::error!(error = %e, record = %entry.record.id(), quarantine = %path.display(), "storage refused a spooled record {MAX_ATTEMPTS} times: it is kept aside in the quarantine and not replayed")
                        }
                        Err(io) => {
                            tracing::error!(error = %e, record = %entry.record.id(), quarantine_error = %io, "storage refused a spooled record {MAX_ATTEMPTS} times and it could not be kept aside: it is dropped")
                        }
                    }
                }
            }
        }
        true
    }

    /// Says once at start when spool files this handle will never adopt are present: files of
    /// an earlier version (not authenticated) beside the database folders, and files of stopped
    /// processes filed under another database identity.
    fn report_others(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let (mut old, mut others) = (0usize, 0usize);
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".jsonl") || name.ends_with(".adopting") {
                old += 1;
            } else if path.is_dir() && path != self.dir {
                others += std::fs::read_dir(&path)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|f| f.file_name().to_string_lossy().ends_with(".spool"))
                    .count();
            }
        }
        if old > 0 {
            tracing::warn!(files = old, folder = %self.root.display(), "spool files of an earlier version are not replayed (they carry no authentication); inspect them, then remove them");
        }
        if others > 0 {
            tracing::info!(files = others, folder = %self.root.display(), "spool files of other databases are present; each is replayed only by a handle on its own database");
        }
    }

    /// Adopts the spool files of stopped processes in this database's folder; how many
    /// records were taken. Blocking file I/O.
    pub(crate) fn adopt_orphans(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let own: HashSet<Uuid> = lock(&self.state).segs.list.iter().map(|s| s.id).collect();
        let mut files: Vec<(Uuid, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".spool")?.parse().ok()?;
                Some((id, e.path()))
            })
            .filter(|(id, _)| !own.contains(id))
            .collect();
        // UUID v7 names: oldest first.
        files.sort();
        let mut total = 0;
        for (id, path) in files {
            match self.adopt_file(id, &path) {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "could not adopt a spool file; it is left in place for the next attempt");
                }
            }
        }
        total
    }

    /// Adopts one file if its process is gone (its lock is free): see the module's doc.
    fn adopt_file(&self, id: Uuid, path: &Path) -> std::io::Result<usize> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            // Adopted and removed by another handle meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            // Its process is alive (or another handle is adopting it).
            Err(std::fs::TryLockError::WouldBlock) => return Ok(0),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt as _;
            // Removed by the handle that held the lock before us: adopted already.
            if file.metadata()?.nlink() == 0 {
                return Ok(0);
            }
        }
        dir::fault("adopt-claimed");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut reader = std::io::BufReader::new(&file);
        let contents = match format::read(&mut reader, &self.keys, &self.db, id)? {
            Ok(c) => c,
            Err(format::Refusal::UnknownKey(key_id)) => {
                if lock(&self.foreign).insert(path.to_owned()) {
                    tracing::warn!(file = %path.display(), key_id, "a spool file was written under an audit secret this handle does not hold; it is left for a handle that holds it");
                }
                return Ok(0);
            }
            Err(format::Refusal::Bad(why)) => {
                let to = dir::quarantine_file(&self.dir, path)?;
                tracing::error!(file = %name, reason = %why, quarantine = %to.display(), "a file in the spool folder is refused (not an authentic spool of this database, or one whose creation a crash cut short): it is kept aside in the quarantine and never replayed");
                return Ok(0);
            }
        };
        let mut seen: HashSet<Uuid> = lock(&self.state)
            .queue
            .iter()
            .map(|e| e.record.id())
            .collect();
        let mut rejected = contents.rejected;
        let mut accepted = Vec::new();
        for (n, json) in contents.records {
            let line = usize::try_from(n).unwrap_or(usize::MAX).saturating_add(2);
            let record = serde_json::from_slice::<Record>(&json)
                .map_err(|e| format!("not a spool record: {e}"))
                .and_then(|r| r.validate().map(|()| r).map_err(|e| e.to_string()));
            match record {
                Ok(r) => {
                    if seen.insert(r.id()) {
                        accepted.push(r);
                    }
                }
                Err(why) => rejected.push(format::Rejected {
                    line,
                    reason: format!("refused by validation: {why}"),
                    bytes: json,
                }),
            }
        }
        if let Some(t) = contents.torn {
            tracing::warn!(file = %name, "a spool file ends in a torn line (a write cut short by a crash, never acknowledged); it is kept aside");
            rejected.push(t);
        }
        for (first, last) in &contents.gaps {
            tracing::error!(file = %name, first, last, "records are missing from a spool file: lines were removed from it");
        }
        let forged = rejected.len();
        if !rejected.is_empty() {
            let q = dir::quarantine_lines(&self.dir, &name, &rejected)?;
            tracing::error!(file = %name, lines = forged, quarantine = %q.display(), "spool lines were refused (not authentic, or not valid as a live call would be); they are kept aside in the quarantine and never replayed");
        }
        let taken = accepted.len();
        let ticket = {
            let mut st = lock(&self.state);
            for record in accepted {
                let seg = self.write_line(&mut st.segs, &record)?;
                st.queue.push_back(Entry {
                    record,
                    seg: Some(seg),
                    waiter: None,
                    maybe_applied: true,
                    attempts: 0,
                });
                st.filed += 1;
            }
            self.store_len(&st);
            st.segs.written
        };
        dir::fault("adopt-copied");
        self.sync_blocking(ticket)?;
        dir::fault("adopt-synced");
        std::fs::remove_file(path)?;
        dir::fault("adopt-removed");
        dir::sync_dir(&self.dir)?;
        drop(reader);
        drop(file);
        if taken > 0 {
            tracing::warn!(records = taken, file = %name, "adopted the spool of a stopped process; it is replayed in order");
            self.kick.notify_one();
        }
        Ok(taken)
    }
}

/// Replays the spool while the handle lives: at once when records wait and storage answers,
/// probing storage every [`PROBE`] while it is down, and adopting stopped processes' files
/// every [`SCAN_EVERY`].
pub(crate) async fn run(gov: std::sync::Weak<crate::Inner>, sh: Arc<Shared>) {
    let mut last_scan = Instant::now();
    loop {
        if sh.stopped.load(Ordering::Acquire) {
            break;
        }
        let waiting = sh.len.load(Ordering::Acquire) > 0;
        if waiting && sh.down.load(Ordering::Acquire) {
            // Writers spool to the file meanwhile; they need not wake us.
            tokio::time::sleep(PROBE).await;
        } else if !waiting {
            let scan_in = SCAN_EVERY.saturating_sub(last_scan.elapsed());
            tokio::select! {
                () = sh.kick.notified() => {}
                () = tokio::time::sleep(scan_in) => {}
            }
        }
        let Some(inner) = gov.upgrade() else { break };
        let g = Governance { inner };
        if last_scan.elapsed() >= SCAN_EVERY {
            last_scan = Instant::now();
            let me = sh.clone();
            let _ = tokio::task::spawn_blocking(move || me.adopt_orphans()).await;
        }
        if sh.len.load(Ordering::Acquire) == 0 {
            continue;
        }
        if sh.down.load(Ordering::Acquire) {
            let probe = Instant::now();
            let ping = async { g.inner.store.ping().await.map_err(Error::from) };
            if let Err(e) = sh.in_time(ping).await {
                tracing::debug!(error = %e, took_ms = probe.elapsed().as_millis() as u64, "storage still out of reach");
                continue;
            }
            sh.down.store(false, Ordering::Release);
            tracing::info!(
                records = sh.len.load(Ordering::Acquire),
                "storage answers again: replaying the spool"
            );
        }
        let before = sh.len.load(Ordering::Acquire);
        let went_on = sh.replay_pass(&g).await;
        let left = sh.len.load(Ordering::Acquire);
        if left == 0 && before > 0 {
            tracing::info!(records = before, "the spool is replayed");
        }
        if !went_on {
            // A record storage refused: try it again a little later.
            tokio::time::sleep(PROBE * 4).await;
        }
    }
    // Nobody will replay what is only in memory: write it to the file for the next handle.
    sh.persist_pending().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";

    fn setup(root: &Path) -> Setup {
        let secret = gov_audit::AuditSecret::parse(SECRET).unwrap();
        Setup {
            root: Some(root.to_owned()),
            instance: Some(gov_store::Instance {
                id: Uuid::now_v7(),
                locator: "sqlite:/nowhere".into(),
            }),
            keys: format::Keys::new(
                (secret.chain_key().key_id().to_owned(), secret.spool_key()),
                [],
            ),
            max_batch: 1_000,
            deadline: Duration::from_secs(5),
        }
    }

    fn event(kind: &str) -> AuditEvent {
        AuditEvent::builder("agent", kind)
            .payload(serde_json::json!({"x": 1}))
            .build()
            .unwrap()
    }

    fn track(micros: i64) -> Record {
        Record::Track {
            id: Uuid::now_v7(),
            agent: "agent".into(),
            session: "s".into(),
            model: "gpt-4o-mini".into(),
            micros,
            usage: TokenUsage::default(),
        }
    }

    /// A file a holder of the audit secret wrote (every MAC right) holding `records`.
    fn write_file(s: &Setup, records: &[serde_json::Value]) -> PathBuf {
        let db = identity(s.instance.as_ref().unwrap());
        let dir = s.root.as_ref().unwrap().join(&db);
        dir::ensure_private(s.root.as_ref().unwrap()).unwrap();
        dir::ensure_private(&dir).unwrap();
        let id = Uuid::now_v7();
        let mut bytes = format::header_line(&s.keys, &db, id);
        for (n, r) in records.iter().enumerate() {
            let json = serde_json::to_vec(r).unwrap();
            bytes.extend(format::record_line(&s.keys, &db, id, n as u64, &json));
        }
        let path = dir.join(format!("{id}.spool"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gov-spool-unit-{tag}-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn authentic_records_that_fail_a_live_calls_checks_are_quarantined_not_replayed() {
        let root = tempdir("validate");
        let s = setup(&root);
        let good = serde_json::to_value(Record::Audit {
            event: event("tool.call"),
        })
        .unwrap();
        // An event that skipped the builder: a kind the builder refuses, a payload that is not
        // canonical JSON.
        let mut skipped = serde_json::to_value(Record::Audit {
            event: event("tool.call"),
        })
        .unwrap();
        skipped["event"]["kind"] = "Gate Approved!".into();
        let mut not_canonical = serde_json::to_value(Record::Audit {
            event: event("tool.call"),
        })
        .unwrap();
        not_canonical["event"]["payload"] = r#"{ "x" : 1 }"#.into();
        let negative = serde_json::to_value(track(-5_000_000)).unwrap();
        let absurd = serde_json::to_value(track(crate::MAX_TRACKED_MICROS + 1)).unwrap();
        // A gate request that arrives approved.
        let approved = serde_json::json!({"type": "gate_request", "record": {
            "id": Uuid::now_v7(), "agent_id": "agent", "session_id": null, "tool": "wire",
            "action_hash": "00".repeat(32), "args": "{}",
            "requested_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-01T01:00:00Z",
            "status": "approved", "decided_by": "alice", "decision_reason": null,
            "token_expires_at": "2026-12-01T01:00:00Z"
        }});
        let file = write_file(
            &s,
            &[
                good.clone(),
                skipped,
                not_canonical,
                negative,
                absurd,
                approved,
            ],
        );
        let spool = Spool::open(s).unwrap();
        assert_eq!(spool.len(), 1, "only the valid record is queued");
        assert!(!file.exists(), "the adopted file is removed");
        let q = dir::quarantine_dir(spool.dir().unwrap());
        let kept: Vec<serde_json::Value> = std::fs::read_dir(&q)
            .unwrap()
            .flat_map(|e| {
                std::fs::read_to_string(e.unwrap().path())
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(kept.len(), 5, "{kept:#?}");
        assert!(
            kept.iter().all(|k| k["reason"]
                .as_str()
                .unwrap()
                .starts_with("refused by validation")),
            "{kept:#?}"
        );
        // The queued record is the good one, copied into this handle's own file.
        let st = lock(&spool.shared.as_ref().unwrap().state);
        assert_eq!(
            serde_json::to_value(&st.queue[0].record).unwrap(),
            good,
            "the valid record survives unchanged"
        );
        drop(st);
        drop(spool);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_folder_others_may_write_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempdir("perm");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Spool::open(setup(&root)).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        assert!(err.contains(ENV_SPOOL_DIR), "{err}");
        // Reached through a folder anyone may write (no sticky bit): refused too.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let inner = root.join("spool");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = Spool::open(setup(&inner)).unwrap_err().to_string();
        assert!(err.contains("sticky"), "{err}");
        // Private: accepted, and a folder it creates is private.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        let fresh = root.join("fresh");
        dir::ensure_private(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        Spool::open(setup(&fresh)).unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt as _;
        let root = tempdir("owner");
        let other = root.join("theirs");
        std::fs::create_dir(&other).unwrap();
        // Only root can give a folder away; anyone else sees the check through their own
        // folder's owner already (the rule is the same).
        if rustix::process::geteuid().as_raw() == 0 {
            std::os::unix::fs::chown(&other, Some(65_534), Some(65_534)).unwrap();
            assert_eq!(std::fs::metadata(&other).unwrap().uid(), 65_534);
            let err = Spool::open(setup(&other)).unwrap_err().to_string();
            assert!(err.contains("belongs to user id 65534"), "{err}");
        } else {
            let err = Spool::open(setup(Path::new("/"))).unwrap_err().to_string();
            assert!(err.contains("belongs to user id 0"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
