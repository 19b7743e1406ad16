//! The Anthropic messages adapter: `POST {base}/v1/messages`, plain or streamed (server-sent
//! events: input tokens from `message_start`, output tokens from `message_delta`), every call
//! on the guarded path.
//!
//! Usage mapping: Anthropic counts uncached input (`input_tokens`), cache reads
//! (`cache_read_input_tokens`) and cache writes (`cache_creation_input_tokens`) apart; the SDK's
//! input tokens are their sum and its cached input tokens the cache reads (cache writes are
//! priced as plain input). `max_tokens` is required by the API: when the request has none, the
//! configured default is sent, and with no default the call is refused before any request.

use std::sync::Arc;

use reqwest::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument as _;

use super::http::{self, Endpoint, Sse};
use super::{
    Failure, Flight, Governed, GuardClient, GuardedStream, LlmCall, PartialUsage, StreamChunk,
    estimate_tokens,
};
use crate::{Governance, Result};

/// The `anthropic-version` header sent unless another is set.
pub const API_VERSION: &str = "2023-06-01";

/// A message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// Text, or an array of content blocks.
    pub content: Value,
}

impl Message {
    /// A user message with text.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: "user".to_owned(),
            content: Value::String(text.into()),
        }
    }

    /// An assistant message with text.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: "assistant".to_owned(),
            content: Value::String(text.into()),
        }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A messages request body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MessagesRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Most output tokens (required by the API; see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The system prompt: text or content blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Value>,
    /// Set by the adapter: `messages` sends none, `messages_stream` sends `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Every other field (`temperature`, `tools`, `metadata`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessagesRequest {
    /// A request for `model` with `messages`.
    pub fn new(model: impl Into<String>, messages: Vec<Message>) -> Self {
        Self {
            model: model.into(),
            messages,
            ..Self::default()
        }
    }

    /// Declares `max_tokens`.
    #[must_use]
    pub fn max_tokens(mut self, n: u64) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// Sets the system prompt.
    #[must_use]
    pub fn system(mut self, text: impl Into<String>) -> Self {
        self.system = Some(Value::String(text.into()));
        self
    }

    /// Sets another body field.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    fn input_estimate(&self) -> u64 {
        let system = self.system.as_ref().map_or(0, |s| text_of(s).len());
        estimate_tokens(
            system
                + self
                    .messages
                    .iter()
                    .map(|m| text_of(&m.content).len())
                    .sum::<usize>(),
        )
    }
}

/// `usage`, in full or in part (a `message_delta` may carry only `output_tokens`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Input tokens read from the cache.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to the cache.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

impl From<Usage> for PartialUsage {
    fn from(u: Usage) -> Self {
        let read = u.cache_read_input_tokens.unwrap_or(0);
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        Self {
            input_tokens: u.input_tokens.map(|i| i + read + written),
            output_tokens: u.output_tokens,
            cached_input_tokens: u.input_tokens.map(|_| read),
        }
    }
}

/// A content block of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentBlock {
    /// `text`, `tool_use`, `thinking`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, for a text block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A messages response body (also the `message` of `message_start`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    /// The message id.
    #[serde(default)]
    pub id: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// `assistant`.
    #[serde(default)]
    pub role: String,
    /// The answer.
    #[serde(default)]
    pub content: Vec<ContentBlock>,
    /// Why generation stopped (`end_turn`, `max_tokens`, `tool_use`, ...).
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MessagesResponse {
    /// The text blocks, joined.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| b.text.as_deref())
            .collect()
    }
}

/// The `delta` of a `message_delta` event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageDelta {
    /// Why generation stopped.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One streamed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message begins; its usage holds the input tokens.
    MessageStart {
        /// The message so far.
        message: MessagesResponse,
    },
    /// A content block begins.
    ContentBlockStart {
        /// Its index.
        #[serde(default)]
        index: u32,
        /// The block.
        content_block: Value,
    },
    /// A content block grows (`text_delta`, `input_json_delta`, ...).
    ContentBlockDelta {
        /// Its index.
        #[serde(default)]
        index: u32,
        /// The delta.
        delta: Value,
    },
    /// A content block ends.
    ContentBlockStop {
        /// Its index.
        #[serde(default)]
        index: u32,
    },
    /// The message ends; its usage holds the output tokens.
    MessageDelta {
        /// Stop reason.
        #[serde(default)]
        delta: MessageDelta,
        /// Usage (a running total of output tokens).
        #[serde(default)]
        usage: Option<Usage>,
    },
    /// The stream is complete.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// An event type this version does not know.
    #[serde(other)]
    Other,
}

impl StreamEvent {
    /// The text this event adds, for a `text_delta`.
    pub fn text(&self) -> &str {
        match self {
            Self::ContentBlockDelta { delta, .. } => delta
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            _ => "",
        }
    }
}

impl StreamChunk for StreamEvent {
    fn usage(&self) -> Option<PartialUsage> {
        match self {
            Self::MessageStart { message } => message.usage.map(|u| {
                // `message_start` reports input tokens; its output count is a placeholder.
                PartialUsage {
                    output_tokens: None,
                    ..PartialUsage::from(u)
                }
            }),
            Self::MessageDelta { usage, .. } => usage.map(PartialUsage::from),
            _ => None,
        }
    }

    fn finish_reason(&self) -> Option<&str> {
        match self {
            Self::MessageDelta { delta, .. } => delta.stop_reason.as_deref(),
            _ => None,
        }
    }

    fn response_model(&self) -> Option<&str> {
        match self {
            Self::MessageStart { message } => Some(message.model.as_str()),
            _ => None,
        }
    }
}

