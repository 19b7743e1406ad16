//! Writing the chain as an attacker who holds the audit secret and the application role's
//! credentials could: sealed rows appended through the chain writer directly, with none of the
//! SDK's checks (reserved kinds, actors). Tests use it to seed exact rows (fixed times, any
//! kind) and to prove that what reads the record does not take such rows at their word.

use gov_audit::{AuditLog, AuditLogOptions, AuditSecret, KeyRing};
use gov_core::AuditEvent;
use gov_store::{Store, StoreOptions};

/// Appends `events` in order to `url`'s chains, sealed under `secret`, bypassing the SDK.
/// Panics on any failure (test support).
pub async fn append_unchecked(url: &str, secret: &str, events: Vec<AuditEvent>) {
    let store = Store::connect(url, &StoreOptions::default())
        .await
        .expect("forge: connect");
    let key = AuditSecret::parse(secret)
        .expect("forge: secret")
        .chain_key();
    let log = AuditLog::new(store, KeyRing::new(key), AuditLogOptions::default());
    for event in events {
        log.append(event).await.expect("forge: append");
    }
}
