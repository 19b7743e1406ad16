//! The Merkle tree of a chain (RFC 9162 §2.1 hashing), its proofs and their verification (pure).
//!
//! Each chain is the list of its rows in seq order; row `seq` is leaf `seq - 1`, and the tree of
//! size `S` holds rows 1..=S. Byte for byte (docs/audit-chain.md, "The Merkle tree"):
//!
//! ```text
//! leaf data  = "GOVTLEAF" 0x01 field(canonical encoding of the row) field(row_hmac)
//! leaf hash  = SHA-256(0x00 || leaf data)
//! node hash  = SHA-256(0x01 || left || right)
//! MTH({})    = SHA-256("")
//! MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two smaller than n
//! ```
//!
//! Proofs are generated here from a source of *perfect* subtree hashes (the stored tiles, or
//! the leaves themselves), with the recursive definitions of RFC 9162 §2.1.3 and §2.1.4; they
//! are verified by an independent implementation, the `ct-merkle` crate, from public data only:
//! the leaf data (or the roots), the proof and the sizes.

use gov_core::AuditRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::canonical;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The magic prefix of a leaf's data.
pub const LEAF_MAGIC: &[u8; 8] = b"GOVTLEAF";
/// The version of the leaf encoding.
pub const LEAF_VERSION: u8 = 1;
/// The `format` of a proof file.
pub const PROOF_FORMAT: &str = "governance.tlog-proof.v1";

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// The leaf data of a row as stored: its sealed bytes (the canonical encoding, version 1 or 2)
/// and its seal.
pub fn leaf_data(r: &AuditRecord) -> Vec<u8> {
    let enc = canonical::encode(r);
    let mut buf = Vec::with_capacity(enc.len() + 49);
    buf.extend_from_slice(LEAF_MAGIC);
    buf.push(LEAF_VERSION);
    field(&mut buf, &enc);
    field(&mut buf, &r.row_hmac);
    buf
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The root over `leaves` (leaf hashes) by the definition, with no cache: the independent
/// reference the stored tree is checked against.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The leaves seen so far as the roots of their perfect subtrees, largest first (one per set
/// bit of the size): the root of any prefix in one pass over the leaves, in memory of one hash
/// per level.
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl CompactRange {
    /// Appends the next leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.merge(0, leaf);
    }

    fn merge(&mut self, height: u32, hash: Hash) {
        let mut cur = (height, hash);
        while let Some(&(h, left)) = self.stack.last() {
            if h != cur.0 {
                break;
            }
            self.stack.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
        }
        self.stack.push(cur);
        self.size += 1u64 << height;
    }

    /// Appends the hash of a perfect subtree of `2^height` leaves. It must start where the
    /// range ends, at a multiple of its width; otherwise nothing changes and `false` is returned.
    pub fn push_subtree(&mut self, height: u32, hash: Hash) -> bool {
        if height >= 63 || !self.size.is_multiple_of(1u64 << height) {
            return false;
        }
        self.merge(height, hash);
        true
    }

    /// The hashes of the perfect subtrees the leaves so far make, largest first: one per set
    /// bit of the size (the left boundary of a range proof).
    pub fn hashes(&self) -> Vec<Hash> {
        self.stack.iter().map(|(_, h)| *h).collect()
    }

    /// The range of the first `size` leaves from [`CompactRange::hashes`] of it; `None` when
    /// the number of hashes is not the number of set bits of `size`.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Self> {
        if hashes.len() != size.count_ones() as usize {
            return None;
        }
        let heights = (0..64u32).rev().filter(|b| size & (1u64 << b) != 0);
        Some(Self {
            size,
            stack: heights.zip(hashes.iter().copied()).collect(),
        })
    }

    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// MTH of the leaves pushed (RFC 9162: the perfect subtrees folded from the right).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// The perfect subtrees that cover the leaves `start..size` from the left, as (first leaf,
/// height): each as large as its start's alignment and the size allow (the right boundary of a
/// range proof, pushed with [`CompactRange::push_subtree`] after the range's leaves).
pub fn covering_subtrees(start: u64, size: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut p = start;
    while p < size {
        let align = if p == 0 { 63 } else { p.trailing_zeros() };
        let fit = 63 - (size - p).leading_zeros();
        let h = align.min(fit);
        out.push((p, h));
        p += 1u64 << h;
    }
    out
}

