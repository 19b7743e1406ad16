//! Errors as responses: 4xx say what went wrong; 5xx say only that it did (the cause is logged,
//! never shown: no SQL, URLs or secrets reach a page).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gov_sdk::ErrorKind;

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
    /// An agent id nothing knows: no presence row, no pending request, no event.
    #[error(
        "no agent {0:?} is known here: it never sent a heartbeat, was never halted and has no events; check the id on the agents page"
    )]
    UnknownAgent(String),
    /// The SDK refused or failed.
    #[error(transparent)]
    Sdk(#[from] gov_sdk::Error),
    /// A report could not be made.
    #[error(transparent)]
    Report(#[from] gov_report::ReportError),
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
            Self::NotFound | Self::UnknownAgent(_) => StatusCode::NOT_FOUND,
            Self::Sdk(e) => status_for(e.kind()),
            Self::Report(e) => status_for(e.kind()),
            Self::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `kind` of the API's JSON error body: an SDK or report error's [`ErrorKind`] name
    /// (`config`, `not_found`, `refused`, `unavailable`, ...), or the console's own
    /// (`unauthenticated`, `forbidden`, `rate_limited`, `bad_request`, `not_found`,
    /// `internal`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated => ErrorKind::Unauthenticated.as_str(),
            Self::Forbidden(_) | Self::Csrf => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound | Self::UnknownAgent(_) => ErrorKind::NotFound.as_str(),
            Self::Sdk(e) => e.kind().as_str(),
            Self::Report(e) => e.kind().as_str(),
            Self::Render(_) => ErrorKind::Internal.as_str(),
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

/// The status of each kind of SDK error: 4xx show the message (what to fix), 5xx only that the
/// request failed.
pub(crate) fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Config => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        // Enforcement or an approval's state refused it (already decided, self-approval,
        // a halted agent): the request conflicts with the current state.
        ErrorKind::Refused => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Tampered | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // A kind added to the SDK after this table: a failure whose cause is logged.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What an error page said, so that it can be drawn again with the navigation.
#[derive(Debug, Clone)]
pub(crate) struct ShownError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of SDK error and its status: the table covers them all.
    #[test]
    fn every_error_kind_has_its_status() {
        let table = [
            (ErrorKind::Config, StatusCode::BAD_REQUEST),
            (ErrorKind::NotFound, StatusCode::NOT_FOUND),
            (ErrorKind::Unauthenticated, StatusCode::UNAUTHORIZED),
            (ErrorKind::Refused, StatusCode::CONFLICT),
            (ErrorKind::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            (ErrorKind::Upstream, StatusCode::BAD_GATEWAY),
            (ErrorKind::Tampered, StatusCode::INTERNAL_SERVER_ERROR),
            (ErrorKind::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for kind in ErrorKind::ALL {
            let (_, status) = table
                .iter()
                .find(|(k, _)| k == kind)
                .unwrap_or_else(|| panic!("no status in the table for {kind}"));
            assert_eq!(status_for(*kind), *status, "{kind}");
        }
        assert_eq!(table.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn sdk_errors_answer_by_their_kind_and_5xx_hide_the_cause() {
        let refused = AppError::Sdk(gov_sdk::Error::ApprovalRefused {
            request_id: uuid::Uuid::nil(),
            reason: "already decided".into(),
        });
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        assert_eq!(refused.kind(), "refused");
        assert!(refused.public_message().contains("already decided"));
        let down = AppError::Sdk(gov_sdk::Error::from(gov_sdk::StoreError::Unavailable(
            "connection refused".into(),
        )));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.kind(), "unavailable");
        assert!(!down.public_message().contains("connection refused"));
        let period = AppError::Report(gov_report::ReportError::Period("empty".into()));
        assert_eq!(period.status(), StatusCode::BAD_REQUEST);
        assert_eq!(period.kind(), "config");
    }
}
