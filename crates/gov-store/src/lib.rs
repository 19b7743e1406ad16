//! Storage for governance. Only this crate knows SQL.
//!
//! [`Store`] is the one handle the layers above use; it dispatches to a backend (Postgres today;
//! an embedded SQLite backend can be added as another variant without changing `gov-audit` or
//! `gov-sdk`, which only call the typed methods here). Errors never carry SQL, URLs or secrets.

mod error;
mod postgres;

use std::time::Duration;

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventCount, EventFilter};
use time::OffsetDateTime;

pub use error::{Result, StoreError};
pub use postgres::{Decision, Listener, Notice, OperatorRecord, PgStore, Privileges, Reserve};

use gov_core::{
    AgentPresence, BudgetPolicy, BudgetRefusal, BudgetStatus, GateRecord, ModelUsage, OperatorRole,
    ScopePolicy, TokenUsage,
};

/// Notification channel announcing a changed scope policy (payload: the agent id).
pub const POLICY_CHANNEL: &str = "gov_policy";
/// Notification channel announcing a gate request or decision (payload: `<id>:<status>`).
pub const GATE_CHANNEL: &str = "gov_gate";
/// Notification channel announcing a halt or resume (payload: the agent id).
pub const HALT_CHANNEL: &str = "gov_halt";

/// Notification channel on which every committed append batch is announced
/// (payload: `<chain_id>:<last seq>`).
pub const AUDIT_CHANNEL: &str = "gov_audit";

/// A fingerprint of the embedded migrations (versions and checksums): equal fingerprints mean
/// equal schemas. Test tooling names its template databases with it.
pub fn schema_fingerprint() -> String {
    postgres::MIGRATOR
        .iter()
        .map(|m| {
            format!(
                "{}:{}",
                m.version,
                m.checksum
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Maximum pooled connections (default 10).
    pub max_connections: u32,
    /// How long to wait for a connection before reporting storage unavailable (default 5 s).
    pub acquire_timeout: Duration,
    /// Reported to the server as `application_name`.
    pub application_name: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            application_name: "governance".to_owned(),
        }
    }
}

/// Seals a row whose other fields are set: fills `row_hmac` and, when a signer is configured,
/// `signer_key_id`, `signature` and `signature_status`. Pure and synchronous; supplied by
/// `gov-audit`, called by the store inside the appending transaction.
pub type Sealer<'a> = &'a (dyn Fn(&mut AuditRecord) + Send + Sync);

/// A registered signer's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerKeyRow {
    /// `ed1_…` fingerprint.
    pub signer_key_id: String,
    /// Ed25519 public key, 32 bytes.
    pub public_key: Vec<u8>,
    /// The agent or instance it signs for.
    pub label: String,
    /// When it was registered.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A console sign-in session, with its user's current role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The user.
    pub username: String,
    /// The user's role now.
    pub role: gov_core::OperatorRole,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// When it expires.
    pub expires_at: OffsetDateTime,
}

/// A signed chain head, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// The chain.
    pub chain_id: String,
    /// The head's seq.
    pub seq: i64,
    /// The head row's `row_hmac`.
    pub head_hmac: Vec<u8>,
    /// When it was signed.
    pub signed_at: OffsetDateTime,
    /// The signer.
    pub signer_key_id: String,
    /// Ed25519 signature, 64 bytes.
    pub signature: Vec<u8>,
}

/// A wrapped LLM client in the coverage registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmClientRow {
    /// The provider name the SDK governs it under (`openai`, `anthropic`, ...).
    pub provider: String,
    /// Which wrapper: `openai-http`, `anthropic-http` or `guard`.
    pub wrapper: String,
    /// The model family the client is bound to; empty when it is not bound to one.
    pub model_family: String,
    /// `hh1_…`, the salted digest of the hostname; empty when the client named no host.
    pub host_digest: String,
    /// When it was first registered (set by the database; ignored on insert).
    pub registered_at: OffsetDateTime,
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Migrations applied by this run (0 when already current).
    pub applied: usize,
    /// Migrations known to this build.
    pub known: usize,
}

/// The storage handle: cheap to clone, shared by every part of the SDK.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgStore),
}

