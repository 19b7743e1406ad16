//! Multi-host URLs and `target_session_attrs`: which server of a list the pool talks to.
//!
//! A URL may name several servers, as libpq's do:
//! `postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write`. The servers are tried
//! in order and the first one that satisfies `target_session_attrs` (default `any`) is used.
//! Every new connection of the pool is checked again (a server demoted to a standby, or a
//! restarted old primary the failover manager made read-only, is refused rather than written
//! to), and while more than one server is named or an attribute is asked for, a monitor checks
//! the server in use every [`MONITOR_EVERY`] and moves the pool to whichever server satisfies
//! the attribute when the one in use no longer answers or no longer does.
//!
//! Nothing here names a host, a user or a URL in an error: servers are "server 2 of 3".

use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

use crate::{Result, StoreError, StoreOptions};

/// How often the monitor checks the server in use (multi-host URLs and attributes only).
pub(crate) const MONITOR_EVERY: Duration = Duration::from_millis(500);

/// What a server must be to be used (libpq's `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl Attrs {
    fn parse(v: &str) -> Result<Self> {
        Ok(match v {
            "any" => Self::Any,
            "read-write" => Self::ReadWrite,
            "read-only" => Self::ReadOnly,
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "prefer-standby" => Self::PreferStandby,
            _ => {
                return Err(StoreError::InvalidUrl(
                    "target_session_attrs must be one of any, read-write, read-only, primary, standby, prefer-standby".into(),
                ));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
            Self::Primary => "primary",
            Self::Standby => "standby",
            Self::PreferStandby => "prefer-standby",
        }
    }
}

/// What a server said it is.
#[derive(Debug, Clone, Copy)]
struct Role {
    in_recovery: bool,
    read_only: bool,
}

impl Role {
    fn satisfies(self, attrs: Attrs) -> bool {
        match attrs {
            Attrs::Any | Attrs::PreferStandby => true,
            Attrs::ReadWrite => !self.read_only && !self.in_recovery,
            Attrs::ReadOnly => self.read_only || self.in_recovery,
            Attrs::Primary => !self.in_recovery,
            Attrs::Standby => self.in_recovery,
        }
    }

    fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby",
            (false, true) => "read-only",
            (false, false) => "a read-write primary",
        }
    }
}

async fn role_of(conn: &mut sqlx::PgConnection) -> std::result::Result<Role, sqlx::Error> {
    // language=PostgreSQL
    let (in_recovery, read_only): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(conn)
    .await?;
    Ok(Role {
        in_recovery,
        read_only,
    })
}

/// The servers a URL names and what they must be.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// One set of options per server, in the URL's order.
    pub(crate) servers: Vec<PgConnectOptions>,
    pub(crate) attrs: Attrs,
}

impl Target {
    /// Whether this is a plain one-server URL with no attribute asked for.
    pub(crate) fn is_plain(&self) -> bool {
        self.servers.len() == 1 && self.attrs == Attrs::Any
    }
}

