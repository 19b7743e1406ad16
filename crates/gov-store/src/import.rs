//! Importing one chain in one transaction, fenced on the head the import checked: the chain's
//! head is locked (Postgres: its row; SQLite: the database's write lock) from the first row to
//! the commit, so nothing appends in between, and it must still be where the import found it.
//! A service appending to the chain meanwhile waits for the commit (or, when the import
//! begins after it appended, the import is refused before writing anything of the chain).

use gov_core::AuditRecord;

use crate::{Result, Store, StoreError};

/// A chain being imported: rows go in with [`ChainImport::rows`], all land at
/// [`ChainImport::commit`], none when it is dropped uncommitted.
pub struct ChainImport {
    chain_id: String,
    head: (i64, Vec<u8>),
    inner: Inner,
}

enum Inner {
    Postgres {
        store: crate::PgStore,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    },
    Sqlite {
        store: crate::SqliteStore,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        _turn: tokio::sync::OwnedMutexGuard<()>,
    },
}

impl std::fmt::Debug for ChainImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainImport")
            .field("chain_id", &self.chain_id)
            .field("head_seq", &self.head.0)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Begins importing `chain_id`, whose head the caller found at `expected` (seq and seal;
    /// seq 0 for an empty or absent chain): takes the chain's head for the whole import, and
    /// refuses with [`StoreError::ChainMoved`] when it is no longer there.
    pub async fn begin_chain_import(
        &self,
        chain_id: &str,
        expected: (i64, &[u8]),
    ) -> Result<ChainImport> {
        let (head, inner) = match self {
            Store::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                let head = crate::postgres::lock_head(&mut tx, chain_id, None).await?;
                (
                    head,
                    Inner::Postgres {
                        store: s.clone(),
                        tx,
                    },
                )
            }
            Store::Sqlite(s) => {
                let (turn, mut tx) = s.write_tx().await?;
                let head = crate::sqlite::head_in(&mut tx, chain_id).await?;
                (
                    head,
                    Inner::Sqlite {
                        store: s.clone(),
                        tx,
                        _turn: turn,
                    },
                )
            }
        };
        let moved = head.0 != expected.0 || (expected.0 > 0 && head.1 != expected.1);
        if moved {
            // Dropping the transaction rolls it back: nothing was written.
            return Err(StoreError::ChainMoved {
                chain: chain_id.to_owned(),
                expected: expected.0,
                found: head.0,
            });
        }
        Ok(ChainImport {
            chain_id: chain_id.to_owned(),
            head,
            inner,
        })
    }
}

impl ChainImport {
    /// Appends `rows` (sealed elsewhere, verbatim), which must continue the chain from the
    /// rows given so far.
    pub async fn rows(&mut self, rows: &[AuditRecord]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.head = match &mut self.inner {
            Inner::Postgres { tx, .. } => {
                crate::postgres::import_locked(tx, &self.chain_id, &self.head, rows).await?
            }
            Inner::Sqlite { tx, .. } => {
                crate::sqlite::import_in(tx, &self.chain_id, &self.head, rows).await?
            }
        };
        Ok(())
    }

    /// The chain's head with the rows given so far: seq and seal.
    pub fn head(&self) -> (i64, &[u8]) {
        (self.head.0, &self.head.1)
    }

    /// Commits every row given.
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            Inner::Postgres { store, tx } => {
                tx.commit().await?;
                store.imported(&self.chain_id, self.head);
            }
            Inner::Sqlite { store, tx, _turn } => {
                tx.commit().await?;
                store.written().await;
            }
        }
        Ok(())
    }
}
