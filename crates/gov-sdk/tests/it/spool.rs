//! The local spool under attack and under faults, through files on disk and real processes:
//! a file dropped in the spool folder is never replayed, a spool goes only to its own
//! database, a process killed at any step of adopting a spool loses and duplicates nothing, a
//! torn last line costs that line only, and a loaded process returns to durable writes soon
//! after an outage with every acknowledged event in the chain once, in order.
//!
//! The fault tests run this test binary again as child processes (a writer that spools and
//! dies, an adopter that aborts at a named step through `GOVERNANCE_SPOOL_FAULT`): the child's
//! role comes in [`ROLE`].

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gov_sdk::{AuditEvent, AuditRecord, BudgetPolicy, Governance, Logged, MicroUsd, TokenUsage};
use gov_testdb::{Proxy, TestBackend, TestStore};

use crate::support::{SECRET, TempDir, all_rows};

/// Set in a child process: what it does (`write` or `adopt`).
const ROLE: &str = "GOV_TEST_SPOOL_ROLE";
const URL: &str = "GOV_TEST_SPOOL_URL";
const ROOT: &str = "GOV_TEST_SPOOL_ROOT";
const AGENT: &str = "GOV_TEST_SPOOL_AGENT";
const EVENTS: &str = "GOV_TEST_SPOOL_EVENTS";
/// Tracked calls a writer makes (1,000 input tokens of gpt-4o-mini: 150 µ$ each).
const TRACKS: u64 = 4;
const TRACK_MICROS: i64 = 150;

async fn handle(url: &str, root: &Path) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .spool_dir(root)
        .acquire_timeout(Duration::from_secs(2))
        // The halt state read before the outage stays good for the writer's gate request.
        .halt_cache_ttl(Duration::from_secs(600))
        .allow_unbudgeted_agents(true)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect")
}

fn usage() -> TokenUsage {
    TokenUsage {
        input_tokens: 1_000,
        output_tokens: 0,
        cached_input_tokens: 0,
    }
}

fn event(agent: &str, n: u64) -> AuditEvent {
    AuditEvent::builder(agent, "tool.call")
        .session("s")
        // Multi-byte text, so a torn line can end inside a character.
        .payload(serde_json::json!({ "n": n, "text": "é😀 日本" }))
        .build()
        .expect("helper")
}

async fn drained(gov: &Governance, within: Duration) {
    let start = Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < within,
            "the spool did not drain: {} left",
            gov.audit().spooled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spool_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "spool"))
                .collect()
        })
        .unwrap_or_default()
}

