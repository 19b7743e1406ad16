//! DSSE, the Dead Simple Signing Envelope (github.com/secure-systems-lab/dsse, protocol 1.0.0),
//! with Ed25519 signatures (pure).
//!
//! ```text
//! envelope  = {"payloadType": TYPE, "payload": base64(BODY), "signatures": [{"keyid": ID, "sig": base64(SIG)}]}
//! SIG       = Ed25519(PAE(UTF8(TYPE), BODY))
//! PAE(t, b) = "DSSEv1" SP LEN(t) SP t SP LEN(b) SP b      SP = 0x20, LEN = decimal byte length
//! ```
//!
//! The payload type is authenticated (it is inside the PAE); the key id is a hint only and is
//! never trusted here: the caller says which public key a signature must verify under. As the
//! spec requires, base64 is read in either alphabet (standard or URL-safe, padded or not); one
//! string may not mix them. Governance writes the standard alphabet, padded.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::signing::{Signer, verify_with};

/// Why an envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DsseError {
    /// The bytes are not a DSSE JSON envelope.
    #[error("not a DSSE envelope: {0}")]
    Malformed(String),
    /// A base64 field does not decode.
    #[error("the envelope's {0} is not base64")]
    Base64(&'static str),
    /// The payload type is not the one expected.
    #[error("the payload type is {got:?}, expected {want:?}")]
    PayloadType {
        /// The envelope's.
        got: String,
        /// The expected one.
        want: String,
    },
    /// No signature verifies under the key given.
    #[error("no signature of the envelope verifies under the key given")]
    BadSignature,
}

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    /// The key hint (optional in the spec; governance always writes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// base64 of the signature.
    pub sig: String,
}

