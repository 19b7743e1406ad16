//! Moving sealed audit chains between databases: [`Export`] writes chains, their signer keys
//! and checkpoints as a versioned JSON Lines file, and [`import`] reads one into another
//! database (Postgres or SQLite, either way). Rows are copied exactly as sealed, never
//! re-sealed, so no audit secret is needed and the chains verify on the target under the keys
//! that sealed them ([`verify_imported`] checks that at once, with the secret).
//!
//! The file (JSON Lines, [`VERSION`] 1): line 1 is the header (`format`, `version`, the chains
//! and their heads), then one line per signer key, per audit row (chain by chain, in seq order)
//! and per checkpoint, and last an `end` line counting them, so that a cut-off file is told from
//! a whole one. Bytes are lowercase hex; times are RFC 3339 in UTC with every fractional digit
//! kept.
//!
//! Links between rows (consecutive seqs, each `prev_hmac` the previous seal) are checked with
//! [`gov_core::ChainLinks`], the check the store runs on every imported batch: the export
//! refuses a chain whose stored rows do not link up, the import a file whose rows do not.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use gov_sdk::admin::{Admin, transfer};
//! let source = Admin::connect("postgres://owner@old/app").await?;
//! let export = transfer::Export::prepare(&source, &[]).await?;
//! let mut file = std::fs::File::create("chains.jsonl")?;
//! let written = export.write(&source, &mut file, &()).await?;
//! println!("{} rows exported", written.rows);
//!
//! let target = Admin::connect("sqlite:///var/lib/governance.db").await?;
//! let file = transfer::ImportFile::open("chains.jsonl")?;
//! let report = transfer::import(&target, &file, &()).await?;
//! println!("{} rows imported", report.rows());
//! # Ok(()) }
//! ```

mod export;
mod format;
mod import;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gov_audit::Finding;

use crate::{Error, ErrorKind};

pub use export::{Export, ExportReport};
pub use format::{FORMAT, MAX_LINE_BYTES, VERSION};
pub use import::{ImportReport, ImportedChain, import, verify_imported};

/// What a transfer reports as it goes, for a progress display. Every method does nothing by
/// default; `()` reports nothing.
pub trait Progress: Sync {
    /// The import begins checking the file (its name as given to [`ImportFile`]).
    fn checking(&self, _file: &str) {}
    /// The check is over (passed or not).
    fn checked(&self) {}
    /// Rows begin to be written: `total` of them (the export's, or the import's less those the
    /// target already holds).
    fn rows(&self, _total: u64) {}
    /// `n` more rows were written.
    fn advance(&self, _n: u64) {}
    /// Every row was written.
    fn rows_done(&self) {}
}

impl Progress for () {}

/// An export file to import, read twice (checked whole, then written).
#[derive(Debug, Clone)]
pub struct ImportFile {
    path: PathBuf,
    name: String,
}