fn quarantined(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("quarantine"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The identity folder of `url`'s database under `root`, and the key id (as an attacker
/// could learn both: the folder's name, and any row's `key_id`). Asks a handle on an empty
/// folder of its own, so nothing under `root` is adopted.
async fn identity_dir(url: &str, root: &Path) -> (PathBuf, String) {
    let probe = TempDir::new("probe");
    let gov = handle(url, &probe.0).await;
    let dir = root.join(
        gov.audit()
            .spool_dir()
            .expect("helper")
            .file_name()
            .expect("helper"),
    );
    let key_id = gov.audit().key_id().to_owned();
    gov.close().await;
    (dir, key_id)
}

/// A handle that never spools, for reading.
async fn reader(url: &str) -> Governance {
    Governance::builder()
        .database_url(url)
        .audit_secret(SECRET)
        .spool(false)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_file_dropped_in_the_spool_folder_is_never_replayed() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        let root = TempDir::new("forged");
        let url = db.app_url();
        let gov = handle(&url, &root.0).await;
        gov.cost()
            .register(BudgetPolicy::new("victim".parse().unwrap()).per_day(MicroUsd(1_000_000)))
            .await
            .unwrap();
        gov.audit().log(event("victim", 0)).await.unwrap();
        gov.close().await;
        drop(gov);
        let (dir, key_id) = identity_dir(&url, &root.0).await;
        std::fs::create_dir_all(&dir).unwrap();
        let db_id = dir.file_name().unwrap().to_str().unwrap().to_owned();

        // A forged oversight decision that never went through the builder, and a negative spend.
        let forged_event = serde_json::json!({"type": "audit", "event": {
            "event_id": uuid::Uuid::now_v7(), "chain_id": "default",
            "occurred_at": "2026-12-01T00:00:00Z", "agent_id": "victim", "session_id": null,
            "kind": "gate.approved", "actor": "alice", "parent_event_id": null,
            "payload": "{ \"forged\" : true }"}});
        let negative = serde_json::json!({"type": "track", "id": uuid::Uuid::now_v7(),
            "agent": "victim", "session": "s", "model": "gpt-4o-mini", "micros": -900_000,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}});
        // And records a live call would accept: a decision in alice's name made by the builder,
        // and spend that exhausts the victim's budget.
        let built = AuditEvent::builder("victim", "gate.approved")
            .actor("alice")
            .payload(serde_json::json!({ "forged": true }))
            .build()
            .unwrap();
        let well_formed = serde_json::json!({"type": "audit", "event": built});
        let exhausting = serde_json::json!({"type": "track", "id": uuid::Uuid::now_v7(),
            "agent": "victim", "session": "s", "model": "gpt-4o-mini", "micros": 900_000,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}});
        // In this version's format, with MACs the attacker cannot compute…
        let file = uuid::Uuid::now_v7();
        let zeros = "0".repeat(64);
        let forged = format!(
            "governance-spool/1 {db_id} {key_id} {file} {zeros}\n0 {zeros} {forged_event}\n1 {zeros} {negative}\n2 {zeros} {well_formed}\n3 {zeros} {exhausting}\n"
        );
        let forged_path = dir.join(format!("{file}.spool"));
        std::fs::write(&forged_path, forged).unwrap();
        // …and in the earlier format, named after a process that is gone.
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let _ = dead.wait_with_output();
        let old = root
            .0
            .join(format!("{dead_pid}-{}.jsonl", uuid::Uuid::now_v7()));
        let mut old_negative = negative.clone();
        old_negative.as_object_mut().unwrap().remove("id");
        std::fs::write(&old, format!("{forged_event}\n{old_negative}\n")).unwrap();

        let gov = handle(&url, &root.0).await;
        assert_eq!(gov.audit().spooled(), 0, "{backend:?}: nothing is adopted");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rows = all_rows(&gov).await;
        assert_eq!(rows.len(), 1, "{backend:?}: no forged event in the chain");
        assert!(rows.iter().all(|r| r.kind == "tool.call"));
        let snap = gov.cost().snapshot("victim", "s").await.unwrap();
        assert_eq!(
            snap.status.day.spent,
            MicroUsd(0),
            "{backend:?}: no spend moved"
        );
        assert!(
            !forged_path.exists(),
            "{backend:?}: the forged file is set aside"
        );
        assert_eq!(
            quarantined(&dir).len(),
            1,
            "{backend:?}: kept in the quarantine"
        );
        assert!(
            old.exists(),
            "{backend:?}: a file of the earlier format is left alone"
        );
        assert!(gov.audit().verify_chain().await.unwrap().is_clean());
        gov.close().await;
    }
}

