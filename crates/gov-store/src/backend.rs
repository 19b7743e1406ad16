//! The typed operations every backend implements, one trait per concern (in the style of
//! atuin's server database crates). [`crate::Store`] dispatches to a backend; `gov-audit`,
//! `gov-sdk`, the CLI and the console only ever see `Store`.
//!
//! The traits use `async fn`: they are implemented by this crate's backends only and called
//! through `Store` on concrete types, where the futures' `Send` is known.
#![allow(async_fn_in_trait)]

use gov_core::{
    AgentPresence, AuditEvent, AuditRecord, BudgetPolicy, BudgetRefusal, BudgetStatus, ChainHead,
    EventCount, EventFilter, GateRecord, ModelUsage, OperatorRole, ScopePolicy, TokenUsage,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    CheckpointRow, ConsoleSession, CosignatureRow, Decision, HaltSwitch, Listener, LlmClientRow,
    MigrateReport, NewPolicySet, NewSession, OperatorChange, OperatorRecord, OversightRecord,
    PolicySetRow, Privileges, Reserve, Result, Sealer, SignerKeyRow, SubjectKeyRow, TreeTile,
};
use crate::{GatewayKeyInfo, GatewayKeyRow, VerificationRow};

/// Schema, roles, notifications and the connection pool.
pub trait Backend:
    ChainStore
    + TreeStore
    + SignerStore
    + EnforceStore
    + BudgetStore
    + GateStore
    + SessionStore
    + RegistryStore
    + SubjectStore
    + GatewayKeyStore
    + PolicyStore
    + WorkflowStore
    + RetentionStore
{
    /// Applies the embedded migrations (idempotent).
    async fn migrate(&self) -> Result<MigrateReport>;
    /// Fails with `NotMigrated` when the schema is missing or older than this build.
    async fn check_schema(&self) -> Result<()>;
    /// Creates the least-privilege application role (where the backend has roles).
    async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()>;
    /// What the connection may do to the audit tables.
    async fn privileges(&self) -> Result<Privileges>;
    /// Listens on notification channels.
    async fn listen(&self, channels: &[&str]) -> Result<Listener>;
    /// One bare round trip.
    async fn ping(&self) -> Result<()>;
    /// Closes the pool.
    async fn close(&self);
    /// What identifies this database: the random id its schema was created with, and where
    /// it lives (see [`crate::Instance`]).
    async fn instance(&self) -> Result<crate::Instance>;
}

