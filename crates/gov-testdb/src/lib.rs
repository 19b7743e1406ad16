//! Test support: each test gets its own fresh Postgres database, cloned from a migrated template.
//!
//! The server is `GOVERNANCE_TEST_DATABASE_URL` when set (`cargo xtask test` sets it, starting a
//! throwaway cluster when no server answers), else the local server at 127.0.0.1:5432 as
//! `postgres`. The template `gov_tpl_<hash of the migrations>` is built once per schema, under
//! an advisory lock so parallel test processes build it only once; each [`TestDb`] is a
//! `CREATE DATABASE … TEMPLATE` clone (milliseconds), dropped with `WITH (FORCE)` when the
//! `TestDb` is dropped.
//!
//! [`TestStore`] runs the same test against either backend: a `TestDb`, or a migrated SQLite file
//! of its own (see [`TestBackend`]). [`Proxy`] puts a TCP proxy a test can cut and restore in
//! front of the server: one client's outage.
//!
//! [`limits`] measures what the benchmarks compare the hot paths against.

mod bouncer;
pub mod forge;
pub mod limits;
mod proxy;
mod store;

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

pub use bouncer::{Bouncer, PoolMode};
pub use proxy::Proxy;
pub use store::{TestBackend, TestStore};

/// Where the tests find Postgres when nothing is configured.
pub const DEFAULT_SERVER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The environment variable that names the test server.
pub const ENV_TEST_DATABASE_URL: &str = "GOVERNANCE_TEST_DATABASE_URL";
/// The least-privilege application role created in the template.
pub const APP_ROLE: &str = "governance_app";

/// The server URL tests use.
pub fn server_url() -> String {
    std::env::var(ENV_TEST_DATABASE_URL).unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

fn template_name() -> String {
    let digest = Sha256::digest(gov_store::schema_fingerprint().as_bytes());
    format!("gov_tpl_{}", &hex::encode(digest)[..16])
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

async fn admin_conn() -> PgConnection {
    let url = server_url();
    match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot reach the test Postgres ({e}); run the suite with `cargo xtask test`, which finds or starts one, or set {ENV_TEST_DATABASE_URL}"
        ),
    }
}

/// Builds the migrated template once per schema version (idempotent, safe across processes).
pub async fn ensure_template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            let name = template_name();
            let mut conn = admin_conn().await;
            sqlx::query("SELECT pg_advisory_lock(7243001)")
                .execute(&mut conn)
                .await
                .expect("advisory lock");
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await
                    .expect("look up template");
            if !exists {
                let building = format!("{name}_building");
                let drop = format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&mut conn)
                    .await
                    .expect("drop stale");
                let create = format!("CREATE DATABASE {building}");
                sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&mut conn)
                    .await
                    .expect("create template");
                let url = with_database(&server_url(), &building);
                let store = gov_store::Store::connect(&url, &gov_store::StoreOptions::default())
                    .await
                    .expect("connect to template");
                store.migrate().await.expect("migrate template");
                store
                    .ensure_app_role(APP_ROLE, None)
                    .await
                    .expect("create app role");
                store.close().await;
                let rename = format!("ALTER DATABASE {building} RENAME TO {name}");
                sqlx::query(sqlx::AssertSqlSafe(rename))
                    .execute(&mut conn)
                    .await
                    .expect("rename template");
                let mark = format!("ALTER DATABASE {name} IS_TEMPLATE true");
                sqlx::query(sqlx::AssertSqlSafe(mark))
                    .execute(&mut conn)
                    .await
                    .expect("mark template");
            }
            sqlx::query("SELECT pg_advisory_unlock(7243001)")
                .execute(&mut conn)
                .await
                .expect("advisory unlock");
            let _ = conn.close().await;
            name
        })
        .await
        .clone()
}

