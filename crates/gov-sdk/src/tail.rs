//! Following the audit chain live: every event any process appends, as it commits.
//!
//! A [`Tail`] listens on the notification every append batch sends, then reads the new rows
//! by seq. It starts listening before its first read, and after a lost connection it listens
//! again and reads everything after the last seq it returned, so no event is ever skipped.

use std::collections::VecDeque;

use gov_core::{AuditRecord, EventFilter};
use gov_store::{AUDIT_CHANNEL, Listener, Notice};

use crate::{Governance, Result};

/// A live follower of one chain.
pub struct Tail {
    gov: Governance,
    filter: EventFilter,
    after: i64,
    chain: String,
    listener: Option<Listener>,
    buffered: VecDeque<AuditRecord>,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("chain", &self.chain)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Tail {
    /// Follows the chain of `filter` (default `default`), returning events that match it.
    /// `filter.after_seq` or `filter.since` choose where to start; with neither, only events
    /// appended from now on are returned.
    pub async fn start(gov: &Governance, filter: EventFilter) -> Result<Self> {
        let chain = filter
            .chain_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_else(|| "default".to_owned());
        let listener = gov.inner.store.listen(&[AUDIT_CHANNEL]).await?;
        let after = match (filter.after_seq, filter.since) {
            (Some(s), _) => s,
            (None, Some(_)) => 0,
            (None, None) => gov.audit().head(&chain).await?.map(|h| h.seq).unwrap_or(0),
        };
        Ok(Self {
            gov: gov.clone(),
            filter,
            after,
            chain,
            listener: Some(listener),
            buffered: VecDeque::new(),
        })
    }

    async fn read_more(&mut self) -> Result<()> {
        loop {
            let page_filter = EventFilter {
                after_seq: Some(self.after),
                limit: Some(1_000),
                ..self.filter.clone()
            };
            let rows = self.gov.audit().events(&page_filter).await?;
            // Advance past every row read, matching or not (`events` filters in SQL, so the last
            // seq of the page is the furthest point examined only when the page is full).
            let full = rows.len() == 1_000;
            if let Some(last) = rows.last() {
                self.after = last.seq;
            }
            self.buffered.extend(rows);
            if !full {
                return Ok(());
            }
        }
    }

    /// The next matching event, waiting for one to be appended if needed.
    pub async fn next(&mut self) -> Result<AuditRecord> {
        loop {
            if let Some(r) = self.buffered.pop_front() {
                return Ok(r);
            }
            self.read_more().await?;
            if !self.buffered.is_empty() {
                continue;
            }
            let listener = match self.listener.as_mut() {
                Some(l) => l,
                None => {
                    // Listen again, then catch up by seq: nothing is missed.
                    self.listener = Some(self.gov.inner.store.listen(&[AUDIT_CHANNEL]).await?);
                    continue;
                }
            };
            match listener.recv().await {
                Ok(Notice::Message { payload, .. }) => {
                    // `<chain>:<seq>`: skip other chains without a read.
                    let for_us = payload
                        .rsplit_once(':')
                        .is_none_or(|(c, _)| c == self.chain);
                    if !for_us {
                        continue;
                    }
                }
                Ok(Notice::Lost) | Err(_) => {
                    self.listener = None;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}