impl Store {
    /// Connects to the database named by `url` (`postgres://` or `postgresql://`).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Self> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres(PgStore::connect(url, opts).await?)),
            "" => Err(StoreError::InvalidUrl(
                "it has no scheme; expected postgres://user:password@host:5432/database".into(),
            )),
            other => Err(StoreError::InvalidUrl(format!(
                "the scheme `{}` is not supported; expected postgres://user:password@host:5432/database",
                other.chars().take(16).collect::<String>()
            ))),
        }
    }

    /// Creates the database named in `url` when it does not exist yet (for first runs and
    /// demos; production databases are created by their owners). Returns whether it was created.
    pub async fn ensure_database(url: &str) -> Result<bool> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => postgres::ensure_database(url).await,
            _ => Err(StoreError::InvalidUrl(
                "expected postgres://user:password@host:5432/database".into(),
            )),
        }
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<MigrateReport> {
        match self {
            Self::Postgres(s) => s.migrate().await,
        }
    }

    /// Fails with [`StoreError::NotMigrated`] when the schema is missing or older than this build.
    pub async fn check_schema(&self) -> Result<()> {
        match self {
            Self::Postgres(s) => s.check_schema().await,
        }
    }

    /// Creates the least-privilege application role if missing and grants it what the SDK
    /// needs and nothing more. `password` (if any) is set on the role.
    pub async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()> {
        match self {
            Self::Postgres(s) => s.ensure_app_role(role, password).await,
        }
    }

    /// What the connected role may do to the audit tables.
    pub async fn privileges(&self) -> Result<Privileges> {
        match self {
            Self::Postgres(s) => s.privileges().await,
        }
    }

    /// Appends `events` (all of one chain, in order) in one transaction, holding the chain's
    /// head row lock; returns the seq given to each. Durable when it returns.
    pub async fn append_batch(
        &self,
        chain_id: &str,
        key_id: &str,
        events: &[AuditEvent],
        seal: Sealer<'_>,
    ) -> Result<Vec<i64>> {
        match self {
            Self::Postgres(s) => s.append_batch(chain_id, key_id, events, seal).await,
        }
    }

    /// Which of `ids` are already stored as audit events.
    pub async fn existing_event_ids(&self, ids: &[uuid::Uuid]) -> Result<Vec<uuid::Uuid>> {
        match self {
            Self::Postgres(s) => s.existing_event_ids(ids).await,
        }
    }

    /// The head row of one chain, if the chain exists.
    pub async fn chain_head(&self, chain_id: &str) -> Result<Option<ChainHead>> {
        match self {
            Self::Postgres(s) => s.chain_head(chain_id).await,
        }
    }

    /// The head rows of every chain, ordered by chain id.
    pub async fn chain_heads(&self) -> Result<Vec<ChainHead>> {
        match self {
            Self::Postgres(s) => s.chain_heads().await,
        }
    }

    /// The ids of every chain that has rows, found from the rows themselves (so a chain whose
    /// head row was removed is still seen).
    pub async fn chain_ids_with_rows(&self) -> Result<Vec<String>> {
        match self {
            Self::Postgres(s) => s.chain_ids_with_rows().await,
        }
    }

    /// Up to `limit` rows of a chain with seq greater than `after_seq`, in seq order.
    pub async fn read_chain_page(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        match self {
            Self::Postgres(s) => s.read_chain_page(chain_id, after_seq, limit).await,
        }
    }

    /// The rows of a chain with `after_seq < seq <= upto_seq`, in seq order. A bounded window
    /// lets the planner use the (chain_id, seq) index even before the table has statistics.
    pub async fn read_chain_window(
        &self,
        chain_id: &str,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<AuditRecord>> {
        match self {
            Self::Postgres(s) => s.read_chain_window(chain_id, after_seq, upto_seq).await,
        }
    }

    /// Rows matching `filter`, in seq order, paged by seq.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>> {
        match self {
            Self::Postgres(s) => s.events(filter).await,
        }
    }

    /// Event counts per (chain, agent, kind) and per (chain, agent) with `occurred_at` in
    /// `[since, until)`, over one chain or every chain; ordered by chain, agent, kind (totals
    /// first).
    pub async fn event_counts(
        &self,
        chain_id: Option<&str>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<EventCount>> {
        match self {
            Self::Postgres(s) => s.event_counts(chain_id, since, until).await,
        }
    }

    /// Registers a signer's public key (kept as it is when already registered). Returns false
    /// when the id is registered with another key.
    pub async fn register_signer(&self, id: &str, public_key: &[u8], label: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.register_signer(id, public_key, label).await,
        }
    }

    /// Every registered signer.
    pub async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>> {
        match self {
            Self::Postgres(s) => s.signer_keys().await,
        }
    }

    /// Revokes a signer (as an operator); false when unknown or already revoked.
    pub async fn revoke_signer(&self, id: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.revoke_signer(id).await,
        }
    }

    /// Stores a checkpoint (idempotent).
    pub async fn put_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        match self {
            Self::Postgres(s) => s.put_checkpoint(c).await,
        }
    }

    /// A chain's stored checkpoints, by seq.
    pub async fn checkpoints(&self, chain_id: &str) -> Result<Vec<CheckpointRow>> {
        match self {
            Self::Postgres(s) => s.checkpoints(chain_id).await,
        }
    }

    /// Today's (UTC) spend of every agent, by model.
    pub async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>> {
        match self {
            Self::Postgres(s) => s.usage_today_all().await,
        }
    }

    /// Stores a console session (and sweeps expired ones).
    pub async fn insert_session(
        &self,
        token_hash: &[u8],
        username: &str,
        csrf_token: &str,
        expires_at: OffsetDateTime,
    ) -> Result<()> {
        match self {
            Self::Postgres(s) => {
                s.insert_session(token_hash, username, csrf_token, expires_at)
                    .await
            }
        }
    }

    /// The live session with this token hash, if unexpired and its user enabled.
    pub async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>> {
        match self {
            Self::Postgres(s) => s.session(token_hash).await,
        }
    }

    /// Ends a session.
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        match self {
            Self::Postgres(s) => s.delete_session(token_hash).await,
        }
    }

    /// Opens a dedicated listening connection on `channels`.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener> {
        match self {
            Self::Postgres(s) => s.listen(channels).await,
        }
    }

    /// Creates or replaces an agent's scope policy (announced on [`POLICY_CHANNEL`]).
    pub async fn put_scope_policy(&self, policy: &ScopePolicy) -> Result<()> {
        match self {
            Self::Postgres(s) => s.put_scope_policy(policy).await,
        }
    }

    /// Removes an agent's scope policy; returns whether there was one.
    pub async fn delete_scope_policy(&self, agent: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.delete_scope_policy(agent).await,
        }
    }

    /// One agent's scope policy.
    pub async fn scope_policy(&self, agent: &str) -> Result<Option<ScopePolicy>> {
        match self {
            Self::Postgres(s) => s.scope_policy(agent).await,
        }
    }

    /// Every scope policy.
    pub async fn scope_policies(&self) -> Result<Vec<ScopePolicy>> {
        match self {
            Self::Postgres(s) => s.scope_policies().await,
        }
    }

    /// Records a heartbeat (never clears a halt).
    pub async fn heartbeat(&self, agent: &str) -> Result<()> {
        match self {
            Self::Postgres(s) => s.heartbeat(agent).await,
        }
    }

    /// Halts (`true`) or resumes (`false`) an agent; returns whether the state changed.
    /// Announced on [`HALT_CHANNEL`].
    pub async fn set_halted(
        &self,
        agent: &str,
        halted: bool,
        operator: &str,
        reason: &str,
    ) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.set_halted(agent, halted, operator, reason).await,
        }
    }

    /// Whether an agent is halted (an agent never seen is not).
    pub async fn is_halted(&self, agent: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.is_halted(agent).await,
        }
    }

    /// One agent's presence row.
    pub async fn presence(&self, agent: &str) -> Result<Option<AgentPresence>> {
        match self {
            Self::Postgres(s) => s.presence(agent).await,
        }
    }

    /// Every agent's presence row.
    pub async fn presences(&self) -> Result<Vec<AgentPresence>> {
        match self {
            Self::Postgres(s) => s.presences().await,
        }
    }

    /// Creates or replaces an agent's budget policy.
    pub async fn put_budget_policy(&self, policy: &BudgetPolicy) -> Result<()> {
        match self {
            Self::Postgres(s) => s.put_budget_policy(policy).await,
        }
    }

    /// Removes an agent's budget policy; returns whether there was one.
    pub async fn delete_budget_policy(&self, agent: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.delete_budget_policy(agent).await,
        }
    }

    /// Atomically reserves projected spend against the session and day caps (one round trip).
    /// The inner `Err` is a refusal naming the cap.
    pub async fn reserve(&self, r: &Reserve<'_>) -> Result<std::result::Result<(), BudgetRefusal>> {
        match self {
            Self::Postgres(s) => s.reserve(r).await,
        }
    }

    /// [`Self::reserve`], and when the reservation holds, `event` appended to its chain in the
    /// same transaction (sealed by `seal` under `key_id`): both commit or neither does. Returns
    /// the event's seq, or the refusal (then nothing is appended).
    pub async fn reserve_logged(
        &self,
        r: &Reserve<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<std::result::Result<i64, BudgetRefusal>> {
        match self {
            Self::Postgres(s) => s.reserve_logged(r, event, key_id, seal).await,
        }
    }

    /// Settles a reservation with the actual spend, or releases it (`release`); once only.
    /// Returns the outcome: `settled`, `released`, `expired_then_settled`, `already_closed`,
    /// `unknown`.
    pub async fn settle(
        &self,
        id: uuid::Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
    ) -> Result<String> {
        match self {
            Self::Postgres(s) => s.settle(id, micros, usage, release).await,
        }
    }

    /// [`Self::settle`] with `event` appended to its chain in the same transaction, whatever
    /// the outcome: both commit or neither does. Returns the outcome and the event's seq.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle_logged(
        &self,
        id: uuid::Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(String, i64)> {
        match self {
            Self::Postgres(s) => {
                s.settle_logged(id, micros, usage, release, event, key_id, seal)
                    .await
            }
        }
    }

    /// Records spend that had no reservation.
    pub async fn track(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<()> {
        match self {
            Self::Postgres(s) => s.track(agent, session, model, micros, usage).await,
        }
    }

    /// Policy, session counter and today's counter in one round trip.
    pub async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        match self {
            Self::Postgres(s) => s.budget_status(agent, session).await,
        }
    }

    /// Today's spend by model.
    pub async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>> {
        match self {
            Self::Postgres(s) => s.usage_today(agent).await,
        }
    }

    /// Adds an operator (console or CLI user) with an argon2id password hash.
    pub async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password_hash: &str,
    ) -> Result<()> {
        match self {
            Self::Postgres(s) => s.add_operator(username, role, password_hash).await,
        }
    }

    /// Every operator account: name, role, disabled, created.
    pub async fn operators(
        &self,
    ) -> Result<Vec<(String, OperatorRole, bool, time::OffsetDateTime)>> {
        match self {
            Self::Postgres(s) => s.operators().await,
        }
    }

    /// Disables or enables an account and/or replaces its password hash; returns whether it exists.
    pub async fn update_operator(
        &self,
        username: &str,
        disabled: Option<bool>,
        password_hash: Option<&str>,
    ) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.update_operator(username, disabled, password_hash).await,
        }
    }

    /// One operator account.
    pub async fn operator(&self, username: &str) -> Result<Option<OperatorRecord>> {
        match self {
            Self::Postgres(s) => s.operator(username).await,
        }
    }

    /// Stores a new pending gate request (announced on [`GATE_CHANNEL`]).
    pub async fn insert_gate_request(&self, g: &GateRecord) -> Result<()> {
        match self {
            Self::Postgres(s) => s.insert_gate_request(g).await,
        }
    }

    /// One gate request.
    pub async fn gate_request(&self, id: uuid::Uuid) -> Result<Option<GateRecord>> {
        match self {
            Self::Postgres(s) => s.gate_request(id).await,
        }
    }

    /// Pending, unexpired gate requests, oldest first.
    pub async fn pending_gates(&self) -> Result<Vec<GateRecord>> {
        match self {
            Self::Postgres(s) => s.pending_gates().await,
        }
    }

    /// Records a decision and its audit event in one transaction. Returns `ok` or why the
    /// database refused (see the gates migration).
    pub async fn decide_gate(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        match self {
            Self::Postgres(s) => s.decide_gate(d, event, key_id, seal).await,
        }
    }

    /// Spends an approval once. Returns `ok` or why not.
    pub async fn consume_gate(
        &self,
        id: uuid::Uuid,
        token_hash: &[u8],
        action_hash: &[u8],
    ) -> Result<String> {
        match self {
            Self::Postgres(s) => s.consume_gate(id, token_hash, action_hash).await,
        }
    }

    /// Records a wrapped LLM client in the coverage registry, unless the same (provider,
    /// wrapper, model family, host digest) is already there. Returns whether it was new.
    pub async fn register_llm_client(&self, c: &LlmClientRow) -> Result<bool> {
        match self {
            Self::Postgres(s) => s.register_llm_client(c).await,
        }
    }

    /// The coverage registry, oldest registration first.
    pub async fn llm_clients(&self) -> Result<Vec<LlmClientRow>> {
        match self {
            Self::Postgres(s) => s.llm_clients().await,
        }
    }

    /// One bare round trip (`SELECT 1`): the reference latency for benchmarks and health.
    pub async fn ping(&self) -> Result<()> {
        match self {
            Self::Postgres(s) => s.ping().await,
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(s) => s.close().await,
        }
    }
}
