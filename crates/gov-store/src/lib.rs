//! Storage for governance. Only this crate knows SQL.
//!
//! [`Store`] is the one handle the layers above use; it dispatches to a backend: PostgreSQL
//! (production) or an embedded SQLite file (first runs, local development, a service's own
//! tests). Both implement the traits of [`backend`], so they offer the same typed methods;
//! `gov-audit` and `gov-sdk` only call those. The URL picks the backend. Errors never carry
//! SQL, URLs or secrets.
//!
//! # Invariants
//!
//! The rules this crate keeps (ARCHITECTURE.md lists them in one line each):
//!
//! - On SQLite every write transaction starts with `BEGIN IMMEDIATE` (the database's write lock
//!   before the first read), which gives what Postgres gets from row locks and functions: a chain
//!   head and the rows appended after it, or a budget check and its reservation, never interleave
//!   with another writer in any process. Times are integer microseconds since the epoch, so
//!   values round-trip exactly between backends.
//! - On SQLite, notifications are rows written in the same transaction as the change (by the
//!   store or by the schema's triggers), read in id order (ids follow commit order: one writer at
//!   a time); a listener is woken at once by writes in its own process, polls every 200 ms for
//!   other processes' writes, and gets `Notice::Lost` when rows it had not read were pruned
//!   (after 10 minutes).
//! - Appends to a chain run in one transaction that locks the chain's `chain_heads` row (`FOR
//!   UPDATE`) before it writes a row, so appends from every process are serialised per chain;
//!   UNIQUE(chain_id, prev_hmac) makes a fork fail at write time. Imported rows must continue the
//!   chain's head by `gov_core::ChainLinks`, the same check the export and the import's first
//!   pass run on the file.
//! - A budget reservation or settlement is one call of a SQL function on Postgres
//!   (`governance_reserve`, `governance_settle`), so it is atomic and costs one round trip; on
//!   SQLite it is `gov_core::rules` applied inside one `BEGIN IMMEDIATE` transaction.
//! - The store's `Clock` (`StoreOptions::clock`) decides every expiry, read once per operation
//!   and passed to the rule (on Postgres as `p_now`, never the functions' `now()`);
//!   `migrations/postgres/schema.sql` (`cargo xtask schema`) holds every Postgres function's
//!   current body and a test keeps it current.
//! - A gate decision runs `governance_decide`, writes its oversight record and appends its audit
//!   event all or nothing, so a decision is never recorded without its event; on Postgres in one
//!   statement (`governance_decide_logged`, operator connections only), optimistic as below.
//! - Every function in the Postgres schema sets `search_path = pg_catalog, <schema>, pg_temp`,
//!   PUBLIC has no TEMPORARY on the database nor CREATE on the schema, and the application role's
//!   privileges equal the `governance_app_grants` allowlist;
//!   `privileges::the_catalog_holds_the_boundary` compares the catalog with it.
//! - `reserve_logged` and `settle_logged` commit a budget change and its one event all or
//!   nothing, and a refused reservation appends nothing; on Postgres each is one statement in
//!   autocommit (`governance_reserve_logged`, `governance_settle_logged`, which call
//!   `governance_reserve` and `governance_settle`). The chain writer's batches are one statement
//!   too (`governance_append_batch_expected`).
//! - Those statements are optimistic: `PgStore` seals the row after the head it last saw of the
//!   chain (a per-chain cache, `postgres/heads.rs`, that every append it commits updates), and
//!   the function appends it only if that is still the head under the head row's lock; a stale
//!   head changes nothing and comes back to reseal against, and after three stale answers the
//!   store falls back to a transaction that locks the head itself.
//! - The cache is a hint: a wrong entry costs a round trip, never a wrong row; one-statement
//!   appends of one process take turns per chain (waiting at most 20 ms), so they do not make
//!   each other stale.
//! - Locks are taken in one order on every path: a reservation or gate request row, then budget
//!   counters, then the chain head, which is always the last row a transaction locks (appends,
//!   gate decisions, imports, reservations and settlements alike; an import holds one chain's
//!   head, and nothing else, from its first row to its commit); nothing waits for a counter or a
//!   reservation while holding a head, so heads take part in no deadlock.
//! - Hot reads (a budget check, a gate request's state) run on one connection kept warm outside
//!   the pool (`PgStore::warm`), taken by one call at a time (others use the pool), closed on
//!   any error, never reused across a pool retirement, and a read that fails on it is retried
//!   once on a fresh connection.
//! - A SQLite file is created only when `StoreOptions::create_if_missing` asks for it
//!   (`governance migrate`, `governance demo`, `migrate_on_connect(true)`, the CLI's local
//!   database), by the store itself, exclusively, with mode 600 in directories it creates with
//!   mode 700; SQLite is never let create one, so every other path refuses a missing file and
//!   creates nothing.
//! - Nothing migrates implicitly; `Store::migrate` runs only when asked (`governance migrate`,
//!   `governance demo`, the test template, an SDK handle built with `migrate_on_connect(true)`)
//!   or on the CLI's own local SQLite database, which no one else owns.

pub mod backend;
mod error;
mod import;
mod notify;
mod postgres;
mod retention_rules;
mod sqlite;
mod types;

use std::time::Duration;

use gov_core::{AuditEvent, AuditRecord, ChainHead, EventCount, EventFilter};
use time::OffsetDateTime;