/// A fresh, migrated database for one test; dropped when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Clones the template into a new database.
    pub async fn new() -> Self {
        let template = ensure_template().await;
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).expect("random name");
        let name = format!("gov_t_{}", hex::encode(rnd));
        let mut conn = admin_conn().await;
        let create = format!("CREATE DATABASE {name} TEMPLATE {template}");
        // A clone fails if another session is briefly connected to the template; retry.
        let mut tries = 0;
        loop {
            match sqlx::query(sqlx::AssertSqlSafe(create.clone()))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create the test database: {e}"),
            }
        }
        // A clone does not inherit database-level privileges: revoke TEMP as `governance
        // migrate` does on the database it migrates.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC"
        )))
        .execute(&mut conn)
        .await
        .expect("revoke TEMP on the test database");
        let _ = conn.close().await;
        Self {
            url: with_database(&server_url(), &name),
            name,
        }
    }

    /// The superuser URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A URL on this database that acts as the least-privilege application role. It logs in as
    /// the server URL's (superuser) user and switches role at connect (`options=-c role=…`), so
    /// it works whatever authentication the test server uses.
    pub fn app_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20role%3D{APP_ROLE}", self.url)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A superuser pool on this database (for tampering and inspection).
    pub async fn admin_pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// Runs `statements` in one transaction as a superuser with the append-only guards bypassed
    /// (`SET LOCAL session_replication_role = replica`), as an attacker with database access
    /// would, and panics naming the statement that fails.
    pub async fn tamper(&self, statements: &[&str]) {
        let pool = self.admin_pool().await;
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .expect("bypass triggers");
        for s in statements {
            sqlx::query(sqlx::AssertSqlSafe(s.to_string()))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        tx.commit().await.expect("commit");
        pool.close().await;
    }

    /// An empty database (no migrations), for testing `migrate` itself.
    pub async fn empty() -> Self {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).expect("random name");
        let name = format!("gov_e_{}", hex::encode(rnd));
        let mut conn = admin_conn().await;
        let create = format!("CREATE DATABASE {name}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await
            .expect("create empty database");
        let _ = conn.close().await;
        Self {
            url: with_database(&server_url(), &name),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; do the blocking work on a thread of its own.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&server_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}

/// A private Postgres cluster started from the system's `initdb`/`pg_ctl`, for tests that stop
/// and start the server (outages). Stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    fn tool(&self, name: &str) -> std::process::Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        }
    }

    fn run(mut cmd: std::process::Command) {
        let out = cmd.output().expect("run a Postgres tool");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A cluster's folder and port, not yet created on disk by a Postgres tool.
    fn allocate() -> Self {
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin"))
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        let bin = versions
            .into_iter()
            .rev()
            .find(|p| p.join("initdb").exists())
            .expect("initdb under /usr/lib/postgresql (install PostgreSQL)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).expect("random name");
        let dir = std::env::temp_dir().join(format!("gov-cluster-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let mut chown = std::process::Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&dir);
            Self::run(chown);
        }
        Self {
            bin,
            dir,
            port,
            as_postgres,
        }
    }

    /// Creates and starts a cluster on a free local port.
    pub fn start() -> Self {
        let c = Self::allocate();
        let mut initdb = c.tool("initdb");
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(c.dir.join("data"));
        Self::run(initdb);
        c.start_again();
        c
    }

    /// Creates and starts a streaming standby of this cluster (`pg_basebackup -R`) on a free
    /// local port, connecting as `application_name` (name it in the primary's
    /// `synchronous_standby_names` to make it synchronous).
    pub fn standby(&self, application_name: &str) -> Self {
        let c = Self::allocate();
        let mut backup = c.tool("pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-X", "stream", "-R", "--no-sync", "-D"])
            .arg(c.dir.join("data"));
        Self::run(backup);
        // The last setting in the file wins: connect under the name the primary waits for.
        let conninfo = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={application_name}'\n",
            self.port
        );
        let auto = c.dir.join("data").join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).expect("the standby's postgresql.auto.conf");
        text.push_str(&conninfo);
        std::fs::write(&auto, text).expect("write postgresql.auto.conf");
        c.start_again();
        c
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, waiting until it takes writes).
    pub fn promote(&self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-w", "-D"])
            .arg(self.dir.join("data"))
            .arg("promote");
        Self::run(cmd);
    }

    /// The port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop");
        Self::run(cmd);
    }

    /// Crashes the server: an immediate shutdown (every server process quits at once, no
    /// checkpoint; the next start runs crash recovery from the write-ahead log).
    pub fn crash(&self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop");
        Self::run(cmd);
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.display()
        );
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-w", "-D"])
            .arg(self.dir.join("data"))
            .args(["-o", &opts, "-l"])
            .arg(self.dir.join("log"))
            .arg("start");
        Self::run(cmd);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = self.tool("pg_ctl");
        cmd.args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop");
        let _ = cmd.output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
