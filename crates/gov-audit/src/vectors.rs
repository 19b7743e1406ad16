//! The published test vectors (`docs/audit-chain-vectors.json`): rows with their canonical bytes
//! and seals, and a rotation marker with its message and proof, checked against this code.
//! `UPDATE_VECTORS=1 cargo test -p gov-audit vectors` rewrites the file after a deliberate
//! change of format (which also needs a new encoding version).

use gov_core::{AuditRecord, EventId, ZERO_HMAC};
use serde_json::{Value, json};
use time::macros::datetime;

use crate::canonical;
use crate::keys::AuditSecret;
use crate::rotation::rotation_message;

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const NEW_SECRET: &str = "3b8f1d2c9a4e7f60b5c1d8e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2";
/// The Ed25519 seed of the vectors' signer (signatures are deterministic).
const SIGNER_SEED: &str = "4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4fa1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";

fn signer() -> crate::signing::Signer {
    let seed: [u8; 32] = hex::decode(SIGNER_SEED)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    crate::signing::Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&seed), "vectors")
}

fn uuid(s: &str) -> EventId {
    EventId::from_uuid(s.parse().expect("uuid literal"))
}

/// The chain of the vectors: three ordinary rows, a rotation marker, then a row sealed with the
/// new key and signed (canonical version 2).
fn rows() -> Vec<AuditRecord> {
    let key = AuditSecret::parse(SECRET).expect("secret").chain_key();
    let new = AuditSecret::parse(NEW_SECRET).expect("secret").chain_key();
    let base = |seq: i64, id: &str, kind: &str, payload: &str| AuditRecord {
        chain_id: "default".into(),
        seq,
        event_id: uuid(id),
        occurred_at: datetime!(2026-11-25 09:00:00.123456 UTC) + time::Duration::seconds(seq),
        agent_id: "billing-agent".into(),
        session_id: None,
        kind: kind.into(),
        actor: None,
        parent_event_id: None,
        payload: payload.into(),
        prev_hmac: ZERO_HMAC.to_vec(),
        key_id: key.key_id().into(),
        row_hmac: Vec::new(),
        signature: None,
        signer_key_id: None,
        signature_status: "unsigned".into(),
    };
    let mut rows = vec![
        base(
            1,
            "019abf00-0000-7000-8000-000000000001",
            "tool.call",
            r#"{"tool":"search"}"#,
        ),
        AuditRecord {
            session_id: Some("s-42".into()),
            actor: Some("alice".into()),
            parent_event_id: Some(uuid("019abf00-0000-7000-8000-000000000001")),
            ..base(
                2,
                "019abf00-0000-7000-8000-000000000002",
                "gate.approved",
                r#"{"reason":"ok","request_id":"r-1","tool":"refund"}"#,
            )
        },
        base(
            3,
            "019abf00-0000-7000-8000-000000000003",
            "llm.call",
            r#"{"model":"gpt-4o","note":"café ✓","tokens":1200}"#,
        ),
    ];
    let marker_id = "019abf00-0000-7000-8000-000000000004";
    let msg = rotation_message(
        "default",
        uuid(marker_id).as_uuid().as_bytes(),
        key.key_id(),
        new.key_id(),
    );
    let payload = json!({
        "from_key_id": key.key_id(),
        "proof": hex::encode(new.tag(&msg)),
        "reason": "yearly",
        "to_key_id": new.key_id(),
        "version": 1,
    });
    rows.push(AuditRecord {
        agent_id: "governance".into(),
        actor: Some("alice".into()),
        ..base(4, marker_id, "chain.key_rotated", &payload.to_string())
    });
    rows.push(AuditRecord {
        key_id: new.key_id().into(),
        ..base(
            5,
            "019abf00-0000-7000-8000-000000000005",
            "tool.call",
            r#"{"tool":"refund"}"#,
        )
    });
    let mut prev = ZERO_HMAC.to_vec();
    let sealer = crate::signing::RowSealer::new(
        new.clone(),
        crate::signing::SigningState::On(std::sync::Arc::new(signer())),
    );
    for r in &mut rows {
        r.prev_hmac = prev;
        if r.seq == 5 {
            sealer.seal(r);
        } else {
            r.row_hmac = key.seal(r).to_vec();
        }
        prev = r.row_hmac.clone();
    }
    rows
}

