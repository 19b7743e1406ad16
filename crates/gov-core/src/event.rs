//! The audit event a caller logs, and its validating builder.
//!
//! The payload is turned into canonical JSON (RFC 8785, JCS) when the event is built; that exact
//! text is what the chain hashes and stores, byte for byte.
//!
//! Top-level payload fields may be marked personal for one data subject
//! ([`AuditEventBuilder::personal`]). The marking travels with the event as [`Personal`]; the SDK
//! replaces each marked field by its encrypted envelope (under that subject's key) before the
//! event is sealed, spooled or stored, and clears the marking, so an event that reaches the
//! chain never carries one. The subject id is an opaque pseudonym chosen by the service (a
//! user's UUID): it stays readable in the chain, so it must not itself be personal data.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{EventError, IdError};
use crate::ids::{AgentId, ChainId, EventId, SessionId, validate_kind};

/// Maximum size of a canonical payload, in bytes (64 KiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Maximum nesting depth of a payload (arrays and objects).
pub const MAX_PAYLOAD_DEPTH: usize = 128;

/// A validated audit event, ready to be appended to a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UUID v7 of the event.
    pub event_id: EventId,
    /// The chain the event goes to.
    pub chain_id: ChainId,
    /// When the event happened, truncated to microseconds.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The agent the event concerns.
    pub agent_id: AgentId,
    /// The agent session, if any.
    pub session_id: Option<SessionId>,
    /// What happened (`tool.call`, `agent.halted`, ...).
    pub kind: String,
    /// The operator who acted, where a person acted.
    pub actor: Option<String>,
    /// The event that caused this one (step-level provenance).
    pub parent_event_id: Option<EventId>,
    /// The payload as canonical JSON text (RFC 8785).
    pub payload: String,
    /// Top-level payload fields holding a data subject's personal data, still in plaintext:
    /// the SDK encrypts them before the event goes anywhere (then this is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal: Option<Personal>,
}

/// The payload fields of an event that hold one data subject's personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Personal {
    /// The data subject: an opaque pseudonymous id chosen by the service, never personal data
    /// itself (it stays readable in the chain after an erasure).
    pub subject: String,
    /// The top-level payload fields, sorted, without duplicates.
    pub fields: Vec<String>,
}

impl AuditEvent {
    /// Starts an event for `agent_id` of kind `kind`.
    pub fn builder(agent_id: impl AsRef<str>, kind: impl AsRef<str>) -> AuditEventBuilder {
        AuditEventBuilder {
            agent_id: agent_id.as_ref().to_owned(),
            kind: kind.as_ref().to_owned(),
            chain_id: None,
            session_id: None,
            actor: None,
            parent: None,
            payload: Ok(Value::Object(Default::default())),
            occurred_at: None,
            event_id: None,
            personal: None,
        }
    }

    /// Replaces the payload by `value` in canonical form, with the builder's size, depth and
    /// integer checks (the SDK uses it to put encrypted envelopes in place of personal fields).
    pub fn set_payload_value(&mut self, value: &Value) -> Result<(), EventError> {
        self.payload = canonical_payload(value)?;
        Ok(())
    }
}

impl AuditEvent {
    /// Checks an event that did not come from [`AuditEventBuilder::build`] (one deserialized
    /// from a spool file, or made field by field) by running it through the builder with every
    /// field it carries: valid ids, kind and actor, a payload that is already canonical JSON
    /// within the size and depth limits, and a time at microsecond precision. The same rules as
    /// a built event, from one place.
    pub fn validate(&self) -> Result<(), EventError> {
        let payload: Value = serde_json::from_str(&self.payload)
            .map_err(|e| EventError::NotCanonical(format!("the payload is not JSON: {e}")))?;
        let mut b = AuditEvent::builder(self.agent_id.as_str(), &self.kind)
            .chain(self.chain_id.as_str())
            .payload(payload)
            .occurred_at(self.occurred_at)
            .event_id(self.event_id);
        if let Some(s) = &self.session_id {
            b = b.session(s.as_str());
        }
        if let Some(a) = &self.actor {
            b = b.actor(a);
        }
        if let Some(p) = self.parent_event_id {
            b = b.parent(p);
        }
        if let Some(p) = &self.personal {
            let fields: Vec<&str> = p.fields.iter().map(String::as_str).collect();
            b = b.personal(&p.subject, &fields);
        }
        let rebuilt = b.build()?;
        if rebuilt.payload != self.payload {
            return Err(EventError::NotCanonical(
                "the payload is not in its canonical form (RFC 8785)".into(),
            ));
        }
        if rebuilt != *self {
            return Err(EventError::NotCanonical(
                "the event differs from the one its fields build (time not in UTC at microsecond precision)".into(),
            ));
        }
        Ok(())
    }
}

