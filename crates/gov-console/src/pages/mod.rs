//! The server-rendered pages: one module per page, each holding its routes, handlers and
//! templates (`templates/`, every value escaped by askama). State-changing forms carry the
//! session's CSRF token and are checked for role on the server. This module holds what the pages
//! share: the navigation bar, the error and sign-in pages, and the views of gates and events.

mod agents;
mod approvals;
mod assets;
mod chain;
mod costs;
mod dashboard;
pub(crate) mod events;
mod keys;
mod report;
mod session;
mod topology;
mod users;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use gov_sdk::{OperatorRole, PresenceState};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::AppState;
use crate::auth::{CurrentUser, same_site};
use crate::error::AppError;

/// Every page's routes (sign-in and sign-out are `crate::auth`'s).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .merge(dashboard::routes())
        .merge(agents::routes())
        .merge(approvals::routes())
        .merge(events::routes())
        .merge(costs::routes())
        .merge(chain::routes())
        .merge(users::routes())
        .merge(keys::routes())
        .merge(report::routes())
        .merge(session::routes())
        .merge(topology::routes())
        .merge(assets::routes())
}

/// The navigation bar's view of the signed-in user.
pub(crate) struct Nav {
    /// The section the page belongs to (`/`, `/agents`, ...), marked `aria-current`.
    current: &'static str,
    user: String,
    role: &'static str,
    csrf: String,
    is_admin: bool,
}

pub(crate) fn role_name(r: OperatorRole) -> &'static str {
    match r {
        OperatorRole::Admin => "admin",
        OperatorRole::Operator => "operator",
        OperatorRole::Viewer => "viewer",
    }
}

impl Nav {
    pub(crate) fn of(u: &CurrentUser) -> Option<Self> {
        const SECTIONS: [&str; 8] = [
            "/agents",
            "/approvals",
            "/events",
            "/topology",
            "/costs",
            "/chain",
            "/users",
            "/gateway-keys",
        ];
        let current = SECTIONS
            .into_iter()
            .find(|s| u.path == *s || u.path.starts_with(&format!("{s}/")))
            .unwrap_or(if u.path == "/" { "/" } else { "" });
        Some(Self {
            current,
            user: u.username().to_owned(),
            role: role_name(u.role()),
            csrf: u.session.csrf_token.clone(),
            is_admin: u.role() == OperatorRole::Admin,
        })
    }
}

/// A time as RFC 3339 (UTC as stored).
pub(crate) fn when(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(crate) fn render(t: &impl Template) -> Result<Html<String>, AppError> {
    Ok(Html(t.render()?))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    nav: Option<Nav>,
    flash: Option<String>,
    error: Option<&'a str>,
}

pub(crate) fn login_html(error: Option<&str>) -> Result<Html<String>, AppError> {
    render(&LoginPage {
        nav: None,
        flash: None,
        error,
    })
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    flash: Option<String>,
    status: u16,
    message: &'a str,
}

/// An error page (plain text if even that cannot be rendered).
pub(crate) fn error_page(status: StatusCode, message: &str, nav: Option<Nav>) -> Response {
    match (ErrorPage {
        nav,
        flash: None,
        status: status.as_u16(),
        message,
    })
    .render()
    {
        Ok(html) => Html(html).into_response(),
        Err(_) => message.to_owned().into_response(),
    }
}

/// The fallback: a page for a path no route serves, or the API's JSON error under `/api/`
/// (an action that does not exist, such as `POST /api/agents/{agent}/explode`, lands here).
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        crate::api::ApiError::from(AppError::NotFound).into_response()
    } else {
        AppError::NotFound.into_response()
    }
}

/// Middleware: an error page shown to a signed-in user keeps the navigation bar (the error
/// itself is drawn where the user is not known). The session is looked up only for error pages.
pub(crate) async fn error_nav(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers().clone();
    let response = next.run(req).await;
    let Some(shown) = response
        .extensions()
        .get::<crate::error::ShownError>()
        .cloned()
    else {
        return response;
    };
    let (mut parts, ()) = axum::http::Request::new(()).into_parts();
    parts.headers = headers;
    let Ok(user) = <CurrentUser as axum::extract::FromRequestParts<AppState>>::from_request_parts(
        &mut parts, &state,
    )
    .await
    else {
        return response;
    };
    let mut again = error_page(shown.status, &shown.message, Nav::of(&user));
    *again.status_mut() = shown.status;
    again
}

