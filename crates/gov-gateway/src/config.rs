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
    /// The MCP gateway (`/mcp`): its upstream MCP servers.
    #[serde(default)]
    pub mcp: Option<McpFile>,
}

/// The `[mcp]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpFile {
    /// How long `tools/call` of a gated tool waits for a person's decision before it answers
    /// "pending" (the client calls again to keep waiting). Default 240 s (below the usual
    /// 300 s read timeout of MCP clients).
    #[serde(default)]
    pub approval_wait_secs: Option<u64>,
    /// `Host` header values `/mcp` accepts (DNS-rebinding protection), such as
    /// `gateway.internal` or `gateway.internal:8089`. Default: loopback names only.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    /// The upstream servers, by name (`[mcp.servers.files]`).
    #[serde(default)]
    pub servers: std::collections::BTreeMap<String, McpServerFile>,
}

/// One upstream MCP server, as written: `url` (streamable HTTP) or `command` (a stdio server
/// the gateway spawns).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerFile {
    /// The server's streamable HTTP endpoint (`http://127.0.0.1:9000/mcp`).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding a bearer token for `url` (none: no token is sent).
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// A stdio server: the program and its arguments (`["python3", "server.py"]`).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// The environment variables passed on to a stdio server (besides `PATH`, `HOME` and
    /// `LANG`); nothing else of the gateway's environment reaches it.
    #[serde(default)]
    pub env: Vec<String>,
    /// Tools that wait for a person's approval of the exact call before they run.
    #[serde(default)]
    pub gated: Vec<String>,
    /// Refuse this server's calls while the agent's session or day budget has no headroom left.
    #[serde(default)]
    pub budget: bool,
    /// What the server's tools are called by the agent: `{prefix}{tool}`. Default `{name}__`.
    #[serde(default)]
    pub tool_prefix: Option<String>,
}

/// How the gateway reaches an upstream MCP server.
#[derive(Debug, Clone)]
pub enum McpTransport {
    /// Streamable HTTP.
    Http {
        /// The endpoint.
        url: reqwest::Url,
        /// A bearer token sent to it.
        bearer: Option<SecretString>,
    },
    /// A stdio server the gateway spawns (with a cleared environment).
    Stdio {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// The variables it gets, with their values.
        env: Vec<(String, String)>,
    },
}

/// An upstream MCP server, resolved.
#[derive(Debug, Clone)]
pub struct McpServer {
    /// Its name: scope and policies know its tools as `name/tool`.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
    /// Tools that need a person's approval.
    pub gated: std::collections::BTreeSet<String>,
    /// Whether calls need budget headroom.
    pub budget: bool,
    /// The prefix of its tools' names as the agent sees them.
    pub tool_prefix: String,
}

/// The MCP gateway's configuration, resolved.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// How long a gated call waits for a decision before answering "pending".
    pub approval_wait: Duration,
    /// Accepted `Host` header values.
    pub allowed_hosts: Vec<String>,
    /// The upstream servers, in name order.
    pub servers: Vec<McpServer>,
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
    /// The MCP gateway, when configured.
    pub mcp: Option<McpConfig>,
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
        let no_mcp = file.mcp.as_ref().is_none_or(|m| m.servers.is_empty());
        if file.openai.is_none() && file.anthropic.is_none() && no_mcp {
            return Err(GatewayError::Config(
                "the gateway configuration names no upstream: add an [openai] or [anthropic] \
                 table with its base_url, or an [mcp.servers.NAME] table"
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
            mcp: file.mcp.map(|m| resolve_mcp(m, env)).transpose()?,
        })
    }
}

