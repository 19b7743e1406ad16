//! A witness as a real process (`governance witness serve`) and the log pushing to it
//! (`governance checkpoint --witness`): a history rebuilt with every key the database owner holds
//! (rows, HMAC secret, signing key) is caught through the witness's cosignature, the witness
//! refuses the rebuilt checkpoint and keeps its state, and a changed cosignature byte is a
//! finding.

use std::io::BufRead as _;

use crate::support::{bare_governance, governance, seed, verify};

pub(crate) fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gov-witness-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

pub(crate) fn key_file(dir: &std::path::Path, name: &str, byte: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, byte.repeat(32)).expect("key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    format!("file://{}", path.display())
}

/// The witness process, killed when dropped.
pub(crate) struct WitnessProcess(std::process::Child);

impl Drop for WitnessProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a witness for `log=vkey` and returns it with `URL=VKEY` for `--witness`, once it
/// printed its address (the readiness signal).
pub(crate) fn start_witness(dir: &std::path::Path, log: &str) -> (WitnessProcess, String) {
    let key = key_file(dir, "witness.key", "5c");
    let mut child = bare_governance()
        .args([
            "witness",
            "serve",
            "--key",
            &key,
            "--name",
            "witness.example/w1",
        ])
        .arg("--state")
        .arg(dir.join("state"))
        .args(["--listen", "127.0.0.1:0", "--log", log])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn witness");
    let stdout = child.stdout.take().expect("stdout");
    let w = WitnessProcess(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let url = lines
        .next()
        .expect("a line")
        .expect("utf-8")
        .strip_prefix("listening on ")
        .expect("address")
        .to_owned();
    let vkey = lines
        .next()
        .expect("a line")
        .expect("utf-8")
        .strip_prefix("witness vkey ")
        .expect("vkey")
        .to_owned();
    (w, format!("{url}={vkey}"))
}

pub(crate) fn checkpoint(
    db: &gov_testdb::TestDb,
    key: &str,
    witness: Option<&str>,
) -> (i32, String, String) {
    let mut cmd = governance(db);
    cmd.args(["checkpoint", "--signing-key", key, "--format", "note"])
        .args(["--log-name", "example.com/gov", "--json"]);
    if let Some(w) = witness {
        cmd.args(["--witness", w]);
    }
    let out = cmd.output().expect("run governance");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_history_rebuilt_with_every_key_is_caught_by_the_witness() {
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
    let (_witness, peer) = start_witness(&dir, &format!("example.com/gov/default={log_vkey}"));

    // First contact (the log knows no size: the witness's 409 tells it 0), then growth with a
    // consistency proof from 10 to 15.
    let (code, stdout, stderr) = checkpoint(&db, &key, Some(&peer));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("witness.example/w1"), "{stdout}");
    seed(&db, 5).await;
    let (code, _, stderr) = checkpoint(&db, &key, Some(&peer));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verify(&db, &[]).0, 0);
    let state: Vec<_> = std::fs::read_dir(dir.join("state"))
        .expect("state")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".checkpoint"))
        .collect();
    assert_eq!(state.len(), 1);
    let state = state[0].path();
    let kept = std::fs::read_to_string(&state).expect("state");
    assert!(kept.starts_with("example.com/gov/default\n15\n"), "{kept}");

    // One changed byte of a stored cosignature is a finding.
    let flip = "UPDATE witness_cosignatures SET signature = set_byte(signature, 5, get_byte(signature, 5) # 1) WHERE tree_size = 10";
    db.tamper(&[flip]).await;
    let (code, _, stderr) = verify(&db, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bad cosignature"), "{stderr}");
    db.tamper(&[flip]).await;
    assert_eq!(verify(&db, &[]).0, 0);

    // The owner rebuilds the history with every key: rows rewritten through the SDK with the
    // HMAC secret, v1 checkpoints re-signed with the signing key, tiles dropped.
    db.tamper(&[
        "DELETE FROM audit_events",
        "DELETE FROM checkpoints",
        "DELETE FROM audit_tree_tiles",
        "UPDATE chain_heads SET seq = 0, head_hmac = decode(repeat('00', 32), 'hex')",
    ])
    .await;
    seed(&db, 15).await;
    governance(&db)
        .args(["checkpoint", "--signing-key", &key])
        .assert()
        .success();
    // The cosignature held in the database no longer matches the rows.
    let (code, _, stderr) = verify(&db, &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cosignature mismatch"), "{stderr}");
    // Even with the cosignatures deleted too, the witness refuses the rebuilt tree and keeps
    // its state.
    db.tamper(&["DELETE FROM witness_cosignatures"]).await;
    seed(&db, 1).await;
    let (code, _, stderr) = checkpoint(&db, &key, Some(&peer));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not consistent"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&state).expect("state"), kept);
}

#[tokio::test]
async fn the_witness_answers_by_the_spec_and_keeps_its_state() {
    let db = gov_testdb::TestDb::new().await;
    let dir = temp_dir();
    seed(&db, 4).await;
    let key = key_file(&dir, "log.key", "a7");
    let (_, stdout, _) = checkpoint(&db, &key, None);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let cp = &v["checkpoints"][0];
    let log_vkey = cp["vkey"].as_str().expect("vkey");
    let note = cp["note"].as_str().expect("note").to_owned();
    let (_witness, peer) = start_witness(&dir, &format!("example.com/gov/default={log_vkey}"));
    let url = format!("{}/add-checkpoint", peer.rsplit_once('=').expect("peer").0);
    let client = reqwest::Client::new();
    let post = |body: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let r = client.post(url).body(body).send().await.expect("post");
            let ctype = r
                .headers()
                .get("content-type")
                .map(|h| h.to_str().unwrap_or_default().to_owned());
            (r.status().as_u16(), ctype, r.text().await.expect("body"))
        }
    };
    // Unknown origin: 404; a signature that does not verify: 403; old size beyond: 400.
    let other = note.replace("example.com/gov/default", "example.com/other/default");
    assert_eq!(post(format!("old 0\n\n{other}")).await.0, 404);
    let forged = note.replacen("\n4\n", "\n3\n", 1);
    assert_eq!(post(format!("old 0\n\n{forged}")).await.0, 403);
    assert_eq!(post(format!("old 5\n\n{note}")).await.0, 400);
    // First contact: 200 with a cosignature line.
    let (status, _, body) = post(format!("old 0\n\n{note}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("\u{2014} witness.example/w1 "), "{body}");
    let state = std::fs::read_dir(dir.join("state"))
        .expect("state")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".checkpoint"))
        .expect("state file")
        .path();
    let kept = std::fs::read_to_string(&state).expect("state");
    // A stale old size: 409 with the witness's size.
    let (status, ctype, body) = post(format!("old 0\n\n{note}")).await;
    assert_eq!((status, body.as_str()), (409, "4\n"));
    assert_eq!(ctype.as_deref(), Some("text/x.tlog.size"));
    // Another root at the same size (a rebuilt chain, signed by the log's key): 422.
    db.tamper(&[
        "DELETE FROM audit_events",
        "DELETE FROM checkpoints",
        "UPDATE chain_heads SET seq = 0, head_hmac = decode(repeat('00', 32), 'hex')",
    ])
    .await;
    seed(&db, 4).await;
    let (_, stdout, _) = checkpoint(&db, &key, None);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let rebuilt = v["checkpoints"][0]["note"].as_str().expect("note");
    assert_ne!(rebuilt, note);
    assert_eq!(post(format!("old 4\n\n{rebuilt}")).await.0, 422);
    assert_eq!(std::fs::read_to_string(&state).expect("state"), kept);
}
