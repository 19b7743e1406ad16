//! The heads this process last saw of each chain, so the chain writer's batches and the guarded
//! LLM path can seal rows before they reach the database and append them in one statement
//! (`governance_append_batch_expected`, `governance_reserve_logged`, `governance_settle_logged`),
//! optimistically.
//!
//! The cache is a hint, never a source of truth: the database checks the expected head under
//! the head row's lock and refuses a stale one (changing nothing), so a wrong entry costs one
//! more round trip, never a wrong row. Every append this process commits updates it; so does a
//! stale answer, which carries the head the database holds. Optimistic appends to one chain
//! from this process take turns (`Tip::turn`), so they do not race each other into stale
//! answers (a turn is waited for only briefly: see `TURN_PATIENCE` in `budget`); other
//! processes are caught by the database's check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gov_core::AuditRecord;

use crate::Sealer;

/// A chain head: (seq, head_hmac).
pub(crate) type Head = (i64, Vec<u8>);

/// One chain's entry.
#[derive(Debug, Default)]
pub(crate) struct Tip {
    head: Mutex<Option<Head>>,
    /// Held by an optimistic append from its reading of the head to its answer; a lock of this
    /// process only, never a lock of the database's.
    pub(crate) turn: tokio::sync::Mutex<()>,
}

impl Tip {
    /// The head last seen, if any.
    pub(crate) fn head(&self) -> Option<Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a head this process committed: kept unless a later one is known already
    /// (appends committed concurrently may report out of order; heads only move forward).
    pub(crate) fn committed(&self, head: Head) {
        let mut h = self.head.lock().unwrap_or_else(|p| p.into_inner());
        if h.as_ref().is_none_or(|(seq, _)| *seq <= head.0) {
            *h = Some(head);
        }
    }

    /// Records the head the database reported under its lock: the truth at that moment.
    pub(crate) fn observed(&self, head: Head) {
        *self.head.lock().unwrap_or_else(|p| p.into_inner()) = Some(head);
    }
}

/// Every chain's entry, shared by the clones of one `PgStore`.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    chains: Mutex<HashMap<String, Arc<Tip>>>,
}

impl Heads {
    /// The entry of `chain` (created empty).
    pub(crate) fn tip(&self, chain: &str) -> Arc<Tip> {
        let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = chains.get(chain) {
            return t.clone();
        }
        let t = Arc::new(Tip::default());
        chains.insert(chain.to_owned(), t.clone());
        t
    }

    /// Records a head this process committed on `chain`.
    pub(crate) fn committed(&self, chain: &str, head: Option<Head>) {
        if let Some(head) = head {
            self.tip(chain).committed(head);
        }
    }
}

/// Wraps a sealer to remember the last row it sealed: after the append commits, that row is the
/// chain's head.
pub(crate) struct Recording<'a> {
    seal: Sealer<'a>,
    last: Mutex<Option<Head>>,
}

impl<'a> Recording<'a> {
    pub(crate) fn new(seal: Sealer<'a>) -> Self {
        Self {
            seal,
            last: Mutex::new(None),
        }
    }

    /// Seals `r` and remembers it.
    pub(crate) fn seal(&self, r: &mut AuditRecord) {
        (self.seal)(r);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((r.seq, r.row_hmac.clone()));
    }

    /// The last row sealed, as a head.
    pub(crate) fn last(&self) -> Option<Head> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