/// Builds an [`AnthropicClient`].
#[must_use]
pub struct AnthropicBuilder {
    parts: http::BuilderParts,
    version: String,
}

impl std::fmt::Debug for AnthropicBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicBuilder")
            .field("provider", &self.parts.provider)
            .field("model_family", &self.parts.model_family)
            .finish_non_exhaustive()
    }
}

impl AnthropicBuilder {
    pub(crate) fn new(gov: Governance, base: String) -> Self {
        Self {
            parts: http::BuilderParts::new(gov, base, "anthropic"),
            version: API_VERSION.to_owned(),
        }
    }

    /// The API key, sent as `x-api-key` (never logged or stored).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.parts.api_key = Some(SecretString::from(key.into()));
        self
    }

    /// The `anthropic-version` header (default [`API_VERSION`]).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.version = v.into();
        self
    }

    /// The provider name calls are governed under (default `anthropic`).
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.parts.provider = name.into();
        self
    }

    /// The model family the client is bound to (recorded in the registry only).
    pub fn model_family(mut self, family: impl Into<String>) -> Self {
        self.parts.model_family = Some(family.into());
        self
    }

    /// The reqwest client to send with; default: a 10 s connect timeout.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.parts.http = Some(client);
        self
    }

    /// Another header on every request (`anthropic-beta`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parts.headers.push((name.into(), value.into()));
        self
    }

    /// Registers the client in the coverage registry and returns it.
    pub async fn build(self) -> Result<AnthropicClient> {
        let version = HeaderValue::from_str(&self.version).map_err(|_| {
            crate::Error::Config("the anthropic-version is not a valid header value".into())
        })?;
        let fixed = vec![(HeaderName::from_static("anthropic-version"), version)];
        let (guard, endpoint) = self
            .parts
            .build("/v1/messages", "anthropic-http", fixed, |key| {
                Ok((
                    HeaderName::from_static("x-api-key"),
                    http::secret_header(key)?,
                ))
            })
            .await?;
        Ok(AnthropicClient { guard, endpoint })
    }
}

/// An Anthropic messages client whose every call is governed.
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    guard: GuardClient,
    endpoint: Arc<Endpoint>,
}

impl AnthropicClient {
    /// The provider name calls are governed under.
    pub fn provider(&self) -> &str {
        self.guard.provider()
    }

    fn call(&self, agent: &str, session: &str, req: &mut MessagesRequest, stream: bool) -> LlmCall {
        let mut call = LlmCall::new(agent, session, &req.model)
            .input_tokens(req.input_estimate())
            .streaming(stream);
        match req.max_tokens {
            Some(n) => call = call.max_tokens(n),
            None => req.max_tokens = self.guard.gov().config().cost.default_max_tokens,
        }
        call
    }

    /// One governed message by `agent` in `session`.
    pub async fn messages(
        &self,
        agent: &str,
        session: &str,
        mut req: MessagesRequest,
    ) -> Result<Governed<MessagesResponse>> {
        req.stream = None;
        let call = self.call(agent, session, &mut req, false);
        let flight = Flight::begin(self.guard.gov(), self.guard.info(), call).await?;
        let span = flight.span().clone();
        let sent = async {
            let resp = self.endpoint.post(&req).await?;
            http::read_json::<MessagesResponse>(resp).await
        }
        .instrument(span)
        .await;
        match sent {
            Ok(body) => {
                let receipt = flight
                    .finish(
                        body.usage.map(PartialUsage::from),
                        body.stop_reason.clone(),
                        Some(body.model.clone()).filter(|m| !m.is_empty()),
                    )
                    .await;
                Ok(Governed {
                    output: body,
                    receipt,
                })
            }
            Err(f) => Err(flight.fail(f).await),
        }
    }

    /// One governed streamed message: read the stream to its end to settle the call; drop it
    /// to cancel.
    pub async fn messages_stream(
        &self,
        agent: &str,
        session: &str,
        mut req: MessagesRequest,
    ) -> Result<GuardedStream<StreamEvent>> {
        req.stream = Some(true);
        let call = self.call(agent, session, &mut req, true);
        let flight = Flight::begin(self.guard.gov(), self.guard.info(), call).await?;
        let span = flight.span().clone();
        let resp = match self.endpoint.post(&req).instrument(span).await {
            Ok(r) => r,
            Err(f) => return Err(flight.fail(f).await),
        };
        let items = futures_util::stream::unfold(Some(Sse::new(resp)), |state| async move {
            let mut sse = state?;
            loop {
                let ev = match sse.next().await? {
                    Ok(ev) => ev,
                    Err(f) => return Some((Err(f), None)),
                };
                if ev.data.trim().is_empty() {
                    continue;
                }
                let Ok(value) = serde_json::from_str::<Value>(&ev.data) else {
                    return Some((Err(Failure::new("decode")), None));
                };
                if value.get("type").and_then(Value::as_str) == Some("error")
                    || ev.event.as_deref() == Some("error")
                {
                    let f = Failure {
                        error_type: http::error_code(&value),
                        ..Failure::new("stream_error")
                    };
                    return Some((Err(f), None));
                }
                return Some(match serde_json::from_value::<StreamEvent>(value) {
                    // After message_stop nothing more is read.
                    Ok(StreamEvent::MessageStop) => (Ok(StreamEvent::MessageStop), None),
                    Ok(ev) => (Ok(ev), Some(sse)),
                    Err(_) => (Err(Failure::new("decode")), None),
                });
            }
        });
        Ok(GuardedStream::new(flight, Box::pin(items)))
    }
}
