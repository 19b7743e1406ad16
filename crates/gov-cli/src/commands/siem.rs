//! `governance siem export`: a chain's events as OCSF or CloudEvents JSON lines (the mapping is
//! [`gov_sdk::siem`]'s), to stdout, a file or an HTTP endpoint, resumable from a cursor file.
//!
//! Delivery is at least once and never leaves a gap: the cursor names the last event of the last
//! batch acknowledged (written, synced, or answered 2xx), and is replaced atomically only after
//! that acknowledgement, so a restart resends at most the batch in flight.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use gov_sdk::siem::{Mapper, SiemFormat};
use gov_sdk::{AuditRecord, ChainId, ErrorKind, EventFilter, Governance};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cli::{Global, SiemCommand, SiemExportArgs, SiemFormatArg};
use crate::output::Out;
use crate::when::{DayEdge, parse_time};

/// The cursor file's `format`.
const CURSOR_FORMAT: &str = "governance.siem.cursor.v1";
/// The bearer token for `--post`.
const ENV_SIEM_TOKEN: &str = "GOVERNANCE_SIEM_TOKEN";
/// Rows read per query.
const PAGE: u32 = 1_000;
/// First retry delay; doubled per retry up to [`MAX_BACKOFF`], with jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// While following, how long a batch waits for more events once it holds one.
const LINGER: Duration = Duration::from_millis(100);

pub(crate) async fn run(cmd: SiemCommand, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    match cmd {
        SiemCommand::Export(args) => export(args, global, out).await,
    }
}

/// A delivery that failed: refused by the endpoint, or retries exhausted.
#[derive(Debug)]
pub(crate) enum DeliveryError {
    /// A 4xx other than 429: the operator must fix something (URL, token, format).
    Refused {
        endpoint: String,
        status: u16,
        first: i64,
        last: i64,
        acked: i64,
    },
    /// 5xx, 429 or connection failures, every retry.
    GaveUp {
        endpoint: String,
        attempts: u32,
        last_error: String,
        first: i64,
        last: i64,
        acked: i64,
    },
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused {
                endpoint,
                status,
                first,
                last,
                acked,
            } => write!(
                f,
                "{endpoint} refused the batch of seq {first}..{last} with HTTP {status}; nothing after seq {acked} was delivered (the cursor stays there)"
            ),
            Self::GaveUp {
                endpoint,
                attempts,
                last_error,
                first,
                last,
                acked,
            } => write!(
                f,
                "{endpoint} did not accept the batch of seq {first}..{last} after {attempts} attempts (last: {last_error}); run again to resume after seq {acked}"
            ),
        }
    }
}

impl std::error::Error for DeliveryError {}

impl DeliveryError {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Self::Refused { .. } => ErrorKind::Config,
            Self::GaveUp { .. } => ErrorKind::Unavailable,
        }
    }
}

/// The cursor file: the last event delivered.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    format: String,
    chain_id: String,
    seq: i64,
    event_id: String,
}

fn read_cursor(path: &Path, chain: &str) -> anyhow::Result<Option<i64>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(super::config_error(format!(
                "cannot read the cursor file {}: {e}",
                path.display()
            )));
        }
    };
    let c: Cursor = serde_json::from_str(&text)
        .ok()
        .filter(|c: &Cursor| c.format == CURSOR_FORMAT && c.seq >= 0)
        .ok_or_else(|| {
            super::config_error(format!(
                "{} is not a cursor file ({CURSOR_FORMAT})",
                path.display()
            ))
        })?;
    if c.chain_id != chain {
        return Err(super::config_error(format!(
            "the cursor file {} is for chain {:?}, not {chain:?}; give --chain {} or another --cursor",
            path.display(),
            c.chain_id,
            c.chain_id
        )));
    }
    Ok(Some(c.seq))
}

fn write_cursor(path: &Path, rec: &AuditRecord) -> anyhow::Result<()> {
    let c = Cursor {
        format: CURSOR_FORMAT.to_owned(),
        chain_id: rec.chain_id.clone(),
        seq: rec.seq,
        event_id: rec.event_id.to_string(),
    };
    let text = serde_json::to_string(&c)? + "\n";
    super::write_atomically(path, &text, "the cursor")
}

