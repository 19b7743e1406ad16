//! Proofs from storage: the chain's tree kept as full tiles of 256 hashes
//! (`audit_tree_tiles`), brought up to the chain's head lazily by whoever asks for a root or a
//! proof, never by an append.
//!
//! Tile (level `L`, index `t`) holds the hashes of the perfect subtrees of height `8L` numbered
//! `256t` to `256t + 255` (at level 0: the leaf hashes of rows `256t + 1` to `256t + 256`), and
//! its `root` is the subtree of height `8(L + 1)` they make, which is entry `t mod 256` of tile
//! `(L + 1, t / 256)`. Only full tiles are stored; the right edge of the tree is hashed from the
//! rows (at most 255 of them) and from the roots of full tiles (at most 255 per level).
//!
//! The tiles are a cache and are trusted by nobody: the leaf of a proof is always recomputed
//! from its row, and a verifier recomputes roots from the rows. A forged tile yields a root that
//! the rows do not give, so proofs made from it fail against the true root; it can never make
//! a row that is not in the chain look included.

use std::collections::{HashMap, HashSet};

use gov_core::AuditRecord;
use gov_store::{Store, StoreError, TreeTile};

use crate::tree::{self, ConsistencyProof, Hash, InclusionProof, Subtree};
use crate::{AuditError, Finding, Reason};

/// Hashes per tile.
pub const TILE_WIDTH: u64 = 256;
/// Levels of the tree per tile level.
pub const TILE_HEIGHT: u32 = 8;
/// Tiles written per transaction while the tree is brought up to date.
const BATCH: usize = 64;

fn missing(seq: u64, detail: &str) -> AuditError {
    AuditError::ChainBroken(Finding {
        seq: i64::try_from(seq).unwrap_or(i64::MAX),
        reason: Reason::MissingRow,
        detail: detail.to_owned(),
    })
}

fn corrupt(what: String) -> AuditError {
    AuditError::from(StoreError::Corrupt(what))
}

/// The leaf hashes of rows `first..=last`, which must all be there.
async fn leaf_hashes(
    store: &Store,
    chain: &str,
    first: u64,
    last: u64,
) -> Result<Vec<Hash>, AuditError> {
    let a = i64::try_from(first - 1).map_err(|_| corrupt("seq out of range".into()))?;
    let b = i64::try_from(last).map_err(|_| corrupt("seq out of range".into()))?;
    let rows = store.read_chain_window(chain, a, b).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (expected, r) in (first..=last).zip(rows.iter()) {
        if r.seq.unsigned_abs() != expected {
            return Err(missing(
                expected,
                "the row is missing, so the chain's tree cannot be built; run governance verify",
            ));
        }
        out.push(tree::leaf_hash(&tree::leaf_data(r)));
    }
    if out.len() as u64 != last - first + 1 {
        return Err(missing(
            first + out.len() as u64,
            "the row is missing, so the chain's tree cannot be built; run governance verify",
        ));
    }
    Ok(out)
}

fn make_tile(level: u8, idx: u64, entries: &[Hash]) -> TreeTile {
    TreeTile {
        level,
        idx,
        hashes: entries.iter().flatten().copied().collect(),
        root: tree::root_of(entries).to_vec(),
    }
}

fn hash_at(bytes: &[u8], i: usize) -> Option<Hash> {
    bytes.get(i * 32..i * 32 + 32)?.try_into().ok()
}

/// A chain's tree, brought up to its head: the number of leaves, and the tiles that could not
/// be stored (the connected role may not write them), kept here for this use.
pub struct ChainTree<'a> {
    store: &'a Store,
    chain: String,
    size: u64,
    unsaved: HashMap<(u8, u64), TreeTile>,
    loaded: HashMap<(u8, u64), TreeTile>,
}