/// The audit chain: appends under the head lock and reads.
pub trait ChainStore {
    /// Appends one chain's events in one transaction; the seq given to each.
    async fn append_batch(
        &self,
        chain_id: &str,
        key_id: &str,
        events: &[AuditEvent],
        seal: Sealer<'_>,
    ) -> Result<Vec<i64>>;
    /// Appends rows sealed elsewhere (an import), verbatim; they must continue the chain's head.
    async fn import_rows(&self, chain_id: &str, rows: &[AuditRecord]) -> Result<()>;
    /// Which of `ids` are stored.
    async fn existing_event_ids(&self, ids: &[Uuid]) -> Result<Vec<Uuid>>;
    /// One chain's head.
    async fn chain_head(&self, chain_id: &str) -> Result<Option<ChainHead>>;
    /// Every chain's head.
    async fn chain_heads(&self) -> Result<Vec<ChainHead>>;
    /// Chain ids found in the rows.
    async fn chain_ids_with_rows(&self) -> Result<Vec<String>>;
    /// Up to `limit` rows after `after_seq`.
    async fn read_chain_page(
        &self,
        chain_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>>;
    /// Rows with `after_seq < seq <= upto_seq`.
    async fn read_chain_window(
        &self,
        chain_id: &str,
        after_seq: i64,
        upto_seq: i64,
    ) -> Result<Vec<AuditRecord>>;
    /// Filtered rows.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>>;
    /// Event counts per agent, kind and the tool or model their payload names.
    async fn target_counts(
        &self,
        chain_id: &str,
        kinds: &[&str],
        since: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Vec<crate::TargetCount>>;
    /// Event counts per (chain, agent, kind) and per (chain, agent).
    async fn event_counts(
        &self,
        chain_id: Option<&str>,
        since: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Result<Vec<EventCount>>;
}

/// The tiles of each chain's Merkle tree (a cache written outside the append transaction).
pub trait TreeStore {
    /// The indices of a chain's stored tiles at `level`, in order.
    async fn tree_tile_indices(&self, chain_id: &str, level: u8) -> Result<Vec<u64>>;
    /// Stored tiles with `from <= idx <= to`, with their hashes or only their roots.
    async fn tree_tiles(
        &self,
        chain_id: &str,
        level: u8,
        from: u64,
        to: u64,
        with_hashes: bool,
    ) -> Result<Vec<TreeTile>>;
    /// Stores tiles, keeping any already stored.
    async fn put_tree_tiles(&self, chain_id: &str, tiles: &[TreeTile]) -> Result<()>;
}

/// Retention: recorded cuts of a chain's oldest rows.
pub trait RetentionStore {
    /// A chain's cuts, oldest first.
    async fn retention_cuts(&self, chain_id: &str) -> Result<Vec<crate::RetentionCut>>;
    /// Records a cut, appends its sealed event and removes the rows it covers, in one
    /// transaction; the rows removed and the event's seq.
    async fn cut_chain(
        &self,
        cut: &crate::RetentionCut,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: crate::Sealer<'_>,
    ) -> Result<(i64, i64)>;
}

/// Signer public keys and stored checkpoints.
pub trait SignerStore {
    /// Registers a key; false when the id is taken by another key.
    async fn register_signer(&self, id: &str, public_key: &[u8], label: &str) -> Result<bool>;
    /// Stores a key with its recorded times (an import); false when the id holds another key.
    async fn import_signer(&self, row: &SignerKeyRow) -> Result<bool>;
    /// Every registered key.
    async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>>;
    /// Revokes a key once.
    async fn revoke_signer(&self, id: &str) -> Result<bool>;
    /// Stores a checkpoint (idempotent).
    async fn put_checkpoint(&self, c: &CheckpointRow) -> Result<()>;
    /// A chain's checkpoints.
    async fn checkpoints(&self, chain_id: &str) -> Result<Vec<CheckpointRow>>;
    /// Stores a witness cosignature (idempotent).
    async fn put_cosignature(&self, c: &CosignatureRow) -> Result<()>;
    /// A chain's witness cosignatures, by tree size.
    async fn cosignatures(&self, chain_id: &str) -> Result<Vec<CosignatureRow>>;
}

/// Scope policies, heartbeats and halts.
pub trait EnforceStore {
    /// Creates or replaces a scope policy (announced).
    async fn put_scope_policy(&self, policy: &ScopePolicy) -> Result<()>;
    /// Removes a scope policy.
    async fn delete_scope_policy(&self, agent: &str) -> Result<bool>;
    /// One scope policy.
    async fn scope_policy(&self, agent: &str) -> Result<Option<ScopePolicy>>;
    /// Every scope policy.
    async fn scope_policies(&self) -> Result<Vec<ScopePolicy>>;
    /// Records a heartbeat.
    async fn heartbeat(&self, agent: &str) -> Result<()>;
    /// Halts on the service's own behalf; whether the state changed (announced).
    async fn service_halt(&self, agent: &str, actor: &str, reason: &str) -> Result<bool>;
    /// Halts or resumes for an operator, with its event and oversight record, in one
    /// transaction; whether the state changed.
    async fn operator_switch(
        &self,
        s: &HaltSwitch<'_>,
        events: (&AuditEvent, &AuditEvent),
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<bool>;
    /// The oversight records backing these events.
    async fn oversight_records(&self, event_ids: &[Uuid]) -> Result<Vec<OversightRecord>>;
    /// Whether an agent is halted.
    async fn is_halted(&self, agent: &str) -> Result<bool>;
    /// One presence row.
    async fn presence(&self, agent: &str) -> Result<Option<AgentPresence>>;
    /// Every presence row.
    async fn presences(&self) -> Result<Vec<AgentPresence>>;
}

/// Budget policies, counters, reservations and usage.
pub trait BudgetStore {
    /// Creates or replaces a budget policy.
    async fn put_budget_policy(&self, policy: &BudgetPolicy) -> Result<()>;
    /// Removes a budget policy.
    async fn delete_budget_policy(&self, agent: &str) -> Result<bool>;
    /// Reserves atomically, or names the refusing cap.
    async fn reserve(&self, r: &Reserve<'_>) -> Result<std::result::Result<(), BudgetRefusal>>;
    /// Reserves and appends `event` in one transaction.
    async fn reserve_logged(
        &self,
        r: &Reserve<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<std::result::Result<i64, BudgetRefusal>>;
    /// Settles or releases once; the outcome.
    async fn settle(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
    ) -> Result<String>;
    /// Settles and appends `event` in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn settle_logged(
        &self,
        id: Uuid,
        micros: i64,
        usage: &TokenUsage,
        release: bool,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<(String, i64)>;
    /// Records spend without a reservation, once per record `id`: `false` when that id was
    /// applied before (nothing changes then).
    async fn track(
        &self,
        id: Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<bool>;
    /// Settles a reservation whose settlement may have committed already, counting the spend
    /// once (see [`crate::Store::settle_once`]); the outcome.
    async fn settle_once(
        &self,
        id: Uuid,
        agent: &str,
        session: &str,
        model: &str,
        micros: i64,
        usage: &TokenUsage,
    ) -> Result<String>;
    /// Policy and both counters.
    async fn budget_status(&self, agent: &str, session: &str) -> Result<BudgetStatus>;
    /// Today's spend of one agent by model.
    async fn usage_today(&self, agent: &str) -> Result<Vec<ModelUsage>>;
    /// Today's spend of every agent by model.
    async fn usage_today_all(&self) -> Result<Vec<(String, ModelUsage)>>;
    /// Spend by UTC day, agent and model for the days `from..=to`, ordered by day, agent, then
    /// cost (highest first) and model: the rows `usage_today_all` reads for one day.
    async fn usage_between(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::Date, String, ModelUsage)>>;
    /// Spend by UTC hour, agent and model for the hours of the days `from..=to`, ordered by
    /// hour, agent, then cost (highest first) and model (written with `usage_between`'s rows,
    /// so an hour's rows add up to its day's for spend settled since hourly rows exist).
    async fn usage_by_hour(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<Vec<(time::OffsetDateTime, String, ModelUsage)>>;
    /// Every budget policy with today's counter (UTC), by agent; holds that expired but were
    /// not closed yet still count as reserved.
    async fn day_budgets(&self) -> Result<Vec<(BudgetPolicy, gov_core::BudgetCounter)>>;
}

/// Operators and human-approval gates.
pub trait GateStore {
    /// Adds an operator.
    async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password_hash: &str,
    ) -> Result<()>;
    /// Every operator: name, role, disabled, created.
    async fn operators(&self) -> Result<Vec<(String, OperatorRole, bool, OffsetDateTime)>>;
    /// Applies a change to an account and deletes all of its console sessions, in one
    /// transaction; whether the account exists.
    async fn update_operator(&self, username: &str, change: &OperatorChange<'_>) -> Result<bool>;
    /// One operator.
    async fn operator(&self, username: &str) -> Result<Option<OperatorRecord>>;
    /// Stores a pending request (announced).
    async fn insert_gate_request(&self, g: &GateRecord) -> Result<()>;
    /// One request.
    async fn gate_request(&self, id: Uuid) -> Result<Option<GateRecord>>;
    /// Pending, unexpired requests, oldest first.
    async fn pending_gates(&self) -> Result<Vec<GateRecord>>;
    /// Records a decision with its audit event; `ok` or why not.
    async fn decide_gate(
        &self,
        d: &Decision<'_>,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String>;
    /// Spends an approval once; `ok` or why not.
    async fn consume_gate(
        &self,
        id: Uuid,
        token_hash: &[u8],
        action_hash: &[u8],
        agent: &str,
        session: Option<&str>,
    ) -> Result<String>;
}

/// Approval workflows: operators' groups, workflows and routes, votes, escalation and expiry,
/// notification deliveries.
pub trait WorkflowStore {
    /// Replaces an operator's groups; whether the operator exists.
    async fn set_operator_groups(&self, username: &str, groups: &[String]) -> Result<bool>;
    /// Every (group, operator).
    async fn operator_groups(&self) -> Result<Vec<(String, String)>>;
    /// Adds or replaces a workflow.
    async fn put_workflow(&self, w: &gov_core::WorkflowSpec, by: &str) -> Result<()>;
    /// Removes a workflow.
    async fn delete_workflow(&self, name: &str) -> Result<bool>;
    /// Every workflow.
    async fn workflows(&self) -> Result<Vec<gov_core::WorkflowSpec>>;
    /// Adds or replaces a route.
    async fn put_route(&self, r: &gov_core::WorkflowRoute) -> Result<()>;
    /// Removes a route.
    async fn delete_route(&self, agent: &str, tool: &str) -> Result<bool>;
    /// Every route.
    async fn routes(&self) -> Result<Vec<gov_core::WorkflowRoute>>;
    /// A request's votes.
    async fn gate_votes(&self, id: Uuid) -> Result<Vec<crate::VoteRecord>>;
    /// Requests to escalate, requests to expire.
    async fn due_gates(&self) -> Result<(Vec<GateRecord>, Vec<GateRecord>)>;
    /// Escalates or expires a request with its event.
    async fn transition_gate(
        &self,
        id: Uuid,
        t: crate::GateTransition,
        event: &AuditEvent,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<String>;
    /// Requests asked, escalated or decided since.
    async fn recent_gates(&self, since: OffsetDateTime) -> Result<Vec<GateRecord>>;
    /// Queues notifications (once each).
    async fn enqueue_notifications(&self, rows: &[crate::NewNotification]) -> Result<u64>;
    /// Leases due notifications.
    async fn claim_notifications(
        &self,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<crate::NotificationRecord>>;
    /// Records an attempt's outcome.
    async fn finish_notification(
        &self,
        id: i64,
        outcome: &crate::NotificationOutcome,
    ) -> Result<()>;
    /// Notifications, newest first.
    async fn notifications(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::NotificationRecord>>;
}

/// Console sign-in sessions.
pub trait SessionStore {
    /// Stores a session (and sweeps expired ones) if, under a lock on the account's row, it is
    /// still enabled with the password hash and role it was authenticated with; whether it did.
    async fn insert_session(&self, session: &NewSession<'_>) -> Result<bool>;
    /// The live session with this token hash.
    async fn session(&self, token_hash: &[u8]) -> Result<Option<ConsoleSession>>;
    /// Ends a session.
    async fn delete_session(&self, token_hash: &[u8]) -> Result<()>;
    /// Each user's last sign-in (written by `insert_session` with the session it stores).
    async fn last_sign_ins(&self) -> Result<Vec<(String, OffsetDateTime)>>;
    /// Records a completed verification and drops all but the newest 1,000.
    async fn put_verification(&self, row: &VerificationRow) -> Result<()>;
    /// The recorded verification with the latest `started_at`.
    async fn last_verification(&self) -> Result<Option<VerificationRow>>;
}

/// The coverage registry of wrapped LLM clients.
pub trait RegistryStore {
    /// Records a client once; whether it was new.
    async fn register_llm_client(&self, c: &LlmClientRow) -> Result<bool>;
    /// The registry, oldest first.
    async fn llm_clients(&self) -> Result<Vec<LlmClientRow>>;
}

/// The wrapped keys of data subjects (crypto-shredding) and their erasure.
pub trait SubjectStore {
    /// Stores a wrapped key (nothing when `(subject, kid)` is already stored); `false` when it
    /// is refused because the subject was erased (an erased subject never gets a key again).
    async fn put_subject_key(&self, row: &SubjectKeyRow) -> Result<bool>;
    /// The stored keys of these subjects.
    async fn subject_keys(&self, subjects: &[String]) -> Result<Vec<SubjectKeyRow>>;
    /// Whether the subject was erased.
    async fn subject_erased(&self, subject: &str) -> Result<bool>;
    /// Whether the database holds any subject key or erased subject (personal-data state an
    /// export does not carry).
    async fn holds_subject_state(&self) -> Result<bool>;
    /// Erases a subject in one transaction: records its tombstone, deletes every key of it
    /// (serialised with key insertions, so none survives), and appends the event `event`
    /// builds from the number of keys deleted. Returns that number.
    async fn erase_subject(
        &self,
        subject: &str,
        event: ErasureEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<u64>;
}

/// Agents' gateway keys: made, listed and revoked by the owner; looked up one at a time by id
/// (the application role can do only that, on Postgres through a definer function).
pub trait GatewayKeyStore {
    /// Stores a new key (its id, agent, hash and label).
    async fn add_gateway_key(&self, row: &GatewayKeyRow) -> Result<()>;
    /// Every key (of `agent`, or of all agents), oldest first, without hashes.
    async fn gateway_keys(&self, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>>;
    /// Revokes a key; `false` when there is no such key or it was already revoked.
    async fn revoke_gateway_key(&self, id: &str) -> Result<bool>;
    /// The agent and stored hash of the unrevoked key with this id.
    async fn gateway_key(&self, id: &str) -> Result<Option<(String, Vec<u8>)>>;
}

/// Builds the erasure's event from the number of keys destroyed.
pub type ErasureEvent<'a> =
    &'a (dyn Fn(u64) -> std::result::Result<AuditEvent, String> + Send + Sync);

/// Cedar policy sets: versions per slot, appended by the schema owner only.
pub trait PolicyStore {
    /// The newest version of each slot (`enforced`, `shadow`) that has one.
    async fn policy_sets(&self) -> Result<Vec<PolicySetRow>>;
    /// Appends the next version of `set.slot` and the event `event` builds from its version
    /// number, in one transaction; the version. Refused with `PermissionDenied` for a role
    /// that may not write policy sets (the application role).
    async fn apply_policy_set(
        &self,
        set: &NewPolicySet,
        event: PolicyEvent<'_>,
        key_id: &str,
        seal: Sealer<'_>,
    ) -> Result<i64>;
}

/// Builds a policy set's `policy.applied` event from its version number.
pub type PolicyEvent<'a> =
    &'a (dyn Fn(i64) -> std::result::Result<AuditEvent, String> + Send + Sync);
