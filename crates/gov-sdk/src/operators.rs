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

/// A signed-in session: the operator as the database knows them now, and the session's CSRF
/// token (to embed in every form and check on every state-changing request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The operator, with their current role.
    pub operator: Operator,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// When the session ends.
    pub expires_at: time::OffsetDateTime,
}

/// 32 random bytes, URL-safe base64 (43 characters).
fn random_token() -> Result<String> {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|_| Error::Config("the system random source failed".into()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn token_hash(token: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

impl Operators<'_> {
    /// Starts a session for an authenticated operator, valid for `ttl`. Returns the session token
    /// (give it to the browser in an HttpOnly cookie; only its SHA-256 is stored) and the session.
    pub async fn start_session(
        &self,
        operator: &Operator,
        ttl: std::time::Duration,
    ) -> Result<(String, Session)> {
        let token = random_token()?;
        let csrf_token = random_token()?;
        let expires_at = time::OffsetDateTime::now_utc() + ttl;
        self.gov
            .inner
            .store
            .insert_session(
                &token_hash(&token),
                operator.username(),
                &csrf_token,
                expires_at,
            )
            .await?;
        Ok((
            token,
            Session {
                operator: operator.clone(),
                csrf_token,
                expires_at,
            },
        ))
    }

    /// Disables (or enables) a user, as the admin `by`: refused for other roles, for an unknown
    /// user, and for the admin's own account (so an admin cannot lock everyone out by mistake).
    pub async fn set_disabled(&self, by: &Operator, username: &str, disabled: bool) -> Result<()> {
        if by.role != OperatorRole::Admin {
            return Err(Error::Config(
                "only an admin may disable or enable users".into(),
            ));
        }
        if by.username == username {
            return Err(Error::Config(
                "you cannot disable or enable your own account".into(),
            ));
        }
        match self
            .gov
            .inner
            .store
            .update_operator(username, Some(disabled), None)
            .await?
        {
            true => Ok(()),
            false => Err(Error::Config(format!("no user named {username}"))),
        }
    }

    /// Adds a user, as the admin `by` (refused for other roles).
    pub async fn add_as(
        &self,
        by: &Operator,
        username: &str,
        role: OperatorRole,
        password: &str,
    ) -> Result<()> {
        if by.role != OperatorRole::Admin {
            return Err(Error::Config("only an admin may add users".into()));
        }
        self.add(username, role, password).await
    }

    /// Every console/CLI user (never their password hashes).
    pub async fn list(&self) -> Result<Vec<crate::admin::OperatorInfo>> {
        Ok(self
            .gov
            .inner
            .store
            .operators()
            .await?
            .into_iter()
            .map(
                |(username, role, disabled, created_at)| crate::admin::OperatorInfo {
                    username,
                    role,
                    disabled,
                    created_at,
                },
            )
            .collect())
    }

    /// The live session of `token`: `None` when unknown, expired, or its user was disabled.
    pub async fn session(&self, token: &str) -> Result<Option<Session>> {
        if token.len() != 43 {
            return Ok(None);
        }
        Ok(self
            .gov
            .inner
            .store
            .session(&token_hash(token))
            .await?
            .map(|s| Session {
                operator: Operator {
                    username: s.username,
                    role: s.role,
                },
                csrf_token: s.csrf_token,
                expires_at: s.expires_at,
            }))
    }

    /// Ends the session of `token` (signing out).
    pub async fn end_session(&self, token: &str) -> Result<()> {
        Ok(self
            .gov
            .inner
            .store
            .delete_session(&token_hash(token))
            .await?)
    }
}