fn render() -> Value {
    let key = AuditSecret::parse(SECRET).expect("secret").chain_key();
    let new = AuditSecret::parse(NEW_SECRET).expect("secret").chain_key();
    let rows = rows();
    let marker = &rows[3];
    let signer = signer();
    let last = &rows[4];
    let cp = crate::checkpoint::Checkpoint::sign(
        &signer,
        "default",
        last.seq,
        &last.row_hmac,
        datetime!(2026-11-25 10:00:00 UTC),
    );
    let msg = rotation_message(
        &marker.chain_id,
        marker.event_id.as_uuid().as_bytes(),
        key.key_id(),
        new.key_id(),
    );
    json!({
        "about": "Test vectors for docs/audit-chain.md, encoding version 1. Derive the chain key and key_id from secret_hex (HKDF-SHA256, section Keys), encode each row (section Canonical encoding), and check canonical_hex, row_hmac and the links; then check the rotation marker's proof under the new secret's chain key.",
        "secret_hex": SECRET,
        "key_id": key.key_id(),
        "rows": rows.iter().map(|r| json!({
            "row": r,
            "occurred_at_micros": (r.occurred_at.unix_timestamp_nanos() / 1_000).to_string(),
            "canonical_hex": hex::encode(canonical::encode(r)),
            "row_hmac": hex::encode(&r.row_hmac),
        })).collect::<Vec<_>>(),
        "signer": {
            "seed_hex": SIGNER_SEED,
            "public_key": hex::encode(signer.public_key()),
            "signer_key_id": signer.key_id(),
        },
        "checkpoint": {
            "message_hex": hex::encode(crate::checkpoint::checkpoint_message(
                &cp.chain_id, cp.seq, &last.row_hmac, cp.signed_at, &cp.signer_key_id,
            )),
            "checkpoint": cp,
        },
        "tree": tree_vectors(&rows),
        "rotation": {
            "marker_seq": marker.seq,
            "new_secret_hex": NEW_SECRET,
            "new_key_id": new.key_id(),
            "message_hex": hex::encode(&msg),
            "proof": hex::encode(new.tag(&msg)),
        },
    })
}