impl ImportFile {
    /// The file at `path`, named by its path in messages; refused when it cannot be opened.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, TransferError> {
        let path = path.as_ref();
        Self::named(path, path.display().to_string())
    }

    /// The file at `path`, named `name` in messages (such as "standard input" for a copy of
    /// it); refused when it cannot be opened.
    pub fn named(path: impl AsRef<Path>, name: impl Into<String>) -> Result<Self, TransferError> {
        let this = Self {
            path: path.as_ref().to_path_buf(),
            name: name.into(),
        };
        std::fs::File::open(&this.path).map_err(|error| TransferError::ReadFile {
            file: this.name.clone(),
            error,
        })?;
        Ok(this)
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why an export or an import failed. Every refusal of the file is made before anything is
/// written; [`TransferError::kind`] classifies it like the SDK's [`Error::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The SDK or the store failed.
    #[error(transparent)]
    Sdk(Box<Error>),
    /// The source database's schema is not this build's.
    #[error("the source database cannot be exported")]
    SourceNotReady(#[source] Box<Error>),
    /// The target database's schema is not this build's.
    #[error(
        "the target database is not ready for an import (run `governance migrate` against it first)"
    )]
    TargetNotReady(#[source] Box<Error>),
    /// A chain asked for is not in the source database.
    #[error("no audit chain named {chain} exists in the source database")]
    NoSuchChain {
        /// The chain asked for.
        chain: String,
    },
    /// The source holds subject keys or erased subjects, which an export does not carry yet:
    /// the moved chains' personal fields would read as erased on the target, and an erased
    /// subject would get keys again there.
    #[error(
        "the source database holds personal-data keys or erasures (fields marked personal), which `export` does not carry yet: on the target those fields would read as erased. Keep this database until a build carries them"
    )]
    SubjectKeysNotCarried,
    /// The source database holds no chain.
    #[error("the source database holds no audit chain: nothing to export (check --database-url)")]
    NothingToExport,
    /// A chain's stored rows do not link up: nothing usable was exported.
    #[error("the audit chain is broken at {finding}")]
    Broken {
        /// The chain.
        chain: String,
        /// Where and how.
        finding: Finding,
    },
    /// A line could not be encoded (a time beyond year 9999).
    #[error("cannot encode a line of the export: {0}")]
    Encode(serde_json::Error),
    /// The export could not be written to its destination.
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    /// The file to import cannot be opened or read.
    #[error("cannot read the export file {file}: {error}")]
    ReadFile {
        /// The file's name.
        file: String,
        /// The failure.
        error: std::io::Error,
    },
    /// The file is not an export at all.
    #[error(
        "{file} is not a governance export ({why}); write one with `governance export --output FILE`"
    )]
    NotAnExport {
        /// The file's name.
        file: String,
        /// What gives it away.
        why: String,
    },
    /// The file is an export of a version this build does not read.
    #[error(
        "{file} is a governance export of version {version}, which governance {} does not read (it reads version {VERSION}): {}; nothing was imported",
        env!("CARGO_PKG_VERSION"),
        if *.version > VERSION { "import it with the governance release that exported it, or a newer one" } else { "export it again with this governance" }
    )]
    Version {
        /// The file's name.
        file: String,
        /// The version it says.
        version: u64,
    },
    /// The header has no valid version.
    #[error(
        "{file} has no valid \"version\" in its header (governance {} reads version {VERSION}): export it again; nothing was imported",
        env!("CARGO_PKG_VERSION")
    )]
    NoVersion {
        /// The file's name.
        file: String,
    },
    /// The file is damaged: a line, a link between rows or a count is wrong. Nothing was
    /// imported.
    #[error(
        "{file}: {damage}; it is not a whole file written by `governance export` (export again); nothing was imported"
    )]
    Damaged {
        /// The file's name.
        file: String,
        /// What is wrong, and where.
        damage: Damage,
    },
    /// The file ends before its end line. Nothing was imported.
    #[error(
        "{file} ends after line {lines} without its end line: the export was cut off (interrupted, or copied in part); export again; nothing was imported"
    )]
    CutOff {
        /// The file's name.
        file: String,
        /// The lines it holds.
        lines: u64,
    },
    /// A signer in the file is registered in the target with another public key.
    #[error(
        "signer {signer} is registered in the target database with another public key, so the file's rows signed under that id could not be verified here; nothing was imported"
    )]
    SignerClash {
        /// The signer id.
        signer: String,
    },
    /// The target's chain of the same id is another chain: the file does not continue it.
    #[error(
        "chain {chain} already has rows in the target database (up to seq {target_seq}) that the file does not continue: \
         it is another chain under the same id (the seals at seq {at} differ). Import into a database without \
         chain {chain}, or export again without it (`governance export --chain …`); nothing was imported"
    )]
    AnotherChain {
        /// The chain.
        chain: String,
        /// The target's head seq.
        target_seq: i64,
        /// The seq whose seals differ.
        at: i64,
    },
    /// The file continues a chain after seq `starts_after` (its older rows were archived
    /// before), and the target does not hold the chain up to there.
    #[error(
        "the file holds chain {chain} from seq {first} on (seq 1 to {starts_after} were archived before), but the target's chain ends at seq {target_seq}: import the archives of that chain in order, starting with the one from seq 1; nothing was imported"
    )]
    EarlierArchiveFirst {
        /// The chain.
        chain: String,
        /// The last seq before the file's rows.
        starts_after: i64,
        /// The file's first seq.
        first: i64,
        /// The target's head seq.
        target_seq: i64,
    },
    /// A signer was registered in the target with another key while the import ran.
    #[error(
        "signer {signer} was registered in the target database with another public key while the import ran"
    )]
    SignerChanged {
        /// The signer id.
        signer: String,
    },
    /// Writing one chain failed; nothing of that chain was written.
    #[error("chain {chain}: {step}")]
    Chain {
        /// The chain.
        chain: String,
        /// What failed.
        step: ChainStep,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// Something appended to a chain after the import checked it: running the import again
    /// cannot succeed.
    #[error(
        "the import was refused: a service is appending to chain {chain} in the target database; \
         import a chain only where nothing writes to it yet (stop its writers, or import into a \
         new database before pointing services at it); {written}"
    )]
    Moved {
        /// The chain.
        chain: String,
        /// What was imported before.
        written: Written,
        /// The failure.
        #[source]
        source: Box<TransferError>,
    },
    /// The import stopped part way; running it again continues it.
    #[error(
        "the import stopped: {written}; run the same import again to continue (rows already there are skipped)"
    )]
    Stopped {
        /// What was imported before.
        written: Written,
        /// The failure.
        #[source]
        source: Box<TransferError>,
    },
    /// The import is complete but a chain could not be verified.
    #[error("the import is complete, but chain {chain} could not be verified")]
    Unverified {
        /// The chain.
        chain: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
}

