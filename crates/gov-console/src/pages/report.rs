//! `GET /report?from=&to=&as=html|md|json`: the Article 12 evidence report as a download, named
//! after the period it covers (dates are UTC days; `to` is included).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::AppState;
use crate::auth::CurrentUser;
use crate::error::AppError;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/report", get(report))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
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
async fn report(
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
