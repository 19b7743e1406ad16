//! Finding a Postgres server for the tests, or starting a throwaway cluster.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

/// The variable the test support reads.
pub(crate) const ENV_TEST_URL: &str = "GOVERNANCE_TEST_DATABASE_URL";
const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const THROWAWAY_PORT: u16 = 54329;

/// A server the tests can use; a throwaway cluster is stopped and removed on drop.
pub(crate) struct Server {
    url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    as_postgres: bool,
}

impl Server {
    pub(crate) fn find_or_start() -> Result<Self> {
        if let Ok(url) = std::env::var(ENV_TEST_URL) {
            return Ok(Self { url, cluster: None });
        }
        let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
        if TcpStream::connect_timeout(&local, Duration::from_millis(500)).is_ok() {
            return Ok(Self {
                url: LOCAL_URL.to_owned(),
                cluster: None,
            });
        }
        eprintln!("xtask: no Postgres on 127.0.0.1:5432; starting a throwaway cluster");
        let cluster = Cluster::start()?;
        Ok(Self {
            url: format!("postgres://postgres@127.0.0.1:{THROWAWAY_PORT}/postgres"),
            cluster: Some(cluster),
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The URL without credentials.
    pub(crate) fn display(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
        rest.to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
    }
}

fn bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|p| p.join("initdb").exists())
        .context("no initdb found: install PostgreSQL (apt-get install postgresql) or set GOVERNANCE_TEST_DATABASE_URL")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn start() -> Result<Self> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("gov-pg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("could not create the cluster directory")?;
        let as_postgres = is_root();
        if as_postgres {
            crate::run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir),
            )?;
        }
        let cluster = Self {
            bin,
            dir,
            as_postgres,
        };
        let data = cluster.dir.join("data");
        crate::run(
            cluster
                .command("initdb")
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
                .arg(&data),
        )?;
        let opts = format!(
            "-p {THROWAWAY_PORT} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=off",
            cluster.dir.display()
        );
        crate::run(
            cluster
                .command("pg_ctl")
                .args(["-w", "-D"])
                .arg(&data)
                .args(["-o", &opts, "-l"])
                .arg(cluster.dir.join("log"))
                .arg("start"),
        )?;
        Ok(cluster)
    }

    fn stop(&self) {
        let data: &Path = &self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(data)
            .args(["-m", "fast", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
