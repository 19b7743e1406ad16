//! Configuration of the [`Governance`](crate::Governance) handle: one builder, every option
//! documented in docs/configuration.md.

use std::sync::Arc;
use std::time::Duration;

use gov_audit::{AuditLog, AuditLogOptions, AuditSecret, KeyRing};
use gov_core::PresenceThresholds;
use gov_store::{Store, StoreOptions};

use crate::llm::LlmConfig;
use crate::{CostConfig, GateConfig, LoopConfig};

use crate::{
    ENV_AUDIT_SECRET, ENV_DATABASE_URL, ENV_LISTEN_DATABASE_URL, Error, Governance, Inner, Result,
};

/// Which enforcement modules are on. All are on by default; turning one off is an explicit
/// choice, logged as a warning when the handle connects. The audit chain and gates (which are
/// explicit calls) cannot be turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Modules {
    /// Scope checks; off: every tool and API is allowed and `filter_tools` shows everything.
    pub scope: bool,
    /// Budget enforcement; off: `check_or_raise` never refuses and `reserve` holds nothing,
    /// settling records the spend as `track` does.
    pub budgets: bool,
    /// Halt checks; off: `assert_not_halted` always passes (halts and resumes are still recorded).
    pub halts: bool,
    /// Loop detection; off: `loops().record` records nothing and never trips.
    pub loops: bool,
}

impl Default for Modules {
    fn default() -> Self {
        Self {
            scope: true,
            budgets: true,
            halts: true,
            loops: true,
        }
    }
}

/// Options in force for a handle.
#[derive(Debug, Clone)]
pub struct Config {
    /// Verify every row that `audit().events()` returns, and fail the read at a broken link.
    pub verify_chain_on_read: bool,
    /// Pool and timeouts.
    pub store: StoreOptions,
    /// Group-commit tuning.
    pub audit: AuditLogOptions,
    /// How long a cached "not halted" answer may be used (default 1 s). Halts made by any process
    /// invalidate the cache at once through NOTIFY; this bounds the delay if one is lost.
    pub halt_cache_ttl: Duration,
    /// Presence thresholds (idle, unresponsive).
    pub presence: PresenceThresholds,
    /// Loop detection.
    pub loops: LoopConfig,
    /// Prices and budget behaviour.
    pub cost: CostConfig,
    /// Gate request and approval lifetimes.
    pub gates: GateConfig,
    /// Which enforcement modules are on (default: all).
    pub modules: Modules,
    /// The LLM layer (`warn_on_no_wrappers`, `settle_in_background`).
    pub llm: LlmConfig,
    /// Whether observation is spooled while storage is out of reach (default on). Off, a
    /// handle neither writes nor adopts a spool: observation fails with the storage error.
    pub spool: bool,
    /// The spool folder: set with [`GovernanceBuilder::spool_dir`], else
    /// `GOVERNANCE_SPOOL_DIR`, else `governance/spool` in the user's state folder
    /// (`$XDG_STATE_HOME` or `~/.local/state` on Linux). After `connect`, the folder in use
    /// (`None` when spooling is off). It must be private to the user (docs/storage.md).
    pub spool_dir: Option<std::path::PathBuf>,
    /// The longest an observation (an audit event, tracked spend, a gate request) waits for
    /// storage before it is spooled instead (default 5 s; only with the spool on). A write
    /// that answers later is not written twice: the replay skips what storage already holds.
    pub observation_deadline: Duration,
    /// Chains whose head `connect` checks this handle may append to (default: `default`).
    /// Every other chain is checked before the handle's first append to it.
    pub chains_checked_on_connect: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            verify_chain_on_read: false,
            store: StoreOptions::default(),
            audit: AuditLogOptions::default(),
            halt_cache_ttl: Duration::from_secs(1),
            presence: PresenceThresholds::default(),
            loops: LoopConfig::default(),
            cost: CostConfig::default(),
            gates: GateConfig::default(),
            modules: Modules::default(),
            llm: LlmConfig::default(),
            spool: true,
            spool_dir: None,
            observation_deadline: Duration::from_secs(5),
            chains_checked_on_connect: vec![gov_core::ChainId::default().as_str().to_owned()],
        }
    }
}

