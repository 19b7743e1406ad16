//! One call in flight on the guarded path: the gates and `llm.request` when it begins, then
//! exactly one ending: settled (`llm.response`), failed (`llm.error`) or dropped
//! (`llm.cancelled`). The failed and dropped endings release the reservation.
//!
//! A settled call's receipt is worked out before its settlement (the price table gives the
//! cost), so the settlement can run after the answer is returned, in a task counted by the
//! handle's `Settlements` (the default), or before it. A failed call releases before its error
//! is returned, so a retry finds the budget back; a dropped call releases in a counted task.
//!
//! Spans: one `gen_ai` span per call named `{operation} {model}` with the OpenTelemetry GenAI
//! attributes (`gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.request.max_tokens`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
//! `gen_ai.usage.output_tokens`, `gen_ai.response.finish_reasons`), and inside it one
//! `governance.gate` span per gate decision (halt, scope, budget).

use std::time::Instant;

use gov_core::events::{self, SystemEvent};
use gov_core::{AgentId, AuditEvent, EventId, MicroUsd, SessionId, TokenUsage};
use tracing::Instrument as _;
use tracing::field::Empty;

use super::{ClientInfo, LlmCall, PartialUsage, Receipt};
use crate::cost::Reservation;
use crate::{Error, Governance, Result};

/// Why a call failed, in terms safe to record: never a URL, a key or provider free text.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) kind: &'static str,
    pub(crate) status: Option<u16>,
    pub(crate) error_type: Option<String>,
    pub(crate) retry_after_s: Option<u64>,
}

impl Failure {
    pub(crate) fn new(kind: &'static str) -> Self {
        Self {
            kind,
            status: None,
            error_type: None,
            retry_after_s: None,
        }
    }

    /// A generic guard's own error, by its text (truncated to 200 characters).
    pub(crate) fn client(text: String) -> Self {
        Self {
            error_type: Some(text.chars().take(200).collect()),
            ..Self::new("client_error")
        }
    }
}

/// Runs one gate inside its own span, recording the decision.
async fn gate<T>(name: &'static str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let span = tracing::info_span!(
        "governance.gate",
        governance.gate.name = name,
        governance.gate.decision = Empty,
        error.type = Empty,
    );
    let out = f.instrument(span.clone()).await;
    match &out {
        Ok(_) => {
            span.record("governance.gate.decision", "allow");
        }
        Err(e) => {
            span.record("governance.gate.decision", "deny");
            span.record("error.type", error_type(e));
        }
    }
    out
}

fn error_type(e: &Error) -> &'static str {
    match e {
        Error::Halted { .. } => "halted",
        Error::HaltStateUnknown { .. } => "halt_state_unknown",
        Error::ScopeViolation { .. } => "scope_violation",
        Error::BudgetExceeded { .. } => "budget_exceeded",
        Error::Provider { .. } => "provider_error",
        e if e.is_unavailable() => "storage_unavailable",
        _ => "error",
    }
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A call that passed the gates and has not ended yet.
pub(crate) struct Flight {
    gov: Governance,
    provider: String,
    call: LlmCall,
    /// `max_tokens` in force: declared, else the configured default.
    max_tokens: u64,
    reservation: Option<Reservation>,
    request_event: EventId,
    started: Instant,
    span: tracing::Span,
    usage: PartialUsage,
    finish_reason: Option<String>,
    response_model: Option<String>,
    chunks: u64,
    ended: bool,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("provider", &self.provider)
            .field("call", &self.call)
            .field("request_event", &self.request_event)
            .finish_non_exhaustive()
    }
}

