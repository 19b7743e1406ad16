//! HTTP plumbing shared by the adapters: the endpoint (reqwest, rustls), one POST of a JSON
//! body, provider errors mapped to a [`Failure`] that holds no URL, key or provider free text,
//! and a decoder of server-sent events read chunk by chunk from the response.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Failure;
use crate::{Error, Result};

/// Most bytes read from an error body or held while waiting for the end of an event.
const MAX_BUFFER: usize = 1 << 20;

/// Where an adapter sends its requests.
#[derive(Debug)]
pub(crate) struct Endpoint {
    http: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
}

/// What every HTTP adapter's builder holds: the handle, the base URL, the key, the provider
/// name calls are governed under, the registry's model family, the reqwest client and extra
/// headers.
pub(crate) struct BuilderParts {
    pub(crate) gov: crate::Governance,
    pub(crate) base: String,
    pub(crate) api_key: Option<secrecy::SecretString>,
    pub(crate) provider: String,
    pub(crate) model_family: Option<String>,
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) headers: Vec<(String, String)>,
}

impl BuilderParts {
    pub(crate) fn new(gov: crate::Governance, base: String, provider: &str) -> Self {
        Self {
            gov,
            base,
            api_key: None,
            provider: provider.to_owned(),
            model_family: None,
            http: None,
            headers: Vec::new(),
        }
    }

    /// Registers the client (kind `kind`, e.g. `openai-http`) and builds its endpoint at
    /// `path`, with `fixed` headers and the key sent as `auth` makes it.
    pub(crate) async fn build(
        self,
        path: &str,
        kind: &'static str,
        mut fixed: Vec<(HeaderName, HeaderValue)>,
        auth: impl FnOnce(&str) -> Result<(HeaderName, HeaderValue)>,
    ) -> Result<(super::GuardClient, std::sync::Arc<Endpoint>)> {
        use secrecy::ExposeSecret as _;
        let (url, host) = endpoint_url(&self.base, path)?;
        let mut headers = extra_headers(self.headers)?;
        headers.append(&mut fixed);
        if let Some(key) = &self.api_key {
            headers.push(auth(key.expose_secret())?);
        }
        let client = match self.http {
            Some(c) => c,
            None => default_client()?,
        };
        let guard = super::GuardClient::register(
            self.gov,
            self.provider,
            kind,
            Some(host),
            self.model_family,
        )
        .await?;
        Ok((
            guard,
            std::sync::Arc::new(Endpoint::new(client, url, headers)),
        ))
    }
}

/// Extra headers, checked and marked sensitive (they may carry credentials).
pub(crate) fn extra_headers(list: Vec<(String, String)>) -> Result<Vec<(HeaderName, HeaderValue)>> {
    list.into_iter()
        .map(|(n, v)| {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| Error::Config(format!("{n:?} is not a valid header name")))?;
            let mut value = HeaderValue::from_str(&v)
                .map_err(|_| Error::Config(format!("the value of header {n} is not valid")))?;
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

/// Parses `base` and appends `path`; returns the endpoint URL and its hostname. A base that
/// already ends in `/v1` is accepted (the `/v1` is not doubled). Errors never repeat the URL.
pub(crate) fn endpoint_url(base: &str, path: &str) -> Result<(reqwest::Url, String)> {
    let bad = || {
        Error::Config(
            "the LLM base URL is not valid: expected http(s)://host[:port][/prefix]".into(),
        )
    };
    let mut url = reqwest::Url::parse(base.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad());
    }
    let host = url.host_str().ok_or_else(bad)?.to_owned();
    let mut prefix = url.path().trim_end_matches('/').to_owned();
    if prefix.ends_with("/v1") {
        prefix.truncate(prefix.len() - 3);
    }
    url.set_path(&format!("{prefix}{path}"));
    Ok((url, host))
}

/// A header value for a secret: refused (without showing it) when it is not a valid header,
/// and marked sensitive so that it is never printed.
pub(crate) fn secret_header(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| Error::Config("the API key is not a valid HTTP header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The client used when the caller gives none: a 10 s connect timeout, no overall timeout (a
/// stream may last minutes; cancel by dropping it).
pub(crate) fn default_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|_| Error::Config("the HTTP client could not be built".into()))
}

impl Endpoint {
    pub(crate) fn new(
        http: reqwest::Client,
        url: reqwest::Url,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Self {
        Self {
            http,
            url,
            headers: headers.into_iter().collect(),
        }
    }

    /// Sends `body` and returns the response when its status is a success.
    pub(crate) async fn post(
        &self,
        body: &impl Serialize,
    ) -> std::result::Result<reqwest::Response, Failure> {
        let resp = self
            .http
            .post(self.url.clone())
            .headers(self.headers.clone())
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(status_failure(resp).await)
        }
    }
}

/// A transport error, classified; reqwest's text (which may hold the URL) is not kept.
pub(crate) fn transport(e: reqwest::Error) -> Failure {
    Failure::new(if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_decode() || e.is_body() {
        "decode"
    } else {
        "transport"
    })
}

/// A provider's error code, kept only when it looks like one (`rate_limit_error`,
/// `server_error`, `insufficient_quota`): never free text.
pub(crate) fn error_code(v: &serde_json::Value) -> Option<String> {
    let e = v.get("error")?;
    // The code is the more specific where both exist (OpenAI: type `requests`, code
    // `rate_limit_exceeded`); Anthropic has only a type.
    let code = [e.get("code"), e.get("type")]
        .into_iter()
        .flatten()
        .find_map(|c| c.as_str().filter(|s| !s.is_empty()))?;
    (code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    .then(|| code.to_owned())
}

async fn status_failure(mut resp: reqwest::Response) -> Failure {
    let status = resp.status().as_u16();
    let retry_after_s = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BUFFER {
            break;
        }
    }
    let error_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| error_code(&v));
    Failure {
        status: Some(status),
        error_type,
        retry_after_s,
        ..Failure::new("http_status")
    }
}