#[tokio::test]
async fn a_handle_adopts_only_the_spool_of_its_own_database() {
    // Two Postgres databases cloned from one template (the same stored id, other names) and a
    // SQLite file, all sharing one spool folder.
    let a = TestStore::new(TestBackend::Postgres).await;
    let b = TestStore::new(TestBackend::Postgres).await;
    let c = TestStore::new(TestBackend::Sqlite).await;
    let root = TempDir::new("identity");
    let (proxy, through) = Proxy::for_url(&a.app_url()).await;
    let gov_a = handle(&through, &root.0).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            gov_a
                .audit()
                .log(event("agent-a", n))
                .await
                .unwrap()
                .event_id(),
        );
    }
    proxy.cut();
    for n in 10..30 {
        let at = gov_a.audit().log(event("agent-a", n)).await.unwrap();
        assert!(matches!(at, Logged::Spooled { .. }), "{at:?}");
        ids.push(at.event_id());
    }
    gov_a
        .cost()
        .track("agent-a", "s", "gpt-4o-mini", usage())
        .await
        .unwrap();
    let dir_a = gov_a.audit().spool_dir().unwrap().to_owned();
    gov_a.close().await;
    drop(gov_a);
    assert_eq!(spool_files(&dir_a).len(), 1, "A's spool is on disk");

    for other in [&b, &c] {
        let gov = handle(&other.app_url(), &root.0).await;
        assert_ne!(gov.audit().spool_dir().unwrap(), dir_a);
        assert_eq!(
            gov.audit().spooled(),
            0,
            "{:?} adopts nothing of A",
            other.backend()
        );
        assert!(all_rows(&gov).await.is_empty());
        gov.close().await;
    }
    assert_eq!(spool_files(&dir_a).len(), 1, "A's spool is still there");

    proxy.restore();
    let gov = handle(&a.app_url(), &root.0).await;
    assert_eq!(gov.audit().spooled(), 21, "A's own handle adopts it");
    drained(&gov, Duration::from_secs(30)).await;
    let rows = all_rows(&gov).await;
    let got: Vec<_> = rows.iter().map(|r| r.event_id).collect();
    assert_eq!(got, ids, "every event once, in order");
    let snap = gov.cost().snapshot("agent-a", "s").await.unwrap();
    assert_eq!(snap.status.day.spent, MicroUsd(TRACK_MICROS));
    assert!(
        spool_files(&dir_a).is_empty(),
        "a replayed spool is removed"
    );
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    gov.close().await;
}

/// What a writer child acknowledged.
#[derive(Debug, Default)]
struct Acked {
    events: Vec<uuid::Uuid>,
    tracks: u64,
    gates: Vec<uuid::Uuid>,
}

fn child(
    role: &str,
    test: &str,
    vars: &[(&str, &str)],
    fault: Option<&str>,
) -> std::process::Child {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("helper"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ROLE, role)
        .env_remove("GOVERNANCE_SPOOL_FAULT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    if let Some(f) = fault {
        cmd.env("GOVERNANCE_SPOOL_FAULT", f);
    }
    cmd.spawn().expect("helper")
}

/// Waits for a child that must die by `abort()`; what it printed.
fn aborted(c: std::process::Child, what: &str) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let out = c.wait_with_output().expect("helper");
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{what}: the child should abort, got {:?}",
        out.status
    );
    String::from_utf8(out.stdout).expect("helper")
}

fn acked(stdout: &str) -> Acked {
    let mut a = Acked::default();
    // The test harness may print on the same line first.
    for line in stdout
        .lines()
        .filter_map(|l| l.find("ack ").map(|i| &l[i..]))
    {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["ack", "event", id] => a.events.push(id.parse().expect("helper")),
            ["ack", "track"] => a.tracks += 1,
            ["ack", "gate", id] => a.gates.push(id.parse().expect("helper")),
            _ => {}
        }
    }
    a
}