impl Flight {
    /// Halt, scope and budget gates, then `llm.request`. Nothing reaches the provider unless
    /// this returns `Ok`.
    pub(crate) async fn begin(
        gov: &Governance,
        client: &ClientInfo,
        call: LlmCall,
    ) -> Result<Self> {
        AgentId::new(&call.agent)?;
        SessionId::new(&call.session)?;
        let provider = client.provider.clone();
        let span = tracing::info_span!(
            "gen_ai",
            otel.name = format!("{} {}", call.operation, call.model),
            otel.kind = "client",
            otel.status_code = Empty,
            gen_ai.operation.name = %call.operation,
            gen_ai.provider.name = %provider,
            gen_ai.request.model = %call.model,
            gen_ai.request.max_tokens = Empty,
            gen_ai.response.model = Empty,
            gen_ai.response.finish_reasons = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            governance.agent.id = %call.agent,
            governance.session.id = %call.session,
            governance.outcome = Empty,
            governance.cost.micros = Empty,
            governance.usage.estimated = Empty,
            error.type = Empty,
        );
        // Declared, else the call's own default (a gateway's); `CostConfig`'s comes last.
        let limit = call.max_tokens.or(call.default_max_tokens);
        let max_tokens = limit.or(gov.config().cost.default_max_tokens).unwrap_or(0);
        // The reservation and `llm.request` commit in one transaction: the event is durable
        // before anything reaches the provider, and a refused reservation logs none.
        let request = |reserved: MicroUsd| {
            Ok(events::LlmRequest {
                provider: provider.clone(),
                wrapper: client.wrapper.to_owned(),
                operation: call.operation.clone(),
                model: call.model.clone(),
                stream: call.stream,
                max_tokens,
                max_tokens_declared: call.max_tokens.is_some(),
                input_tokens_estimate: call.input_tokens,
                reserved_micros: reserved.0,
            }
            .event(&call.agent)
            .session(&call.session)
            .build()?)
        };
        let begun = async {
            gate("halt", gov.presence().assert_not_halted(&call.agent)).await?;
            gate(
                "scope",
                gov.scope().check_model(&call.agent, &provider, &call.model),
            )
            .await?;
            gate(
                "budget",
                gov.cost().reserve_logged(
                    &call.agent,
                    &call.session,
                    &call.model,
                    call.input_tokens,
                    limit,
                    request,
                ),
            )
            .await
        }
        .instrument(span.clone())
        .await;
        let (reservation, request_event) = match begun {
            Ok(r) => r,
            Err(e) => {
                span.record("governance.outcome", "refused");
                span.record("error.type", error_type(&e));
                span.record("otel.status_code", "ERROR");
                return Err(e);
            }
        };
        span.record("gen_ai.request.max_tokens", max_tokens);
        Ok(Self {
            gov: gov.clone(),
            provider,
            call,
            max_tokens,
            reservation: Some(reservation),
            request_event,
            started: Instant::now(),
            span,
            usage: PartialUsage::default(),
            finish_reason: None,
            response_model: None,
            chunks: 0,
            ended: false,
        })
    }

    /// The call's span, for the adapters' own work.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Takes in what one stream item says about usage, finish reason and model.
    pub(crate) fn observe(
        &mut self,
        usage: Option<PartialUsage>,
        finish_reason: Option<&str>,
        model: Option<&str>,
    ) {
        self.chunks += 1;
        if let Some(u) = usage {
            self.usage.merge(u);
        }
        if let Some(r) = finish_reason {
            self.finish_reason = Some(r.to_owned());
        }
        if let Some(m) = model
            && !m.is_empty()
        {
            self.response_model = Some(m.to_owned());
        }
    }

