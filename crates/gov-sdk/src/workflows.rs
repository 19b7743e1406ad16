//! Approval workflows: how requests are approved (quorum, approver group, escalation, timeout),
//! which requests follow which workflow (routes by agent and tool), operators' groups, the sweep
//! that escalates and expires requests on the store's clock, and the deliveries a notifier
//! (`governance notify`) works through.
//!
//! Everything here is an operator path: on Postgres the application role (an agent's
//! credentials) may neither read nor change workflows, routes, groups, votes or deliveries, and
//! cannot escalate or expire a request. A request's workflow is resolved by the database when it
//! is asked and copied into the request, so a later change of a workflow never weakens a
//! pending request.

use gov_core::events::{self, SystemEvent as _};
use gov_core::{GateRecord, WorkflowRoute, WorkflowSpec};
use gov_store::{
    GateTransition, NewNotification, NotificationOutcome, NotificationRecord, StoreError,
};

use crate::{Error, Governance, Result};

/// The most distinct approvals a workflow may ask for.
pub const MAX_QUORUM: u32 = 10;

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Requests escalated now (as they were before).
    pub escalated: Vec<GateRecord>,
    /// Requests denied now for expiring undecided (as they were before).
    pub expired: Vec<GateRecord>,
}

/// Approval workflows of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Workflows<'g> {
    gov: &'g Governance,
}

fn name_ok(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {name:?} must be 1 to 64 letters, digits or ._:@-"
        )))
    }
}

fn refused(e: StoreError, what: &str) -> Error {
    match e {
        StoreError::PermissionDenied(_) => Error::Config(format!(
            "this connection may not {what}: use an operator connection (the schema owner's URL); the application role never can"
        )),
        other => other.into(),
    }
}