/// Where the lines go.
enum Sink {
    Stdout,
    /// A finished range: one file replaced whole at the end.
    Whole(super::AtomicFile),
    /// Following: appended and synced batch by batch.
    Append(std::fs::File, PathBuf),
    Post(Poster),
}

impl Sink {
    /// Delivers one batch; returns once it is acknowledged.
    async fn deliver(
        &mut self,
        lines: &str,
        first: i64,
        last: i64,
        acked: i64,
    ) -> anyhow::Result<()> {
        match self {
            Self::Stdout => {
                let mut o = std::io::stdout().lock();
                o.write_all(lines.as_bytes())
                    .and_then(|()| o.flush())
                    .map_err(|e| {
                        super::config_error(format!("cannot write to standard output: {e}"))
                    })
            }
            Self::Whole(f) => f.write_all(lines.as_bytes()).map_err(|e| f.error(&e)),
            Self::Append(f, path) => f
                .write_all(lines.as_bytes())
                .and_then(|()| f.sync_data())
                .map_err(|e| {
                    super::config_error(format!("cannot append to {}: {e}", path.display()))
                }),
            Self::Post(p) => p.post(lines, first, last, acked).await,
        }
    }

    /// Whether a batch is acknowledged only at the end (a file replaced whole).
    fn acks_at_end(&self) -> bool {
        matches!(self, Self::Whole(_))
    }
}

struct Poster {
    client: reqwest::Client,
    url: reqwest::Url,
    shown: String,
    token: Option<secrecy::SecretString>,
    retries: u32,
}

/// `scheme://host[:port]/path`: the endpoint without credentials, query or fragment.
fn shown_url(url: &reqwest::Url) -> String {
    let mut s = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(url.path());
    s
}

/// A delay in [d/2, d] for retry `attempt` (1, 2, ...).
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let d = BASE_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let frac = (h.finish() % 1_000) as u32;
    d / 2 + (d / 2) * frac / 1_000
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

impl Poster {
    fn new(url: &str, retries: u32) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| super::config_error("--post needs an http:// or https:// URL".into()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(super::config_error(format!(
                "--post {} carries credentials: put the token in {ENV_SIEM_TOKEN} instead",
                shown_url(&url)
            )));
        }
        let token = std::env::var(ENV_SIEM_TOKEN)
            .ok()
            .filter(|t| !t.is_empty())
            .map(secrecy::SecretString::from);
        let client = reqwest::Client::builder()
            .user_agent(concat!("governance/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| super::config_error(format!("cannot set up HTTP: {}", e.without_url())))?;
        Ok(Self {
            shown: shown_url(&url),
            client,
            url,
            token,
            retries,
        })
    }

    async fn post(&self, lines: &str, first: i64, last: i64, acked: i64) -> anyhow::Result<()> {
        use secrecy::ExposeSecret as _;
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .client
                .post(self.url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(lines.to_owned());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t.expose_secret());
            }
            let (last_error, wait) = match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp)
                    if resp.status().is_server_error()
                        || resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    (
                        format!("HTTP {}", resp.status().as_u16()),
                        retry_after(&resp),
                    )
                }
                Ok(resp) => {
                    return Err(DeliveryError::Refused {
                        endpoint: self.shown.clone(),
                        status: resp.status().as_u16(),
                        first,
                        last,
                        acked,
                    }
                    .into());
                }
                Err(e) => (error_text(&e), None),
            };
            attempt += 1;
            if attempt > self.retries {
                return Err(DeliveryError::GaveUp {
                    endpoint: self.shown.clone(),
                    attempts: attempt,
                    last_error,
                    first,
                    last,
                    acked,
                }
                .into());
            }
            let wait = wait.unwrap_or_else(|| backoff(attempt));
            tracing::warn!(
                endpoint = %self.shown,
                attempt,
                error = %last_error,
                "SIEM delivery failed; retrying in {} ms",
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// A reqwest error without its URL (which may carry a query token).
fn error_text(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "the connection broke"
    };
    let mut s = what.to_owned();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{what}: {inner}");
        src = inner.source();
    }
    s
}