/// Builds an [`AuditEvent`]; every check runs in [`AuditEventBuilder::build`].
#[derive(Debug, Clone)]
#[must_use]
pub struct AuditEventBuilder {
    agent_id: String,
    kind: String,
    chain_id: Option<String>,
    session_id: Option<String>,
    actor: Option<String>,
    parent: Option<EventId>,
    payload: Result<Value, String>,
    occurred_at: Option<OffsetDateTime>,
    event_id: Option<EventId>,
    personal: Option<Result<(String, Vec<String>), String>>,
}

impl AuditEventBuilder {
    /// Marks top-level payload `fields` as personal data of `subject` (an opaque pseudonymous
    /// id, such as a user's UUID, never an e-mail address or a name: it stays readable). The
    /// SDK stores each marked field encrypted under a key of that subject, which
    /// `governance erase --subject` destroys; the rest of the event stays readable and sealed.
    /// Calling it again for the same subject adds fields; one event holds one subject.
    pub fn personal(mut self, subject: impl AsRef<str>, fields: &[&str]) -> Self {
        let subject = subject.as_ref().to_owned();
        self.personal = Some(match self.personal.take() {
            None => Ok((subject, fields.iter().map(|f| (*f).to_owned()).collect())),
            Some(Ok((s, mut f))) if s == subject => {
                f.extend(fields.iter().map(|f| (*f).to_owned()));
                Ok((s, f))
            }
            Some(Ok(_)) => Err("an event holds the personal data of one subject only".into()),
            Some(Err(e)) => Err(e),
        });
        self
    }

    /// Sets the chain (default `default`).
    pub fn chain(mut self, chain_id: impl AsRef<str>) -> Self {
        self.chain_id = Some(chain_id.as_ref().to_owned());
        self
    }

    /// Sets the agent session.
    pub fn session(mut self, session_id: impl AsRef<str>) -> Self {
        self.session_id = Some(session_id.as_ref().to_owned());
        self
    }

    /// Sets the operator who acted.
    pub fn actor(mut self, actor: impl AsRef<str>) -> Self {
        self.actor = Some(actor.as_ref().to_owned());
        self
    }

