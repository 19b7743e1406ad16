//! The governance audit chain.
//!
//! - [`canonical`]: the versioned, length-prefixed bytes each row's HMAC covers (pure).
//! - [`keys`]: the audit secret, HKDF-derived per-use keys, the salted key fingerprint (pure).
//! - [`verify`]: the streaming, parallel verifier, its options and its findings.
//! - [`owner`]: whose key sealed a chain: unverifiable with the configured keys versus
//!   tampered, and whether a writer may append to a chain (pure).
//! - [`tree`]: the chain's Merkle tree (RFC 9162), its proofs and their verification (pure).
//! - [`note`]: C2SP signed notes, checkpoints and cosignatures (pure).
//! - [`proofs`]: the tree kept as tiles in the database, brought up to date lazily; proofs
//!   from storage.
//! - [`witness`]: the c2sp.org/tlog-witness decision and request body (pure).
//! - [`dsse`]: DSSE envelopes (Dead Simple Signing Envelope) with Ed25519 (pure).
//! - [`bundle`]: the offline evidence bundle: its format and its verification (pure).
//! - [`AuditLog`]: appends with per-chain group commit; the only part that talks to storage,
//!   and only through `gov_store::Store`'s typed methods.
//!
//! # Invariants
//!
//! The rules this crate keeps (ARCHITECTURE.md lists them in one line each):
//!
//! - Appends are group-committed: one writer task per chain takes every queued event into one
//!   transaction, and each caller of `AuditLog::append` returns only after that transaction has
//!   committed.
//! - Events that must commit with a change of state (gate decisions, an LLM call's budget
//!   changes) are appended by the store in that change's transaction instead; the LLM path
//!   reports its events to `AuditLog::appended_elsewhere`, so automatic checkpoints fall due for
//!   them as for batches.
//! - Whether a chain is tampered or merely not verifiable with the configured keys is decided
//!   in one place (`owner` and `ChainCheck`), per chain, from unforgeable evidence only: a chain
//!   is `Verdict::Unverifiable` (a configuration problem) only while no row of it names a
//!   configured key and no configured key seals any row (a relabelled row, one sealed by a
//!   configured key under its own `key_id`, counts as sealed), apart from the rows before a
//!   rotation marker proven by a configured key or after a marker of ours to a key the ring
//!   lacks; anything else the keys cannot explain is a finding. verify, the report, the console
//!   and the SDK read `ChainReport::verdict`, and over several chains the worst wins, tampered
//!   before unverifiable.
//! - The SDK never appends to a chain whose head it cannot verify under its keys: before a
//!   handle first seals a row onto a chain (its chain writer before a batch;
//!   `AuditLog::ensure_writable` before a gate decision or a budget change appends in the store's
//!   transaction; `connect` for `check_chains_on_connect`), the chain must be new, or its last
//!   row must be sealed by the handle's current key (not a `key_id` string: the seal) and not
//!   rotate away from it, or be a marker proven to rotate the chain to it; otherwise
//!   `NotWritable` (or `ChainBroken` for a damaged head), and nothing is written. The check is
//!   once per chain and handle, cached only when it passes, and forgotten when the handle appends
//!   a rotation marker itself.

pub mod bundle;
pub mod canonical;
mod chain;
pub mod checkpoint;
pub mod dsse;
pub mod keys;
pub mod note;
pub mod owner;
pub mod personal;
pub mod proofs;
pub mod rotation;
pub mod signing;
pub mod tree;
pub mod verify;
pub mod witness;

#[cfg(test)]
mod vectors;

use std::sync::Arc;

use thiserror::Error;

pub use chain::{Appended, AuditLog, AuditLogOptions};
pub use checkpoint::{Checkpoint, CheckpointFile};
pub use keys::{AuditSecret, ChainKey, DerivedKey, KeyError, KeyRing};
pub use owner::{NotWritable, Unverifiable, Verdict};
pub use signing::{RowSealer, SigVerdict, Signer, SignerError, SigningState};
pub use verify::{
    ChainCheck, ChainReport, Finding, Reason, SignatureCounts, VerifyOptions, VerifyProgress,
    VerifyReport,
};

/// An audit failure.
#[derive(Debug, Clone, Error)]
pub enum AuditError {
    /// The secret or a key was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage failed (shared by every caller of a failed batch).
    #[error(transparent)]
    Store(Arc<gov_store::StoreError>),
    /// A read with `verify_chain_on_read` met a broken link.
    #[error("the audit chain is broken at {0}")]
    ChainBroken(Finding),
    /// The named chain does not exist.
    #[error("no audit chain named {0:?} exists")]
    NoSuchChain(String),
    /// There is nothing to verify: the database holds no audit rows at all.
    #[error(
        "the database holds no audit events, so nothing was verified; check that the database URL points at the service's database"
    )]
    NothingToVerify,
    /// Verification options were refused (a range below seq 1, ending before it starts, or
    /// holding no row; zero threads).
    #[error("{0}")]
    InvalidOptions(String),
    /// An internal task stopped (the runtime is shutting down).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A row read with `verify_chain_on_read` names a key that is not configured and that no
    /// configured key seals: it cannot be verified here (`governance verify` gives its chain's
    /// verdict: another secret's, or tampered).
    #[error(
        "row {seq} of chain `{chain}` names key {key_id}, which is not configured, so it cannot be verified on read: set GOVERNANCE_AUDIT_SECRET (or GOVERNANCE_AUDIT_SECRET_PREVIOUS) to the secret of {key_id}; `governance verify --chain {chain}` gives the chain's verdict"
    )]
    KeyNotConfigured {
        /// The chain.
        chain: String,
        /// The row's seq.
        seq: i64,
        /// The fingerprint the row names.
        key_id: String,
    },
    /// This handle may not append to the chain: its head was not sealed by the key the handle
    /// seals with, so appending would break the chain for good.
    #[error(transparent)]
    NotWritable(NotWritable),
    /// The background writer for a chain stopped (the runtime is shutting down).
    #[error("the audit writer stopped; the event was not recorded")]
    WriterStopped,
}

impl From<gov_store::StoreError> for AuditError {
    fn from(e: gov_store::StoreError) -> Self {
        Self::Store(Arc::new(e))
    }
}

impl From<owner::HeadRefusal> for AuditError {
    fn from(r: owner::HeadRefusal) -> Self {
        match r {
            owner::HeadRefusal::NotWritable(n) => Self::NotWritable(n),
            owner::HeadRefusal::Broken(f) => Self::ChainBroken(f),
        }
    }
}

impl AuditError {
    /// Whether storage is out of reach (as opposed to a refusal or a broken chain).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_unavailable())
    }
}
