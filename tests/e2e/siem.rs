//! `governance siem export`: every event once and in order to a file (Postgres and SQLite); to an
//! HTTP endpoint through 503s and a cut connection; resumed from its cursor after a kill; stopped
//! by a 400 with the cursor left where it was.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gov_sdk::{AuditEvent, Governance};
use gov_testdb::{TestBackend, TestStore};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{SECRET, bare_governance};

async fn connect(url: &str) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect")
}

async fn log(gov: &Governance, from: u64, to: u64) {
    for n in from..to {
        let ev = AuditEvent::builder("agent-1", "tool.call")
            .session("s-1")
            .payload(serde_json::json!({ "n": n }))
            .build()
            .expect("event");
        gov.audit().log(ev).await.expect("log");
    }
}

fn governance(url: &str) -> std::process::Command {
    let mut cmd = bare_governance();
    cmd.env("GOVERNANCE_DATABASE_URL", url)
        .env("GOVERNANCE_AUDIT_SECRET", SECRET)
        .args(["siem", "export"]);
    cmd
}

/// Runs the export to completion off the async threads (the test's HTTP server runs on them).
async fn run(mut cmd: std::process::Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run governance"))
        .await
        .expect("join")
}

fn cursor_seq(path: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    assert_eq!(v["format"], "governance.siem.cursor.v1");
    v["seq"].as_i64()
}

fn seqs_ocsf(text: &str) -> Vec<i64> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["metadata"]["sequence"].as_i64().expect("sequence")
        })
        .collect()
}

fn seqs_cloudevents(text: &str) -> Vec<i64> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["govseq"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("govseq")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siem_export_to_a_file_holds_every_event_once_in_order_on_both_backends() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        let gov = connect(db.url()).await;
        log(&gov, 0, 25).await;
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("events.jsonl");
        let cursor = dir.path().join("siem.cursor");
        let mut cmd = governance(db.url());
        cmd.args(["--format", "ocsf", "--batch-size", "7", "--output"])
            .arg(&file)
            .arg("--cursor")
            .arg(&cursor);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&file).expect("the export");
        assert_eq!(seqs_ocsf(&text), (1..=25).collect::<Vec<_>>(), "{backend}");
        // Each line names its event and the one before it, as stored.
        let rows = gov
            .audit()
            .events(&gov_sdk::EventFilter {
                limit: Some(100),
                ..Default::default()
            })
            .await
            .expect("rows");
        for (i, (line, row)) in text.lines().zip(&rows).enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["metadata"]["uid"], row.event_id.to_string());
            assert_eq!(v["raw_data"], row.payload);
            let att = &v["attestation_list"][0];
            assert_eq!(att["fingerprint"]["value"], hex::encode(&row.row_hmac));
            if i > 0 {
                assert_eq!(att["prev_event"]["uid"], rows[i - 1].event_id.to_string());
            }
        }
        assert_eq!(cursor_seq(&cursor), Some(25), "{backend}");

        // Resumed: only what was appended since, here as CloudEvents on stdout.
        log(&gov, 25, 30).await;
        let mut cmd = governance(db.url());
        cmd.args(["--format", "cloudevents", "--cursor"])
            .arg(&cursor);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            seqs_cloudevents(&text),
            (26..=30).collect::<Vec<_>>(),
            "{backend}"
        );
        assert_eq!(cursor_seq(&cursor), Some(30), "{backend}");
        gov.close().await;
    }
}

/// How the test endpoint answers one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// 503 with `Retry-After: 1`.
    RetryAfter,
    /// Read the request, then close the connection without an answer.
    Cut,
}