/// A pending gate request as shown.
pub(crate) struct GateView {
    id: String,
    agent_id: String,
    session: String,
    tool: String,
    args: String,
    requested_at: String,
    expires_at: String,
}

pub(crate) fn gate_view(g: &gov_sdk::GateRecord) -> GateView {
    GateView {
        id: g.id.to_string(),
        agent_id: g.agent_id.clone(),
        session: g.session_id.clone().unwrap_or_default(),
        tool: g.tool.clone(),
        args: g.args.clone(),
        requested_at: when(g.requested_at),
        expires_at: when(g.expires_at),
    }
}

/// An audit row as shown (the payload cut to 200 characters).
pub(crate) struct EventView {
    seq: i64,
    at: String,
    agent_id: String,
    kind: String,
    session: String,
    actor: String,
    payload: String,
    /// The row's CSS class: `sev-critical`, `sev-high` or empty.
    severity: &'static str,
}

/// How much an event of `kind` should stand out: halts and loops are critical; refusals,
/// denials (any kind ending in `.denied`) and failed calls high. `console.js` classifies streamed rows the same way.
pub(crate) fn severity_class(kind: &str) -> &'static str {
    use gov_sdk::events::EventKind as K;
    match K::parse(kind) {
        Some(K::AgentHalted | K::LoopDetected) => "sev-critical",
        Some(k) if k.is_denial() => "sev-high",
        Some(K::LlmError) => "sev-high",
        _ if kind.ends_with(".denied") => "sev-high",
        _ => "",
    }
}

pub(crate) fn event_view(r: &gov_sdk::AuditRecord) -> EventView {
    EventView {
        severity: severity_class(&r.kind),
        seq: r.seq,
        at: when(r.occurred_at),
        agent_id: r.agent_id.clone(),
        kind: r.kind.clone(),
        session: r.session_id.clone().unwrap_or_default(),
        actor: r.actor.clone().unwrap_or_default(),
        payload: r.payload.chars().take(200).collect(),
    }
}

/// An agent as every page and the API show it. The store keeps an agent's last halt (who, why)
/// after a resume; it is shown only while the agent is halted. An agent that is not halted and
/// has a gate request pending is `waiting` (for a human), whatever its heartbeat says.
pub(crate) struct AgentRow {
    pub(crate) id: String,
    pub(crate) state: &'static str,
    pub(crate) since_heartbeat: Option<std::time::Duration>,
    pub(crate) halted: bool,
    pub(crate) halted_by: Option<String>,
    pub(crate) halt_reason: Option<String>,
    /// Its pending gate requests.
    pub(crate) waiting: usize,
}

/// The shown state: `halted`, else `waiting` with a request pending, else the presence state.
pub(crate) fn shown_state(s: PresenceState, waiting: usize) -> &'static str {
    match s {
        PresenceState::Halted => "halted",
        _ if waiting > 0 => "waiting",
        s => state_name(s),
    }
}

/// The row of one agent's status, given the pending requests (`None` without a presence row).
pub(crate) fn agent_row(
    s: &gov_sdk::AgentStatus,
    pending: &[gov_sdk::GateRecord],
) -> Option<AgentRow> {
    let p = s.presence.as_ref()?;
    let waiting = pending.iter().filter(|g| g.agent_id == p.agent_id).count();
    let halted = s.state == PresenceState::Halted;
    Some(AgentRow {
        id: p.agent_id.clone(),
        state: shown_state(s.state, waiting),
        since_heartbeat: p.since_heartbeat,
        halted,
        halted_by: p.halted_by.clone().filter(|_| halted),
        halt_reason: p.halt_reason.clone().filter(|_| halted),
        waiting,
    })
}

/// Every agent with a presence record, as shown, and the pending requests read with them.
pub(crate) async fn agent_rows(
    gov: &gov_sdk::Governance,
) -> Result<(Vec<AgentRow>, Vec<gov_sdk::GateRecord>), gov_sdk::Error> {
    let list = gov.presence().list().await?;
    let pending = gov.gates().pending().await?;
    let rows = list.iter().filter_map(|a| agent_row(a, &pending)).collect();
    Ok((rows, pending))
}

