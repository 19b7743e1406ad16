//! `governance archive` as a process: a dry run says what would go; the archive is written,
//! its SHA-256 reported and recorded, the rows removed, and `governance verify` checks the rest
//! from the cut; the archive imports into an empty database and verifies there. Rows younger
//! than the minimum age, an existing output file and the application role's credentials are
//! refused with nothing removed.

use std::process::Output;

use gov_testdb::TestDb;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::support::{governance, seed};

fn text(o: &Output) -> (i32, String, String) {
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn archive_removes_old_rows_and_the_rest_still_verifies() {
    let db = TestDb::new().await;
    seed(&db, 300).await;
    let dir = std::env::temp_dir().join(format!(
        "gov-archive-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("default-1.jsonl");

    // Everything is younger than six months: nothing to archive by default.
    let (code, _, stderr) = text(
        &governance(&db)
            .args(["archive", "--output"])
            .arg(&file)
            .args(["--reason", "retention"])
            .output()
            .expect("run"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("nothing to archive"), "{stderr}");
    assert!(!file.exists());

    let (code, stdout, stderr) = text(
        &governance(&db)
            .args(["archive", "--dry-run", "--min-age-days", "0"])
            .output()
            .expect("run"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("would archive chain default seq 1..256"),
        "{stdout}"
    );

    // The application role may plan and read, but not cut: nothing is removed.
    let app_file = dir.join("by-app.jsonl");
    let (code, _, stderr) = text(
        &governance(&db)
            .env("GOVERNANCE_DATABASE_URL", db.app_url())
            .args(["archive", "--min-age-days", "0", "--output"])
            .arg(&app_file)
            .args(["--reason", "cover tracks"])
            .output()
            .expect("run"),
    );
    assert_ne!(code, 0, "the app role archived: {stderr}");
    assert!(!stderr.contains("postgres://"), "{stderr}");

    let (code, stdout, stderr) = text(
        &governance(&db)
            .args(["--json", "archive", "--min-age-days", "0", "--output"])
            .arg(&file)
            .args(["--reason", "retention test", "--operator", "alice"])
            .output()
            .expect("run"),
    );
    assert_eq!(code, 0, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(v["through_seq"], 256);
    assert_eq!(v["rows_removed"], 256);
    let bytes = std::fs::read(&file).expect("the archive");
    assert_eq!(v["archive_sha256"], hex::encode(Sha256::digest(&bytes)));

    // An archive is never written over another file.
    let (code, _, stderr) = text(
        &governance(&db)
            .args(["archive", "--min-age-days", "0", "--output"])
            .arg(&file)
            .args(["--reason", "again"])
            .output()
            .expect("run"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exists"), "{stderr}");
    assert_eq!(std::fs::read(&file).expect("the archive"), bytes);

    let (code, stdout, stderr) = text(&governance(&db).arg("verify").output().expect("run"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("seq 257..301"), "{stdout}");
    assert!(stdout.contains("(seq 1..256 archived)"), "{stdout}");

    // The archive alone rebuilds seq 1..256 in an empty database, which verifies.
    let target = TestDb::new().await;
    let (code, _, stderr) = text(
        &governance(&target)
            .args(["import", "--verify", "--input"])
            .arg(&file)
            .output()
            .expect("run"),
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = text(&governance(&target).arg("verify").output().expect("run"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("256 events, seq 1..256"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
