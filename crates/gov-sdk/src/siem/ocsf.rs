//! OCSF 1.9: every row is an API Activity event (category 6, class 6003) with the profiles
//! `record_integrity` (the seal as an `attestation`), `ai_operation` (the agent, and the model
//! of LLM events) and `datetime` (`time_dt`, to the microsecond).
//!
//! OCSF defines an attestation's `fingerprint` over a canonical serialization of the OCSF event;
//! ours is the row's HMAC over the chain's own canonical encoding, so the fingerprint names that
//! scheme (`serialization_id` 99, Other) and a verifier rebuilds the encoding from the fields
//! mapped here, never from the OCSF JSON. OCSF has no attribute for a signature's bytes or its
//! key, so those go in `unmapped` (docs/siem.md).

use gov_core::AuditRecord;
use gov_core::events::{
    EventKind, LlmCancelled, LlmError, LlmObserved, LlmRequest, LlmResponse, ToolFinished,
};
use serde_json::{Map, Value, json};

use super::Prev;

/// `metadata.version`.
pub const OCSF_VERSION: &str = "1.9.0";

const CATEGORY_UID: u32 = 6;
const CLASS_UID: u32 = 6003;
/// The encoding a seal covers, per version (docs/audit-chain.md).
const ENCODING_V1: &str = "governance audit chain canonical encoding, version 1";
const ENCODING_V2: &str = "governance audit chain canonical encoding, version 2";

/// API Activity's activity: Create 1, Update 3, Other 99.
fn activity(rec: &AuditRecord) -> (u32, String) {
    match super::kind(rec) {
        Some(EventKind::GateRequested) => (1, "Create".into()),
        Some(
            EventKind::GateApproved
            | EventKind::GateDenied
            | EventKind::GateVoted
            | EventKind::GateEscalated
            | EventKind::GateExpired
            | EventKind::GateConsumed
            | EventKind::AgentHalted
            | EventKind::AgentResumed
            | EventKind::ChainKeyRotated
            | EventKind::SubjectErased
            | EventKind::ChainArchived
            | EventKind::PolicyApplied,
        ) => (3, "Update".into()),
        _ => (99, rec.kind.clone()),
    }
}

pub(crate) fn type_uid(rec: &AuditRecord) -> u32 {
    CLASS_UID * 100 + activity(rec).0
}

/// (severity_id, severity).
fn severity(k: Option<EventKind>) -> (u32, &'static str) {
    match k {
        Some(EventKind::AgentHalted) => (4, "High"),
        Some(
            EventKind::ScopeDenied
            | EventKind::BudgetDenied
            | EventKind::LoopDetected
            | EventKind::ContractViolated
            | EventKind::PolicyDenied,
        ) => (3, "Medium"),
        Some(
            EventKind::GateDenied
            | EventKind::GateEscalated
            | EventKind::GateExpired
            | EventKind::LlmError
            | EventKind::ChainKeyRotated
            | EventKind::SubjectErased
            | EventKind::ChainArchived
            | EventKind::PolicyApplied
            | EventKind::PolicyShadowDiff
            | EventKind::GatewayKeyAdded
            | EventKind::GatewayKeyRevoked,
        ) => (2, "Low"),
        Some(
            EventKind::GateRequested
            | EventKind::GateApproved
            | EventKind::GateVoted
            | EventKind::GateConsumed
            | EventKind::AgentResumed
            | EventKind::ToolStarted
            | EventKind::ToolFinished
            | EventKind::LlmRequest
            | EventKind::LlmResponse
            | EventKind::LlmCancelled
            | EventKind::LlmObserved
            | EventKind::PolicyApprovalRequired,
        )
        | None => (1, "Informational"),
    }
}

/// (status_id, status): a refusal or a failed call is a Failure; a host's own kind is Unknown.
fn status(rec: &AuditRecord) -> (u32, &'static str) {
    let failed = match super::kind(rec) {
        None => return (0, "Unknown"),
        Some(k) if k.is_denial() => true,
        Some(
            EventKind::GateDenied
            | EventKind::GateExpired
            | EventKind::LlmError
            | EventKind::LlmCancelled,
        ) => true,
        Some(EventKind::ToolFinished) => rec.decode::<ToolFinished>().is_ok_and(|t| !t.ok),
        Some(_) => false,
    };
    if failed {
        (2, "Failure")
    } else {
        (1, "Success")
    }
}

/// The model of an LLM event, as OCSF's `ai_model` (name and provider are both required).
fn ai_model(rec: &AuditRecord) -> Option<Value> {
    let (provider, model) = match super::kind(rec)? {
        EventKind::LlmRequest => rec
            .decode::<LlmRequest>()
            .ok()
            .map(|e| (e.provider, e.model)),
        EventKind::LlmResponse => rec
            .decode::<LlmResponse>()
            .ok()
            .map(|e| (e.provider, e.model)),
        EventKind::LlmError => rec.decode::<LlmError>().ok().map(|e| (e.provider, e.model)),
        EventKind::LlmCancelled => rec
            .decode::<LlmCancelled>()
            .ok()
            .map(|e| (e.provider, e.model)),
        EventKind::LlmObserved => rec
            .decode::<LlmObserved>()
            .ok()
            .map(|e| (e.provider, e.model)),
        _ => None,
    }?;
    Some(json!({ "name": model, "ai_provider": provider }))
}

