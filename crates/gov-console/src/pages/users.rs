//! `GET /users` (admin: users and roles), `POST /users` (add one), and
//! `POST /users/{name}/disable`, `/enable` and `/role` (form field `role`). Each change ends
//! every console session of that user; an admin cannot disable their own account or change
//! their own role (the SDK refuses).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, Redirect};
use axum::routing::{get, post};
use axum::{Form, Router};
use gov_sdk::OperatorRole;
use serde::Deserialize;

use super::{CsrfOnly, FlashQuery, Nav, admin_allowed, render, role_name, when};
use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list).post(add))
        .route("/users/{name}/disable", post(disable))
        .route("/users/{name}/enable", post(enable))
        .route("/users/{name}/role", post(set_role))
        .route("/users/{name}/password", post(reset_password))
}

struct UserView {
    name: String,
    role: &'static str,
    status: &'static str,
    disabled: bool,
    created: String,
    /// The last console sign-in (RFC 3339), or `never`.
    last_sign_in: String,
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

async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(q): Query<FlashQuery>,
) -> Result<Html<String>, AppError> {
    user.require_admin()?;
    let sign_ins: std::collections::HashMap<String, time::OffsetDateTime> = state
        .gov
        .operators()
        .last_sign_ins()
        .await?
        .into_iter()
        .collect();
    let users = state
        .gov
        .operators()
        .list()
        .await?
        .into_iter()
        .map(|u| UserView {
            last_sign_in: sign_ins
                .get(&u.username)
                .map_or_else(|| "never".to_owned(), |t| when(*t)),
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
        flash: q.notice(),
        users,
        csrf: user.session.csrf_token.clone(),
    })
}

fn parse_role(asked: &str) -> Result<OperatorRole, AppError> {
    OperatorRole::parse(asked).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{asked:?} is not a role: use admin, operator or viewer"
        ))
    })
}

#[derive(Debug, Deserialize)]
struct NewUserForm {
    csrf: Option<String>,
    username: String,
    role: String,
    password: String,
}

/// `POST /users`: an admin adds a user.
async fn add(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Form(form): Form<NewUserForm>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    let role = parse_role(&form.role)?;
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

/// `POST /users/{name}/disable`.
async fn disable(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    state
        .gov
        .operators()
        .set_disabled(&user.session.operator, &name, true)
        .await?;
    Ok(Redirect::to(&format!("/users?done=disabled+{name}")))
}

/// `POST /users/{name}/enable`.
async fn enable(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfOnly>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    state
        .gov
        .operators()
        .set_disabled(&user.session.operator, &name, false)
        .await?;
    Ok(Redirect::to(&format!("/users?done=enabled+{name}")))
}

#[derive(Debug, Deserialize)]
struct RoleForm {
    csrf: Option<String>,
    /// The new role.
    role: Option<String>,
}

/// `POST /users/{name}/role`.
async fn set_role(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<RoleForm>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    let role = parse_role(form.role.as_deref().unwrap_or_default())?;
    state
        .gov
        .operators()
        .set_role(&user.session.operator, &name, role)
        .await?;
    Ok(Redirect::to(&format!(
        "/users?done={name}+is+now+{}",
        role_name(role)
    )))
}

#[derive(Debug, Deserialize)]
struct PasswordForm {
    csrf: Option<String>,
    /// The new password (12 or more characters).
    password: Option<String>,
}

/// `POST /users/{name}/password`: a new password; all of that user's sessions end.
async fn reset_password(
    State(state): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<PasswordForm>,
) -> Result<Redirect, AppError> {
    admin_allowed(&headers, &user, form.csrf.as_deref())?;
    state
        .gov
        .operators()
        .reset_password(
            &user.session.operator,
            &name,
            form.password.as_deref().unwrap_or_default(),
        )
        .await?;
    Ok(Redirect::to(&format!(
        "/users?done=password+of+{name}+reset"
    )))
}