/// Splits a `postgres://` URL naming one or more servers (`h1[:p1],h2[:p2],…`, IPv6 in
/// brackets) into one set of options per server, and reads `target_session_attrs`.
pub(crate) fn parse(url: &str, application_name: &str) -> Result<Target> {
    let bad = |why: &str| StoreError::InvalidUrl(why.to_owned());
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it has no scheme (postgres://…)"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (&authority[..=i], &authority[i + 1..]),
        None => ("", authority),
    };
    // The query without `target_session_attrs` (the driver does not know it).
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut attrs = Attrs::Any;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        match pair.split_once('=') {
            Some(("target_session_attrs", v)) => attrs = Attrs::parse(v)?,
            _ if pair.is_empty() => {}
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let hosts: Vec<&str> = if hostlist.is_empty() {
        vec![""]
    } else {
        hostlist.split(',').collect()
    };
    let mut servers = Vec::with_capacity(hosts.len());
    for host in hosts {
        if host.is_empty() && hostlist.contains(',') {
            return Err(bad("its host list has an empty entry"));
        }
        let one = format!("{scheme}://{userinfo}{host}{path}{query}");
        // No `extra_float_digits` startup parameter (the driver's default): values travel in
        // binary, and poolers such as PgBouncer refuse startup parameters they do not know.
        servers.push(
            PgConnectOptions::from_str(&one)?
                .application_name(application_name)
                .extra_float_digits(None),
        );
    }
    Ok(Target { servers, attrs })
}

/// Finds the first server that satisfies the target (for `prefer-standby`, the first standby,
/// else the first that answers). Returns its index, an open connection to it, and its options.
pub(crate) async fn resolve(
    target: &Target,
    timeout: Duration,
) -> Result<(usize, sqlx::PgConnection)> {
    let n = target.servers.len();
    let mut why = Vec::with_capacity(n);
    let mut fallback: Option<(usize, sqlx::PgConnection)> = None;
    for (i, opts) in target.servers.iter().enumerate() {
        let label = if n == 1 {
            "the server".to_owned()
        } else {
            format!("server {} of {n}", i + 1)
        };
        let mut conn =
            match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(opts)).await {
                Err(_) => {
                    why.push(format!("{label}: timed out connecting"));
                    continue;
                }
                Ok(Err(e)) => {
                    let e = StoreError::from(e);
                    if n == 1 || !e.is_unavailable() {
                        // Credentials, a missing database: the same on every server.
                        return Err(e);
                    }
                    why.push(format!("{label}: {e}"));
                    continue;
                }
                Ok(Ok(c)) => c,
            };
        if target.attrs == Attrs::Any {
            return Ok((i, conn));
        }
        match role_of(&mut conn).await {
            Ok(role) if target.attrs == Attrs::PreferStandby && !role.in_recovery => {
                if fallback.is_none() {
                    fallback = Some((i, conn));
                } else {
                    let _ = conn.close().await;
                }
            }
            Ok(role) if role.satisfies(target.attrs) => {
                if let Some((_, c)) = fallback.take() {
                    let _ = c.close().await;
                }
                return Ok((i, conn));
            }
            Ok(role) => {
                why.push(format!("{label}: {}", role.describe()));
                let _ = conn.close().await;
            }
            Err(e) => why.push(format!("{label}: {}", StoreError::from(e))),
        }
    }
    if let Some(found) = fallback {
        return Ok(found);
    }
    Err(StoreError::Unavailable(format!(
        "no server is {} ({})",
        match target.attrs {
            Attrs::Any | Attrs::PreferStandby => "reachable".to_owned(),
            a => format!("target_session_attrs={}", a.as_str()),
        },
        why.join("; ")
    )))
}

/// A pool on server `i` of `target`, each new connection checked against the attribute.
pub(crate) fn pool_for(target: &Target, i: usize, opts: &StoreOptions) -> PgPool {
    let attrs = target.attrs;
    let mut options = PgPoolOptions::new()
        .max_connections(opts.max_connections)
        .min_connections(0)
        .acquire_timeout(opts.acquire_timeout)
        // A ping before every checkout would double the cost of each check.
        .test_before_acquire(false);
    if !matches!(attrs, Attrs::Any | Attrs::PreferStandby) {
        options = options.after_connect(move |conn, _meta| {
            Box::pin(async move {
                let role = role_of(conn).await?;
                if role.satisfies(attrs) {
                    Ok(())
                } else {
                    Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!(
                            "the server is {}, not target_session_attrs={}",
                            role.describe(),
                            attrs.as_str()
                        ),
                    )))
                }
            })
        });
    }
    options.connect_lazy_with(target.servers[i].clone())
}

/// The pool in use, which the monitor may move to another server.
#[derive(Debug)]
pub(crate) struct Current {
    pub(crate) pool: PgPool,
    pub(crate) server: usize,
    /// Counts the pools this store has had (a swap or a retirement makes a new one).
    pub(crate) generation: u64,
}

/// Replaces the pool of generation `generation` by a fresh one on the same server (a call on
/// it passed its deadline: its connection may be silent for ever, and the driver's check of a
/// returned connection waits for an answer without a limit, so the slot would never come back).
/// Callers that timed out together retire it once.
pub(crate) fn retire(
    current: &RwLock<Current>,
    generation: u64,
    target: &Target,
    opts: &StoreOptions,
) {
    let old = {
        let mut c = write(current);
        if c.generation != generation || c.pool.is_closed() {
            return;
        }
        let fresh = pool_for(target, c.server, opts);
        c.generation += 1;
        std::mem::replace(&mut c.pool, fresh)
    };
    tracing::warn!(
        "a storage call passed its deadline: its connections are left to close on their own and new ones are opened"
    );
    // Idle connections close now; a silent one holds only its own slot in the retired pool.
    tokio::spawn(async move { old.close().await });
}