/// A perfect subtree: the `2^height` leaves from `index << height`, whose hash never changes
/// once they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subtree {
    /// Its height (0: a leaf).
    pub height: u32,
    /// Its index among the subtrees of that height.
    pub index: u64,
}

/// Where proofs take the hashes of perfect subtrees from.
pub type Source<'a> = &'a mut dyn FnMut(Subtree) -> Hash;

/// MTH(D[start:end]), from perfect subtrees (`start < end`).
fn mth(start: u64, end: u64, f: Source<'_>) -> Hash {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let height = n.trailing_zeros();
        return f(Subtree {
            height,
            index: start >> height,
        });
    }
    let k = split(n);
    let left = mth(start, start + k, f);
    let right = mth(start + k, end, f);
    node_hash(&left, &right)
}

/// The root of the tree of `size` leaves.
pub fn root(size: u64, f: Source<'_>) -> Hash {
    if size == 0 {
        empty_root()
    } else {
        mth(0, size, f)
    }
}

/// PATH(m, D[start:end]) of RFC 9162 §2.1.3.1.
fn path(m: u64, start: u64, end: u64, f: Source<'_>, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, start + k, f, out);
        out.push(mth(start + k, end, f));
    } else {
        path(m - k, start + k, end, f, out);
        out.push(mth(start, start + k, f));
    }
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves (`index < size`).
pub fn inclusion_path(index: u64, size: u64, f: Source<'_>) -> Vec<Hash> {
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, f, &mut out);
    }
    out
}

/// SUBPROOF(m, D[start:end], b) of RFC 9162 §2.1.4.1.
fn subproof(m: u64, start: u64, end: u64, whole: bool, f: Source<'_>, out: &mut Vec<Hash>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(mth(start, end, f));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, f, out);
        out.push(mth(start + k, end, f));
    } else {
        subproof(m - k, start + k, end, false, f, out);
        out.push(mth(start, start + k, f));
    }
}

/// The consistency proof from the tree of `old` leaves to the tree of `new` leaves
/// (`0 < old <= new`; empty when they are equal).
pub fn consistency_path(old: u64, new: u64, f: Source<'_>) -> Vec<Hash> {
    let mut out = Vec::new();
    if 0 < old && old <= new {
        subproof(old, 0, new, true, f, &mut out);
    }
    out
}

/// The perfect subtrees a computation reads, in first-use order, without duplicates.
pub fn subtrees_needed<T>(run: impl FnOnce(Source<'_>) -> T) -> Vec<Subtree> {
    let mut seen = Vec::new();
    let mut record = |s: Subtree| {
        if !seen.contains(&s) {
            seen.push(s);
        }
        [0u8; 32]
    };
    run(&mut record);
    seen
}

/// Why a proof does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The proof file is not one (wrong format, a field missing, bad hex).
    #[error("not a governance proof file: {0}")]
    Malformed(String),
    /// The leaf hash given is not the hash of the leaf data given.
    #[error("the leaf hash is not SHA-256(0x00 || leaf data)")]
    LeafHash,
    /// The leaf data does not name the chain or the seq the proof claims.
    #[error("the leaf data is not row {seq} of chain {chain:?}")]
    LeafIdentity {
        /// The chain claimed.
        chain: String,
        /// The seq claimed.
        seq: i64,
    },
    /// The sizes or the seq are out of range.
    #[error("{0}")]
    Range(String),
    /// The hashes do not lead to the root(s).
    #[error("the proof does not lead to the root: {0}")]
    Mismatch(String),
}

/// Reads chain id and seq from leaf data (the start of the row's canonical encoding).
pub fn leaf_identity(data: &[u8]) -> Option<(String, i64)> {
    fn take<'a>(d: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if d.len() < n {
            return None;
        }
        let (a, b) = d.split_at(n);
        *d = b;
        Some(a)
    }
    fn len_field<'a>(d: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(take(d, 4)?.try_into().ok()?) as usize;
        take(d, len)
    }
    let mut d = data;
    if take(&mut d, 8)? != LEAF_MAGIC || take(&mut d, 1)? != [LEAF_VERSION] {
        return None;
    }
    let mut enc = len_field(&mut d)?;
    if take(&mut enc, 8)? != canonical::MAGIC {
        return None;
    }
    let v = take(&mut enc, 1)?[0];
    if v != canonical::VERSION && v != canonical::VERSION_SIGNED {
        return None;
    }
    let chain = String::from_utf8(len_field(&mut enc)?.to_vec()).ok()?;
    let seq = i64::from_be_bytes(len_field(&mut enc)?.try_into().ok()?);
    Some((chain, seq))
}

