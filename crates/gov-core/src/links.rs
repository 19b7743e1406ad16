//! The links between a chain's rows, checked without any key: consecutive seqs, each row naming
//! its predecessor's seal as `prev_hmac`. The one definition of "these rows continue that head",
//! used by the store when it imports rows and by export and import when they stream a chain.
//! Seals themselves (does each row's HMAC match its contents?) need the audit secret and are
//! the verifier's work.

use crate::record::{AuditRecord, ZERO_HMAC};

/// How a row fails to continue the rows before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkBreak {
    /// The row's seq is not the one after the last row's: rows are missing, repeated or out of
    /// order.
    Gap {
        /// The seq that should come next.
        expected: i64,
        /// The row's seq.
        found: i64,
    },
    /// The row has the next seq but does not name the last row's seal as its predecessor.
    Fork {
        /// The row's seq.
        seq: i64,
    },
}

/// A chain's end as rows are fed to it one at a time, in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLinks {
    seq: i64,
    seal: Vec<u8>,
}

impl Default for ChainLinks {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainLinks {
    /// An empty chain: the first row must be seq 1 with a zero `prev_hmac`.
    pub fn new() -> Self {
        Self {
            seq: 0,
            seal: ZERO_HMAC.to_vec(),
        }
    }

    /// A chain whose head is at `seq` with seal `seal` (seq 0: empty, whatever `seal` is).
    pub fn at(seq: i64, seal: &[u8]) -> Self {
        match seq {
            0 => Self::new(),
            _ => Self {
                seq,
                seal: seal.to_vec(),
            },
        }
    }

    /// Takes `row` as the chain's next row when it continues the chain; otherwise says how it
    /// does not, and the chain's end stays where it was.
    pub fn push(&mut self, row: &AuditRecord) -> Result<(), LinkBreak> {
        self.push_link(row.seq, &row.prev_hmac, &row.row_hmac)
    }

    /// [`Self::push`] for a row given by its seq, `prev_hmac` and `row_hmac`.
    pub fn push_link(
        &mut self,
        seq: i64,
        prev_hmac: &[u8],
        row_hmac: &[u8],
    ) -> Result<(), LinkBreak> {
        if seq != self.seq + 1 {
            return Err(LinkBreak::Gap {
                expected: self.seq + 1,
                found: seq,
            });
        }
        if prev_hmac != self.seal.as_slice() {
            return Err(LinkBreak::Fork { seq });
        }
        self.seq = seq;
        self.seal.clear();
        self.seal.extend_from_slice(row_hmac);
        Ok(())
    }

    /// The last row's seq (0: no row yet).
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The last row's seal (zeros: no row yet).
    pub fn seal(&self) -> &[u8] {
        &self.seal
    }

    /// Whether the rows end exactly at this head: same seq and, past seq 0, same seal.
    pub fn ends_at(&self, seq: i64, seal: &[u8]) -> bool {
        self.seq == seq && (seq == 0 || self.seal == seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(links: &mut ChainLinks, seq: i64, prev: u8, me: u8) -> Result<(), LinkBreak> {
        links.push_link(seq, &[prev; 32], &[me; 32])
    }

    #[test]
    fn rows_link_from_an_empty_chain_or_a_head() {
        let mut links = ChainLinks::new();
        assert_eq!(link(&mut links, 1, 0, 1), Ok(()));
        assert_eq!(link(&mut links, 2, 1, 2), Ok(()));
        assert!(links.ends_at(2, &[2; 32]));
        assert!(!links.ends_at(2, &[3; 32]));
        assert!(!links.ends_at(3, &[2; 32]));
        let mut from_head = ChainLinks::at(2, &[2; 32]);
        assert_eq!(link(&mut from_head, 3, 2, 3), Ok(()));
        assert_eq!(from_head.seq(), 3);
        assert_eq!(from_head.seal(), &[3; 32]);
        assert!(ChainLinks::at(0, &[9; 32]).ends_at(0, &[7; 32]));
    }

    #[test]
    fn a_gap_or_a_fork_is_named_and_leaves_the_end_where_it_was() {
        let mut links = ChainLinks::at(3, &[3; 32]);
        assert_eq!(
            link(&mut links, 5, 3, 5),
            Err(LinkBreak::Gap {
                expected: 4,
                found: 5
            })
        );
        assert_eq!(
            link(&mut links, 3, 2, 3),
            Err(LinkBreak::Gap {
                expected: 4,
                found: 3
            })
        );
        assert_eq!(link(&mut links, 4, 9, 4), Err(LinkBreak::Fork { seq: 4 }));
        assert!(links.ends_at(3, &[3; 32]));
        assert_eq!(
            ChainLinks::new().push_link(1, &[1; 32], &[1; 32]),
            Err(LinkBreak::Fork { seq: 1 })
        );
    }
}