impl From<Error> for TransferError {
    fn from(e: Error) -> Self {
        Self::Sdk(Box::new(e))
    }
}

impl TransferError {
    /// What kind of failure this is: a chain that does not link up is [`ErrorKind::Tampered`],
    /// a failure of the SDK keeps its kind, and every refusal of the file or the target is
    /// [`ErrorKind::Config`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Sdk(e)
            | Self::SourceNotReady(e)
            | Self::TargetNotReady(e)
            | Self::Chain { source: e, .. }
            | Self::Unverified { source: e, .. } => e.kind(),
            Self::Moved { source, .. } | Self::Stopped { source, .. } => source.kind(),
            Self::Broken { .. } => ErrorKind::Tampered,
            _ => ErrorKind::Config,
        }
    }

    /// The damage, when the file was refused as damaged.
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            Self::Damaged { damage, .. } => Some(damage),
            _ => None,
        }
    }
}

/// The step of a chain's import that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChainStep {
    /// Taking the chain's head.
    Begin,
    /// Sending rows `from..=to`.
    Rows {
        /// The first row sent.
        from: i64,
        /// The last row sent.
        to: i64,
    },
    /// Committing.
    Commit,
}

impl std::fmt::Display for ChainStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Begin => f.write_str("nothing of it was imported"),
            Self::Rows { from, to } => write!(
                f,
                "rows {from}..{to} could not be imported; nothing of the chain was"
            ),
            Self::Commit => {
                f.write_str("its rows could not be committed; nothing of it was imported")
            }
        }
    }
}