fn concat(path: &[Hash]) -> Vec<u8> {
    path.iter().flatten().copied().collect()
}

fn ct_root(root: &Hash, size: u64) -> ct_merkle::RootHash<Sha256> {
    ct_merkle::RootHash::new((*root).into(), size)
}

/// Verifies that `leaf_data` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf_data: &[u8],
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let proof = ct_merkle::InclusionProof::<Sha256>::from_bytes(concat(path));
    ct_root(root, size)
        .verify_inclusion(&leaf_data, index, &proof)
        .map_err(|e| ProofError::Mismatch(e.to_string()))
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root`.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Range(format!(
            "no consistency proof goes from size {old} to size {new}"
        )));
    }
    if old == new {
        // ct-merkle accepts any pair of roots with an empty proof here: check it ourselves.
        return if path.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch(
                "equal sizes need equal roots and an empty proof".into(),
            ))
        };
    }
    let proof = ct_merkle::ConsistencyProof::<Sha256>::try_from_bytes(concat(path))
        .map_err(|e| ProofError::Mismatch(e.to_string()))?;
    ct_root(new_root, new)
        .verify_consistency(&ct_root(old_root, old), &proof)
        .map_err(|e| ProofError::Mismatch(e.to_string()))
}

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(|_| D::Error::custom("not 32 bytes of hex"))?;
        Ok(out)
    }
}

pub(crate) mod hex32s {
    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq as _};

    pub(crate) fn serialize<S: Serializer>(v: &[super::Hash], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for h in v {
            seq.serialize_element(&hex::encode(h))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<super::Hash>, D::Error> {
        #[derive(Deserialize)]
        struct H(#[serde(with = "super::hex32")] super::Hash);
        Ok(Vec::<H>::deserialize(d)?.into_iter().map(|h| h.0).collect())
    }
}

pub(crate) mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(|_| D::Error::custom("not hex"))
    }
}

/// An inclusion proof: row `seq` of `chain_id` is leaf `seq - 1` of the tree of `tree_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The chain.
    pub chain_id: String,
    /// The row's seq.
    pub seq: i64,
    /// Its leaf index, `seq - 1`.
    pub leaf_index: u64,
    /// The size of the tree the proof is for.
    pub tree_size: u64,
    /// The leaf data (hex): the row as sealed.
    #[serde(with = "hexbytes")]
    pub leaf_data: Vec<u8>,
    /// `SHA-256(0x00 || leaf data)`.
    #[serde(with = "hex32")]
    pub leaf_hash: Hash,
    /// The root of the tree of `tree_size`.
    #[serde(with = "hex32")]
    pub root: Hash,
    /// The audit path, from the leaf's sibling up.
    #[serde(with = "hex32s")]
    pub proof: Vec<Hash>,
}

impl InclusionProof {
    /// Checks the proof with its own data only.
    pub fn verify(&self) -> Result<(), ProofError> {
        if leaf_hash(&self.leaf_data) != self.leaf_hash {
            return Err(ProofError::LeafHash);
        }
        if self.seq < 1 || self.leaf_index != self.seq.unsigned_abs() - 1 {
            return Err(ProofError::Range(format!(
                "leaf_index {} is not seq {} - 1",
                self.leaf_index, self.seq
            )));
        }
        if leaf_identity(&self.leaf_data) != Some((self.chain_id.clone(), self.seq)) {
            return Err(ProofError::LeafIdentity {
                chain: self.chain_id.clone(),
                seq: self.seq,
            });
        }
        verify_inclusion(
            &self.leaf_data,
            self.leaf_index,
            self.tree_size,
            &self.proof,
            &self.root,
        )
    }
}

/// A consistency proof: the tree of `from_size` is a prefix of the tree of `to_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The chain.
    pub chain_id: String,
    /// The older tree's size.
    pub from_size: u64,
    /// The newer tree's size.
    pub to_size: u64,
    /// The older tree's root.
    #[serde(with = "hex32")]
    pub from_root: Hash,
    /// The newer tree's root.
    #[serde(with = "hex32")]
    pub to_root: Hash,
    /// The proof's hashes, in RFC 9162 order.
    #[serde(with = "hex32s")]
    pub proof: Vec<Hash>,
}