fn hmac_fingerprint(bytes: &[u8], encoding: Option<&str>) -> Value {
    let mut f = json!({
        "algorithm_id": 99,
        "algorithm": "HMAC-SHA256",
        "encoding_id": 1,
        "encoding": "Hex",
        "value": super::hex(bytes),
    });
    if let (Some(enc), Some(o)) = (encoding, f.as_object_mut()) {
        o.insert("serialization_id".into(), json!(99));
        o.insert("serialization".into(), json!(enc));
    }
    f
}

/// The row as an OCSF event. `prev` is the row before it, when known (it names that row in
/// `prev_event`; the first row of a chain has none).
pub(crate) fn ocsf_event(rec: &AuditRecord, prev: Option<&Prev>, product_version: &str) -> Value {
    let kind = super::kind(rec);
    let (activity_id, activity_name) = activity(rec);
    let (severity_id, severity) = severity(kind);
    let (status_id, status) = status(rec);
    let micros = rec.occurred_at.unix_timestamp_nanos() / 1_000;

    let mut actor = Map::new();
    match &rec.actor {
        // A system path (`governance:loop-detector`) is an application; anyone else a person.
        Some(a) if a.starts_with("governance:") => {
            actor.insert("app_name".into(), json!(a));
        }
        Some(a) => {
            actor.insert("user".into(), json!({ "name": a }));
        }
        None => {
            actor.insert("app_name".into(), json!(rec.agent_id));
        }
    }
    if let Some(s) = &rec.session_id {
        actor.insert("session".into(), json!({ "uid": s }));
    }

    let encoding = if rec.signer_key_id.is_some() {
        ENCODING_V2
    } else {
        ENCODING_V1
    };
    let mut attestation = Map::new();
    attestation.insert("authority_uid".into(), json!(rec.key_id));
    attestation.insert("chain_uid".into(), json!(rec.chain_id));
    attestation.insert(
        "fingerprint".into(),
        hmac_fingerprint(&rec.row_hmac, Some(encoding)),
    );
    if let Some(p) = prev {
        attestation.insert(
            "prev_event".into(),
            json!({
                "uid": p.event_id,
                "type_uid": p.type_uid,
                "fingerprint": hmac_fingerprint(&rec.prev_hmac, None),
            }),
        );
    }
    if rec.signature.is_some() {
        attestation.insert(
            "signatures".into(),
            json!([{
                "algorithm_id": 99,
                "algorithm": "Ed25519",
                "serialization_id": 1,
                "serialization": "Flat",
            }]),
        );
    }

    let mut unmapped = Map::new();
    unmapped.insert("kind".into(), json!(rec.kind));
    unmapped.insert("agent_id".into(), json!(rec.agent_id));
    unmapped.insert("prev_hmac".into(), json!(super::hex(&rec.prev_hmac)));
    unmapped.insert("signature_status".into(), json!(rec.signature_status));
    if let Some(s) = &rec.signature {
        unmapped.insert("signature".into(), json!(super::hex(s)));
    }
    if let Some(s) = &rec.signer_key_id {
        unmapped.insert("signer_key_id".into(), json!(s));
    }
    if let Some(s) = &rec.session_id {
        unmapped.insert("session_id".into(), json!(s));
    }
    if let Some(a) = &rec.actor {
        unmapped.insert("actor".into(), json!(a));
    }
    if let Some(p) = &rec.parent_event_id {
        unmapped.insert("parent_event_id".into(), json!(p.to_string()));
    }
    if let Some(v) = rec.payload_json() {
        unmapped.insert("payload".into(), v);
    }

    let mut profiles = vec!["ai_operation", "datetime", "record_integrity"];
    profiles.sort_unstable();
    let mut ev = json!({
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("API Activity: {activity_name}"),
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": i64::try_from(micros.div_euclid(1_000)).unwrap_or(i64::MAX),
        "time_dt": super::rfc3339_micros(rec),
        "message": format!("{} by {}", rec.kind, rec.agent_id),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "governance",
                "vendor_name": "governance",
                "version": product_version,
            },
            "uid": rec.event_id.to_string(),
            "log_name": rec.chain_id,
            "sequence": rec.seq,
            "profiles": profiles,
        },
        "actor": actor,
        "api": { "operation": rec.kind },
        "src_endpoint": { "name": rec.agent_id },
        "ai_agent": { "uid": rec.agent_id },
        "attestation_list": [attestation],
        "raw_data": rec.payload,
        "unmapped": unmapped,
    });
    if let (Some(m), Some(o)) = (ai_model(rec), ev.as_object_mut()) {
        o.insert("ai_model".into(), m);
    }
    ev
}
