//! `governance evidence export` and `governance evidence verify` as processes: a bundle
//! exported from Postgres or a SQLite file verifies with nothing configured (no database, no
//! secret); pinned log and witness keys are honoured; a changed byte anywhere in the file fails
//! with a named reason and never a panic; a tampered chain or an empty period writes nothing.

use std::path::Path;

use assert_cmd::Command;
use gov_sdk::{AuditEvent, Governance};

use crate::support::{SECRET, bare_governance, governance, seed};
use crate::witness::{WitnessProcess, checkpoint, key_file, start_witness, temp_dir};

const LOG: &str = "example.com/gov";

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `governance evidence export` on `cmd` (already pointed at a database) into `file`.
fn export(
    mut cmd: Command,
    key: &str,
    file: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    cmd.args([
        "evidence",
        "export",
        "--signing-key",
        key,
        "--log-name",
        LOG,
        "--json",
    ])
    .arg("--output")
    .arg(file)
    .args(extra);
    let (code, stdout, stderr) = run(&mut cmd);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (code, json, stderr)
}

/// `governance evidence verify FILE ARGS` with nothing configured.
fn check(file: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::from_std(bare_governance());
    cmd.args(["evidence", "verify"]).arg(file).args(args);
    run(&mut cmd)
}

#[tokio::test]
async fn a_bundle_from_postgres_verifies_offline_and_any_changed_byte_fails_with_a_reason() {
    let db = gov_testdb::TestDb::new().await;
    let dir = temp_dir();
    seed(&db, 12).await;
    let key = key_file(&dir, "log.key", "a7");
    let file = dir.join("bundle.dsse.json");
    let (code, json, stderr) = export(governance(&db), &key, &file, &["--from", "1h"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["events"], 12, "{json}");
    assert_eq!(json["tree_size"], 12, "{json}");
    let log_vkey = json["log_vkey"].as_str().expect("vkey").to_owned();

    // Nothing pinned: consistent and signed by the key it carries, and it says so.
    let (code, stdout, stderr) = check(&file, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("was not pinned"), "{stdout}");
    assert!(stdout.contains("HMAC seals are not re-checked"), "{stdout}");
    assert!(stdout.contains("no witness cosigned"), "{stdout}");
    // The log key pinned.
    let (code, stdout, stderr) = check(&file, &["--log-key", &log_vkey, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["log_key_pinned"], true);
    assert_eq!(v["events_in_period"], 12);
    // Another log key pinned: exit 1, named.
    let other = key_file(&dir, "other.key", "b8");
    let other_file = dir.join("other.dsse.json");
    let (code, json, stderr) = export(governance(&db), &other, &other_file, &[]);
    assert_eq!(code, 0, "{stderr}");
    let other_vkey = json["log_vkey"].as_str().expect("vkey").to_owned();
    let (code, stdout, stderr) = check(&file, &["--log-key", &other_vkey, "--json"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stdout.contains("\"reason\":\"envelope_signature\""),
        "{stdout}"
    );
    // A malformed pin is a usage error.
    assert_eq!(check(&file, &["--log-key", "nonsense"]).0, 2);

    // Changed bytes, at positions across the whole file (every byte of its start and end,
    // a sample of the middle): each fails with exit 1 and a reason, none panics.
    let bytes = std::fs::read(&file).expect("read");
    let n = bytes.len();
    let mut positions: Vec<usize> = (0..120.min(n)).chain(n.saturating_sub(160)..n).collect();
    positions.extend((0..n).step_by((n / 80).max(1)));
    positions.sort_unstable();
    positions.dedup();
    let flipped = dir.join("flipped.dsse.json");
    for (i, p) in positions.iter().enumerate() {
        let mut bad = bytes.clone();
        bad[*p] ^= [0x01u8, 0x20, 0x04][i % 3];
        std::fs::write(&flipped, &bad).expect("write");
        let (code, _, stderr) = check(&flipped, &["--log-key", &log_vkey]);
        assert_eq!(code, 1, "byte {p}: {stderr}");
        assert!(stderr.contains("does not verify ("), "byte {p}: {stderr}");
        assert!(!stderr.contains("panicked"), "byte {p}: {stderr}");
    }
    // A cut-off file fails too.
    std::fs::write(&flipped, &bytes[..n / 2]).expect("write");
    assert_eq!(check(&flipped, &[]).0, 1);
    // A missing file is a usage error.
    assert_eq!(check(&dir.join("missing.json"), &[]).0, 2);
}

#[tokio::test]
async fn a_witnessed_bundle_verifies_with_the_witness_key_pinned_and_fails_with_another() {
    let db = gov_testdb::TestDb::new().await;
    let dir = temp_dir();
    seed(&db, 10).await;
    let key = key_file(&dir, "log.key", "a7");
    let (code, stdout, stderr) = checkpoint(&db, &key, None);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let log_vkey = v["checkpoints"][0]["vkey"]
        .as_str()
        .expect("vkey")
        .to_owned();
    let (_witness, peer): (WitnessProcess, String) =
        start_witness(&dir, &format!("{LOG}/default={log_vkey}"));
    let witness_vkey = peer.split_once('=').expect("peer").1.to_owned();
    let (code, _, stderr) = checkpoint(&db, &key, Some(&peer));
    assert_eq!(code, 0, "{stderr}");
    // Rows appended after the witnessed checkpoint are outside the period's proof: the bundle
    // is proven at the witnessed size.
    let until = time::OffsetDateTime::now_utc();
    seed(&db, 3).await;
    let to = until
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    let file = dir.join("witnessed.dsse.json");
    let (code, json, stderr) = export(governance(&db), &key, &file, &["--to", &to]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["tree_size"], 10, "{json}");
    assert_eq!(json["events"], 10, "{json}");
    assert_eq!(json["witnesses"][0]["name"], "witness.example/w1", "{json}");

    let (code, stdout, stderr) = check(
        &file,
        &[
            "--log-key",
            &log_vkey,
            "--witness-key",
            &witness_vkey,
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(v["witnesses"][0]["pinned"], true, "{v}");
    // The same witness name under another key: refused, named.
    let other = gov_sdk::Signer::load("ephemeral", "other").expect("key");
    let other_vkey = gov_sdk::note::Vkey::new(
        "witness.example/w1",
        gov_sdk::note::TYPE_COSIGNATURE_V1,
        other.public_key(),
    )
    .expect("vkey")
    .to_string();
    let (code, stdout, stderr) = check(&file, &["--witness-key", &other_vkey, "--json"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.contains("\"reason\":\"witness\""), "{stdout}");
    assert!(stderr.contains("another key"), "{stderr}");
    // A bundle of the whole record, seq 13 beyond the witnessed size: proven at the head, with no
    // cosignature, so pinning the witness fails.
    let head = dir.join("head.dsse.json");
    let (code, json, stderr) = export(governance(&db), &key, &head, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["tree_size"], 13, "{json}");
    let (code, _, stderr) = check(&head, &["--witness-key", &witness_vkey]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did not cosign"), "{stderr}");
}

#[tokio::test]
async fn a_bundle_from_a_sqlite_file_verifies_offline() {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.join("gov.db").display());
    let at = || {
        let mut cmd = Command::from_std(bare_governance());
        cmd.env("GOVERNANCE_DATABASE_URL", &url)
            .env("GOVERNANCE_AUDIT_SECRET", SECRET);
        cmd
    };
    assert_eq!(run(at().arg("migrate")).0, 0);
    let gov = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    for i in 0..300 {
        let ev = AuditEvent::builder(if i % 2 == 0 { "a" } else { "b" }, "tool.call")
            .payload(serde_json::json!({ "n": i }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.close().await;
    let key = key_file(&dir, "log.key", "a7");
    let file = dir.join("lite.dsse.json");
    let (code, json, stderr) = export(at(), &key, &file, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["events"], 300, "{json}");
    let (code, stdout, stderr) = check(
        &file,
        &["--log-key", json["log_vkey"].as_str().expect("vkey")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("300 events of chain default"), "{stdout}");
}

#[tokio::test]
async fn a_tampered_chain_or_an_empty_period_writes_no_bundle() {
    let db = gov_testdb::TestDb::new().await;
    let dir = temp_dir();
    seed(&db, 5).await;
    let key = key_file(&dir, "log.key", "a7");
    let file = dir.join("none.dsse.json");
    // No event in the period: a configuration error.
    let (code, _, stderr) = export(
        governance(&db),
        &key,
        &file,
        &["--from", "2020-01-01", "--to", "2020-01-02"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no event in the period"), "{stderr}");
    // No log name: a configuration error.
    let (code, _, stderr) = run(governance(&db)
        .args(["evidence", "export", "--signing-key", &key, "--output"])
        .arg(&file));
    assert_eq!(code, 2, "{stderr}");
    // A tampered chain: exit 1, nothing written.
    db.tamper(&["UPDATE audit_events SET payload = '{\"n\":99}' WHERE seq = 3"])
        .await;
    let (code, _, stderr) = export(governance(&db), &key, &file, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(!file.exists());
}

/// Crypto-shredding as an operator runs it: `governance erase` destroys a subject's keys; the
/// bundle exported before still verifies offline, `governance verify` stays clean, a bundle
/// exported after verifies too, and `tail` shows the fields as erased.
#[tokio::test]
async fn an_erasure_leaves_verify_and_bundles_passing_and_the_data_unreadable() {
    let dir = temp_dir();
    let url = format!("sqlite://{}", dir.join("gov.db").display());
    let at = || {
        let mut cmd = Command::from_std(bare_governance());
        cmd.env("GOVERNANCE_DATABASE_URL", &url)
            .env("GOVERNANCE_AUDIT_SECRET", SECRET);
        cmd
    };
    assert_eq!(run(at().arg("migrate")).0, 0);
    let gov = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .expect("connect");
    for (i, subject) in ["u-1", "u-2", "u-1"].iter().enumerate() {
        let ev = AuditEvent::builder("signup-agent", "user.signup")
            .payload(serde_json::json!({ "email": format!("person{i}@example.org"), "n": i }))
            .personal(subject, &["email"])
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
    gov.close().await;
    let key = key_file(&dir, "log.key", "a7");
    let before = dir.join("before.dsse.json");
    let (code, json, stderr) = export(at(), &key, &before, &[]);
    assert_eq!(code, 0, "{stderr}");
    let vkey = json["log_vkey"].as_str().expect("vkey").to_owned();

    let (code, stdout, stderr) = run(at().args([
        "erase",
        "--subject",
        "u-1",
        "--reason",
        "GDPR Art. 17 request 1234",
        "--operator",
        "alice",
        "--json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(out["keys_destroyed"], 1, "{out}");

    let (code, stdout, stderr) = run(at().arg("verify"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, _, stderr) = check(&before, &["--log-key", &vkey]);
    assert_eq!(code, 0, "the bundle exported before the erasure: {stderr}");
    let after = dir.join("after.dsse.json");
    let (code, json, stderr) = export(at(), &key, &after, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["events"], 4, "{json}");
    let (code, _, stderr) = check(&after, &["--log-key", &vkey]);
    assert_eq!(code, 0, "the bundle exported after the erasure: {stderr}");
    let after_text = std::fs::read_to_string(&after).expect("bundle");
    assert!(
        !after_text.contains("example.org"),
        "no plaintext in a bundle"
    );

    let (code, stdout, stderr) =
        run(at().args(["tail", "--json", "--since", "1d", "--limit", "4"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("person1@example.org"),
        "u-2 readable: {stdout}"
    );
    assert!(!stdout.contains("person0@example.org"), "{stdout}");
    assert!(!stdout.contains("person2@example.org"), "{stdout}");
    assert!(stdout.contains(gov_sdk::ERASED), "{stdout}");
    assert!(stdout.contains("subject.erased"), "{stdout}");
}
