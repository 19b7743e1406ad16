//! The OpenAI-compatible chat-completions adapter: `POST {base}/v1/chat/completions`, plain or
//! streamed (server-sent events; `stream_options.include_usage` is asked for so that the last
//! chunk carries the usage), every call on the guarded path.
//!
//! Only the fields the gates need are typed; everything else passes through `extra` both ways.
//! The reservation is projected from `max_completion_tokens`, else `max_tokens`, else the
//! configured default, which is then written into the request as `max_tokens` so the provider
//! enforces the cap the budget was projected from.

use std::sync::Arc;

use reqwest::header::AUTHORIZATION;
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

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, an array of content parts, or null (an assistant message with tool calls).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub content: Value,
    /// Every other field (`name`, `tool_calls`, `tool_call_id`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message with text content.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: Value::String(text.into()),
            extra: Map::new(),
        }
    }

    /// A system message.
    pub fn system(text: impl Into<String>) -> Self {
        Self::new("system", text)
    }

    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self::new("user", text)
    }

    /// An assistant message.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new("assistant", text)
    }

    /// The text of the content: the string, or the `text` parts joined.
    pub fn text(&self) -> String {
        text_of(&self.content)
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

/// `stream_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a last chunk carrying the usage.
    pub include_usage: bool,
}

/// A chat-completions request body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most output tokens (older name, still the one most compatible servers read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most output tokens, reasoning included (newer name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Set by the adapter: `chat` sends none, `chat_stream` sends `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Set by `chat_stream` to `{include_usage: true}` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Every other field (`temperature`, `tools`, `response_format`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// A request for `model` with `messages`.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
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

    /// Sets another body field.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    fn input_estimate(&self) -> u64 {
        estimate_tokens(
            self.messages
                .iter()
                .map(|m| text_of(&m.content).len())
                .sum(),
        )
    }
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the cache.
    #[serde(default)]
    pub cached_tokens: Option<u64>,
}

/// `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatUsage {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    #[serde(default)]
    pub total_tokens: Option<u64>,
    /// Cached prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl From<ChatUsage> for PartialUsage {
    fn from(u: ChatUsage) -> Self {
        Self {
            input_tokens: Some(u.prompt_tokens),
            output_tokens: Some(u.completion_tokens),
            cached_input_tokens: Some(
                u.prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
            ),
        }
    }
}

/// One choice of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Its index.
    #[serde(default)]
    pub index: u32,
    /// The answer.
    pub message: ChatMessage,
    /// Why generation stopped.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// A chat-completions response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The completion id.
    #[serde(default)]
    pub id: String,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The answers.
    #[serde(default)]
    pub choices: Vec<ChatChoice>,
    /// Token usage.
    #[serde(default)]
    pub usage: Option<ChatUsage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatResponse {
    /// The text of the first choice.
    pub fn text(&self) -> String {
        self.choices
            .first()
            .map(|c| c.message.text())
            .unwrap_or_default()
    }
}

/// The delta of a streamed choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatDelta {
    /// The role, on the first chunk.
    #[serde(default)]
    pub role: Option<String>,
    /// Text added.
    #[serde(default)]
    pub content: Option<String>,
    /// Every other field (`tool_calls`, `refusal`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A streamed choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Its index.
    #[serde(default)]
    pub index: u32,
    /// What it adds.
    #[serde(default)]
    pub delta: ChatDelta,
    /// Why generation stopped, on its last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One streamed chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// The completion id.
    #[serde(default)]
    pub id: String,
    /// The model that answers.
    #[serde(default)]
    pub model: String,
    /// The choices (empty on the usage chunk).
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Usage, on the last chunk when `include_usage` was asked for.
    #[serde(default)]
    pub usage: Option<ChatUsage>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// The text this chunk adds to the first choice.
    pub fn text(&self) -> &str {
        self.choices
            .first()
            .and_then(|c| c.delta.content.as_deref())
            .unwrap_or("")
    }
}

impl StreamChunk for ChatChunk {
    fn usage(&self) -> Option<PartialUsage> {
        self.usage.map(PartialUsage::from)
    }

    fn finish_reason(&self) -> Option<&str> {
        self.choices.iter().find_map(|c| c.finish_reason.as_deref())
    }

    fn response_model(&self) -> Option<&str> {
        Some(self.model.as_str())
    }
}

