//! Governed LLM calls: one guarded path for every call, adapters for OpenAI-compatible chat
//! completions and Anthropic messages, and the registry of wrapped clients (coverage).
//!
//! Every call goes through the same steps, in order: the halt check, the scope check (the agent
//! may use the provider, or this model of it; see [`crate::Scope::check_model`]), a budget
//! reservation projected from the declared `max_tokens` (or `CostConfig::default_max_tokens`),
//! the `llm.request` audit event, the call itself, settlement with the real usage and the
//! `llm.response` event. The reservation commits with `llm.request`, and the settlement with
//! `llm.response`, in one statement each (Postgres) or one transaction each (SQLite). The
//! caller gets the answer as soon as the provider gave it: the settlement runs in a task of its
//! own ([`Llm::settled`] waits for them; `settle_in_background(false)` settles before
//! returning). A refused call never reaches the provider. A call that fails is audited
//! as `llm.error`, one whose future or stream is dropped before it ends as `llm.cancelled`; both
//! release their reservation. When a call reports no usage, it is settled at its reservation
//! (the estimated input plus `max_tokens` out) and its `llm.response` says `estimated: true`.
//!
//! This module must not let a request reach a provider before the gates pass, and must never
//! store or print an API key, a hostname or a URL (hosts are kept as salted digests only).
//!
//! ```no_run
//! # async fn run(gov: gov_sdk::Governance, key: String) -> Result<(), gov_sdk::Error> {
//! use gov_sdk::llm::openai::{ChatMessage, ChatRequest};
//! use gov_sdk::llm::{Completion, LlmCall};
//!
//! // An adapter: built once, registered in the coverage registry.
//! let openai = gov.llm().openai("https://api.openai.com").api_key(key).build().await?;
//! let req = ChatRequest::new("gpt-4o-mini", vec![ChatMessage::user("Hello")]).max_tokens(200);
//! let reply = openai.chat("billing-agent", "s-42", req.clone()).await?;
//! println!("{} ({} spent)", reply.output.text(), reply.receipt.cost);
//!
//! let mut stream = openai.chat_stream("billing-agent", "s-42", req).await?;
//! while let Some(chunk) = stream.next().await {
//!     print!("{}", chunk?.text());
//! }
//!
//! // Any other client: make the call inside `guard` and report its usage.
//! let other = gov.llm().client("bedrock").host("bedrock-runtime.eu-west-1.amazonaws.com").build().await?;
//! let call = LlmCall::new("billing-agent", "s-42", "claude-sonnet-4").max_tokens(200).input_tokens(50);
//! let answer = other
//!     .guard(call, || async {
//!         // ... the client's own call ...
//!         Ok::<_, std::io::Error>(Completion::new("hi").usage(gov_sdk::TokenUsage {
//!             input_tokens: 48,
//!             output_tokens: 2,
//!             cached_input_tokens: 0,
//!         }))
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

mod flight;
mod settlements;
mod stream;

#[cfg(feature = "llm-http")]
pub mod anthropic;
#[cfg(feature = "async-openai")]
pub mod async_openai;
#[cfg(feature = "llm-http")]
mod http;
#[cfg(feature = "llm-http")]
pub mod openai;
#[cfg(feature = "rig")]
pub mod rig;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gov_core::events::{self, SystemEvent};
use gov_core::{EventId, MicroUsd, TokenUsage};
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::{Error, Governance, Result};

pub use stream::{GuardedStream, PartialUsage, StreamChunk};

pub(crate) use flight::{Failure, Flight};

/// Settings of the LLM layer.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// Warn (once, through `tracing`) when a handle has wrapped no LLM client by the end of
    /// `no_wrapper_grace` after connecting: calls made by clients that were never wrapped are
    /// invisible to every gate. Default on.
    pub warn_on_no_wrappers: bool,
    /// How long after `connect` a handle may go without wrapping a client before the warning.
    /// Default 60 s.
    pub no_wrapper_grace: Duration,
    /// Settle a call (and commit its `llm.response`) in a task of its own, after the answer is
    /// returned, instead of before. Default on: the caller waits for the reservation only. Until
    /// the task has run, the call's whole reservation stays held, so budgets err on the safe
    /// side; [`Llm::settled`] waits for the tasks. See docs/configuration.md.
    pub settle_in_background: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            warn_on_no_wrappers: true,
            no_wrapper_grace: Duration::from_secs(60),
            settle_in_background: true,
        }
    }
}