/// The rows to export, in seq order, batch by batch.
enum Rows {
    /// A finished range: pages up to the head the chain had when the export started.
    Range {
        filter: EventFilter,
        after: i64,
        head: i64,
        buffered: std::collections::VecDeque<AuditRecord>,
        done: bool,
    },
    Follow(gov_sdk::Tail),
}

impl Rows {
    async fn next_batch(
        &mut self,
        gov: &Governance,
        max: usize,
    ) -> anyhow::Result<Vec<AuditRecord>> {
        match self {
            Self::Range {
                filter,
                after,
                head,
                buffered,
                done,
            } => {
                while buffered.len() < max && !*done {
                    let page = EventFilter {
                        after_seq: Some(*after),
                        limit: Some(PAGE),
                        ..filter.clone()
                    };
                    let rows = gov.audit().events_sealed(&page).await?;
                    if rows.len() < PAGE as usize {
                        *done = true;
                    }
                    if let Some(l) = rows.last() {
                        *after = l.seq;
                    }
                    for r in rows {
                        if r.seq > *head {
                            *done = true;
                            break;
                        }
                        buffered.push_back(r);
                    }
                }
                let n = buffered.len().min(max);
                Ok(buffered.drain(..n).collect())
            }
            Self::Follow(tail) => {
                let mut batch = vec![tail.next().await?];
                while batch.len() < max {
                    match tokio::time::timeout(LINGER, tail.next()).await {
                        Ok(r) => batch.push(r?),
                        Err(_) => break,
                    }
                }
                Ok(batch)
            }
        }
    }
}

/// Reads the row `seq` of `chain`, to name it as an OCSF event's predecessor.
async fn row_at(
    gov: &Governance,
    chain: &ChainId,
    seq: i64,
) -> anyhow::Result<Option<AuditRecord>> {
    let f = EventFilter {
        chain_id: Some(chain.clone()),
        after_seq: Some(seq - 1),
        limit: Some(1),
        ..EventFilter::default()
    };
    Ok(gov
        .audit()
        .events_sealed(&f)
        .await?
        .into_iter()
        .find(|r| r.seq == seq))
}

async fn export(args: SiemExportArgs, global: &Global, out: &Out) -> anyhow::Result<ExitCode> {
    let chain: ChainId = args.chain.parse().map_err(|e| {
        super::config_error(format!(
            "--chain {:?} is not a valid chain id: {e}",
            args.chain
        ))
    })?;
    if let Some(s) = &args.source {
        gov_sdk::siem::check_source(s)
            .map_err(|e| super::config_error(format!("--source: {e}")))?;
    }
    let now = OffsetDateTime::now_utc();
    let since = args
        .from
        .as_deref()
        .map(|t| parse_time("--from", t, now, DayEdge::Start))
        .transpose()
        .map_err(super::config_error)?;
    let until = args
        .to
        .as_deref()
        .map(|t| parse_time("--to", t, now, DayEdge::End))
        .transpose()
        .map_err(super::config_error)?;
    if let (Some(f), Some(t)) = (since, until)
        && f >= t
    {
        return Err(super::config_error("--from must be before --to".into()));
    }
    let resume = match &args.cursor {
        Some(p) => read_cursor(p, chain.as_str())?,
        None => None,
    };
    let format = match args.format {
        SiemFormatArg::Ocsf => SiemFormat::Ocsf,
        SiemFormatArg::Cloudevents => SiemFormat::CloudEvents,
    };
    let mut sink = match (&args.post, &args.output) {
        (Some(url), _) => Sink::Post(Poster::new(url, args.retries)?),
        (None, Some(path)) if args.follow => Sink::Append(open_append(path)?, path.clone()),
        (None, Some(path)) => Sink::Whole(super::AtomicFile::create(path, "the SIEM export")?),
        (None, None) => Sink::Stdout,
    };

    let target = super::Target::resolve(global).await?;
    let secret = target.audit_secret(&args.secret)?;
    let gov = super::connect(&target.url, secret).await?;
    let result = pump(
        &gov, &args, chain, since, until, resume, format, &mut sink, out,
    )
    .await;
    gov.close().await;
    let (sent, last) = result?;
    if let Sink::Whole(f) = sink {
        f.commit()?;
        if let (Some(p), Some(rec)) = (&args.cursor, &last) {
            write_cursor(p, rec)?;
        }
    }
    let summary = format!(
        "exported {sent} event{} as {}{}",
        if sent == 1 { "" } else { "s" },
        format.as_str(),
        last.as_ref()
            .map(|r| format!(", up to seq {} of chain {}", r.seq, r.chain_id))
            .unwrap_or_default()
    );
    if out.json() && args.output.is_some() || out.json() && args.post.is_some() {
        out.emit_json(&serde_json::json!({
            "status": "ok",
            "format": format.as_str(),
            "events": sent,
            "chain_id": args.chain,
            "last_seq": last.as_ref().map(|r| r.seq),
        }));
    } else {
        out.warn(summary);
    }
    Ok(ExitCode::SUCCESS)
}

