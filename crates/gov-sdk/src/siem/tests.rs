//! Golden lines for a few kinds in both formats, and the required attributes of each.

use gov_core::events::{
    AgentHalted, GateApproved, GateDecision, HaltChange, LlmRequest, SystemEvent,
};
use gov_core::{AuditEvent, AuditRecord, EventId};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Mapper, SiemFormat};

fn at(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).expect("time")
}

fn id(n: u128) -> EventId {
    EventId::from_uuid(Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0000 | n,
    ))
}

/// A row as stored, with fixed ids, times and seals.
fn row(event: AuditEvent, seq: i64) -> AuditRecord {
    let mut r = AuditRecord::unsealed(&event, seq, &[seq as u8 - 1; 32], "k1_0123456789abcdef");
    if seq == 1 {
        r.prev_hmac = vec![0; 32];
    }
    r.event_id = id(seq as u128);
    r.occurred_at = at(1_764_064_800_123_456 + seq * 1_000_000);
    r.row_hmac = vec![seq as u8; 32];
    r
}

/// The chain the goldens show: a user's tool.call, llm.request, gate.approved (signed, by an
/// operator, with a parent) and agent.halted by the loop detector.
fn chain() -> Vec<AuditRecord> {
    let tool = AuditEvent::builder("billing-agent", "tool.call")
        .session("s-42")
        .payload(serde_json::json!({"tool": "refund", "amount_cents": 1200, "note": "é \"q\""}))
        .build()
        .expect("event");
    let llm = LlmRequest {
        provider: "openai".into(),
        wrapper: "openai-chat".into(),
        operation: "chat".into(),
        model: "gpt-4o-mini".into(),
        stream: false,
        max_tokens: 256,
        max_tokens_declared: true,
        input_tokens_estimate: 120,
        reserved_micros: 310,
    }
    .event("billing-agent")
    .session("s-42")
    .build()
    .expect("event");
    let gate = GateApproved(GateDecision::new(
        Uuid::from_u128(7),
        "refund",
        "within policy",
    ))
    .event("billing-agent")
    .session("s-42")
    .actor("alice")
    .build()
    .expect("event");
    let halt = AgentHalted(HaltChange {
        reason: "loop: refund repeated 5 times".into(),
        changed: true,
    })
    .event("billing-agent")
    .actor("governance:loop-detector")
    .build()
    .expect("event");
    let mut rows: Vec<AuditRecord> = [tool, llm, gate, halt]
        .into_iter()
        .zip(1..)
        .map(|(e, seq)| row(e, seq))
        .collect();
    rows[2].parent_event_id = Some(id(1));
    rows[2].signer_key_id = Some("ed1_00112233445566778899aabb".into());
    rows[2].signature = Some(vec![0xab; 64]);
    rows[2].signature_status = "signed".into();
    rows
}

fn lines(format: SiemFormat) -> Vec<String> {
    let mut m = Mapper::new(format, None).product_version("0.0.0-test");
    chain().iter().map(|r| m.line(r)).collect()
}

/// Compares with `golden/NAME` (a pretty JSON array); `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, lines: &[String]) {
    // Keys sorted whatever serde_json's `preserve_order` feature (which another crate of the
    // build may turn on) does to a parsed object's order.
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let m: std::collections::BTreeMap<String, Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(m.into_iter().collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let values: Vec<Value> = lines
        .iter()
        .map(|l| sorted(serde_json::from_str(l).expect("each line is JSON")))
        .collect();
    let actual = serde_json::to_string_pretty(&values).expect("json") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/siem/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        expected, actual,
        "{name} changed (UPDATE_GOLDEN=1 rewrites it after a deliberate change)"
    );
}

#[test]
fn cloudevents_match_the_golden_file() {
    let lines = lines(SiemFormat::CloudEvents);
    for l in &lines {
        assert!(!l.contains('\n'), "one line per event");
    }
    golden("cloudevents.json", &lines);
}

#[test]
fn ocsf_events_match_the_golden_file() {
    let lines = lines(SiemFormat::Ocsf);
    golden("ocsf.json", &lines);
}

