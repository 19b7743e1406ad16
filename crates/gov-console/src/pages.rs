//! The server-rendered pages. Every value is escaped by askama; state-changing forms carry the
//! session's CSRF token and are checked for role on the server.

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use gov_sdk::{EventFilter, OperatorRole, PresenceState};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::AppState;
use crate::auth::{CurrentUser, same_site};
use crate::error::AppError;

/// The navigation bar's view of the signed-in user.
pub(crate) struct Nav {
    user: String,
    role: &'static str,
    csrf: String,
    is_admin: bool,
}

fn role_name(r: OperatorRole) -> &'static str {
    match r {
        OperatorRole::Admin => "admin",
        OperatorRole::Operator => "operator",
        OperatorRole::Viewer => "viewer",
    }
}

impl Nav {
    fn of(u: &CurrentUser) -> Option<Self> {
        Some(Self {
            user: u.username().to_owned(),
            role: role_name(u.role()),
            csrf: u.session.csrf_token.clone(),
            is_admin: u.role() == OperatorRole::Admin,
        })
    }
}

pub(crate) fn when(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn render(t: &impl Template) -> Result<Html<String>, AppError> {
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

pub(crate) async fn not_found() -> AppError {
    AppError::NotFound
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

pub(crate) async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../console-web/console.css"),
    )
}

pub(crate) async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../console-web/console.js"),
    )
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

fn gate_view(g: &gov_sdk::GateRecord) -> GateView {
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

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    nav: Option<Nav>,
    flash: Option<String>,
    live: usize,
    idle: usize,
    unresponsive: usize,
    halted: usize,
    spend_today: String,
    pending: Vec<GateView>,
    chains: String,
}

