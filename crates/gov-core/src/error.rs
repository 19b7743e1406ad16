//! Error enums for ids and events. Each variant names the problem and, where it helps, the fix.

use thiserror::Error;

/// Why a string was refused as an id or an event kind.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id was empty.
    #[error("{what} is empty; give a non-empty id such as `billing-agent`")]
    Empty {
        /// Which id ("agent id", "session id", ...).
        what: &'static str,
    },
    /// The id was longer than the maximum.
    #[error("{what} is {len} characters long; the maximum is {max}")]
    TooLong {
        /// Which id.
        what: &'static str,
        /// Its length in characters.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The id holds a character outside the safe set.
    #[error(
        "{what} contains {ch:?} at position {pos}; ids may only use letters, digits and `-_.:@`"
    )]
    BadChar {
        /// Which id.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its position (0-based, in characters).
        pos: usize,
    },
    /// An event kind did not follow the `namespace.action` grammar.
    #[error(
        "event kind {kind:?} is malformed: {reason}; use lowercase dot-separated words such as `tool.call` or `agent.halted`"
    )]
    BadKind {
        /// The kind as given (truncated to 64 characters).
        kind: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A string that should hold a UUID did not.
    #[error("{what} {value:?} is not a UUID")]
    NotUuid {
        /// Which id.
        what: &'static str,
        /// The value as given (truncated to 64 characters).
        value: String,
    },
}

/// Why an audit event could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    /// One of the ids, or the kind, is invalid.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The canonical payload exceeds the size cap.
    #[error(
        "event payload is {size} bytes once canonical; the maximum is {max} bytes: store large data elsewhere and log a reference to it"
    )]
    PayloadTooLarge {
        /// Size of the canonical payload in bytes.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The payload nests deeper than the cap.
    #[error("event payload nests {depth} levels deep; the maximum is {max}")]
    PayloadTooDeep {
        /// The depth found (at least).
        depth: usize,
        /// The cap.
        max: usize,
    },
    /// The payload holds an integer that JSON numbers (IEEE doubles, RFC 8785) cannot carry
    /// exactly; it would be silently rounded.
    #[error(
        "event payload holds the integer {0}, beyond ±(2^53 - 1), which canonical JSON would round; send it as a string"
    )]
    UnsafeInteger(String),
    /// The payload could not be put in canonical form (RFC 8785).
    #[error("event payload cannot be canonicalised (RFC 8785): {0}")]
    NotCanonical(String),
    /// The fields marked personal do not fit the payload (a field that is not a top-level key,
    /// two subjects on one event, a payload that is not an object).
    #[error("personal fields: {0}")]
    Personal(String),
}