    /// Works out the receipt from the real usage (or the reservation's projection, marked
    /// estimated, when the usage is incomplete), then settles and audits `llm.response`: in a
    /// task counted by the handle when `settle_in_background` is on (the default), so the
    /// receipt returns without waiting for storage; before returning otherwise.
    pub(crate) async fn finish(
        mut self,
        usage: Option<PartialUsage>,
        finish_reason: Option<String>,
        response_model: Option<String>,
    ) -> Receipt {
        self.ended = true;
        let latency_ms = ms(self.started);
        if let Some(u) = usage {
            self.usage.merge(u);
        }
        if finish_reason.is_some() {
            self.finish_reason = finish_reason;
        }
        if response_model.is_some() {
            self.response_model = response_model;
        }
        let (usage, estimated) = match (self.usage.input_tokens, self.usage.output_tokens) {
            (Some(input), Some(output)) => (
                TokenUsage {
                    input_tokens: input,
                    output_tokens: output,
                    cached_input_tokens: self.usage.cached_input_tokens.unwrap_or(0),
                },
                false,
            ),
            // No (complete) usage: settle at what was reserved for.
            (input, _) => (
                TokenUsage {
                    input_tokens: input.unwrap_or(self.call.input_tokens),
                    output_tokens: self.max_tokens,
                    cached_input_tokens: 0,
                },
                true,
            ),
        };
        // The cost is what settlement computes from the same price table (the reservation
        // proved the model is priced), so the llm.response event can be built before the
        // settlement and commit with it.
        let reservation = self.reservation.take();
        let reserved = reservation
            .as_ref()
            .map_or(MicroUsd(0), Reservation::reserved);
        let cost = self
            .gov
            .cost()
            .price(&self.call.model)
            .map(|p| MicroUsd(i64::try_from(p.cost_micros(&usage)).unwrap_or(i64::MAX)))
            .unwrap_or_default();
        let c = &self.call;
        let event = events::LlmResponse {
            provider: self.provider.clone(),
            model: c.model.clone(),
            response_model: self.response_model.clone(),
            stream: c.stream,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_input_tokens: usage.cached_input_tokens,
            estimated,
            cost_micros: cost.0,
            reserved_micros: reserved.0,
            latency_ms,
            finish_reason: self.finish_reason.clone(),
        }
        .event(&c.agent)
        .session(&c.session)
        .parent(self.request_event)
        .build();
        let response_event = match &event {
            Ok(ev) => ev.event_id,
            Err(_) => EventId::new_v7(),
        };
        let ending = Ending {
            gov: self.gov.clone(),
            agent: c.agent.clone(),
            session: c.session.clone(),
            model: c.model.clone(),
        };
        let settle = ending.settle(reservation, event, usage);
        if self.gov.config().llm.settle_in_background
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let span = tracing::info_span!(
                parent: None,
                "governance.settle",
                governance.agent.id = %c.agent,
                governance.session.id = %c.session,
            );
            span.follows_from(&self.span);
            self.gov
                .inner
                .llm
                .settlements
                .spawn(&rt, settle.instrument(span));
        } else {
            settle.await;
        }
        let span = &self.span;
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
        if let Some(m) = &self.response_model {
            span.record("gen_ai.response.model", m.as_str());
        }
        if let Some(r) = &self.finish_reason {
            span.record("gen_ai.response.finish_reasons", r.as_str());
        }
        span.record("governance.cost.micros", cost.0);
        span.record("governance.usage.estimated", estimated);
        span.record("governance.outcome", "response");
        Receipt {
            usage,
            estimated,
            cost,
            reserved,
            latency_ms,
            finish_reason: self.finish_reason.clone(),
            request_event: self.request_event,
            response_event,
        }
    }

    /// Releases the reservation, audits `llm.error` and returns the error for the caller.
    pub(crate) async fn fail(mut self, f: Failure) -> Error {
        self.ended = true;
        let latency_ms = ms(self.started);
        let reservation = self.reservation.take();
        let released = reservation
            .as_ref()
            .map_or(MicroUsd(0), Reservation::reserved);
        let c = &self.call;
        let event = events::LlmError {
            provider: self.provider.clone(),
            model: c.model.clone(),
            stream: c.stream,
            kind: f.kind.to_owned(),
            status: f.status,
            error_type: f.error_type.clone(),
            retry_after_s: f.retry_after_s,
            chunks: self.chunks,
            released_micros: released.0,
            latency_ms,
        }
        .event(&c.agent)
        .session(&c.session)
        .parent(self.request_event)
        .build();
        release_and_log(
            &self.gov,
            reservation,
            event,
            &c.agent,
            events::EventKind::LlmError.as_str(),
        )
        .await;
        self.span.record("governance.outcome", "error");
        self.span.record("error.type", f.kind);
        self.span.record("otel.status_code", "ERROR");
        Error::Provider {
            provider: self.provider.clone(),
            kind: f.kind,
            status: f.status,
            error_type: f.error_type,
            retry_after_s: f.retry_after_s,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Dropped before it ended: the caller gave up on the call (a cancelled task, a
        // timeout, a stream dropped mid-way). Release the budget, then record it.
        self.span.record("governance.outcome", "cancelled");
        self.span.record("error.type", "cancelled");
        let reservation = self.reservation.take();
        let c = &self.call;
        let event = events::LlmCancelled {
            provider: self.provider.clone(),
            model: c.model.clone(),
            stream: c.stream,
            chunks: self.chunks,
            released_micros: reservation.as_ref().map_or(0, |r| r.reserved().0),
            latency_ms: ms(self.started),
        }
        .event(&c.agent)
        .session(&c.session)
        .parent(self.request_event)
        .build();
        let (gov, agent) = (self.gov.clone(), c.agent.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%agent, "an LLM call was dropped outside a Tokio runtime: llm.cancelled is not recorded and its reservation will expire");
            return;
        };
        let settlements = gov.inner.llm.settlements.clone();
        settlements.spawn(&rt, async move {
            release_and_log(
                &gov,
                reservation,
                event,
                &agent,
                events::EventKind::LlmCancelled.as_str(),
            )
            .await;
        });
    }
}

/// Who a settled call was for, owned, so its settlement can outlive the call.
struct Ending {
    gov: Governance,
    agent: String,
    session: String,
    model: String,
}

