//! Agent authentication: the gateway key from `Authorization: Bearer` or `x-api-key`, checked
//! through the SDK (`Governance::authenticate_agent_key`), with a short cache of keys already
//! accepted (by the SHA-256 of the key, never the key itself). Only accepted keys are cached,
//! so a revoked key is refused at most `key_cache` after its revocation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};

/// Most entries kept; the cache is cleared when full.
const MAX_ENTRIES: usize = 10_000;

/// Accepted keys, by hash, with the agent and when they were accepted.
#[derive(Debug)]
pub(crate) struct KeyCache {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl KeyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::default(),
        }
    }
}

/// The key the request presents, if any.
pub(crate) fn presented(headers: &HeaderMap) -> Option<SecretString> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(SecretString::from(v.trim().to_owned()));
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| SecretString::from(token.trim().to_owned()))
}

impl crate::Gateway {
    /// The agent the request's key authenticates; `None` for no key or a bad one.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> gov_sdk::Result<Option<String>> {
        use secrecy::ExposeSecret as _;
        let Some(key) = presented(headers) else {
            return Ok(None);
        };
        let digest: [u8; 32] = Sha256::digest(key.expose_secret().as_bytes()).into();
        let cache = &self.keys;
        if !cache.ttl.is_zero() {
            let map = cache
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((agent, at)) = map.get(&digest)
                && at.elapsed() < cache.ttl
            {
                return Ok(Some(agent.clone()));
            }
        }
        let agent = self.gov.authenticate_agent_key(&key).await?;
        if let Some(agent) = &agent
            && !cache.ttl.is_zero()
        {
            let mut map = cache
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(digest, (agent.clone(), Instant::now()));
        }
        Ok(agent)
    }
}
