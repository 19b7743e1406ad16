//! Store-level tests of the embedded SQLite backend: what the SDK-level conformance suite (in
//! gov-sdk) cannot see from above — notification delivery by wake and by poll, the lost-message
//! signal after pruning, exact round trips of stored values, import continuity, the schema's
//! append-only triggers.

mod sqlite;
