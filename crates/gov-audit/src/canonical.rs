//! The canonical encoding of an audit row: the exact bytes the chain HMAC covers.
//!
//! Version 1, byte for byte (all integers big-endian; see docs/audit-chain.md):
//!
//! ```text
//! "GOVAUDIT" (8 bytes)  version = 0x01 (1 byte)
//! then each field in this order, as u32 length + bytes:
//!   chain_id (UTF-8)  seq (i64, 8 bytes)  event_id (16 bytes)  occurred_at (i64 µs since epoch)
//!   agent_id  [session_id]  kind  [actor]  [parent_event_id (16 bytes)]  payload (stored text)
//!   prev_hmac (32 bytes)  key_id
//! an optional field [x] is one byte 0x00 when absent, or 0x01 followed by u32 length + bytes
//! ```
//!
//! Version 2 is version 1 with the version byte 0x02 and one more field at the end:
//! `signer_key_id` (UTF-8). A row is encoded as version 2 exactly when it names a signer, so
//! the signer it was meant to be signed by is sealed: a stripped signature cannot pass for an
//! unsigned row. Rows without a signer keep version 1, byte for byte.
//!
//! Every field is length-prefixed and optional fields carry a presence byte, so no two different
//! rows encode alike. The payload is the stored canonical JSON text, never a re-serialisation.

use gov_core::AuditRecord;

/// The magic prefix of every encoding.
pub const MAGIC: &[u8; 8] = b"GOVAUDIT";
/// The encoding version of rows without a signer.
pub const VERSION: u8 = 1;
/// The encoding version of rows that name a signer.
pub const VERSION_SIGNED: u8 = 2;

fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded far below 4 GiB (ids 128 chars, payload 64 KiB), so this never saturates
    // in practice; saturating keeps the function total.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn optional(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => buf.push(0),
        Some(b) => {
            buf.push(1);
            field(buf, b);
        }
    }
}

