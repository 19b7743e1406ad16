//! Files the CLI writes (`report`, `export`, `checkpoint` with `--output`), as a local attacker
//! on the host sees them: a symlink planted at the temporary file's name (the old predictable
//! `.NAME.PID.tmp`, planted for the very process that writes) or at the target itself never
//! redirects the write to the file it points at; the output lands as a regular file of mode 600.

use std::path::{Path, PathBuf};
use std::process::Command;

use gov_testdb::TestDb;

use crate::support::{SECRET, seed};

/// A directory of its own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "gov-e2e-{name}-{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const PRECIOUS: &str = "the victim's file, which the attacker wants overwritten\n";

/// Runs `governance ARGS --output OUT` in `dir` through `sh`, which first plants symlinks to
/// `victim` at `.OUT.$$.tmp` (the name the old code wrote through, `$$` being the pid that `exec`
/// hands to governance) and at `OUT` itself. Returns (exit code, stderr).
fn run_with_planted_links(
    db: &TestDb,
    dir: &Path,
    victim: &Path,
    out: &str,
    args: &[&str],
) -> (i32, String) {
    let mut cmd = Command::new("sh");
    crate::support::hermetic(&mut cmd);
    let status = cmd
        .current_dir(dir)
        .env("GOVERNANCE_DATABASE_URL", db.url())
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .env("NO_COLOR", "1")
        .env("VICTIM", victim)
        .env("OUT", out)
        .env("GOV", assert_cmd::cargo::cargo_bin("governance"))
        .arg("-c")
        .arg(r#"ln -s "$VICTIM" ".$OUT.$$.tmp" && ln -s "$VICTIM" "$OUT" && exec "$GOV" "$@" --output "$OUT""#)
        .arg("sh")
        .args(args)
        .output()
        .expect("run sh");
    (
        status.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&status.stderr).into_owned(),
    )
}

fn assert_safe(dir: &Path, victim: &Path, out: &str, what: &str) {
    assert_eq!(
        std::fs::read_to_string(victim).expect("victim"),
        PRECIOUS,
        "{what}: the write followed a planted symlink into another file"
    );
    let meta = std::fs::symlink_metadata(dir.join(out)).expect("output");
    assert!(
        meta.file_type().is_file(),
        "{what}: the output is not a regular file"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{what}: mode");
    }
    // No temporary file is left beside it (the planted links are not ours).
    let left: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{what}: left behind {left:?}");
}

#[tokio::test]
async fn report_export_and_checkpoint_never_write_through_a_planted_symlink() {
    let db = TestDb::new().await;
    seed(&db, 5).await;
    let dir = Dir::new("outputs");
    let victim = dir.0.join("victim.txt");
    let key = dir.0.join("operator.key");
    std::fs::write(&key, "4f".repeat(16) + &"a1".repeat(16)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let key = format!("file://{}", key.display());
    for (out, args, expect) in [
        (
            "report.json",
            vec!["report", "--format", "article12"],
            "\"rotation_aware\"",
        ),
        (
            "chains.jsonl",
            vec!["export"],
            "\"format\":\"governance-export\"",
        ),
        (
            "heads.json",
            vec!["checkpoint", "--signing-key", key.as_str()],
            "\"checkpoints\"",
        ),
    ] {
        std::fs::write(&victim, PRECIOUS).expect("victim");
        let (code, stderr) = run_with_planted_links(&db, &dir.0, &victim, out, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_safe(&dir.0, &victim, out, args[0]);
        let text = std::fs::read_to_string(dir.0.join(out)).expect("output");
        assert!(text.contains(expect), "{args:?}: {text}");
    }
}

#[tokio::test]
async fn an_output_in_a_missing_directory_is_a_clear_error_that_writes_nothing() {
    let db = TestDb::new().await;
    seed(&db, 1).await;
    let dir = Dir::new("outputs-missing");
    let out = crate::support::governance(&db)
        .args(["report", "--format", "article12", "--output"])
        .arg(dir.0.join("no-such-dir").join("report.json"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot write the report to") && stderr.contains("--output"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&dir.0).expect("list").count(), 0);
}
