//! Governed [rig](https://docs.rs/rig-core) completion models (feature `rig`): a rig model
//! (`rig_core::Model` or `DynModel<Completion>`, any provider and transport) wrapped so that
//! each completion, whole or streamed, takes the guarded path.
//!
//! [`GovernedModel::call`] and [`GovernedModel::stream`] read the request (the model it names,
//! else the wire's; `max_tokens`, else the configured default, which is then written into the
//! request so the provider enforces the cap the budget was projected from; the request's size
//! for the input estimate), run the halt, scope and budget gates and log `llm.request`, and
//! only then let rig send it. The answer's normalized `usage` settles the call
//! (`llm.response`); a failure is `llm.error`, a dropped call or stream `llm.cancelled`.
//! Provider error text is never recorded: a failure is classified by rig's error kind, with
//! the HTTP status and the provider's error code when it gave one.
//!
//! rig 0.44 (the newest release that builds on Rust 1.95) calls models through
//! `Model`/`DynModel` rather than a `CompletionModel` trait, and its agent runtime takes a
//! `DynModel`; a [`GovernedModel`] is called directly, so an agent loop calls it (or
//! [`crate::llm::GuardClient::guard`] around its own call).

use std::sync::Arc;

use rig_core::DynModel;
use rig_core::completion::{CompletionRequest, CompletionResponse};
use rig_core::error::ProviderError;
use rig_core::operation::Completion as RigCompletion;
use rig_core::streaming::{CompletionStream, Item, StreamEvent};

use super::{Failure, Flight, Governed, GuardClient, LlmCall, PartialUsage, Receipt};
use crate::{Error, Governance, Result};

/// Builds a [`GovernedModel`]; from [`super::Llm::rig`].
#[must_use]
pub struct RigBuilder {
    gov: Governance,
    model: DynModel<RigCompletion>,
    agent: String,
    session: String,
    provider: Option<String>,
}

impl std::fmt::Debug for RigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigBuilder")
            .field("agent", &self.agent)
            .field("session", &self.session)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl RigBuilder {
    pub(crate) fn new(
        gov: Governance,
        model: DynModel<RigCompletion>,
        agent: String,
        session: String,
    ) -> Self {
        Self {
            gov,
            model,
            agent,
            session,
            provider: None,
        }
    }

    /// The provider name calls are governed under: scope checks `provider` or
    /// `provider:model`. Default: the name rig's wire gives (`openai`, `anthropic`, ...).
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = Some(name.into());
        self
    }

    /// Registers the model in the coverage registry and returns it, governed.
    pub async fn build(self) -> Result<GovernedModel> {
        gov_core::AgentId::new(&self.agent)?;
        gov_core::SessionId::new(&self.session)?;
        let provider = self
            .provider
            .unwrap_or_else(|| self.model.name().to_owned());
        let family = self.model.id().map(str::to_owned);
        let guard = GuardClient::register(self.gov, provider, "rig", None, family).await?;
        Ok(GovernedModel {
            model: self.model,
            guard,
            agent: Arc::from(self.agent),
            session: Arc::from(self.session),
        })
    }
}

/// A rig completion model whose every call goes through the guarded path.
#[derive(Clone)]
pub struct GovernedModel {
    model: DynModel<RigCompletion>,
    guard: GuardClient,
    agent: Arc<str>,
    session: Arc<str>,
}

impl std::fmt::Debug for GovernedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernedModel")
            .field("provider", &self.guard.provider())
            .field("model", &self.model.id())
            .field("agent", &self.agent)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Why a rig call failed, in terms safe to record: rig's error kind, the HTTP status and the
/// provider's error code, never its text.
fn failure(e: &ProviderError) -> Failure {
    use rig_core::ErrorKind as K;
    if let Some(resp) = e.provider_response() {
        let error_type = e
            .provider_response_json()
            .ok()
            .flatten()
            .and_then(|v| super::http::error_code(&v));
        return Failure {
            status: resp.status.map(|s| s.as_u16()),
            error_type,
            ..Failure::new("http_status")
        };
    }
    Failure::new(match e.kind() {
        K::Http => "transport",
        K::Json | K::Response => "decode",
        K::Cancelled => "transport",
        _ => "client_error",
    })
}

fn usage(r: &CompletionResponse) -> Option<PartialUsage> {
    let u = &r.usage;
    (u.input_tokens.is_some() || u.output_tokens.is_some()).then_some(PartialUsage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cached_input_tokens,
    })
}

fn finish_reason(r: &CompletionResponse) -> Option<String> {
    r.finish_reason().map(|f| {
        let text = format!("{f:?}").to_ascii_lowercase();
        text.chars().take(32).collect()
    })
}

