//! What a retention cut must satisfy, checked by both backends inside the cut's transaction.

use crate::{Result, RetentionCut, StoreError};

/// The chain exists (`head`), the cut is within it and beyond the last cut (`last`).
pub(crate) fn check_cut(c: &RetentionCut, head: Option<i64>, last: Option<i64>) -> Result<()> {
    let Some(head) = head else {
        return Err(StoreError::InvalidArgument(format!(
            "there is no chain {:?}",
            c.chain_id
        )));
    };
    if c.through_seq < 1 || c.through_seq > head {
        return Err(StoreError::InvalidArgument(format!(
            "chain {:?} ends at seq {head}: a cut through seq {} is outside it",
            c.chain_id, c.through_seq
        )));
    }
    if let Some(last) = last
        && c.through_seq <= last
    {
        return Err(StoreError::InvalidArgument(format!(
            "chain {:?} is already archived through seq {last}; a new cut must go beyond it",
            c.chain_id
        )));
    }
    if c.row_hmac.len() != 32 || !c.tree_frontier.len().is_multiple_of(32) {
        return Err(StoreError::InvalidArgument(
            "a cut names a 32-byte row seal and whole 32-byte frontier hashes".into(),
        ));
    }
    Ok(())
}

/// Row `through_seq` is there and is the row the cut (and its archive) names.
pub(crate) fn check_row(c: &RetentionCut, stored: Option<&[u8]>) -> Result<()> {
    match stored {
        Some(h) if h == c.row_hmac.as_slice() => Ok(()),
        Some(_) => Err(StoreError::Conflict(format!(
            "row {} of chain {:?} is not the row the archive ends with; nothing was removed",
            c.through_seq, c.chain_id
        ))),
        None => Err(StoreError::Conflict(format!(
            "row {} of chain {:?} is missing; nothing was removed",
            c.through_seq, c.chain_id
        ))),
    }
}