/// The call the gates see for a chat-completions request: the model, the input estimate and
/// `max_completion_tokens`, else `max_tokens`; with neither, the configured default is written
/// into the request as `max_tokens`, so the provider enforces the cap the budget was projected
/// from. Shared by every adapter that sends chat completions.
pub(crate) fn llm_call(
    gov: &Governance,
    agent: &str,
    session: &str,
    req: &mut ChatRequest,
    stream: bool,
) -> LlmCall {
    let declared = req.max_completion_tokens.or(req.max_tokens);
    let mut call = LlmCall::new(agent, session, &req.model)
        .input_tokens(req.input_estimate())
        .streaming(stream);
    match declared {
        Some(n) => call = call.max_tokens(n),
        None => req.max_tokens = gov.config().cost.default_max_tokens,
    }
    call
}

/// Builds an [`OpenAiClient`].
#[must_use]
pub struct OpenAiBuilder {
    parts: http::BuilderParts,
}

impl std::fmt::Debug for OpenAiBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiBuilder")
            .field("provider", &self.parts.provider)
            .field("model_family", &self.parts.model_family)
            .finish_non_exhaustive()
    }
}

impl OpenAiBuilder {
    pub(crate) fn new(gov: Governance, base: String) -> Self {
        Self {
            parts: http::BuilderParts::new(gov, base, "openai"),
        }
    }

    /// The API key, sent as `Authorization: Bearer …` (never logged or stored).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.parts.api_key = Some(SecretString::from(key.into()));
        self
    }

    /// The provider name calls are governed under (default `openai`): scope checks
    /// `provider` or `provider:model`, and the registry records it. Set it for other
    /// OpenAI-compatible services (`deepseek`, `xai`, `vllm`, ...).
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.parts.provider = name.into();
        self
    }

    /// The model family the client is bound to (recorded in the registry only).
    pub fn model_family(mut self, family: impl Into<String>) -> Self {
        self.parts.model_family = Some(family.into());
        self
    }

    /// The reqwest client to send with (timeouts, proxies); default: a 10 s connect timeout.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.parts.http = Some(client);
        self
    }

    /// Another header on every request (`OpenAI-Organization`, ...).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parts.headers.push((name.into(), value.into()));
        self
    }

    /// Registers the client in the coverage registry and returns it.
    pub async fn build(self) -> Result<OpenAiClient> {
        let (guard, endpoint) = self
            .parts
            .build("/v1/chat/completions", "openai-http", Vec::new(), |key| {
                Ok((
                    AUTHORIZATION,
                    http::secret_header(&format!("Bearer {key}"))?,
                ))
            })
            .await?;
        Ok(OpenAiClient { guard, endpoint })
    }
}

/// An OpenAI-compatible chat-completions client whose every call is governed.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    guard: GuardClient,
    endpoint: Arc<Endpoint>,
}

impl OpenAiClient {
    /// The provider name calls are governed under.
    pub fn provider(&self) -> &str {
        self.guard.provider()
    }

    fn call(&self, agent: &str, session: &str, req: &mut ChatRequest, stream: bool) -> LlmCall {
        llm_call(self.guard.gov(), agent, session, req, stream)
    }

    /// One governed chat completion by `agent` in `session`.
    pub async fn chat(
        &self,
        agent: &str,
        session: &str,
        mut req: ChatRequest,
    ) -> Result<Governed<ChatResponse>> {
        req.stream = None;
        req.stream_options = None;
        let call = self.call(agent, session, &mut req, false);
        let flight = Flight::begin(self.guard.gov(), self.guard.info(), call).await?;
        let span = flight.span().clone();
        let sent = async {
            let resp = self.endpoint.post(&req).await?;
            http::read_json::<ChatResponse>(resp).await
        }
        .instrument(span)
        .await;
        match sent {
            Ok(body) => {
                let receipt = flight
                    .finish(
                        body.usage.map(PartialUsage::from),
                        body.choices.iter().find_map(|c| c.finish_reason.clone()),
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

    /// One governed streamed chat completion: read the stream to its end to settle the call;
    /// drop it to cancel.
    pub async fn chat_stream(
        &self,
        agent: &str,
        session: &str,
        mut req: ChatRequest,
    ) -> Result<GuardedStream<ChatChunk>> {
        req.stream = Some(true);
        if req.stream_options.is_none() {
            req.stream_options = Some(StreamOptions {
                include_usage: true,
            });
        }
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
                let data = ev.data.trim();
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    return None;
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
                return Some(match serde_json::from_value::<ChatChunk>(value) {
                    Ok(chunk) => (Ok(chunk), Some(sse)),
                    Err(_) => (Err(Failure::new("decode")), None),
                });
            }
        });
        Ok(GuardedStream::new(flight, Box::pin(items)))
    }
}