/// The writer child: connects, loses storage (a cut proxy on Postgres, a write lock held by
/// the parent on SQLite), spools an event, tracked spend, a gate request and more events,
/// prints what was acknowledged, and dies without closing anything.
async fn write_child() {
    let url = std::env::var(URL).expect("helper");
    let root = PathBuf::from(std::env::var(ROOT).expect("helper"));
    let agent = std::env::var(AGENT).expect("helper");
    let events: u64 = std::env::var(EVENTS)
        .expect("helper")
        .parse()
        .expect("helper");
    let proxy = if url.starts_with("postgres") {
        Some(Proxy::for_url(&url).await)
    } else {
        None
    };
    let url = proxy.as_ref().map_or(url.clone(), |(_, u)| u.clone());
    let gov = handle(&url, &root).await;
    gov.presence()
        .assert_not_halted(&agent)
        .await
        .expect("helper");
    if let Some((p, _)) = &proxy {
        p.cut();
    }
    let mut out = std::io::stdout().lock();
    let at = gov.audit().log(event(&agent, 0)).await.expect("helper");
    writeln!(out, "ack event {}", at.event_id()).expect("helper");
    for _ in 0..TRACKS {
        gov.cost()
            .track(&agent, "s", "gpt-4o-mini", usage())
            .await
            .expect("helper");
        writeln!(out, "ack track").expect("helper");
    }
    // A gate request is spooled only while the halt state is known without storage: on
    // SQLite (the listener still reads), not behind the cut proxy (the listener is cut too).
    match gov
        .gates()
        .request(&agent, Some("s"), "wire", &serde_json::json!({ "to": "x" }))
        .await
    {
        Ok(req) => writeln!(out, "ack gate {}", req.id).expect("helper"),
        Err(gov_sdk::Error::HaltStateUnknown { .. }) if proxy.is_some() => {}
        Err(e) => panic!("{e}"),
    }
    for n in 1..events {
        let at = gov.audit().log(event(&agent, n)).await.expect("helper");
        writeln!(out, "ack event {}", at.event_id()).expect("helper");
    }
    out.flush().expect("helper");
    assert!(gov.audit().spooled() > 0, "the writer spooled");
    std::process::abort();
}

/// The adopter child: connects (adopting at once) and replays until the fault point aborts it.
async fn adopt_child() {
    let url = std::env::var(URL).expect("helper");
    let root = PathBuf::from(std::env::var(ROOT).expect("helper"));
    let gov = handle(&url, &root).await;
    drained(&gov, Duration::from_secs(30)).await;
    // The fault point was not reached: exit normally, which the parent reports.
}

/// Runs the child role when this process is one.
async fn as_child() -> bool {
    match std::env::var(ROLE).as_deref() {
        Ok("write") => write_child().await,
        Ok("adopt") => adopt_child().await,
        _ => return false,
    }
    true
}

/// Holds SQLite's write lock (readers go on): the file's storage is out of reach for writers.
async fn lock_sqlite(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("helper");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .expect("helper");
    conn
}

/// Starts writer children for `agents` (one spool folder each) and waits for them to die;
/// on SQLite the parent holds the write lock meanwhile.
async fn write_spools(
    db: &TestStore,
    test: &str,
    agents: &[(String, PathBuf)],
    events: u64,
) -> Vec<Acked> {
    let lock = match db.sqlite_path() {
        Some(p) => Some(lock_sqlite(p).await),
        None => None,
    };
    let url = db.app_url();
    let events = events.to_string();
    let children: Vec<_> = agents
        .iter()
        .map(|(agent, root)| {
            child(
                "write",
                test,
                &[
                    (URL, &url),
                    (ROOT, root.to_str().expect("helper")),
                    (AGENT, agent),
                    (EVENTS, &events),
                ],
                None,
            )
        })
        .collect();
    let acks: Vec<Acked> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|c| acked(&aborted(c, "writer")))
            .collect()
    })
    .await
    .expect("helper");
    drop(lock);
    acks
}

