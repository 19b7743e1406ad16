//! `governance export` and `governance import` as processes: chains move between Postgres and
//! SQLite (both ways) and verify clean on both sides with equal heads; signed rows and
//! checkpoints move with their signer keys; a damaged, cut-off or foreign file and a divergent
//! target are refused before anything is written.
//!
//! A tampered row (its payload edited in the file, its seal kept) imports — import checks the
//! shape of the file and the links between rows, which needs no secret — and the target's
//! `governance verify` (or `import --verify`) then reports it as a modified row.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use gov_sdk::{AuditEvent, Governance};
use gov_testdb::TestDb;
use serde_json::Value;

use crate::support::SECRET;

/// A directory of this test's own under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gov-export-{tag}-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `sqlite:///abs/path` for a new database file in `dir`.
fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

/// `governance` with a clean environment, pointed at `url`, with the tests' audit secret.
fn at(url: &str) -> Command {
    let mut cmd = Command::from_std(crate::support::bare_governance());
    cmd.env("GOVERNANCE_DATABASE_URL", url)
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("NO_COLOR", "1");
    cmd
}

/// Runs `cmd` and returns (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `governance migrate` on `url`, which must succeed.
fn migrate(url: &str) {
    let (code, _, stderr) = run(at(url).arg("migrate"));
    assert_eq!(code, 0, "migrate: {stderr}");
}

/// `governance export --output FILE` from `url`, which must succeed.
fn export(url: &str, file: &Path) {
    let (code, stdout, stderr) = run(at(url)
        .env_remove("GOVERNANCE_AUDIT_SECRET")
        .args(["export", "--output"])
        .arg(file));
    assert_eq!(code, 0, "export: {stderr}");
    assert!(stdout.contains("exported"), "{stdout}");
}

/// `governance import --input FILE --json` into `url`: (exit code, the JSON, stderr). The
/// audit secret is set only for `--verify`, which needs it.
fn import(url: &str, file: &Path, extra: &[&str]) -> (i32, Value, String) {
    let mut cmd = at(url);
    if !extra.contains(&"--verify") {
        cmd.env_remove("GOVERNANCE_AUDIT_SECRET");
    }
    let (code, stdout, stderr) = run(cmd
        .args(["--json", "import", "--input"])
        .arg(file)
        .args(extra));
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (code, json, stderr)
}

/// `governance verify --json` on `url`: (exit code, the report, stderr).
fn verify(url: &str) -> (i32, Value, String) {
    let (code, stdout, stderr) = run(at(url).args(["verify", "--json"]));
    let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (code, json, stderr)
}

