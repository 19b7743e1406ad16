//! The notifier's configuration: a TOML file naming the console's address (for deep links), the
//! channels (webhooks, email recipients) and which requests each one hears of. Secrets are never
//! in the file: it names the environment variables that hold them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::NotifyError;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// The console's public address: links go to `{console_url}/approvals/{id}`.
    pub console_url: String,
    /// Seconds between rounds (sweep, fan-out, deliveries); default 5.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// How far back a new runner looks for requests it has not notified (hours); default 24.
    #[serde(default = "default_lookback")]
    pub lookback_hours: u64,
    /// Attempts per delivery before it is dead-lettered; default 8.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay (milliseconds), doubled per attempt up to `retry_max_secs`;
    /// default 2000.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    /// The longest delay between retries (seconds); default 600.
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// Seconds an HTTP or SMTP attempt may take; default 10.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Whether to escalate and expire requests (the sweep) in each round; default true.
    #[serde(default = "yes")]
    pub sweep: bool,
    /// The SMTP server, for `[[email]]` channels.
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    /// Webhooks.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// Email recipients.
    #[serde(default)]
    pub email: Vec<EmailConfig>,
}

fn default_poll() -> u64 {
    5
}
fn default_lookback() -> u64 {
    24
}
fn default_attempts() -> u32 {
    8
}
fn default_retry_initial() -> u64 {
    2_000
}
fn default_retry_max() -> u64 {
    600
}
fn default_timeout() -> u64 {
    10
}
fn yes() -> bool {
    true
}

/// What a webhook's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The request as governance's own JSON (the default).
    #[default]
    Json,
    /// A Slack incoming-webhook message (`text` and `blocks`), also read by Mattermost and
    /// other Slack-compatible receivers.
    Slack,
    /// A CloudEvents 1.0 event in structured mode (`application/cloudevents+json`).
    Cloudevents,
}

/// Which requests a channel hears of. Every list left out matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// `requested`, `escalated`, `expired`; default all three.
    #[serde(default)]
    pub events: Vec<String>,
    /// Agents (exact ids).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Tools (exact names).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Groups: the request's approver group, or for `escalated` its escalation group.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Its name (unique among channels; recorded with each delivery).
    pub name: String,
    /// The URL; or leave it out and name the variable holding it in `url_env` (a Slack
    /// webhook's URL is itself a secret).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The body's format.
    #[serde(default)]
    pub format: WebhookFormat,
    /// The environment variable holding the HMAC-SHA256 signing secret (signature header
    /// `X-Governance-Signature: t=<unix time>,v1=<hex>` over `<unix time>.<body>`).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Which requests.
    #[serde(flatten)]
    pub filter: Filter,
}

/// An email channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Its name.
    pub name: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Which requests.
    #[serde(flatten)]
    pub filter: Filter,
}

/// How to reach the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (port 587; the default).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same host or a test sink.
    None,
}

/// The SMTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name.
    pub host: String,
    /// Port; default 587 (STARTTLS), 465 (TLS) or 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    /// Transport security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// The sender address.
    pub from: String,
    /// User name, when the server needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
}

/// Secrets resolved from the environment (or given by a test): per webhook its URL and signing
/// secret, and the SMTP password.
#[derive(Default, Clone)]
pub struct Secrets {
    /// Webhook name → URL (when the file names `url_env`).
    pub urls: BTreeMap<String, String>,
    /// Webhook name → signing secret.
    pub signing: BTreeMap<String, Vec<u8>>,
    /// The SMTP password.
    pub smtp_password: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("urls", &self.urls.keys().collect::<Vec<_>>())
            .field("signing", &self.signing.keys().collect::<Vec<_>>())
            .field("smtp_password", &self.smtp_password.as_ref().map(|_| "…"))
            .finish()
    }
}

impl NotifyConfig {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Self, NotifyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NotifyError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and checks TOML.
    pub fn parse(text: &str) -> Result<Self, NotifyError> {
        let c: Self = toml::from_str(text).map_err(|e| NotifyError::Config(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), NotifyError> {
        let bad = |m: String| Err(NotifyError::Config(m));
        if !(self.console_url.starts_with("http://") || self.console_url.starts_with("https://")) {
            return bad("console_url must be an http:// or https:// address".into());
        }
        let mut names = std::collections::BTreeSet::new();
        let all = self
            .webhook
            .iter()
            .map(|w| (&w.name, &w.filter))
            .chain(self.email.iter().map(|e| (&e.name, &e.filter)));
        for (name, filter) in all {
            if name.is_empty() || name.len() > 64 || !names.insert(name.clone()) {
                return bad(format!(
                    "channel names must be unique, 1 to 64 bytes: {name:?}"
                ));
            }
            for e in &filter.events {
                if !crate::EVENTS.contains(&e.as_str()) {
                    return bad(format!(
                        "channel {name}: unknown event {e:?} (requested, escalated, expired)"
                    ));
                }
            }
        }
        for w in &self.webhook {
            if w.url.is_some() == w.url_env.is_some() {
                return bad(format!(
                    "webhook {}: give exactly one of url and url_env",
                    w.name
                ));
            }
        }
        if !self.email.is_empty() && self.smtp.is_none() {
            return bad("[[email]] channels need an [smtp] section".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1".into());
        }
        Ok(())
    }

    /// Reads the secrets the file names from the environment; a named variable that is not set
    /// is a configuration error.
    pub fn secrets_from_env(&self) -> Result<Secrets, NotifyError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                NotifyError::Config(format!("the environment variable {name} is not set"))
            })
        };
        let mut s = Secrets::default();
        for w in &self.webhook {
            if let Some(v) = &w.url_env {
                s.urls.insert(w.name.clone(), var(v)?);
            }
            if let Some(v) = &w.secret_env {
                s.signing.insert(w.name.clone(), var(v)?.into_bytes());
            }
        }
        if let Some(v) = self.smtp.as_ref().and_then(|m| m.password_env.as_ref()) {
            s.smtp_password = Some(var(v)?);
        }
        Ok(s)
    }
}

impl Filter {
    /// Whether a request's event passes.
    pub(crate) fn matches(&self, event: &str, g: &gov_sdk::GateRecord) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        let group = if event == "escalated" {
            g.workflow.escalate_to.as_deref()
        } else {
            g.workflow.approver_group.as_deref()
        };
        any(&self.events, event)
            && any(&self.agents, &g.agent_id)
            && any(&self.tools, &g.tool)
            && (self.groups.is_empty() || group.is_some_and(|gr| any(&self.groups, gr)))
    }
}