/// Checks that everything `acked` for `agent` is stored exactly once, in order.
async fn all_there_once(gov: &Governance, rows: &[AuditRecord], agent: &str, acked: &Acked) {
    let mine: Vec<&AuditRecord> = rows
        .iter()
        .filter(|r| r.agent_id.as_str() == agent)
        .collect();
    let mut count: HashMap<uuid::Uuid, usize> = HashMap::new();
    for r in &mine {
        *count.entry(r.event_id.as_uuid()).or_default() += 1;
    }
    for id in &acked.events {
        assert_eq!(count.get(id), Some(&1), "{agent}: event {id} once");
    }
    let ns: Vec<u64> = mine
        .iter()
        .filter(|r| r.kind == "tool.call")
        .map(|r| {
            r.payload_json().expect("helper")["n"]
                .as_u64()
                .expect("helper")
        })
        .collect();
    assert!(
        ns.windows(2).all(|w| w[0] < w[1]),
        "{agent}: in order: {ns:?}"
    );
    let requested = mine.iter().filter(|r| r.kind == "gate.requested").count();
    assert_eq!(
        requested,
        acked.gates.len(),
        "{agent}: one gate.requested per request"
    );
    for g in &acked.gates {
        gov.gates()
            .get(*g)
            .await
            .expect("the gate request is stored");
    }
    let snap = gov.cost().snapshot(agent, "s").await.expect("helper");
    assert_eq!(
        snap.status.day.spent,
        MicroUsd(TRACK_MICROS * i64::try_from(acked.tracks).expect("helper")),
        "{agent}: tracked spend counted once"
    );
}

const KILL_TEST: &str = "spool::a_kill_at_any_step_of_adoption_loses_and_duplicates_nothing";

#[tokio::test]
async fn a_kill_at_any_step_of_adoption_loses_and_duplicates_nothing() {
    if as_child().await {
        return;
    }
    // (fault point, spool files left in the folder after the kill)
    let points: &[(&str, usize)] = &[
        ("adopt-claimed", 1),
        ("adopt-copied", 2),
        ("adopt-synced", 2),
        ("adopt-removed", 1),
        // After the first committed batch (an event), and after the third (two tracks).
        ("replay-committed:1", 1),
        ("replay-committed:3", 1),
    ];
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        let roots: Vec<TempDir> = points.iter().map(|_| TempDir::new("kill")).collect();
        let agents: Vec<(String, PathBuf)> = roots
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("agent-{i}"), r.0.clone()))
            .collect();
        let acks = write_spools(&db, KILL_TEST, &agents, 30).await;
        for ((point, files_left), (agent, root)) in points.iter().zip(&agents) {
            let (dir, _) = identity_dir(&db.app_url(), root).await;
            assert_eq!(
                spool_files(&dir).len(),
                1,
                "{backend:?} {point}: the writer's spool"
            );
            let c = child(
                "adopt",
                KILL_TEST,
                &[(URL, &db.app_url()), (ROOT, root.to_str().unwrap())],
                Some(point),
            );
            tokio::task::spawn_blocking(move || aborted(c, "adopter"))
                .await
                .unwrap();
            assert_eq!(
                spool_files(&dir).len(),
                *files_left,
                "{backend:?} {point}: the files a kill there leaves for {agent}"
            );
        }
        // A new handle per folder adopts whatever the kills left.
        for (_, root) in &agents {
            let gov = handle(&db.app_url(), root).await;
            drained(&gov, Duration::from_secs(30)).await;
            assert!(spool_files(gov.audit().spool_dir().unwrap()).is_empty());
            gov.close().await;
        }
        let gov = reader(&db.app_url()).await;
        let rows = all_rows(&gov).await;
        for ((agent, _), acked) in agents.iter().zip(&acks) {
            assert_eq!(acked.events.len(), 30, "{agent}");
            assert_eq!(acked.tracks, TRACKS, "{agent}");
            all_there_once(&gov, &rows, agent, acked).await;
        }
        assert!(gov.audit().verify_all().await.unwrap().is_clean());
        gov.close().await;
    }
}

/// Where to cut a spool file, from its bytes.
type Cut = fn(&[u8]) -> usize;

const TORN_TEST: &str = "spool::a_torn_last_line_costs_that_record_only";