/// The Merkle tree over the rows (docs/audit-chain.md, "The Merkle tree").
fn tree_vectors(rows: &[AuditRecord]) -> Value {
    use crate::tree;
    let leaves: Vec<tree::Hash> = rows
        .iter()
        .map(|r| tree::leaf_hash(&tree::leaf_data(r)))
        .collect();
    let mut src = |s: tree::Subtree| {
        let a = (s.index << s.height) as usize;
        tree::root_of(&leaves[a..a + (1usize << s.height)])
    };
    let size = rows.len() as u64;
    json!({
        "leaves": rows.iter().zip(&leaves).map(|(r, h)| json!({
            "seq": r.seq,
            "leaf_data_hex": hex::encode(tree::leaf_data(r)),
            "leaf_hash": hex::encode(h),
        })).collect::<Vec<_>>(),
        "roots": (1..=leaves.len()).map(|n| json!({
            "tree_size": n,
            "root": hex::encode(tree::root_of(&leaves[..n])),
        })).collect::<Vec<_>>(),
        "inclusion": {
            "seq": 3,
            "tree_size": size,
            "proof": tree::inclusion_path(2, size, &mut src).iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "consistency": {
            "from_size": 2,
            "to_size": size,
            "proof": tree::consistency_path(2, size, &mut src).iter().map(hex::encode).collect::<Vec<_>>(),
        },
    })
}

/// The published tree vectors, checked on their own terms: leaf data from the published rows,
/// roots by the definition, proofs by the verifier.
fn check_tree(published: &Value) {
    use crate::tree;
    let t = &published["tree"];
    let unhex = |v: &Value| -> tree::Hash {
        hex::decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    let mut leaves = Vec::new();
    let mut data = Vec::new();
    for (v, l) in published["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(t["leaves"].as_array().unwrap())
    {
        let row: AuditRecord = serde_json::from_value(v["row"].clone()).unwrap();
        let d = tree::leaf_data(&row);
        assert_eq!(hex::encode(&d), l["leaf_data_hex"], "seq {}", row.seq);
        // The leaf data is the magic, the version, the canonical bytes and the seal.
        let expected = format!(
            "474f56544c45414601{:08x}{}{:08x}{}",
            v["canonical_hex"].as_str().unwrap().len() / 2,
            v["canonical_hex"].as_str().unwrap(),
            32,
            v["row_hmac"].as_str().unwrap()
        );
        assert_eq!(l["leaf_data_hex"], expected.as_str());
        assert_eq!(hex::encode(tree::leaf_hash(&d)), l["leaf_hash"]);
        leaves.push(tree::leaf_hash(&d));
        data.push(d);
    }
    for r in t["roots"].as_array().unwrap() {
        let n = r["tree_size"].as_u64().unwrap() as usize;
        assert_eq!(hex::encode(tree::root_of(&leaves[..n])), r["root"]);
    }
    let root = tree::root_of(&leaves);
    let size = leaves.len() as u64;
    let inc = &t["inclusion"];
    let path: Vec<tree::Hash> = inc["proof"].as_array().unwrap().iter().map(unhex).collect();
    tree::verify_inclusion(&data[2], 2, size, &path, &root).expect("inclusion");
    let con = &t["consistency"];
    let path: Vec<tree::Hash> = con["proof"].as_array().unwrap().iter().map(unhex).collect();
    tree::verify_consistency(2, size, &tree::root_of(&leaves[..2]), &root, &path)
        .expect("consistency");
}

#[test]
fn the_published_vectors_match_this_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/audit-chain-vectors.json"
    );
    let actual = serde_json::to_string_pretty(&render()).expect("json") + "\n";
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(path, &actual).expect("write vectors");
    }
    let published: Value = serde_json::from_str(
        &std::fs::read_to_string(path).expect("docs/audit-chain-vectors.json"),
    )
    .expect("the vector file is JSON");
    // Check the published file on its own terms, as an independent verifier would.
    let key = AuditSecret::parse(published["secret_hex"].as_str().unwrap())
        .unwrap()
        .chain_key();
    assert_eq!(published["key_id"], key.key_id());
    let mut prev = ZERO_HMAC.to_vec();
    let new_key = AuditSecret::parse(published["rotation"]["new_secret_hex"].as_str().unwrap())
        .unwrap()
        .chain_key();
    let public = hex::decode(published["signer"]["public_key"].as_str().unwrap()).unwrap();
    for v in published["rows"].as_array().unwrap() {
        let row: AuditRecord = serde_json::from_value(v["row"].clone()).unwrap();
        let k = if row.key_id == key.key_id() {
            &key
        } else {
            &new_key
        };
        if let Some(sig) = &row.signature {
            assert!(
                crate::signing::verify_with(&public, &row.row_hmac, sig),
                "seq {}",
                row.seq
            );
        }
        assert_eq!(
            hex::encode(canonical::encode(&row)),
            v["canonical_hex"],
            "seq {}",
            row.seq
        );
        assert_eq!(hex::encode(k.seal(&row)), v["row_hmac"], "seq {}", row.seq);
        assert_eq!(
            row.prev_hmac, prev,
            "seq {} links to its predecessor",
            row.seq
        );
        prev = row.row_hmac.clone();
    }
    check_tree(&published);
    let rot = &published["rotation"];
    let new = AuditSecret::parse(rot["new_secret_hex"].as_str().unwrap())
        .unwrap()
        .chain_key();
    assert_eq!(rot["new_key_id"], new.key_id());
    let msg = hex::decode(rot["message_hex"].as_str().unwrap()).unwrap();
    assert!(new.verify_tag(&msg, &hex::decode(rot["proof"].as_str().unwrap()).unwrap()));
    let cp: crate::checkpoint::Checkpoint =
        serde_json::from_value(published["checkpoint"]["checkpoint"].clone()).unwrap();
    assert!(cp.signature_is_valid());
    // The chain, marker included, verifies clean with the new key current and the old one
    // previous.
    let rows = rows();
    let signer = signer();
    let signers = crate::signing::signers_from(&[gov_store::SignerKeyRow {
        signer_key_id: signer.key_id().into(),
        public_key: signer.public_key().to_vec(),
        label: "vectors".into(),
        created_at: datetime!(2026-11-25 00:00 UTC),
        revoked_at: None,
    }]);
    let ring = crate::KeyRing::with_previous(new.clone(), [key.clone()]).with_signers(signers);
    let head = gov_core::ChainHead {
        chain_id: "default".into(),
        seq: 5,
        head_hmac: rows[4].row_hmac.clone(),
    };
    let mut check = crate::ChainCheck::new(&ring, head);
    for (i, r) in rows.iter().enumerate() {
        check.check(r, rows.get(i + 1)).expect("clean");
    }
    check.finish().expect("clean");
    assert_eq!(check.signatures().signed, 1);
    // And the file is exactly what this code produces.
    assert_eq!(
        serde_json::from_str::<Value>(&actual).unwrap(),
        published,
        "docs/audit-chain-vectors.json is stale: UPDATE_VECTORS=1 rewrites it"
    );
}