impl GovernedModel {
    /// The same model for another session.
    pub fn for_session(&self, session: impl Into<String>) -> Result<Self> {
        let session = session.into();
        gov_core::SessionId::new(&session)?;
        Ok(Self {
            session: Arc::from(session),
            ..self.clone()
        })
    }

    /// The provider name calls are governed under.
    pub fn provider(&self) -> &str {
        self.guard.provider()
    }

    /// The wrapped rig model (calls made on it directly are not governed).
    pub fn inner(&self) -> &DynModel<RigCompletion> {
        &self.model
    }

    /// The gates' view of a request; writes the default `max_tokens` into it when it declares
    /// none.
    fn prepare(&self, request: &mut CompletionRequest, stream: bool) -> Result<LlmCall> {
        let model = request
            .model
            .clone()
            .or_else(|| self.model.id().map(str::to_owned))
            .ok_or_else(|| {
                Error::Config(
                    "the rig request names no model and its wire addresses none: set the request's model".into(),
                )
            })?;
        let size = serde_json::to_vec(&request.chat_history).map_or(0, |b| b.len())
            + serde_json::to_vec(&request.documents).map_or(0, |b| b.len());
        let mut call = LlmCall::new(&*self.agent, &*self.session, model)
            .input_tokens(super::estimate_tokens(size))
            .streaming(stream);
        match request.max_tokens {
            Some(n) => call = call.max_tokens(n),
            None => request.max_tokens = self.guard.gov().config().cost.default_max_tokens,
        }
        Ok(call)
    }

    /// One governed completion.
    pub async fn call(
        &self,
        request: impl Into<CompletionRequest>,
    ) -> Result<Governed<CompletionResponse>> {
        use tracing::Instrument as _;
        let mut request = request.into();
        let call = self.prepare(&mut request, false)?;
        let flight = Flight::begin(self.guard.gov(), self.guard.info(), call).await?;
        let span = flight.span().clone();
        match self.model.call(request).instrument(span).await {
            Ok(answer) => {
                let receipt = flight
                    .finish(
                        usage(&answer),
                        finish_reason(&answer),
                        answer.origin.response_model.clone(),
                    )
                    .await;
                Ok(Governed {
                    output: answer,
                    receipt,
                })
            }
            Err(e) => Err(flight.fail(failure(&e)).await),
        }
    }

    /// One governed streamed completion: read it to its end to settle the call; drop it to
    /// cancel.
    pub async fn stream(&self, request: impl Into<CompletionRequest>) -> Result<GovernedStream> {
        let mut request = request.into();
        let call = self.prepare(&mut request, true)?;
        let flight = Flight::begin(self.guard.gov(), self.guard.info(), call).await?;
        match self.model.stream(request) {
            Ok(inner) => Ok(GovernedStream {
                inner,
                flight: Some(flight),
                receipt: None,
            }),
            Err(e) => Err(flight.fail(failure(&e)).await),
        }
    }
}

/// A governed rig stream: rig's items, in order; the call settles when the stream ends.
pub struct GovernedStream {
    inner: CompletionStream,
    flight: Option<Flight>,
    receipt: Option<Receipt>,
}

impl std::fmt::Debug for GovernedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernedStream")
            .field("flight", &self.flight)
            .field("receipt", &self.receipt)
            .finish_non_exhaustive()
    }
}

impl GovernedStream {
    /// The next item; `None` once the stream ended and the call is settled (usage from rig's
    /// folded response). A provider error ends the call as `llm.error`.
    pub async fn next(&mut self) -> Option<Result<Item<StreamEvent>>> {
        use futures_util::StreamExt as _;
        self.flight.as_ref()?;
        match self.inner.next().await {
            Some(Ok(item)) => Some(Ok(item)),
            Some(Err(e)) => {
                let flight = self.flight.take()?;
                Some(Err(flight.fail(failure(&e)).await))
            }
            None => {
                let flight = self.flight.take()?;
                let answer = self.inner.partial();
                self.receipt = Some(
                    flight
                        .finish(
                            usage(&answer),
                            finish_reason(&answer),
                            answer.origin.response_model.clone(),
                        )
                        .await,
                );
                None
            }
        }
    }

    /// What arrived so far, folded by rig (the whole response once the stream ended).
    pub fn partial(&self) -> CompletionResponse {
        self.inner.partial()
    }

    /// The receipt, once the stream ended.
    pub fn receipt(&self) -> Option<&Receipt> {
        self.receipt.as_ref()
    }
}
