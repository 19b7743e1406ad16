//! `governance prove` as a process: inclusion and consistency proofs from the database, written
//! as JSON and checked offline by `governance prove --verify` with no database configured; any
//! changed byte of a proof file makes the check fail.

use predicates::prelude::*;

use crate::support::{bare_governance, governance, seed};

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gov-prove-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join(name)
}

/// `governance prove ARGS --json`, saved to a file.
fn prove_to_file(db: &gov_testdb::TestDb, args: &[&str], name: &str) -> std::path::PathBuf {
    let out = governance(db)
        .arg("prove")
        .args(args)
        .arg("--json")
        .output()
        .expect("run governance");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = temp(name);
    std::fs::write(&path, &out.stdout).expect("write");
    path
}

/// `governance prove --verify FILE` with nothing configured: (exit code, stdout, stderr).
fn check_offline(path: &std::path::Path) -> (i32, String, String) {
    let out = bare_governance()
        .args(["prove", "--verify"])
        .arg(path)
        .output()
        .expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every hex digit of the file's hashes and leaf data, changed one at a time (a sample of
/// positions), fails the offline check with exit 1.
fn every_change_fails(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("read");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut fields: Vec<String> = ["leaf_data", "leaf_hash", "root", "from_root", "to_root"]
        .iter()
        .filter(|k| v.get(**k).is_some())
        .map(|k| (*k).to_owned())
        .collect();
    let proof_len = v["proof"].as_array().map_or(0, Vec::len);
    fields.extend((0..proof_len).map(|i| format!("proof/{i}")));
    assert!(fields.len() >= 3, "{text}");
    for f in fields {
        let mut changed = v.clone();
        let slot = match f.split_once('/') {
            Some((_, i)) => &mut changed["proof"][i.parse::<usize>().expect("index")],
            None => &mut changed[f.as_str()],
        };
        let s = slot.as_str().expect("hex").to_owned();
        // Flip one hex digit in the middle.
        let mid = s.len() / 2;
        let digit = if &s[mid..=mid] == "0" { "1" } else { "0" };
        *slot = serde_json::Value::String(format!("{}{digit}{}", &s[..mid], &s[mid + 1..]));
        let bad = temp("changed.json");
        std::fs::write(&bad, changed.to_string()).expect("write");
        let (code, _, stderr) = check_offline(&bad);
        assert_eq!(code, 1, "{f} changed: {stderr}");
        assert!(stderr.contains("the proof does not hold"), "{f}: {stderr}");
    }
}

#[tokio::test]
async fn proofs_verify_offline_and_any_change_fails() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 300).await;
    governance(&db)
        .args(["prove", "--seq", "7"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "row 7 of chain default is leaf 6 of the tree of size 300",
        ))
        .stdout(predicate::str::contains("leaf hash"))
        .stdout(predicate::str::contains("root"));

    let inclusion = prove_to_file(
        &db,
        &["--chain", "default", "--seq", "7", "--size", "260"],
        "inclusion.json",
    );
    let (code, stdout, stderr) = check_offline(&inclusion);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("row 7 of chain default is leaf 6 of the tree of size 260"),
        "{stdout}"
    );
    every_change_fails(&inclusion);

    // Claiming the leaf as another row fails too.
    let text = std::fs::read_to_string(&inclusion).expect("read");
    let other = temp("other.json");
    std::fs::write(
        &other,
        text.replace("\"seq\":7", "\"seq\":8")
            .replace("\"leaf_index\":6", "\"leaf_index\":7"),
    )
    .expect("write");
    let (code, _, stderr) = check_offline(&other);
    assert_eq!(code, 1, "{stderr}");

    let consistency = prove_to_file(&db, &["--from", "100", "--to", "300"], "consistency.json");
    let (code, stdout, stderr) = check_offline(&consistency);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("the tree of size 100 of chain default"),
        "{stdout}"
    );
    every_change_fails(&consistency);
}

#[tokio::test]
async fn prove_refuses_bad_input() {
    let db = gov_testdb::TestDb::new().await;
    seed(&db, 5).await;
    governance(&db)
        .args(["prove", "--seq", "6"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "beyond the head of chain default (seq 5)",
        ));
    governance(&db)
        .args(["prove", "--seq", "3", "--size", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "the size must be at least the seq",
        ));
    governance(&db)
        .args(["prove", "--chain", "nope", "--seq", "1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope"));
    governance(&db)
        .args(["prove", "--from", "4", "--to", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("1 <= from <= to"));
    governance(&db)
        .args(["prove", "--seq", "1", "--from", "1", "--to", "2"])
        .assert()
        .code(2);
    let junk = temp("junk.json");
    std::fs::write(&junk, "{}").expect("junk");
    let (code, _, stderr) = check_offline(&junk);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a governance proof file"), "{stderr}");
    let (code, _, stderr) = check_offline(std::path::Path::new("/nonexistent/proof.json"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot read the proof file"), "{stderr}");
}
