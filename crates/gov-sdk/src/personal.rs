//! Personal fields on the way in and out: encrypting the fields an event marks personal under a
//! key of its data subject before the event goes anywhere, opening them when events are read,
//! and erasing a subject (crypto-shredding).
//!
//! # Invariants
//!
//! - Plaintext of a marked field never reaches the spool, the database or a seal: an event is
//!   encrypted in `Audit::record` before it is submitted, and the spool refuses a record that
//!   still carries a marking.
//! - Keys are stored only wrapped (`subject_keys`, under the key-encryption key derived from the
//!   audit secret). A key made while storage is out of reach travels wrapped in the spool, ahead
//!   of the event that needs it, and is stored on replay (refused, and so never stored, if the
//!   subject was erased meanwhile).
//! - The write cache (subject → the key this handle encrypts with) is never used to read: every
//!   read fetches the keys it needs from storage, so a read after an erasure shows the fields
//!   erased, in every process.
//! - An erased subject stays erased: no key is stored for it again (the database refuses one),
//!   and a later event's personal fields are encrypted under a key that is never stored (a
//!   process still caching the subject's old key writes under a key that is gone), so they read
//!   as erased too; the event itself is recorded as usual.

use std::collections::HashMap;
use std::sync::Mutex;

use gov_audit::personal::{self, Kek, SubjectKey};
use gov_core::{AuditEvent, AuditRecord};
use gov_store::{Store, SubjectKeyRow};

use crate::{Error, Result};

/// Subjects whose write key a handle keeps (beyond this, the cache starts afresh).
const CACHE_MAX: usize = 10_000;

impl From<personal::PersonalError> for Error {
    fn from(e: personal::PersonalError) -> Self {
        match e {
            personal::PersonalError::Event(e) => Error::Event(e),
            other => Error::Config(other.to_string()),
        }
    }
}

/// A handle's subject keys: the key-encryption keys of its secrets and its write cache.
pub(crate) struct Subjects {
    /// The current secret's key-encryption key first, then the previous secrets'.
    keks: Vec<Kek>,
    /// Subject → the key new events are encrypted with.
    cache: Mutex<HashMap<String, SubjectKey>>,
}

impl std::fmt::Debug for Subjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subjects").finish_non_exhaustive()
    }
}

/// An event ready for the chain, and the key it needs stored first when storage could not be
/// reached to store it (it then goes to the spool ahead of the event).
pub(crate) struct Encrypted {
    pub(crate) event: AuditEvent,
    pub(crate) pending_key: Option<(SubjectKeyRow, SubjectKey)>,
}

