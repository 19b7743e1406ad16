//! Operators: the people (console and CLI users) who approve, deny, halt and resume.
//!
//! Passwords are argon2id hashes. An [`Operator`] value exists only after a successful
//! [`Operators::authenticate`] (or from a live [`Session`]); approving or denying takes one. An
//! unknown user, a wrong password and a disabled account get the same answer after the same
//! work, so names cannot be probed.
//!
//! Every change to an account (password reset, disable, enable, role change) ends all of its
//! console sessions in the same transaction, and a session starts only for the account as it was
//! when its password was checked, so no session outlives a revocation.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use gov_core::OperatorRole;
use gov_store::{NewSession, OperatorChange};

use crate::{Error, Governance, Result};

/// An authenticated operator.
#[derive(Clone)]
pub struct Operator {
    username: String,
    role: OperatorRole,
    /// The password hash the password was verified against, when this value comes from
    /// [`Operators::authenticate`]: a session starts only for the account still in that state.
    verified_hash: Option<String>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Operators are the same when they name the same user with the same role.
impl PartialEq for Operator {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username && self.role == other.role
    }
}

impl Eq for Operator {}

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
                verified_hash: Some(r.password_hash),
            }),
            _ => Err(Error::AuthenticationFailed),
        }
    }
}

/// Applies `change` to `username`'s account and ends all of its console sessions (one
/// transaction); an unknown user is a configuration error.
pub(crate) async fn change_operator(
    store: &gov_store::Store,
    username: &str,
    change: &OperatorChange<'_>,
) -> Result<()> {
    if store.update_operator(username, change).await? {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "no user named {username}; see `governance console list-users`"
        )))
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
    /// Starts a session for an operator just returned by [`Self::authenticate`], valid for
    /// `ttl`. Returns the session token (give it to the browser in an HttpOnly cookie; only its
    /// SHA-256 is stored) and the session. The session is stored only if the account is still
    /// enabled with the password and role it was authenticated with, so a sign-in that races a
    /// password reset, a disable or a role change gets [`Error::AuthenticationFailed`] instead
    /// of a session the change would not end. An operator taken from a [`Session`] cannot start
    /// another one.
    pub async fn start_session(
        &self,
        operator: &Operator,
        ttl: std::time::Duration,
    ) -> Result<(String, Session)> {
        let Some(verified_hash) = operator.verified_hash.as_deref() else {
            return Err(Error::Config(
                "a console session starts only from a sign-in (Operators::authenticate)".into(),
            ));
        };
        let token = random_token()?;
        let csrf_token = random_token()?;
        let expires_at = time::OffsetDateTime::now_utc() + ttl;
        let started = self
            .gov
            .inner
            .store
            .insert_session(&NewSession {
                token_hash: &token_hash(&token),
                username: operator.username(),
                role: operator.role,
                password_hash: verified_hash,
                csrf_token: &csrf_token,
                expires_at,
            })
            .await?;
        if !started {
            return Err(Error::AuthenticationFailed);
        }
        Ok((
            token,
            Session {
                operator: Operator {
                    verified_hash: None,
                    ..operator.clone()
                },
                csrf_token,
                expires_at,
            },
        ))
    }

    /// Disables (or enables) a user, as the admin `by`: refused for other roles, for an unknown
    /// user, and for the admin's own account (so an admin cannot lock everyone out by mistake).
    /// Either way every console session of the user ends.
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
        let change = OperatorChange {
            disabled: Some(disabled),
            ..OperatorChange::default()
        };
        change_operator(&self.gov.inner.store, username, &change).await
    }

    /// Changes a user's role, as the admin `by`: refused for other roles, for an unknown user,
    /// and for the admin's own account (so the last admin cannot demote themselves). Every
    /// console session of the user ends; they sign in again under the new role.
    pub async fn set_role(&self, by: &Operator, username: &str, role: OperatorRole) -> Result<()> {
        if by.role != OperatorRole::Admin {
            return Err(Error::Config("only an admin may change roles".into()));
        }
        if by.username == username {
            return Err(Error::Config("you cannot change your own role".into()));
        }
        let change = OperatorChange {
            role: Some(role),
            ..OperatorChange::default()
        };
        change_operator(&self.gov.inner.store, username, &change).await
    }

    /// Replaces a user's password, as the admin `by`: refused for other roles, for an unknown
    /// user, and for the admin's own account (`governance console reset-password` does that).
    /// Every console session of the user ends in the same transaction.
    pub async fn reset_password(
        &self,
        by: &Operator,
        username: &str,
        password: &str,
    ) -> Result<()> {
        if by.role != OperatorRole::Admin {
            return Err(Error::Config("only an admin may reset passwords".into()));
        }
        if by.username == username {
            return Err(Error::Config(
                "you cannot reset your own password here; use `governance console reset-password`"
                    .into(),
            ));
        }
        let hash = hash_new_password(password)?;
        let change = OperatorChange {
            password_hash: Some(&hash),
            ..OperatorChange::default()
        };
        change_operator(&self.gov.inner.store, username, &change).await
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

    /// Each user's last console sign-in (users who never signed in are absent), by user name.
    pub async fn last_sign_ins(&self) -> Result<Vec<(String, time::OffsetDateTime)>> {
        Ok(self.gov.inner.store.last_sign_ins().await?)
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
                    verified_hash: None,
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