/// Per-handle state of the LLM layer.
#[derive(Debug)]
pub(crate) struct LlmState {
    host_key: gov_audit::DerivedKey,
    wrapped: AtomicUsize,
    /// Settlements still running after their calls returned.
    pub(crate) settlements: Arc<settlements::Settlements>,
}

impl LlmState {
    pub(crate) fn new(secret: &gov_audit::AuditSecret) -> Self {
        Self {
            host_key: secret.coverage_host_key(),
            wrapped: AtomicUsize::new(0),
            settlements: Arc::default(),
        }
    }
}

/// The warning `warn_on_no_wrappers` logs, or `None` when a client is wrapped or the warning
/// is off.
fn no_wrapper_warning(gov: &Governance) -> Option<&'static str> {
    let cfg = &gov.inner.config.llm;
    (cfg.warn_on_no_wrappers && gov.inner.llm.wrapped.load(Ordering::Acquire) == 0).then_some(
        "no LLM client is wrapped by this governance handle: LLM calls made by unwrapped clients \
         bypass every gate (halt, scope, budget, audit); build clients with gov.llm().openai(..), \
         .anthropic(..) or .client(..), or turn this warning off with warn_on_no_wrappers(false)",
    )
}

/// Waits for the grace period, then warns when the handle still wraps no client.
pub(crate) async fn watch_wrappers(inner: std::sync::Weak<crate::Inner>) {
    let Some(grace) = inner.upgrade().map(|i| i.config.llm.no_wrapper_grace) else {
        return;
    };
    tokio::time::sleep(grace).await;
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let gov = Governance { inner };
    if let Some(w) = no_wrapper_warning(&gov) {
        tracing::warn!("{w}");
    }
}

/// One LLM call as the gates see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmCall {
    /// The agent making the call.
    pub agent: String,
    /// Its session (budgets are per session and per day).
    pub session: String,
    /// The model asked for (priced by `CostConfig::prices`; scope checks `provider:model`).
    pub model: String,
    /// The most output tokens the call may produce; `None` uses `default_max_tokens`, else
    /// `CostConfig::default_max_tokens`, and with none of them the call is refused.
    pub max_tokens: Option<u64>,
    /// The limit reserved for when the call declares no `max_tokens`, in place of
    /// `CostConfig::default_max_tokens` (a gateway's own default); `llm.request` still says
    /// the limit was not declared.
    pub default_max_tokens: Option<u64>,
    /// Input tokens expected (an estimate: the reservation is projected from it; settlement
    /// uses the real count).
    pub input_tokens: u64,
    /// Whether the answer streams.
    pub stream: bool,
    /// The GenAI operation (`chat` by default).
    pub operation: String,
}

impl LlmCall {
    /// A chat call by `agent` in `session` to `model`, declaring nothing else yet.
    pub fn new(
        agent: impl Into<String>,
        session: impl Into<String>,
        model: impl Into<String>,
    ) -> Self {
        Self {
            agent: agent.into(),
            session: session.into(),
            model: model.into(),
            max_tokens: None,
            default_max_tokens: None,
            input_tokens: 0,
            stream: false,
            operation: "chat".to_owned(),
        }
    }

