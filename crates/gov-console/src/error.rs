//! Errors as responses: 4xx say what went wrong; 5xx say only that it did (the cause is logged,
//! never shown: no SQL, URLs or secrets reach a page).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Not signed in (pages redirect to the sign-in page; the API answers 401).
    #[error("sign in first")]
    Unauthenticated,
    /// Signed in, but the role may not do this.
    #[error("your role ({0}) may not do this")]
    Forbidden(&'static str),
    /// The CSRF token is missing or wrong.
    #[error("the form is stale or was not sent by this console: reload the page and try again")]
    Csrf,
    /// Too many sign-in attempts.
    #[error("too many sign-in attempts from your address: wait a minute")]
    RateLimited,
    /// Bad input, with what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing there.
    #[error("not found")]
    NotFound,
    /// The SDK refused or failed.
    #[error(transparent)]
    Sdk(#[from] gov_sdk::Error),
    /// A page could not be rendered.
    #[error("rendering failed")]
    Render(#[from] askama::Error),
}

impl AppError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::Csrf => StatusCode::FORBIDDEN,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Sdk(e) => match e {
                gov_sdk::Error::ApprovalRefused { .. } => StatusCode::CONFLICT,
                gov_sdk::Error::AuthenticationFailed => StatusCode::UNAUTHORIZED,
                e if e.is_config() => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message a user may see.
    pub fn public_message(&self) -> String {
        let status = self.status();
        if status.is_server_error() {
            "the console could not complete this request; the cause is in its log".into()
        } else {
            self.to_string()
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if matches!(self, Self::Unauthenticated) {
            return axum::response::Redirect::to("/login").into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "console request failed");
        }
        let message = self.public_message();
        let mut response =
            (status, crate::pages::error_page(status, &message, None)).into_response();
        // The page is drawn without navigation here, where the user is unknown;
        // `crate::pages::error_nav` draws it again with the navigation of a signed-in user.
        response
            .extensions_mut()
            .insert(ShownError { status, message });
        response
    }
}

/// What an error page said, so that it can be drawn again with the navigation.
#[derive(Debug, Clone)]
pub(crate) struct ShownError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}
