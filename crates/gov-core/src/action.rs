//! The identity of an action: a tool and the hash of its canonical arguments. Loop detection
//! and approvals key on it, so the same call with the same arguments always hashes alike,
//! whatever the key order or spacing of the JSON.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::EventError;

/// SHA-256 over the tool name and the RFC 8785 canonical form of `args`.
pub fn action_hash(tool: &str, args: &Value) -> Result<[u8; 32], EventError> {
    let canonical = serde_json_canonicalizer::to_vec(args)
        .map_err(|e| EventError::NotCanonical(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(b"governance/action/v1\0");
    h.update((tool.len() as u64).to_be_bytes());
    h.update(tool.as_bytes());
    h.update(&canonical);
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter_but_values_and_tools_do() {
        let a = action_hash("send", &json!({"to": "a", "n": 1})).unwrap();
        let b = action_hash("send", &json!({"n": 1, "to": "a"})).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, action_hash("send", &json!({"n": 2, "to": "a"})).unwrap());
        assert_ne!(
            a,
            action_hash("sendx", &json!({"n": 1, "to": "a"})).unwrap()
        );
    }
}
