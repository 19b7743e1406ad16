//! Gates: human approval before an action runs.
//!
//! An agent asks ([`Gates::request`]); an authenticated operator who is not the requester
//! approves or denies ([`Gates::approve`], [`Gates::deny`]); the decision and its audit event
//! commit in one transaction. The agent waits ([`Gates::wait_for`], woken by NOTIFY) or polls
//! ([`Gates::poll`], `ApprovalPending` while undecided), then spends the approval once with
//! [`Gates::consume`] for exactly the action that was approved.
//!
//! An approval is bound to (agent, tool, hash of the canonical arguments). Its token is an
//! HMAC under the approval key (derived from the audit secret, never the chain key) over the
//! request id, the action hash, the approver and the expiry; the database keeps only its
//! SHA-256. The application role cannot decide at all (no EXECUTE on `governance_decide`), so
//! an agent's own connection can never approve.

use std::time::Duration;

use base64::Engine as _;
use gov_core::events::{self, SystemEvent};
use gov_core::{GateRecord, GateStatus, OperatorRole, action_hash};
use gov_store::{Decision, StoreError};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::operators::Operator;
use crate::{Error, Governance, Result};

/// Gate settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// How long a request waits for a decision before it lapses (default 1 hour).
    pub request_ttl: Duration,
    /// How long an approval may be used after it is given (default 10 minutes).
    pub approval_ttl: Duration,
    /// How long an approval given "for this session" approves the session's later requests
    /// for the same tool (default 8 hours).
    pub session_grant_ttl: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            request_ttl: Duration::from_secs(3_600),
            approval_ttl: Duration::from_secs(600),
            session_grant_ttl: Duration::from_secs(8 * 3_600),
        }
    }
}

/// What an approval covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalScope {
    /// This request alone (the default).
    #[default]
    Once,
    /// This request, and the session's later requests for the same tool until
    /// [`GateConfig::session_grant_ttl`] passes: they are approved when asked.
    Session,
    /// This request, and a Cedar policy proposed as the next shadow version (admins only): a
    /// `@preapproved` permit of this agent, tool and declared arguments, reviewable with
    /// `governance policy diff` and enforced only once an admin applies it.
    Rule,
}

impl ApprovalScope {
    /// `once`, `session` or `rule`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Once => "once",
            Self::Session => "session",
            Self::Rule => "rule",
        }
    }

    /// Parses `once`, `session` or `rule`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "once" => Self::Once,
            "session" => Self::Session,
            "rule" => Self::Rule,
            _ => return None,
        })
    }
}

/// What a vote did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vote {
    /// Whether it decided the request (a denial, or the approval that completed the quorum).
    pub decided: bool,
    /// Approvals given so far, this one included.
    pub approvals: u32,
    /// Approvals needed.
    pub quorum: u32,
    /// The policy proposed by an approval saved as a rule: the shadow version and the policy's
    /// id.
    pub proposed_rule: Option<(i64, String)>,
}

/// A granted approval, ready to be consumed once.
#[derive(Clone, PartialEq, Eq)]
pub struct Approval {
    /// The request.
    pub request_id: Uuid,
    /// Who approved.
    pub approved_by: String,
    /// Until when it may be used.
    pub expires_at: OffsetDateTime,
    token: String,
}

impl std::fmt::Debug for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Approval")
            .field("request_id", &self.request_id)
            .field("approved_by", &self.approved_by)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Approval {
    /// The single-use token (URL-safe base64). Only its SHA-256 is stored.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// An approval rebuilt from a token handed over out of band.
    pub fn from_token(
        request_id: Uuid,
        approved_by: &str,
        expires_at: OffsetDateTime,
        token: &str,
    ) -> Self {
        Self {
            request_id,
            approved_by: approved_by.to_owned(),
            expires_at,
            token: token.to_owned(),
        }
    }
}

/// Gates of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Gates<'g> {
    gov: &'g Governance,
}

/// The most bytes of canonical arguments a request keeps for the operator to read.
const MAX_ARGS: usize = 4_096;

