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

fn uuid(s: &str) -> EventId {
    EventId::from_uuid(s.parse().expect("uuid literal"))
}

/// The chain of the vectors: three ordinary rows, then a rotation marker.
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
    let mut prev = ZERO_HMAC.to_vec();
    for r in &mut rows {
        r.prev_hmac = prev;
        r.row_hmac = key.seal(r).to_vec();
        prev = r.row_hmac.clone();
    }
    rows
}

fn render() -> Value {
    let key = AuditSecret::parse(SECRET).expect("secret").chain_key();
    let new = AuditSecret::parse(NEW_SECRET).expect("secret").chain_key();
    let rows = rows();
    let marker = &rows[3];
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
        "rotation": {
            "marker_seq": marker.seq,
            "new_secret_hex": NEW_SECRET,
            "new_key_id": new.key_id(),
            "message_hex": hex::encode(&msg),
            "proof": hex::encode(new.tag(&msg)),
        },
    })
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
    for v in published["rows"].as_array().unwrap() {
        let row: AuditRecord = serde_json::from_value(v["row"].clone()).unwrap();
        assert_eq!(
            hex::encode(canonical::encode(&row)),
            v["canonical_hex"],
            "seq {}",
            row.seq
        );
        assert_eq!(
            hex::encode(key.seal(&row)),
            v["row_hmac"],
            "seq {}",
            row.seq
        );
        assert_eq!(
            row.prev_hmac, prev,
            "seq {} links to its predecessor",
            row.seq
        );
        prev = row.row_hmac.clone();
    }
    let rot = &published["rotation"];
    let new = AuditSecret::parse(rot["new_secret_hex"].as_str().unwrap())
        .unwrap()
        .chain_key();
    assert_eq!(rot["new_key_id"], new.key_id());
    let msg = hex::decode(rot["message_hex"].as_str().unwrap()).unwrap();
    assert!(new.verify_tag(&msg, &hex::decode(rot["proof"].as_str().unwrap()).unwrap()));
    // The chain, marker included, verifies clean with the new key current and the old one
    // previous.
    let rows = rows();
    let ring = crate::KeyRing::with_previous(new.clone(), [key.clone()]);
    let head = gov_core::ChainHead {
        chain_id: "default".into(),
        seq: 4,
        head_hmac: rows[3].row_hmac.clone(),
    };
    let mut check = crate::ChainCheck::new(&ring, head);
    for (i, r) in rows.iter().enumerate() {
        check.check(r, rows.get(i + 1)).expect("clean");
    }
    check.finish().expect("clean");
    // And the file is exactly what this code produces.
    assert_eq!(
        serde_json::from_str::<Value>(&actual).unwrap(),
        published,
        "docs/audit-chain-vectors.json is stale: UPDATE_VECTORS=1 rewrites it"
    );
}