#[test]
fn cloudevents_carry_the_required_attributes_and_valid_extension_names() {
    for (rec, line) in chain().iter().zip(lines(SiemFormat::CloudEvents)) {
        let v: Value = serde_json::from_str(&line).expect("json");
        let o = v.as_object().expect("an object");
        for required in ["specversion", "id", "source", "type"] {
            let s = o[required].as_str().expect("a string");
            assert!(!s.is_empty(), "{required} is non-empty");
        }
        assert_eq!(o["specversion"], "1.0");
        assert_eq!(o["id"], rec.event_id.to_string());
        assert_eq!(o["source"], "/governance/default");
        assert!(super::check_source(o["source"].as_str().expect("str")).is_ok());
        assert_eq!(o["type"], format!("dev.governance.{}", rec.kind));
        assert_eq!(o["subject"], rec.agent_id);
        assert_eq!(o["datacontenttype"], "application/json");
        let t = o["time"].as_str().expect("time");
        let parsed = OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        assert_eq!(parsed, rec.occurred_at, "to the microsecond");
        // The data is the stored payload, byte for byte.
        assert!(line.ends_with(&format!(",\"data\":{}}}", rec.payload)));
        assert_eq!(o["govrowhmac"], super::hex(&rec.row_hmac));
        assert_eq!(o["govseq"], rec.seq.to_string());
        for (name, value) in o {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
                "attribute name {name:?}: lowercase letters and digits only"
            );
            assert!(
                name.len() <= 20,
                "attribute name {name:?}: at most 20 characters"
            );
            if name != "data" {
                assert!(value.is_string(), "{name} is a String");
            }
        }
    }
}

#[test]
fn a_payload_that_is_not_json_travels_as_a_string() {
    let mut rec = chain().remove(0);
    rec.payload = "not json\n".into();
    let line = super::cloudevent_line(&rec, "/x");
    assert!(!line.contains('\n'));
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["data"], "not json\n");
    assert_eq!(v["datacontenttype"], "text/plain; charset=utf-8");
}

#[test]
fn ocsf_events_carry_the_required_fields_of_api_activity_and_the_attestation() {
    let rows = chain();
    for (i, (rec, line)) in rows.iter().zip(lines(SiemFormat::Ocsf)).enumerate() {
        let v: Value = serde_json::from_str(&line).expect("json");
        // Base event: required.
        for required in [
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ] {
            assert!(!v[required].is_null(), "{required} in {}", rec.kind);
        }
        assert_eq!(v["category_uid"], 6);
        assert_eq!(v["class_uid"], 6003);
        let activity = v["activity_id"].as_u64().expect("activity");
        assert!([1, 2, 3, 4, 99].contains(&activity));
        assert_eq!(v["type_uid"], 6003 * 100 + activity);
        assert!((0..=6).contains(&v["severity_id"].as_u64().expect("sev")));
        assert_eq!(
            v["time"].as_i64().expect("ms"),
            i64::try_from(rec.occurred_at.unix_timestamp_nanos() / 1_000_000).expect("ms")
        );
        // Metadata: version and product required.
        assert_eq!(v["metadata"]["version"], "1.9.0");
        assert_eq!(v["metadata"]["product"]["name"], "governance");
        assert_eq!(v["metadata"]["uid"], rec.event_id.to_string());
        assert_eq!(v["metadata"]["sequence"], rec.seq);
        // API Activity: actor (with one of its required members), api.operation, src_endpoint.
        let actor = v["actor"].as_object().expect("actor");
        assert!(
            ["user", "app_name", "session", "process"]
                .iter()
                .any(|k| actor.contains_key(*k))
        );
        assert_eq!(v["api"]["operation"], rec.kind);
        assert!(v["src_endpoint"]["name"].is_string());
        // The record_integrity attestation: a fingerprint or signatures.
        let att = &v["attestation_list"][0];
        assert_eq!(att["fingerprint"]["value"], super::hex(&rec.row_hmac));
        assert_eq!(att["fingerprint"]["algorithm_id"], 99);
        assert_eq!(att["chain_uid"], rec.chain_id);
        assert_eq!(att["authority_uid"], rec.key_id);
        if i == 0 {
            assert!(
                att["prev_event"].is_null(),
                "the genesis row has no predecessor"
            );
        } else {
            assert_eq!(att["prev_event"]["uid"], rows[i - 1].event_id.to_string());
            assert_eq!(
                att["prev_event"]["fingerprint"]["value"],
                super::hex(&rec.prev_hmac)
            );
        }
        assert_eq!(att["signatures"].is_array(), rec.signature.is_some());
        assert_eq!(v["raw_data"], rec.payload);
    }
}

#[test]
fn ocsf_names_no_predecessor_it_was_not_given() {
    let rows = chain();
    let mut m = Mapper::new(SiemFormat::Ocsf, None);
    let v: Value = serde_json::from_str(&m.line(&rows[2])).expect("json");
    assert!(v["attestation_list"][0]["prev_event"].is_null());
    let mut m = Mapper::new(SiemFormat::Ocsf, None);
    m.previous(&rows[1]);
    let v: Value = serde_json::from_str(&m.line(&rows[2])).expect("json");
    assert_eq!(
        v["attestation_list"][0]["prev_event"]["uid"],
        rows[1].event_id.to_string()
    );
}

#[test]
fn a_source_with_spaces_is_refused() {
    assert!(super::check_source("https://siem.example/x").is_ok());
    assert!(super::check_source("/governance/default").is_ok());
    assert!(super::check_source("").is_err());
    assert!(super::check_source("a b").is_err());
}
