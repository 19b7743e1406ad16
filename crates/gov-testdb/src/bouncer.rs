//! A private PgBouncer (the Debian package's `pgbouncer`) in front of the shared test server,
//! for tests of the SDK behind a connection pooler.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How PgBouncer hands server connections to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// One server connection per client connection, for the client's whole session.
    Session,
    /// A server connection per transaction: consecutive transactions of one client may run on
    /// different server connections.
    Transaction,
}

/// A running PgBouncer on a free local port; stopped and its folder removed on drop.
#[derive(Debug)]
pub struct Bouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Bouncer {
    /// Starts PgBouncer in `mode` in front of the server of `server_url` (`postgres://user@host:port/…`),
    /// with `server_connections` server connections per database and user, and waits until it
    /// accepts connections. Panics, saying what to install, when `pgbouncer` is missing.
    pub fn start(server_url: &str, mode: PoolMode, server_connections: u32) -> Self {
        let exe = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("pgbouncer is not installed: apt-get install pgbouncer");
        let after_at = server_url.find('@').map_or(0, |i| i + 1);
        let rest = &server_url[after_at..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, server_port) = rest[..end]
            .rsplit_once(':')
            .unwrap_or((&rest[..end], "5432"));
        let user = server_url[..after_at.saturating_sub(1)]
            .rsplit("://")
            .next()
            .and_then(|u| u.split(':').next())
            .filter(|u| !u.is_empty())
            .unwrap_or("postgres");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).expect("random name");
        let dir = std::env::temp_dir().join(format!("gov-bouncer-{}", hex::encode(rnd)));
        std::fs::create_dir_all(&dir).expect("the pooler's folder");
        let ini = format!(
            "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {users}\npool_mode = {mode}\ndefault_pool_size = {server_connections}\nmax_client_conn = 500\nlogfile = {log}\n",
            users = dir.join("users.txt").display(),
            mode = match mode {
                PoolMode::Session => "session",
                PoolMode::Transaction => "transaction",
            },
            log = dir.join("pgbouncer.log").display(),
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n"))
            .expect("write users.txt");
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = Command::new(&exe);
        if root {
            // PgBouncer refuses to run as root: it takes the postgres user's identity itself
            // (same process, so dropping this value stops it).
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown the pooler's folder");
            assert!(status.success(), "chown the pooler's folder");
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let mut b = Self { child, dir, port };
        // Ready when it accepts a connection (polled; it binds its port once configured).
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = b.child.try_wait() {
                panic!(
                    "pgbouncer exited ({status}): {}",
                    std::fs::read_to_string(b.dir.join("pgbouncer.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "pgbouncer did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        b
    }

    /// `url` (a `postgres://` URL on the server this pooler fronts) rewritten to go through it.
    pub fn url_for(&self, url: &str) -> String {
        let after_at = url.find('@').map_or(0, |i| i + 1);
        let rest = &url[after_at..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        format!(
            "{}127.0.0.1:{}{}",
            &url[..after_at],
            self.port,
            &rest[end..]
        )
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
