//! The audit chain as the SDK offers it: log, read, verify.

use gov_audit::{Appended, ChainReport, VerifyReport};
use gov_core::EventId;

/// Whether verification follows key-rotation markers: rows sealed under earlier keys verify
/// against the keyring, a key may change only at a valid `chain.key_rotated` marker, and a
/// retired key never seals again. Reports state this flag.
pub const ROTATION_AWARE: bool = true;

/// Where a logged event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// In the chain, durable.
    Durable(Appended),
    /// In the local spool; it reaches the chain when storage returns.
    Spooled {
        /// The event's id.
        event_id: EventId,
    },
}

impl Logged {
    /// The seq, when the event is already in the chain.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Self::Durable(a) => Some(a.seq),
            Self::Spooled { .. } => None,
        }
    }

    /// The event's id.
    pub fn event_id(&self) -> EventId {
        match self {
            Self::Durable(a) => a.event_id,
            Self::Spooled { event_id } => *event_id,
        }
    }
}
use gov_core::{AuditEvent, AuditRecord, ChainHead, EventFilter};

use crate::{Governance, Result};

fn logged(ack: crate::spool::Ack, event_id: EventId) -> Logged {
    match ack {
        crate::spool::Ack::Durable(Some(a)) => Logged::Durable(a),
        // Stored before (a replay found it already written): it is in the chain, its seq
        // unknown here.
        crate::spool::Ack::Durable(None) | crate::spool::Ack::Spooled => {
            Logged::Spooled { event_id }
        }
    }
}

/// The audit chain of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'g> {
    gov: &'g Governance,
}

