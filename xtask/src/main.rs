//! Project automation, run as `cargo xtask <task>`:
//!
//! - `test [ARGS]`: the whole suite against a real Postgres (`GOVERNANCE_TEST_DATABASE_URL`,
//!   else the local server on 127.0.0.1:5432, else a throwaway cluster from `initdb`/`pg_ctl`),
//!   with gov-sdk's adapter features on (`FEATURES`; clippy and rustdoc in `ci` too).
//! - `bench`: benchmarks, JSON on stdout and in `target/bench/bench.json`.
//! - `faults`: the fault suite (kills, torn spool files, a Postgres crash under load, cut
//!   settlement replies, a full disk), its figures as JSON on stdout and in
//!   `target/faults/faults.json`; see docs/storage.md.
//! - `ci`: fmt check, clippy, rustdoc with warnings denied, tidy, README's quick start
//!   (`governance demo --no-serve`), then `test` and `faults` in the same private home, which
//!   they must leave as the quick start left it.
//! - `schema`: writes `migrations/postgres/schema.sql`, the current body of every Postgres
//!   function after all migrations (the test `schema::the_function_snapshot_is_current` checks
//!   it; tidy checks that it exists).
//! - `tidy`: repository rules (dependency graph, module docs, no ignored tests, documented
//!   configuration).

mod faults;
mod pg;
mod tidy;

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "test" => test(&rest),
        "bench" => bench(&rest),
        "faults" => faults::run_all(),
        "ci" => ci(),
        "schema" => schema(),
        "tidy" => tidy::run(),
        _ => {
            eprintln!("usage: cargo xtask <test [ARGS] | bench | faults | ci | schema | tidy>");
            bail!("unknown task {task:?}")
        }
    }
}

/// The gov-sdk features that are off by default but tested, linted and documented with the
/// rest: the Rust ecosystem adapters.
const FEATURES: &str = "gov-sdk/async-openai,gov-sdk/rig,gov-sdk/tower";

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Writes `migrations/postgres/schema.sql` from a freshly migrated database: the snapshot test
/// run with `XTASK_WRITE_SCHEMA=1`.
fn schema() -> Result<()> {
    let server = pg::Server::find_or_start()?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "gov-sdk",
        "--test",
        "it",
        "--",
        "--exact",
        "schema::the_function_snapshot_is_current",
    ])
    .env(pg::ENV_TEST_URL, server.url())
    .env("XTASK_WRITE_SCHEMA", "1");
    Hermetic::new()?.apply(&mut cmd)?;
    run(&mut cmd)
}

fn test(extra: &[String]) -> Result<()> {
    test_in(extra, &Hermetic::new()?)
}

/// Runs the suite with `home` as its HOME.
fn test_in(extra: &[String], home: &Hermetic) -> Result<()> {
    let server = pg::Server::find_or_start()?;
    eprintln!("xtask: tests use Postgres at {}", server.display());
    let mut cmd = cargo();
    if has_nextest() {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]);
    }
    cmd.args(["--features", FEATURES]);
    cmd.args(extra).env(pg::ENV_TEST_URL, server.url());
    home.apply(&mut cmd)?;
    // nextest does not run doc tests: run them first (examples are compile-checked), unless a
    // filter narrows the run, so that the suite's own summary is the last thing printed.
    let mut result = Ok(());
    if extra.is_empty() {
        let mut doc = cargo();
        doc.args([
            "test",
            "--doc",
            "--workspace",
            "--quiet",
            "--features",
            FEATURES,
        ]);
        home.apply(&mut doc)?;
        result = run(&mut doc);
    }
    if result.is_ok() {
        result = run(&mut cmd);
    }
    drop(server);
    result
}

/// A private home for one test run: HOME, the XDG folders and TMPDIR point into a fresh folder
/// that is removed afterwards, and no `GOVERNANCE_*` or `PG*` variable of the caller's reaches
/// the tests. Cargo and rustup keep their own homes, pinned before HOME moves.
struct Hermetic(tempfile::TempDir);

impl Hermetic {
    /// The folders a user's tools write to (TMPDIR, which tests use freely, is not one).
    const USER_FOLDERS: [&str; 5] = ["home", "data", "state", "config", "cache"];

    /// Every file and folder under the user folders, relative to the private folder.
    fn listing(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
                if p.is_dir() {
                    walk(&p, root, out);
                }
            }
        }
        let mut out = Vec::new();
        for sub in Self::USER_FOLDERS {
            walk(&self.0.path().join(sub), self.0.path(), &mut out);
        }
        out.sort();
        out
    }

    fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("governance-tests-")
            .tempdir()
            .context("could not create the tests' private folder")?;
        for sub in ["home", "data", "state", "config", "cache", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .with_context(|| format!("could not create the tests' {sub} folder"))?;
        }
        Ok(Self(dir))
    }

    fn apply(&self, cmd: &mut Command) -> Result<()> {
        let real_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let pinned = |var: &str, default: &str| -> Option<std::ffi::OsString> {
            std::env::var_os(var)
                .or_else(|| real_home.as_ref().map(|h| h.join(default).into_os_string()))
        };
        if let Some(cargo_home) = pinned("CARGO_HOME", ".cargo") {
            cmd.env("CARGO_HOME", cargo_home);
        }
        if let Some(rustup_home) = pinned("RUSTUP_HOME", ".rustup") {
            cmd.env("RUSTUP_HOME", rustup_home);
        }
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if (k.starts_with("GOVERNANCE_") && k != pg::ENV_TEST_URL) || k.starts_with("PG") {
                cmd.env_remove(k.as_ref());
            }
        }
        let p = self.0.path();
        cmd.env("HOME", p.join("home"))
            .env("XDG_DATA_HOME", p.join("data"))
            .env("XDG_STATE_HOME", p.join("state"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env("XDG_CACHE_HOME", p.join("cache"))
            .env("TMPDIR", p.join("tmp"));
        Ok(())
    }
}

fn bench(extra: &[String]) -> Result<()> {
    let server = pg::Server::find_or_start()?;
    std::fs::create_dir_all("target/bench").context("could not create target/bench")?;
    let out = cargo()
        .args(["run", "--quiet", "--release", "-p", "gov-bench", "--"])
        .args(extra)
        .env(pg::ENV_TEST_URL, server.url())
        .output()
        .context("could not run gov-bench")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("the benchmark failed");
    }
    let json = String::from_utf8_lossy(&out.stdout);
    print!("{json}");
    std::fs::write("target/bench/bench.json", json.as_bytes())
        .context("could not write target/bench/bench.json")?;
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        FEATURES,
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args([
            "doc",
            "--no-deps",
            "--workspace",
            "--quiet",
            "--features",
            FEATURES,
        ])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    tidy::run()?;
    // README's quick start, then README's test command, in one private home: the suite must
    // pass beside a newcomer's demo data and add nothing to it.
    let home = Hermetic::new()?;
    let mut demo = cargo();
    demo.args([
        "run",
        "--quiet",
        "-p",
        "gov-cli",
        "--",
        "demo",
        "--no-serve",
    ]);
    home.apply(&mut demo)?;
    let started = std::time::Instant::now();
    run(&mut demo)?;
    eprintln!(
        "xtask: README's quick start (governance demo --no-serve) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let before = home.listing();
    let started = std::time::Instant::now();
    test_in(&[], &home)?;
    eprintln!(
        "xtask: README's test command took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    faults::run_in(&home)?;
    let after = home.listing();
    let added: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    if !added.is_empty() {
        bail!(
            "the tests left files in HOME (every process a test starts must be hermetic): {added:?}"
        );
    }
    Ok(())
}