impl<'g> Workflows<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Adds or replaces a workflow, recorded as made by `by`. Requests already asked keep the
    /// workflow they were asked under.
    pub async fn put(&self, w: &WorkflowSpec, by: &str) -> Result<()> {
        name_ok("a workflow name", &w.name)?;
        if !(1..=MAX_QUORUM).contains(&w.quorum) {
            return Err(Error::Config(format!(
                "a quorum is 1 to {MAX_QUORUM} distinct approvers"
            )));
        }
        for g in [&w.approver_group, &w.escalate_to].into_iter().flatten() {
            name_ok("a group name", g)?;
        }
        if w.escalate_to.is_some() != w.escalate_after_secs.is_some() {
            return Err(Error::Config(
                "escalation needs both the group to escalate to and the time after which".into(),
            ));
        }
        if w.escalate_after_secs == Some(0) || w.timeout_secs == Some(0) {
            return Err(Error::Config("times are whole seconds above 0".into()));
        }
        if w.quorum > 1 && w.approver_group.is_none() && w.escalate_to.is_some() {
            // Fine: any operator may approve, and the escalation only notifies.
        }
        self.gov
            .inner
            .store
            .put_workflow(w, by)
            .await
            .map_err(|e| refused(e, "change workflows"))
    }

    /// Removes a workflow no route names; whether it existed.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        self.gov
            .inner
            .store
            .delete_workflow(name)
            .await
            .map_err(|e| refused(e, "change workflows"))
    }

    /// Every workflow, by name.
    pub async fn list(&self) -> Result<Vec<WorkflowSpec>> {
        self.gov
            .inner
            .store
            .workflows()
            .await
            .map_err(|e| refused(e, "read workflows"))
    }

    /// Routes requests of `agent` (or `*`) for `tool` (or `*`) to a workflow; the most specific
    /// route wins when a request is asked.
    pub async fn route(&self, agent: &str, tool: &str, workflow: &str) -> Result<()> {
        if agent != "*" {
            gov_core::AgentId::new(agent)?;
        }
        if tool.is_empty() || tool.len() > 256 {
            return Err(Error::Config("a tool name is 1 to 256 bytes".into()));
        }
        if !self.list().await?.iter().any(|w| w.name == workflow) {
            return Err(Error::Config(format!("no workflow named {workflow}")));
        }
        self.gov
            .inner
            .store
            .put_route(&WorkflowRoute {
                agent_id: agent.to_owned(),
                tool: tool.to_owned(),
                workflow: workflow.to_owned(),
            })
            .await
            .map_err(|e| refused(e, "change routes"))
    }

    /// Removes a route; whether it existed.
    pub async fn unroute(&self, agent: &str, tool: &str) -> Result<bool> {
        self.gov
            .inner
            .store
            .delete_route(agent, tool)
            .await
            .map_err(|e| refused(e, "change routes"))
    }

    /// Every route, by agent then tool.
    pub async fn routes(&self) -> Result<Vec<WorkflowRoute>> {
        self.gov
            .inner
            .store
            .routes()
            .await
            .map_err(|e| refused(e, "read routes"))
    }

    /// Replaces the groups an operator is in.
    pub async fn set_groups(&self, username: &str, groups: &[String]) -> Result<()> {
        for g in groups {
            name_ok("a group name", g)?;
        }
        let known = self
            .gov
            .inner
            .store
            .set_operator_groups(username, groups)
            .await
            .map_err(|e| refused(e, "change groups"))?;
        if known {
            Ok(())
        } else {
            Err(Error::Config(format!("no operator named {username}")))
        }
    }

    /// Every (group, operator), by group then operator.
    pub async fn groups(&self) -> Result<Vec<(String, String)>> {
        self.gov
            .inner
            .store
            .operator_groups()
            .await
            .map_err(|e| refused(e, "read groups"))
    }

    /// Escalates the pending requests whose escalation time came (`gate.escalated`) and denies
    /// those that expired undecided (`gate.expired`), each with its event in one transaction, on
    /// the store's clock. Run by `governance notify` and the console; idempotent, and safe to run
    /// from several processes at once.
    pub async fn sweep(&self) -> Result<Sweep> {
        let inner = &self.gov.inner;
        let (escalate, expire) = inner
            .store
            .due_gates()
            .await
            .map_err(|e| refused(e, "escalate or expire requests"))?;
        let mut out = Sweep::default();
        for (list, t) in [
            (escalate, GateTransition::Escalate),
            (expire, GateTransition::Expire),
        ] {
            for g in list {
                let b = match t {
                    GateTransition::Escalate => events::GateEscalated {
                        request_id: g.id,
                        tool: g.tool.clone(),
                        escalate_to: g.workflow.escalate_to.clone().unwrap_or_default(),
                        workflow: g.workflow.name.clone(),
                    }
                    .event(&g.agent_id),
                    GateTransition::Expire => events::GateExpired {
                        request_id: g.id,
                        tool: g.tool.clone(),
                        approvals: g.workflow.approvals,
                        quorum: g.workflow.quorum,
                    }
                    .event(&g.agent_id),
                };
                let b = match &g.session_id {
                    Some(s) => b.session(s),
                    None => b,
                };
                let event = b.build()?;
                inner.audit.ensure_writable(event.chain_id.as_str()).await?;
                let sealer = inner.audit.sealer();
                let seal = |r: &mut gov_core::AuditRecord| sealer.seal(r);
                let outcome = inner
                    .store
                    .transition_gate(g.id, t, &event, sealer.key().key_id(), &seal)
                    .await
                    .map_err(|e| refused(e, "escalate or expire requests"))?;
                if outcome == "ok" {
                    match t {
                        GateTransition::Escalate => out.escalated.push(g),
                        GateTransition::Expire => out.expired.push(g),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Requests asked, escalated or expired at or after `since`, and those still pending.
    pub async fn recent(&self, since: time::OffsetDateTime) -> Result<Vec<GateRecord>> {
        self.gov
            .inner
            .store
            .recent_gates(since)
            .await
            .map_err(|e| refused(e, "read requests"))
    }

    /// Queues deliveries (each request, event and channel once, however often asked); how many
    /// were new.
    pub async fn enqueue(&self, rows: &[NewNotification]) -> Result<u64> {
        self.gov
            .inner
            .store
            .enqueue_notifications(rows)
            .await
            .map_err(|e| refused(e, "queue notifications"))
    }

    /// Takes due deliveries, leased for `lease`, the attempt counted.
    pub async fn claim(
        &self,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        self.gov
            .inner
            .store
            .claim_notifications(lease, limit)
            .await
            .map_err(|e| refused(e, "deliver notifications"))
    }

    /// Records how a delivery attempt ended.
    pub async fn finish(&self, id: i64, outcome: &NotificationOutcome) -> Result<()> {
        self.gov
            .inner
            .store
            .finish_notification(id, outcome)
            .await
            .map_err(|e| refused(e, "deliver notifications"))
    }

    /// Deliveries, newest first: all, or those `pending`, `delivered` or `dead`.
    pub async fn notifications(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>> {
        self.gov
            .inner
            .store
            .notifications(status, limit)
            .await
            .map_err(|e| refused(e, "read notifications"))
    }
}