    /// Declares `max_tokens`.
    #[must_use]
    pub fn max_tokens(mut self, n: u64) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the limit reserved for when the call declares no `max_tokens` (the field
    /// `default_max_tokens`).
    #[must_use]
    pub fn default_max_tokens(mut self, n: u64) -> Self {
        self.default_max_tokens = Some(n);
        self
    }

    /// Declares the expected input tokens (see [`estimate_tokens`]).
    #[must_use]
    pub fn input_tokens(mut self, n: u64) -> Self {
        self.input_tokens = n;
        self
    }

    /// Marks the call as streaming.
    #[must_use]
    pub fn streaming(mut self, on: bool) -> Self {
        self.stream = on;
        self
    }

    /// Sets the GenAI operation name (`chat`, `text_completion`, `embeddings`, ...).
    #[must_use]
    pub fn operation(mut self, op: impl Into<String>) -> Self {
        self.operation = op.into();
        self
    }
}

/// The input-token estimate the adapters reserve for: one token per four bytes of prompt text,
/// rounded up. Settlement always uses the provider's count.
pub fn estimate_tokens(text_bytes: usize) -> u64 {
    u64::try_from(text_bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

/// What a call returned, as the caller of [`GuardClient::guard`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion<T> {
    /// The provider's answer.
    pub output: T,
    /// Token usage, when the provider reported it (`None`: settled at the reservation and
    /// marked estimated).
    pub usage: Option<TokenUsage>,
    /// Why generation stopped (`stop`, `length`, `end_turn`, ...).
    pub finish_reason: Option<String>,
    /// The model that answered, when the provider says (often a dated name).
    pub response_model: Option<String>,
}

impl<T> Completion<T> {
    /// An answer with no usage reported yet.
    pub fn new(output: T) -> Self {
        Self {
            output,
            usage: None,
            finish_reason: None,
            response_model: None,
        }
    }

    /// The usage the provider reported.
    #[must_use]
    pub fn usage(mut self, usage: TokenUsage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// Why generation stopped.
    #[must_use]
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }

    /// The model that answered.
    #[must_use]
    pub fn response_model(mut self, model: impl Into<String>) -> Self {
        self.response_model = Some(model.into());
        self
    }
}

/// What a governed call cost and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The usage it was settled with.
    pub usage: TokenUsage,
    /// Whether that usage is an estimate (the provider reported none).
    pub estimated: bool,
    /// What the call cost.
    pub cost: MicroUsd,
    /// What had been reserved for it.
    pub reserved: MicroUsd,
    /// From sending the request to the end of the answer, in milliseconds.
    pub latency_ms: u64,
    /// Why generation stopped, if known.
    pub finish_reason: Option<String>,
    /// The `llm.request` event.
    pub request_event: EventId,
    /// The `llm.response` event (in the chain once the call is settled: see [`Llm::settled`]).
    pub response_event: EventId,
}

/// An answer that went through the gates, with its receipt.
#[derive(Debug, Clone, PartialEq)]
pub struct Governed<T> {
    /// The provider's answer.
    pub output: T,
    /// Cost, usage and the audit events.
    pub receipt: Receipt,
}

/// A wrapped LLM client as the coverage registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrappedClient {
    /// The provider name calls are governed under.
    pub provider: String,
    /// `openai-http`, `anthropic-http` or `guard`.
    pub wrapper: String,
    /// The model family the client is bound to, if any.
    pub model_family: Option<String>,
    /// The salted digest of the client's hostname (`hh1_…`), if it named one.
    pub host_digest: Option<String>,
    /// When it was first registered.
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: time::OffsetDateTime,
}

/// What identifies a wrapped client.
#[derive(Debug)]
pub(crate) struct ClientInfo {
    pub(crate) provider: String,
    pub(crate) wrapper: &'static str,
    pub(crate) model_family: Option<String>,
    pub(crate) host_digest: Option<String>,
}

/// The LLM layer of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Llm<'g> {
    gov: &'g Governance,
}

