//! Approval notifications that reach people where they are: signed webhooks (governance's JSON,
//! Slack-compatible messages, CloudEvents) and email over SMTP, each with a deep link to the
//! console's page of the request.
//!
//! A [`Notifier`] runs beside the console (`governance notify run`, or inside `governance
//! console serve --notify FILE`), never in the agent's process: it connects as an operator (the
//! schema owner's URL), because an agent must not be able to hold back, forge or mark a
//! notification, an escalation or an expiry. Each round it
//!
//! 1. sweeps: escalates the requests whose escalation time came and denies those that expired
//!    (`Workflows::sweep`, on the store's clock);
//! 2. fans out: for each recent request and event (`requested`, `escalated`, `expired`) and each
//!    channel whose filter matches, queues one delivery (once, however many runners or rounds);
//! 3. delivers what is due: leased so that two runners never send the same one at once, retried
//!    with exponential backoff after a failure (an HTTP status other than 2xx, a refused or
//!    timed-out connection, an SMTP error), and dead-lettered (kept, status `dead`, with the last
//!    error) once its attempts are spent.
//!
//! Delivery is at least once: a receiver deduplicates by the `X-Governance-Delivery` header
//! (webhooks) or the `Message-ID` (email).
//!
//! # Invariants
//!
//! - Runs as an operator, never in the agent's process; the agent's credentials can neither
//!   read nor change deliveries.
//! - No secret (signing secret, webhook URL from the environment, SMTP password) is logged or
//!   stored in a delivery's error text.
//! - A webhook's body is signed as sent: `X-Governance-Signature: t=<unix>,v1=<hex of
//!   HMAC-SHA256(secret, "<unix>.<body>")>`.

pub mod config;

use std::time::Duration;