/// A DSSE JSON envelope, fields as text (decoded on use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// How to read the payload.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// base64 of the serialized body.
    pub payload: String,
    /// The signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// `PAE(UTF8(payload_type), body)`.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let t = payload_type.as_bytes();
    let mut out = Vec::with_capacity(t.len() + body.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(t.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(t);
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// Decodes base64 in either alphabet, padded or not (never both alphabets in one string).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let url = s.contains(['-', '_']);
    if url && s.contains(['+', '/']) {
        return None;
    }
    let padded = s.ends_with('=');
    let engine = match (url, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    engine.decode(s).ok()
}

impl Envelope {
    /// Signs `body` as `payload_type` with `signer`, naming the key `keyid`.
    pub fn sign(payload_type: &str, body: &[u8], signer: &Signer, keyid: &str) -> Self {
        let sig = signer.sign(&pae(payload_type, body));
        Self {
            payload_type: payload_type.to_owned(),
            payload: STANDARD.encode(body),
            signatures: vec![EnvelopeSignature {
                keyid: Some(keyid.to_owned()),
                sig: STANDARD.encode(sig),
            }],
        }
    }

    /// Parses the JSON form.
    pub fn parse(bytes: &[u8]) -> Result<Self, DsseError> {
        serde_json::from_slice(bytes).map_err(|e| DsseError::Malformed(e.to_string()))
    }

    /// The JSON form governance writes: one line, the fields in the order above, a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The decoded payload (not yet authenticated).
    pub fn body(&self) -> Result<Vec<u8>, DsseError> {
        decode_base64(&self.payload).ok_or(DsseError::Base64("payload"))
    }

    /// Checks that the payload type is `want` and that a signature verifies under `public`
    /// (Ed25519) over the PAE; returns the authenticated body.
    pub fn verify(&self, want: &str, public: &[u8; 32]) -> Result<Vec<u8>, DsseError> {
        let body = self.body()?;
        let sigs = self
            .signatures
            .iter()
            .map(|s| decode_base64(&s.sig).ok_or(DsseError::Base64("signature")))
            .collect::<Result<Vec<_>, _>>()?;
        let msg = pae(&self.payload_type, &body);
        if !sigs.iter().any(|s| verify_with(public, &msg, s)) {
            return Err(DsseError::BadSignature);
        }
        if self.payload_type != want {
            return Err(DsseError::PayloadType {
                got: self.payload_type.clone(),
                want: want.to_owned(),
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: &str) -> Signer {
        let mut s = [0u8; 32];
        hex::decode_to_slice(seed, &mut s).expect("hex");
        Signer::from_key(SigningKey::from_bytes(&s), "dsse")
    }

    /// The example of the spec's protocol.md ("Test Vectors"): the PAE of "hello world" as
    /// `http://example.com/HelloWorld`.
    #[test]
    fn the_protocol_example_pae() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    const KEY_A: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const KEY_B: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const IN_TOTO: &str = "application/vnd.in-toto+json";
    const STATEMENT: &str = "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==";
    const SIG_A: &str =
        "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==";

    /// secure-systems-lab/dsse testvectors/vectors.json (keys A and B are RFC 8032's test keys
    /// 1 and 2): each vector's PAE, the Ed25519 signature byte for byte (Ed25519 is
    /// deterministic), and accept or reject as the file says.
    #[test]
    fn the_published_dsse_vectors() {
        let (a, b) = (key(KEY_A), key(KEY_B));
        assert_eq!(
            hex::encode(a.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        // single-signature: PAE and signature byte for byte.
        let body = STANDARD.decode(STATEMENT).unwrap();
        let want_pae = "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203433207b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d656e742f7631227d";
        assert_eq!(hex::encode(pae(IN_TOTO, &body)), want_pae);
        let env = Envelope::sign(IN_TOTO, &body, &a, "A");
        assert_eq!(env.payload, STATEMENT);
        assert_eq!(env.signatures[0].sig, SIG_A);
        assert_eq!(env.verify(IN_TOTO, &a.public_key()).unwrap(), body);
        assert_eq!(
            env.verify(IN_TOTO, &b.public_key()),
            Err(DsseError::BadSignature)
        );
        // url-safe-base64: verifiers must accept either alphabet.
        let url = Envelope {
            payload_type: IN_TOTO.into(),
            payload: "-_-_Pj8=".into(),
            signatures: vec![EnvelopeSignature {
                keyid: Some("A".into()),
                sig: "P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==".into(),
            }],
        };
        assert_eq!(
            hex::encode(pae(IN_TOTO, &url.body().unwrap())),
            "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203520fbffbf3e3f"
        );
        assert!(url.verify(IN_TOTO, &a.public_key()).is_ok());
        // payload-type-swapped: the signature covers the type, so another type fails.
        let mut swapped = env.clone();
        swapped.payload_type = "application/vnd.example.other+json".into();
        assert_eq!(
            swapped.verify("application/vnd.example.other+json", &a.public_key()),
            Err(DsseError::BadSignature)
        );
        // non-ascii-payload-type: LEN is the byte length (29), not the 28 characters.
        let t = "application/vnd.ex\u{e4}mple+json";
        assert!(hex::encode(pae(t, &body)).starts_with(
            "445353457631203239206170706c69636174696f6e2f766e642e6578c3a46d706c652b6a736f6e2034332"
        ));
        assert_eq!(
            Envelope::sign(t, &body, &a, "A").signatures[0].sig,
            "xmSk/ug66ysT7ayhkCIjhAq42zgZXSsEWuzUaNL7w2eGAdF/NU6/fRXPtmfN+5DNSAs5/i2lUnHjbbjPsu0tAw=="
        );
        // empty-payload: "... 0 " with a trailing space.
        assert_eq!(
            hex::encode(pae(IN_TOTO, b"")),
            "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e203020"
        );
        assert_eq!(
            Envelope::sign(IN_TOTO, b"", &a, "A").signatures[0].sig,
            "gSggCAaTLTYyRH6FIDBem6meyIynsYy8RTHVzwx9tnTb7Bg/1jMWnuVgI/gffqmbsC2VX5/jHfkkDqsj7CDbDg=="
        );
        // empty-payload-type: a valid signature, but a type no verifier supports.
        let empty = Envelope::sign("", &body, &a, "A");
        assert_eq!(
            empty.signatures[0].sig,
            "iC3q/+3Rm0+lpAJRueDmDh15PnwCfxKmS0NAfKsbv+zgulXQC/WM9trc+j1XEqlwDIg/vf/uNfebeD6sxInrDg=="
        );
        assert!(matches!(
            empty.verify(IN_TOTO, &a.public_key()),
            Err(DsseError::PayloadType { .. })
        ));
        // threshold-two-distinct-keys: B's signature byte for byte.
        assert_eq!(
            Envelope::sign(IN_TOTO, &body, &b, "B").signatures[0].sig,
            "c1+67/aT0yqEpwx8PsVY3MLHsj9D0CZ014/Fv/QlG59P+9CobUZ7xECJ/V3USG0Ob9CiE5LjReEZUzNF2l7eBw=="
        );
    }

    #[test]
    fn the_json_form_round_trips_and_mixed_base64_is_refused() {
        let a = key(KEY_A);
        let env = Envelope::sign(IN_TOTO, b"{}", &a, "A");
        let bytes = env.to_bytes();
        assert!(bytes.starts_with(b"{\"payloadType\":"));
        assert_eq!(Envelope::parse(&bytes).unwrap(), env);
        assert_eq!(decode_base64("+-=="), None);
        assert!(matches!(
            Envelope::parse(b"{\"payload\":\"\"}"),
            Err(DsseError::Malformed(_))
        ));
    }
}
