//! LiteLLM's proxy (PyPI `litellm[proxy]`) on loopback in front of the gateway bench's mock
//! provider, so that `gateway` reports both side by side in one run.
//!
//! The proxy is installed into a virtual environment cached under the target directory
//! (`target/bench-litellm`, made with `python3 -m venv` and pip, as the gateway's Python tests
//! make theirs; pip and LiteLLM get a HOME under the target directory, never the user's). Its
//! budgets: a virtual key with `max_budget` needs LiteLLM's database, reached through Prisma,
//! whose client `prisma generate` builds from engines it downloads. When that works, the proxy
//! gets an empty database of its own on the test server and the bench calls with a virtual key
//! with a budget; when it does not, the proxy runs without a database, with the budget it can
//! enforce without one (a per-deployment `max_budget`, tracked in memory by its router), and
//! the JSON says which and why. Either way the budget is checked to refuse once spent. Any
//! failure here is returned as an error the caller reports; it never fails the rest of the
//! bench.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::gateway::{MODEL, PROVIDER_KEY, Sizes};

/// LiteLLM's sizes: fewer calls than the gateway's (it is much slower), the same shapes.
pub(crate) const SIZES: Sizes = Sizes {
    one: 300,
    per_client_64: 10,
    warmup: 20,
    rps_secs: 5.0,
};

const MASTER_KEY: &str = "sk-bench-litellm-master";
/// A model name whose budget is tiny, to check that budgets refuse.
const CAPPED: &str = "bench-capped";

/// A running LiteLLM proxy.
pub(crate) struct Proxy {
    /// Its base URL.
    pub(crate) url: String,
    /// The key the bench calls with.
    pub(crate) key: String,
    /// What runs and which budgets are on, for the JSON.
    pub(crate) setup: Value,
    child: Child,
    _dir: tempfile::TempDir,
    _db: Option<gov_testdb::TestDb>,
}

impl Proxy {
    /// Stops the proxy.
    pub(crate) fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The target directory (where the virtual environment is cached).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 3)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached virtual environment with `litellm[proxy]` and `prisma`, made on first use (in a
/// directory of its own, renamed into place); its `bin` directory.
fn venv(home: &Path) -> Result<PathBuf> {
    let dir = target_dir().join("bench-litellm");
    let bin = dir.join("bin");
    if bin.join("python").exists() {
        return Ok(bin);
    }
    let tmp = target_dir().join(format!("bench-litellm.{}", std::process::id()));
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&tmp),
        "creating a Python virtual environment (python3 -m venv; install python3-venv)",
    )?;
    let installed = run(
        Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(["litellm[proxy]", "prisma"])
            .env("HOME", home),
        "installing litellm[proxy] and prisma from PyPI (pip install; needs network access to PyPI)",
    );
    if let Err(e) = installed {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another run made it first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(bin)
}

/// The environment LiteLLM and its tools run with: nothing of ours but PATH.
fn clean_env(cmd: &mut Command, bin: &Path, home: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.to_owned()];
    paths.extend(std::env::split_paths(&path));
    cmd.env_clear()
        .env("HOME", home)
        .env("PATH", std::env::join_paths(paths).unwrap_or(path))
        .env("LANG", "C.UTF-8")
        // Its bundled price list, rather than fetching one at startup.
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True");
}