/// What is wrong with a damaged export file, and where (line numbers count from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A line is not UTF-8 text or could not be read.
    #[error("line {line} cannot be read: {why}")]
    Unreadable {
        /// The line.
        line: u64,
        /// Why.
        why: String,
    },
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes, which no export line is")]
    TooLong {
        /// The line.
        line: u64,
    },
    /// A line is not JSON of a known type.
    #[error("line {line} is not a valid export line ({why})")]
    NotALine {
        /// The line.
        line: u64,
        /// The parser's reason.
        why: String,
    },
    /// The header is malformed.
    #[error("its header (line 1) is malformed: {0}")]
    Header(String),
    /// The header names an invalid chain id.
    #[error("the header names chain {chain:?}, which is not a valid chain id ({why})")]
    BadChainId {
        /// The id.
        chain: String,
        /// Why it is invalid.
        why: String,
    },
    /// The header names a chain twice.
    #[error("the header names chain {chain} twice")]
    ChainTwice {
        /// The chain.
        chain: String,
    },
    /// The header's head of a chain is malformed.
    #[error("the header's head of chain {chain} is malformed")]
    BadHead {
        /// The chain.
        chain: String,
    },
    /// A line is out of its section (signers, then rows, then checkpoints).
    #[error("line {line}: {what}")]
    OutOfOrder {
        /// The line.
        line: u64,
        /// What came too late.
        what: &'static str,
    },
    /// A line's shape is wrong (a field's length, an unknown status, a time's precision).
    #[error("line {line}: {why}")]
    Malformed {
        /// The line.
        line: u64,
        /// What is wrong.
        why: String,
    },
    /// A signer appears twice.
    #[error("line {line}: signer {signer} appears twice")]
    SignerTwice {
        /// The line.
        line: u64,
        /// The signer id.
        signer: String,
    },
    /// A row or checkpoint of a chain the header does not list.
    #[error("line {line}: a {what} of chain {chain:?}, which the header does not list")]
    UnlistedChain {
        /// The line.
        line: u64,
        /// `row` or `checkpoint`.
        what: &'static str,
        /// The chain.
        chain: String,
    },
    /// A row does not follow the one before (rows missing, repeated or out of order).
    #[error(
        "line {line}: row {seq} of chain {chain} follows row {after} (rows must run 1, 2, 3, … with none missing)"
    )]
    Gap {
        /// The line.
        line: u64,
        /// The chain.
        chain: String,
        /// The row's seq.
        seq: i64,
        /// The seq of the row before it in the file.
        after: i64,
    },
    /// A row does not name the seal of the row before it.
    #[error(
        "line {line}: row {seq} of chain {chain} does not name the seal of row {after} as its predecessor"
    )]
    Fork {
        /// The line.
        line: u64,
        /// The chain.
        chain: String,
        /// The row's seq.
        seq: i64,
        /// The seq of the row before it.
        after: i64,
    },
    /// A row beyond the head the header gives.
    #[error(
        "line {line}: row {seq} of chain {chain} lies beyond the head the header gives (seq {head})"
    )]
    BeyondHead {
        /// The line.
        line: u64,
        /// The chain.
        chain: String,
        /// The row's seq.
        seq: i64,
        /// The header's head seq.
        head: i64,
    },
    /// A checkpoint beyond the exported head.
    #[error(
        "line {line}: a checkpoint of chain {chain} at seq {seq}, beyond the exported head (seq {head})"
    )]
    CheckpointBeyondHead {
        /// The line.
        line: u64,
        /// The chain.
        chain: String,
        /// The checkpoint's seq.
        seq: i64,
        /// The header's head seq.
        head: i64,
    },
    /// A checkpoint signed by a signer neither the file nor the target holds.
    #[error("line {line}: a checkpoint signed by {signer}, a signer the file does not hold")]
    UnknownSigner {
        /// The line.
        line: u64,
        /// The signer id.
        signer: String,
    },
    /// The end line's count differs from what the file holds.
    #[error("its end line counts {said} {what} but the file holds {found}")]
    Count {
        /// `rows`, `signers` or `checkpoints`.
        what: &'static str,
        /// The end line's count.
        said: u64,
        /// What the file holds.
        found: u64,
    },
    /// A line after the end line.
    #[error("line {line} follows the end line")]
    AfterEnd {
        /// The line.
        line: u64,
    },
    /// A chain's rows do not end at the head the header gives.
    #[error(
        "the header gives chain {chain} a head at seq {head}, but its rows end at seq {ends_at}{}",
        if .head == .ends_at { " with another seal" } else { "" }
    )]
    HeadMismatch {
        /// The chain.
        chain: String,
        /// The header's head seq.
        head: i64,
        /// The last row's seq.
        ends_at: i64,
    },
}

/// What an import wrote before it stopped: per chain the seqs written, and the signer keys and
/// checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Per chain: (first seq written, last seq written).
    pub rows: BTreeMap<String, (i64, i64)>,
    /// Signer keys written.
    pub signers: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .rows
            .iter()
            .map(|(c, (a, b))| format!("chain {c} seq {a}..{b}"))
            .collect();
        if parts.is_empty() {
            parts.push("no rows".into());
        }
        write!(
            f,
            "{} were imported, with {} signer key{} and {} checkpoint{}",
            parts.join(", "),
            self.signers,
            plural(self.signers),
            self.checkpoints,
            plural(self.checkpoints)
        )
    }
}

pub(crate) fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
