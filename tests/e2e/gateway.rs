//! `governance gateway …` as processes: keys made (shown once), listed without secrets and
//! revoked as the owner, and `gateway serve` answering health and a refused call, then stopping
//! on SIGTERM.

use std::io::BufRead as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gov_testdb::TestDb;
use predicates::prelude::*;

use crate::support::{SECRET, bare_governance, governance};

#[tokio::test]
async fn keys_are_shown_once_listed_without_secrets_and_revoked() {
    let db = TestDb::new().await;
    let out = governance(&db)
        .args([
            "--json", "gateway", "add-key", "--agent", "py-agent", "--label", "laptop",
        ])
        .output()
        .expect("add-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = made["key"].as_str().expect("key").to_owned();
    let id = made["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("gk1_{id}_")), "{key}");

    let listed = governance(&db)
        .args(["--json", "gateway", "list-keys"])
        .output()
        .expect("list-keys");
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(text.contains(&id) && text.contains("laptop"), "{text}");
    assert!(
        !text.contains(&key[id.len() + 5..]),
        "the secret is never listed: {text}"
    );

    governance(&db)
        .args(["gateway", "revoke-key", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("revoked key {id}")));
    governance(&db)
        .args(["gateway", "revoke-key", &id])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no unrevoked gateway key"));
    // The application role cannot make keys.
    governance(&db)
        .env("GOVERNANCE_DATABASE_URL", db.app_url())
        .args(["gateway", "add-key", "--agent", "intruder"])
        .assert()
        .failure();
}

/// Kills the gateway if the test fails before it stops.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serve_answers_refuses_without_a_key_and_stops_on_sigterm() {
    let db = TestDb::new().await;
    let home = tempfile::tempdir().expect("dir");
    let config = home.path().join("gateway.toml");
    // The upstream is never reached: the call is refused before it.
    std::fs::write(
        &config,
        "[openai]\nbase_url = \"http://127.0.0.1:9\"\napi_key_env = \"UPSTREAM_KEY\"\n",
    )
    .expect("config");
    // Without the provider key's variable: a configuration error that names it.
    governance(&db)
        .env("GOVERNANCE_DATABASE_URL", db.app_url())
        .args(["gateway", "serve", "--config"])
        .arg(&config)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("UPSTREAM_KEY"));

    let mut cmd = bare_governance();
    cmd.env("GOVERNANCE_DATABASE_URL", db.app_url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("UPSTREAM_KEY", "sk-test")
        .args([
            "--json",
            "gateway",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Child(cmd.spawn().expect("spawn"));
    let stdout = child.0.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .expect("join")
    .expect("read");
    let serving: serde_json::Value = serde_json::from_str(&line).expect("json");
    let url = serving["url"]
        .as_str()
        .expect("url")
        .trim_end_matches('/')
        .to_owned();

    let health = reqwest::get(format!("{url}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let refused = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .expect("post");
    assert_eq!(refused.status(), 401);

    let pid = child.0.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(code) = child.0.try_wait().expect("wait") {
            assert!(code.success(), "{code}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