/// Builds a [`Governance`] handle.
#[derive(Default)]
#[must_use]
pub struct GovernanceBuilder {
    database_url: Option<String>,
    secret: Option<std::result::Result<AuditSecret, gov_audit::KeyError>>,
    secret_from_env: bool,
    previous: Vec<std::result::Result<AuditSecret, gov_audit::KeyError>>,
    previous_from_env: bool,
    signing_key: Option<(String, String)>,
    signing_key_from_env: bool,
    url_from_env: bool,
    migrate: bool,
    config: Config,
}

impl std::fmt::Debug for GovernanceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernanceBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GovernanceBuilder {
    /// The database URL: `postgres://user:password@host:5432/db`, `sqlite:///path/to/file.db` or
    /// `sqlite::memory:` (see docs/storage.md).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Reads the database URL from `GOVERNANCE_DATABASE_URL` when none was given, and the
    /// listen URL from `GOVERNANCE_LISTEN_DATABASE_URL` when that is set
    /// ([`Self::listen_url_from_env`]).
    pub fn database_url_from_env(mut self) -> Self {
        self.url_from_env = true;
        self.listen_url_from_env()
    }

    /// Postgres: a direct URL to the same database for the notification listener, when the
    /// database URL goes through something that cannot carry `LISTEN` (a transaction-mode
    /// pooler, a proxy). Without it the listener uses the database URL. A URL that reaches
    /// another database is refused when the handle connects. See
    /// [`gov_store::StoreOptions::listen_url`] and docs/scaling.md.
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.config.store.listen_url = Some(url.into());
        self
    }

    /// Reads the listen URL ([`Self::listen_url`]) from `GOVERNANCE_LISTEN_DATABASE_URL` when
    /// it is set and none was given (unset: the listener uses the database URL).
    pub fn listen_url_from_env(mut self) -> Self {
        if self.config.store.listen_url.is_none()
            && let Ok(url) = std::env::var(ENV_LISTEN_DATABASE_URL)
            && !url.trim().is_empty()
        {
            self.config.store.listen_url = Some(url);
        }
        self
    }

    /// The audit secret, hex or base64, at least 32 bytes.
    pub fn audit_secret(mut self, secret: &str) -> Self {
        self.secret = Some(AuditSecret::parse(secret));
        self
    }

    /// An already parsed audit secret.
    pub fn audit_secret_parsed(mut self, secret: AuditSecret) -> Self {
        self.secret = Some(Ok(secret));
        self
    }

    /// Reads the audit secret from `GOVERNANCE_AUDIT_SECRET` when none was given.
    pub fn audit_secret_from_env(mut self) -> Self {
        self.secret_from_env = true;
        self.previous_from_env = true;
        self
    }

    /// Earlier audit secrets, for verifying chains that were rotated (`chain.key_rotated`):
    /// hex or base64 secrets separated by commas, spaces or newlines. New rows are always
    /// sealed with the current secret.
    pub fn previous_audit_secrets(mut self, secrets: &str) -> Self {
        self.previous.extend(parse_secret_list(secrets));
        self
    }

    /// An already parsed earlier audit secret.
    pub fn previous_audit_secret_parsed(mut self, secret: AuditSecret) -> Self {
        self.previous.push(Ok(secret));
        self
    }

    /// Reads earlier audit secrets from `GOVERNANCE_AUDIT_SECRET_PREVIOUS` (a list, like
    /// [`Self::previous_audit_secrets`]) and from the keyring file named by
    /// `GOVERNANCE_AUDIT_KEYRING_FILE` (one secret per line, `#` comments; refused when group or
    /// others may read it). `audit_secret_from_env()` implies this.
    pub fn previous_audit_secrets_from_env(mut self) -> Self {
        self.previous_from_env = true;
        self
    }

    /// Sign every row with Ed25519 over its `row_hmac`, with the key at `url` (`file:///path`,
    /// `env://VAR` or `ephemeral`), for the agent or instance `label`. The public key is
    /// registered at connect. A key that cannot be loaded does not fail `connect`: rows are then
    /// written with `signature_status = 'unsigned_local_failure'` and a warning is logged.
    pub fn signing_key(mut self, url: impl Into<String>, label: impl Into<String>) -> Self {
        self.signing_key = Some((url.into(), label.into()));
        self
    }

    /// Reads the signing key URL from `GOVERNANCE_SIGNING_KEY` (label from
    /// `GOVERNANCE_SIGNER_LABEL`, default `sdk`) when none was given.
    pub fn signing_key_from_env(mut self) -> Self {
        self.signing_key_from_env = true;
        self
    }

    /// With a signing key, store a signed checkpoint of a chain's head each time its seq passes
    /// a multiple of `n` (default: never).
    pub fn checkpoint_every(mut self, n: u64) -> Self {
        self.config.audit.checkpoint_every = Some(n);
        self
    }

    /// Verify what `audit().events()` returns (default off).
    pub fn verify_chain_on_read(mut self, on: bool) -> Self {
        self.config.verify_chain_on_read = on;
        self
    }

    /// Applies the embedded migrations when connecting (default: no; the schema must already be
    /// current; with it, a missing SQLite file is created). For embedded SQLite databases, a
    /// service's own tests (`sqlite::memory:` exists
    /// only inside this handle, so nothing else could migrate it) and demos. Production schemas
    /// are migrated by their owner with `governance migrate`.
    pub fn migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The chains `connect` checks this handle may append to (default: only `default`), so a
    /// handle configured with another secret than the one that sealed them fails at once:
    /// each chain must be new, or its head row proven sealed by this handle's current key (or
    /// a rotation marker proven to move the chain to it). A chain not listed is checked the
    /// same way before this handle's first append to it; a refusal is
    /// [`gov_audit::AuditError::NotWritable`] naming the chain's key fingerprint and this
    /// handle's. An empty list checks nothing at connect, for handles that only read or
    /// verify (the CLI's).
    pub fn check_chains_on_connect<I, S>(mut self, chains: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.chains_checked_on_connect = chains.into_iter().map(Into::into).collect();
        self
    }

    /// Maximum pooled connections (default 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.config.store.max_connections = n.max(1);
        self
    }

    /// How long to wait for a connection before storage counts as unavailable (default 5 s).
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.config.store.acquire_timeout = d;
        self
    }

    /// The longest one storage call may take before storage counts as out of reach (default
    /// 10 s): a server that stops answering without closing the connection never holds a
    /// check longer; enforcement then refuses. `None` removes the bound. Schema changes and
    /// imports are not bounded. See [`gov_store::StoreOptions::call_timeout`].
    pub fn storage_call_timeout(mut self, d: Option<Duration>) -> Self {
        self.config.store.call_timeout = d.map(|d| d.max(Duration::from_millis(1)));
        self
    }

    /// The clock the enforcement rules decide expiry on (reservations, session age, the UTC
    /// day, gate requests and approvals). The system clock unless set; tests pass
    /// [`Clock::manual`](crate::Clock::manual) and move it instead of sleeping. On Postgres the
    /// database's own clock stays a floor where the application role consumes an approval, so
    /// a clock set back cannot revive an expired approval.
    pub fn clock(mut self, clock: crate::Clock) -> Self {
        self.config.store.clock = clock;
        self
    }

    /// The longest an observation waits for storage before it is spooled (default 5 s; see
    /// [`Config::observation_deadline`]).
    pub fn observation_deadline(mut self, d: Duration) -> Self {
        self.config.observation_deadline = d.max(Duration::from_millis(1));
        self
    }

    /// Most events per group-commit transaction (default 1,000).
    pub fn max_batch_events(mut self, n: usize) -> Self {
        self.config.audit.max_batch_events = n.max(1);
        self
    }

    /// How long a cached "not halted" answer may be used (default 1 s).
    pub fn halt_cache_ttl(mut self, ttl: Duration) -> Self {
        self.config.halt_cache_ttl = ttl;
        self
    }

    /// Presence thresholds.
    pub fn presence_thresholds(mut self, t: PresenceThresholds) -> Self {
        self.config.presence = t;
        self
    }

    /// Loop detection settings.
    pub fn loop_detection(mut self, cfg: LoopConfig) -> Self {
        self.config.loops = cfg;
        self
    }

    /// Prices, unbudgeted agents, default `max_tokens`, reservation lifetime.
    pub fn cost(mut self, cfg: CostConfig) -> Self {
        self.config.cost = cfg;
        self
    }

    /// Turns enforcement modules on or off (default: all on).
    pub fn modules(mut self, modules: Modules) -> Self {
        self.config.modules = modules;
        self
    }

    /// Where observation is spooled while storage is out of reach (default:
    /// `GOVERNANCE_SPOOL_DIR`, else `governance/spool` in the user's state folder). The folder
    /// must belong to the user and be writable by no one else; it is created with mode 700.
    pub fn spool_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.config.spool_dir = Some(dir.into());
        self
    }

    /// Whether observation is spooled while storage is out of reach (default on). A handle
    /// with spooling off (operator tools, read-only handles) never writes a spool and never
    /// adopts one: `audit().log`, `cost().track` and `gates().request` then fail with the
    /// storage error.
    pub fn spool(mut self, on: bool) -> Self {
        self.config.spool = on;
        self
    }

    /// Gate request and approval lifetimes.
    pub fn gate_config(mut self, cfg: GateConfig) -> Self {
        self.config.gates = cfg;
        self
    }

    /// Lets agents without a budget policy spend (tracked, uncapped). Default: refused.
    pub fn allow_unbudgeted_agents(mut self, allow: bool) -> Self {
        self.config.cost.allow_unbudgeted = allow;
        self
    }

    /// Settle each governed LLM call, committing its `llm.response`, in a task of its own after
    /// the answer is returned (default on), or before returning it (`false`). Meanwhile the
    /// call's whole reservation stays held; `gov.llm().settled()` and `close()` wait for the
    /// tasks. See docs/configuration.md for what a crash in between leaves.
    pub fn settle_in_background(mut self, on: bool) -> Self {
        self.config.llm.settle_in_background = on;
        self
    }

    /// Warn when the handle has wrapped no LLM client `no_wrapper_grace` after connecting
    /// (default on).
    pub fn warn_on_no_wrappers(mut self, on: bool) -> Self {
        self.config.llm.warn_on_no_wrappers = on;
        self
    }

    /// How long after connecting a handle may go without wrapping an LLM client before
    /// `warn_on_no_wrappers` warns (default 60 s).
    pub fn no_wrapper_grace(mut self, grace: Duration) -> Self {
        self.config.llm.no_wrapper_grace = grace;
        self
    }

    /// Connects, checks that the schema is migrated, and returns the handle.
    pub async fn connect(self) -> Result<Governance> {
        let url = match self.database_url {
            Some(u) => u,
            None if self.url_from_env => std::env::var(ENV_DATABASE_URL).map_err(|_| {
                Error::Config(format!(
                    "no database URL: set {ENV_DATABASE_URL}=postgres://user:password@host:5432/database (or sqlite:///path/to/governance.db) or pass one"
                ))
            })?,
            None => {
                return Err(Error::Config(
                    "no database URL: call .database_url(..) or .database_url_from_env()".into(),
                ));
            }
        };
        let secret = match self.secret {
            Some(s) => s?,
            None if self.secret_from_env => match std::env::var(ENV_AUDIT_SECRET) {
                Ok(s) => AuditSecret::parse(&s)?,
                Err(_) => return Err(gov_audit::KeyError::Missing.into()),
            },
            None => return Err(gov_audit::KeyError::Missing.into()),
        };
        let mut previous = Vec::new();
        for p in self.previous {
            previous.push(p?);
        }
        if self.previous_from_env {
            previous.extend(previous_from_env()?);
        }
        let m = self.config.modules;
        for (on, name) in [
            (m.scope, "scope"),
            (m.budgets, "budgets"),
            (m.halts, "halts"),
            (m.loops, "loops"),
        ] {
            if !on {
                tracing::warn!(
                    module = name,
                    "enforcement module turned off by configuration"
                );
            }
        }
        let mut store_opts = self.config.store.clone();
        if store_opts.listen_url.is_some() && !url.starts_with("postgres") {
            return Err(Error::Config(format!(
                "a listen URL ({ENV_LISTEN_DATABASE_URL}) is for Postgres behind a pooler; this database URL is not Postgres: unset it"
            )));
        }
        // Only a handle that migrates may bring a SQLite file into being.
        store_opts.create_if_missing = self.migrate;
        let store = Store::connect(&url, &store_opts).await?;
        if self.migrate {
            store.migrate().await?;
        }
        store.check_schema().await?;
        store.check_listen_url().await?;
        let signing_key = self.signing_key.or_else(|| {
            if !self.signing_key_from_env {
                return None;
            }
            let url = std::env::var(ENV_SIGNING_KEY).ok()?;
            let label = std::env::var(ENV_SIGNER_LABEL).unwrap_or_else(|_| "sdk".into());
            Some((url, label))
        });
        let mut audit_opts = self.config.audit.clone();
        audit_opts.signing = match signing_key {
            None => gov_audit::SigningState::Off,
            Some((url, label)) => match gov_audit::Signer::load(&url, &label) {
                Ok(signer) => {
                    if store
                        .register_signer(signer.key_id(), &signer.public_key(), signer.label())
                        .await?
                    {
                        gov_audit::SigningState::On(Arc::new(signer))
                    } else {
                        tracing::warn!(
                            signer = signer.key_id(),
                            "the signing key's id is registered with another key: rows are written unsigned"
                        );
                        gov_audit::SigningState::Failed
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the signing key cannot be loaded: rows are written unsigned (signature_status unsigned_local_failure)");
                    gov_audit::SigningState::Failed
                }
            },
        };
        let audit = AuditLog::new(
            store.clone(),
            KeyRing::with_previous(
                secret.chain_key(),
                previous.iter().map(AuditSecret::chain_key),
            ),
            audit_opts,
        );
        // Refuse now, not at the first event, to append to a chain another key sealed.
        for chain in &self.config.chains_checked_on_connect {
            gov_core::ChainId::new(chain)?;
            audit.ensure_writable(chain).await?;
        }
        let mut config = self.config;
        let root = if config.spool {
            let root = config
                .spool_dir
                .clone()
                .or_else(|| std::env::var_os(crate::ENV_SPOOL_DIR).map(Into::into))
                .or_else(crate::spool::default_root)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "there is no per-user folder for the spool (HOME is not set): set {} or spool_dir(..) to a folder of your own, or turn spooling off with spool(false)",
                        crate::ENV_SPOOL_DIR
                    ))
                })?;
            Some(root)
        } else {
            None
        };
        config.spool_dir = root.clone();
        let instance = match root {
            Some(_) => Some(store.instance().await?),
            None => None,
        };
        let spool = crate::spool::Spool::open(crate::spool::Setup {
            root,
            instance,
            keys: crate::spool::format::Keys::new(
                (secret.chain_key().key_id().to_owned(), secret.spool_key()),
                previous
                    .iter()
                    .map(|p| (p.chain_key().key_id().to_owned(), p.spool_key())),
            ),
            max_batch: config.audit.max_batch_events,
            deadline: config.observation_deadline,
        })?;
        let spool_task = spool.shared();
        let shared = std::sync::Arc::new(crate::notify::Shared::default());
        let listener = crate::notify::start(store.clone(), shared.clone()).await;
        let gov = Governance {
            inner: std::sync::Arc::new(Inner {
                store,
                audit,
                config,
                shared,
                approval_key: secret.approval_key(),
                subjects: crate::personal::Subjects::new(
                    std::iter::once(secret.subject_kek())
                        .chain(previous.iter().map(|p| p.subject_kek()))
                        .collect(),
                ),
                llm: crate::llm::LlmState::new(&secret),
                spool,
                spool_task: std::sync::Mutex::new(None),
                loops: Default::default(),
                listener,
            }),
        };
        if let Some(sh) = spool_task {
            let task = tokio::spawn(crate::spool::run(std::sync::Arc::downgrade(&gov.inner), sh));
            if let Ok(mut t) = gov.inner.spool_task.lock() {
                *t = Some(task);
            }
        }
        if gov.inner.config.llm.warn_on_no_wrappers {
            tokio::spawn(crate::llm::watch_wrappers(std::sync::Arc::downgrade(
                &gov.inner,
            )));
        }
        Ok(gov)
    }
}