use gov_sdk::{GateRecord, Governance, NewNotification, NotificationOutcome, NotificationRecord};
use hmac::{KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use config::{
    EmailConfig, Filter, NotifyConfig, Secrets, SmtpConfig, SmtpTls, WebhookConfig, WebhookFormat,
};

/// The events a request is notified for.
pub const EVENTS: &[&str] = &["requested", "escalated", "expired"];

/// The signature header of a webhook.
pub const SIGNATURE_HEADER: &str = "X-Governance-Signature";
/// The header naming a delivery (the same on every retry: deduplicate by it).
pub const DELIVERY_HEADER: &str = "X-Governance-Delivery";
/// The header naming the event (`requested`, `escalated`, `expired`).
pub const EVENT_HEADER: &str = "X-Governance-Event";

/// Why the notifier could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The configuration is wrong.
    #[error("notification configuration: {0}")]
    Config(String),
    /// Governance (the database) refused or is out of reach.
    #[error(transparent)]
    Governance(#[from] gov_sdk::Error),
}

impl NotifyError {
    /// The error's kind, for exit codes.
    pub fn kind(&self) -> gov_sdk::ErrorKind {
        match self {
            Self::Config(_) => gov_sdk::ErrorKind::Config,
            Self::Governance(e) => e.kind(),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Requests escalated.
    pub escalated: usize,
    /// Requests denied for expiring.
    pub expired: usize,
    /// Deliveries queued.
    pub queued: u64,
    /// Deliveries delivered.
    pub delivered: usize,
    /// Deliveries that failed and will be retried.
    pub retried: usize,
    /// Deliveries dead-lettered.
    pub dead: usize,
}

/// The notifier: configuration, secrets, an HTTP client and an operator handle.
#[derive(Debug)]
pub struct Notifier {
    gov: Governance,
    config: NotifyConfig,
    secrets: Secrets,
    http: reqwest::Client,
}

/// The deep link to a request's page in the console.
pub fn approval_link(console_url: &str, id: uuid::Uuid) -> String {
    format!("{}/approvals/{id}", console_url.trim_end_matches('/'))
}

/// The signature header's value for `body` at `t` (unix seconds).
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` under `secret` (constant-time comparison),
/// for receivers written in Rust and for tests.
pub fn verify(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return false,
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn title(event: &str, g: &GateRecord) -> String {
    match event {
        "escalated" => format!(
            "Approval escalated to {}: {} by {}",
            g.workflow.escalate_to.as_deref().unwrap_or("another group"),
            g.tool,
            g.agent_id
        ),
        "expired" => format!(
            "Approval expired undecided (denied): {} by {}",
            g.tool, g.agent_id
        ),
        _ => format!("Approval requested: {} by {}", g.tool, g.agent_id),
    }
}

/// The request as governance's JSON body.
pub fn request_json(event: &str, g: &GateRecord, link: &str) -> Value {
    json!({
        "type": format!("governance.approval.{event}"),
        "event": event,
        "request_id": g.id,
        "agent_id": g.agent_id,
        "session_id": g.session_id,
        "tool": g.tool,
        "arguments": serde_json::from_str::<Value>(&g.args).unwrap_or(Value::String(g.args.clone())),
        "requested_at": rfc3339(g.requested_at),
        "expires_at": rfc3339(g.expires_at),
        "workflow": g.workflow.name,
        "quorum": g.workflow.quorum,
        "approvals": g.workflow.approvals,
        "approver_group": g.workflow.approver_group,
        "escalate_to": g.workflow.escalate_to,
        "url": link,
    })
}

/// A webhook body in `format`, and its content type.
pub fn webhook_body(
    format: WebhookFormat,
    event: &str,
    g: &GateRecord,
    link: &str,
    delivery: &str,
    now: OffsetDateTime,
) -> (Vec<u8>, &'static str) {
    let body = match format {
        WebhookFormat::Json => request_json(event, g, link),
        WebhookFormat::Slack => {
            let text = format!("{} — <{link}|review it in the console>", title(event, g));
            let args = if g.args.len() > 1_500 {
                format!("{}…", g.args.chars().take(1_500).collect::<String>())
            } else {
                g.args.clone()
            };
            json!({
                "text": text,
                "blocks": [
                    { "type": "section", "text": { "type": "mrkdwn", "text": format!(
                        "*{}*\nAgent `{}`, session `{}`, tool `{}`\nApprovals {} of {}{}\nExpires {}",
                        title(event, g),
                        g.agent_id,
                        g.session_id.as_deref().unwrap_or("-"),
                        g.tool,
                        g.workflow.approvals,
                        g.workflow.quorum,
                        g.workflow.approver_group.as_deref().map(|x| format!(" from {x}")).unwrap_or_default(),
                        rfc3339(g.expires_at),
                    ) } },
                    { "type": "section", "text": { "type": "mrkdwn", "text": format!("```{args}```") } },
                    { "type": "actions", "elements": [
                        { "type": "button", "text": { "type": "plain_text", "text": "Review" }, "url": link }
                    ] }
                ]
            })
        }
        WebhookFormat::Cloudevents => json!({
            "specversion": "1.0",
            "type": format!("dev.governance.approval.{event}"),
            "source": "governance/notify",
            "id": delivery,
            "time": rfc3339(now),
            "subject": g.id.to_string(),
            "datacontenttype": "application/json",
            "data": request_json(event, g, link),
        }),
    };
    let ct = match format {
        WebhookFormat::Cloudevents => "application/cloudevents+json",
        _ => "application/json",
    };
    (serde_json::to_vec(&body).unwrap_or_default(), ct)
}

/// An email's subject and plain-text body.
pub fn email_text(event: &str, g: &GateRecord, link: &str) -> (String, String) {
    let subject = format!("[governance] {}", title(event, g));
    let mut body = format!(
        "{}\n\nReview and decide in the console:\n{link}\n\nAgent:    {}\nSession:  {}\nTool:     {}\nApprovals: {} of {}{}\nExpires:  {}\n\nArguments:\n{}\n",
        title(event, g),
        g.agent_id,
        g.session_id.as_deref().unwrap_or("-"),
        g.tool,
        g.workflow.approvals,
        g.workflow.quorum,
        g.workflow
            .approver_group
            .as_deref()
            .map(|x| format!(" (group {x})"))
            .unwrap_or_default(),
        rfc3339(g.expires_at),
        serde_json::from_str::<Value>(&g.args)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| g.args.clone()),
    );
    body.push_str("\nRequest id: ");
    body.push_str(&g.id.to_string());
    body.push('\n');
    (subject, body)
}

/// The events a request is notified for now: `requested` while it is pending, `escalated`
/// once it was escalated and still pending, `expired` once it was denied for expiring.
fn events_of(g: &GateRecord) -> Vec<&'static str> {
    let mut out = Vec::new();
    let pending = g.status == gov_sdk::GateStatus::Pending;
    if pending {
        out.push("requested");
        if g.workflow.escalated_at.is_some() {
            out.push("escalated");
        }
    }
    if g.workflow.expired_at.is_some() {
        out.push("expired");
    }
    out
}

impl Notifier {
    /// A notifier on an operator handle. Checks the configuration against the secrets.
    pub fn new(
        gov: Governance,
        config: NotifyConfig,
        secrets: Secrets,
    ) -> Result<Self, NotifyError> {
        for w in &config.webhook {
            if w.url_env.is_some() && !secrets.urls.contains_key(&w.name) {
                return Err(NotifyError::Config(format!(
                    "webhook {}: its URL is not among the secrets",
                    w.name
                )));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| NotifyError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            gov,
            config,
            secrets,
            http,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    fn now(&self) -> OffsetDateTime {
        self.gov.config().store.clock.now()
    }

    /// The delay before retry `attempt` (1, 2, ...): the initial delay doubled per attempt, at
    /// most `retry_max_secs`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let initial = Duration::from_millis(self.config.retry_initial_ms);
        let max = Duration::from_secs(self.config.retry_max_secs);
        initial
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1).min(20)))
            .min(max)
    }

    /// One round: sweep, fan out, deliver what is due.
    pub async fn run_once(&self) -> Result<Round, NotifyError> {
        let mut round = Round::default();
        let workflows = self.gov.workflows();
        if self.config.sweep {
            let s = workflows.sweep().await?;
            round.escalated = s.escalated.len();
            round.expired = s.expired.len();
        }
        let since = self.now() - Duration::from_secs(self.config.lookback_hours * 3_600);
        let mut rows = Vec::new();
        for g in workflows.recent(since).await? {
            for event in events_of(&g) {
                let channels = self
                    .config
                    .webhook
                    .iter()
                    .map(|w| (&w.name, &w.filter))
                    .chain(self.config.email.iter().map(|e| (&e.name, &e.filter)));
                for (name, filter) in channels {
                    if filter.matches(event, &g) {
                        rows.push(NewNotification {
                            request_id: g.id,
                            event: event.to_owned(),
                            channel: name.clone(),
                        });
                    }
                }
            }
        }
        round.queued = workflows.enqueue(&rows).await?;
        let lease = Duration::from_secs(self.config.timeout_secs.saturating_mul(3).max(30));
        loop {
            let due = workflows.claim(lease, 50).await?;
            if due.is_empty() {
                break;
            }
            for n in due {
                let outcome = match self.deliver(&n).await {
                    Ok(()) => NotificationOutcome::Delivered,
                    Err(error) if n.attempts >= self.config.max_attempts => {
                        tracing::warn!(channel = %n.channel, request = %n.request_id, attempts = n.attempts, %error, "notification dead-lettered");
                        NotificationOutcome::Dead { error }
                    }
                    Err(error) => {
                        let wait = self.backoff(n.attempts);
                        tracing::info!(channel = %n.channel, request = %n.request_id, attempt = n.attempts, %error, retry_in_ms = wait.as_millis() as u64, "notification failed; will retry");
                        NotificationOutcome::Retry {
                            error,
                            at: self.now() + wait,
                        }
                    }
                };
                match &outcome {
                    NotificationOutcome::Delivered => round.delivered += 1,
                    NotificationOutcome::Retry { .. } => round.retried += 1,
                    NotificationOutcome::Dead { .. } => round.dead += 1,
                }
                workflows.finish(n.id, &outcome).await?;
            }
        }
        Ok(round)
    }

    /// Rounds every `poll_secs` until `stop` resolves; a round that fails is logged and the
    /// next one tries again.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            match self.run_once().await {
                Ok(r) if r != Round::default() => tracing::info!(?r, "notification round"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "notification round failed"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(self.config.poll_secs.max(1))) => {}
            }
        }
    }

    /// Sends one delivery; the error text names no secret.
    async fn deliver(&self, n: &NotificationRecord) -> Result<(), String> {
        let g = self
            .gov
            .gates()
            .get(n.request_id)
            .await
            .map_err(|e| format!("the request could not be read: {e}"))?;
        let link = approval_link(&self.config.console_url, g.id);
        if let Some(w) = self.config.webhook.iter().find(|w| w.name == n.channel) {
            return self.webhook(w, n, &g, &link).await;
        }
        if let Some(e) = self.config.email.iter().find(|e| e.name == n.channel) {
            return self.email(e, n, &g, &link).await;
        }
        Err(format!(
            "no channel named {} in the configuration any more",
            n.channel
        ))
    }

    async fn webhook(
        &self,
        w: &WebhookConfig,
        n: &NotificationRecord,
        g: &GateRecord,
        link: &str,
    ) -> Result<(), String> {
        let url = match (&w.url, self.secrets.urls.get(&w.name)) {
            (Some(u), _) => u.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => return Err("the webhook has no URL".into()),
        };
        let delivery = format!("{}:{}:{}", g.id, n.event, n.channel);
        let now = self.now();
        let (body, ct) = webhook_body(w.format, &n.event, g, link, &delivery, now);
        let mut req = self
            .http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, ct)
            .header(DELIVERY_HEADER, &delivery)
            .header(EVENT_HEADER, &n.event);
        if let Some(secret) = self.secrets.signing.get(&w.name) {
            req = req.header(SIGNATURE_HEADER, sign(secret, now.unix_timestamp(), &body));
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "the receiver answered HTTP {}",
                r.status().as_u16()
            )),
            // Without the URL: it may carry a token.
            Err(e) if e.is_timeout() => Err("the receiver did not answer in time".into()),
            Err(e) if e.is_connect() => Err("could not connect to the receiver".into()),
            Err(_) => Err("the request to the receiver failed".into()),
        }
    }

    async fn email(
        &self,
        e: &EmailConfig,
        n: &NotificationRecord,
        g: &GateRecord,
        link: &str,
    ) -> Result<(), String> {
        use lettre::message::{Mailbox, header::ContentType};
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
        let Some(smtp) = &self.config.smtp else {
            return Err("no [smtp] section".into());
        };
        let (subject, body) = email_text(&n.event, g, link);
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|_| "the sender address does not parse".to_owned())?;
        let mut msg = Message::builder()
            .from(from)
            .subject(subject)
            .message_id(Some(format!(
                "<{}.{}.{}@governance>",
                g.id, n.event, n.channel
            )))
            .header(ContentType::TEXT_PLAIN);
        for to in &e.to {
            let to: Mailbox = to
                .parse()
                .map_err(|_| format!("the recipient {to:?} does not parse"))?;
            msg = msg.to(to);
        }
        let msg = msg
            .body(body)
            .map_err(|e| format!("the message could not be built: {e}"))?;
        let builder = match smtp.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(|e| format!("SMTP: {e}"))?
                .port(smtp.port.unwrap_or(587)),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
                .map_err(|e| format!("SMTP: {e}"))?
                .port(smtp.port.unwrap_or(465)),
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
                .port(smtp.port.unwrap_or(25)),
        };
        let mut builder = builder.timeout(Some(Duration::from_secs(self.config.timeout_secs)));
        if let (Some(user), Some(pw)) = (&smtp.username, &self.secrets.smtp_password) {
            builder = builder.credentials(Credentials::new(user.clone(), pw.clone()));
        }
        builder
            .build()
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
