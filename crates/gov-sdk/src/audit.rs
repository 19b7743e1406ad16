//! The audit chain as the SDK offers it: log, read, verify.

use gov_audit::{Appended, ChainReport, VerifyReport};
use gov_core::{AuditEvent, AuditRecord, ChainHead, EventFilter};

use crate::{Governance, Result};

/// The audit chain of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'g> {
    gov: &'g Governance,
}

impl<'g> Audit<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Appends an event to its chain; returns once the row is durable. Concurrent calls are
    /// committed together in batches.
    pub async fn log(&self, event: AuditEvent) -> Result<Appended> {
        Ok(self.gov.inner.audit.append(event).await?)
    }

    /// Verifies the `default` chain.
    pub async fn verify_chain(&self) -> Result<ChainReport> {
        self.verify_named(gov_core::ChainId::default().as_str())
            .await
    }

    /// Verifies one named chain.
    pub async fn verify_named(&self, chain: &str) -> Result<ChainReport> {
        let report = self.gov.inner.audit.verify(Some(chain)).await?;
        report.chains.into_iter().next().ok_or_else(|| {
            crate::Error::Audit(gov_audit::AuditError::NoSuchChain(chain.to_owned()))
        })
    }

    /// Verifies every chain in the database. Fails with "nothing to verify" when there are no
    /// rows at all, so an empty or wrong database never passes.
    pub async fn verify_all(&self) -> Result<VerifyReport> {
        Ok(self.gov.inner.audit.verify(None).await?)
    }

    /// Reads events matching `filter`, in seq order (keyset paging: pass the last seq seen as
    /// `after_seq`). With `verify_chain_on_read`, each row and its link are verified first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditRecord>> {
        let verify = self.gov.inner.config.verify_chain_on_read;
        Ok(self.gov.inner.audit.events(filter, verify).await?)
    }

    /// The head of a chain (its last seq and HMAC), from the head row.
    pub async fn head(&self, chain: &str) -> Result<Option<ChainHead>> {
        Ok(self.gov.inner.audit.head(chain).await?)
    }

    /// The fingerprint of the key that seals new rows.
    pub fn key_id(&self) -> &str {
        self.gov.inner.audit.keys().current().key_id()
    }
}