/// A small HTTP/1.1 endpoint: answers by script, then `then`; keeps the bodies it accepted.
struct Endpoint {
    url: String,
    accepted: Arc<Mutex<Vec<String>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Endpoint {
    async fn start(script: Vec<Reply>, then: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/ingest", listener.local_addr().expect("addr"));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (acc, cts) = (accepted.clone(), content_types.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (acc, cts, script) = (acc.clone(), cts.clone(), script.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut sock).await else {
                        return;
                    };
                    let reply = script.lock().expect("lock").pop_front().unwrap_or(then);
                    let head = match reply {
                        Reply::Cut => return,
                        Reply::RetryAfter => {
                            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n".to_owned()
                        }
                        Reply::Status(code) => {
                            if (200..300).contains(&code) {
                                acc.lock().expect("lock").push(body);
                                let ct = headers
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-type:")
                                            .map(|v| v.trim().to_owned())
                                    })
                                    .unwrap_or_default();
                                cts.lock().expect("lock").push(ct);
                            }
                            format!("HTTP/1.1 {code} X\r\n")
                        }
                    };
                    let _ = sock
                        .write_all(
                            format!("{head}Content-Length: 0\r\nConnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self {
            url,
            accepted,
            content_types,
        }
    }

    /// The seqs of every event accepted, in the order accepted.
    fn seqs(&self) -> Vec<i64> {
        let bodies = self.accepted.lock().expect("lock").clone();
        bodies.iter().flat_map(|b| seqs_cloudevents(b)).collect()
    }
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let headers = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let len: usize = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((
        headers,
        String::from_utf8_lossy(&buf[header_end..header_end + len]).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siem_post_delivers_every_event_in_order_through_503s_and_a_cut_connection() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let gov = connect(db.url()).await;
    log(&gov, 0, 30).await;
    let endpoint = Endpoint::start(
        vec![
            Reply::RetryAfter,
            Reply::Status(200),
            Reply::Cut,
            Reply::Status(503),
            Reply::Status(429),
        ],
        Reply::Status(200),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let cursor = dir.path().join("siem.cursor");
    let mut cmd = governance(db.url());
    cmd.args(["--format", "cloudevents", "--batch-size", "10", "--post"])
        .arg(&endpoint.url)
        .arg("--cursor")
        .arg(&cursor);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each batch accepted once, in order: nothing missing, nothing twice.
    assert_eq!(endpoint.seqs(), (1..=30).collect::<Vec<_>>());
    assert!(
        endpoint
            .content_types
            .lock()
            .expect("lock")
            .iter()
            .all(|c| c == "application/x-ndjson")
    );
    assert_eq!(cursor_seq(&cursor), Some(30));
    gov.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_siem_export_resumes_from_its_cursor_without_a_gap() {
    let db = TestStore::new(TestBackend::Sqlite).await;
    let gov = connect(db.url()).await;
    log(&gov, 0, 300).await;
    let endpoint = Endpoint::start(Vec::new(), Reply::Status(200)).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cursor = dir.path().join("siem.cursor");
    let mut cmd = governance(db.url());
    cmd.args([
        "--format",
        "cloudevents",
        "--batch-size",
        "10",
        "--follow",
        "--post",
    ])
    .arg(&endpoint.url)
    .arg("--cursor")
    .arg(&cursor)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    // Ready once the cursor shows progress.
    let start = Instant::now();
    while cursor_seq(&cursor).is_none_or(|s| s < 50) {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the export exited early"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    let at_kill = cursor_seq(&cursor).expect("cursor");
    let first_run = endpoint.seqs();
    assert_eq!(
        first_run[..at_kill as usize],
        (1..=at_kill).collect::<Vec<_>>()[..]
    );

    log(&gov, 300, 320).await;
    let mut cmd = governance(db.url());
    cmd.args(["--format", "cloudevents", "--batch-size", "10", "--post"])
        .arg(&endpoint.url)
        .arg("--cursor")
        .arg(&cursor);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = endpoint.seqs();
    let second_run = &all[first_run.len()..];
    // The restart begins right after the cursor: at least once, never a gap.
    assert_eq!(second_run, &((at_kill + 1)..=320).collect::<Vec<_>>()[..]);
    assert_eq!(cursor_seq(&cursor), Some(320));
    gov.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_stops_siem_export_with_a_clear_error_and_the_cursor_unchanged() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let gov = connect(db.url()).await;
    log(&gov, 0, 20).await;
    let endpoint = Endpoint::start(vec![Reply::Status(200)], Reply::Status(400)).await;
    let dir = tempfile::tempdir().expect("tmp");
    let cursor = dir.path().join("siem.cursor");
    let mut cmd = governance(db.url());
    cmd.args(["--format", "ocsf", "--batch-size", "10", "--post"])
        .arg(format!("{}?token=s3cret-in-query", endpoint.url))
        .arg("--cursor")
        .arg(&cursor);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the batch of seq 11..20 with HTTP 400"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(cursor_seq(&cursor), Some(10));
    // Run again: the same batch is offered again, and refused again; the cursor still holds.
    let mut cmd = governance(db.url());
    cmd.args(["--format", "ocsf", "--batch-size", "10", "--post"])
        .arg(&endpoint.url)
        .arg("--cursor")
        .arg(&cursor);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(cursor_seq(&cursor), Some(10));
    gov.close().await;
}