#[tokio::test]
async fn a_torn_last_line_costs_that_record_only() {
    if as_child().await {
        return;
    }
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        // Where the last line is cut, counted back from the end of the file: its newline only
        // (the record is whole: kept), inside the multi-byte text near its end, and just after
        // its MAC.
        let cuts: &[(&str, Cut)] = &[
            ("newline", |b| b.len() - 1),
            ("inside a character", |b| {
                let last = b[..b.len() - 1].iter().rposition(|c| *c == b'\n').unwrap() + 1;
                // The second byte of the last multi-byte character in the line.
                (last..b.len()).rev().find(|i| b[*i] >= 0xC0).unwrap() + 1
            }),
            ("after the MAC", |b| {
                let last = b[..b.len() - 1].iter().rposition(|c| *c == b'\n').unwrap() + 1;
                last + b[last..].iter().position(|c| *c == b' ').unwrap() + 66
            }),
        ];
        let roots: Vec<TempDir> = cuts.iter().map(|_| TempDir::new("torn")).collect();
        let agents: Vec<(String, PathBuf)> = roots
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("torn-{i}"), r.0.clone()))
            .collect();
        let acks = write_spools(&db, TORN_TEST, &agents, 20).await;
        for ((what, cut), (_, root)) in cuts.iter().zip(&agents) {
            let dirs: Vec<PathBuf> = std::fs::read_dir(root)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            let files = spool_files(&dirs[0]);
            assert_eq!(files.len(), 1);
            let bytes = std::fs::read(&files[0]).unwrap();
            let at = cut(&bytes);
            std::fs::OpenOptions::new()
                .write(true)
                .open(&files[0])
                .unwrap()
                .set_len(at as u64)
                .unwrap();
            let gov = handle(&db.app_url(), root).await;
            drained(&gov, Duration::from_secs(30)).await;
            let torn = quarantined(gov.audit().spool_dir().unwrap()).len();
            assert_eq!(torn, usize::from(*what != "newline"), "{backend:?} {what}");
            gov.close().await;
        }
        let gov = reader(&db.app_url()).await;
        let rows = all_rows(&gov).await;
        for (((what, _), (agent, _)), acked) in cuts.iter().zip(&agents).zip(&acks) {
            let mut expect = Acked {
                events: acked.events.clone(),
                tracks: acked.tracks,
                gates: acked.gates.clone(),
            };
            if *what != "newline" {
                // The last record written (an event) is the one torn.
                expect.events.pop();
            }
            all_there_once(&gov, &rows, agent, &expect).await;
            let mine = rows
                .iter()
                .filter(|r| r.agent_id.as_str() == agent && r.kind == "tool.call")
                .count();
            assert_eq!(
                mine,
                expect.events.len(),
                "{backend:?} {what}: nothing else is lost"
            );
        }
        assert!(gov.audit().verify_all().await.unwrap().is_clean());
        gov.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_process_returns_to_durable_writes_soon_after_an_outage() {
    const TASKS: usize = 64;
    // The spool's own account of the outage is printed if the test fails (`RUST_LOG` to choose).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("gov_sdk=info,gov_audit=warn")
            }),
        )
        .with_test_writer()
        .try_init();
    let db = TestStore::new(TestBackend::Postgres).await;
    let root = TempDir::new("converge");
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool_dir(&root.0)
        .acquire_timeout(Duration::from_millis(500))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    // Each task logs in a loop and keeps (n, event id, durable?, when) for what was acknowledged.
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (gov, stop, answered) = (gov.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let agent = format!("task-{t}");
                let mut acked = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let at = gov
                        .audit()
                        .log(event(&agent, n))
                        .await
                        .expect("log never fails");
                    acked.push((n, at.event_id(), at.seq().is_some(), start.elapsed()));
                    answered.fetch_add(1, Ordering::AcqRel);
                    n += 1;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cut_at = start.elapsed();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restored_at = start.elapsed();
    proxy.restore();
    // A second, short cut while the spool drains (the replay must resume where it stopped).
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let restored_again_at = start.elapsed();
    proxy.restore();
    // The tasks keep logging until the spool has emptied and two more seconds have passed (a
    // generous bound: a process that never converges fails here, after a minute).
    let answered_then = answered.load(Ordering::Acquire);
    let drained_at = loop {
        if gov.audit().spooled() == 0 {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < restored_again_at + Duration::from_secs(60),
            "the spool never emptied while the tasks kept logging: {} records wait; {} calls answered since the last restore",
            gov.audit().spooled(),
            answered.load(Ordering::Acquire) - answered_then,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let mut per_task = Vec::new();
    for t in tasks {
        per_task.push(t.await.unwrap());
    }
    drained(&gov, Duration::from_secs(30)).await;

    let all: Vec<&(u64, gov_sdk::EventId, bool, Duration)> = per_task.iter().flatten().collect();
    let last_spooled = all.iter().filter(|a| !a.2).map(|a| a.3).max().unwrap();
    let rate = |from: Duration, to: Duration| {
        all.iter().filter(|a| a.3 >= from && a.3 < to).count() as f64 / (to - from).as_secs_f64()
    };
    let end = all.iter().map(|a| a.3).max().unwrap();
    let after_restore = |t: Duration| t.saturating_sub(restored_again_at).as_secs_f64() * 1e3;
    eprintln!(
        "outage {:.1}s..{:.1}s, second cut until {:.2}s; last Spooled answer {:.0} ms after the last restore; spool empty {:.0} ms after it",
        cut_at.as_secs_f64(),
        restored_at.as_secs_f64(),
        restored_again_at.as_secs_f64(),
        after_restore(last_spooled),
        after_restore(drained_at),
    );
    eprintln!(
        "acknowledged/s: before {:.0}, during the outage {:.0}, in the last 2 s {:.0}; {} in all",
        rate(Duration::ZERO, cut_at),
        rate(cut_at, restored_at),
        rate(end - Duration::from_secs(2), end),
        all.len()
    );
    assert!(all.iter().any(|a| !a.2), "the outage spooled some events");
    assert!(
        last_spooled <= drained_at,
        "nothing is spooled once the spool has emptied"
    );
    for acked in &per_task {
        let last = acked.last().expect("every task logged");
        assert!(
            last.2,
            "back in durable mode: each task's last event is durable"
        );
    }

    // Every acknowledged event exactly once, and each task's events in the order logged.
    let rows = all_rows(&gov).await;
    let mut seen: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *seen.entry(r.event_id).or_default() += 1;
    }
    assert!(seen.values().all(|c| *c == 1), "no event twice");
    for a in &all {
        assert_eq!(
            seen.get(&a.1),
            Some(&1),
            "acknowledged event {} is stored",
            a.0
        );
    }
    let mut last_n: HashMap<&str, u64> = HashMap::new();
    for r in &rows {
        let n = r.payload_json().unwrap()["n"].as_u64().unwrap();
        if let Some(prev) = last_n.insert(r.agent_id.as_str(), n) {
            assert!(n > prev, "{}: event {n} after {prev}", r.agent_id);
        }
    }
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    gov.close().await;
}

/// Storage that stops answering without closing anything (a partition, a frozen server):
/// every `log()` returns `Spooled` once the observation deadline passes instead of waiting for
/// ever, and once storage answers again every event is stored once, in order. A write that was
/// only late lands on its own and its spooled copy is not written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_that_stops_answering_spools_once_the_deadline_passes() {
    const TASKS: usize = 8;
    const EACH: u64 = 5;
    let db = TestStore::new(TestBackend::Postgres).await;
    let root = TempDir::new("stall");
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool_dir(&root.0)
        .acquire_timeout(Duration::from_millis(500))
        .observation_deadline(Duration::from_millis(300))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .unwrap();
    let first = gov.audit().log(event("before", 0)).await.unwrap();
    assert!(first.seq().is_some(), "durable while storage answers");

    proxy.stall();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let gov = gov.clone();
            tokio::spawn(async move {
                let agent = format!("stalled-{t}");
                let mut acked = Vec::new();
                for n in 0..EACH {
                    let at = gov
                        .audit()
                        .log(event(&agent, n))
                        .await
                        .expect("log never fails");
                    acked.push((at.event_id(), at.seq().is_some()));
                }
                acked
            })
        })
        .collect();
    // A liveness bound, not a timing check: without a deadline these calls never return.
    let acked = tokio::time::timeout(Duration::from_secs(60), async {
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
    .await
    .expect("every log() returned while storage was silent");
    assert_eq!(acked.len(), TASKS * EACH as usize);
    assert!(
        acked.iter().all(|(_, durable)| !durable),
        "nothing can be durable while storage is silent: every call was spooled"
    );
    assert!(gov.audit().spooled() > 0);

    proxy.resume();
    drained(&gov, Duration::from_secs(60)).await;
    let rows = all_rows(&gov).await;
    let mut seen: HashMap<gov_sdk::EventId, usize> = HashMap::new();
    for r in &rows {
        *seen.entry(r.event_id).or_default() += 1;
    }
    assert!(seen.values().all(|c| *c == 1), "no event twice: {seen:?}");
    for (id, _) in &acked {
        assert_eq!(seen.get(id), Some(&1), "acknowledged event {id} is stored");
    }
    let mut last_n: HashMap<&str, u64> = HashMap::new();
    for r in &rows {
        let n = r.payload_json().unwrap()["n"].as_u64().unwrap();
        if let Some(prev) = last_n.insert(r.agent_id.as_str(), n) {
            assert!(n > prev, "{}: event {n} after {prev}", r.agent_id);
        }
    }
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    // Durable again.
    let after = gov.audit().log(event("after", 0)).await.unwrap();
    assert!(after.seq().is_some(), "durable once storage answers again");
    gov.close().await;
}

/// Every byte of every file under `dir`.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// A personal field logged while storage is out of reach: its new key travels wrapped in the
/// spool ahead of the event (no plaintext in the file), and is stored on replay, so the field
/// reads back; a key spooled for a subject erased meanwhile is refused on replay, and that
/// subject's field reads as erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_field_spooled_in_an_outage_reads_back_or_stays_erased() {
    let db = TestStore::new(TestBackend::Postgres).await;
    let root = TempDir::new("personal");
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool_dir(&root.0)
        .acquire_timeout(Duration::from_millis(500))
        .observation_deadline(Duration::from_millis(300))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .unwrap();
    assert!(
        gov.audit()
            .log(event("before", 0))
            .await
            .unwrap()
            .seq()
            .is_some()
    );
    let signup = |subject: &str, email: &str| {
        AuditEvent::builder("signup-agent", "user.signup")
            .payload(serde_json::json!({ "email": email, "n": 0 }))
            .personal(subject, &["email"])
            .build()
            .unwrap()
    };
    proxy.cut();
    for (s, email) in [("u-7", "grace@example.org"), ("u-8", "edsger@example.org")] {
        let at = gov
            .audit()
            .log(signup(s, email))
            .await
            .expect("log never fails");
        assert!(at.seq().is_none(), "spooled while storage is cut off");
    }
    let bytes = files_under(&root.0);
    assert!(
        !bytes.windows(7).any(|w| w == b"example"),
        "no plaintext in the spool"
    );
    assert!(
        bytes.windows(11).any(|w| w == b"subject_key"),
        "the keys travel in the spool"
    );
    // Meanwhile an operator erases u-8 (straight to the database).
    let owner = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .spool(false)
        .connect()
        .await
        .unwrap();
    assert_eq!(
        owner
            .audit()
            .erase_subject("u-8", "alice", "request")
            .await
            .unwrap(),
        0
    );
    proxy.restore();
    drained(&gov, Duration::from_secs(60)).await;
    let rows = gov.audit().events(&Default::default()).await.unwrap();
    let signups: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == "user.signup")
        .map(|r| r.payload_json().unwrap()["email"].clone())
        .collect();
    assert_eq!(
        signups,
        [
            serde_json::json!("grace@example.org"),
            serde_json::json!(gov_sdk::ERASED)
        ]
    );
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    gov.close().await;
    owner.close().await;
}