pub(crate) fn state_name(s: PresenceState) -> &'static str {
    match s {
        PresenceState::Live => "live",
        PresenceState::Idle => "idle",
        PresenceState::Unresponsive => "unresponsive",
        PresenceState::Halted => "halted",
    }
}

/// `?done=…`: what the last form did, shown once.
#[derive(Debug, Deserialize)]
pub(crate) struct FlashQuery {
    done: Option<String>,
}

impl FlashQuery {
    /// The notice to show: only one the console's own redirects write (`approved`, `denied`,
    /// `halted AGENT`, `resumed AGENT`, `added USER`, `disabled USER`, `enabled USER`,
    /// `USER is now ROLE`, `password of USER reset`), never free text, so a link cannot make the console say something
    /// it did not do ("all agents resumed").
    pub(crate) fn notice(self) -> Option<String> {
        let done = self.done?;
        let words: Vec<&str> = done.split(' ').collect();
        let id = |s: &str| gov_sdk::AgentId::new(s).is_ok();
        let ok = match words.as_slice() {
            ["approved" | "denied"] => true,
            // A vote of a request that needs more approvals, and what an approval covered.
            ["vote", "recorded", n, "of", q] => n.parse::<u8>().is_ok() && q.parse::<u8>().is_ok(),
            ["approved", "for", "the", "session"] => true,
            [
                "approved;",
                "rule",
                "proposed",
                "as",
                "shadow",
                "version",
                v,
            ] => v.parse::<u32>().is_ok(),
            ["halted" | "resumed" | "added" | "disabled" | "enabled", who] => id(who),
            [who, "is", "now", "viewer" | "operator" | "admin"] => id(who),
            ["password", "of", who, "reset"] => id(who),
            ["revoked", "key", key] => {
                key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())
            }
            _ => false,
        };
        ok.then_some(done)
    }
}

/// A form with a reason (halt, resume, approve, deny).
#[derive(Debug, Deserialize)]
pub(crate) struct ReasonForm {
    csrf: Option<String>,
    reason: Option<String>,
    /// `dashboard` to return to the dashboard after a decision, `request` to the request's
    /// own page (else the approvals page).
    back: Option<String>,
    /// What an approval covers: `once` (the default), `session`, `rule` (admins).
    scope: Option<String>,
}

impl ReasonForm {
    /// Where a decision's form returns to, with what it did.
    fn back_to(&self, done: &str) -> String {
        match self.back.as_deref() {
            Some("dashboard") => format!("/?done={done}"),
            _ => format!("/approvals?done={done}"),
        }
    }

    fn reason(&self) -> Result<&str, AppError> {
        required_reason(self.reason.as_deref())
    }
}

/// A form with nothing but the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

/// A decision's or a halt's reason: required, since it is recorded in the audit chain.
pub(crate) fn required_reason(reason: Option<&str>) -> Result<&str, AppError> {
    match reason.map(str::trim) {
        Some(r) if !r.is_empty() => Ok(r),
        _ => Err(AppError::BadRequest(
            "give a reason: it is recorded in the audit chain".into(),
        )),
    }
}

/// The checks every state-changing operator request passes: same site, CSRF, role.
fn allowed(headers: &HeaderMap, user: &CurrentUser, csrf: Option<&str>) -> Result<(), AppError> {
    same_site(headers)?;
    user.check_csrf(csrf)?;
    user.require_operator()
}

/// The checks every state-changing admin request passes: same site, CSRF, role.
fn admin_allowed(
    headers: &HeaderMap,
    user: &CurrentUser,
    csrf: Option<&str>,
) -> Result<(), AppError> {
    same_site(headers)?;
    user.check_csrf(csrf)?;
    user.require_admin()
}

pub(crate) fn gate_id(id: &str) -> Result<uuid::Uuid, AppError> {
    id.parse()
        .map_err(|_| AppError::BadRequest(format!("{id:?} is not a request id")))
}

#[cfg(test)]
mod tests {
    /// askama escapes every value unless a template says `|safe`; none does.
    #[test]
    fn no_template_marks_a_value_safe() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("templates") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("template");
            assert!(!text.contains("|safe"), "{} uses |safe", path.display());
            checked += 1;
        }
        assert!(checked > 5, "{checked} templates");
    }
}
