//! `GET /events`: the newest events of the followed chain, then new ones live (`GET
//! /events/stream`, `crate::events`, routed with the API so that it is described in the OpenAPI
//! document). Filters: agent, session, kind or kind family (`gate.*`, `*.denied`), time range
//! (UTC). Paging is by keyset on `seq`: each page reads one stretch of [`WINDOW`] rows of the
//! chain below `before` (without filters, only the page's own rows), so a page costs the same
//! at any depth of any number of rows.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use gov_sdk::EventFilter;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::{EventView, Nav, event_view, render};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/events", get(events))
}

/// Rows of the chain one page searches.
const WINDOW: i64 = 5_000;
/// Rows one page shows.
const PAGE: usize = 50;

#[derive(Template)]
#[template(path = "events.html")]
struct Events {
    nav: Option<Nav>,
    flash: Option<String>,
    agent: String,
    session: String,
    kind: String,
    from: String,
    to: String,
    recent: Vec<EventView>,
    /// Why there is nothing to show, when there is nothing.
    empty: String,
    /// The `before` of the next (older) page, if there is one.
    older: Option<i64>,
    /// The query string of the filters (for the older page's link).
    filters: String,
    /// Whether this is the newest page (live rows are added only there).
    newest: bool,
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    agent: Option<String>,
    session: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
}

/// A kind filter: exact, or a family (`gate.*`, `*.denied`).
enum KindMatch {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl KindMatch {
    fn of(s: &str) -> Self {
        if s.is_empty() || s == "*" {
            Self::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Self::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Self::Suffix(p.to_owned())
        } else {
            Self::Exact(s.to_owned())
        }
    }

    fn matches(&self, kind: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(k) => kind == k,
            Self::Prefix(p) => kind.starts_with(p.as_str()),
            Self::Suffix(p) => kind.ends_with(p.as_str()),
        }
    }
}

/// A time from the form: RFC 3339, or `YYYY-MM-DDTHH:MM` (what a datetime-local field sends),
/// taken as UTC.
pub(crate) fn parse_time(field: &str, s: &str) -> Result<Option<OffsetDateTime>, AppError> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(Some(t));
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    PrimitiveDateTime::parse(s, &fmt)
        .map(|t| Some(t.assume_utc()))
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{field}: {s:?} is not a time; use YYYY-MM-DDTHH:MM (UTC) or RFC 3339"
            ))
        })
}

async fn events(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<EventQuery>,
) -> Result<Html<String>, AppError> {
    let agent = q.agent.unwrap_or_default().trim().to_owned();
    let session = q.session.unwrap_or_default().trim().to_owned();
    let kind = q.kind.unwrap_or_default().trim().to_owned();
    let from = q.from.unwrap_or_default();
    let to = q.to.unwrap_or_default();
    let since = parse_time("from", &from)?;
    let until = parse_time("to", &to)?;
    let chain = &state.config.live_chain;
    let head = state.gov.audit().head(chain).await?.map_or(0, |h| h.seq);
    let before = q.before.unwrap_or(head + 1).clamp(1, head + 1);
    let filtered = !(agent.is_empty()
        && session.is_empty()
        && kind.is_empty()
        && from.is_empty()
        && to.is_empty());
    // Unfiltered, the page is simply the rows just below `before` (seqs have no gaps).
    let window = if filtered { WINDOW } else { PAGE as i64 };
    let start = (before - 1 - window).max(0);
    let matcher = KindMatch::of(&kind);
    let filter = EventFilter {
        chain_id: chain.parse().ok(),
        agent_id: if agent.is_empty() {
            None
        } else {
            Some(
                agent
                    .parse()
                    .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("agent: {e}")))?,
            )
        },
        session_id: if session.is_empty() {
            None
        } else {
            Some(
                session
                    .parse()
                    .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("session: {e}")))?,
            )
        },
        kind: match &matcher {
            KindMatch::Exact(k) => Some(k.clone()),
            _ => None,
        },
        since,
        until,
        after_seq: Some(start),
        limit: Some(u32::try_from(window).unwrap_or(10_000)),
    };
    let rows = state.gov.audit().events(&filter).await?;
    let shown: Vec<_> = rows
        .iter()
        .rev()
        .filter(|r| r.seq < before && matcher.matches(&r.kind))
        .take(PAGE)
        .collect();
    let older = if shown.len() == PAGE {
        shown.last().map(|r| r.seq)
    } else if start > 0 {
        Some(start + 1)
    } else {
        None
    };
    let empty = if head == 0 {
        format!("The chain {chain} has no events yet: nothing has been recorded.")
    } else if shown.is_empty() && start > 0 {
        format!(
            "No event matches the filters between seq {} and {}; older events may: see the older page.",
            start + 1,
            before - 1
        )
    } else if shown.is_empty() && filtered {
        "No event of this chain matches the filters: clear one to see more.".into()
    } else {
        String::new()
    };
    let mut filters = Vec::new();
    for (k, v) in [
        ("agent", &agent),
        ("session", &session),
        ("kind", &kind),
        ("from", &from),
        ("to", &to),
    ] {
        if !v.is_empty() {
            filters.push(format!("{k}={}", urlencode(v)));
        }
    }
    render(&Events {
        nav: Nav::of(&user),
        flash: None,
        recent: shown.into_iter().map(event_view).collect(),
        empty,
        older,
        filters: filters.join("&"),
        newest: q.before.is_none(),
        agent,
        session,
        kind,
        from,
        to,
    })
}

/// Percent-encodes a query value (letters, digits and `-._~` stay).
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char);
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
