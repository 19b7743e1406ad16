//! Keys and the chain, through the `governance` binary: a wrong secret is a configuration
//! problem (exit 2, naming the key the chain's rows need), never tampering; a rewritten
//! `key_id` is tampering of that chain only, never "wrong secret"; and with several chains each
//! is judged on its own, `verify` and `report` agreeing (tampering beats configuration).

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;

use crate::support::{OTHER_SECRET, SECRET, governance, seed};

const THIRD: &str = "c4d1e8f2a9b3c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2";

fn key_id(secret: &str) -> String {
    gov_audit::AuditSecret::parse(secret)
        .expect("secret")
        .chain_key()
        .key_id()
        .to_owned()
}

/// Runs `governance ARGS` with `secret` (and `previous`, when given); (code, stdout, stderr).
fn run(db: &TestDb, secret: &str, previous: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = governance(db);
    cmd.env("GOVERNANCE_AUDIT_SECRET", secret);
    if let Some(p) = previous {
        cmd.env("GOVERNANCE_AUDIT_SECRET_PREVIOUS", p);
    }
    let out = cmd.args(args).output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A private temporary directory for output files.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gov-keys-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Logs `n` events to `chain` through a handle with `secret` that writes only that chain.
async fn log_to(db: &TestDb, secret: &str, chain: &str, n: u64) {
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(secret)
        .check_chains_on_connect([chain])
        .connect()
        .await
        .expect("connect");
    for i in 0..n {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .chain(chain)
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.close().await;
}

#[tokio::test]
async fn a_wrong_secret_is_a_configuration_error_that_names_the_chains_key() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    let (ours, theirs) = (key_id(OTHER_SECRET), key_id(SECRET));

    let (code, stdout, stderr) = run(&db, OTHER_SECRET, None, &["verify"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stdout.contains("UNVERIFIABLE chain default"), "{stdout}");
    assert!(!stdout.contains("TAMPERED"), "{stdout}");
    assert!(
        stderr.contains("not verifiable with the configured keys: chain default"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&theirs) && stderr.contains(&ours),
        "{stderr}"
    );
    assert!(stderr.contains("set GOVERNANCE_AUDIT_SECRET"), "{stderr}");
    assert!(!stderr.contains("tampered"), "{stderr}");
    assert!(
        !stderr.contains(SECRET) && !stderr.contains(OTHER_SECRET),
        "no secret is shown: {stderr}"
    );
    let (code, stdout, _) = run(&db, OTHER_SECRET, None, &["verify", "--json"]);
    assert_eq!(code, 2);
    let v = json(&stdout);
    assert_eq!(v["status"], "unverifiable", "{v}");
    assert_eq!(v["chains"][0]["status"], "unverifiable", "{v}");
    assert!(v["chains"][0]["finding"].is_null(), "{v}");
    assert_eq!(
        v["chains"][0]["unverifiable"]["key_ids"][0],
        theirs.as_str()
    );
    assert_eq!(
        v["chains"][0]["unverifiable"]["seqs"][0],
        serde_json::json!([1, 5])
    );

    // The report agrees: a configuration error, and nothing is written.
    let dir = tempdir("wrong");
    let file = dir.join("r.md");
    let file_arg = file.to_str().expect("utf-8 path");
    let (code, stdout, stderr) = run(&db, OTHER_SECRET, None, &["report", "-o", file_arg]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("not verifiable with the configured keys"),
        "{stderr}"
    );
    assert!(stderr.contains(&theirs), "{stderr}");
    assert!(!file.exists(), "no report is made");

    // Nor is the chain rotated with a key that never sealed it.
    let mut cmd = governance(&db);
    let out = cmd
        .env("GOVERNANCE_AUDIT_SECRET", OTHER_SECRET)
        .env("GOVERNANCE_AUDIT_SECRET_NEW", THIRD)
        .arg("rotate-chain-key")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nothing was rotated"), "{stderr}");

    // With its own secret the chain is untouched and clean.
    let (code, stdout, stderr) = run(&db, SECRET, None, &["verify"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("verified 5 events in 1 chain: clean"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn one_rewritten_key_id_tampers_that_chain_only_and_the_report_is_written() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    log_to(&db, SECRET, "billing", 4).await;
    // An attacker relabels the first row of one chain to a key nobody holds, hoping the whole
    // database reads as "wrong secret".
    db.tamper(&["UPDATE audit_events SET key_id = 'hk1_0123456789ab0123456789ab' WHERE chain_id = 'billing' AND seq = 1"],
    )
    .await;

    let (code, stdout, stderr) = run(&db, SECRET, None, &["verify"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("TAMPERED chain billing: first bad seq 1 (modified row)"),
        "{stdout}"
    );
    assert!(stdout.contains("ok chain default: 5 events"), "{stdout}");
    assert!(
        stderr.contains("tampered: chain billing seq 1: modified row"),
        "{stderr}"
    );
    assert!(stderr.contains("key_id was rewritten"), "{stderr}");
    assert!(!stderr.contains("not verifiable"), "{stderr}");
    let (code, stdout, _) = run(&db, SECRET, None, &["verify", "--json"]);
    assert_eq!(code, 1);
    let v = json(&stdout);
    assert_eq!(v["status"], "tampered");
    assert_eq!(v["chains"][0]["chain_id"], "billing");
    assert_eq!(v["chains"][0]["status"], "tampered");
    assert_eq!(v["chains"][0]["finding"]["reason"], "modified_row");
    assert_eq!(v["chains"][1]["status"], "clean");

    // The report is written, and records the finding where it is.
    let dir = tempdir("relabel");
    let file = dir.join("r.json");
    let file_arg = file.to_str().expect("utf-8 path");
    let (code, _, stderr) = run(&db, SECRET, None, &["report", "-o", file_arg]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("chain billing seq 1"), "{stderr}");
    let r = json(&std::fs::read_to_string(&file).expect("the report is written"));
    let chains = &r["verification"]["chains"];
    assert_eq!(r["verification"]["status"], "tampered");
    assert_eq!(chains[0]["chain_id"], "billing");
    assert_eq!(chains[0]["finding"]["seq"], 1);
    assert_eq!(chains[0]["finding"]["reason"], "modified row");
    assert_eq!(chains[1]["chain_id"], "default");
    assert_eq!(chains[1]["status"], "clean");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn chains_of_two_secrets_are_each_judged_on_their_own() {
    let db = TestDb::new().await;
    // Two services share a database, each with its own secret and chain.
    log_to(&db, SECRET, "alpha", 3).await;
    log_to(&db, OTHER_SECRET, "beta", 2).await;
    let beta_key = key_id(OTHER_SECRET);

    // One secret: alpha is clean, beta cannot be checked (exit 2, naming beta's key).
    let (code, stdout, stderr) = run(&db, SECRET, None, &["verify"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stdout.contains("ok chain alpha: 3 events"), "{stdout}");
    assert!(
        stdout.contains("UNVERIFIABLE chain beta: rows 1..2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("chain beta") && stderr.contains(&beta_key),
        "{stderr}"
    );
    let (code, _, stderr) = run(&db, SECRET, None, &["verify", "--chain", "alpha"]);
    assert_eq!(code, 0, "{stderr}");
    // The report refuses the database as a whole, and is made for the chain it can check.
    let (code, stdout, stderr) = run(&db, SECRET, None, &["report", "--json"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stdout.contains("\"status\":\"error\""), "{stdout}");
    assert!(
        stderr.contains("chain beta") && stderr.contains(&beta_key),
        "{stderr}"
    );
    let (code, _, stderr) = run(&db, SECRET, None, &["report", "--chain", "alpha"]);
    assert_eq!(code, 0, "{stderr}");

    // Both keys (the other service's as a previous one): both chains are checked, clean.
    let (code, stdout, stderr) = run(&db, SECRET, Some(OTHER_SECRET), &["verify"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("verified 5 events in 2 chains: clean"),
        "{stdout}"
    );
    let (code, _, stderr) = run(&db, SECRET, Some(OTHER_SECRET), &["report"]);
    assert_eq!(code, 0, "{stderr}");

    // Tampering in alpha beats the configuration problem of beta: exit 1, both told, and the
    // report is written with each chain's verdict.
    db.tamper(&[
        "UPDATE audit_events SET payload = '{\"n\":700}' WHERE chain_id = 'alpha' AND seq = 2",
    ])
    .await;
    let (code, stdout, stderr) = run(&db, SECRET, None, &["verify"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("TAMPERED chain alpha: first bad seq 2"),
        "{stdout}"
    );
    assert!(stdout.contains("UNVERIFIABLE chain beta"), "{stdout}");
    assert!(
        stderr.contains("tampered: chain alpha seq 2: modified row"),
        "{stderr}"
    );
    assert!(
        stderr.contains("not verifiable with the configured keys: chain beta"),
        "{stderr}"
    );
    let (code, stdout, stderr) = run(&db, SECRET, None, &["report", "--json"]);
    assert_eq!(code, 1, "{stderr}");
    let r = json(&stdout);
    assert_eq!(r["verification"]["status"], "tampered");
    let chains = &r["verification"]["chains"];
    assert_eq!(
        (&chains[0]["chain_id"], &chains[0]["status"]),
        (&"alpha".into(), &"tampered".into())
    );
    assert_eq!(
        (&chains[1]["chain_id"], &chains[1]["status"]),
        (&"beta".into(), &"unverifiable".into())
    );
    assert_eq!(chains[1]["unverifiable"]["key_ids"][0], beta_key.as_str());
    assert!(
        stderr.contains("not verifiable with the configured keys: chain beta"),
        "{stderr}"
    );
}