/// Appends the canonical bytes of `r` to `buf`.
pub fn encode_into(r: &AuditRecord, buf: &mut Vec<u8>) {
    buf.extend_from_slice(MAGIC);
    buf.push(if r.signer_key_id.is_some() {
        VERSION_SIGNED
    } else {
        VERSION
    });
    field(buf, r.chain_id.as_bytes());
    field(buf, &r.seq.to_be_bytes());
    field(buf, r.event_id.as_uuid().as_bytes());
    let micros = i64::try_from(r.occurred_at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
    field(buf, &micros.to_be_bytes());
    field(buf, r.agent_id.as_bytes());
    optional(buf, r.session_id.as_deref().map(str::as_bytes));
    field(buf, r.kind.as_bytes());
    optional(buf, r.actor.as_deref().map(str::as_bytes));
    let parent = r.parent_event_id.map(|p| *p.as_uuid().as_bytes());
    optional(buf, parent.as_ref().map(|p| &p[..]));
    field(buf, r.payload.as_bytes());
    field(buf, &r.prev_hmac);
    field(buf, r.key_id.as_bytes());
    if let Some(signer) = &r.signer_key_id {
        field(buf, signer.as_bytes());
    }
}

/// The canonical bytes of `r` cut into its fields, each named by its column (the first,
/// `version`, is the magic and the version byte): their concatenation is [`encode`]'s output.
/// Used to say which field of a row differs from bytes that were sealed.
pub fn encode_fields(r: &AuditRecord) -> Vec<(&'static str, Vec<u8>)> {
    let one = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        f(&mut b);
        b
    };
    let mut head = MAGIC.to_vec();
    head.push(if r.signer_key_id.is_some() {
        VERSION_SIGNED
    } else {
        VERSION
    });
    let micros = i64::try_from(r.occurred_at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
    let parent = r.parent_event_id.map(|p| *p.as_uuid().as_bytes());
    let mut out = vec![
        ("version", head),
        ("chain_id", one(&|b| field(b, r.chain_id.as_bytes()))),
        ("seq", one(&|b| field(b, &r.seq.to_be_bytes()))),
        (
            "event_id",
            one(&|b| field(b, r.event_id.as_uuid().as_bytes())),
        ),
        ("occurred_at", one(&|b| field(b, &micros.to_be_bytes()))),
        ("agent_id", one(&|b| field(b, r.agent_id.as_bytes()))),
        (
            "session_id",
            one(&|b| optional(b, r.session_id.as_deref().map(str::as_bytes))),
        ),
        ("kind", one(&|b| field(b, r.kind.as_bytes()))),
        (
            "actor",
            one(&|b| optional(b, r.actor.as_deref().map(str::as_bytes))),
        ),
        (
            "parent_event_id",
            one(&|b| optional(b, parent.as_ref().map(|p| &p[..]))),
        ),
        ("payload", one(&|b| field(b, r.payload.as_bytes()))),
        ("prev_hmac", one(&|b| field(b, &r.prev_hmac))),
        ("key_id", one(&|b| field(b, r.key_id.as_bytes()))),
    ];
    if let Some(signer) = &r.signer_key_id {
        out.push(("signer_key_id", one(&|b| field(b, signer.as_bytes()))));
    }
    out
}

/// The canonical bytes of `r`.
pub fn encode(r: &AuditRecord) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + r.payload.len());
    encode_into(r, &mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use gov_core::{AuditEvent, ZERO_HMAC};
    use proptest::prelude::*;

    fn record(
        session: Option<&str>,
        actor: Option<&str>,
        payload: serde_json::Value,
    ) -> AuditRecord {
        let mut b = AuditEvent::builder("agent-1", "tool.call").payload(payload);
        if let Some(s) = session {
            b = b.session(s);
        }
        if let Some(a) = actor {
            b = b.actor(a);
        }
        AuditRecord::unsealed(&b.build().unwrap(), 1, &ZERO_HMAC, "hk1_x")
    }

    #[test]
    fn absent_and_empty_differ() {
        let mut a = record(None, None, serde_json::json!({}));
        let mut b = a.clone();
        a.session_id = None;
        b.session_id = Some(String::new());
        assert_ne!(encode(&a), encode(&b));
    }

    #[test]
    fn field_boundaries_cannot_shift() {
        // "ab" + "c" must not encode like "a" + "bc".
        let mut a = record(None, None, serde_json::json!({}));
        let mut b = a.clone();
        a.agent_id = "ab".into();
        a.kind = "c.x".into();
        b.agent_id = "a".into();
        b.kind = "bc.x".into();
        assert_ne!(encode(&a), encode(&b));
    }

    #[test]
    fn the_fields_make_the_encoding() {
        let mut r = record(Some("s"), Some("op"), serde_json::json!({"a": 1}));
        r.parent_event_id = Some(gov_core::EventId::new_v7());
        for signer in [None, Some("ed1_x".to_owned())] {
            r.signer_key_id = signer;
            let joined: Vec<u8> = encode_fields(&r).into_iter().flat_map(|(_, b)| b).collect();
            assert_eq!(joined, encode(&r));
        }
    }

    #[test]
    fn starts_with_magic_and_version() {
        let e = encode(&record(Some("s"), Some("op"), serde_json::json!({"a": 1})));
        assert_eq!(&e[..8], MAGIC);
        assert_eq!(e[8], VERSION);
    }

    proptest! {
        #[test]
        fn any_single_field_change_changes_the_bytes(
            agent in "[a-z]{1,12}", other in "[a-z]{1,12}", seq in 1i64..1_000_000, n in -(1i64 << 53)..(1i64 << 53) - 1
        ) {
            let mut a = record(Some("s1"), None, serde_json::json!({ "n": n }));
            a.agent_id = agent.clone();
            a.seq = seq;
            let base = encode(&a);
            let mut b = a.clone();
            b.seq = seq + 1;
            prop_assert_ne!(&base, &encode(&b));
            let mut c = a.clone();
            c.agent_id = other.clone();
            prop_assert_eq!(agent == other, base == encode(&c));
            let mut d = a.clone();
            d.payload = serde_json_canonicalizer::to_string(&serde_json::json!({ "n": n.wrapping_add(1) })).unwrap();
            prop_assert_ne!(&base, &encode(&d));
        }
    }
}
