//! The spool: observation survives a storage outage.
//!
//! When storage is out of reach, `audit().log`, `cost().track` and `gates().request` do not fail
//! the host call: they write the record to a local JSONL file (one line per record, synced to
//! disk) and return. While anything is spooled, new records queue behind it, so order is kept.
//! A background task replays the spool, in order, as soon as storage answers again, skipping
//! audit events already stored (a replay cut short never writes an event twice). Spool files
//! left by a process that died are adopted and replayed by the next handle that starts.
//!
//! Enforcement never reads the spool: budget checks and gate decisions fail closed meanwhile.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gov_core::{AuditEvent, GateRecord, TokenUsage};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::Governance;

/// One spooled record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Record {
    /// An audit event (its id and time are those of the original call).
    Audit { event: AuditEvent },
    /// Spend observed without a reservation.
    Track {
        agent: String,
        session: String,
        model: String,
        micros: i64,
        usage: TokenUsage,
    },
    /// A gate request.
    GateRequest { record: GateRecord },
}

#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    path: PathBuf,
    queue: Mutex<VecDeque<Record>>,
    len: AtomicUsize,
}

fn pid_alive(pid: u32) -> bool {
    // Where /proc is not available, assume alive: never take another live process's spool.
    !Path::new("/proc").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

impl Spool {
    /// A spool in `dir`, adopting the files of processes that are gone.
    pub(crate) fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let name = format!("{}-{}.jsonl", std::process::id(), uuid::Uuid::now_v7());
        let spool = Self {
            dir: dir.to_owned(),
            path: dir.join(name),
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        };
        spool.adopt_orphans();
        Ok(spool)
    }

    /// Records waiting to be replayed.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn adopt_orphans(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl") && *p != self.path)
            .filter(|p| {
                let pid = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.split('-').next())
                    .and_then(|n| n.parse().ok());
                pid.is_some_and(|pid| !pid_alive(pid))
            })
            .collect();
        files.sort();
        let mut adopted = VecDeque::new();
        for f in files {
            // Claim the file by renaming it; only one adopter wins.
            let claimed = f.with_extension("adopting");
            if std::fs::rename(&f, &claimed).is_err() {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&claimed) {
                adopted.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<Record>(l).ok()),
                );
            }
            if self.write_all(&adopted).is_ok() {
                let _ = std::fs::remove_file(&claimed);
            }
        }
        if !adopted.is_empty() {
            tracing::warn!(
                records = adopted.len(),
                "adopted spooled records of a stopped process; they will be replayed"
            );
            self.len.store(adopted.len(), Ordering::Release);
            if let Ok(mut q) = self.queue.try_lock() {
                *q = adopted;
            }
        }
    }

    /// Rewrites the spool file with exactly `records` (atomic rename).
    fn write_all(&self, records: &VecDeque<Record>) -> std::io::Result<()> {
        if records.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        for r in records {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Appends a record (synced to disk) behind everything already spooled.
    pub(crate) async fn push(&self, record: Record) -> std::io::Result<()> {
        let mut q = self.queue.lock().await;
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        q.push_back(record);
        self.len.store(q.len(), Ordering::Release);
        Ok(())
    }

    /// Replays what is spooled, in order, until done or storage fails again. Returns how many
    /// records were applied.
    pub(crate) async fn replay(&self, gov: &Governance) -> usize {
        let mut q = self.queue.lock().await;
        let mut applied = 0;
        while let Some(front) = q.front() {
            let result = match front {
                Record::Audit { .. } => {
                    // Consecutive audit events go in one batch (order kept by the writer).
                    let n = q
                        .iter()
                        .take_while(|r| matches!(r, Record::Audit { .. }))
                        .count()
                        .min(1_000);
                    let events: Vec<AuditEvent> = q
                        .iter()
                        .take(n)
                        .filter_map(|r| match r {
                            Record::Audit { event } => Some(event.clone()),
                            _ => None,
                        })
                        .collect();
                    match replay_events(gov, events).await {
                        Ok(()) => {
                            q.drain(..n);
                            applied += n;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                }
                Record::Track {
                    agent,
                    session,
                    model,
                    micros,
                    usage,
                } => {
                    let r = gov
                        .inner
                        .store
                        .track(agent, session, model, *micros, usage)
                        .await;
                    r.map(|()| {
                        q.pop_front();
                        applied += 1;
                    })
                    .map_err(crate::Error::from)
                }
                Record::GateRequest { record } => {
                    let r = match gov.inner.store.insert_gate_request(record).await {
                        Ok(()) | Err(gov_store::StoreError::Conflict(_)) => Ok(()),
                        Err(e) => Err(crate::Error::from(e)),
                    };
                    r.map(|()| {
                        q.pop_front();
                        applied += 1;
                    })
                }
            };
            if let Err(e) = result {
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "a spooled record was refused by storage; it is kept in the spool file");
                }
                break;
            }
        }
        if let Err(e) = self.write_all(&q) {
            tracing::error!(error = %e, "could not rewrite the spool file");
        }
        self.len.store(q.len(), Ordering::Release);
        applied
    }
}

async fn replay_events(gov: &Governance, events: Vec<AuditEvent>) -> crate::Result<()> {
    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
    let present = gov.inner.audit.existing(&ids).await?;
    let todo: Vec<AuditEvent> = events
        .into_iter()
        .filter(|e| !present.contains(&e.event_id))
        .collect();
    for r in gov.inner.audit.append_many(todo).await {
        r?;
    }
    Ok(())
}

/// Replays the spool whenever it holds something, until the handle is dropped.
pub(crate) async fn run(gov: std::sync::Weak<crate::Inner>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let Some(inner) = gov.upgrade() else { return };
        if inner.spool.len() > 0 {
            let g = Governance { inner };
            let n = g.inner.spool.replay(&g).await;
            if n > 0 {
                tracing::info!(
                    records = n,
                    left = g.inner.spool.len(),
                    "replayed spooled records"
                );
            }
        }
    }
}