/// Reads the whole body and decodes it.
pub(crate) async fn read_json<T: DeserializeOwned>(
    resp: reqwest::Response,
) -> std::result::Result<T, Failure> {
    let bytes = resp.bytes().await.map_err(transport)?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::new("decode"))
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub(crate) data: String,
}

/// Decodes the server-sent events of a response as they arrive.
#[derive(Debug)]
pub(crate) struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    eof: bool,
}

impl Sse {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// The next event; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Option<std::result::Result<SseEvent, Failure>> {
        loop {
            if let Some(ev) = self.take_event() {
                return Some(Ok(ev));
            }
            if self.eof {
                // A last event not followed by a blank line still counts.
                let rest = std::mem::take(&mut self.buf);
                return parse_block(&rest).map(Ok);
            }
            if self.buf.len() > MAX_BUFFER {
                self.eof = true;
                return Some(Err(Failure::new("decode")));
            }
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self
                    .buf
                    .extend(bytes.iter().copied().filter(|b| *b != b'\r')),
                Ok(None) => self.eof = true,
                Err(e) => {
                    self.eof = true;
                    self.buf.clear();
                    return Some(Err(transport(e)));
                }
            }
        }
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            if let Some(ev) = parse_block(&block) {
                return Some(ev);
            }
        }
    }
}

/// Parses one event block; `None` for a block of comments or blank lines only.
fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut ev = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.event = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && ev.event.is_none() {
        return None;
    }
    ev.data = data.join("\n");
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_parse_like_the_spec() {
        assert_eq!(
            parse_block(b"event: message_start\ndata: {\"a\":1}\n\n"),
            Some(SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            parse_block(b"data:x\ndata: y\n"),
            Some(SseEvent {
                event: None,
                data: "x\ny".into()
            })
        );
        assert_eq!(parse_block(b": keep-alive\n\n"), None);
    }

    #[test]
    fn base_urls_gain_the_path_once() {
        let (u, host) = endpoint_url("https://api.openai.com", "/v1/chat/completions").unwrap();
        assert_eq!(u.as_str(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(host, "api.openai.com");
        let (u, _) = endpoint_url("http://127.0.0.1:8080/proxy/v1/", "/v1/messages").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/proxy/v1/messages");
        let err = endpoint_url("ftp://user:hunter2@host", "/v1/messages").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(endpoint_url("not a url", "/x").is_err());
    }

    #[test]
    fn only_code_like_error_types_are_kept() {
        let v = serde_json::json!({"error": {"type": "rate_limit_error", "message": "slow down, key sk-abc"}});
        assert_eq!(error_code(&v).as_deref(), Some("rate_limit_error"));
        let v = serde_json::json!({"error": {"message": "x", "type": null, "code": "insufficient_quota"}});
        assert_eq!(error_code(&v).as_deref(), Some("insufficient_quota"));
        let v = serde_json::json!({"error": {"type": "Incorrect API key provided: sk-abc"}});
        assert_eq!(error_code(&v), None);
    }
}
