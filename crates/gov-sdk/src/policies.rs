//! Cedar policy sets (policy as code): the enforced set every check evaluates beside scope,
//! the shadow set evaluated next to it (differences logged, never enforced), and applying a new
//! version (an operator path: on Postgres only the schema owner can write `policy_sets`).
//!
//! Each handle keeps a snapshot of both slots (`PolicyState`), loaded when it connects and
//! replaced when any process applies a version (the listener's `gov_policy_set` channel); while
//! the listener is not trusted, a check reads and parses the sets from storage, and refuses
//! when storage is out of reach. A stored set this build cannot parse refuses every action
//! (fail closed) until a valid one is applied.
//!
//! Decisions: scope first (both must allow), then the enforced set. A forbid is audited as
//! `policy.denied`, an approval as `policy.approval_required`, each with the set's hash and
//! the determining policies; a shadow set that decides differently is audited as
//! `policy.shadow_diff` and changes nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use gov_core::events::{self, SystemEvent as _};
pub use gov_policy::{
    AgentAttributes, ArgumentType, Decision, Effect, PolicyError, PolicySet, Request, Resource,
    Settings, cases,
};
use gov_store::{NewPolicySet, PolicySetRow, Store};

use crate::{Error, Governance, Result};

/// Which policy set a version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The set every check enforces.
    Enforced,
    /// The candidate evaluated beside it, never enforced.
    Shadow,
}

impl Slot {
    /// `enforced` or `shadow`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Shadow => "shadow",
        }
    }
}

/// A slot's loaded version.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A valid set.
    Set {
        /// Its version.
        version: i64,
        /// The set.
        set: Arc<PolicySet>,
    },
    /// A stored set that does not parse or whose hash does not match: every check it would
    /// decide is refused.
    Broken {
        /// Its version.
        version: i64,
        /// Its stored hash.
        hash: String,
        /// Why.
        reason: String,
    },
}

/// What a handle enforces: each slot's newest version (`None`: the slot is off).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The enforced set.
    pub enforced: Option<Loaded>,
    /// The shadow set.
    pub shadow: Option<Loaded>,
}

/// The per-handle snapshot, replaced whole on reload.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    current: RwLock<Arc<Snapshot>>,
    /// Whether either slot holds a set: when not, a check skips Cedar with one atomic load.
    active: AtomicBool,
}

impl PolicyState {
    /// Whether either slot holds a set (or a broken one).
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, s: Snapshot) {
        let active = s.enforced.is_some() || s.shadow.is_some();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
        self.active.store(active, Ordering::Release);
    }

    /// Reloads both slots from storage.
    pub(crate) async fn reload(&self, store: &Store) -> gov_store::Result<()> {
        self.set(load(store).await?);
        Ok(())
    }
}

fn loaded(row: PolicySetRow) -> Option<Loaded> {
    let source = row.policies?;
    Some(match PolicySet::parse(&source, &row.settings) {
        Ok(set) if set.hash() == row.hash => Loaded::Set {
            version: row.version,
            set: Arc::new(set),
        },
        Ok(_) => Loaded::Broken {
            version: row.version,
            hash: row.hash,
            reason: "the stored hash does not match the stored policies".into(),
        },
        Err(e) => Loaded::Broken {
            version: row.version,
            hash: row.hash,
            reason: e.to_string(),
        },
    })
}

async fn load(store: &Store) -> gov_store::Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for row in store.policy_sets().await? {
        match row.slot.as_str() {
            "enforced" => snapshot.enforced = loaded(row),
            "shadow" => snapshot.shadow = loaded(row),
            _ => {}
        }
    }
    Ok(snapshot)
}

/// A check to decide: what the agent wants and the context policies may read.
#[derive(Debug, Clone, Copy)]
pub struct PolicyCheck<'a> {
    /// The agent.
    pub agent: &'a str,
    /// Its session.
    pub session: &'a str,
    /// The tool, model or MCP tool.
    pub resource: Resource<'a>,
    /// The call's arguments (a JSON object).
    pub arguments: Option<&'a serde_json::Value>,
    /// The call's estimated cost, micro-USD.
    pub estimated_cost_micros: i64,
    /// The session's spend so far, micro-USD.
    pub session_spend_micros: i64,
}

impl<'a> PolicyCheck<'a> {
    /// A check of `resource` for `agent` with no arguments and no cost.
    pub fn new(agent: &'a str, resource: Resource<'a>) -> Self {
        Self {
            agent,
            session: "",
            resource,
            arguments: None,
            estimated_cost_micros: 0,
            session_spend_micros: 0,
        }
    }
}

/// Cedar policy sets of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'g> {
    gov: &'g Governance,
}