impl Ending {
    /// Settles with `usage` and logs `llm.response` (`event`): in one statement when the store
    /// can take both; else, or when that fails, the event as observation and the spend tracked
    /// (both spooled when storage is out of reach). Never fails: an unsettled reservation
    /// expires.
    async fn settle(
        self,
        reservation: Option<Reservation>,
        event: std::result::Result<AuditEvent, gov_core::EventError>,
        usage: TokenUsage,
    ) {
        match (reservation, event) {
            (Some(r), Ok(ev)) if r.commits_with_event() => {
                let id = r.id();
                match r.settle_logged(usage, &ev).await {
                    Ok(Ok(_)) => {}
                    // The event is in the chain; the reservation was closed already.
                    Ok(Err(e)) => {
                        let warned = e.to_string();
                        self.settle_failed(id, usage, &warned, None).await;
                    }
                    // Nothing was committed, or all was and the reply was lost: the event is
                    // observation (skipped on replay when it is in the chain already) and the
                    // settlement is written again as a record the database applies once, both
                    // spooled at once when storage is out of reach (the event first, so the
                    // settlement queues behind it without waiting for storage).
                    Err(e) => {
                        let warned = e.to_string();
                        let cause = e.is_unavailable().then(|| {
                            Error::from(gov_store::StoreError::Unavailable(
                                "a settlement's answer did not arrive".into(),
                            ))
                        });
                        log_after(
                            &self.gov,
                            ev,
                            &self.agent,
                            events::EventKind::LlmResponse.as_str(),
                            e,
                        )
                        .await;
                        self.settle_failed(id, usage, &warned, cause).await;
                    }
                }
            }
            (reservation, event) => {
                let settle = async {
                    if let Some(r) = reservation {
                        let id = r.id();
                        if let Err(e) = r.settle(usage).await {
                            let warned = e.to_string();
                            self.settle_failed(id, usage, &warned, Some(e)).await;
                        }
                    }
                };
                let append = async {
                    match event {
                        Ok(ev) => {
                            log(
                                &self.gov,
                                ev,
                                &self.agent,
                                events::EventKind::LlmResponse.as_str(),
                            )
                            .await
                        }
                        Err(e) => {
                            tracing::warn!(agent = %self.agent, error = %e, "could not build the llm.response event");
                        }
                    }
                };
                tokio::join!(settle, append);
            }
        }
    }

    /// Settlement of reservation `id` failed (`warned`; `cause` when storage was out of reach)
    /// or found the reservation closed: the settlement is written again as a record the
    /// database applies once (spooled at once when storage is out of reach), so a settlement
    /// that committed with its reply lost is not counted twice.
    async fn settle_failed(
        &self,
        id: uuid::Uuid,
        usage: TokenUsage,
        warned: &str,
        cause: Option<Error>,
    ) {
        let agent = &self.agent;
        tracing::warn!(%agent, reservation = %id, error = %warned, "could not settle an LLM call's reservation; the settlement is retried once storage answers");
        if let Err(e) = self
            .gov
            .cost()
            .settle_again(id, agent, &self.session, &self.model, usage, cause)
            .await
        {
            tracing::warn!(%agent, error = %e, "could not record an LLM call's spend");
        }
    }
}

/// Releases the reservation of a call that ended without an answer and logs its ending event
/// (`llm.error`, `llm.cancelled`), in one transaction when the store can take both; neither
/// failure is the caller's error (an unreleased reservation expires).
async fn release_and_log(
    gov: &Governance,
    reservation: Option<Reservation>,
    event: std::result::Result<AuditEvent, gov_core::EventError>,
    agent: &str,
    kind: &str,
) {
    match (reservation, event) {
        (Some(r), Ok(ev)) if r.commits_with_event() => {
            if let Err(e) = r.release_logged(&ev).await {
                tracing::warn!(agent, kind, error = %e, "could not release the reservation of an LLM call that ended without an answer; it will expire");
                log_after(gov, ev, agent, kind, e).await;
            }
        }
        (reservation, event) => {
            if let Some(r) = reservation
                && let Err(e) = r.release().await
            {
                tracing::warn!(agent, kind, error = %e, "could not release the reservation of an LLM call that ended without an answer; it will expire");
            }
            match event {
                Ok(ev) => log(gov, ev, agent, kind).await,
                Err(e) => {
                    tracing::warn!(agent, kind, error = %e, "could not build an LLM call event")
                }
            }
        }
    }
}

/// Audits an event whose transaction with a budget change failed (`cause`): spooled at once
/// when storage is out of reach; observation never fails the call.
async fn log_after(gov: &Governance, event: AuditEvent, agent: &str, kind: &str, cause: Error) {
    if let Err(e) = gov.audit().log_after(event, cause).await {
        tracing::warn!(agent, kind, error = %e, "could not audit an LLM call event");
    }
}

/// Audits an event of the guarded path; observation never fails the call.
async fn log(gov: &Governance, event: AuditEvent, agent: &str, kind: &str) {
    if let Err(e) = gov.audit().record(event).await {
        tracing::warn!(agent, kind, error = %e, "could not audit an LLM call event");
    }
}
