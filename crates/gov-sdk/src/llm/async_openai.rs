//! Governed [async-openai](https://docs.rs/async-openai) clients (feature `async-openai`): the
//! crate's own `Client`, with its HTTP execution replaced by a tower service on the guarded
//! path, so code written against async-openai keeps its types and every chat completion takes
//! the same gates as [`super::openai`].
//!
//! [`GovernedService`] reads each outgoing `POST …/chat/completions` body (model,
//! `max_completion_tokens` or `max_tokens`, the prompt's size), runs the halt, scope and budget
//! gates and logs `llm.request` before anything is sent, then settles from the answer's
//! `usage` (`llm.response`). A streamed request is sent with `stream_options.include_usage`
//! (unless the caller set `stream_options`), its last chunk is read for the usage and not
//! passed on when the caller had not asked for it; a stream dropped before its end is
//! `llm.cancelled`. A provider's error answer is audited as `llm.error` and handed to
//! async-openai unchanged, so its own error type reports it. Reads (`GET`, `DELETE` of stored
//! completions) pass through unless the agent is halted; any other request is refused, so
//! enabling more async-openai features cannot open an ungoverned path.
//!
//! A refusal is returned as `OpenAIError::Boxed` holding the SDK's [`crate::Error`]
//! (downcast it to tell a budget from a halt). The session is the client's, or the
//! `x-governance-session` header of one request (removed before sending).
//!
//! This module must not send a request before the gates passed, and must not keep or print the
//! API key or the URL (the host is recorded as a salted digest only).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::async_openai::Client;
use ::async_openai::config::Config as OpenAiConfig;
use ::async_openai::error::OpenAIError;
use ::async_openai::middleware::{HttpRequestFactory, ReqwestService};
use bytes::Bytes;
use serde_json::Value;
use tracing::Instrument as _;

use super::http::{self, Sse};
use super::openai::{ChatChunk, ChatRequest, ChatResponse};
use super::{Failure, Flight, GuardClient, GuardedStream, PartialUsage, StreamChunk};
use crate::{Error, Governance, Result};

/// The request header that names the session of one call (removed before sending).
pub const SESSION_HEADER: &str = "x-governance-session";

/// Builds governed async-openai clients; from [`super::Llm::async_openai`].
#[derive(Debug)]
#[must_use]
pub struct AsyncOpenAiBuilder {
    gov: Governance,
    agent: String,
    session: String,
    provider: String,
    model_family: Option<String>,
    http: Option<reqwest::Client>,
}

impl AsyncOpenAiBuilder {
    pub(crate) fn new(gov: Governance, agent: String, session: String) -> Self {
        Self {
            gov,
            agent,
            session,
            provider: "openai".to_owned(),
            model_family: None,
            http: None,
        }
    }

    /// The provider name calls are governed under (default `openai`): scope checks
    /// `provider` or `provider:model`. Set it for other OpenAI-compatible services.
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = name.into();
        self
    }

    /// The model family the client is bound to (recorded in the registry only).
    pub fn model_family(mut self, family: impl Into<String>) -> Self {
        self.model_family = Some(family.into());
        self
    }

    /// The reqwest client requests are sent with (timeouts, proxies); default: a 10 s connect
    /// timeout.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The governed service alone, sending through `inner` (async-openai's `ReqwestService`, or
    /// a stack of your own around it), for `Client::with_http_service`. `api_base` is only
    /// recorded, as a salted digest of its host, in the coverage registry.
    pub async fn service_with<S>(self, api_base: &str, inner: S) -> Result<GovernedService<S>> {
        gov_core::AgentId::new(&self.agent)?;
        gov_core::SessionId::new(&self.session)?;
        let host = reqwest::Url::parse(api_base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let guard = GuardClient::register(
            self.gov,
            self.provider,
            "async-openai",
            host,
            self.model_family,
        )
        .await?;
        Ok(GovernedService {
            guard,
            agent: Arc::from(self.agent),
            session: Arc::from(self.session),
            inner,
        })
    }

    /// An async-openai `Client` for `config` whose every chat completion is governed.
    pub async fn build<C: OpenAiConfig>(self, config: C) -> Result<Client<C>> {
        let http = match self.http.clone() {
            Some(c) => c,
            None => http::default_client()?,
        };
        let service = self
            .service_with(config.api_base(), ReqwestService::new(http))
            .await?;
        Ok(Client::with_config(config).with_http_service(service))
    }
}

/// The tower service async-openai sends through: every chat completion on the guarded path.
#[derive(Debug, Clone)]
pub struct GovernedService<S = ReqwestService> {
    guard: GuardClient,
    agent: Arc<str>,
    session: Arc<str>,
    inner: S,
}

impl<S> GovernedService<S> {
    /// The agent calls are made for.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The default session (see [`SESSION_HEADER`]).
    pub fn session(&self) -> &str {
        &self.session
    }
}

/// A refusal or failure of the governed path, as async-openai carries it.
fn refused(e: Error) -> OpenAIError {
    OpenAIError::Boxed(Box::new(e))
}