fn open_append(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(super::OUTPUT_MODE);
    }
    o.open(path).map_err(|e| {
        super::config_error(format!(
            "cannot open {} to append: {e}; choose a writable path with --output",
            path.display()
        ))
    })
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    gov: &Governance,
    args: &SiemExportArgs,
    chain: ChainId,
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    resume: Option<i64>,
    format: SiemFormat,
    sink: &mut Sink,
    out: &Out,
) -> anyhow::Result<(u64, Option<AuditRecord>)> {
    let after = resume.unwrap_or(0);
    let filter = EventFilter {
        chain_id: Some(chain.clone()),
        since,
        until,
        after_seq: Some(after),
        ..EventFilter::default()
    };
    let mut rows = if args.follow {
        Rows::Follow(gov.audit().tail(filter).await?)
    } else {
        let head = gov.audit().head(chain.as_str()).await?.ok_or_else(|| {
            anyhow::Error::new(gov_sdk::Error::Config(format!(
                "no chain {:?} in this database",
                chain.as_str()
            )))
        })?;
        Rows::Range {
            filter,
            after,
            head: head.seq,
            buffered: Default::default(),
            done: false,
        }
    };
    if args.follow {
        out.warn(format!(
            "following chain {} from seq {}, Ctrl-C to stop",
            chain.as_str(),
            after + 1
        ));
    }
    let mut mapper = Mapper::new(format, args.source.clone());
    let mut acked = after;
    let mut sent = 0u64;
    let mut last: Option<AuditRecord> = None;
    let max = args.batch_size as usize;
    loop {
        let batch = tokio::select! {
            b = rows.next_batch(gov, max) => b?,
            _ = tokio::signal::ctrl_c(), if args.follow => break,
        };
        let (Some(first), Some(end)) = (batch.first(), batch.last()) else {
            break;
        };
        let (first_seq, end_seq) = (first.seq, end.seq);
        let mut lines = String::with_capacity(batch.len() * 512);
        for rec in &batch {
            let known = last.as_ref().is_some_and(|l| l.seq + 1 == rec.seq);
            if format == SiemFormat::Ocsf
                && !known
                && rec.seq > 1
                && let Some(p) = row_at(gov, &chain, rec.seq - 1).await?
            {
                mapper.previous(&p);
            }
            lines.push_str(&mapper.line(rec));
            lines.push('\n');
            last = Some(rec.clone());
        }
        sink.deliver(&lines, first_seq, end_seq, acked).await?;
        sent += batch.len() as u64;
        acked = end_seq;
        if !sink.acks_at_end()
            && let (Some(p), Some(rec)) = (&args.cursor, &last)
        {
            write_cursor(p, rec)?;
        }
    }
    Ok((sent, last))
}