/// Checks the server in use every [`MONITOR_EVERY`]; when it does not answer or no longer
/// satisfies the attribute, moves the pool to the server that does. Stops when the store is
/// dropped or closed.
pub(crate) async fn monitor(current: Weak<RwLock<Current>>, target: Target, opts: StoreOptions) {
    let n = target.servers.len();
    loop {
        tokio::time::sleep(MONITOR_EVERY).await;
        let Some(cur) = current.upgrade() else { return };
        let (pool, server) = {
            let c = read(&cur);
            (c.pool.clone(), c.server)
        };
        if pool.is_closed() {
            return;
        }
        let healthy = tokio::time::timeout(opts.acquire_timeout, async {
            let mut conn = pool.acquire().await?;
            role_of(&mut conn).await
        })
        .await;
        match healthy {
            Ok(Ok(role)) if role.satisfies(target.attrs) => continue,
            _ => {}
        }
        let found = resolve(&target, opts.acquire_timeout).await;
        match found {
            Ok((i, conn)) if i != server => {
                let _ = conn.close().await;
                let fresh = pool_for(&target, i, &opts);
                {
                    let mut c = write(&cur);
                    if c.pool.is_closed() {
                        return;
                    }
                    c.pool = fresh;
                    c.server = i;
                    c.generation += 1;
                }
                tracing::warn!(
                    from = server + 1,
                    to = i + 1,
                    servers = n,
                    "the database server in use stopped answering or changed role: moved to the one that satisfies target_session_attrs"
                );
                let old = pool;
                tokio::spawn(async move { old.close().await });
            }
            Ok((_, conn)) => {
                let _ = conn.close().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "no database server satisfies target_session_attrs yet");
            }
        }
    }
}

pub(crate) fn read(c: &RwLock<Current>) -> std::sync::RwLockReadGuard<'_, Current> {
    match c.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write(c: &RwLock<Current>) -> std::sync::RwLockWriteGuard<'_, Current> {
    match c.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Starts the monitor for a store on `target` (only worth it with several servers or an
/// attribute to keep).
pub(crate) fn start_monitor(current: &Arc<RwLock<Current>>, target: Target, opts: StoreOptions) {
    if !target.is_plain() {
        tokio::spawn(monitor(Arc::downgrade(current), target, opts));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_set_of_options_per_server() {
        let t = parse(
            "postgres://app:s3cr%40t@h1:5433,h2,[::1]:6000/gov?sslmode=disable&target_session_attrs=read-write",
            "governance",
        )
        .unwrap();
        assert_eq!(t.attrs, Attrs::ReadWrite);
        let hosts: Vec<(String, u16)> = t
            .servers
            .iter()
            .map(|o| (o.get_host().to_owned(), o.get_port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("h1".to_owned(), 5433),
                ("h2".to_owned(), 5432),
                ("[::1]".to_owned(), 6000)
            ]
        );
        assert!(t.servers.iter().all(|o| o.get_database() == Some("gov")));
        assert!(t.servers.iter().all(|o| o.get_username() == "app"));
        let plain = parse("postgres://u@h/db", "g").unwrap();
        assert!(plain.is_plain());
    }

    #[test]
    fn a_bad_attribute_or_an_empty_host_is_refused_without_echoing_the_url() {
        let e = parse("postgres://u:pw@h/db?target_session_attrs=writable", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("read-write"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        let e = parse("postgres://u:pw@h1,,h2/db", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty entry"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn roles_satisfy_the_attributes_libpq_names() {
        let primary = Role {
            in_recovery: false,
            read_only: false,
        };
        let standby = Role {
            in_recovery: true,
            read_only: true,
        };
        let read_only_primary = Role {
            in_recovery: false,
            read_only: true,
        };
        assert!(primary.satisfies(Attrs::ReadWrite) && primary.satisfies(Attrs::Primary));
        assert!(!standby.satisfies(Attrs::ReadWrite) && standby.satisfies(Attrs::Standby));
        assert!(!read_only_primary.satisfies(Attrs::ReadWrite));
        assert!(read_only_primary.satisfies(Attrs::Primary));
        assert!(read_only_primary.satisfies(Attrs::ReadOnly));
    }
}