pub use error::{Result, StoreError};
pub use import::ChainImport;
pub use notify::{Listener, Notice};
pub use postgres::PgStore;
pub use sqlite::{NOTIFICATION_RETENTION, POLL_INTERVAL as SQLITE_POLL_INTERVAL, SqliteStore};
pub use types::{
    Clock, Decision, GateTransition, HaltSwitch, NewNotification, NewSession, NotificationOutcome,
    NotificationRecord, OperatorChange, OperatorRecord, OversightRecord, Privileges, Reserve,
    VoteRecord,
};

use backend::{
    Backend, BudgetStore, ChainStore, EnforceStore, GateStore, PolicyStore, RegistryStore,
    SessionStore, SignerStore, SubjectStore, TreeStore,
};
pub use backend::{ErasureEvent, PolicyEvent};
use backend::{GatewayKeyStore, RetentionStore, WorkflowStore};

/// Calls the same typed method on whichever backend the store holds, within the store's
/// deadline ([`StoreOptions::call_timeout`]).
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        $self
            .bounded(async {
                match $self {
                    Store::Postgres($s) => $call,
                    Store::Sqlite($s) => $call,
                }
            })
            .await
    };
}

/// [`dispatch!`] without the deadline: schema changes, imports and closing, which take as
/// long as they take.
macro_rules! dispatch_unbounded {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

use gov_core::{
    AgentPresence, BudgetPolicy, BudgetRefusal, BudgetStatus, GateRecord, ModelUsage, OperatorRole,
    ScopePolicy, TokenUsage,
};

/// Notification channel announcing a changed scope policy (payload: the agent id).
pub const POLICY_CHANNEL: &str = "gov_policy";
/// Notification channel announcing a new version of a Cedar policy set (payload: the slot).
pub const POLICY_SET_CHANNEL: &str = "gov_policy_set";
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

/// Judges the migrations a database has applied (`applied`, in version order, as read from
/// `_sqlx_migrations`) against those `migrator` embeds: either backend's `check_schema`.
pub(crate) fn judge_schema(
    applied: Result<Vec<i64>>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<()> {
    let applied = match applied {
        Ok(v) => v,
        Err(StoreError::NotMigrated(_)) => {
            return Err(StoreError::NotMigrated(
                "it has no governance schema".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let latest_known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let latest_applied = applied.last().copied().unwrap_or(0);
    if latest_applied < latest_known {
        return Err(StoreError::NotMigrated(format!(
            "schema version {latest_applied}, this build needs {latest_known}"
        )));
    }
    Ok(())
}

/// What a migration run did, from the versions applied before and after it.
pub(crate) fn migrate_report(
    before: &[i64],
    after: &[i64],
    migrator: &sqlx::migrate::Migrator,
) -> MigrateReport {
    MigrateReport {
        applied: after.len().saturating_sub(before.len()),
        known: migrator.iter().count(),
    }
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
    /// SQLite: create the file (mode 600, and its missing directories, mode 700) when it does
    /// not exist (default false: a mistyped path is an error, not a new empty database).
    /// Postgres databases are never created by connecting.
    pub create_if_missing: bool,
    /// The clock the enforcement rules run on (default: the system clock; tests set a manual
    /// one to control expiry).
    pub clock: Clock,
    /// The longest one storage call may take before storage counts as out of reach
    /// (observation spools, enforcement refuses): a server that stops answering without
    /// closing the connection never holds a caller longer (default 10 s; `None`: no bound).
    /// Schema changes and imports are not bounded.
    pub call_timeout: Option<Duration>,
    /// Postgres: where notifications (halts, scope and policy changes, gate decisions, the live
    /// feed) are listened for, when the pool's URL cannot carry `LISTEN` (a transaction-mode
    /// pooler, a proxy that pins or drops it): a direct URL to the same database (multi-host
    /// and `target_session_attrs` work as for the pool). A URL that reaches another database is
    /// refused when the listener starts. Default: the pool's URL.
    pub listen_url: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            application_name: "governance".to_owned(),
            create_if_missing: false,
            clock: Clock::system(),
            call_timeout: Some(Duration::from_secs(10)),
            listen_url: None,
        }
    }
}

/// Seals a row whose other fields are set: fills `row_hmac` and, when a signer is configured,
/// `signer_key_id`, `signature` and `signature_status`. Pure and synchronous; supplied by
/// `gov-audit`, called by the store inside the appending transaction.
pub type Sealer<'a> = &'a (dyn Fn(&mut AuditRecord) + Send + Sync);

/// A data subject's key, wrapped under the key-encryption key (`subject_keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectKeyRow {
    /// The data subject (an opaque pseudonymous id).
    pub subject: String,
    /// The key id.
    pub kid: String,
    /// 24-byte nonce, then the key encrypted under the key-encryption key (72 bytes).
    pub wrapped: Vec<u8>,
}

/// A new agent key of the gateway, as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayKeyRow {
    /// The key's public id (32 lowercase hex digits).
    pub id: String,
    /// The agent it authenticates.
    pub agent: String,
    /// SHA-256 of the whole key.
    pub key_hash: Vec<u8>,
    /// A note for operators.
    pub label: String,
}

/// A gateway key as listed: no hash, no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayKeyInfo {
    /// The key's public id.
    pub id: String,
    /// The agent it authenticates.
    pub agent: String,
    /// A note for operators.
    pub label: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A version of a Cedar policy set as stored (`policy_sets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetRow {
    /// `enforced` or `shadow`.
    pub slot: String,
    /// 1, 2, … per slot.
    pub version: i64,
    /// The Cedar policies; `None` turns the slot off.
    pub policies: Option<String>,
    /// The set's settings (JSON): the agents' attributes and the declared tool arguments.
    pub settings: String,
    /// SHA-256 (hex) of the set.
    pub hash: String,
    /// Who applied it.
    pub applied_by: String,
    /// When.
    pub applied_at: time::OffsetDateTime,
}

/// A policy set version to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicySet {
    /// `enforced` or `shadow`.
    pub slot: String,
    /// The Cedar policies; `None` turns the slot off.
    pub policies: Option<String>,
    /// The set's settings (JSON): the agents' attributes and the declared tool arguments.
    pub settings: String,
    /// SHA-256 (hex) of the set.
    pub hash: String,
    /// Who applies it.
    pub applied_by: String,
}

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

/// How many events of one kind one agent wrote about one tool or model (the payload's `tool`,
/// else its `model`, else its `api`) over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCount {
    /// The agent.
    pub agent_id: String,
    /// The event kind.
    pub kind: String,
    /// The tool, model or API the payload names.
    pub target: String,
    /// Events counted.
    pub events: u64,
}

/// A completed verification of every chain, as the console records it (`chain_verifications`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationRow {
    /// When it started: its result holds for the rows as of then.
    pub started_at: OffsetDateTime,
    /// The worst verdict: `clean`, `unverifiable`, `tampered`, `empty` or `unknown`.
    pub status: String,
    /// The console's summary of it, JSON (at most 1 MiB).
    pub summary: String,
}

/// A full tile of a chain's Merkle tree, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeTile {
    /// The level: the tile holds hashes of perfect subtrees of height `8 * level`.
    pub level: u8,
    /// Its index within the level: it holds the subtrees `256 * idx` to `256 * idx + 255`.
    pub idx: u64,
    /// The 256 hashes, 32 bytes each, in order (empty when read without them).
    pub hashes: Vec<u8>,
    /// The hash of the subtree of height `8 * (level + 1)` the 256 hashes make.
    pub root: Vec<u8>,
}

/// A witness's cosignature of a chain's checkpoint (c2sp.org/tlog-cosignature, Ed25519
/// `cosignature/v1`), stored by the log's operator tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignatureRow {
    /// The chain.
    pub chain_id: String,
    /// The checkpoint's origin line.
    pub origin: String,
    /// The checkpoint's tree size.
    pub tree_size: i64,
    /// The checkpoint's root hash (32 bytes).
    pub root_hash: Vec<u8>,
    /// The witness's key name.
    pub witness_name: String,
    /// The witness's Ed25519 public key (32 bytes).
    pub witness_key: Vec<u8>,
    /// The cosignature's timestamp (POSIX seconds).
    pub cosigned_at: i64,
    /// The Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

/// A recorded cut of a chain's oldest rows (`chain_retention`): rows `1..=through_seq` were
/// archived and removed; the first remaining row links to `row_hmac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCut {
    /// The chain.
    pub chain_id: String,
    /// The last removed seq.
    pub through_seq: i64,
    /// That row's `row_hmac`.
    pub row_hmac: Vec<u8>,
    /// The Merkle tree's compact range at `through_seq` leaves: 32 bytes per set bit of the
    /// size, largest subtree first.
    pub tree_frontier: Vec<u8>,
    /// Rows this cut removed (set by the store when it records the cut).
    pub rows_removed: i64,
    /// The seq of the sealed `chain.archived` event written with the cut (set by the store).
    pub record_seq: i64,
    /// SHA-256 of the archive file, lowercase hex.
    pub archive_sha256: String,
    /// Who cut.
    pub operator: String,
    /// Why.
    pub reason: String,
    /// When (set by the store when it records the cut).
    pub cut_at: OffsetDateTime,
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
    /// An embedded SQLite database (a file, or in memory).
    Sqlite(SqliteStore),
}

/// The backend a URL names, judged by its scheme alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `sqlite://path`, `sqlite:path` or `sqlite::memory:`.
    Sqlite,
}

impl BackendKind {
    /// The backend `url` names, or why it names none.
    pub fn of(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite);
        }
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "" => Err(StoreError::InvalidUrl(format!(
                "it has no scheme; expected {URL_FORMS}"
            ))),
            other => Err(StoreError::InvalidUrl(format!(
                "the scheme `{}` is not supported; expected {URL_FORMS}",
                other.chars().take(16).collect::<String>()
            ))),
        }
    }

    /// `postgres` or `sqlite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// The URL forms accepted, for error messages.
