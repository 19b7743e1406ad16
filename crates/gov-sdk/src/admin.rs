//! Administration that needs no audit secret: migrations, the application role, privileges,
//! and moving sealed chains between databases ([`transfer`]: export and import; rows are copied
//! as they are, never re-sealed). Run as the role that owns the schema (not as the application
//! role).

pub mod retention;
pub mod transfer;

use gov_core::{AuditRecord, ChainHead, ChainId, OperatorRole};
use gov_store::{MigrateReport, OperatorChange, Privileges, Store, StoreOptions};

pub use gov_store::{ChainImport, CheckpointRow, RetentionCut, SignerKeyRow, StoreError};

use crate::{Error, Result};

/// An operator account as listed (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorInfo {
    /// User name.
    pub username: String,
    /// Role.
    pub role: OperatorRole,
    /// Whether the account is disabled.
    pub disabled: bool,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

pub(crate) async fn add_operator(
    store: &Store,
    username: &str,
    role: OperatorRole,
    password: &str,
) -> Result<()> {
    gov_core::AgentId::new(username).map_err(|e| Error::Config(format!("user name: {e}")))?;
    let hash = crate::operators::hash_new_password(password)?;
    Ok(store.add_operator(username, role, &hash).await?)
}

/// Default name of the least-privilege application role.
pub const DEFAULT_APP_ROLE: &str = "governance_app";

/// A connection for administrative work.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
}

impl Admin {
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Connects to `url`. A missing SQLite file is an error ([`Error::is_config`]: a mistyped
    /// path names no database), never a new empty one; see [`Self::connect_or_create`].
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(url, false).await
    }

    /// Connects to `url`, creating a missing SQLite file (mode 600, in directories created 700
    /// when missing) — for the administrative work that brings a database into being
    /// (`governance migrate`, `governance demo`). A Postgres database is not created (see
    /// [`Self::ensure_database`]).
    pub async fn connect_or_create(url: &str) -> Result<Self> {
        Self::open(url, true).await
    }

    async fn open(url: &str, create_if_missing: bool) -> Result<Self> {
        let opts = StoreOptions {
            max_connections: 2,
            create_if_missing,
            ..StoreOptions::default()
        };
        Ok(Self {
            store: Store::connect(url, &opts).await?,
        })
    }