/// Whether `name` may name an MCP server: 1 to 64 of `A-Z a-z 0-9 _ -` (it appears in scope
/// entries `name/tool` and in tool names).
fn valid_server_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn resolve_mcp(file: McpFile, env: &dyn Fn(&str) -> Option<String>) -> Result<McpConfig> {
    let mut servers = Vec::new();
    for (name, s) in file.servers {
        let bad = |why: String| GatewayError::Config(format!("[mcp.servers.{name}] {why}"));
        if !valid_server_name(&name) {
            return Err(GatewayError::Config(format!(
                "[mcp.servers.{name}]: a server name is 1 to 64 letters, digits, _ or -"
            )));
        }
        let transport = match (&s.url, &s.command) {
            (Some(url), None) => {
                let parsed = reqwest::Url::parse(url.trim())
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                    .ok_or_else(|| {
                        bad("url is not valid: expected http(s)://host[:port]/path".into())
                    })?;
                let bearer = match &s.bearer_token_env {
                    Some(var) => Some(SecretString::from(
                        env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                            bad(format!(
                                "bearer_token_env names {var}, which is not set: export the server's token in it"
                            ))
                        })?,
                    )),
                    None => None,
                };
                if !s.env.is_empty() {
                    return Err(bad(
                        "env applies to a stdio server (command), not to url".into()
                    ));
                }
                McpTransport::Http {
                    url: parsed,
                    bearer,
                }
            }
            (None, Some(command)) => {
                let Some((program, args)) = command.split_first().filter(|(p, _)| !p.is_empty())
                else {
                    return Err(bad(
                        "command is empty: give the program and its arguments".into()
                    ));
                };
                if s.bearer_token_env.is_some() {
                    return Err(bad(
                        "bearer_token_env applies to url; pass a stdio server its token with env"
                            .into(),
                    ));
                }
                let mut vars = Vec::new();
                for var in ["PATH", "HOME", "LANG"]
                    .iter()
                    .map(|v| (*v).to_owned())
                    .chain(s.env.iter().cloned())
                {
                    if let Some(value) = env(&var) {
                        vars.push((var, value));
                    } else if s.env.contains(&var) {
                        return Err(bad(format!("env names {var}, which is not set")));
                    }
                }
                McpTransport::Stdio {
                    program: program.clone(),
                    args: args.to_vec(),
                    env: vars,
                }
            }
            _ => {
                return Err(bad(
                    "give exactly one of url (a streamable HTTP server) or command (a stdio server)"
                        .into(),
                ));
            }
        };
        let tool_prefix = s.tool_prefix.unwrap_or_else(|| format!("{name}__"));
        if tool_prefix.len() > 64 {
            return Err(bad("tool_prefix is longer than 64 bytes".into()));
        }
        servers.push(McpServer {
            name,
            transport,
            gated: s.gated.into_iter().collect(),
            budget: s.budget,
            tool_prefix,
        });
    }
    // One exposed name must map to one server: no prefix may start another.
    for a in &servers {
        for b in &servers {
            if a.name != b.name && b.tool_prefix.starts_with(&a.tool_prefix) {
                return Err(GatewayError::Config(format!(
                    "[mcp.servers.{}] and [mcp.servers.{}]: tool_prefix {:?} starts with {:?}, so tool names would be ambiguous; give them distinct prefixes",
                    a.name, b.name, b.tool_prefix, a.tool_prefix
                )));
            }
        }
    }
    Ok(McpConfig {
        approval_wait: Duration::from_secs(file.approval_wait_secs.unwrap_or(240)),
        allowed_hosts: file
            .allowed_hosts
            .unwrap_or_else(|| ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()),
        servers,
    })
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

    #[test]
    fn mcp_servers_resolve_and_bad_ones_are_named() {
        let text = r#"
            [mcp]
            approval_wait_secs = 7
            [mcp.servers.files]
            url = "http://127.0.0.1:9/mcp"
            bearer_token_env = "FILES_TOKEN"
            gated = ["delete"]
            [mcp.servers.git]
            command = ["git-mcp", "--repo", "."]
            env = ["GIT_TOKEN"]
            tool_prefix = ""
        "#;
        let env = |n: &str| match n {
            "FILES_TOKEN" => Some("t".to_owned()),
            "GIT_TOKEN" => Some("g".to_owned()),
            "PATH" => Some("/bin".to_owned()),
            _ => None,
        };
        let err = Config::from_toml(text, &env).expect_err("the empty prefix starts every other");
        assert!(err.to_string().contains("ambiguous"), "{err}");
        let text = text.replace(r#"tool_prefix = """#, r#"tool_prefix = "g_""#);
        let cfg = Config::from_toml(&text, &env).expect("valid");
        let mcp = cfg.mcp.expect("mcp");
        assert_eq!(mcp.approval_wait, Duration::from_secs(7));
        assert_eq!(mcp.servers[0].name, "files");
        assert_eq!(mcp.servers[0].tool_prefix, "files__");
        assert!(mcp.servers[0].gated.contains("delete"));
        match &mcp.servers[1].transport {
            McpTransport::Stdio { program, env, .. } => {
                assert_eq!(program, "git-mcp");
                let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(
                    names,
                    ["PATH", "GIT_TOKEN"],
                    "nothing else of the environment"
                );
            }
            other => panic!("{other:?}"),
        }
        let err = Config::from_toml(&text, &|n| (n == "PATH").then(|| "/bin".into()))
            .expect_err("no token");
        assert!(err.to_string().contains("FILES_TOKEN"), "{err}");
        let both = "[mcp.servers.x]\nurl = \"http://h/mcp\"\ncommand = [\"a\"]\n";
        let err = Config::from_toml(both, &|_| None).expect_err("both");
        assert!(err.to_string().contains("exactly one"), "{err}");
        let bad_name = "[mcp.servers.\"a/b\"]\nurl = \"http://h/mcp\"\n";
        let err = Config::from_toml(bad_name, &|_| None).expect_err("name");
        assert!(err.to_string().contains("server name"), "{err}");
    }
}