impl<'a> ChainTree<'a> {
    /// Brings the chain's stored tiles up to its head (writing the full tiles that are missing)
    /// and returns the tree. A role that may not write tiles still gets its proofs: the tiles
    /// are then computed for this use only.
    pub async fn open(store: &'a Store, chain: &str) -> Result<ChainTree<'a>, AuditError> {
        let head = store
            .chain_head(chain)
            .await?
            .ok_or_else(|| AuditError::NoSuchChain(chain.to_owned()))?;
        let mut t = ChainTree {
            store,
            chain: chain.to_owned(),
            size: head.seq.max(0).unsigned_abs(),
            unsaved: HashMap::new(),
            loaded: HashMap::new(),
        };
        t.extend().await?;
        Ok(t)
    }

    /// The number of leaves (the head's seq).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Full tiles at `level` in the tree of the head.
    fn full_tiles(&self, level: u8) -> u64 {
        let shift = TILE_HEIGHT * (u32::from(level) + 1);
        if shift >= 64 { 0 } else { self.size >> shift }
    }

    async fn extend(&mut self) -> Result<(), AuditError> {
        let mut can_write = true;
        for level in 0u8..8 {
            let need = self.full_tiles(level);
            if need == 0 {
                break;
            }
            let stored: HashSet<u64> = self
                .store
                .tree_tile_indices(&self.chain, level)
                .await?
                .into_iter()
                .collect();
            let mut batch = Vec::new();
            for idx in (0..need).filter(|i| !stored.contains(i)) {
                let first = idx * TILE_WIDTH;
                let entries = if level == 0 {
                    leaf_hashes(self.store, &self.chain, first + 1, first + TILE_WIDTH).await?
                } else {
                    self.lower_roots(level - 1, first, first + TILE_WIDTH - 1)
                        .await?
                };
                batch.push(make_tile(level, idx, &entries));
                if batch.len() >= BATCH {
                    can_write = self.flush(&mut batch, can_write).await?;
                }
            }
            can_write = self.flush(&mut batch, can_write).await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        batch: &mut Vec<TreeTile>,
        can_write: bool,
    ) -> Result<bool, AuditError> {
        if batch.is_empty() {
            return Ok(can_write);
        }
        let mut can_write = can_write;
        if can_write {
            match self.store.put_tree_tiles(&self.chain, batch).await {
                Ok(()) => {
                    batch.clear();
                    return Ok(true);
                }
                Err(StoreError::PermissionDenied(_)) => can_write = false,
                Err(e) => return Err(e.into()),
            }
        }
        for t in batch.drain(..) {
            self.unsaved.insert((t.level, t.idx), t);
        }
        Ok(can_write)
    }

    /// The roots of the full tiles `from..=to` of `level`.
    async fn lower_roots(&self, level: u8, from: u64, to: u64) -> Result<Vec<Hash>, AuditError> {
        let stored = self
            .store
            .tree_tiles(&self.chain, level, from, to, false)
            .await?;
        let mut by_idx: HashMap<u64, Vec<u8>> =
            stored.into_iter().map(|t| (t.idx, t.root)).collect();
        for i in from..=to {
            if let Some(t) = self.unsaved.get(&(level, i)) {
                by_idx.insert(i, t.root.clone());
            }
        }
        (from..=to)
            .map(|i| {
                by_idx.get(&i).and_then(|r| hash_at(r, 0)).ok_or_else(|| {
                    corrupt(format!(
                        "tree tile {level}/{i} of chain {} is missing",
                        self.chain
                    ))
                })
            })
            .collect()
    }

    /// A full tile with its hashes (cached for this tree).
    async fn tile(&mut self, level: u8, idx: u64) -> Result<&TreeTile, AuditError> {
        if !self.loaded.contains_key(&(level, idx)) {
            let t = match self.unsaved.get(&(level, idx)) {
                Some(t) => t.clone(),
                None => self
                    .store
                    .tree_tiles(&self.chain, level, idx, idx, true)
                    .await?
                    .into_iter()
                    .next()
                    .filter(|t| t.hashes.len() == 32 * TILE_WIDTH as usize)
                    .ok_or_else(|| {
                        corrupt(format!(
                            "tree tile {level}/{idx} of chain {} is missing",
                            self.chain
                        ))
                    })?,
            };
            self.loaded.insert((level, idx), t);
        }
        self.loaded
            .get(&(level, idx))
            .ok_or(AuditError::Internal("tile cache"))
    }

    /// The hash of a perfect subtree of the tree of the head.
    async fn subtree(&mut self, s: Subtree) -> Result<Hash, AuditError> {
        let level =
            u8::try_from(s.height / TILE_HEIGHT).map_err(|_| corrupt("subtree too high".into()))?;
        let r = s.height % TILE_HEIGHT;
        let first = s.index << r;
        let count = 1u64 << r;
        let t = first / TILE_WIDTH;
        let entries: Vec<Hash> = if t < self.full_tiles(level) {
            let tile = self.tile(level, t).await?;
            let off = (first % TILE_WIDTH) as usize;
            (off..off + count as usize)
                .map(|i| hash_at(&tile.hashes, i))
                .collect::<Option<_>>()
                .ok_or_else(|| corrupt("a tree tile is short".into()))?
        } else if level == 0 {
            leaf_hashes(self.store, &self.chain, first + 1, first + count).await?
        } else {
            self.lower_roots(level - 1, first, first + count - 1)
                .await?
        };
        Ok(tree::root_of(&entries))
    }

    /// The hashes of the perfect subtrees a computation needs.
    async fn fetch(&mut self, needed: Vec<Subtree>) -> Result<HashMap<Subtree, Hash>, AuditError> {
        let mut out = HashMap::with_capacity(needed.len());
        for s in needed {
            let h = self.subtree(s).await?;
            out.insert(s, h);
        }
        Ok(out)
    }

    fn check_size(&self, size: u64, what: &str) -> Result<(), AuditError> {
        if size > self.size {
            return Err(AuditError::InvalidOptions(format!(
                "{what} {size} is beyond the head of chain {} (seq {})",
                self.chain, self.size
            )));
        }
        Ok(())
    }

    /// The root of the tree of `size` leaves (`size <= self.size()`).
    pub async fn root(&mut self, size: u64) -> Result<Hash, AuditError> {
        self.check_size(size, "tree size")?;
        let needed = tree::subtrees_needed(|f| tree::root(size, f));
        let got = self.fetch(needed).await?;
        Ok(tree::root(size, &mut |s| {
            got.get(&s).copied().unwrap_or_default()
        }))
    }

    /// The inclusion proof of row `seq` in the tree of `size` leaves (default: the head).
    pub async fn inclusion(
        &mut self,
        seq: i64,
        size: Option<u64>,
    ) -> Result<InclusionProof, AuditError> {
        let size = size.unwrap_or(self.size);
        if seq < 1 {
            return Err(AuditError::InvalidOptions(format!(
                "seq {seq} is not a row: seqs start at 1"
            )));
        }
        let index = seq.unsigned_abs() - 1;
        if index >= self.size {
            return Err(AuditError::InvalidOptions(format!(
                "row {seq} is beyond the head of chain {} (seq {})",
                self.chain, self.size
            )));
        }
        self.check_size(size, "tree size")?;
        if index >= size {
            return Err(AuditError::InvalidOptions(format!(
                "row {seq} is not in the tree of size {size}: the size must be at least the seq"
            )));
        }
        let row: AuditRecord = self
            .store
            .read_chain_window(&self.chain, seq - 1, seq)
            .await?
            .into_iter()
            .next()
            .filter(|r| r.seq == seq)
            .ok_or_else(|| missing(index + 1, "the row is missing; run governance verify"))?;
        let leaf_data = tree::leaf_data(&row);
        let needed = tree::subtrees_needed(|f| {
            tree::inclusion_path(index, size, &mut *f);
            tree::root(size, f)
        });
        let got = self.fetch(needed).await?;
        let mut src = |s: Subtree| got.get(&s).copied().unwrap_or_default();
        let proof = tree::inclusion_path(index, size, &mut src);
        let root = tree::root(size, &mut src);
        Ok(InclusionProof {
            chain_id: self.chain.clone(),
            seq,
            leaf_index: index,
            tree_size: size,
            leaf_hash: tree::leaf_hash(&leaf_data),
            leaf_data,
            root,
            proof,
        })
    }

    /// The consistency proof from the tree of `from` leaves to the tree of `to` leaves.
    pub async fn consistency(
        &mut self,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, AuditError> {
        if from == 0 || from > to {
            return Err(AuditError::InvalidOptions(format!(
                "no consistency proof goes from size {from} to size {to}: it needs 1 <= from <= to"
            )));
        }
        self.check_size(to, "tree size")?;
        let needed = tree::subtrees_needed(|f| {
            tree::consistency_path(from, to, &mut *f);
            tree::root(from, &mut *f);
            tree::root(to, f)
        });
        let got = self.fetch(needed).await?;
        let mut src = |s: Subtree| got.get(&s).copied().unwrap_or_default();
        Ok(ConsistencyProof {
            chain_id: self.chain.clone(),
            from_size: from,
            to_size: to,
            proof: tree::consistency_path(from, to, &mut src),
            from_root: tree::root(from, &mut src),
            to_root: tree::root(to, &mut src),
        })
    }
}

/// The number of leaves archived and removed by a chain's last retention cut (0 without one):
/// roots of smaller trees are checked against the archive, not the database.
pub async fn archived_leaves(store: &Store, chain: &str) -> Result<u64, AuditError> {
    Ok(store
        .retention_cuts(chain)
        .await?
        .pop()
        .map_or(0, |c| c.through_seq.unsigned_abs()))
}

/// The compact range of the tree of `cut.through_seq` leaves, from the frontier it recorded.
pub fn frontier_range(cut: &gov_store::RetentionCut) -> Result<tree::CompactRange, AuditError> {
    let size = cut.through_seq.unsigned_abs();
    let bad = || {
        corrupt(format!(
            "the retention cut of chain {} at seq {} has a malformed tree frontier",
            cut.chain_id, cut.through_seq
        ))
    };
    if cut.tree_frontier.len() != 32 * size.count_ones() as usize {
        return Err(bad());
    }
    let mut range = tree::CompactRange::default();
    let mut hashes = cut.tree_frontier.chunks_exact(32);
    for height in (0..64u32).rev().filter(|h| size & (1u64 << h) != 0) {
        let hash: Hash = hashes
            .next()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(bad)?;
        if !range.push_subtree(height, hash) {
            return Err(bad());
        }
    }
    Ok(range)
}

/// Rows read per page while roots are recomputed from the rows.
const ROOT_PAGE: u32 = 2_000;

/// The roots of the trees of each of `sizes` leaves, recomputed from the stored rows alone (one
/// pass in seq order, never a tile): what a signer signs and what a cosigned root is checked
/// against. A row missing below the largest size is `missing_row`. After a retention cut the
/// pass starts from the tree frontier the cut recorded, and sizes below the cut are left out
/// (their rows are in the archive). Memory: one hash per level.
pub async fn roots_from_rows(
    store: &Store,
    chain: &str,
    sizes: &[u64],
) -> Result<HashMap<u64, Hash>, AuditError> {
    let mut out = HashMap::new();
    let mut wanted: Vec<u64> = sizes.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut wanted = wanted.into_iter().peekable();
    while wanted.peek() == Some(&0) {
        out.insert(0, tree::empty_root());
        wanted.next();
    }
    let Some(&last) = wanted.clone().last().as_ref() else {
        return Ok(out);
    };
    walk_rows(store, chain, last, |range| {
        while wanted.peek().is_some_and(|&s| s < range.size()) {
            wanted.next();
        }
        while wanted.peek() == Some(&range.size()) {
            out.insert(range.size(), range.root());
            wanted.next();
        }
    })
    .await?;
    Ok(out)
}

/// The compact range of the tree of `size` leaves (its frontier: one hash per set bit of the
/// size, largest subtree first, concatenated), from the stored rows as [`roots_from_rows`]
/// reads them: what a retention cut records.
pub async fn frontier_from_rows(
    store: &Store,
    chain: &str,
    size: u64,
) -> Result<Vec<u8>, AuditError> {
    let range = walk_rows(store, chain, size, |_| {}).await?;
    if range.size() != size {
        return Err(missing(
            size,
            "the chain's tree cannot be built to this size; run governance verify",
        ));
    }
    Ok(range.hashes().concat())
}

/// Builds the chain's tree from its rows (or from its last retention cut's frontier, when that
/// is not beyond `last`) up to `last` leaves, calling `at` with the range after the start and
/// after each leaf.
async fn walk_rows(
    store: &Store,
    chain: &str,
    last: u64,
    mut at: impl FnMut(&tree::CompactRange),
) -> Result<tree::CompactRange, AuditError> {
    let mut range = tree::CompactRange::default();
    let mut after = 0i64;
    if let Some(cut) = store.retention_cuts(chain).await?.pop()
        && cut.through_seq.unsigned_abs() <= last
    {
        range = frontier_range(&cut)?;
        after = cut.through_seq;
        at(&range);
    }
    while range.size() < last {
        let rows = store.read_chain_page(chain, after, ROOT_PAGE).await?;
        if rows.is_empty() {
            return Err(missing(
                range.size() + 1,
                "the row is missing, so the chain's tree cannot be built; run governance verify",
            ));
        }
        for r in rows {
            if r.seq.unsigned_abs() != range.size() + 1 || r.seq < 1 {
                return Err(missing(
                    range.size() + 1,
                    "the row is missing, so the chain's tree cannot be built; run governance verify",
                ));
            }
            after = r.seq;
            range.push(tree::leaf_hash(&tree::leaf_data(&r)));
            at(&range);
            if range.size() >= last {
                break;
            }
        }
    }
    Ok(range)
}

/// Rows kept past the last matching row before they are dropped (and read again if a later row
/// matches).
const PENDING_ROWS: usize = 10_000;

/// The rows of a range and what proves them, from one pass over the stored rows.
#[derive(Debug, Clone, Default)]
pub struct RangeRows {
    /// The rows from the first matching row to the last, in seq order.
    pub rows: Vec<AuditRecord>,
    /// The perfect subtrees left of the first row (largest first).
    pub left: Vec<Hash>,
    /// The roots of the trees of the sizes asked for.
    pub roots: HashMap<u64, Hash>,
    /// Leaf hashes after the last row, up to the largest size asked for.
    tail: Vec<Hash>,
}

impl RangeRows {
    /// The perfect subtrees right of the rows up to `size` leaves (`size` at most the largest
    /// size asked for, at least the last row's seq), left to right.
    pub fn right(&self, size: u64) -> Vec<Hash> {
        let end = self.rows.last().map_or(0, |r| r.seq.unsigned_abs());
        tree::covering_subtrees(end, size)
            .into_iter()
            .filter_map(|(start, h)| {
                let a = usize::try_from(start - end).ok()?;
                Some(tree::root_of(self.tail.get(a..a + (1usize << h))?))
            })
            .collect()
    }
}

/// One pass over rows 1 to the largest of `sizes` of `chain`, in seq order: the rows from the
/// first that `matches` to the last that does (with every row between them), the hashes that
/// prove them (left of them here, right of them with [`RangeRows::right`]) and the roots of the
/// trees of `sizes`, recomputed from the rows, never from a tile. A row missing is
/// `missing_row`. Memory: the range's rows, 32 bytes per row after it, and at most
/// 10,000 rows past the last matching row (read again if a later row matches).
pub async fn range_from_rows(
    store: &Store,
    chain: &str,
    matches: impl Fn(&AuditRecord) -> bool,
    sizes: &[u64],
) -> Result<RangeRows, AuditError> {
    let mut wanted: Vec<u64> = sizes.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let last = wanted.last().copied().unwrap_or(0);
    let mut out = RangeRows::default();
    let mut range = tree::CompactRange::default();
    let mut wanted = wanted.into_iter().peekable();
    while wanted.peek() == Some(&0) {
        out.roots.insert(0, tree::empty_root());
        wanted.next();
    }
    let mut started = false;
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut dropped = false;
    let mut after = 0i64;
    let gone = |seq: u64| {
        missing(
            seq,
            "the row is missing, so the chain's tree cannot be built; run governance verify",
        )
    };
    while range.size() < last {
        let rows = store.read_chain_page(chain, after, ROOT_PAGE).await?;
        if rows.is_empty() {
            return Err(gone(range.size() + 1));
        }
        for r in rows {
            if r.seq < 1 || r.seq.unsigned_abs() != range.size() + 1 {
                return Err(gone(range.size() + 1));
            }
            after = r.seq;
            let h = tree::leaf_hash(&tree::leaf_data(&r));
            if matches(&r) {
                if !started {
                    started = true;
                    out.left = range.hashes();
                } else if dropped {
                    let from = out.rows.last().map_or(0, |l| l.seq);
                    let again = store.read_chain_window(chain, from, r.seq - 1).await?;
                    let same = again.len() == out.tail.len()
                        && again
                            .iter()
                            .zip(&out.tail)
                            .all(|(a, t)| tree::leaf_hash(&tree::leaf_data(a)) == *t);
                    if !same {
                        return Err(corrupt(format!(
                            "rows {}..{} of chain {chain} changed while they were read",
                            from + 1,
                            r.seq - 1
                        )));
                    }
                    out.rows.extend(again);
                } else {
                    out.rows.append(&mut pending);
                }
                pending.clear();
                dropped = false;
                out.tail.clear();
                out.rows.push(r);
            } else if started {
                out.tail.push(h);
                if !dropped && pending.len() < PENDING_ROWS {
                    pending.push(r);
                } else {
                    dropped = true;
                    pending.clear();
                }
            }
            range.push(h);
            while wanted.peek() == Some(&range.size()) {
                out.roots.insert(range.size(), range.root());
                wanted.next();
            }
            if range.size() >= last {
                break;
            }
        }
    }
    Ok(out)
}
