//! Console sessions end when their account changes, on both backends: a session token taken
//! before a password reset, a disable (even one followed by an enable) or a role change is
//! refused afterwards, and a sign-in that raced such a change starts no session.
//!
//! The attacker holds a stolen session cookie (or knows the old password) and keeps using it
//! after an admin revoked it through the real paths (`Admin`, as `governance console` does, and
//! `Operators` as an admin, as the console does).

use std::time::Duration;

use gov_sdk::admin::Admin;
use gov_sdk::{Error, Governance, OperatorRole};
use gov_testdb::{TestBackend, TestStore};

use crate::support::{OPERATOR_PW, SECRET};

const NEW_PW: &str = "another long enough password";
const TTL: Duration = Duration::from_secs(3600);

macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Postgres).await;
                }
            )+
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(gov_testdb::TestBackend::Sqlite).await;
                }
            )+
        }
    };
}

both_backends! {
    a_password_reset_ends_every_session_of_the_user,
    disable_then_enable_does_not_revive_a_session,
    a_role_change_ends_the_session_and_the_next_one_has_the_new_role,
    a_sign_in_that_raced_a_change_starts_no_session,
    only_a_fresh_sign_in_starts_a_session,
}

struct Setup {
    _db: TestStore,
    gov: Governance,
    admin: Admin,
}

async fn setup(backend: TestBackend) -> Setup {
    let db = TestStore::new(backend).await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    for (name, role) in [
        ("ada", OperatorRole::Admin),
        ("oscar", OperatorRole::Operator),
        ("vera", OperatorRole::Viewer),
    ] {
        gov.operators()
            .add(name, role, OPERATOR_PW)
            .await
            .expect("add user");
    }
    let admin = Admin::connect(db.url()).await.expect("admin");
    Setup {
        _db: db,
        gov,
        admin,
    }
}

impl Setup {
    /// Signs `user` in and returns the session token, as the console's login does.
    async fn sign_in(&self, user: &str, password: &str) -> String {
        let op = self
            .gov
            .operators()
            .authenticate(user, password)
            .await
            .expect("authenticate");
        let (token, _) = self
            .gov
            .operators()
            .start_session(&op, TTL)
            .await
            .expect("start a session");
        assert!(self.live(&token).await, "a new session works");
        token
    }

    async fn live(&self, token: &str) -> bool {
        self.gov
            .operators()
            .session(token)
            .await
            .expect("read the session")
            .is_some()
    }

    async fn close(self) {
        self.admin.close().await;
        self.gov.close().await;
    }
}

async fn a_password_reset_ends_every_session_of_the_user(backend: TestBackend) {
    let s = setup(backend).await;
    // Two browsers of oscar (one of them the attacker's stolen cookie), one of vera.
    let (laptop, stolen) = (
        s.sign_in("oscar", OPERATOR_PW).await,
        s.sign_in("oscar", OPERATOR_PW).await,
    );
    let other = s.sign_in("vera", OPERATOR_PW).await;
    s.admin
        .reset_operator_password("oscar", NEW_PW)
        .await
        .expect("reset");
    assert!(
        !s.live(&stolen).await,
        "{backend}: the stolen cookie outlived a reset"
    );
    assert!(
        !s.live(&laptop).await,
        "{backend}: every session of the user ends"
    );
    assert!(s.live(&other).await, "{backend}: other users keep theirs");
    // The old password no longer signs in; the new one does.
    assert!(matches!(
        s.gov.operators().authenticate("oscar", OPERATOR_PW).await,
        Err(Error::AuthenticationFailed)
    ));
    s.sign_in("oscar", NEW_PW).await;
    s.close().await;
}

async fn disable_then_enable_does_not_revive_a_session(backend: TestBackend) {
    let s = setup(backend).await;
    let stolen = s.sign_in("oscar", OPERATOR_PW).await;
    // Through the CLI's path (Admin).
    s.admin
        .set_operator_disabled("oscar", true)
        .await
        .expect("disable");
    assert!(!s.live(&stolen).await, "{backend}: disabled");
    s.admin
        .set_operator_disabled("oscar", false)
        .await
        .expect("enable");
    assert!(
        !s.live(&stolen).await,
        "{backend}: an enable revived a session taken before the disable"
    );
    // Through the console's path (an admin's Operator).
    let stolen = s.sign_in("vera", OPERATOR_PW).await;
    let ada = s
        .gov
        .operators()
        .authenticate("ada", OPERATOR_PW)
        .await
        .expect("ada");
    s.gov
        .operators()
        .set_disabled(&ada, "vera", true)
        .await
        .expect("disable");
    s.gov
        .operators()
        .set_disabled(&ada, "vera", false)
        .await
        .expect("enable");
    assert!(
        !s.live(&stolen).await,
        "{backend}: an enable revived a session taken before the disable"
    );
    s.sign_in("vera", OPERATOR_PW).await;
    s.close().await;
}