/// Environment variable holding earlier audit secrets (a list), for rotated chains.
pub const ENV_AUDIT_SECRET_PREVIOUS: &str = "GOVERNANCE_AUDIT_SECRET_PREVIOUS";
/// Environment variable naming a keyring file of earlier audit secrets.
pub const ENV_AUDIT_KEYRING_FILE: &str = "GOVERNANCE_AUDIT_KEYRING_FILE";

/// Splits a list of secrets on commas and whitespace, skipping `#` comments to the end of a line.
fn parse_secret_list(text: &str) -> Vec<std::result::Result<AuditSecret, gov_audit::KeyError>> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(|l| l.split([',', ' ', '\t']))
        .filter(|s| !s.trim().is_empty())
        .map(AuditSecret::parse)
        .collect()
}

fn previous_from_env() -> Result<Vec<AuditSecret>> {
    let mut out = Vec::new();
    let named = |e: gov_audit::KeyError, from: &str| {
        Error::Config(format!("an earlier audit secret in {from} is refused: {e}"))
    };
    if let Ok(list) = std::env::var(ENV_AUDIT_SECRET_PREVIOUS) {
        for s in parse_secret_list(&list) {
            out.push(s.map_err(|e| named(e, ENV_AUDIT_SECRET_PREVIOUS))?);
        }
    }
    if let Some(path) = std::env::var_os(ENV_AUDIT_KEYRING_FILE) {
        let path = std::path::PathBuf::from(path);
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| {
            Error::Config(format!(
                "cannot read the keyring file {shown} ({ENV_AUDIT_KEYRING_FILE}): {e}"
            ))
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .map_err(unreadable)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "the keyring file {shown} may be read by group or others (mode {:o}); run `chmod 600 {shown}`",
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(&path).map_err(unreadable)?;
        for s in parse_secret_list(&text) {
            out.push(s.map_err(|e| named(e, &shown))?);
        }
    }
    Ok(out)
}

/// Environment variable holding the signing key URL (`file:///path`, `env://VAR`, `ephemeral`).
pub const ENV_SIGNING_KEY: &str = "GOVERNANCE_SIGNING_KEY";
/// Environment variable naming the agent or instance the signing key signs for.
pub const ENV_SIGNER_LABEL: &str = "GOVERNANCE_SIGNER_LABEL";