pub const URL_FORMS: &str = "postgres://user:password@host:5432/database, sqlite:///path/to/governance.db or sqlite::memory:";

/// Checks that `rows` continue a chain whose head is `head` (seq, head_hmac): consecutive seqs,
/// each row naming its predecessor's seal. Imports append nothing else.
pub(crate) fn check_continues(
    chain_id: &str,
    head: &(i64, Vec<u8>),
    rows: &[AuditRecord],
) -> Result<()> {
    let mut links = gov_core::ChainLinks::at(head.0, &head.1);
    for r in rows {
        if r.chain_id != chain_id {
            return Err(StoreError::InvalidArgument(format!(
                "an import into chain {chain_id} holds a row of chain {}",
                r.chain_id
            )));
        }
        if links.push(r).is_err() {
            return Err(StoreError::Conflict(format!(
                "row {} of chain {chain_id} does not continue the chain here (its head is at seq {}); import into an empty chain or continue from the head",
                r.seq, head.0
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Connects to the database named by `url`: `postgres://…` or `postgresql://…`,
    /// `sqlite://path` (created when missing only with [`StoreOptions::create_if_missing`]),
    /// `sqlite::memory:`.
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Self> {
        match BackendKind::of(url)? {
            BackendKind::Postgres => Ok(Self::Postgres(PgStore::connect(url, opts).await?)),
            BackendKind::Sqlite => Ok(Self::Sqlite(SqliteStore::connect(url, opts).await?)),
        }
    }

    /// Runs one storage call within the deadline; past it, storage counts as out of reach
    /// (observation spools, enforcement refuses).
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let deadline = match self {
            Self::Postgres(s) => s.deadline,
            Self::Sqlite(s) => s.deadline,
        };
        let Some(d) = deadline else {
            return call.await;
        };
        let generation = match self {
            Self::Postgres(s) => Some(s.generation()),
            Self::Sqlite(_) => None,
        };
        match tokio::time::timeout(d, call).await {
            Ok(r) => r,
            Err(_) => {
                if let (Self::Postgres(s), Some(g)) = (self, generation) {
                    s.retire(g);
                }
                Err(StoreError::Unavailable(format!(
                    "storage did not answer within {} ms (the store's call timeout)",
                    d.as_millis()
                )))
            }
        }
    }

    /// Which backend this store uses.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Postgres(_) => BackendKind::Postgres,
            Self::Sqlite(_) => BackendKind::Sqlite,
        }
    }

    /// Creates the database named in `url` when it does not exist yet (for first runs and
    /// demos; production databases are created by their owners). Returns whether it was created.
    pub async fn ensure_database(url: &str) -> Result<bool> {
        match BackendKind::of(url)? {
            BackendKind::Postgres => postgres::ensure_database(url).await,
            BackendKind::Sqlite => sqlite::ensure_database(url).await,
        }
    }

    /// Applies the embedded migrations (idempotent).
    pub async fn migrate(&self) -> Result<MigrateReport> {
        dispatch_unbounded!(self, s => s.migrate().await)
    }

    /// Fails with [`StoreError::NotMigrated`] when the schema is missing or older than this build.
    pub async fn check_schema(&self) -> Result<()> {
        dispatch!(self, s => s.check_schema().await)
    }

    /// Postgres with a listen URL ([`StoreOptions::listen_url`]): checks that it reaches a server
    /// holding this same database (so a mistyped one fails here rather than leaving the
    /// listener deaf). Nothing to check otherwise.
    pub async fn check_listen_url(&self) -> Result<()> {
        match self {
            Self::Postgres(p) => p.listen_server().await.map(|_| ()),
            Self::Sqlite(_) => Ok(()),
        }
    }

    /// Creates the least-privilege application role if missing and grants it what the SDK
    /// needs and nothing more. `password` (if any) is set on the role.
    pub async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()> {
        dispatch_unbounded!(self, s => s.ensure_app_role(role, password).await)
    }

    /// What the connected role may do to the audit tables.
    pub async fn privileges(&self) -> Result<Privileges> {
        dispatch!(self, s => s.privileges().await)
    }

    /// Stores a data subject's wrapped key; `false` when refused because the subject was
    /// erased.
    pub async fn put_subject_key(&self, row: &SubjectKeyRow) -> Result<bool> {
        dispatch!(self, s => s.put_subject_key(row).await)
    }

    /// The stored keys of these subjects.
    pub async fn subject_keys(&self, subjects: &[String]) -> Result<Vec<SubjectKeyRow>> {
        dispatch!(self, s => s.subject_keys(subjects).await)
    }

    /// Whether the subject was erased.
    pub async fn subject_erased(&self, subject: &str) -> Result<bool> {
        dispatch!(self, s => s.subject_erased(subject).await)
    }

    /// The newest version of each Cedar policy set slot that has one.
    pub async fn policy_sets(&self) -> Result<Vec<PolicySetRow>> {
        dispatch!(self, s => s.policy_sets().await)
    }

    /// Appends a policy set version and its event in one transaction; the version.
    pub async fn apply_policy_set(
        &self,
        set: &NewPolicySet,
        event: PolicyEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<i64> {
        dispatch!(self, s => s.apply_policy_set(set, event, key_id, seal).await)
    }

    /// Whether the database holds any subject key or erased subject.
    pub async fn holds_subject_state(&self) -> Result<bool> {
        dispatch!(self, s => s.holds_subject_state().await)
    }

    /// Stores a new gateway key (its hash only).
    pub async fn add_gateway_key(&self, row: &GatewayKeyRow) -> Result<()> {
        dispatch!(self, s => s.add_gateway_key(row).await)
    }

    /// The gateway keys (of `agent`, or of all agents), oldest first, without hashes.
    pub async fn gateway_keys(&self, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>> {
        dispatch!(self, s => s.gateway_keys(agent).await)
    }

    /// Revokes a gateway key; `false` when there is no such key or it was already revoked.
    pub async fn revoke_gateway_key(&self, id: &str) -> Result<bool> {
        dispatch!(self, s => s.revoke_gateway_key(id).await)
    }

    /// The agent and stored hash of the unrevoked gateway key with this id.
    pub async fn gateway_key(&self, id: &str) -> Result<Option<(String, Vec<u8>)>> {
        dispatch!(self, s => s.gateway_key(id).await)
    }

    /// Erases a subject: tombstone, every key deleted and the erasure's event appended, in one
    /// transaction; the number of keys deleted.
    pub async fn erase_subject(
        &self,
        subject: &str,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<u64> {
        dispatch!(self, s => s.erase_subject(subject, event, key_id, seal).await)
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
        dispatch!(self, s => s.append_batch(chain_id, key_id, events, seal).await)
    }

    /// Appends rows sealed elsewhere (an import from another database), verbatim, in one
    /// transaction. They must continue the chain's head here: consecutive seqs, each naming its
    /// predecessor's seal; otherwise nothing is written ([`StoreError::Conflict`]).
    pub async fn import_rows(&self, chain_id: &str, rows: &[AuditRecord]) -> Result<()> {
        dispatch_unbounded!(self, s => s.import_rows(chain_id, rows).await)
    }

    /// Which of `ids` are already stored as audit events.
    pub async fn existing_event_ids(&self, ids: &[uuid::Uuid]) -> Result<Vec<uuid::Uuid>> {
        dispatch!(self, s => s.existing_event_ids(ids).await)
    }

    /// The head row of one chain, if the chain exists.
    pub async fn chain_head(&self, chain_id: &str) -> Result<Option<ChainHead>> {
        dispatch!(self, s => s.chain_head(chain_id).await)
    }

    /// The head rows of every chain, ordered by chain id.
    pub async fn chain_heads(&self) -> Result<Vec<ChainHead>> {
        dispatch!(self, s => s.chain_heads().await)
    }

    /// The ids of every chain that has rows, found from the rows themselves (so a chain whose
    /// head row was removed is still seen).
    pub async fn chain_ids_with_rows(&self) -> Result<Vec<String>> {
        dispatch!(self, s => s.chain_ids_with_rows().await)
    }

    /// Up to `limit` rows of a chain with seq greater than `after_seq`, in seq order.
    pub async fn read_chain_page(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        dispatch!(self, s => s.read_chain_page(chain_id, after_seq, limit).await)
    }

    /// The rows of a chain with `after_seq < seq <= upto_seq`, in seq order. A bounded window
    /// lets the planner use the (chain_id, seq) index even before the table has statistics.
    pub async fn read_chain_window(
        &self,
        chain_id: &str,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<AuditRecord>> {
        dispatch!(self, s => s.read_chain_window(chain_id, after_seq, upto_seq).await)
    }

    /// Rows matching `filter`, in seq order, paged by seq.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>> {
        dispatch!(self, s => s.events(filter).await)
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
        dispatch!(self, s => s.event_counts(chain_id, since, until).await)
    }

    /// Registers a signer's public key (kept as it is when already registered). Returns false
    /// when the id is registered with another key.
    pub async fn register_signer(&self, id: &str, public_key: &[u8], label: &str) -> Result<bool> {
        dispatch!(self, s => s.register_signer(id, public_key, label).await)
    }

    /// Stores a signer's key with its recorded creation and revocation times (an import); kept
    /// as it is when already there. Returns false when the id is registered with another key.
    pub async fn import_signer(&self, row: &SignerKeyRow) -> Result<bool> {
        dispatch_unbounded!(self, s => s.import_signer(row).await)
    }

    /// Every registered signer.
    pub async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>> {
        dispatch!(self, s => s.signer_keys().await)
    }

    /// Revokes a signer (as an operator); false when unknown or already revoked.
    pub async fn revoke_signer(&self, id: &str) -> Result<bool> {
        dispatch!(self, s => s.revoke_signer(id).await)
    }

    /// Stores a checkpoint (idempotent).
    pub async fn put_checkpoint(&self, c: &CheckpointRow) -> Result<()> {
        dispatch!(self, s => s.put_checkpoint(c).await)
    }

    /// Stores a witness cosignature (idempotent). On Postgres only the owner may.
    pub async fn put_cosignature(&self, c: &CosignatureRow) -> Result<()> {
        dispatch!(self, s => s.put_cosignature(c).await)
    }

    /// A chain's stored witness cosignatures, by tree size.
    pub async fn cosignatures(&self, chain_id: &str) -> Result<Vec<CosignatureRow>> {
        dispatch!(self, s => s.cosignatures(chain_id).await)
    }

    /// A chain's stored checkpoints, by seq.
    pub async fn checkpoints(&self, chain_id: &str) -> Result<Vec<CheckpointRow>> {
        dispatch!(self, s => s.checkpoints(chain_id).await)
    }

    /// A chain's recorded cuts, oldest first (the last one is where its rows start now).
    pub async fn retention_cuts(&self, chain_id: &str) -> Result<Vec<RetentionCut>> {
        dispatch!(self, s => s.retention_cuts(chain_id).await)
    }

    /// Records `cut` and removes the rows it covers, in one transaction under the chain's head
    /// lock. Refused (`InvalidArgument`) for an unknown chain, a
    /// cut beyond the head or not beyond the last cut, and (`Conflict`) when row
    /// `through_seq` is not the row `cut.row_hmac` names. Only the schema owner may do this.
    ///
    /// The `chain.archived` event `event(rows)` builds is sealed with `seal` under `key_id` and
    /// appended to the chain in the same transaction; returns (rows removed, its seq).
    pub async fn cut_chain(
        &self,
        cut: &RetentionCut,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(i64, i64)> {
        dispatch_unbounded!(self, s => s.cut_chain(cut, event, key_id, seal).await)
    }

    /// The indices of a chain's stored tiles at `level`, in order.
    pub async fn tree_tile_indices(&self, chain_id: &str, level: u8) -> Result<Vec<u64>> {
        dispatch!(self, s => s.tree_tile_indices(chain_id, level).await)
    }

    /// A chain's stored tiles at `level` with `from <= idx <= to`, in order; with their 256
    /// hashes only when `with_hashes` (else just their roots).
    pub async fn tree_tiles(
        &self,
        chain_id: &str,
        level: u8,
        from: u64,
        to: u64,
        with_hashes: bool,
    ) -> Result<Vec<TreeTile>> {
        dispatch!(self, s => s.tree_tiles(chain_id, level, from, to, with_hashes).await)
    }

    /// Stores full tiles of a chain's tree; a tile already stored is kept as it is.
    pub async fn put_tree_tiles(&self, chain_id: &str, tiles: &[TreeTile]) -> Result<()> {
        dispatch!(self, s => s.put_tree_tiles(chain_id, tiles).await)
    }

    /// Today's (UTC) spend of every agent, by model.
    pub async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>> {
        dispatch!(self, s => s.usage_today_all().await)
    }

    /// Spend by UTC day, agent and model for the days `from..=to` (the rows of
    /// [`Store::usage_today_all`], for a range of days).
    pub async fn usage_between(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::Date, String, ModelUsage)>> {
        dispatch!(self, s => s.usage_between(from, to).await)
    }

    /// Spend by UTC hour, agent and model for the hours of the days `from..=to`.
    pub async fn usage_by_hour(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::OffsetDateTime, String, ModelUsage)>> {
        dispatch!(self, s => s.usage_by_hour(from, to).await)
    }

    /// Every budget policy with today's counter (UTC), by agent.
    pub async fn day_budgets(&self) -> Result<Vec<(BudgetPolicy, gov_core::BudgetCounter)>> {
        dispatch!(self, s => s.day_budgets().await)
    }

    /// Stores a console session (and sweeps expired ones), only if the account is still as
    /// it was authenticated (enabled, same password hash and role); returns whether it did.
    pub async fn insert_session(&self, session: &NewSession<'_>) -> Result<bool> {
        dispatch!(self, s => s.insert_session(session).await)
    }

    /// The live session with this token hash, if unexpired and its user enabled.
    pub async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>> {
        dispatch!(self, s => s.session(token_hash).await)
    }

    /// Ends a session.
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<()> {
        dispatch!(self, s => s.delete_session(token_hash).await)
    }

    /// Events of `kinds` on `chain_id` with `occurred_at` in `[since, until)`, counted per
    /// agent, kind and the tool or model their payload names (rows naming neither are left out).
    pub async fn target_counts(
        &self,
        chain_id: &str,
        kinds: &[&str],
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<TargetCount>> {
        dispatch!(self, s => s.target_counts(chain_id, kinds, since, until).await)
    }

    /// Each user's last console sign-in, by user name.
    pub async fn last_sign_ins(&self) -> Result<Vec<(String, OffsetDateTime)>> {
        dispatch!(self, s => s.last_sign_ins().await)
    }

    /// Records a completed verification (keeping the newest 1,000).
    pub async fn put_verification(&self, row: &VerificationRow) -> Result<()> {
        dispatch!(self, s => s.put_verification(row).await)
    }

    /// The verification that started last, if any was recorded.
    pub async fn last_verification(&self) -> Result<Option<VerificationRow>> {
        dispatch!(self, s => s.last_verification().await)
    }

    /// Sends `payload` on `channel` for a listener to prove it still hears (Postgres NOTIFY);
    /// `Ok(false)` on SQLite, whose notifications are local to the file and need no proof.
    pub async fn notify_listener(&self, channel: &str, payload: &str) -> Result<bool> {
        match self {
            Self::Postgres(s) => {
                self.bounded(async {
                    // language=PostgreSQL
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(channel)
                        .bind(payload)
                        .execute(&s.pool())
                        .await?;
                    Ok(true)
                })
                .await
            }
            Self::Sqlite(_) => Ok(false),
        }
    }

    /// Opens a dedicated listening connection on `channels`.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener> {
        dispatch!(self, s => s.listen(channels).await)
    }

    /// Creates or replaces an agent's scope policy (announced on [`POLICY_CHANNEL`]).
    pub async fn put_scope_policy(&self, policy: &ScopePolicy) -> Result<()> {
        dispatch!(self, s => s.put_scope_policy(policy).await)
    }

    /// Removes an agent's scope policy; returns whether there was one.
    pub async fn delete_scope_policy(&self, agent: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_scope_policy(agent).await)
    }

    /// One agent's scope policy.
    pub async fn scope_policy(&self, agent: &str) -> Result<Option<ScopePolicy>> {
        dispatch!(self, s => s.scope_policy(agent).await)
    }

    /// Every scope policy.
    pub async fn scope_policies(&self) -> Result<Vec<ScopePolicy>> {
        dispatch!(self, s => s.scope_policies().await)
    }

    /// Records a heartbeat (never clears a halt).
    pub async fn heartbeat(&self, agent: &str) -> Result<()> {
        dispatch!(self, s => s.heartbeat(agent).await)
    }

    /// Halts an agent on the service's own behalf (`actor` in the `governance:` namespace, never
    /// a person); returns whether it was running. Announced on [`HALT_CHANNEL`].
    pub async fn service_halt(&self, agent: &str, actor: &str, reason: &str) -> Result<bool> {
        dispatch!(self, s => s.service_halt(agent, actor, reason).await)
    }

    /// Halts or resumes an agent for an authenticated operator, in one transaction with the
    /// audit event and the oversight record that backs it: `events.0` is sealed when the state
    /// changed, `events.1` when it did not. Returns whether it changed. On Postgres only an
    /// operator connection may (the application role gets [`StoreError::PermissionDenied`]).
    pub async fn operator_switch(
        &self,
        s: &HaltSwitch<'_>,
        events: (&AuditEvent, &AuditEvent),
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<bool> {
        dispatch!(self, st => st.operator_switch(s, events, key_id, seal).await)
    }

    /// The oversight records backing these events (those that have one).
    pub async fn oversight_records(
        &self,
        event_ids: &[uuid::Uuid],
    ) -> Result<Vec<OversightRecord>> {
        dispatch!(self, s => s.oversight_records(event_ids).await)
    }

    /// Whether an agent is halted (an agent never seen is not).
    pub async fn is_halted(&self, agent: &str) -> Result<bool> {
        dispatch!(self, s => s.is_halted(agent).await)
    }

    /// One agent's presence row.
    pub async fn presence(&self, agent: &str) -> Result<Option<AgentPresence>> {
        dispatch!(self, s => s.presence(agent).await)
    }

    /// Every agent's presence row.
    pub async fn presences(&self) -> Result<Vec<AgentPresence>> {
        dispatch!(self, s => s.presences().await)
    }

    /// Creates or replaces an agent's budget policy.
    pub async fn put_budget_policy(&self, policy: &BudgetPolicy) -> Result<()> {
        dispatch!(self, s => s.put_budget_policy(policy).await)
    }

    /// Removes an agent's budget policy; returns whether there was one.
    pub async fn delete_budget_policy(&self, agent: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_budget_policy(agent).await)
    }

    /// Atomically reserves projected spend against the session and day caps (one round trip).
    /// The inner `Err` is a refusal naming the cap.
    pub async fn reserve(&self, r: &Reserve<'_>) -> Result<std::result::Result<(), BudgetRefusal>> {
        dispatch!(self, s => s.reserve(r).await)
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
        dispatch!(self, s => s.reserve_logged(r, event, key_id, seal).await)
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
        dispatch!(self, s => s.settle(id, micros, usage, release).await)
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
        dispatch!(self, s => s.settle_logged(id, micros, usage, release, event, key_id, seal) .await)
    }

    /// Records spend that had no reservation, once per record `id` (a record replayed twice
    /// counts once): `false` when the id was applied before and nothing changed.
    pub async fn track(
        &self,
        id: uuid::Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<bool> {
        dispatch!(self, s => s.track(id, agent, session, model, micros, usage).await)
    }

    /// Settles reservation `id` when its settlement may have committed already (its reply was
    /// lost): the spend counts once however often this runs. An open or expired reservation is
    /// settled; a settled one is left alone (`already_settled`); a released or unknown one has
    /// the spend recorded as tracked, once per `id` (`tracked`, then `already_tracked`).
    #[allow(clippy::too_many_arguments)]
    pub async fn settle_once(
        &self,
        id: uuid::Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<String> {
        dispatch!(self, s => s.settle_once(id, agent, session, model, micros, usage).await)
    }

    /// Policy, session counter and today's counter in one round trip.
    pub async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        dispatch!(self, s => s.budget_status(agent, session).await)
    }

    /// Today's spend by model.
    pub async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>> {
        dispatch!(self, s => s.usage_today(agent).await)
    }

    /// Adds an operator (console or CLI user) with an argon2id password hash.
    pub async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password_hash: &str,
    ) -> Result<()> {
        dispatch!(self, s => s.add_operator(username, role, password_hash).await)
    }

    /// Every operator account: name, role, disabled, created.
    pub async fn operators(
        &self,
    ) -> Result<Vec<(String, OperatorRole, bool, time::OffsetDateTime)>> {
        dispatch!(self, s => s.operators().await)
    }

    /// Disables or enables an account, replaces its password hash and/or changes its role, and
    /// ends all of its console sessions, in one transaction; returns whether it exists.
    pub async fn update_operator(
        &self,
        username: &str,
        change: &OperatorChange<'_>,
    ) -> Result<bool> {
        dispatch!(self, s => s.update_operator(username, change).await)
    }

    /// One operator account.
    pub async fn operator(&self, username: &str) -> Result<Option<OperatorRecord>> {
        dispatch!(self, s => s.operator(username).await)
    }

    /// Stores a new pending gate request (announced on [`GATE_CHANNEL`]).
    pub async fn insert_gate_request(&self, g: &GateRecord) -> Result<()> {
        dispatch!(self, s => s.insert_gate_request(g).await)
    }

    /// One gate request.
    pub async fn gate_request(&self, id: uuid::Uuid) -> Result<Option<GateRecord>> {
        dispatch!(self, s => s.gate_request(id).await)
    }

    /// Pending, unexpired gate requests, oldest first.
    pub async fn pending_gates(&self) -> Result<Vec<GateRecord>> {
        dispatch!(self, s => s.pending_gates().await)
    }

    /// Records a vote and its audit event in one transaction. Returns `ok` (the request is
    /// decided), `voted` (recorded; more approvals are needed) or why the database refused (see
    /// the gates and approval workflows migrations).
    pub async fn decide_gate(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        dispatch!(self, s => s.decide_gate(d, event, key_id, seal).await)
    }

    /// Spends an approval once, for the agent and session that asked. Returns `ok` or why not.
    pub async fn consume_gate(
        &self,
        id: uuid::Uuid,
        token_hash: &[u8],
        action_hash: &[u8],
        agent: &str,
        session: Option<&str>,
    ) -> Result<String> {
        dispatch!(self, s => s.consume_gate(id, token_hash, action_hash, agent, session).await)
    }

    /// Sets the groups an operator is in (replacing its groups); whether the operator exists.
    pub async fn set_operator_groups(&self, username: &str, groups: &[String]) -> Result<bool> {
        dispatch!(self, s => s.set_operator_groups(username, groups).await)
    }

    /// Every (group, operator) pair, by group then operator.
    pub async fn operator_groups(&self) -> Result<Vec<(String, String)>> {
        dispatch!(self, s => s.operator_groups().await)
    }

    /// Adds or replaces a workflow (pending requests keep the workflow they were asked under).
    pub async fn put_workflow(&self, w: &gov_core::WorkflowSpec, by: &str) -> Result<()> {
        dispatch!(self, s => s.put_workflow(w, by).await)
    }

    /// Removes a workflow no route names; whether it existed.
    pub async fn delete_workflow(&self, name: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_workflow(name).await)
    }

    /// Every workflow, by name.
    pub async fn workflows(&self) -> Result<Vec<gov_core::WorkflowSpec>> {
        dispatch!(self, s => s.workflows().await)
    }

    /// Adds or replaces a route.
    pub async fn put_route(&self, r: &gov_core::WorkflowRoute) -> Result<()> {
        dispatch!(self, s => s.put_route(r).await)
    }

    /// Removes a route; whether it existed.
    pub async fn delete_route(&self, agent: &str, tool: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_route(agent, tool).await)
    }

    /// Every route, by agent then tool.
    pub async fn routes(&self) -> Result<Vec<gov_core::WorkflowRoute>> {
        dispatch!(self, s => s.routes().await)
    }

    /// The votes on a request, in the order they were cast.
    pub async fn gate_votes(&self, id: uuid::Uuid) -> Result<Vec<VoteRecord>> {
        dispatch!(self, s => s.gate_votes(id).await)
    }

    /// Pending requests whose escalation is due, and pending requests that expired, on the
    /// store's clock.
    pub async fn due_gates(&self) -> Result<(Vec<GateRecord>, Vec<GateRecord>)> {
        dispatch!(self, s => s.due_gates().await)
    }

    /// Escalates or expires a request with its audit event, in one transaction, on the store's
    /// clock; `ok` or why not. Operator connections only.
    pub async fn transition_gate(
        &self,
        id: uuid::Uuid,
        t: GateTransition,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String> {
        dispatch!(self, s => s.transition_gate(id, t, event, key_id, seal).await)
    }

    /// Requests asked, escalated or decided at or after `since`.
    pub async fn recent_gates(&self, since: OffsetDateTime) -> Result<Vec<GateRecord>> {
        dispatch!(self, s => s.recent_gates(since).await)
    }

    /// Queues notifications, skipping those queued before; how many were new.
    pub async fn enqueue_notifications(&self, rows: &[NewNotification]) -> Result<u64> {
        dispatch!(self, s => s.enqueue_notifications(rows).await)
    }

    /// Takes up to `limit` due notifications, leasing each for `lease` (another runner does not
    /// take them meanwhile); counts the attempt.
    pub async fn claim_notifications(
        &self,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        dispatch!(self, s => s.claim_notifications(lease, limit).await)
    }

    /// Records how a delivery attempt ended.
    pub async fn finish_notification(&self, id: i64, outcome: &NotificationOutcome) -> Result<()> {
        dispatch!(self, s => s.finish_notification(id, outcome).await)
    }

    /// Notifications, newest first: all, or those with this status.
    pub async fn notifications(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        dispatch!(self, s => s.notifications(status, limit).await)
    }

    /// Records a wrapped LLM client in the coverage registry, unless the same (provider,
    /// wrapper, model family, host digest) is already there. Returns whether it was new.
    pub async fn register_llm_client(&self, c: &LlmClientRow) -> Result<bool> {
        dispatch!(self, s => s.register_llm_client(c).await)
    }

    /// The coverage registry, oldest registration first.
    pub async fn llm_clients(&self) -> Result<Vec<LlmClientRow>> {
        dispatch!(self, s => s.llm_clients().await)
    }

    /// One bare round trip (`SELECT 1`): the reference latency for benchmarks and health.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping().await)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        dispatch_unbounded!(self, s => s.close().await)
    }

    /// What identifies this database (the local spool belongs to one).
    pub async fn instance(&self) -> Result<Instance> {
        dispatch!(self, s => s.instance().await)
    }
}

/// What identifies one database, for the SDK's local spool: a spool is replayed only into the
/// database it was written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The random id made when the schema was created (`governance_instance`).
    pub id: uuid::Uuid,
    /// Where it lives, which a copy does not share: `postgres:<database name>` (a database
    /// cloned from another keeps the id but not the name), `sqlite:<absolute path>` (a copied
    /// file keeps the id but not the path) or `sqlite:memory:<pool>` for an in-memory database.
    pub locator: String,
}