/// Each chain's head seq in a verify report.
fn heads(report: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = report["chains"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    (
                        c["chain_id"].as_str().unwrap_or_default().to_owned(),
                        c["head_seq"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// An export's lines: the header's chains (with their head HMACs) and every other line,
/// sorted, so that two exports of the same chains compare equal whatever their source.
fn content(file: &Path) -> (Value, Vec<String>) {
    let text = std::fs::read_to_string(file).expect("read the export");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("json");
    let mut rest: Vec<String> = lines.map(str::to_owned).collect();
    rest.sort();
    (header["chains"].clone(), rest)
}

/// A key file (mode 600) holding a hex seed: what `GOVERNANCE_SIGNING_KEY=file://…` names.
fn key_file(dir: &Path, name: &str, byte: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, byte.repeat(32)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    format!("file://{}", path.display())
}

/// Logs events of every shape to `url`: `per_task × tasks` on `default` from concurrent
/// sessions (group-committed), each naming its predecessor as parent, and three on `billing`
/// naming an actor. Rows are signed when `signing_key` is given.
async fn seed(url: &str, tasks: usize, per_task: usize, signing_key: Option<&str>) {
    let mut builder = Governance::builder().database_url(url).audit_secret(SECRET);
    if let Some(key) = signing_key {
        builder = builder.signing_key(key, "agent-1");
    }
    let gov = builder.connect().await.expect("connect");
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let gov = gov.clone();
        set.spawn(async move {
            let mut parent = None;
            for i in 0..per_task {
                let mut b = event(t, i).payload(serde_json::json!({
                    "n": i,
                    "text": "naïve \"quoted\" \\ \u{1F600} \u{0001}",
                    "nested": { "b": [1, 2.5, null, true], "a": "z" },
                }));
                if let Some(p) = parent {
                    b = b.parent(p);
                }
                let ev = b.build().expect("event");
                let id = ev.event_id;
                gov.audit().log(ev).await.expect("log");
                parent = Some(id);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("seeding task");
    }
    gov.close().await;
    // Rows naming an actor come only from operator paths; seed them as stored (unsigned).
    let billing = (0..3)
        .map(|i| {
            AuditEvent::builder("billing-agent", "invoice.read")
                .chain("billing")
                .actor("alice")
                .payload(serde_json::json!({ "invoice": i }))
                .build()
                .expect("event")
        })
        .collect();
    gov_testdb::forge::append_unchecked(url, SECRET, billing).await;
}

/// An event of [`seed`]: one session per task, except every third task, which has none.
fn event(task: usize, i: usize) -> gov_sdk::AuditEventBuilder {
    let b = AuditEvent::builder(format!("agent-{}", task % 3), "tool.call");
    if task % 3 == 2 {
        b
    } else {
        b.session(format!("s-{task}-{}", i / 50))
    }
}

#[tokio::test]
async fn chains_move_postgres_to_sqlite_and_back_and_verify_clean_on_both_sides() {
    let source = TestDb::new().await;
    // 2,103 rows: more than one export page (2,000) and three import batches (1,000).
    seed(source.url(), 4, 525, None).await;
    let dir = temp_dir("roundtrip");
    let file = dir.join("pg.jsonl");
    export(source.url(), &file);

    // Postgres → SQLite.
    let lite = sqlite_url(&dir, "target.db");
    migrate(&lite);
    let (code, json, stderr) = import(&lite, &file, &[]);
    assert_eq!(code, 0, "import into SQLite: {stderr}");
    assert_eq!(json["status"], "ok", "{json}");
    assert_eq!(json["target"], "sqlite", "{json}");
    assert_eq!(json["rows"], 2_103, "{json}");
    assert_eq!(json["skipped_rows"], 0, "{json}");
    let (code, pg_report, stderr) = verify(source.url());
    assert_eq!(code, 0, "{stderr}");
    let (code, lite_report, stderr) = verify(&lite);
    assert_eq!(code, 0, "verify on SQLite: {stderr}");
    assert_eq!(lite_report["status"], "clean");
    assert_eq!(
        heads(&pg_report),
        vec![("billing".into(), 3), ("default".into(), 2_100)]
    );
    assert_eq!(heads(&lite_report), heads(&pg_report));
    // Every row, byte for byte, and the heads' HMACs: the SQLite export equals the Postgres one.
    let back = dir.join("lite.jsonl");
    export(&lite, &back);
    assert_eq!(content(&back), content(&file));

    // SQLite → Postgres, through a pipe.
    let target = TestDb::new().await;
    let (code, stdout, stderr) = run(at(target.url())
        .args(["import", "--input", "-", "--verify"])
        .pipe_stdin(&back)
        .expect("stdin"));
    assert_eq!(code, 0, "import into Postgres: {stderr}");
    assert!(
        stdout.contains("imported 2103 rows of 2 chains"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok chain default: 2100 events verified"),
        "{stdout}"
    );
    let (code, pg2_report, stderr) = verify(target.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(heads(&pg2_report), heads(&pg_report));
    let again = dir.join("pg2.jsonl");
    export(target.url(), &again);
    assert_eq!(content(&again), content(&file));

    // Export to stdout, import from stdin, Postgres → Postgres, one chain only.
    let only = TestDb::new().await;
    let piped = run(at(source.url())
        .env_remove("GOVERNANCE_AUDIT_SECRET")
        .args(["export", "--chain", "billing"]));
    assert_eq!(piped.0, 0, "{}", piped.2);
    assert!(piped.2.contains("exported 1 chain (3 rows)"), "{}", piped.2);
    let (code, _, stderr) = run(at(only.url())
        .env_remove("GOVERNANCE_AUDIT_SECRET")
        .arg("import")
        .write_stdin(piped.1));
    assert_eq!(code, 0, "{stderr}");
    let (code, report, stderr) = verify(only.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(heads(&report), vec![("billing".into(), 3)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn signed_rows_and_checkpoints_verify_on_the_target_because_their_keys_move_too() {
    let source = TestDb::new().await;
    let dir = temp_dir("signed");
    let agent_key = key_file(&dir, "agent.key", "5a");
    seed(source.url(), 2, 20, Some(&agent_key)).await;
    let operator_key = key_file(&dir, "operator.key", "c3");
    let heads_file = dir.join("heads.json");
    let (code, _, stderr) = run(at(source.url())
        .env("GOVERNANCE_SIGNING_KEY", &operator_key)
        .args(["checkpoint", "--output"])
        .arg(&heads_file));
    assert_eq!(code, 0, "checkpoint: {stderr}");
    let file = dir.join("signed.jsonl");
    export(source.url(), &file);
    let text = std::fs::read_to_string(&file).expect("export");
    assert_eq!(text.matches("\"type\":\"signer\"").count(), 2, "{text}");
    assert_eq!(text.matches("\"type\":\"checkpoint\"").count(), 2);

    let lite = sqlite_url(&dir, "signed.db");
    migrate(&lite);
    let (code, json, stderr) = import(&lite, &file, &["--verify"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["signers"], 2, "{json}");
    assert_eq!(json["checkpoints"], 2, "{json}");
    assert_eq!(json["verify"]["status"], "clean", "{json}");
    let (code, report, stderr) = verify(&lite);
    assert_eq!(code, 0, "{stderr}");
    let default = report["chains"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["chain_id"] == "default"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(default["signatures"]["signed"], 40, "{report}");
    // The heads signed on the source hold on the target.
    let (code, _, stderr) = run(at(&lite).arg("verify").arg("--checkpoint").arg(&heads_file));
    assert_eq!(code, 0, "verify --checkpoint on SQLite: {stderr}");

    // And back to Postgres: the same signed rows and checkpoints.
    let back = dir.join("back.jsonl");
    export(&lite, &back);
    assert_eq!(content(&back), content(&file));
    let target = TestDb::new().await;
    let (code, _, stderr) = import(target.url(), &back, &[]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(at(target.url())
        .arg("verify")
        .arg("--checkpoint")
        .arg(&heads_file));
    assert_eq!(code, 0, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rewrites the export line by line.
fn edit(file: &Path, to: &Path, f: impl Fn(&mut Value)) {
    let text = std::fs::read_to_string(file).expect("export");
    let mut out = String::new();
    for line in text.lines() {
        let mut v: Value = serde_json::from_str(line).expect("json line");
        f(&mut v);
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::fs::write(to, out).expect("write");
}

#[tokio::test]
async fn a_tampered_row_imports_but_the_target_verify_reports_it() {
    let source = TestDb::new().await;
    seed(source.url(), 1, 10, None).await;
    let dir = temp_dir("tampered");
    let file = dir.join("clean.jsonl");
    export(source.url(), &file);
    let bad = dir.join("tampered.jsonl");
    edit(&file, &bad, |v| {
        if v["type"] == "row" && v["chain_id"] == "default" && v["seq"] == 5 {
            v["payload"] = Value::String("{\"n\":500}".into());
        }
    });
    // The links are intact, so the import goes through (it has no secret to check seals with)…
    let lite = sqlite_url(&dir, "tampered.db");
    migrate(&lite);
    let (code, _, stderr) = import(&lite, &bad, &[]);
    assert_eq!(code, 0, "{stderr}");
    // …and the target's verify names the row.
    let (code, report, stderr) = verify(&lite);
    assert_eq!(code, 1, "{report}");
    assert!(
        stderr.contains("chain default seq 5: modified row"),
        "{stderr}"
    );
    // With --verify the import itself says so, exit 1.
    let target = TestDb::new().await;
    let (code, json, stderr) = import(target.url(), &bad, &["--verify"]);
    assert_eq!(code, 1, "{json}");
    assert_eq!(json["status"], "tampered", "{json}");
    assert!(stderr.contains("chain default seq 5"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_cut_off_damaged_or_foreign_file_is_refused_before_anything_is_written() {
    let source = TestDb::new().await;
    seed(source.url(), 1, 12, None).await;
    let dir = temp_dir("refused");
    let file = dir.join("whole.jsonl");
    export(source.url(), &file);
    let text = std::fs::read_to_string(&file).expect("export");
    let lines: Vec<&str> = text.lines().collect();
    let target = sqlite_url(&dir, "target.db");
    migrate(&target);
    let refused = |path: &Path, expect: &str| {
        let (code, json, stderr) = import(&target, path, &[]);
        assert_eq!(code, 2, "{}: {stderr}", path.display());
        assert!(stderr.contains(expect), "{}: {stderr}", path.display());
        assert!(stderr.contains("nothing was imported"), "{stderr}");
        assert_eq!(json["status"], "error");
        assert_eq!(json["exit_code"], 2);
    };

    // No end line: cut off.
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").expect("write");
    refused(&cut, "without its end line: the export was cut off");
    // Cut in the middle of a row.
    let half = dir.join("half.jsonl");
    let mut cut_at = text.len() / 2;
    while !text.is_char_boundary(cut_at) {
        cut_at -= 1;
    }
    std::fs::write(&half, &text[..cut_at]).expect("write");
    refused(&half, "is not a valid export line");
    // An end line whose count does not match.
    let counted = dir.join("counted.jsonl");
    edit(&file, &counted, |v| {
        if v["type"] == "end" {
            v["rows"] = Value::from(v["rows"].as_u64().unwrap_or(0) + 1);
        }
    });
    refused(&counted, "end line counts 16 rows but the file holds 15");
    // A row taken out (and the count fixed): the chain no longer links up.
    let gap = dir.join("gap.jsonl");
    let without: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            !(l.contains("\"type\":\"row\"")
                && l.contains("\"seq\":4,")
                && l.contains("\"chain_id\":\"default\""))
        })
        .collect();
    assert_eq!(without.len(), lines.len() - 1);
    std::fs::write(
        &gap,
        without.join("\n").replace("\"rows\":15", "\"rows\":14"),
    )
    .expect("write");
    refused(&gap, "row 5 of chain default follows row 3");
    // Another version.
    let v2 = dir.join("v2.jsonl");
    edit(&file, &v2, |v| {
        if v["format"] == "governance-export" {
            v["version"] = Value::from(2);
        }
    });
    refused(&v2, "is a governance export of version 2, which governance");
    // Not an export at all.
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"format\":\"governance.checkpoints.v1\"}\n").expect("write");
    let (code, _, stderr) = import(&target, &junk, &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a governance export"), "{stderr}");
    let (code, _, stderr) = import(&target, &dir.join("missing.jsonl"), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot read the export file"), "{stderr}");

    // Nothing reached the target.
    let (code, _, stderr) = verify(&target);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing was verified"), "{stderr}");
    // The whole file still imports.
    let (code, json, stderr) = import(&target, &file, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["rows"], 15);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_import_into_a_divergent_chain_is_refused_and_a_repeated_one_resumes() {
    let source = TestDb::new().await;
    seed(source.url(), 1, 5, None).await;
    let dir = temp_dir("divergent");
    let first = dir.join("first.jsonl");
    export(source.url(), &first);

    // A target whose `default` chain is another one: refused, nothing written (not even the
    // `billing` chain, which the target does not have).
    let other = TestDb::new().await;
    crate::support::seed(&other, 3).await;
    let (code, json, stderr) = import(other.url(), &first, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(json["exit_code"], 2);
    assert!(
        stderr.contains("chain default already has rows in the target database (up to seq 3) that the file does not continue"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert!(!stderr.contains("postgres://"), "{stderr}");
    let (code, report, _) = verify(other.url());
    assert_eq!(code, 0);
    assert_eq!(heads(&report), vec![("default".into(), 3)]);

    // The same file twice: the second run finds every row there.
    let target = TestDb::new().await;
    let (code, json, stderr) = import(target.url(), &first, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["rows"], 8, "{json}");
    let (code, json, stderr) = import(target.url(), &first, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["rows"], 0, "{json}");
    assert_eq!(json["skipped_rows"], 8, "{json}");
    // A later export of the same chains continues where the target stands.
    seed(source.url(), 1, 4, None).await;
    let second = dir.join("second.jsonl");
    export(source.url(), &second);
    let (code, json, stderr) = import(target.url(), &second, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(json["rows"], 7, "{json}");
    assert_eq!(json["skipped_rows"], 8, "{json}");
    let (code, report, stderr) = verify(target.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        heads(&report),
        vec![("billing".into(), 6), ("default".into(), 9)]
    );
    // The older file into the newer target: everything is already there.
    let (code, json, _) = import(target.url(), &first, &[]);
    assert_eq!(code, 0);
    assert_eq!(json["rows"], 0, "{json}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_target_must_be_migrated_and_only_verify_needs_the_secret() {
    let source = TestDb::new().await;
    seed(source.url(), 1, 3, None).await;
    let dir = temp_dir("setup");
    let file = dir.join("chains.jsonl");
    export(source.url(), &file);

    let unmigrated = TestDb::empty().await;
    let (code, _, stderr) = import(unmigrated.url(), &file, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("governance migrate"), "{stderr}");
    let fresh = sqlite_url(&dir, "fresh.db");
    let (code, _, stderr) = import(&fresh, &file, &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("governance migrate"), "{stderr}");

    // --verify needs the secret, and says so before writing anything.
    migrate(&fresh);
    let (code, _, stderr) = run(at(&fresh)
        .env_remove("GOVERNANCE_AUDIT_SECRET")
        .args(["import", "--verify", "--input"])
        .arg(&file));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no audit secret is set"), "{stderr}");
    let (code, _, _) = verify(&fresh);
    assert_eq!(code, 2, "nothing should have been imported");

    // An unknown chain, and a database with no chain at all.
    let (code, _, stderr) = run(at(source.url()).args(["export", "--chain", "nope"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("no audit chain named nope"), "{stderr}");
    let empty = TestDb::new().await;
    let (code, _, stderr) = run(at(empty.url()).arg("export"));
    assert_eq!(code, 2);
    assert!(stderr.contains("nothing to export"), "{stderr}");
    // An --output that cannot be written leaves nothing behind.
    let (code, _, stderr) = run(at(source.url())
        .args(["export", "--output"])
        .arg(dir.join("no-such-dir").join("x.jsonl")));
    assert_eq!(code, 2);
    assert!(stderr.contains("cannot write the export"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