fn invalid(why: &str) -> OpenAIError {
    OpenAIError::InvalidArgument(format!("governance: {why}"))
}

/// What a chat-completions call sends, once the gates' view of it is worked out.
struct Prepared {
    request: reqwest::Request,
    call: super::LlmCall,
    stream: bool,
    /// The caller did not ask for the usage chunk: read it, do not pass it on.
    hide_usage: bool,
}

/// Reads the body, works out the call and rewrites the fields the gates depend on
/// (`max_tokens` when none was declared, `stream_options` for a stream).
fn prepare(
    gov: &Governance,
    agent: &str,
    session: &str,
    mut request: reqwest::Request,
) -> std::result::Result<Prepared, OpenAIError> {
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .ok_or_else(|| invalid("a chat completion must have a JSON body"))?;
    let mut raw: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| invalid("the chat completion body is not a JSON object"))?;
    let mut typed: ChatRequest = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|_| invalid("the chat completion body is not a chat-completions request"))?;
    let stream = typed.stream == Some(true);
    let declared = typed.max_completion_tokens.or(typed.max_tokens);
    let call = super::openai::llm_call(gov, agent, session, &mut typed, stream);
    if declared.is_none()
        && let Some(n) = typed.max_tokens
    {
        raw.insert("max_tokens".into(), Value::from(n));
    }
    let hide_usage = stream && !raw.contains_key("stream_options");
    if hide_usage {
        raw.insert(
            "stream_options".into(),
            serde_json::json!({ "include_usage": true }),
        );
    }
    let bytes = serde_json::to_vec(&raw).map_err(|_| invalid("the body could not be encoded"))?;
    request
        .headers_mut()
        .remove(reqwest::header::CONTENT_LENGTH);
    *request.body_mut() = Some(reqwest::Body::from(bytes));
    Ok(Prepared {
        request,
        call,
        stream,
        hide_usage,
    })
}

/// A factory that hands out copies of one prepared request (its body is bytes, so it clones).
fn factory(request: reqwest::Request) -> HttpRequestFactory {
    let request = Arc::new(request);
    HttpRequestFactory::new(move || {
        let r = request.try_clone();
        async move { r.ok_or_else(|| invalid("the request could not be copied")) }
    })
}

/// A response with the provider's status and headers around a new body.
fn rebuild(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: reqwest::Body,
) -> reqwest::Response {
    let mut resp = ::http::Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    for (name, value) in headers {
        if name != reqwest::header::CONTENT_LENGTH {
            h.append(name.clone(), value.clone());
        }
    }
    reqwest::Response::from(resp)
}

/// Reads a provider's error answer: the failure to audit, and the answer to hand on as it was.
async fn error_answer(resp: reqwest::Response) -> (Failure, reqwest::Response) {
    let status = resp.status();
    let headers = resp.headers().clone();
    let retry_after_s = headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body = resp.bytes().await.unwrap_or_default();
    let error_type = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| http::error_code(&v));
    let failure = Failure {
        status: Some(status.as_u16()),
        error_type,
        retry_after_s,
        ..Failure::new("http_status")
    };
    (
        failure,
        rebuild(status, &headers, reqwest::Body::from(body)),
    )
}

/// One server-sent event of a chat-completions stream, with what it tells the gates.
struct Event {
    /// The event as it goes on to async-openai (`None`: read, not passed on).
    bytes: Option<Bytes>,
    chunk: Option<ChatChunk>,
    /// `[DONE]`: the provider's last event (async-openai stops reading at it).
    last: bool,
}

impl StreamChunk for Event {
    fn usage(&self) -> Option<PartialUsage> {
        self.chunk.as_ref().and_then(StreamChunk::usage)
    }

    fn finish_reason(&self) -> Option<&str> {
        self.chunk.as_ref().and_then(StreamChunk::finish_reason)
    }

    fn response_model(&self) -> Option<&str> {
        self.chunk.as_ref().and_then(StreamChunk::response_model)
    }
}

fn encode_event(ev: &http::SseEvent) -> Bytes {
    let mut out = String::new();
    if let Some(name) = &ev.event {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in ev.data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// The provider's events, each read for usage and passed on (the usage chunk only if asked).
fn events(
    resp: reqwest::Response,
    hide_usage: bool,
) -> impl futures_core::Stream<Item = std::result::Result<Event, Failure>> + Send + 'static {
    futures_util::stream::unfold(Some(Sse::new(resp)), move |state| async move {
        let mut sse = state?;
        let ev = match sse.next().await? {
            Ok(ev) => ev,
            Err(f) => return Some((Err(f), None)),
        };
        let data = ev.data.trim();
        if data.is_empty() || data == "[DONE]" {
            let last = data == "[DONE]";
            let item = Event {
                bytes: Some(encode_event(&ev)),
                chunk: None,
                last,
            };
            return Some((Ok(item), (!last).then_some(sse)));
        }
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            return Some((Err(Failure::new("decode")), None));
        };
        if value.get("error").is_some() {
            let f = Failure {
                error_type: http::error_code(&value),
                ..Failure::new("stream_error")
            };
            return Some((Err(f), None));
        }
        let chunk = serde_json::from_value::<ChatChunk>(value).ok();
        let usage_only = chunk
            .as_ref()
            .is_some_and(|c| c.choices.is_empty() && c.usage.is_some());
        let item = Event {
            bytes: (!(hide_usage && usage_only)).then(|| encode_event(&ev)),
            chunk,
            last: false,
        };
        Some((Ok(item), Some(sse)))
    })
}