async fn a_role_change_ends_the_session_and_the_next_one_has_the_new_role(backend: TestBackend) {
    let s = setup(backend).await;
    let stolen = s.sign_in("oscar", OPERATOR_PW).await;
    s.admin
        .set_operator_role("oscar", OperatorRole::Viewer)
        .await
        .expect("demote");
    assert!(
        !s.live(&stolen).await,
        "{backend}: a session outlived a role change"
    );
    let token = s.sign_in("oscar", OPERATOR_PW).await;
    let session = s
        .gov
        .operators()
        .session(&token)
        .await
        .expect("session")
        .expect("live");
    assert_eq!(session.operator.role(), OperatorRole::Viewer);
    // As the console does: only an admin, never on their own account, never for a stranger.
    let ada = s
        .gov
        .operators()
        .authenticate("ada", OPERATOR_PW)
        .await
        .expect("ada");
    let vera = s
        .gov
        .operators()
        .authenticate("vera", OPERATOR_PW)
        .await
        .expect("vera");
    let ops = s.gov.operators();
    assert!(
        ops.set_role(&vera, "oscar", OperatorRole::Admin)
            .await
            .is_err()
    );
    assert!(
        ops.set_role(&ada, "ada", OperatorRole::Viewer)
            .await
            .is_err()
    );
    let unknown = ops
        .set_role(&ada, "nobody", OperatorRole::Viewer)
        .await
        .expect_err("unknown user");
    assert!(
        unknown.to_string().contains("no user named nobody"),
        "{unknown}"
    );
    ops.set_role(&ada, "oscar", OperatorRole::Operator)
        .await
        .expect("promote");
    assert!(
        !s.live(&token).await,
        "{backend}: a session outlived a role change"
    );
    s.close().await;
}

async fn a_sign_in_that_raced_a_change_starts_no_session(backend: TestBackend) {
    let s = setup(backend).await;
    // The attacker's password check passes, then the admin resets the password before the
    // session is stored: the session must not be stored (the reset could not end it).
    let checked = s
        .gov
        .operators()
        .authenticate("oscar", OPERATOR_PW)
        .await
        .expect("authenticate");
    s.admin
        .reset_operator_password("oscar", NEW_PW)
        .await
        .expect("reset");
    let r = s.gov.operators().start_session(&checked, TTL).await;
    assert!(
        matches!(r, Err(Error::AuthenticationFailed)),
        "{backend}: a sign-in with the old password started a session after the reset: {r:?}"
    );
    // The same for a disable, and for a role change.
    let checked = s
        .gov
        .operators()
        .authenticate("vera", OPERATOR_PW)
        .await
        .expect("authenticate");
    s.admin
        .set_operator_disabled("vera", true)
        .await
        .expect("disable");
    let r = s.gov.operators().start_session(&checked, TTL).await;
    assert!(
        matches!(r, Err(Error::AuthenticationFailed)),
        "{backend}: {r:?}"
    );
    // Enabled again, vera's account is exactly as her password was checked: her sign-in may
    // proceed (the password would pass again), and it is a new session, not a revived one.
    let checked = s
        .gov
        .operators()
        .authenticate("ada", OPERATOR_PW)
        .await
        .expect("authenticate");
    s.admin
        .set_operator_role("ada", OperatorRole::Viewer)
        .await
        .expect("demote");
    let r = s.gov.operators().start_session(&checked, TTL).await;
    assert!(
        matches!(r, Err(Error::AuthenticationFailed)),
        "{backend}: {r:?}"
    );
    s.close().await;
}

async fn only_a_fresh_sign_in_starts_a_session(backend: TestBackend) {
    let s = setup(backend).await;
    let token = s.sign_in("oscar", OPERATOR_PW).await;
    let session = s
        .gov
        .operators()
        .session(&token)
        .await
        .expect("session")
        .expect("live");
    // An operator read back from a session cookie cannot mint further sessions.
    let r = s
        .gov
        .operators()
        .start_session(&session.operator, TTL)
        .await;
    assert!(matches!(r, Err(Error::Config(_))), "{backend}: {r:?}");
    // The operator's Debug output names no password hash.
    let op = s
        .gov
        .operators()
        .authenticate("oscar", OPERATOR_PW)
        .await
        .expect("authenticate");
    let shown = format!("{op:?}");
    assert!(!shown.contains("argon2"), "{shown}");
    s.close().await;
}