impl<'g> Policies<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Applies `set` as the next version of `slot` (`None` turns the slot off), recording
    /// `policy.applied` in the same transaction; the version. An operator path: on Postgres
    /// only the schema owner may (the application role gets a permission error).
    pub async fn apply(&self, slot: Slot, set: Option<&PolicySet>, operator: &str) -> Result<i64> {
        gov_core::AgentId::new(operator)?;
        let hash = set.map(|s| s.hash().to_owned());
        let count = set.map_or(0, |s| s.ids().len() as u64);
        let make = |version: i64| {
            events::PolicyApplied {
                slot: slot.as_str().to_owned(),
                version,
                policy_set_hash: hash.clone(),
                policies: count,
                operator: operator.to_owned(),
            }
            .event(events::POLICY_AGENT)
            .actor(operator)
            .build()
        };
        let probe = make(1)?;
        let new = NewPolicySet {
            slot: slot.as_str().to_owned(),
            policies: set.map(|s| s.source().to_owned()),
            settings: set.map_or_else(|| "{}".to_owned(), |s| s.settings_json().to_owned()),
            // The hash of "no set": of empty policies and settings.
            hash: hash.clone().unwrap_or_else(|| "0".repeat(64)),
            applied_by: operator.to_owned(),
        };
        let inner = &self.gov.inner;
        inner.audit.ensure_writable(probe.chain_id.as_str()).await?;
        let sealer = inner.audit.sealer();
        let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
        let build = |v: i64| make(v).map_err(|e| e.to_string());
        let version = inner
            .store
            .apply_policy_set(&new, &build, sealer.key().key_id(), &seal)
            .await?;
        // Apply locally at once; the notification makes every other process reload.
        if let Err(e) = inner.shared.policies.reload(&inner.store).await {
            tracing::warn!(error = %e, "could not reload the policy sets after applying one");
        }
        Ok(version)
    }

    /// The sets this handle enforces: from its snapshot while the listener is trusted,
    /// otherwise read from storage.
    pub async fn current(&self) -> Result<Arc<Snapshot>> {
        let shared = &self.gov.inner.shared;
        if shared.healthy() {
            return Ok(shared.policies.get());
        }
        Ok(Arc::new(load(&self.gov.inner.store).await?))
    }

    /// Decides `check` under the enforced set alone (no scope, no halt check, nothing
    /// audited); `None` when no set is enforced.
    pub async fn decide(&self, check: &PolicyCheck<'_>) -> Result<Option<(Decision, String)>> {
        let snapshot = self.current().await?;
        Ok(snapshot
            .enforced
            .as_ref()
            .map(|l| decide_loaded(l, check, time::OffsetDateTime::now_utc())))
    }

    /// The guarded check: not halted, in scope, and permitted by the enforced set (both must
    /// allow). A forbid is [`Error::PolicyForbidden`] (audited `policy.denied`), a permit with
    /// approval [`Error::PolicyApprovalRequired`] (audited `policy.approval_required`): ask a
    /// person through [`Governance::gates`]. The shadow set is evaluated too; a difference is
    /// audited as `policy.shadow_diff` and changes nothing.
    pub async fn check(&self, check: &PolicyCheck<'_>) -> Result<()> {
        let scope = self.gov.scope();
        match check.resource {
            Resource::Tool(t) => scope.check_scope_only(check.agent, t).await?,
            Resource::Model { provider, model } => {
                scope
                    .check_model_scope_only(check.agent, provider, model)
                    .await?;
            }
            Resource::McpTool { server, tool } => {
                scope
                    .check_scope_only(check.agent, &format!("{server}/{tool}"))
                    .await?;
            }
        }
        self.enforce(check).await
    }

    /// The Cedar part of a check (after scope allowed): decides under the enforced set,
    /// audits a refusal or an approval, and evaluates the shadow set.
    pub(crate) async fn enforce(&self, check: &PolicyCheck<'_>) -> Result<()> {
        let shared = &self.gov.inner.shared;
        let snapshot = if shared.healthy() {
            shared.policies.get()
        } else {
            match load(&self.gov.inner.store).await {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let e = Error::from(e);
                    if e.is_unavailable() {
                        return Err(Error::PolicyUnavailable {
                            agent: check.agent.to_owned(),
                            cause: e.to_string(),
                        });
                    }
                    return Err(e);
                }
            }
        };
        if snapshot.enforced.is_none() && snapshot.shadow.is_none() {
            return Ok(());
        }
        let now = time::OffsetDateTime::now_utc();
        let enforced = snapshot
            .enforced
            .as_ref()
            .map(|l| decide_loaded(l, check, now));
        if let Some(shadow) = snapshot.shadow.as_ref() {
            let (s, s_hash) = decide_loaded(shadow, check, now);
            let e_effect = enforced.as_ref().map_or(Effect::Permit, |(d, _)| d.effect);
            if s.effect != e_effect {
                let diff = events::PolicyShadowDiff {
                    action: check.resource.action().to_owned(),
                    resource: check.resource.cedar_uid(),
                    enforced: e_effect.as_str().to_owned(),
                    enforced_hash: enforced.as_ref().map(|(_, h)| h.clone()),
                    enforced_policies: enforced
                        .as_ref()
                        .map(|(d, _)| d.determining.clone())
                        .unwrap_or_default(),
                    shadow: s.effect.as_str().to_owned(),
                    shadow_hash: s_hash,
                    shadow_policies: s.determining,
                };
                self.record(diff.event(check.agent), check).await;
            }
        }
        let Some((decision, hash)) = enforced else {
            return Ok(());
        };
        let target = format!("{} {}", check.resource.action(), check.resource.cedar_uid());
        let payload = events::PolicyDecision {
            action: check.resource.action().to_owned(),
            resource: check.resource.cedar_uid(),
            policy_set_hash: hash.clone(),
            determining_policies: decision.determining.clone(),
            approval: decision.approval.clone(),
        };
        match decision.effect {
            Effect::Permit => Ok(()),
            Effect::Forbid => {
                self.record(events::PolicyDenied(payload).event(check.agent), check)
                    .await;
                Err(Error::PolicyForbidden {
                    agent: check.agent.to_owned(),
                    target,
                    policy_set_hash: hash.into(),
                    policies: decision.determining.into(),
                    errors: decision.errors.into(),
                })
            }
            Effect::Approval => {
                self.record(
                    events::PolicyApprovalRequired(payload).event(check.agent),
                    check,
                )
                .await;
                Err(Error::PolicyApprovalRequired {
                    agent: check.agent.to_owned(),
                    target,
                    reason: decision.approval.unwrap_or_default(),
                    policy_set_hash: hash.into(),
                    policies: decision.determining.into(),
                })
            }
        }
    }

    async fn record(&self, event: gov_core::AuditEventBuilder, check: &PolicyCheck<'_>) {
        let event = if check.session.is_empty() {
            event
        } else {
            event.session(check.session)
        };
        let result = match event.build() {
            Ok(ev) => self.gov.audit().record(ev).await.map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(agent = check.agent, error = %e, "could not audit a policy decision (the decision stands)");
        }
    }
}

