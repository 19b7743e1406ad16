//! The gateway's configuration: one TOML file, with secrets (provider API keys) read from the
//! environment variables it names, never from the file. This module must not print a secret.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::{GatewayError, Result};

/// What to do with a tool call in an answer that falls outside the agent's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCallPolicy {
    /// Pass the answer through and audit the call as `scope.denied` (the default).
    #[default]
    Flag,
    /// Audit it as `scope.denied` and refuse the answer (403; a stream ends with an error
    /// event after the call is settled).
    Block,
}

/// One upstream provider as the file names it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// `https://api.openai.com` (requests go to `{base_url}/v1/...`; a trailing `/v1` is
    /// accepted).
    pub base_url: String,
    /// The environment variable holding the provider's API key (none: no key is sent).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The provider name calls are governed under (scope's `allowed_apis` hold `name` or
    /// `name:model`). Default `openai` or `anthropic`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where to listen. Default `127.0.0.1:8089`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The session calls are budgeted under when the request names none
    /// (`x-governance-session`). Default `gateway`.
    #[serde(default)]
    pub default_session: Option<String>,
    /// `max_tokens` reserved for a request that declares none. Default: such requests are
    /// refused (400), except Anthropic's, which always declare it.
    #[serde(default)]
    pub default_max_tokens: Option<u64>,
    /// What to do with an out-of-scope tool call in an answer: `flag` (default) or `block`.
    #[serde(default)]
    pub tool_calls: ToolCallPolicy,
    /// How long an authenticated key is trusted before it is looked up again (a revocation
    /// takes at most this long). Default 5 s; 0 looks it up on every request.
    #[serde(default)]
    pub key_cache_secs: Option<u64>,
    /// How long a shutdown waits for calls in flight to finish and settle. Default 30 s.
    #[serde(default)]
    pub shutdown_grace_secs: Option<u64>,
    /// The OpenAI-compatible upstream (`/v1/chat/completions`, `/v1/models`).
    #[serde(default)]
    pub openai: Option<ProviderFile>,
    /// The Anthropic upstream (`/v1/messages`).
    #[serde(default)]
    pub anthropic: Option<ProviderFile>,
}

/// An upstream provider, resolved.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The base URL, checked.
    pub base_url: reqwest::Url,
    /// The API key, if any.
    pub api_key: Option<SecretString>,
    /// The provider name calls are governed under.
    pub name: String,
}

/// The gateway's configuration, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `governance gateway serve` listens.
    pub listen: SocketAddr,
    /// The session of requests that name none.
    pub default_session: String,
    /// `max_tokens` reserved for a request that declares none.
    pub default_max_tokens: Option<u64>,
    /// What to do with out-of-scope tool calls in answers.
    pub tool_calls: ToolCallPolicy,
    /// How long an authenticated key is trusted.
    pub key_cache: Duration,
    /// How long a shutdown waits for calls in flight.
    pub shutdown_grace: Duration,
    /// The OpenAI-compatible upstream.
    pub openai: Option<Provider>,
    /// The Anthropic upstream.
    pub anthropic: Option<Provider>,
}

impl Config {
    /// Parses a configuration file's text; `env` answers the environment variables it names
    /// (`|n| std::env::var(n).ok()` in a real process). Errors name the field, never a value.
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            GatewayError::Config(format!("the gateway configuration: {}", e.message()))
        })?;
        Self::resolve(file, env)
    }

    /// Reads and parses the file at `path` (see [`Config::from_toml`]).
    pub fn load(path: &std::path::Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            GatewayError::Config(format!(
                "cannot read the gateway configuration {}: {e}",
                path.display()
            ))
        })?;
        Self::from_toml(&text, env)
    }

    /// Checks and resolves a parsed file.
    pub fn resolve(file: ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        if file.openai.is_none() && file.anthropic.is_none() {
            return Err(GatewayError::Config(
                "the gateway configuration names no upstream: add an [openai] or [anthropic] \
                 table with its base_url"
                    .into(),
            ));
        }
        let provider = |p: Option<ProviderFile>, default: &str| -> Result<Option<Provider>> {
            let Some(p) = p else { return Ok(None) };
            let bad = || {
                GatewayError::Config(format!(
                    "[{default}] base_url is not valid: expected http(s)://host[:port][/prefix]"
                ))
            };
            let url = reqwest::Url::parse(p.base_url.trim()).map_err(|_| bad())?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(bad());
            }
            let api_key = match &p.api_key_env {
                Some(var) => Some(SecretString::from(env(var).filter(|v| !v.is_empty()).ok_or_else(
                    || {
                        GatewayError::Config(format!(
                            "[{default}] api_key_env names {var}, which is not set: export the provider's API key in it"
                        ))
                    },
                )?)),
                None => None,
            };
            if let (Some(key), Some(var)) = (&api_key, &p.api_key_env) {
                use secrecy::ExposeSecret as _;
                let value = format!("Bearer {}", key.expose_secret());
                if reqwest::header::HeaderValue::from_str(&value).is_err() {
                    return Err(GatewayError::Config(format!(
                        "[{default}] the value of {var} is not a valid HTTP header value (stray spaces or newlines?)"
                    )));
                }
            }
            let name = p.name.unwrap_or_else(|| default.to_owned());
            if name.is_empty() || name.len() > 128 {
                return Err(GatewayError::Config(format!(
                    "[{default}] name must be 1 to 128 characters"
                )));
            }
            Ok(Some(Provider {
                base_url: url,
                api_key,
                name,
            }))
        };
        let default_session = file.default_session.unwrap_or_else(|| "gateway".into());
        if default_session.is_empty() || default_session.len() > 128 {
            return Err(GatewayError::Config(
                "default_session must be 1 to 128 characters".into(),
            ));
        }
        Ok(Self {
            listen: file
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8089))),
            default_session,
            default_max_tokens: file.default_max_tokens,
            tool_calls: file.tool_calls,
            key_cache: Duration::from_secs(file.key_cache_secs.unwrap_or(5)),
            shutdown_grace: Duration::from_secs(file.shutdown_grace_secs.unwrap_or(30)),
            openai: provider(file.openai, "openai")?,
            anthropic: provider(file.anthropic, "anthropic")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_resolves_with_its_secrets_from_the_environment() {
        let text = r#"
            listen = "127.0.0.1:9000"
            default_max_tokens = 256
            tool_calls = "block"
            [openai]
            base_url = "http://127.0.0.1:1/v1"
            api_key_env = "UP_KEY"
        "#;
        let cfg =
            Config::from_toml(text, &|n| (n == "UP_KEY").then(|| "sk-test".into())).expect("valid");
        assert_eq!(cfg.tool_calls, ToolCallPolicy::Block);
        assert_eq!(cfg.openai.as_ref().map(|p| p.name.as_str()), Some("openai"));
        assert!(cfg.anthropic.is_none());
        let err = Config::from_toml(text, &|_| None).expect_err("no key");
        assert!(err.to_string().contains("UP_KEY"), "{err}");
        let err = Config::from_toml("listen = 3", &|_| None).expect_err("bad");
        assert!(err.to_string().contains("gateway configuration"), "{err}");
    }
}