impl ConsistencyProof {
    /// Checks the proof with its own data only.
    pub fn verify(&self) -> Result<(), ProofError> {
        verify_consistency(
            self.from_size,
            self.to_size,
            &self.from_root,
            &self.to_root,
            &self.proof,
        )
    }
}

/// A proof as written to a file (`governance prove --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Proof {
    /// An inclusion proof.
    Inclusion(InclusionProof),
    /// A consistency proof.
    Consistency(ConsistencyProof),
}

#[derive(Serialize, Deserialize)]
struct ProofFile {
    format: String,
    #[serde(flatten)]
    proof: Proof,
}

impl Proof {
    /// The file form: `{"format": "governance.tlog-proof.v1", "type": …, …}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(ProofFile {
            format: PROOF_FORMAT.to_owned(),
            proof: self.clone(),
        })
        .unwrap_or(serde_json::Value::Null)
    }

    /// Reads the file form.
    pub fn from_json(text: &str) -> Result<Self, ProofError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ProofError::Malformed(e.to_string()))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(PROOF_FORMAT) => {}
            Some(other) => {
                return Err(ProofError::Malformed(format!(
                    "format {other:?}, expected {PROOF_FORMAT:?}"
                )));
            }
            None => return Err(ProofError::Malformed("no \"format\"".into())),
        }
        let mut v = v;
        if let Some(o) = v.as_object_mut() {
            o.remove("format");
        }
        serde_json::from_value(v).map_err(|e| ProofError::Malformed(e.to_string()))
    }

    /// Checks the proof with its own data only.
    pub fn verify(&self) -> Result<(), ProofError> {
        match self {
            Self::Inclusion(p) => p.verify(),
            Self::Consistency(p) => p.verify(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_range_gives_every_prefix_root() {
        let leaves: Vec<Hash> = (0u32..300).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut r = CompactRange::default();
        assert_eq!(r.root(), empty_root());
        for (n, l) in leaves.iter().enumerate() {
            r.push(*l);
            assert_eq!(r.root(), root_of(&leaves[..=n]), "size {}", n + 1);
        }
    }

    // RFC 6962 / RFC 9162 known answers, as published by transparency-dev/merkle
    // (testonly/constants.go and testonly/reference_test.go at
    // e739733c8ca2b89cfc49f35b161e81e16b5957d7; also in certificate-transparency-go's
    // merkletree tests): the eight leaves, the root of every size 0..=8, and proofs.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// (leaf index, tree size, proof).
    const INCLUSION: &[(u64, u64, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    /// (old size, new size, proof).
    const CONSISTENCY: &[(u64, u64, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn unhex(s: &str) -> Hash {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).expect("hex");
        out
    }

    fn data() -> Vec<Vec<u8>> {
        LEAVES
            .iter()
            .map(|l| hex::decode(l).expect("hex"))
            .collect()
    }

    fn leaves() -> Vec<Hash> {
        data().iter().map(|d| leaf_hash(d)).collect()
    }

    /// A source reading perfect subtrees straight from the leaf hashes.
    fn from_leaves(leaves: &[Hash]) -> impl FnMut(Subtree) -> Hash + '_ {
        move |s: Subtree| {
            let a = (s.index << s.height) as usize;
            root_of(&leaves[a..a + (1usize << s.height)])
        }
    }

    #[test]
    fn roots_match_the_published_vectors() {
        let leaves = leaves();
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(root_of(&leaves[..n])), *want, "size {n}");
            let mut src = from_leaves(&leaves);
            assert_eq!(hex::encode(root(n as u64, &mut src)), *want, "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_published_vectors_and_verify() {
        let (data, leaves) = (data(), leaves());
        for (index, size, want) in INCLUSION {
            let mut src = from_leaves(&leaves);
            let got = inclusion_path(*index, *size, &mut src);
            let want: Vec<Hash> = want.iter().map(|h| unhex(h)).collect();
            assert_eq!(got, want, "leaf {index} of {size}");
            let r = unhex(ROOTS[*size as usize]);
            verify_inclusion(&data[*index as usize], *index, *size, &got, &r).expect("verifies");
        }
    }

    #[test]
    fn consistency_proofs_match_the_published_vectors_and_verify() {
        let leaves = leaves();
        for (old, new, want) in CONSISTENCY {
            let mut src = from_leaves(&leaves);
            let got = consistency_path(*old, *new, &mut src);
            let want: Vec<Hash> = want.iter().map(|h| unhex(h)).collect();
            assert_eq!(got, want, "{old} to {new}");
            let (a, b) = (unhex(ROOTS[*old as usize]), unhex(ROOTS[*new as usize]));
            verify_consistency(*old, *new, &a, &b, &got).expect("verifies");
        }
    }

    /// Every proof of every size up to 70 verifies against the naive root of all leaves, and
    /// fails with any hash flipped, another index, or another root.
    #[test]
    fn every_proof_verifies_against_the_naive_root_and_nothing_else_does() {
        let data: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let leaves: Vec<Hash> = data.iter().map(|d| leaf_hash(d)).collect();
        for size in 1..=leaves.len() as u64 {
            let naive = root_of(&leaves[..size as usize]);
            for i in 0..size {
                let mut src = from_leaves(&leaves);
                let p = inclusion_path(i, size, &mut src);
                verify_inclusion(&data[i as usize], i, size, &p, &naive).expect("verifies");
                if size > 1 {
                    let other = (i + 1) % size;
                    assert!(verify_inclusion(&data[i as usize], other, size, &p, &naive).is_err());
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(verify_inclusion(&data[i as usize], i, size, &bad, &naive).is_err());
                }
                let mut wrong = naive;
                wrong[31] ^= 1;
                assert!(verify_inclusion(&data[i as usize], i, size, &p, &wrong).is_err());
            }
            for old in 1..=size {
                let mut src = from_leaves(&leaves);
                let p = consistency_path(old, size, &mut src);
                let old_root = root_of(&leaves[..old as usize]);
                verify_consistency(old, size, &old_root, &naive, &p).expect("consistent");
                let mut wrong = old_root;
                wrong[0] ^= 1;
                assert!(verify_consistency(old, size, &wrong, &naive, &p).is_err());
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(verify_consistency(old, size, &old_root, &naive, &bad).is_err());
                }
            }
        }
    }

    /// Any range of leaves, with the hashes left of it and the subtrees right of it, gives the
    /// root of the whole tree.
    #[test]
    fn a_range_between_its_boundaries_gives_the_root() {
        let leaves: Vec<Hash> = (0u32..40).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut prefixes = vec![CompactRange::default()];
        for l in &leaves {
            let mut next = prefixes[prefixes.len() - 1].clone();
            next.push(*l);
            prefixes.push(next);
        }
        for size in 1..=leaves.len() as u64 {
            let want = root_of(&leaves[..size as usize]);
            for a in 0..size {
                for b in a + 1..=size {
                    let prefix = &prefixes[a as usize];
                    let mut r = CompactRange::from_hashes(a, &prefix.hashes()).expect("left");
                    for l in &leaves[a as usize..b as usize] {
                        r.push(*l);
                    }
                    for (start, h) in covering_subtrees(b, size) {
                        let s = start as usize;
                        let sub = root_of(&leaves[s..s + (1usize << h)]);
                        assert!(r.push_subtree(h, sub), "aligned");
                    }
                    assert_eq!(r.size(), size);
                    assert_eq!(r.root(), want, "{a}..{b} of {size}");
                }
            }
        }
        assert!(CompactRange::from_hashes(3, &[[0; 32]]).is_none());
        let mut r = CompactRange::default();
        r.push([0; 32]);
        assert!(!r.push_subtree(1, [0; 32]), "not aligned");
    }

    #[test]
    fn the_split_is_the_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(257), 256);
        assert_eq!(split(1 << 40), 1 << 39);
    }

    #[test]
    fn a_proof_file_round_trips_and_any_change_fails() {
        let (data, leaves) = (data(), leaves());
        let mut src = from_leaves(&leaves);
        let path = inclusion_path(2, 5, &mut src);
        // Leaf data that is not a row's fails on its identity.
        let p = InclusionProof {
            chain_id: "default".into(),
            seq: 3,
            leaf_index: 2,
            tree_size: 5,
            leaf_data: data[2].clone(),
            leaf_hash: leaves[2],
            root: unhex(ROOTS[5]),
            proof: path,
        };
        assert!(matches!(p.verify(), Err(ProofError::LeafIdentity { .. })));
        let proof = Proof::Inclusion(p);
        let text = proof.to_json().to_string();
        assert_eq!(Proof::from_json(&text).expect("parses"), proof);
        assert!(matches!(
            Proof::from_json("{}"),
            Err(ProofError::Malformed(_))
        ));
    }
}