impl<'g> Llm<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Starts building a generic guard client for `provider` (any client library: the caller
    /// makes the call inside [`GuardClient::guard`] and reports the usage).
    pub fn client(&self, provider: impl Into<String>) -> GuardClientBuilder {
        GuardClientBuilder {
            gov: self.gov.clone(),
            provider: provider.into(),
            host: None,
            model_family: None,
        }
    }

    /// Starts building an OpenAI-compatible chat-completions client for `base_url`
    /// (`https://api.openai.com`; requests go to `{base_url}/v1/chat/completions`).
    #[cfg(feature = "llm-http")]
    pub fn openai(&self, base_url: impl Into<String>) -> openai::OpenAiBuilder {
        openai::OpenAiBuilder::new(self.gov.clone(), base_url.into())
    }

    /// Starts building an Anthropic messages client for `base_url`
    /// (`https://api.anthropic.com`; requests go to `{base_url}/v1/messages`).
    #[cfg(feature = "llm-http")]
    pub fn anthropic(&self, base_url: impl Into<String>) -> anthropic::AnthropicBuilder {
        anthropic::AnthropicBuilder::new(self.gov.clone(), base_url.into())
    }

    /// Starts building a governed [async-openai](https://docs.rs/async-openai) client for
    /// `agent` in `session` (feature `async-openai`): async-openai's own `Client`, whose chat
    /// completions all take the guarded path.
    #[cfg(feature = "async-openai")]
    pub fn async_openai(
        &self,
        agent: impl Into<String>,
        session: impl Into<String>,
    ) -> async_openai::AsyncOpenAiBuilder {
        async_openai::AsyncOpenAiBuilder::new(self.gov.clone(), agent.into(), session.into())
    }

    /// Starts wrapping a [rig](https://docs.rs/rig-core) completion model (a `rig_core::Model`
    /// or `DynModel<Completion>`) for `agent` in `session` (feature `rig`): its calls through
    /// [`rig::GovernedModel`] all take the guarded path.
    #[cfg(feature = "rig")]
    pub fn rig(
        &self,
        model: impl Into<rig_core::DynModel<rig_core::operation::Completion>>,
        agent: impl Into<String>,
        session: impl Into<String>,
    ) -> rig::RigBuilder {
        rig::RigBuilder::new(self.gov.clone(), model.into(), agent.into(), session.into())
    }

    /// The coverage registry: every client any handle on this database has wrapped.
    pub async fn clients(&self) -> Result<Vec<WrappedClient>> {
        Ok(self
            .gov
            .inner
            .store
            .llm_clients()
            .await?
            .into_iter()
            .map(|r| WrappedClient {
                provider: r.provider,
                wrapper: r.wrapper,
                model_family: (!r.model_family.is_empty()).then_some(r.model_family),
                host_digest: (!r.host_digest.is_empty()).then_some(r.host_digest),
                registered_at: r.registered_at,
            })
            .collect())
    }

    /// Waits until every call of this handle that returned before this was called is settled:
    /// its `llm.response` (or `llm.cancelled`) committed and the budget counters holding its
    /// spend (or, when storage was out of reach, both spooled). Calls settle in the background
    /// by default (see `GovernanceBuilder::settle_in_background`); read counters or the chain
    /// after this, not right after a call. Returns at once when nothing is settling.
    pub async fn settled(&self) {
        self.gov.inner.llm.settlements.wait().await;
    }

    /// How many calls of this handle are settling now.
    pub fn settling(&self) -> usize {
        self.gov.inner.llm.settlements.running()
    }

    /// How many clients this handle has wrapped since it connected.
    pub fn wrapped_here(&self) -> usize {
        self.gov.inner.llm.wrapped.load(Ordering::Acquire)
    }

    /// The warning `warn_on_no_wrappers` would log now, if any.
    pub fn no_wrapper_warning(&self) -> Option<&'static str> {
        no_wrapper_warning(self.gov)
    }

    /// The salted digest the registry stores for `host` (lower-cased, without port): lets an
    /// operator who holds the audit secret check whether a given host was wrapped.
    pub fn host_digest(&self, host: &str) -> String {
        let key = self.gov.inner.llm.host_key.expose();
        let mac = match Hmac::<Sha256>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        let tag = mac.chain_update(host.as_bytes()).finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("hh1_{hex}")
    }

    /// Records an LLM call that did *not* go through the gates (made by a client the SDK cannot
    /// wrap), after the fact: its spend is tracked like [`crate::Cost::track`] and it is
    /// audited as `llm.observed`. The Article 12 report counts these calls against coverage.
    pub async fn observe(
        &self,
        agent: &str,
        session: &str,
        provider: &str,
        model: &str,
        usage: TokenUsage,
    ) -> Result<MicroUsd> {
        let cost = self.gov.cost().track(agent, session, model, usage).await?;
        let event = events::LlmObserved {
            provider: provider.to_owned(),
            model: model.to_owned(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cached_input_tokens: usage.cached_input_tokens,
            cost_micros: cost.0,
        }
        .event(agent)
        .session(session)
        .build()?;
        self.gov.audit().record(event).await?;
        Ok(cost)
    }

    /// Records a newly built client in the registry (observation: a storage failure is
    /// logged, never returned) and counts it for `warn_on_no_wrappers`.
    pub(crate) async fn register(&self, info: &ClientInfo) {
        self.gov.inner.llm.wrapped.fetch_add(1, Ordering::AcqRel);
        let row = gov_store::LlmClientRow {
            provider: info.provider.clone(),
            wrapper: info.wrapper.to_owned(),
            model_family: info.model_family.clone().unwrap_or_default(),
            host_digest: info.host_digest.clone().unwrap_or_default(),
            registered_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        if let Err(e) = self.gov.inner.store.register_llm_client(&row).await {
            tracing::warn!(provider = %info.provider, wrapper = info.wrapper, error = %e,
                "could not record a wrapped LLM client in the coverage registry (calls are governed all the same)");
        }
    }
}

fn check_name(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > 128 || value.chars().any(|c| c.is_control()) {
        return Err(Error::Config(format!(
            "the {what} must be 1 to 128 printable characters"
        )));
    }
    Ok(())
}

/// Builds a [`GuardClient`].
#[derive(Debug)]
#[must_use]
pub struct GuardClientBuilder {
    gov: Governance,
    provider: String,
    host: Option<String>,
    model_family: Option<String>,
}

impl GuardClientBuilder {
    /// The hostname the client talks to, recorded only as a salted digest.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// The model family the client is bound to (recorded in the registry).
    pub fn model_family(mut self, family: impl Into<String>) -> Self {
        self.model_family = Some(family.into());
        self
    }

    /// Registers the client and returns it.
    pub async fn build(self) -> Result<GuardClient> {
        GuardClient::register(
            self.gov,
            self.provider,
            "guard",
            self.host,
            self.model_family,
        )
        .await
    }
}

/// A registered client whose calls all go through the guarded path.
#[derive(Debug, Clone)]
pub struct GuardClient {
    gov: Governance,
    info: Arc<ClientInfo>,
}

impl GuardClient {
    pub(crate) async fn register(
        gov: Governance,
        provider: String,
        wrapper: &'static str,
        host: Option<String>,
        model_family: Option<String>,
    ) -> Result<Self> {
        check_name("provider name", &provider)?;
        if let Some(f) = &model_family {
            check_name("model family", f)?;
        }
        let host_digest = host
            .filter(|h| !h.trim().is_empty())
            .map(|h| gov.llm().host_digest(&h));
        let info = ClientInfo {
            provider,
            wrapper,
            model_family,
            host_digest,
        };
        gov.llm().register(&info).await;
        Ok(Self {
            gov,
            info: Arc::new(info),
        })
    }

    /// The provider name calls are governed under.
    pub fn provider(&self) -> &str {
        &self.info.provider
    }

    /// Runs one call through the guarded path: the gates, `llm.request`, then `call()` (only
    /// if every gate passed), then settlement and `llm.response` (in a task of their own once
    /// the answer is returned, by default; see [`Llm::settled`]). An error from `call` is
    /// audited as `llm.error` and returned as [`Error::Provider`] with kind `client_error` and
    /// its text as `error_type` (so it must not hold secrets). Dropping the returned future
    /// mid-call audits `llm.cancelled`. Either way the reservation is released.
    pub async fn guard<F, Fut, T, E>(&self, call: LlmCall, f: F) -> Result<Governed<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Completion<T>, E>>,
        E: std::fmt::Display,
    {
        let flight = Flight::begin(&self.gov, &self.info, call).await?;
        match f().await {
            Ok(done) => {
                let receipt = flight
                    .finish(
                        done.usage.map(PartialUsage::from),
                        done.finish_reason,
                        done.response_model,
                    )
                    .await;
                Ok(Governed {
                    output: done.output,
                    receipt,
                })
            }
            Err(e) => Err(flight.fail(Failure::client(e.to_string())).await),
        }
    }

    /// Opens a streaming call through the guarded path: the gates and `llm.request`, then
    /// `open()`. The returned stream audits `llm.response` after its last item (usage read
    /// from the items, see [`StreamChunk`]), `llm.error` on a failed item, and `llm.cancelled`
    /// when dropped before its end.
    pub async fn guard_stream<F, Fut, S, T, E>(
        &self,
        call: LlmCall,
        open: F,
    ) -> Result<GuardedStream<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<S, E>>,
        S: futures_core::Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: StreamChunk + Send + 'static,
        E: std::fmt::Display,
    {
        let call = call.streaming(true);
        let flight = Flight::begin(&self.gov, &self.info, call).await?;
        match open().await {
            Ok(s) => {
                use futures_util::StreamExt as _;
                let s = s.map(|item| item.map_err(|e| Failure::client(e.to_string())));
                Ok(GuardedStream::new(flight, Box::pin(s)))
            }
            Err(e) => Err(flight.fail(Failure::client(e.to_string())).await),
        }
    }

    pub(crate) fn gov(&self) -> &Governance {
        &self.gov
    }

    pub(crate) fn info(&self) -> &ClientInfo {
        &self.info
    }
}