/// A guarded stream as the body async-openai reads: its events' bytes; a failure ends the body.
/// async-openai stops reading at `[DONE]`, so the call is settled before that event is passed
/// on (the stream ends right after it).
fn body(stream: GuardedStream<Event>) -> reqwest::Body {
    let bytes = futures_util::stream::unfold(Some(stream), |state| async move {
        let mut s = state?;
        loop {
            match s.next().await? {
                Ok(Event {
                    bytes: Some(b),
                    last: true,
                    ..
                }) => {
                    while s.next().await.is_some() {}
                    return Some((Ok::<_, Error>(b), None));
                }
                Ok(Event { bytes: Some(b), .. }) => return Some((Ok(b), Some(s))),
                Ok(_) => continue,
                Err(e) => return Some((Err(e), None)),
            }
        }
    });
    reqwest::Body::wrap_stream(bytes)
}

impl<S> GovernedService<S>
where
    S: tower::Service<HttpRequestFactory, Response = reqwest::Response, Error = OpenAIError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    async fn run(
        self,
        factory_in: HttpRequestFactory,
    ) -> std::result::Result<reqwest::Response, OpenAIError> {
        use tower::ServiceExt as _;
        let mut request = factory_in.build().await?;
        let session = match request.headers_mut().remove(SESSION_HEADER) {
            Some(v) => v
                .to_str()
                .map_err(|_| invalid("the session header is not text"))?
                .to_owned(),
            None => self.session.to_string(),
        };
        let governed = request.method() == reqwest::Method::POST
            && request
                .url()
                .path()
                .trim_end_matches('/')
                .ends_with("/chat/completions");
        if !governed {
            // Reads of stored completions cost nothing and reach no model; a halted agent
            // makes none.
            if matches!(
                *request.method(),
                reqwest::Method::GET | reqwest::Method::DELETE
            ) {
                self.guard
                    .gov()
                    .presence()
                    .assert_not_halted(&self.agent)
                    .await
                    .map_err(refused)?;
                return self.inner.oneshot(factory(request)).await;
            }
            return Err(invalid(
                "a governed async-openai client sends chat completions only (POST …/chat/completions); use another client, wrapped with gov.llm(), for other operations",
            ));
        }
        let gov = self.guard.gov().clone();
        let prepared = prepare(&gov, &self.agent, &session, request)?;
        let flight = Flight::begin(&gov, self.guard.info(), prepared.call)
            .await
            .map_err(refused)?;
        let span = flight.span().clone();
        let sent = self
            .inner
            .oneshot(factory(prepared.request))
            .instrument(span.clone())
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                let failure = match &e {
                    OpenAIError::Reqwest(r) if r.is_timeout() => Failure::new("timeout"),
                    OpenAIError::Reqwest(r) if r.is_connect() => Failure::new("connect"),
                    _ => Failure::new("transport"),
                };
                flight.fail(failure).await;
                return Err(e);
            }
        };
        if !resp.status().is_success() {
            let (failure, resp) = error_answer(resp).instrument(span).await;
            flight.fail(failure).await;
            return Ok(resp);
        }
        let (status, headers) = (resp.status(), resp.headers().clone());
        if prepared.stream {
            let items = events(resp, prepared.hide_usage);
            let guarded = GuardedStream::new(flight, Box::pin(items));
            return Ok(rebuild(status, &headers, body(guarded)));
        }
        let bytes = match resp.bytes().instrument(span).await {
            Ok(b) => b,
            Err(e) => {
                let err = flight.fail(http::transport(e)).await;
                return Err(refused(err));
            }
        };
        match serde_json::from_slice::<ChatResponse>(&bytes) {
            Ok(answer) => {
                flight
                    .finish(
                        answer.usage.map(PartialUsage::from),
                        answer.choices.iter().find_map(|c| c.finish_reason.clone()),
                        Some(answer.model).filter(|m| !m.is_empty()),
                    )
                    .await;
            }
            Err(_) => {
                flight.fail(Failure::new("decode")).await;
            }
        }
        Ok(rebuild(status, &headers, reqwest::Body::from(bytes)))
    }
}

impl<S> tower::Service<HttpRequestFactory> for GovernedService<S>
where
    S: tower::Service<HttpRequestFactory, Response = reqwest::Response, Error = OpenAIError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), OpenAIError>> {
        // The inner service is made ready per call (`oneshot`), on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        Box::pin(self.clone().run(request))
    }
}