/// Builds LiteLLM's Prisma client (what its database needs); why not, when it cannot.
fn prisma_generate(bin: &Path, home: &Path) -> Result<()> {
    let python = bin.join("python");
    let proxy_dir = run(
        Command::new(&python).args([
            "-c",
            "import os, litellm.proxy; print(os.path.dirname(litellm.proxy.__file__))",
        ]),
        "finding LiteLLM's proxy package",
    )?;
    // Through the interpreter: the scripts' `#!` lines name the directory the environment was
    // made in, before it was renamed into place.
    let mut cmd = Command::new(&python);
    cmd.args(["-m", "prisma", "generate"])
        .current_dir(proxy_dir.trim());
    clean_env(&mut cmd, bin, home);
    let out = cmd.output().context("prisma generate: could not start")?;
    if !out.status.success() {
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("`prisma generate` failed: {}", tail(&text, 2));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("could not bind a port")?;
    Ok(l.local_addr()?.port())
}

/// Installs (once) and starts LiteLLM's proxy in front of the mock at `mock`, with budgets on.
pub(crate) async fn start(mock: &str) -> Result<Proxy> {
    let home = target_dir().join("bench-litellm-home");
    std::fs::create_dir_all(&home).context("could not make LiteLLM's HOME")?;
    let (bin, prisma) = {
        let home = home.clone();
        tokio::task::spawn_blocking(move || {
            let bin = venv(&home)?;
            let prisma = prisma_generate(&bin, &home);
            anyhow::Ok((bin, prisma))
        })
        .await
        .context("the installer stopped")??
    };
    let db = match &prisma {
        Ok(()) => Some(gov_testdb::TestDb::empty().await),
        Err(_) => None,
    };
    // Without a database, the budget LiteLLM can enforce is a deployment's (in memory).
    let deployment_budget = if db.is_none() {
        "\n      max_budget: 1000\n      budget_duration: 1d"
    } else {
        ""
    };
    let config = format!(
        "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      api_base: {mock}/v1\n      api_key: {PROVIDER_KEY}{deployment_budget}\n  - model_name: {CAPPED}\n    litellm_params:\n      model: openai/{MODEL}\n      api_base: {mock}/v1\n      api_key: {PROVIDER_KEY}\n      max_budget: 0.0000001\n      budget_duration: 1d\ngeneral_settings:\n  master_key: {MASTER_KEY}\n"
    );
    let dir = tempfile::tempdir().context("could not make a temporary directory")?;
    let config_path = dir.path().join("litellm.yaml");
    std::fs::write(&config_path, config).context("could not write LiteLLM's configuration")?;
    let log_path = dir.path().join("litellm.log");
    let log = std::fs::File::create(&log_path).context("could not make LiteLLM's log")?;
    let port = free_port()?;
    let mut cmd = Command::new(bin.join("python"));
    cmd.args([
        "-c",
        "import sys; from litellm.proxy.proxy_cli import run_server; sys.exit(run_server())",
    ])
    .arg("--config")
    .arg(&config_path)
    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
    .stdin(Stdio::null())
    .stdout(log.try_clone().context("could not share LiteLLM's log")?)
    .stderr(log);
    clean_env(&mut cmd, &bin, &home);
    if let Some(db) = &db {
        cmd.env("DATABASE_URL", db.url());
    }
    let child = cmd.spawn().context("could not start LiteLLM's proxy")?;
    let url = format!("http://127.0.0.1:{port}");
    let mut proxy = Proxy {
        url: url.clone(),
        key: MASTER_KEY.to_owned(),
        setup: Value::Null,
        child,
        _dir: dir,
        _db: db,
    };

    // Ready when /health/readiness answers 200 (or failed when the process ended).
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = proxy.child.try_wait()? {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "LiteLLM's proxy exited ({status}) before it was ready: {}",
                tail(&text, 3)
            );
        }
        let ready = http
            .get(format!("{url}/health/readiness"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("LiteLLM's proxy was not ready within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let version = run(
        Command::new(bin.join("python")).args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ]),
        "reading LiteLLM's version",
    )
    .map(|v| v.trim().to_owned())
    .unwrap_or_default();

    let (budgets, checked) = match &prisma {
        Ok(()) => {
            // A virtual key with a budget to call with, and one with none left to check.
            proxy.key = generate_key(&http, &url, 1000.0).await?;
            let tiny = generate_key(&http, &url, 0.000_000_1).await?;
            let checked = refused_within(&http, &url, &tiny, MODEL, 50).await?;
            (
                json!(
                    "a virtual key with max_budget $1000 (LiteLLM's database: an empty Postgres test database of its own)"
                ),
                checked,
            )
        }
        Err(why) => {
            let checked = refused_within(&http, &url, MASTER_KEY, CAPPED, 50).await?;
            (
                json!(format!(
                    "no virtual-key budget: virtual keys and their max_budget need LiteLLM's database, reached through Prisma, and {why:#}; run instead with the budget LiteLLM enforces without a database: the deployment's max_budget ($1000 a day, tracked in memory by its router), the master key as the client key"
                )),
                checked,
            )
        }
    };
    proxy.setup = json!({
        "litellm_version": version,
        "command": "litellm --config litellm.yaml --host 127.0.0.1 --port P (defaults otherwise: one worker, its own logging)",
        "budgets": budgets,
        "budget_check": checked,
    });
    Ok(proxy)
}

/// A virtual key for `MODEL` with `max_budget` dollars (needs LiteLLM's database).
async fn generate_key(http: &reqwest::Client, url: &str, max_budget: f64) -> Result<String> {
    let resp = http
        .post(format!("{url}/key/generate"))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"models": [MODEL, CAPPED], "max_budget": max_budget}))
        .send()
        .await
        .context("could not ask LiteLLM for a key")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    body["key"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("LiteLLM made no key ({status})"))
}

/// Calls `model` with `key` until LiteLLM refuses for the budget, at most `tries` times and
/// 30 s; what happened, or an error when it never refused.
async fn refused_within(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
    tries: usize,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 1..=tries {
        let resp = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": format!("budget check {i}")}]}))
            .send()
            .await
            .context("could not call LiteLLM")?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::ensure!(
                text.to_ascii_lowercase().contains("budget"),
                "LiteLLM refused a call for another reason than its budget ({status})"
            );
            return Ok(format!(
                "a budget with nothing left was refused at call {i} (HTTP {status})"
            ));
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        // Spend is recorded after the answer, off the request path.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("LiteLLM's budget did not refuse: budgets are not on")
}
