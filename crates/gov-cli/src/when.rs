//! Times on the command line: RFC 3339, a date, or an age.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// Which end of a day a bare date stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DayEdge {
    /// Midnight at its start (for a period's start).
    Start,
    /// Midnight at its end, the next day's start (for a period's excluded end).
    End,
}

/// Parses `text` given to `flag`: RFC 3339 (`2026-11-25T09:00:00Z`), a date (`2026-11-25`,
/// UTC) or an age before `now` (`30s`, `10m`, `2h`, `7d`).
pub(crate) fn parse_time(
    flag: &str,
    text: &str,
    now: OffsetDateTime,
    edge: DayEdge,
) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let bad = || {
        format!(
            "{flag} {text:?} is not a time: use RFC 3339 (2026-11-25T09:00:00Z), a date (2026-11-25, UTC) or an age (30s, 10m, 2h, 1d)"
        )
    };
    if let Ok(d) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        let day = d.midnight().assume_utc();
        return match edge {
            DayEdge::Start => Ok(day),
            DayEdge::End => day.checked_add(time::Duration::days(1)).ok_or_else(bad),
        };
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = text.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub(time::Duration::seconds(secs))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::{DayEdge, parse_time};
    use time::macros::datetime;

    #[test]
    fn times_dates_and_ages() {
        let now = datetime!(2026-11-25 12:00 UTC);
        let p = |s: &str, e| parse_time("--since", s, now, e);
        assert_eq!(
            p("2026-11-25T09:00:00Z", DayEdge::Start),
            Ok(datetime!(2026-11-25 09:00 UTC))
        );
        assert_eq!(
            p("90m", DayEdge::Start),
            Ok(datetime!(2026-11-25 10:30 UTC))
        );
        assert_eq!(p("1d", DayEdge::End), Ok(datetime!(2026-11-24 12:00 UTC)));
        assert_eq!(
            p("2026-11-01", DayEdge::Start),
            Ok(datetime!(2026-11-01 00:00 UTC))
        );
        assert_eq!(
            p("2026-11-30", DayEdge::End),
            Ok(datetime!(2026-12-01 00:00 UTC))
        );
        for bad in [
            "",
            "yesterday",
            "10",
            "5w",
            "2026-13-01",
            "2026-02-30",
            "m",
            "99999999999999999d",
        ] {
            let err = p(bad, DayEdge::Start).unwrap_err();
            assert!(
                err.contains("RFC 3339") && err.contains("--since"),
                "{bad}: {err}"
            );
        }
    }
}