impl<'g> Audit<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Appends an event to its chain; returns once the row is durable. Concurrent calls are
    /// committed together in batches. The event is checked as [`AuditEvent::validate`] does
    /// (an event made field by field gets the builder's checks).
    ///
    /// Observation never fails the host call because of storage: when storage is out of reach,
    /// the event is written to the local spool (synced to disk) and [`Logged::Spooled`] is
    /// returned; it reaches the chain, in order, when storage returns. While events wait in the
    /// spool, later ones queue behind them: spooled at once while storage is down, and once it
    /// answers, written in order by the replay before this returns (then `Durable`). Other
    /// errors (a refused event, a spool that cannot be written) are returned.
    ///
    /// The host logs its own kinds only: a kind reserved for governance's own records
    /// ([`gov_core::events::is_reserved`]: gates, halts, denials, LLM calls, key rotation) is
    /// refused with [`crate::Error::ReservedKind`], and an event naming an actor with
    /// [`crate::Error::ActorReserved`] — those records come only from the paths that make
    /// them (an authenticated operator's decision, the gates themselves).
    pub async fn log(&self, event: AuditEvent) -> Result<Logged> {
        if gov_core::events::is_reserved(&event.kind) {
            return Err(crate::Error::ReservedKind { kind: event.kind });
        }
        if event.actor.is_some() {
            return Err(crate::Error::ActorReserved);
        }
        // Only the SDK writes envelopes: a host's own value that looks like one would read as
        // erased or unreadable.
        if event.personal.is_none() && gov_audit::personal::holds_envelope(&event.payload) {
            return Err(crate::Error::Event(gov_core::EventError::Personal(
                format!(
                    "a payload field holds a {:?} object, the form of an encrypted field; mark the field personal instead",
                    gov_core::ENVELOPE_TAG
                ),
            )));
        }
        self.record(event).await
    }

    /// Encrypts the event's personal fields (a no-op without them); when a new key could not
    /// be stored because storage is out of reach, spools the key ahead of the event.
    async fn encrypt(&self, event: AuditEvent) -> Result<AuditEvent> {
        let inner = &self.gov.inner;
        let enc = inner.subjects.encrypt(&inner.store, event).await?;
        if let Some((row, key)) = enc.pending_key {
            let kid = uuid::Uuid::parse_str(&row.kid)
                .map_err(|_| crate::Error::Config("a subject key id is not a UUID".into()))?;
            let record = crate::spool::Record::SubjectKey {
                subject: row.subject,
                kid,
                wrapped: hex::encode(&row.wrapped),
            };
            let cause = crate::Error::Store(std::sync::Arc::new(
                gov_store::StoreError::Unavailable("storing a data subject's key".into()),
            ));
            inner.spool.submit_after(self.gov, record, cause).await?;
            inner.subjects.remember(key);
        }
        Ok(enc.event)
    }

    /// Appends a system event (or a checked host event): [`Audit::log`] without the checks on
    /// kind and actor, for the SDK's own paths.
    pub(crate) async fn record(&self, event: AuditEvent) -> Result<Logged> {
        event.validate()?;
        let event = self.encrypt(event).await?;
        let event_id = event.event_id;
        let ack = self
            .gov
            .inner
            .spool
            .submit(self.gov, crate::spool::Record::Audit { event })
            .await?;
        Ok(logged(ack, event_id))
    }

    /// Logs an event whose write to storage just failed (`cause`): spooled at once when
    /// storage is out of reach, so the caller does not wait for storage a second time; logged
    /// as usual otherwise.
    pub(crate) async fn log_after(&self, event: AuditEvent, cause: crate::Error) -> Result<Logged> {
        event.validate()?;
        let event = self.encrypt(event).await?;
        let event_id = event.event_id;
        let ack = self
            .gov
            .inner
            .spool
            .submit_after(self.gov, crate::spool::Record::Audit { event }, cause)
            .await?;
        Ok(logged(ack, event_id))
    }

    /// Records (events, tracked spend, gate requests) waiting in the local spool for storage.
    pub fn spooled(&self) -> usize {
        self.gov.inner.spool.len()
    }

    /// This database's folder in the local spool (`None` for a handle built with
    /// `spool(false)`). Refused records are kept in its `quarantine` folder.
    pub fn spool_dir(&self) -> Option<&std::path::Path> {
        self.gov.inner.spool.dir()
    }

    /// Verifies the `default` chain.
    pub async fn verify_chain(&self) -> Result<ChainReport> {
        self.verify_named(gov_core::ChainId::default().as_str())
            .await
    }

    /// Verifies one named chain.
    pub async fn verify_named(&self, chain: &str) -> Result<ChainReport> {
        let report = self.gov.inner.audit.verify(Some(chain)).await?;
        report.chains.into_iter().next().ok_or_else(|| {
            crate::Error::Audit(gov_audit::AuditError::NoSuchChain(chain.to_owned()))
        })
    }

    /// Verifies every chain in the database. Fails with "nothing to verify" when there are no
    /// rows at all, so an empty or wrong database never passes.
    pub async fn verify_all(&self) -> Result<VerifyReport> {
        Ok(self.gov.inner.audit.verify(None).await?)
    }

    /// Verifies one chain, or every chain when `chain` is `None`, with options: a seq range,
    /// how many threads recompute HMACs, and a progress callback (see
    /// [`gov_audit::VerifyOptions`]).
    pub async fn verify_with(
        &self,
        chain: Option<&str>,
        opts: &gov_audit::VerifyOptions,
    ) -> Result<VerifyReport> {
        Ok(self.gov.inner.audit.verify_with(chain, opts).await?)
    }

    /// Reads events matching `filter`, in seq order (keyset paging: pass the last seq seen as
    /// `after_seq`). With `verify_chain_on_read`, each row and its link are verified first.
    ///
    /// Personal fields read as their values while their subject's key exists, as
    /// [`crate::ERASED`] once it was erased, and as [`crate::UNREADABLE`] when a ciphertext does
    /// not authenticate (moved to another event or field, or altered); reading never fails for
    /// them. The payloads returned are then not the sealed text: use [`Self::events_sealed`]
    /// for that.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>> {
        let mut rows = self.events_sealed(filter).await?;
        let inner = &self.gov.inner;
        inner.subjects.open(&inner.store, &mut rows).await?;
        Ok(rows)
    }

    /// [`Self::events`] with each payload exactly as stored and sealed (personal fields as
    /// their encrypted envelopes): for exports that must carry the sealed bytes.
    pub async fn events_sealed(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>> {
        let verify = self.gov.inner.config.verify_chain_on_read;
        Ok(self.gov.inner.audit.events(filter, verify).await?)
    }

    /// Erases a data subject (crypto-shredding): destroys every stored key of `subject`, so its
    /// personal fields in every event read as [`crate::ERASED`] from now on, and records the
    /// erasure as a `subject.erased` event (payload: subject, keys destroyed, reason,
    /// operator), in one transaction. The rows, their seals and every proof stay as they were.
    /// An erased subject stays erased: no key is ever stored for it again. Returns the number
    /// of keys destroyed and where the event landed.
    ///
    /// An operator action: on Postgres only the schema owner may (the application role cannot
    /// delete keys). Never spooled: fails when storage is out of reach.
    pub async fn erase_subject(&self, subject: &str, operator: &str, reason: &str) -> Result<u64> {
        use gov_core::events::SystemEvent as _;
        let make = |n: u64| {
            gov_core::events::SubjectErased {
                subject: subject.to_owned(),
                keys_destroyed: n,
                reason: reason.to_owned(),
                operator: operator.to_owned(),
            }
            .event(gov_core::events::ERASURE_AGENT)
            .build()
        };
        // Checks the subject id, the operator and the reason before anything is written.
        let probe = make(0)?;
        if probe.payload.is_empty() || reason.trim().is_empty() {
            return Err(crate::Error::Config("give the erasure a reason".into()));
        }
        gov_core::AgentId::new(subject)?;
        gov_core::AgentId::new(operator)?;
        let inner = &self.gov.inner;
        inner.audit.ensure_writable(probe.chain_id.as_str()).await?;
        let sealer = inner.audit.sealer();
        let seal = |r: &mut AuditRecord| sealer.seal(r);
        let build = |n: u64| make(n).map_err(|e| e.to_string());
        Ok(inner
            .store
            .erase_subject(subject, &build, sealer.key().key_id(), &seal)
            .await?)
    }

    /// The oversight records backing these events: the rows the operator paths wrote, in the
    /// transaction of each decision, halt or resume, for an authenticated operator. An event
    /// that claims human oversight without one was not made by an operator path (the report
    /// lists such claims apart and does not count them).
    pub async fn oversight_records(
        &self,
        event_ids: &[uuid::Uuid],
    ) -> Result<Vec<gov_store::OversightRecord>> {
        Ok(self.gov.inner.store.oversight_records(event_ids).await?)
    }

    /// Event counts per (chain, agent, kind), and per (chain, agent) with `kind: None`, for
    /// events with `occurred_at` in `[since, until)`; one chain or all of them.
    pub async fn event_counts(
        &self,
        chain: Option<&str>,
        since: Option<time::OffsetDateTime>,
        until: Option<time::OffsetDateTime>,
    ) -> Result<Vec<gov_core::EventCount>> {
        Ok(self
            .gov
            .inner
            .store
            .event_counts(chain, since, until)
            .await?)
    }

    /// Events of `kinds` on `chain` in `[since, until)`, counted per agent, kind and the tool or
    /// model their payload names (`tool`, else `model`, else `api`): who used what, and how often
    /// it was refused. Reads the period's rows.
    pub async fn target_counts(
        &self,
        chain: &str,
        kinds: &[gov_core::events::EventKind],
        since: time::OffsetDateTime,
        until: time::OffsetDateTime,
    ) -> Result<Vec<gov_store::TargetCount>> {
        gov_core::ChainId::new(chain)?;
        let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        Ok(self
            .gov
            .inner
            .store
            .target_counts(chain, &kinds, since, until)
            .await?)
    }

    /// Records a completed verification of every chain, so an operator tool (the console)
    /// shows it after a restart. On Postgres only the schema owner can: the application role
    /// has no privilege on `chain_verifications`, so it cannot forge a clean result.
    pub async fn record_verification(&self, row: &gov_store::VerificationRow) -> Result<()> {
        const STATUSES: [&str; 5] = ["clean", "unverifiable", "tampered", "empty", "unknown"];
        if !STATUSES.contains(&row.status.as_str()) {
            return Err(crate::Error::Config(format!(
                "{:?} is not a verification status; use one of {}",
                row.status,
                STATUSES.join(", ")
            )));
        }
        Ok(self.gov.inner.store.put_verification(row).await?)
    }

    /// The recorded verification that started last ([`Self::record_verification`]), if any.
    pub async fn last_verification(&self) -> Result<Option<gov_store::VerificationRow>> {
        Ok(self.gov.inner.store.last_verification().await?)
    }

    /// A chain's stored signed checkpoints, by seq.
    pub async fn checkpoints(&self, chain: &str) -> Result<Vec<gov_store::CheckpointRow>> {
        gov_core::ChainId::new(chain)?;
        Ok(self.gov.inner.store.checkpoints(chain).await?)
    }

    /// The ids of every chain that has rows.
    pub async fn chain_ids(&self) -> Result<Vec<String>> {
        Ok(self.gov.inner.store.chain_ids_with_rows().await?)
    }

    /// Follows the chain live (see [`crate::Tail`]).
    pub async fn tail(&self, filter: EventFilter) -> Result<crate::Tail> {
        crate::Tail::start(self.gov, filter).await
    }

    /// The heads of every chain, in one read.
    pub async fn heads(&self) -> Result<Vec<ChainHead>> {
        Ok(self.gov.inner.store.chain_heads().await?)
    }

    /// The head of a chain (its last seq and HMAC), from the head row.
    pub async fn head(&self, chain: &str) -> Result<Option<ChainHead>> {
        Ok(self.gov.inner.audit.head(chain).await?)
    }

    /// Rotates `chain` to the key of `new_secret`: appends a `chain.key_rotated` marker sealed
    /// with the current key and carrying the new key's proof, and returns where it landed. The
    /// marker is never spooled: this fails when storage is out of reach.
    ///
    /// Afterwards every writer must seal with the new secret (set it as the current secret and
    /// the old one as a previous secret); a row sealed with the old key after the marker is
    /// reported by verification as [`gov_audit::Reason::RetiredKey`].
    pub async fn rotate_key(
        &self,
        chain: &str,
        new_secret: &gov_audit::AuditSecret,
        operator: &str,
        reason: &str,
    ) -> Result<gov_audit::Appended> {
        gov_core::ChainId::new(chain)?;
        let inner = &self.gov.inner;
        let old = inner.audit.keys().current();
        let new = new_secret.chain_key();
        if new.key_id() == old.key_id() {
            return Err(crate::Error::Config(
                "the new audit secret is the current one; generate another with `openssl rand -hex 32`".into(),
            ));
        }
        let event = gov_audit::rotation::marker_event(chain, old, &new, operator, reason)?;
        Ok(inner.audit.append(event).await?)
    }

    /// Signs the head of `chain` with the configured signing key, stores the checkpoint and
    /// returns it (write it somewhere the database's administrators cannot reach).
    pub async fn checkpoint(&self, chain: &str) -> Result<gov_audit::Checkpoint> {
        let signer = self.gov.inner.audit.sealer().signer().cloned().ok_or_else(|| {
            crate::Error::Config(
                "no signing key is loaded: configure one with signing_key(..) or GOVERNANCE_SIGNING_KEY".into(),
            )
        })?;
        self.checkpoint_with(chain, &signer).await
    }

    /// Signs the head of `chain` with `signer` (registering its key), stores the checkpoint and
    /// returns it.
    pub async fn checkpoint_with(
        &self,
        chain: &str,
        signer: &gov_audit::Signer,
    ) -> Result<gov_audit::Checkpoint> {
        gov_core::ChainId::new(chain)?;
        Ok(self.gov.inner.audit.checkpoint(chain, signer).await?)
    }

    /// Signs the head of `chain` with `signer` as a v1 checkpoint (stored) and as a C2SP
    /// checkpoint note of origin `<log_name>/<chain>` over the root recomputed from the rows
    /// (docs/audit-chain.md, "Checkpoints as signed notes").
    pub async fn checkpoint_note(
        &self,
        chain: &str,
        signer: &gov_audit::Signer,
        log_name: &str,
    ) -> Result<(gov_audit::Checkpoint, gov_audit::checkpoint::NoteCheckpoint)> {
        gov_core::ChainId::new(chain)?;
        Ok(self
            .gov
            .inner
            .audit
            .checkpoint_note(chain, signer, log_name)
            .await?)
    }

    /// What an evidence bundle of `chain`'s events in `period` is made of (the rows from the
    /// period's first event to its last, the checkpoint note at the largest witnessed tree size
    /// that holds them, else at the head, signed by `signer` as the log key, with the stored
    /// cosignatures of it, and the range proof's hashes), from one pass over the rows; nothing
    /// is written. Add the Article 12 report and seal it with
    /// [`gov_audit::bundle::Bundle::assemble`] and [`gov_audit::bundle::Bundle::seal`]
    /// (docs/audit-chain.md, "The evidence bundle").
    pub async fn evidence(
        &self,
        chain: &str,
        period: &gov_audit::bundle::Period,
        signer: &gov_audit::Signer,
        log_name: &str,
    ) -> Result<gov_audit::bundle::Evidence> {
        gov_core::ChainId::new(chain)?;
        Ok(self
            .gov
            .inner
            .audit
            .evidence(chain, period, signer, log_name)
            .await?)
    }

    /// The witness cosignatures stored for `chain`, by tree size.
    pub async fn cosignatures(&self, chain: &str) -> Result<Vec<gov_store::CosignatureRow>> {
        Ok(self.gov.inner.store.cosignatures(chain).await?)
    }

    /// Stores a witness cosignature after checking it verifies (on Postgres only the owner may:
    /// the application role cannot write `witness_cosignatures`).
    pub async fn store_cosignature(&self, row: &gov_store::CosignatureRow) -> Result<()> {
        if !gov_audit::witness::stored_cosignature_verifies(row) {
            return Err(crate::Error::Config(format!(
                "the cosignature of witness {} does not verify; it was not stored",
                row.witness_name
            )));
        }
        Ok(self.gov.inner.store.put_cosignature(row).await?)
    }

    /// The consistency proof of `chain`'s tree from `from` to `to` leaves (empty when `from` is
    /// 0 or equals `to`), checked against `to_root`, the root the rows give: a tree tile that
    /// disagrees with the rows is refused rather than sent.
    pub async fn consistency_for(
        &self,
        chain: &str,
        from: u64,
        to: u64,
        to_root: &[u8; 32],
    ) -> Result<Vec<[u8; 32]>> {
        if from == 0 || from == to {
            return Ok(Vec::new());
        }
        let mut tree = gov_audit::proofs::ChainTree::open(&self.gov.inner.store, chain).await?;
        let p = tree.consistency(from, to).await?;
        if &p.to_root != to_root {
            return Err(crate::Error::Audit(gov_audit::AuditError::from(
                gov_store::StoreError::Corrupt(format!(
                    "the stored tree tiles of chain {chain} give another root at size {to} than its rows: a tile was changed; run governance verify"
                )),
            )));
        }
        Ok(p.proof)
    }

    /// Checks that the stored chain still holds the head `cp` recorded, and that `cp` is
    /// signed by the key it names; `None` when it holds.
    pub async fn check_checkpoint(
        &self,
        cp: &gov_audit::Checkpoint,
    ) -> Result<Option<gov_audit::Finding>> {
        Ok(self.gov.inner.audit.check_checkpoint(cp).await?)
    }

    /// Whether a signer is registered and not revoked.
    pub async fn signer_registered(&self, signer_key_id: &str) -> Result<bool> {
        Ok(self
            .gov
            .inner
            .audit
            .signer_registered(signer_key_id)
            .await?)
    }

    /// The fingerprint of the key that seals new rows.
    pub fn key_id(&self) -> &str {
        self.gov.inner.audit.keys().current().key_id()
    }
}