/// Decides under a loaded slot: the decision and the set's hash (a broken set refuses).
fn decide_loaded(
    loaded: &Loaded,
    check: &PolicyCheck<'_>,
    now: time::OffsetDateTime,
) -> (Decision, String) {
    match loaded {
        Loaded::Set { set, .. } => (
            set.decide(&Request {
                agent: check.agent,
                resource: check.resource,
                session: check.session,
                arguments: check.arguments,
                estimated_cost_micros: check.estimated_cost_micros,
                session_spend_micros: check.session_spend_micros,
                now,
            }),
            set.hash().to_owned(),
        ),
        Loaded::Broken {
            version,
            hash,
            reason,
        } => (
            Decision {
                effect: Effect::Forbid,
                determining: Vec::new(),
                approval: None,
                errors: vec![format!(
                    "the stored policy set version {version} cannot be used ({reason}); apply a valid one"
                )],
            },
            hash.clone(),
        ),
    }
}

/// "Approve and save as a rule": the next shadow version, built on the shadow set in force (or,
/// when there is none, on the enforced set) with a `@preapproved` permit of the request's
/// agent, tool and declared arguments. Proposed, not enforced: an admin reviews it
/// (`governance policy diff`, the shadow differences it logs) and applies it. The version and
/// the new policy's id.
pub(crate) async fn propose_rule(
    gov: &Governance,
    request: &gov_core::GateRecord,
    admin: &str,
    reason: &str,
) -> Result<(i64, String)> {
    let snapshot = load(&gov.inner.store).await?;
    let base = match (&snapshot.shadow, &snapshot.enforced) {
        (Some(Loaded::Set { set, .. }), _) | (None, Some(Loaded::Set { set, .. })) => set.clone(),
        (Some(Loaded::Broken { .. }), _) | (None, Some(Loaded::Broken { .. })) => {
            return Err(Error::ApprovalRefused {
                request_id: request.id,
                reason:
                    "the stored policy set cannot be used; apply a valid one before saving rules"
                        .into(),
            });
        }
        (None, None) => {
            return Err(Error::ApprovalRefused {
                request_id: request.id,
                reason: "saving an approval as a rule needs an enforced Cedar policy set (a set holding only the rule would refuse everything else)".into(),
            });
        }
    };
    let simple = request.id.simple().to_string();
    let id = format!("approved-{}", &simple[simple.len() - 12..]);
    let note = format!(
        "approval {} of {} by {admin}: {}",
        request.id,
        request.tool,
        reason.replace(['\n', '\r'], " ")
    );
    let args = serde_json::from_str::<serde_json::Value>(&request.args).ok();
    let set = base
        .with_preapproval(&id, &note, &request.agent_id, &request.tool, args.as_ref())
        .map_err(|e| Error::ApprovalRefused {
            request_id: request.id,
            reason: format!("the rule could not be added to the policy set: {e}"),
        })?;
    let version = Policies::new(gov)
        .apply(Slot::Shadow, Some(&set), admin)
        .await?;
    Ok((version, id))
}