/// What every new gate request is, live or replayed from the spool: pending and undecided,
/// for a valid agent and session, with a 32-byte action hash, arguments within
/// [`MAX_ARGS`], and a lifetime that ends after it starts. A spooled request can never
/// arrive approved.
pub(crate) fn check_pending(r: &GateRecord) -> Result<()> {
    gov_core::AgentId::new(&r.agent_id)?;
    if let Some(s) = &r.session_id {
        gov_core::SessionId::new(s)?;
    }
    let refuse = |why: &str| Err(Error::Config(format!("a gate request is refused: {why}")));
    if r.status != GateStatus::Pending
        || r.decided_by.is_some()
        || r.decision_reason.is_some()
        || r.token_expires_at.is_some()
    {
        return refuse("a new request is pending and undecided");
    }
    if r.tool.is_empty() || r.tool.len() > 256 {
        return refuse("the tool name must be 1 to 256 bytes");
    }
    if r.action_hash.len() != 32 {
        return refuse("the action hash is not 32 bytes");
    }
    if r.args.len() > MAX_ARGS + '…'.len_utf8() {
        return refuse("the arguments are longer than a request keeps");
    }
    if r.expires_at <= r.requested_at {
        return refuse("it expires before it was asked");
    }
    if r.workflow != gov_core::GateWorkflow::default() {
        return refuse("a request's workflow is the database's to set");
    }
    Ok(())
}

fn truncate_args(canonical: String) -> String {
    if canonical.len() <= MAX_ARGS {
        return canonical;
    }
    let mut end = MAX_ARGS;
    while !canonical.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &canonical[..end])
}

