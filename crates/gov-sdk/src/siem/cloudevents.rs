//! CloudEvents 1.0, JSON event format, structured mode: one event per line.
//!
//! `data` is the payload text exactly as stored and sealed (it is JSON, so it is embedded as is);
//! the chain's fields travel as extension attributes named `gov…` (lowercase letters and digits,
//! at most 20 characters, as the specification requires), all of type String.

use gov_core::AuditRecord;
use serde_json::{Map, Value};

/// `specversion`.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";
/// `type` is this prefix followed by the row's kind (`dev.governance.llm.request`).
pub const TYPE_PREFIX: &str = "dev.governance.";

/// The `source` used when none is configured: `/governance/<chain>`, a relative URI-reference
/// (chain ids hold only characters allowed in a URI path).
pub fn default_source(chain_id: &str) -> String {
    format!("/governance/{chain_id}")
}

/// The row as one CloudEvents JSON object, on one line.
pub fn cloudevent_line(rec: &AuditRecord, source: &str) -> String {
    let mut m = Map::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_owned(), Value::String(v));
    };
    put("specversion", CLOUDEVENTS_SPEC_VERSION.to_owned());
    put("id", rec.event_id.to_string());
    put("source", source.to_owned());
    put("type", format!("{TYPE_PREFIX}{}", rec.kind));
    put("subject", rec.agent_id.clone());
    put("time", super::rfc3339_micros(rec));
    // The payload is embedded verbatim when it is JSON on one line (canonical JSON always is);
    // anything else (only a damaged row) travels as a string.
    let verbatim = serde_json::from_str::<serde::de::IgnoredAny>(&rec.payload).is_ok()
        && !rec.payload.contains(['\n', '\r']);
    put(
        "datacontenttype",
        if verbatim {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        }
        .to_owned(),
    );
    put("govchain", rec.chain_id.clone());
    put("govseq", rec.seq.to_string());
    put("govkeyid", rec.key_id.clone());
    put("govprevhmac", super::hex(&rec.prev_hmac));
    put("govrowhmac", super::hex(&rec.row_hmac));
    put("govsigstatus", rec.signature_status.clone());
    if let Some(s) = &rec.signature {
        put("govsignature", super::hex(s));
    }
    if let Some(s) = &rec.signer_key_id {
        put("govsigner", s.clone());
    }
    if let Some(s) = &rec.session_id {
        put("govsession", s.clone());
    }
    if let Some(a) = &rec.actor {
        put("govactor", a.clone());
    }
    if let Some(p) = &rec.parent_event_id {
        put("govparent", p.to_string());
    }
    let mut line = Value::Object(m).to_string();
    line.pop(); // the closing brace
    line.push_str(",\"data\":");
    if verbatim {
        line.push_str(&rec.payload);
    } else {
        line.push_str(&Value::String(rec.payload.clone()).to_string());
    }
    line.push('}');
    line
}
