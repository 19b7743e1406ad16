//! Audit rows as SIEM events: CloudEvents 1.0 (JSON, structured mode) and OCSF 1.9 (API
//! Activity with the `record_integrity` profile), one JSON object per line.
//!
//! Pure mapping from [`AuditRecord`] and the typed kinds of [`gov_core::events`]: no I/O, no
//! clock, no kind spelled as a string. Every field a seal covers is carried exactly (the payload
//! as stored, `occurred_at` to the microsecond, the HMACs in hex), so a receiver can check a row
//! against the chain as docs/siem.md describes. Delivery (files, HTTP, cursors) is the caller's.

mod cloudevents;
mod ocsf;

use gov_core::AuditRecord;
use gov_core::events::EventKind;
use time::format_description::FormatItem;
use time::macros::format_description;

pub use cloudevents::{CLOUDEVENTS_SPEC_VERSION, TYPE_PREFIX, cloudevent_line, default_source};
pub use ocsf::OCSF_VERSION;
use ocsf::ocsf_event;

/// The two forms an event can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiemFormat {
    /// OCSF 1.9, class API Activity (6003).
    Ocsf,
    /// CloudEvents 1.0, JSON format, structured mode.
    CloudEvents,
}

impl SiemFormat {
    /// `ocsf` or `cloudevents`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ocsf => "ocsf",
            Self::CloudEvents => "cloudevents",
        }
    }
}

/// Turns the rows of one chain, in seq order, into lines of one format.
///
/// It remembers the row it mapped last, because an OCSF event names its predecessor
/// (`prev_event`); start it with [`Mapper::previous`] when the first row mapped is not the
/// chain's first.
#[derive(Debug, Clone)]
pub struct Mapper {
    format: SiemFormat,
    source: String,
    product_version: String,
    prev: Option<Prev>,
}

/// What an OCSF event says about the row before it.
#[derive(Debug, Clone)]
pub(crate) struct Prev {
    pub(crate) chain_id: String,
    pub(crate) seq: i64,
    pub(crate) event_id: String,
    pub(crate) type_uid: u32,
}

impl Prev {
    fn of(rec: &AuditRecord) -> Self {
        Self {
            chain_id: rec.chain_id.clone(),
            seq: rec.seq,
            event_id: rec.event_id.to_string(),
            type_uid: ocsf::type_uid(rec),
        }
    }
}

impl Mapper {
    /// A mapper to `format`. `source` is the CloudEvents `source` (a URI-reference; `None`:
    /// [`default_source`] of each row's chain).
    pub fn new(format: SiemFormat, source: Option<String>) -> Self {
        Self {
            format,
            source: source.unwrap_or_default(),
            product_version: env!("CARGO_PKG_VERSION").to_owned(),
            prev: None,
        }
    }

    /// Sets the version named as OCSF `metadata.product.version` (default: this crate's).
    pub fn product_version(mut self, version: impl Into<String>) -> Self {
        self.product_version = version.into();
        self
    }

    /// Tells the mapper the row just before the next one it maps.
    pub fn previous(&mut self, rec: &AuditRecord) {
        self.prev = Some(Prev::of(rec));
    }

    /// The format.
    pub fn format(&self) -> SiemFormat {
        self.format
    }

    /// One row as one line of JSON (no newline).
    pub fn line(&mut self, rec: &AuditRecord) -> String {
        let line = match self.format {
            SiemFormat::CloudEvents => {
                let source = if self.source.is_empty() {
                    default_source(&rec.chain_id)
                } else {
                    self.source.clone()
                };
                cloudevent_line(rec, &source)
            }
            SiemFormat::Ocsf => {
                let prev = self
                    .prev
                    .as_ref()
                    .filter(|p| p.chain_id == rec.chain_id && p.seq + 1 == rec.seq);
                ocsf_event(rec, prev, &self.product_version).to_string()
            }
        };
        self.prev = Some(Prev::of(rec));
        line
    }
}

/// Checks a CloudEvents `source` given by a user: a non-empty URI-reference without spaces or
/// control characters.
pub fn check_source(source: &str) -> Result<(), String> {
    if source.is_empty() {
        return Err("the source is empty".into());
    }
    if let Some(c) = source
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '\\'))
    {
        return Err(format!(
            "the source {source:?} is not a URI-reference: it contains {c:?}"
        ));
    }
    Ok(())
}

/// RFC 3339 in UTC with exactly six fractional digits: the sealed precision.
const MICROS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

pub(crate) fn rfc3339_micros(rec: &AuditRecord) -> String {
    rec.occurred_at
        .to_offset(time::UtcOffset::UTC)
        .format(MICROS)
        .unwrap_or_default()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

/// The system kind of a row, if it has one (host kinds have none).
pub(crate) fn kind(rec: &AuditRecord) -> Option<EventKind> {
    rec.system_kind()
}

#[cfg(test)]
mod tests;
