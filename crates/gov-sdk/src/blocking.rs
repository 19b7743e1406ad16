//! A blocking facade for code that is not async (a Flask-style worker, a CLI tool, a thread
//! pool). It owns a small Tokio runtime and runs the async SDK on it; every method blocks the
//! calling thread until the call completes.
//!
//! Do not call it from inside an async runtime: methods return [`Error::Config`] there instead
//! of blocking a runtime thread. Use the async [`crate::Governance`] in async code.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gov_core::{AuditEvent, BudgetStatus, GateRecord, MicroUsd, TokenUsage};

use crate::{
    Approval, ChainReport, Error, GovernanceBuilder, Logged, LoopVerdict, Reservation, Result,
    Settlement,
};

/// The blocking handle. Cheap to clone; share it between threads.
#[derive(Debug, Clone)]
pub struct Governance {
    rt: Arc<tokio::runtime::Runtime>,
    gov: crate::Governance,
}

fn outside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Config(
            "the blocking facade was called from inside an async runtime; use the async gov_sdk::Governance there".into(),
        ));
    }
    Ok(())
}

impl Governance {
    /// Connects with `builder` on a runtime of its own (two worker threads).
    pub fn connect(builder: GovernanceBuilder) -> Result<Self> {
        outside_runtime()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("governance")
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the governance runtime: {e}")))?;
        let gov = rt.block_on(builder.connect())?;
        Ok(Self {
            rt: Arc::new(rt),
            gov,
        })
    }

    /// Runs any future of the async SDK to completion (for calls without a method here).
    pub fn block_on<F: Future>(&self, f: F) -> Result<F::Output> {
        outside_runtime()?;
        Ok(self.rt.block_on(f))
    }

    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.block_on(f)?
    }

    /// The async handle, for [`Governance::block_on`].
    pub fn handle(&self) -> &crate::Governance {
        &self.gov
    }

    /// `audit().log`.
    pub fn log(&self, event: AuditEvent) -> Result<Logged> {
        self.run(self.gov.audit().log(event))
    }

    /// `audit().verify_chain`.
    pub fn verify_chain(&self) -> Result<ChainReport> {
        self.run(self.gov.audit().verify_chain())
    }

    /// `scope().check`.
    pub fn check_scope(&self, agent: &str, tool: &str) -> Result<()> {
        self.run(self.gov.scope().check(agent, tool))
    }

    /// `scope().filter_tools`.
    pub fn filter_tools(&self, agent: &str, offered: &[String]) -> Result<Vec<String>> {
        self.run(self.gov.scope().filter_tools(agent, offered))
    }

    /// `cost().check_or_raise`.
    pub fn check_or_raise(&self, agent: &str, session: &str) -> Result<BudgetStatus> {
        self.run(self.gov.cost().check_or_raise(agent, session))
    }

    /// `cost().reserve`.
    pub fn reserve(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        input_tokens: u64,
        max_tokens: Option<u64>,
    ) -> Result<Reservation> {
        self.run(
            self.gov
                .cost()
                .reserve(agent, session, model, input_tokens, max_tokens),
        )
    }

    /// `Reservation::settle`.
    pub fn settle(&self, reservation: Reservation, usage: TokenUsage) -> Result<Settlement> {
        self.run(reservation.settle(usage))
    }

    /// `Reservation::release`.
    pub fn release(&self, reservation: Reservation) -> Result<()> {
        self.run(reservation.release())
    }

    /// `cost().track`.
    pub fn track(
        &self,
        agent: &str,
        session: &str,
        model: &str,
        usage: TokenUsage,
    ) -> Result<MicroUsd> {
        self.run(self.gov.cost().track(agent, session, model, usage))
    }

    /// `presence().heartbeat`.
    pub fn heartbeat(&self, agent: &str) -> Result<()> {
        self.run(self.gov.presence().heartbeat(agent))
    }

    /// `presence().assert_not_halted`.
    pub fn assert_not_halted(&self, agent: &str) -> Result<()> {
        self.run(self.gov.presence().assert_not_halted(agent))
    }

    /// `loops().record`.
    pub fn record_call(
        &self,
        agent: &str,
        session: &str,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<LoopVerdict> {
        self.run(self.gov.loops().record(agent, session, tool, args))
    }

    /// `gates().request`.
    pub fn request_approval(
        &self,
        agent: &str,
        session: Option<&str>,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<GateRecord> {
        self.run(self.gov.gates().request(agent, session, tool, args))
    }

    /// `gates().wait_for`.
    pub fn wait_for(&self, id: uuid::Uuid, timeout: Duration) -> Result<Approval> {
        self.run(self.gov.gates().wait_for(id, timeout))
    }

    /// `gates().poll` (non-blocking on the decision: `ApprovalPending` while undecided).
    pub fn poll(&self, id: uuid::Uuid) -> Result<Approval> {
        self.run(self.gov.gates().poll(id))
    }

    /// `gates().consume`.
    pub fn consume(
        &self,
        approval: &Approval,
        agent: &str,
        session: Option<&str>,
        tool: &str,
        args: &serde_json::Value,
    ) -> Result<()> {
        self.run(
            self.gov
                .gates()
                .consume(approval, agent, session, tool, args),
        )
    }
}

impl GovernanceBuilder {
    /// Connects and returns the blocking facade.
    pub fn connect_blocking(self) -> Result<Governance> {
        Governance::connect(self)
    }
}