impl Subjects {
    pub(crate) fn new(keks: Vec<Kek>) -> Self {
        Self {
            keks,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, subject: &str) -> Option<SubjectKey> {
        let c = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.get(subject).cloned()
    }

    /// Keeps `key` as the key new events of its subject are encrypted with.
    pub(crate) fn remember(&self, key: SubjectKey) {
        let mut c = match self.cache.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(key.subject().to_owned(), key);
    }

    fn current(&self) -> Result<&Kek> {
        self.keks
            .first()
            .ok_or_else(|| Error::Config("no audit secret to wrap subject keys with".into()))
    }

    fn unwrap_row(&self, row: &SubjectKeyRow) -> Option<SubjectKey> {
        self.keks
            .iter()
            .find_map(|k| k.unwrap(&row.subject, &row.kid, &row.wrapped).ok())
    }

    /// Encrypts the fields `event` marks personal (nothing to do without a marking).
    pub(crate) async fn encrypt(&self, store: &Store, mut event: AuditEvent) -> Result<Encrypted> {
        let Some(subject) = event.personal.as_ref().map(|p| p.subject.clone()) else {
            return Ok(Encrypted {
                event,
                pending_key: None,
            });
        };
        if let Some(key) = self.cached(&subject) {
            personal::encrypt_event(&mut event, &key)?;
            return Ok(Encrypted {
                event,
                pending_key: None,
            });
        }
        match self.key_for(store, &subject).await {
            Ok(key) => {
                personal::encrypt_event(&mut event, &key)?;
                self.remember(key);
                Ok(Encrypted {
                    event,
                    pending_key: None,
                })
            }
            Err(e) if e.is_unavailable() => {
                // Storage is out of reach: a new key, stored when the spool replays (ahead of
                // this event); remembered by the caller once the spool holds it.
                let key = SubjectKey::generate(&subject)?;
                let row = SubjectKeyRow {
                    subject: subject.clone(),
                    kid: key.kid().to_owned(),
                    wrapped: self.current()?.wrap(&key)?,
                };
                personal::encrypt_event(&mut event, &key)?;
                Ok(Encrypted {
                    event,
                    pending_key: Some((row, key)),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The key to encrypt `subject`'s fields with: a stored one this secret unwraps, else a new
    /// one, stored; for an erased subject, a key that is never stored.
    async fn key_for(&self, store: &Store, subject: &str) -> Result<SubjectKey> {
        let rows = store.subject_keys(&[subject.to_owned()]).await?;
        if let Some(k) = rows.iter().find_map(|r| self.unwrap_row(r)) {
            return Ok(k);
        }
        let key = SubjectKey::generate(subject)?;
        if store.subject_erased(subject).await? {
            return Ok(key);
        }
        let row = SubjectKeyRow {
            subject: subject.to_owned(),
            kid: key.kid().to_owned(),
            wrapped: self.current()?.wrap(&key)?,
        };
        // Refused (false) when an erasure committed meanwhile: the key is then never stored.
        store.put_subject_key(&row).await?;
        Ok(key)
    }

    /// Opens the personal fields of `records` in place, with the keys storage holds now (read
    /// afresh for each call, never from the write cache).
    pub(crate) async fn open(&self, store: &Store, records: &mut [AuditRecord]) -> Result<()> {
        let mut subjects: Vec<String> = records
            .iter()
            .flat_map(|r| personal::envelopes(&r.payload))
            .map(|e| e.subject)
            .collect();
        if subjects.is_empty() {
            return Ok(());
        }
        subjects.sort_unstable();
        subjects.dedup();
        let rows = store.subject_keys(&subjects).await?;
        let keys: HashMap<(String, String), SubjectKey> = rows
            .iter()
            .filter_map(|r| {
                let k = self.unwrap_row(r);
                if k.is_none() {
                    tracing::warn!(
                        kid = %r.kid,
                        "a data subject's key does not unwrap under the configured audit secrets; its fields read as unreadable"
                    );
                }
                k.map(|k| ((r.subject.clone(), r.kid.clone()), k))
            })
            .collect();
        // A stored key that does not unwrap is an integrity problem, not an erasure.
        let stored: std::collections::HashSet<(String, String)> = rows
            .iter()
            .map(|r| (r.subject.clone(), r.kid.clone()))
            .collect();
        for r in records.iter_mut() {
            let id = r.event_id.as_uuid();
            let opened = personal::open_payload(&id, &r.payload, |s, kid| {
                keys.get(&(s.to_owned(), kid.to_owned()))
            });
            if let Some(mut text) = opened {
                if stored.len() != keys.len() {
                    text = mark_unwrappable(&r.payload, &text, &stored, &keys);
                }
                r.payload = text;
            }
        }
        Ok(())
    }
}

/// Fields whose key is stored but does not unwrap read as unreadable, not erased.
fn mark_unwrappable(
    stored_payload: &str,
    opened: &str,
    stored: &std::collections::HashSet<(String, String)>,
    keys: &HashMap<(String, String), SubjectKey>,
) -> String {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(opened) else {
        return opened.to_owned();
    };
    for e in personal::envelopes(stored_payload) {
        let id = (e.subject, e.kid);
        if stored.contains(&id) && !keys.contains_key(&id) {
            map.insert(e.name, personal::UNREADABLE.into());
        }
    }
    serde_json::Value::Object(map).to_string()
}