impl<'g> Gates<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    fn token(&self, id: Uuid, action: &[u8], approver: &str, expires: OffsetDateTime) -> String {
        let key = self.gov.inner.approval_key.expose();
        let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(b"governance/gate-token/v1\0");
        mac.update(id.as_bytes());
        mac.update(action);
        mac.update(&(approver.len() as u64).to_be_bytes());
        mac.update(approver.as_bytes());
        mac.update(&(expires.unix_timestamp_nanos() / 1_000).to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Asks for approval of `tool` with `args`. Refused at once when the agent is halted.
    /// Audited as `gate.requested`.
    pub async fn request(
        &self,
        agent: &str,
        session: Option<&str>,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<GateRecord> {
        gov_core::AgentId::new(agent)?;
        if let Some(s) = session {
            gov_core::SessionId::new(s)?;
        }
        self.gov.presence().assert_not_halted(agent).await?;
        let hash = action_hash(tool, args)?;
        let canonical =
            serde_json_canonicalizer::to_string(args).map_err(|e| Error::Config(e.to_string()))?;
        let now = truncate_micros(self.gov.inner.config.store.clock.now());
        let ttl = self.gov.inner.config.gates.request_ttl;
        let record = GateRecord {
            id: Uuid::now_v7(),
            agent_id: agent.to_owned(),
            session_id: session.map(str::to_owned),
            tool: tool.to_owned(),
            action_hash: hash.to_vec(),
            args: truncate_args(canonical),
            requested_at: now,
            expires_at: now + ttl,
            status: GateStatus::Pending,
            decided_by: None,
            decision_reason: None,
            token_expires_at: None,
            workflow: gov_core::GateWorkflow::default(),
        };
        check_pending(&record)?;
        // Asking is observation: when storage is out of reach after the halt check passed, the
        // request is spooled and reaches the queue when storage returns. It cannot be approved
        // meanwhile, so nothing is unlocked by it.
        self.gov
            .inner
            .spool
            .submit(
                self.gov,
                crate::spool::Record::GateRequest {
                    record: record.clone(),
                },
            )
            .await?;
        let mut b = events::GateRequested {
            request_id: record.id,
            tool: tool.to_owned(),
            args_sha256: Some(hex(&hash)),
        }
        .event(agent);
        if let Some(s) = session {
            b = b.session(s);
        }
        self.gov.audit().record(b.build()?).await?;
        Ok(record)
    }

    /// One request.
    pub async fn get(&self, id: Uuid) -> Result<GateRecord> {
        self.gov
            .inner
            .store
            .gate_request(id)
            .await?
            .ok_or_else(|| Error::ApprovalRefused {
                request_id: id,
                reason: "no such request".into(),
            })
    }

    /// Pending requests, oldest first.
    pub async fn pending(&self) -> Result<Vec<GateRecord>> {
        Ok(self.gov.inner.store.pending_gates().await?)
    }

    /// Approves a request (this request alone). The operator must be an operator or admin,
    /// not the requester, in the request's approver group when it has one, and not have voted
    /// on it before; the request is approved when its quorum of distinct approvers is reached.
    pub async fn approve(&self, operator: &Operator, id: Uuid, reason: &str) -> Result<Vote> {
        self.decide_traced(operator, id, true, reason, ApprovalScope::Once)
            .await
    }

    /// Approves a request for this request alone, for the rest of its session, or (admins)
    /// as a proposed rule: see [`ApprovalScope`].
    pub async fn approve_with(
        &self,
        operator: &Operator,
        id: Uuid,
        reason: &str,
        scope: ApprovalScope,
    ) -> Result<Vote> {
        self.decide_traced(operator, id, true, reason, scope).await
    }

    /// Denies a request: one denial decides, whatever the quorum.
    pub async fn deny(&self, operator: &Operator, id: Uuid, reason: &str) -> Result<Vote> {
        self.decide_traced(operator, id, false, reason, ApprovalScope::Once)
            .await
    }

    /// The votes cast on a request, in order.
    pub async fn votes(&self, id: Uuid) -> Result<Vec<gov_store::VoteRecord>> {
        Ok(self.gov.inner.store.gate_votes(id).await?)
    }

    /// A human gate decision inside a `governance.gate` span (exported with the `otel` feature).
    async fn decide_traced(
        &self,
        operator: &Operator,
        id: Uuid,
        approve: bool,
        reason: &str,
        scope: ApprovalScope,
    ) -> Result<Vote> {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "governance.gate",
            governance.gate.name = "approval",
            governance.gate.decision = if approve { "approve" } else { "deny" },
            governance.gate.request_id = %id,
            error.type = tracing::field::Empty,
        );
        let out = self
            .decide(operator, id, approve, reason, scope)
            .instrument(span.clone())
            .await;
        if out.is_err() {
            span.record("error.type", "refused");
        }
        out
    }

    async fn decide(
        &self,
        operator: &Operator,
        id: Uuid,
        approve: bool,
        reason: &str,
        scope: ApprovalScope,
    ) -> Result<Vote> {
        let refuse = |reason: &str| Error::ApprovalRefused {
            request_id: id,
            reason: reason.into(),
        };
        if operator.role() < OperatorRole::Operator {
            return Err(refuse("a viewer cannot decide"));
        }
        if scope == ApprovalScope::Rule && operator.role() < OperatorRole::Admin {
            return Err(refuse("only an admin may save an approval as a rule"));
        }
        // Another vote may come between reading the request and recording this one; the
        // store then changes nothing ("vote_moved") and the vote is sealed again.
        for _ in 0..8 {
            let request = self.get(id).await?;
            if scope == ApprovalScope::Session && request.session_id.is_none() {
                return Err(refuse(
                    "a request without a session cannot be approved for its session",
                ));
            }
            let w = &request.workflow;
            let decides = gov_core::rules::vote_is_final(approve, w.approvals, w.quorum);
            let approvals = w.approvals + u32::from(approve);
            let now = truncate_micros(self.gov.inner.config.store.clock.now());
            let expires = now + self.gov.inner.config.gates.approval_ttl;
            let grants = approve && decides;
            let token =
                grants.then(|| self.token(id, &request.action_hash, operator.username(), expires));
            let token_hash = token
                .as_ref()
                .map(|t| Sha256::digest(t.as_bytes()).to_vec());
            let grant = (grants && scope == ApprovalScope::Session).then(|| {
                (
                    Uuid::now_v7(),
                    now + self.gov.inner.config.gates.session_grant_ttl,
                )
            });
            let mut decided = events::GateDecision::new(id, request.tool.clone(), reason);
            if w.quorum > 1 {
                decided.approvals = Some(approvals);
                decided.quorum = Some(w.quorum);
            }
            if approve && scope != ApprovalScope::Once {
                decided.scope = Some(scope.as_str().to_owned());
            }
            let b = match (decides, approve) {
                (true, true) => events::GateApproved(decided).event(&request.agent_id),
                (true, false) => events::GateDenied(decided).event(&request.agent_id),
                (false, _) => events::GateVoted(decided).event(&request.agent_id),
            };
            let mut b = b.actor(operator.username());
            if let Some(s) = &request.session_id {
                b = b.session(s);
            }
            let event = b.build()?;
            let decision = Decision {
                id,
                operator: operator.username(),
                approve,
                reason,
                token_hash: token_hash.as_deref(),
                token_expires_at: grants.then_some(expires),
                final_vote: decides,
                grant,
            };
            // The vote's event is sealed in the store's transaction: never onto a chain whose
            // head another key sealed.
            self.gov
                .inner
                .audit
                .ensure_writable(event.chain_id.as_str())
                .await?;
            let sealer = self.gov.inner.audit.sealer();
            let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
            let outcome = match self
                .gov
                .inner
                .store
                .decide_gate(&decision, &event, sealer.key().key_id(), &seal)
                .await
            {
                Ok(o) => o,
                Err(StoreError::PermissionDenied(_)) => {
                    return Err(refuse(
                        "this connection may not decide approvals: agents (the application role) can never approve",
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let mut vote = Vote {
                decided: decides,
                approvals,
                quorum: w.quorum,
                proposed_rule: None,
            };
            match outcome.as_str() {
                "ok" | "voted" => {}
                "vote_moved" => continue,
                other => return Err(refuse(refusal(other))),
            }
            if approve && scope == ApprovalScope::Rule {
                vote.proposed_rule = Some(self.propose_rule(&request, operator, reason).await?);
            }
            return Ok(vote);
        }
        Err(refuse(
            "other votes kept coming first; read the request again and vote then",
        ))
    }

    #[cfg(feature = "cedar")]
    async fn propose_rule(
        &self,
        request: &GateRecord,
        operator: &Operator,
        reason: &str,
    ) -> Result<(i64, String)> {
        crate::policies::propose_rule(self.gov, request, operator.username(), reason).await
    }

    #[cfg(not(feature = "cedar"))]
    async fn propose_rule(
        &self,
        request: &GateRecord,
        _operator: &Operator,
        _reason: &str,
    ) -> Result<(i64, String)> {
        Err(Error::ApprovalRefused {
            request_id: request.id,
            reason: "saving an approval as a rule needs the SDK's cedar feature".into(),
        })
    }

    /// Non-blocking: the approval if granted, [`Error::ApprovalPending`] while undecided,
    /// [`Error::ApprovalDenied`] if denied, [`Error::ApprovalRefused`] if lapsed or used.
    pub async fn poll(&self, id: Uuid) -> Result<Approval> {
        let r = self.get(id).await?;
        match r.status {
            GateStatus::Approved => {
                let (Some(by), Some(expires)) = (r.decided_by.clone(), r.token_expires_at) else {
                    return Err(Error::ApprovalRefused {
                        request_id: id,
                        reason: "the approval is incomplete".into(),
                    });
                };
                let token = self.token(id, &r.action_hash, &by, expires);
                Ok(Approval {
                    request_id: id,
                    approved_by: by,
                    expires_at: expires,
                    token,
                })
            }
            GateStatus::Denied if r.workflow.expired_at.is_some() => Err(Error::ApprovalDenied {
                request_id: id,
                by: "governance".into(),
                reason: "no decision before the request expired".into(),
            }),
            GateStatus::Denied => Err(Error::ApprovalDenied {
                request_id: id,
                by: r.decided_by.unwrap_or_default(),
                reason: r.decision_reason.unwrap_or_default(),
            }),
            GateStatus::Consumed => Err(Error::ApprovalRefused {
                request_id: id,
                reason: refusal("already_consumed").into(),
            }),
            // The rule's comparison (`gov_core::rules::is_expired`: strictly after), on the
            // store's clock.
            GateStatus::Pending if r.expires_at < self.gov.inner.config.store.clock.now() => {
                Err(Error::ApprovalRefused {
                    request_id: id,
                    reason: refusal("expired").into(),
                })
            }
            GateStatus::Pending => Err(Error::ApprovalPending { request_id: id }),
        }
    }

    /// Blocks until the request is decided or `timeout` passes (then [`Error::ApprovalPending`]).
    /// Woken by NOTIFY from whichever process decides; while the notification listener is down
    /// it re-reads the request every 250 ms.
    pub async fn wait_for(&self, id: Uuid, timeout: Duration) -> Result<Approval> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.gov.inner.shared.gates.subscribe();
        loop {
            match self.poll(id).await {
                Err(Error::ApprovalPending { .. }) => {}
                other => return other,
            }
            let wait = if self.gov.inner.shared.healthy() {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            } else {
                Duration::from_millis(250)
                    .min(deadline.saturating_duration_since(tokio::time::Instant::now()))
            };
            if wait.is_zero() {
                return Err(Error::ApprovalPending { request_id: id });
            }
            let prefix = id.to_string();
            let woke = tokio::time::timeout(wait, async {
                loop {
                    match rx.recv().await {
                        Ok(p) if p.starts_with(&prefix) => return,
                        Ok(_) => {}
                        // Lagged or closed: re-read the request.
                        Err(_) => return,
                    }
                }
            })
            .await;
            if woke.is_err() && tokio::time::Instant::now() >= deadline {
                return match self.poll(id).await {
                    Err(Error::ApprovalPending { .. }) => {
                        Err(Error::ApprovalPending { request_id: id })
                    }
                    other => other,
                };
            }
        }
    }

    /// Spends an approval for exactly the approved action, by the agent and in the session that
    /// asked for it, once. Refused for another agent or session, another tool or other
    /// arguments, a second use, an expired approval, or a token that is not the one issued.
    /// Audited as `gate.consumed`.
    pub async fn consume(
        &self,
        approval: &Approval,
        agent: &str,
        session: Option<&str>,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<()> {
        let id = approval.request_id;
        let hash = action_hash(tool, args)?;
        let token_hash = Sha256::digest(approval.token.as_bytes());
        let outcome = self
            .gov
            .inner
            .store
            .consume_gate(id, &token_hash, &hash, agent, session)
            .await?;
        if outcome != "ok" {
            return Err(Error::ApprovalRefused {
                request_id: id,
                reason: refusal(&outcome).into(),
            });
        }
        let r = self.get(id).await?;
        let mut b = events::GateConsumed {
            request_id: id,
            tool: tool.to_owned(),
            approved_by: r.decided_by.clone(),
        }
        .event(&r.agent_id);
        if let Some(s) = &r.session_id {
            b = b.session(s);
        }
        self.gov.audit().record(b.build()?).await?;
        Ok(())
    }
}

fn refusal(code: &str) -> &'static str {
    match code {
        "unknown_request" => "no such request",
        "not_pending" => "the request was already decided",
        "expired" => "the request or approval has expired",
        "unknown_operator" => "the approver is not a known operator",
        "operator_disabled" => "the approver's account is disabled",
        "not_allowed" => "the approver's role may not decide",
        "self_approval" => "a requester cannot approve its own request",
        "not_in_group" => "the approver is not in the request's approver group",
        "already_voted" => {
            "this approver already voted on the request (a quorum needs distinct approvers)"
        }
        "not_approved" => "the request is not approved",
        "already_consumed" => "the approval was already used",
        "wrong_action" => "the approval is for a different action",
        "wrong_agent" => "the approval was granted to another agent or session",
        "bad_token" => "the token is not the one issued for this approval",
        _ => "refused",
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn truncate_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}
