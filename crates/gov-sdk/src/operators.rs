//! Operators: the people (console and CLI users) who approve, deny, halt and resume.
//!
//! Passwords are argon2id hashes. An [`Operator`] value exists only after a successful
//! [`Operators::authenticate`]; approving or denying takes one. An unknown user, a wrong password
//! and a disabled account get the same answer after the same work, so names cannot be probed.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use gov_core::OperatorRole;

use crate::{Error, Governance, Result};

/// An authenticated operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    username: String,
    role: OperatorRole,
}

impl Operator {
    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The role.
    pub fn role(&self) -> OperatorRole {
        self.role
    }
}

/// A hash verified when the user does not exist, so that path costs the same.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$7DVRuMQzJRIbcQkSrgfYvPQzOAtnyHAdSxG7t/0rhTs";

/// Operator accounts of a [`Governance`] handle.
#[derive(Debug, Clone, Copy)]
pub struct Operators<'g> {
    gov: &'g Governance,
}

/// Checks a new password (at least 12 characters) and hashes it with argon2id.
pub(crate) fn hash_new_password(password: &str) -> Result<String> {
    if password.chars().count() < 12 {
        return Err(Error::Config(
            "the password must be at least 12 characters long".into(),
        ));
    }
    Ok(Argon2::default()
        .hash_password(password.as_bytes())
        .map_err(|e| Error::Config(format!("could not hash the password: {e}")))?
        .to_string())
}

impl<'g> Operators<'g> {
    pub(crate) fn new(gov: &'g Governance) -> Self {
        Self { gov }
    }

    /// Adds an operator. Needs a connection that may write operator accounts (the schema owner).
    pub async fn add(&self, username: &str, role: OperatorRole, password: &str) -> Result<()> {
        crate::admin::add_operator(&self.gov.inner.store, username, role, password).await
    }

    /// Checks a user name and password. Unknown users, wrong passwords and disabled accounts
    /// all get [`Error::AuthenticationFailed`].
    pub async fn authenticate(&self, username: &str, password: &str) -> Result<Operator> {
        let record = self.gov.inner.store.operator(username).await?;
        let hash = record
            .as_ref()
            .map(|r| r.password_hash.as_str())
            .unwrap_or(DUMMY_HASH);
        let password = password.to_owned();
        let hash = hash.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(password.as_bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        match record {
            Some(r) if ok && !r.disabled => Ok(Operator {
                username: r.username,
                role: r.role,
            }),
            _ => Err(Error::AuthenticationFailed),
        }
    }
}