    /// Creates the database named in `url` if it does not exist (first runs, demos): a SQLite
    /// file of mode 600 (its directories are the caller's), or a Postgres database. Returns
    /// whether it was created.
    pub async fn ensure_database(url: &str) -> Result<bool> {
        Ok(Store::ensure_database(url).await?)
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<MigrateReport> {
        Ok(self.store.migrate().await?)
    }

    /// Whether the schema is current for this build (nothing to migrate).
    pub async fn schema_is_current(&self) -> Result<bool> {
        match self.store.check_schema().await {
            Ok(()) => Ok(true),
            Err(gov_store::StoreError::NotMigrated(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the application role if needed and grants it INSERT and SELECT on the audit
    /// rows and nothing more. `password` is set on the role when given.
    pub async fn ensure_app_role(&self, role: &str, password: Option<&str>) -> Result<()> {
        Ok(self.store.ensure_app_role(role, password).await?)
    }

    /// Adds a console/CLI user with an argon2id password hash. Refuses a duplicate name.
    pub async fn add_operator(
        &self,
        username: &str,
        role: OperatorRole,
        password: &str,
    ) -> Result<()> {
        add_operator(&self.store, username, role, password).await
    }

    /// Every console/CLI user.
    pub async fn operators(&self) -> Result<Vec<OperatorInfo>> {
        Ok(self
            .store
            .operators()
            .await?
            .into_iter()
            .map(|(username, role, disabled, created_at)| OperatorInfo {
                username,
                role,
                disabled,
                created_at,
            })
            .collect())
    }

    /// Disables (or re-enables) a user and ends all of their console sessions; refuses an
    /// unknown user.
    pub async fn set_operator_disabled(&self, username: &str, disabled: bool) -> Result<()> {
        let change = OperatorChange {
            disabled: Some(disabled),
            ..OperatorChange::default()
        };
        crate::operators::change_operator(&self.store, username, &change).await
    }

    /// Changes a user's role and ends all of their console sessions; refuses an unknown user.
    pub async fn set_operator_role(&self, username: &str, role: OperatorRole) -> Result<()> {
        let change = OperatorChange {
            role: Some(role),
            ..OperatorChange::default()
        };
        crate::operators::change_operator(&self.store, username, &change).await
    }

    /// Revokes a signer's key: rows it signs from now on fail verification as a revoked
    /// signer. Refuses an unknown or already revoked key.
    pub async fn revoke_signer(&self, signer_key_id: &str) -> Result<()> {
        if self.store.revoke_signer(signer_key_id).await? {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "no active signer {signer_key_id}: it is unknown or already revoked"
            )))
        }
    }

    /// Replaces a user's password and ends all of their console sessions.
    pub async fn reset_operator_password(&self, username: &str, password: &str) -> Result<()> {
        let hash = crate::operators::hash_new_password(password)?;
        let change = OperatorChange {
            password_hash: Some(&hash),
            ..OperatorChange::default()
        };
        crate::operators::change_operator(&self.store, username, &change).await
    }

    /// What the connected role may do to the audit tables.
    pub async fn privileges(&self) -> Result<Privileges> {
        Ok(self.store.privileges().await?)
    }

    /// Fails with a "not migrated" error (saying to run `governance migrate`) when the schema
    /// is missing, older than this build, or holds a migration this build does not know.
    pub async fn check_schema(&self) -> Result<()> {
        Ok(self.store.check_schema().await?)
    }

    /// The backend this connection uses: `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        self.store.kind().as_str()
    }

    /// The head rows of every chain (last seq and its HMAC), ordered by chain id.
    pub async fn chain_heads(&self) -> Result<Vec<ChainHead>> {
        Ok(self.store.chain_heads().await?)
    }

    /// Whether the database holds personal-data state: a subject's key or an erased subject.
    pub async fn holds_subject_state(&self) -> Result<bool> {
        Ok(self.store.holds_subject_state().await?)
    }

    /// The head row of one chain, if the chain exists.
    pub async fn chain_head(&self, chain: &str) -> Result<Option<ChainHead>> {
        ChainId::new(chain)?;
        Ok(self.store.chain_head(chain).await?)
    }

    /// The ids of every chain that has rows, found from the rows themselves (so a chain whose
    /// head row is missing is still listed).
    pub async fn chain_ids(&self) -> Result<Vec<String>> {
        Ok(self.store.chain_ids_with_rows().await?)
    }

    /// Up to `limit` stored rows of `chain` with seq greater than `after_seq`, in seq order,
    /// exactly as stored (keyset paging: pass the last seq read). Nothing is verified here.
    pub async fn export_page(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditRecord>> {
        ChainId::new(chain)?;
        Ok(self.store.read_chain_page(chain, after_seq, limit).await?)
    }

    /// Appends rows sealed elsewhere (exported from another database) to `chain`, verbatim and
    /// in one transaction: nothing is re-sealed, so they verify here under the keys they were
    /// sealed with. They must continue the chain's head exactly (consecutive seqs, each row's
    /// `prev_hmac` the previous seal); otherwise nothing is written and the error is a conflict
    /// (a configuration error).
    pub async fn import_rows(&self, chain: &str, rows: &[AuditRecord]) -> Result<()> {
        ChainId::new(chain)?;
        Ok(self.store.import_rows(chain, rows).await?)
    }

    /// Begins importing `chain` in one transaction fenced on the head the caller checked
    /// (`expected`: its seq and seal, seq 0 when the chain is empty or absent): the head is held
    /// until [`ChainImport::commit`], so nothing appends in between, and when something
    /// appended since the check, nothing is written and the error is
    /// [`gov_store::StoreError::ChainMoved`].
    pub async fn begin_chain_import(
        &self,
        chain: &str,
        expected: (i64, &[u8]),
    ) -> Result<ChainImport> {
        ChainId::new(chain)?;
        Ok(self.store.begin_chain_import(chain, expected).await?)
    }

    /// The inclusion proof of row `seq` of `chain` in the chain's Merkle tree of `size` leaves
    /// (default: the head), with the row's leaf data and the tree's root. The chain's tree tiles
    /// are brought up to its head first, outside any append (see
    /// [`gov_audit::proofs::ChainTree`]); a role that may not write them still gets the proof.
    pub async fn prove_inclusion(
        &self,
        chain: &str,
        seq: i64,
        size: Option<u64>,
    ) -> Result<gov_audit::tree::InclusionProof> {
        ChainId::new(chain)?;
        let mut tree = gov_audit::proofs::ChainTree::open(&self.store, chain).await?;
        Ok(tree.inclusion(seq, size).await?)
    }

    /// The consistency proof of `chain`'s Merkle tree from size `from` to size `to`, with both
    /// roots.
    pub async fn prove_consistency(
        &self,
        chain: &str,
        from: u64,
        to: u64,
    ) -> Result<gov_audit::tree::ConsistencyProof> {
        ChainId::new(chain)?;
        let mut tree = gov_audit::proofs::ChainTree::open(&self.store, chain).await?;
        Ok(tree.consistency(from, to).await?)
    }

    /// The root of `chain`'s Merkle tree of `size` leaves (default: the head), and that size.
    pub async fn tree_root(&self, chain: &str, size: Option<u64>) -> Result<(u64, [u8; 32])> {
        ChainId::new(chain)?;
        let mut tree = gov_audit::proofs::ChainTree::open(&self.store, chain).await?;
        let size = size.unwrap_or(tree.size());
        Ok((size, tree.root(size).await?))
    }

    /// Every registered signer key, revoked ones included.
    pub async fn signer_keys(&self) -> Result<Vec<SignerKeyRow>> {
        Ok(self.store.signer_keys().await?)
    }

    /// Stores a signer key exported from another database, with its registration and
    /// revocation times; kept as it is when already there. Returns false when the id is
    /// registered here with another public key.
    pub async fn import_signer(&self, row: &SignerKeyRow) -> Result<bool> {
        Ok(self.store.import_signer(row).await?)
    }

    /// A chain's retention cuts (`governance archive`), oldest first.
    pub async fn retention_cuts(&self, chain: &str) -> Result<Vec<RetentionCut>> {
        ChainId::new(chain)?;
        Ok(self.store.retention_cuts(chain).await?)
    }

    /// A chain's stored checkpoints, by seq.
    pub async fn checkpoints(&self, chain: &str) -> Result<Vec<CheckpointRow>> {
        ChainId::new(chain)?;
        Ok(self.store.checkpoints(chain).await?)
    }

    /// Stores a checkpoint exported from another database (idempotent). Its signer must be
    /// registered here first ([`Admin::import_signer`]).
    pub async fn put_checkpoint(&self, checkpoint: &CheckpointRow) -> Result<()> {
        ChainId::new(&checkpoint.chain_id)?;
        Ok(self.store.put_checkpoint(checkpoint).await?)
    }

    /// Closes the connection.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