pub(crate) async fn dashboard(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Html<String>, AppError> {
    let gov = &state.gov;
    let agents = gov.presence().list().await?;
    let count = |s: PresenceState| agents.iter().filter(|a| a.state == s).count();
    let spend: i64 = gov
        .cost()
        .usage_today_all()
        .await?
        .iter()
        .map(|(_, u)| u.cost.0)
        .sum();
    let pending = gov.gates().pending().await?;
    let heads: Vec<String> = gov
        .audit()
        .heads()
        .await?
        .into_iter()
        .map(|h| format!("{}: {} events", h.chain_id, h.seq))
        .collect();
    render(&Dashboard {
        nav: Nav::of(&user),
        flash: None,
        live: count(PresenceState::Live),
        idle: count(PresenceState::Idle),
        unresponsive: count(PresenceState::Unresponsive),
        halted: count(PresenceState::Halted),
        spend_today: gov_sdk::MicroUsd(spend).to_string(),
        pending: pending.iter().take(10).map(gate_view).collect(),
        chains: if heads.is_empty() {
            "no events yet".into()
        } else {
            heads.join(", ")
        },
    })
}

pub(crate) struct AgentView {
    id: String,
    state: &'static str,
    heartbeat: String,
    halted: bool,
    halted_by: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct Agents {
    nav: Option<Nav>,
    flash: Option<String>,
    agents: Vec<AgentView>,
    can_decide: bool,
    csrf: String,
}

pub(crate) fn state_name(s: PresenceState) -> &'static str {
    match s {
        PresenceState::Live => "live",
        PresenceState::Idle => "idle",
        PresenceState::Unresponsive => "unresponsive",
        PresenceState::Halted => "halted",
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct FlashQuery {
    done: Option<String>,
}

pub(crate) async fn agents(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let list = state.gov.presence().list().await?;
    let agents = list
        .iter()
        .filter_map(|a| {
            let p = a.presence.as_ref()?;
            Some(AgentView {
                id: p.agent_id.clone(),
                state: state_name(a.state),
                heartbeat: p
                    .since_heartbeat
                    .map(|d| format!("{} s ago", d.as_secs()))
                    .unwrap_or_else(|| "never".into()),
                halted: p.halted,
                halted_by: p.halted_by.clone().unwrap_or_default(),
                reason: p.halt_reason.clone().unwrap_or_default(),
            })
        })
        .collect();
    render(&Agents {
        nav: Nav::of(&user),
        flash: q.done,
        agents,
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReasonForm {
    csrf: Option<String>,
    reason: Option<String>,
}

impl ReasonForm {
    fn reason(&self) -> Result<&str, AppError> {
        required_reason(self.reason.as_deref())
    }
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

/// The checks every state-changing page request passes: same site, CSRF, role.
fn allowed(headers: &HeaderMap, user: &CurrentUser, csrf: Option<&str>) -> Result<(), AppError> {
    same_site(headers)?;
    user.check_csrf(csrf)?;
    user.require_operator()
}

/// `POST /agents/{agent}/halt` and `/resume`.
pub(crate) async fn switch_agent(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path((agent, action)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    let presence = state.gov.presence();
    match action.as_str() {
        "halt" => {
            presence
                .halt(&user.session.operator, &agent, form.reason()?)
                .await?
        }
        "resume" => {
            presence
                .resume(&user.session.operator, &agent, form.reason()?)
                .await?
        }
        _ => return Err(AppError::NotFound),
    };
    Ok(Redirect::to(&format!("/agents?done={action}d+{agent}")))
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct Approvals {
    nav: Option<Nav>,
    flash: Option<String>,
    pending: Vec<GateView>,
    can_decide: bool,
    csrf: String,
}

pub(crate) async fn approvals(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    let pending = state.gov.gates().pending().await?;
    render(&Approvals {
        nav: Nav::of(&user),
        flash: q.done,
        pending: pending.iter().map(gate_view).collect(),
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
    })
}

pub(crate) fn gate_id(id: &str) -> Result<uuid::Uuid, AppError> {
    id.parse()
        .map_err(|_| AppError::BadRequest(format!("{id:?} is not a request id")))
}

/// `POST /approvals/{id}/approve` and `/deny`.
pub(crate) async fn decide(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    Form(form): Form<ReasonForm>,
) -> Result<Redirect, AppError> {
    allowed(&headers, &user, form.csrf.as_deref())?;
    let id = gate_id(&id)?;
    let gates = state.gov.gates();
    let operator = &user.session.operator;
    let done = match decision.as_str() {
        "approve" => gates
            .approve(operator, id, form.reason()?)
            .await
            .map(|()| "approved"),
        "deny" => gates
            .deny(operator, id, form.reason()?)
            .await
            .map(|()| "denied"),
        _ => return Err(AppError::NotFound),
    }?;
    Ok(Redirect::to(&format!("/approvals?done={done}")))
}

fn event_view(r: &gov_sdk::AuditRecord) -> EventView {
    EventView {
        seq: r.seq,
        at: when(r.occurred_at),
        agent_id: r.agent_id.clone(),
        kind: r.kind.clone(),
        session: r.session_id.clone().unwrap_or_default(),
        actor: r.actor.clone().unwrap_or_default(),
        payload: r.payload.chars().take(200).collect(),
    }
}

pub(crate) struct EventView {
    seq: i64,
    at: String,
    agent_id: String,
    kind: String,
    session: String,
    actor: String,
    payload: String,
}

#[derive(Template)]
#[template(path = "events.html")]
struct Events {
    nav: Option<Nav>,
    flash: Option<String>,
    agent: String,
    kind: String,
    recent: Vec<EventView>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventQuery {
    agent: Option<String>,
    kind: Option<String>,
}

pub(crate) async fn events(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<EventQuery>,
) -> Result<Html<String>, AppError> {
    let agent = q.agent.unwrap_or_default();
    let kind = q.kind.unwrap_or_default();
    let chain = &state.config.live_chain;
    let head = state.gov.audit().head(chain).await?.map_or(0, |h| h.seq);
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
        kind: (!kind.is_empty()).then(|| kind.clone()),
        after_seq: Some((head - 500).max(0)),
        limit: Some(500),
        ..EventFilter::default()
    };
    let rows = state.gov.audit().events(&filter).await?;
    let recent = rows.iter().rev().take(50).map(event_view).collect();
    render(&Events {
        nav: Nav::of(&user),
        flash: None,
        agent,
        kind,
        recent,
    })
}

pub(crate) struct CostRow {
    agent: String,
    model: String,
    calls: i64,
    input: i64,
    output: i64,
    cached: i64,
    cost: String,
}

#[derive(Template)]
#[template(path = "costs.html")]
struct Costs {
    nav: Option<Nav>,
    flash: Option<String>,
    rows: Vec<CostRow>,
    chart: String,
}

/// A horizontal bar chart as inline SVG (every label escaped).
fn bar_chart(bars: &[(String, i64)]) -> String {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(1).max(1);
    let (row, label_w, bar_w) = (26, 180, 420);
    let height = row * bars.len() + 10;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{}" height="{height}" viewBox="0 0 {} {height}">"#,
        label_w + bar_w + 120,
        label_w + bar_w + 120
    );
    for (i, (name, micros)) in bars.iter().enumerate() {
        let y = i * row + 5;
        let w = (*micros as f64 / max as f64 * bar_w as f64).round() as i64;
        svg.push_str(&format!(
            r#"<text x="0" y="{}" class="label">{}</text><rect x="{label_w}" y="{y}" width="{}" height="18" class="bar"/><text x="{}" y="{}" class="value">{}</text>"#,
            y + 14,
            escape(name),
            w.max(1),
            label_w as i64 + w.max(1) + 6,
            y + 14,
            gov_sdk::MicroUsd(*micros)
        ));
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub(crate) async fn costs(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Html<String>, AppError> {
    let usage = state.gov.cost().usage_today_all().await?;
    let mut by_agent: Vec<(String, i64)> = Vec::new();
    for (agent, u) in &usage {
        match by_agent.last_mut() {
            Some((a, total)) if a == agent => *total += u.cost.0,
            _ => by_agent.push((agent.clone(), u.cost.0)),
        }
    }
    render(&Costs {
        nav: Nav::of(&user),
        flash: None,
        chart: bar_chart(&by_agent),
        rows: usage
            .iter()
            .map(|(agent, u)| CostRow {
                agent: agent.clone(),
                model: u.model.clone(),
                calls: u.calls,
                input: u.input_tokens,
                output: u.output_tokens,
                cached: u.cached_tokens,
                cost: u.cost.to_string(),
            })
            .collect(),
    })
}

pub(crate) struct VerifyView {
    status: &'static str,
    summary: String,
    chains: Vec<(String, u64, u64, u64, String)>,
}

#[derive(Template)]
#[template(path = "chain.html")]
struct Chain {
    nav: Option<Nav>,
    flash: Option<String>,
    heads: Vec<(String, i64)>,
    csrf: String,
    result: Option<VerifyView>,
}

async fn chain_page(
    state: &AppState,
    user: &CurrentUser,
    result: Option<VerifyView>,
) -> Result<Html<String>, AppError> {
    let heads = state
        .gov
        .audit()
        .heads()
        .await?
        .into_iter()
        .map(|h| (h.chain_id, h.seq))
        .collect();
    render(&Chain {
        nav: Nav::of(user),
        flash: None,
        heads,
        csrf: user.session.csrf_token.clone(),
        result,
    })
}

pub(crate) async fn chain(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Html<String>, AppError> {
    chain_page(&state, &user, None).await
}

#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

/// Verification reads only; any signed-in user may run it.
pub(crate) async fn verify_chain(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Form(form): Form<CsrfOnly>,
) -> Result<Html<String>, AppError> {
    same_site(&headers)?;
    user.check_csrf(form.csrf.as_deref())?;
    let report = state.gov.audit().verify_all().await?;
    let view = VerifyView {
        status: report.verdict().as_str(),
        summary: format!("{} events checked", report.events_checked),
        chains: report
            .chains
            .iter()
            .map(|c| {
                (
                    c.chain_id.clone(),
                    c.events_checked,
                    c.signatures.signed,
                    c.signatures.unsigned + c.signatures.unsigned_local_failure,
                    match (&c.finding, &c.unverifiable) {
                        (Some(f), _) => {
                            format!("seq {}: {}: {}", f.seq, f.reason.as_str(), f.detail)
                        }
                        (None, Some(u)) => {
                            format!("not verifiable with the configured keys: {}", u.advice)
                        }
                        (None, None) => "clean".into(),
                    },
                )
            })
            .collect(),
    };
    chain_page(&state, &user, Some(view)).await
}

pub(crate) struct UserView {
    name: String,
    role: &'static str,
    status: &'static str,
    disabled: bool,
    created: String,
    is_me: bool,
}

#[derive(Template)]
#[template(path = "users.html")]
struct Users {
    nav: Option<Nav>,
    flash: Option<String>,
    users: Vec<UserView>,
    csrf: String,
}

pub(crate) async fn users(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    user.require_admin()?;
    let users = state
        .gov
        .operators()
        .list()
        .await?
        .into_iter()
        .map(|u| UserView {
            is_me: u.username == user.username(),
            name: u.username,
            role: role_name(u.role),
            status: if u.disabled { "disabled" } else { "active" },
            disabled: u.disabled,
            created: when(u.created_at),
        })
        .collect();
    render(&Users {
        nav: Nav::of(&user),
        flash: q.done,
        users,
        csrf: user.session.csrf_token.clone(),
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct NewUserForm {
    csrf: Option<String>,
    username: String,
    role: String,
    password: String,
}

/// `POST /users`: an admin adds a user.
pub(crate) async fn add_user(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Form(form): Form<NewUserForm>,
) -> Result<Redirect, AppError> {
    same_site(&headers)?;
    user.check_csrf(form.csrf.as_deref())?;
    user.require_admin()?;
    let role = OperatorRole::parse(&form.role).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{:?} is not a role: use admin, operator or viewer",
            form.role
        ))
    })?;
    state
        .gov
        .operators()
        .add_as(
            &user.session.operator,
            form.username.trim(),
            role,
            &form.password,
        )
        .await?;
    Ok(Redirect::to(&format!(
        "/users?done=added+{}",
        form.username.trim()
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UserForm {
    csrf: Option<String>,
    /// The new role, for `/users/{name}/role`.
    role: Option<String>,
}

/// `POST /users/{name}/disable`, `/enable` and `/role` (form field `role`): an admin switches an
/// account or changes its role. Each ends every console session of that user.
pub(crate) async fn switch_user(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<UserForm>,
) -> Result<Redirect, AppError> {
    same_site(&headers)?;
    user.check_csrf(form.csrf.as_deref())?;
    user.require_admin()?;
    let operators = state.gov.operators();
    let by = &user.session.operator;
    match action.as_str() {
        "disable" => operators.set_disabled(by, &name, true).await?,
        "enable" => operators.set_disabled(by, &name, false).await?,
        "role" => {
            let asked = form.role.as_deref().unwrap_or_default();
            let role = OperatorRole::parse(asked).ok_or_else(|| {
                AppError::BadRequest(format!(
                    "{asked:?} is not a role: use admin, operator or viewer"
                ))
            })?;
            operators.set_role(by, &name, role).await?;
            return Ok(Redirect::to(&format!(
                "/users?done={name}+is+now+{}",
                role_name(role)
            )));
        }
        _ => return Err(AppError::NotFound),
    }
    Ok(Redirect::to(&format!("/users?done={action}d+{name}")))
}

#[derive(Template)]
#[template(path = "agent.html")]
struct AgentPage {
    nav: Option<Nav>,
    flash: Option<String>,
    id: String,
    state: &'static str,
    heartbeat: String,
    halted: bool,
    halted_by: String,
    reason: String,
    can_decide: bool,
    csrf: String,
    spend: Vec<(String, i64, String)>,
    recent: Vec<EventView>,
}

/// `GET /agents/{agent}`: presence, halt, today's spend and recent events of one agent.
pub(crate) async fn agent(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Html<String>, AppError> {
    let agent_id: gov_sdk::AgentId = id
        .parse()
        .map_err(|e: gov_sdk::IdError| AppError::BadRequest(format!("agent: {e}")))?;
    let status = state.gov.presence().status(&id).await?;
    let p = status.presence.clone();
    let spend = state
        .gov
        .cost()
        .usage_today(&id)
        .await?
        .into_iter()
        .map(|u| (u.model, u.calls, u.cost.to_string()))
        .collect();
    let chain = &state.config.live_chain;
    let head = state.gov.audit().head(chain).await?.map_or(0, |h| h.seq);
    let rows = state
        .gov
        .audit()
        .events(&EventFilter {
            chain_id: chain.parse().ok(),
            agent_id: Some(agent_id),
            after_seq: Some((head - 5_000).max(0)),
            limit: Some(5_000),
            ..EventFilter::default()
        })
        .await?;
    let recent = rows.iter().rev().take(25).map(event_view).collect();
    render(&AgentPage {
        nav: Nav::of(&user),
        flash: None,
        state: state_name(status.state),
        heartbeat: p
            .as_ref()
            .and_then(|p| p.since_heartbeat)
            .map(|d| format!("{} s ago", d.as_secs()))
            .unwrap_or_else(|| "never".into()),
        halted: p.as_ref().is_some_and(|p| p.halted),
        halted_by: p
            .as_ref()
            .and_then(|p| p.halted_by.clone())
            .unwrap_or_default(),
        reason: p
            .as_ref()
            .and_then(|p| p.halt_reason.clone())
            .unwrap_or_default(),
        can_decide: user.require_operator().is_ok(),
        csrf: user.session.csrf_token.clone(),
        spend,
        recent,
        id,
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    #[test]
    fn the_report_download_is_named_after_its_period() {
        let name = super::report_name(
            Some(datetime!(2026-11-01 0:00 UTC)),
            datetime!(2026-12-01 0:00 UTC),
        );
        assert_eq!(name, "article12-2026-11-01-to-2026-11-30");
        assert_eq!(
            super::report_name(None, datetime!(2026-12-02 13:05 UTC)),
            "article12-to-2026-12-02"
        );
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    #[serde(rename = "as")]
    form: Option<String>,
}

fn day(text: Option<&str>, end: bool) -> Result<Option<OffsetDateTime>, AppError> {
    let Some(t) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let d = time::Date::parse(t, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|_| AppError::BadRequest(format!("{t:?} is not a date (YYYY-MM-DD)")))?;
    let start = d.midnight().assume_utc();
    Ok(Some(if end {
        start + time::Duration::days(1)
    } else {
        start
    }))
}

/// The download's name, after the period it covers: `article12-2026-11-01-to-2026-11-30` (the
/// last day included), `article12-to-2026-11-30` from the start of the record.
fn report_name(from: Option<OffsetDateTime>, to: OffsetDateTime) -> String {
    // `to` is exclusive: the last day covered is the day before it, unless it is mid-day (now).
    let last = if to.time() == time::Time::MIDNIGHT {
        (to - time::Duration::days(1)).date()
    } else {
        to.date()
    };
    match from {
        Some(f) => format!("article12-{}-to-{last}", f.date()),
        None => format!("article12-to-{last}"),
    }
}

/// `GET /report`: the Article 12 evidence report as a download.
pub(crate) async fn report(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<ReportQuery>,
) -> Result<Response, AppError> {
    let now = OffsetDateTime::now_utc();
    let from = day(q.from.as_deref(), false)?;
    let to = day(q.to.as_deref(), true)?.unwrap_or(now);
    let (format, ext, mime) = match q.form.as_deref().unwrap_or("html") {
        "json" => (gov_report::Format::Json, "json", "application/json"),
        "md" => (
            gov_report::Format::Markdown,
            "md",
            "text/markdown; charset=utf-8",
        ),
        "html" => (gov_report::Format::Html, "html", "text/html; charset=utf-8"),
        other => {
            return Err(AppError::BadRequest(format!(
                "{other:?} is not a report form: use html, md or json"
            )));
        }
    };
    let req = gov_report::ReportRequest {
        from,
        to,
        chain: None,
        generated_at: now,
        generator: format!(
            "governance console {} ({})",
            env!("CARGO_PKG_VERSION"),
            user.username()
        ),
    };
    if let Some(from) = from
        && from >= to
    {
        return Err(AppError::BadRequest(format!(
            "the period is empty: the first day ({}) must not be after the last day ({})",
            from.date(),
            (to - time::Duration::days(1)).date()
        )));
    }
    let report = gov_report::collect(&state.gov, &req, &|_| {})
        .await
        .map_err(AppError::Report)?;
    let body = gov_report::render(&report, format).map_err(AppError::Report)?;
    let name = format!("attachment; filename=\"{}.{ext}\"", report_name(from, to));
    Ok((
        [
            (header::CONTENT_TYPE, mime.to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        body,
    )
        .into_response())
}
