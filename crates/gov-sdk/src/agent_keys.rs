//! Agents' gateway keys: the identity an agent presents to `governance gateway serve`.
//!
//! A key is `gk1_<id>_<secret>`: a public id of 16 random bytes (32 hex digits) and a secret of
//! 32 random bytes (base64url). It is shown once, when made; only its SHA-256 is stored. The
//! owner makes, lists and revokes keys ([`Admin`]); a gateway, connected as the application
//! role, looks up only the key it was presented, by its id, and compares the hashes in constant
//! time ([`Governance::authenticate_agent_key`]). This module must never log, store or return a
//! key after [`Admin::add_gateway_key`] returned it.

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

pub use gov_store::GatewayKeyInfo;

use gov_core::OperatorRole;
use gov_core::events::{self, SystemEvent as _};

use crate::admin::Admin;
use crate::{Error, Governance, Operator, Result};

/// The prefix every gateway key starts with.
pub const KEY_PREFIX: &str = "gk1_";

/// A key just made: the only time its secret exists outside the agent.
#[derive(Debug)]
pub struct NewGatewayKey {
    /// The key's public id (what `list-keys` shows and `revoke-key` takes).
    pub id: String,
    /// The agent it authenticates.
    pub agent: String,
    /// The key itself (redacted in `Debug`).
    pub key: SecretString,
}

/// The id of a well-formed key, or `None`.
fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (id_ok && secret.len() == 43).then_some(id)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Makes a key for `agent` and stores its hash: the only time the key exists in full.
async fn make_key(store: &gov_store::Store, agent: &str, label: &str) -> Result<NewGatewayKey> {
    gov_core::AgentId::new(agent).map_err(|e| Error::Config(format!("agent: {e}")))?;
    if label.chars().count() > 200 || label.chars().any(char::is_control) {
        return Err(Error::Config(
            "the label must be at most 200 printable characters".into(),
        ));
    }
    let mut id = [0u8; 16];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id)
        .and_then(|()| getrandom::fill(&mut secret))
        .map_err(|_| Error::Config("the system random source failed".into()))?;
    let id = hex::encode(id);
    let key = format!(
        "{KEY_PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let row = gov_store::GatewayKeyRow {
        id: id.clone(),
        agent: agent.to_owned(),
        key_hash: hash(&key).to_vec(),
        label: label.to_owned(),
    };
    store.add_gateway_key(&row).await?;
    Ok(NewGatewayKey {
        id,
        agent: agent.to_owned(),
        key: SecretString::from(key),
    })
}

impl Admin {
    /// Makes a key for `agent` (with an operator's note `label`) and returns it: the only time
    /// it is shown. Run as the schema owner; the application role cannot. (An `Admin` holds no
    /// audit secret, so this is not recorded in the chain; [`GatewayKeys::add`] is.)
    pub async fn add_gateway_key(&self, agent: &str, label: &str) -> Result<NewGatewayKey> {
        make_key(self.store(), agent, label).await
    }

    /// The gateway keys (of `agent`, or every agent's), oldest first: ids, agents, labels and
    /// dates, never a secret or a hash.
    pub async fn gateway_keys(&self, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>> {
        Ok(self.store().gateway_keys(agent).await?)
    }

    /// Revokes the key with this id: the gateway refuses it from then on (after at most its
    /// key cache's lifetime); `false` when no unrevoked key has that id.
    pub async fn revoke_gateway_key(&self, id: &str) -> Result<bool> {
        Ok(self.store().revoke_gateway_key(id).await?)
    }
}

/// Gateway keys managed by an authenticated admin through a [`Governance`] handle (the
/// console): each key made or revoked is recorded in the chain (`agent.key_added`,
/// `agent.key_revoked`, under the key's agent, the admin as actor; the key's id, never the key).
/// The handle must connect as the schema owner, like the console.
#[derive(Debug, Clone, Copy)]
pub struct GatewayKeys<'g> {
    gov: &'g Governance,
}

fn require_admin(by: &Operator, what: &str) -> Result<()> {
    if by.role() == OperatorRole::Admin {
        Ok(())
    } else {
        Err(Error::Config(format!("only an admin may {what}")))
    }
}

impl GatewayKeys<'_> {
    /// Makes a key for `agent`, as the admin `by`, and records `agent.key_added`; the returned
    /// key is the only time it is shown.
    pub async fn add(&self, by: &Operator, agent: &str, label: &str) -> Result<NewGatewayKey> {
        require_admin(by, "make gateway keys")?;
        let key = make_key(&self.gov.inner.store, agent, label).await?;
        let event = events::GatewayKeyAdded(events::GatewayKeyChange {
            key_id: key.id.clone(),
            label: label.to_owned(),
            operator: by.username().to_owned(),
        })
        .event(agent)
        .actor(by.username())
        .build()?;
        self.gov.audit().record(event).await?;
        Ok(key)
    }

    /// The keys (of `agent`, or every agent's), oldest first, without secrets; admins only.
    pub async fn list(&self, by: &Operator, agent: Option<&str>) -> Result<Vec<GatewayKeyInfo>> {
        require_admin(by, "list gateway keys")?;
        Ok(self.gov.inner.store.gateway_keys(agent).await?)
    }

    /// Revokes the key with this id, as the admin `by`, and records `agent.key_revoked`;
    /// `false` (and nothing recorded) when no unrevoked key has that id.
    pub async fn revoke(&self, by: &Operator, id: &str) -> Result<bool> {
        require_admin(by, "revoke gateway keys")?;
        let store = &self.gov.inner.store;
        let Some(info) = store
            .gateway_keys(None)
            .await?
            .into_iter()
            .find(|k| k.id == id && k.revoked_at.is_none())
        else {
            return Ok(false);
        };
        if !store.revoke_gateway_key(id).await? {
            return Ok(false);
        }
        let event = events::GatewayKeyRevoked(events::GatewayKeyChange {
            key_id: info.id,
            label: info.label,
            operator: by.username().to_owned(),
        })
        .event(&info.agent)
        .actor(by.username())
        .build()?;
        self.gov.audit().record(event).await?;
        Ok(true)
    }
}

impl Governance {
    /// Gateway keys, for an authenticated admin (the console's keys page).
    pub fn gateway_keys(&self) -> GatewayKeys<'_> {
        GatewayKeys { gov: self }
    }

    /// The agent a presented gateway key authenticates, or `None` for a malformed, unknown or
    /// revoked key (never which of these). The stored hash is compared in constant time.
    pub async fn authenticate_agent_key(&self, presented: &SecretString) -> Result<Option<String>> {
        let presented = presented.expose_secret();
        let Some(id) = key_id(presented) else {
            return Ok(None);
        };
        let Some((agent, stored)) = self.inner.store.gateway_key(id).await? else {
            return Ok(None);
        };
        let ok: bool = hash(presented).as_slice().ct_eq(stored.as_slice()).into();
        Ok(ok.then_some(agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_keys_have_an_id() {
        let id = "0123456789abcdef0123456789abcdef";
        let secret = "A".repeat(43);
        assert_eq!(key_id(&format!("gk1_{id}_{secret}")), Some(id));
        assert_eq!(key_id(&format!("gk1_{id}_{}", "A".repeat(42))), None);
        assert_eq!(key_id(&format!("gk1_{}_{secret}", id.to_uppercase())), None);
        assert_eq!(key_id(&format!("sk-{id}_{secret}")), None);
        assert_eq!(key_id(""), None);
    }
}