    /// Sets the event that caused this one.
    pub fn parent(mut self, parent: EventId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Sets the payload from any serialisable value.
    pub fn payload(mut self, payload: impl Serialize) -> Self {
        self.payload = serde_json::to_value(payload).map_err(|e| e.to_string());
        self
    }

    /// Sets the time of the event (default: now). Truncated to microseconds.
    pub fn occurred_at(mut self, at: OffsetDateTime) -> Self {
        self.occurred_at = Some(at);
        self
    }

    /// Sets the event id (default: a fresh UUID v7). Used when replaying a spooled event.
    pub fn event_id(mut self, id: EventId) -> Self {
        self.event_id = Some(id);
        self
    }

    /// Validates everything and returns the event with its payload in canonical form.
    pub fn build(self) -> Result<AuditEvent, EventError> {
        let agent_id = AgentId::new(self.agent_id)?;
        validate_kind(&self.kind)?;
        let chain_id = match self.chain_id {
            Some(c) => ChainId::new(c)?,
            None => ChainId::default(),
        };
        let session_id = self.session_id.map(SessionId::new).transpose()?;
        let actor = match self.actor {
            Some(a) => {
                // Actors are operator identities; they share the id character set.
                AgentId::new(&a).map_err(|e| match e {
                    IdError::Empty { .. } => IdError::Empty { what: "actor" },
                    IdError::TooLong { len, max, .. } => IdError::TooLong {
                        what: "actor",
                        len,
                        max,
                    },
                    IdError::BadChar { ch, pos, .. } => IdError::BadChar {
                        what: "actor",
                        ch,
                        pos,
                    },
                    other => other,
                })?;
                Some(a)
            }
            None => None,
        };
        let value = self.payload.map_err(EventError::NotCanonical)?;
        let personal = self
            .personal
            .map(|p| check_personal(p, &value))
            .transpose()?;
        let payload = canonical_payload(&value)?;
        let occurred_at =
            truncate_to_micros(self.occurred_at.unwrap_or_else(OffsetDateTime::now_utc));
        Ok(AuditEvent {
            event_id: self.event_id.unwrap_or_else(EventId::new_v7),
            chain_id,
            occurred_at,
            agent_id,
            session_id,
            kind: self.kind,
            actor,
            parent_event_id: self.parent,
            payload,
            personal,
        })
    }
}

/// Checks the personal marking against the payload: a valid subject id, and fields that are
/// top-level keys of an object payload, none already an encrypted envelope.
fn check_personal(
    p: Result<(String, Vec<String>), String>,
    payload: &Value,
) -> Result<Personal, EventError> {
    let (subject, mut fields) = p.map_err(EventError::Personal)?;
    AgentId::new(&subject).map_err(|e| match e {
        IdError::Empty { .. } => IdError::Empty { what: "subject id" },
        IdError::TooLong { len, max, .. } => IdError::TooLong {
            what: "subject id",
            len,
            max,
        },
        IdError::BadChar { ch, pos, .. } => IdError::BadChar {
            what: "subject id",
            ch,
            pos,
        },
        other => other,
    })?;
    fields.sort_unstable();
    fields.dedup();
    if fields.is_empty() {
        return Err(EventError::Personal("no field is marked".into()));
    }
    let Value::Object(map) = payload else {
        return Err(EventError::Personal(
            "the payload is not a JSON object".into(),
        ));
    };
    for f in &fields {
        match map.get(f) {
            None => {
                return Err(EventError::Personal(format!(
                    "{f:?} is not a top-level field of the payload"
                )));
            }
            Some(Value::Object(o)) if o.contains_key(ENVELOPE_TAG) => {
                return Err(EventError::Personal(format!(
                    "{f:?} already holds an encrypted envelope"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(Personal { subject, fields })
}

/// The key that marks a payload value as an encrypted envelope (docs/audit-chain.md,
/// "Personal fields").
pub const ENVELOPE_TAG: &str = "$gov.enc";

/// Truncates a time to microsecond precision, the precision the chain stores.
fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.nanosecond() / 1_000 * 1_000;
    t.replace_nanosecond(micros).unwrap_or(t)
}

/// Largest integer magnitude a JSON number carries exactly (RFC 8785 numbers are IEEE doubles).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Walks the payload once: its nesting depth, and the first integer too large to survive
/// canonicalisation unchanged.
fn inspect(v: &Value) -> (usize, Option<String>) {
    // Iterative, so a hostile payload cannot overflow the stack here.
    let mut max = 0;
    let mut unsafe_int = None;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Number(n) if unsafe_int.is_none() => {
                let too_big = match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => u > MAX_SAFE_INTEGER,
                    (None, Some(i)) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                    _ => false,
                };
                if too_big {
                    unsafe_int = Some(n.to_string());
                }
            }
            Value::Array(a) => {
                max = max.max(d);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
        if max > MAX_PAYLOAD_DEPTH {
            break;
        }
    }
    (max, unsafe_int)
}

/// Canonicalises a payload (RFC 8785) and checks its depth and size.
fn canonical_payload(v: &Value) -> Result<String, EventError> {
    let (d, unsafe_int) = inspect(v);
    if d > MAX_PAYLOAD_DEPTH {
        return Err(EventError::PayloadTooDeep {
            depth: d,
            max: MAX_PAYLOAD_DEPTH,
        });
    }
    if let Some(n) = unsafe_int {
        return Err(EventError::UnsafeInteger(n));
    }
    let text = serde_json_canonicalizer::to_string(v)
        .map_err(|e| EventError::NotCanonical(e.to_string()))?;
    if text.len() > MAX_PAYLOAD_BYTES {
        return Err(EventError::PayloadTooLarge {
            size: text.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_with_defaults() {
        let e = AuditEvent::builder("billing-agent", "invoice.read")
            .build()
            .unwrap();
        assert_eq!(e.chain_id.as_str(), "default");
        assert_eq!(e.payload, "{}");
        assert_eq!(e.occurred_at.nanosecond() % 1_000, 0);
        assert_eq!(e.event_id.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn payload_is_canonical() {
        let e = AuditEvent::builder("a", "tool.call")
            .payload(
                json!({"b": 1, "a": [true, null, 1.5e300, "é\u{1F600}"], "c": {"z": 0, "y": -0.0}}),
            )
            .build()
            .unwrap();
        assert_eq!(
            e.payload,
            r#"{"a":[true,null,1.5e+300,"é😀"],"b":1,"c":{"y":0,"z":0}}"#
        );
    }

    #[test]
    fn oversize_payload_is_refused_with_sizes() {
        let big = "x".repeat(MAX_PAYLOAD_BYTES);
        let err = AuditEvent::builder("a", "tool.call")
            .payload(json!({ "blob": big }))
            .build()
            .unwrap_err();
        assert!(matches!(
            err,
            EventError::PayloadTooLarge { max: 65536, .. }
        ));
        assert!(err.to_string().contains("65536"), "{err}");
    }

    #[test]
    fn integers_that_would_be_rounded_are_refused() {
        let ok = AuditEvent::builder("a", "tool.call")
            .payload(json!({"max": 9007199254740991_i64, "min": -9007199254740991_i64, "f": 1e308, "tiny": 5e-324}))
            .build()
            .unwrap();
        assert!(ok.payload.contains("9007199254740991"), "{}", ok.payload);
        for big in [
            json!(9007199254740993_u64),
            json!(u64::MAX),
            json!(i64::MIN),
        ] {
            let err = AuditEvent::builder("a", "tool.call")
                .payload(json!({ "id": big }))
                .build()
                .unwrap_err();
            assert!(matches!(err, EventError::UnsafeInteger(_)), "{err}");
            assert!(err.to_string().contains("as a string"), "{err}");
        }
    }

    #[test]
    fn too_deep_payload_is_refused() {
        let mut v = json!(1);
        for _ in 0..200 {
            v = json!([v]);
        }
        let err = AuditEvent::builder("a", "tool.call")
            .payload(v)
            .build()
            .unwrap_err();
        assert!(matches!(err, EventError::PayloadTooDeep { .. }), "{err}");
    }

    #[test]
    fn validate_accepts_built_events_and_refuses_what_skips_the_builder() {
        let e = AuditEvent::builder("a", "tool.call")
            .session("s")
            .actor("alice")
            .payload(json!({"b": 1, "a": "é😀"}))
            .build()
            .unwrap();
        e.validate().unwrap();
        let mut bad = e.clone();
        bad.payload = r#"{"b":1,"a":"x"}"#.into();
        assert!(bad.validate().is_err(), "non-canonical payload");
        let mut bad = e.clone();
        bad.payload = "not json".into();
        assert!(bad.validate().is_err());
        let mut bad = e.clone();
        bad.kind = "Forged Kind".into();
        assert!(bad.validate().is_err());
        let mut bad = e.clone();
        bad.actor = Some("bob smith".into());
        assert!(bad.validate().is_err());
        let mut bad = e.clone();
        bad.payload = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_PAYLOAD_BYTES));
        assert!(bad.validate().is_err(), "oversize payload");
        let mut bad = e;
        bad.occurred_at += time::Duration::nanoseconds(1);
        assert!(bad.validate().is_err(), "sub-microsecond time");
    }

    #[test]
    fn personal_fields_are_checked_and_travel_with_the_event() {
        let e = AuditEvent::builder("a", "user.signup")
            .payload(json!({"email": "x@example.org", "name": "X", "plan": "pro"}))
            .personal("u-1", &["name", "email"])
            .personal("u-1", &["email"])
            .build()
            .unwrap();
        let p = e.personal.clone().unwrap();
        assert_eq!(
            (p.subject.as_str(), p.fields),
            ("u-1", vec!["email".to_owned(), "name".to_owned()])
        );
        e.validate().unwrap();
        for (b, why) in [
            (
                AuditEvent::builder("a", "user.signup")
                    .payload(json!({"a": 1}))
                    .personal("u", &["b"]),
                "top-level",
            ),
            (
                AuditEvent::builder("a", "user.signup")
                    .payload(json!([1]))
                    .personal("u", &["b"]),
                "object",
            ),
            (
                AuditEvent::builder("a", "user.signup")
                    .payload(json!({"a": 1}))
                    .personal("u", &["a"])
                    .personal("v", &["a"]),
                "one subject",
            ),
            (
                AuditEvent::builder("a", "user.signup")
                    .payload(json!({"a": 1}))
                    .personal("j@x y", &["a"]),
                "subject id",
            ),
            (
                AuditEvent::builder("a", "user.signup")
                    .payload(json!({"a": {"$gov.enc": "v1"}}))
                    .personal("u", &["a"]),
                "envelope",
            ),
        ] {
            let err = b.build().unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let err = AuditEvent::builder("", "tool.call").build().unwrap_err();
        assert!(err.to_string().contains("agent id"), "{err}");
        let err = AuditEvent::builder("a", "Tool").build().unwrap_err();
        assert!(err.to_string().contains("tool.call"), "{err}");
        let err = AuditEvent::builder("a", "tool.call")
            .actor("bob smith")
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("actor"), "{err}");
        let err = AuditEvent::builder("a", "tool.call")
            .session("s/1")
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("session id"), "{err}");
    }
}
