//! Typed ids. Agent, session and chain ids are short strings from a safe character set; event ids
//! are UUID v7 so that they sort by creation time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::IdError;

/// Maximum length of an agent, session or chain id, in characters.
pub const MAX_ID_LEN: usize = 128;

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

fn validate_id(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    let len = s.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len,
            max: MAX_ID_LEN,
        });
    }
    if let Some((pos, ch)) = s
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Err(IdError::BadChar { what, ch, pos });
    }
    Ok(())
}

/// Checks an event kind: two to eight lowercase dot-separated segments, each starting with a
/// letter and made of `a-z`, `0-9` and `_`, at most 128 characters in all (`tool.call`,
/// `chain.key_rotated`).
pub fn validate_kind(kind: &str) -> Result<(), IdError> {
    let bad = |reason| IdError::BadKind {
        kind: truncate(kind),
        reason,
    };
    if kind.is_empty() {
        return Err(bad("it is empty"));
    }
    if kind.len() > MAX_ID_LEN {
        return Err(bad("it is longer than 128 characters"));
    }
    let segments: Vec<&str> = kind.split('.').collect();
    if segments.len() < 2 {
        return Err(bad("it needs at least two segments"));
    }
    if segments.len() > 8 {
        return Err(bad("it has more than eight segments"));
    }
    for seg in segments {
        let mut chars = seg.chars();
        match chars.next() {
            None => return Err(bad("it has an empty segment")),
            Some(c) if !c.is_ascii_lowercase() => {
                return Err(bad("each segment must start with a lowercase letter"));
            }
            _ => {}
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(bad("segments may only use a-z, 0-9 and _"));
        }
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id($what, &s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// The id of an agent (`billing-agent`).
    AgentId,
    "agent id"
);
string_id!(
    /// The id of an agent session (often a UUID).
    SessionId,
    "session id"
);
string_id!(
    /// The id of an audit chain; `default` unless a service keeps several.
    ChainId,
    "chain id"
);

impl Default for ChainId {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

/// The id of an audit event: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh UUID v7.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID (read back from storage).
    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s).map(Self).map_err(|_| IdError::NotUuid {
            what: "event id",
            value: truncate(s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_safe_set() {
        for ok in ["a", "billing-agent", "x_y.z:1@host", &"a".repeat(128)] {
            assert!(AgentId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn ids_refuse_empty_long_and_unsafe() {
        assert_eq!(
            AgentId::new("").unwrap_err(),
            IdError::Empty { what: "agent id" }
        );
        assert!(matches!(
            SessionId::new("a".repeat(129)).unwrap_err(),
            IdError::TooLong { len: 129, .. }
        ));
        for bad in ["a b", "a/b", "é", "a\0", "a;drop"] {
            let err = ChainId::new(bad).unwrap_err();
            assert!(matches!(err, IdError::BadChar { .. }), "{bad}: {err}");
        }
        let msg = AgentId::new("a b").unwrap_err().to_string();
        assert!(msg.contains("agent id") && msg.contains("' '"), "{msg}");
    }

    #[test]
    fn kinds_follow_the_grammar() {
        for ok in ["tool.call", "chain.key_rotated", "a.b.c", "llm.response2"] {
            assert!(validate_kind(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "tool",
            "Tool.call",
            "tool..call",
            "tool.",
            ".tool",
            "tool.1call",
            "tool.ca-ll",
            "a.b.c.d.e.f.g.h.i",
        ] {
            assert!(validate_kind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_are_v7_and_sort_by_time() {
        let a = EventId::new_v7();
        let b = EventId::new_v7();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<EventId>().unwrap(), a);
        assert!("nope".parse::<EventId>().is_err());
    }
}
