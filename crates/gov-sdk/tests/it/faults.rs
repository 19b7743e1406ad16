//! Faults that must not lose or double an acknowledged record (issue 14, items 6 to 10): a
//! settlement whose reply is lost, expired reservations, a full disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gov_sdk::llm::openai::{ChatMessage, ChatRequest};
use gov_sdk::{
    BudgetPolicy, CostConfig, Governance, MicroUsd, ModelPrice, PriceTable, ScopePolicy,
};
use gov_testdb::{Proxy, TestBackend, TestStore};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{SECRET, TempDir};

const AGENT: &str = "agent-1";
const SESSION: &str = "s-1";

fn prices() -> PriceTable {
    let mut prices = PriceTable::builtin();
    // One micro-USD per input token, two per output token.
    prices.set(
        "openai",
        "gpt-test",
        ModelPrice {
            input: 1_000_000,
            output: 2_000_000,
            cached_input: 500_000,
        },
    );
    prices
}

async fn openai_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
        })))
        .mount(&server)
        .await;
    server
}

async fn wait_drained(gov: &Governance, within: Duration) {
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

/// A settlement whose reply is lost after it committed is not counted a second time: the
/// agent's spend equals the sum of the receipts, and nothing stays reserved.
#[tokio::test]
async fn a_settlement_whose_reply_is_lost_counts_once() {
    const CALLS: u64 = 5;
    let db = TestStore::new(TestBackend::Postgres).await;
    let root = TempDir::new("settle");
    let (proxy, through) = Proxy::for_url(&db.app_url()).await;
    // In clear, so the proxy can read the replies.
    let sep = if through.contains('?') { '&' } else { '?' };
    let through = format!("{through}{sep}sslmode=disable");
    let gov = Governance::builder()
        .database_url(&through)
        .audit_secret(SECRET)
        .spool_dir(&root.0)
        .acquire_timeout(Duration::from_secs(2))
        .warn_on_no_wrappers(false)
        .cost(CostConfig {
            prices: prices(),
            ..CostConfig::default()
        })
        .connect()
        .await
        .expect("connect");
    gov.scope()
        .register(ScopePolicy::new(AGENT.parse().expect("agent")).allow_apis(["openai:gpt-test"]))
        .await
        .expect("scope");
    gov.cost()
        .register(BudgetPolicy::new(AGENT.parse().expect("agent")).per_session(MicroUsd(1_000_000)))
        .await
        .expect("budget");
    let server = openai_server().await;
    let client = gov
        .llm()
        .openai(server.uri())
        .api_key("sk-test")
        .build()
        .await
        .expect("client");
    let mut receipts = 0;
    for n in 0..CALLS {
        // The settlement's answer names its outcome ("settled"): that reply is lost.
        proxy.lose_reply_containing(b"settled");
        let out = client
            .chat(
                AGENT,
                SESSION,
                ChatRequest::new("gpt-test", vec![ChatMessage::user("Hello, world")])
                    .max_tokens(100),
            )
            .await
            .expect("governed call");
        receipts += out.receipt.cost.0;
        gov.llm().settled().await;
        wait_drained(&gov, Duration::from_secs(30)).await;
        assert_eq!(
            proxy.replies_lost(),
            n + 1,
            "the settlement's reply was lost"
        );
    }
    let status = gov
        .cost()
        .snapshot(AGENT, SESSION)
        .await
        .expect("snapshot")
        .status;
    assert_eq!(receipts, 50 * CALLS as i64);
    assert_eq!(
        status.session.spent,
        MicroUsd(receipts),
        "spend equals the receipts: {status:?}"
    );
    assert_eq!(status.day.spent, MicroUsd(receipts));
    assert_eq!(status.session.reserved, MicroUsd(0), "nothing stays held");
    // Every llm.response is in the chain once.
    let responses = gov
        .audit()
        .events(&gov_sdk::EventFilter {
            kind: Some("llm.response".into()),
            limit: Some(100),
            ..gov_sdk::EventFilter::default()
        })
        .await
        .expect("events");
    assert_eq!(responses.len() as u64, CALLS);
    let clean = gov.audit().verify_all().await.expect("verify").is_clean();
    crate::support::report(
        "settlement",
        &json!({
            "calls": CALLS,
            "settlement_replies_lost": proxy.replies_lost(),
            "receipts_micro_usd": receipts,
            "spent_micro_usd": status.session.spent.0,
            "reserved_micro_usd": status.session.reserved.0,
            "llm_responses_stored": responses.len(),
            "verify_clean": clean,
        }),
    );
    assert!(clean);
    gov.close().await;
}

async fn raw_store(db: &TestStore) -> gov_store::Store {
    gov_store::Store::connect(&db.app_url(), &gov_store::StoreOptions::default())
        .await
        .expect("connect")
}

fn reserve(id: uuid::Uuid, ttl: Duration) -> gov_store::Reserve<'static> {
    gov_store::Reserve {
        id,
        agent: AGENT,
        session: SESSION,
        model: "gpt-test",
        micros: 100,
        tokens: 10,
        ttl,
        allow_unbudgeted: true,
    }
}

/// `settle_once`, on both backends: however often it runs, and whatever happened to the
/// reservation before, the spend counts once.
#[tokio::test]
async fn a_repeated_settlement_counts_once_on_both_backends() {
    let usage = gov_sdk::TokenUsage {
        input_tokens: 7,
        output_tokens: 3,
        cached_input_tokens: 0,
    };
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        let store = raw_store(&db).await;
        let spent = || async {
            store
                .budget_status(AGENT, SESSION)
                .await
                .expect("status")
                .session
        };
        // Settled (its reply lost), then settled again: once.
        let a = uuid::Uuid::now_v7();
        assert!(
            store
                .reserve(&reserve(a, Duration::from_secs(600)))
                .await
                .unwrap()
                .is_ok()
        );
        assert_eq!(store.settle(a, 40, &usage, false).await.unwrap(), "settled");
        for _ in 0..2 {
            let o = store
                .settle_once(a, AGENT, SESSION, "gpt-test", 40, &usage)
                .await
                .unwrap();
            assert_eq!(o, "already_settled", "{backend:?}");
        }
        assert_eq!(spent().await.spent, MicroUsd(40), "{backend:?}");
        // Never settled (nothing committed): settled by the replay, once.
        let b = uuid::Uuid::now_v7();
        assert!(
            store
                .reserve(&reserve(b, Duration::from_secs(600)))
                .await
                .unwrap()
                .is_ok()
        );
        let o = store
            .settle_once(b, AGENT, SESSION, "gpt-test", 5, &usage)
            .await
            .unwrap();
        assert_eq!(o, "settled", "{backend:?}");
        let o = store
            .settle_once(b, AGENT, SESSION, "gpt-test", 5, &usage)
            .await
            .unwrap();
        assert_eq!(o, "already_settled", "{backend:?}");
        assert_eq!(spent().await.spent, MicroUsd(45), "{backend:?}");
        assert_eq!(spent().await.reserved, MicroUsd(0), "{backend:?}");
        // Released meanwhile (a dropped reservation): the spend is tracked, once.
        let c = uuid::Uuid::now_v7();
        assert!(
            store
                .reserve(&reserve(c, Duration::from_secs(600)))
                .await
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            store.settle(c, 0, &Default::default(), true).await.unwrap(),
            "released"
        );
        let o = store
            .settle_once(c, AGENT, SESSION, "gpt-test", 3, &usage)
            .await
            .unwrap();
        assert_eq!(o, "tracked", "{backend:?}");
        let o = store
            .settle_once(c, AGENT, SESSION, "gpt-test", 3, &usage)
            .await
            .unwrap();
        assert_eq!(o, "already_tracked", "{backend:?}");
        assert_eq!(spent().await.spent, MicroUsd(48), "{backend:?}");
        store.close().await;
    }
}

/// A reservation whose holder died (never settled, never released) stops counting once it
/// expires: `check_or_raise` allows again without anyone reserving first, on both backends.
#[tokio::test]
async fn an_expired_hold_stops_blocking_the_budget_check() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let db = TestStore::new(backend).await;
        let gov = Governance::builder()
            .database_url(db.app_url())
            .audit_secret(SECRET)
            .spool(false)
            .warn_on_no_wrappers(false)
            .cost(CostConfig {
                prices: prices(),
                reservation_ttl: Duration::from_secs(1),
                ..CostConfig::default()
            })
            .connect()
            .await
            .expect("connect");
        gov.cost()
            .register(BudgetPolicy::new(AGENT.parse().expect("agent")).per_session(MicroUsd(210)))
            .await
            .expect("budget");
        // 10 input tokens and at most 100 output tokens: 210 micro-USD, the whole cap.
        let held = gov
            .cost()
            .reserve(AGENT, SESSION, "gpt-test", 10, Some(100))
            .await
            .expect("reserve");
        assert_eq!(held.reserved(), MicroUsd(210));
        // The holder crashes: nothing settles or releases the reservation.
        std::mem::forget(held);
        let refused = gov.cost().check_or_raise(AGENT, SESSION).await;
        assert!(
            matches!(refused, Err(gov_sdk::Error::BudgetExceeded { .. })),
            "{backend:?}: the live hold blocks: {refused:?}"
        );
        // Once it has expired, the check allows again, and the status shows nothing held.
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            match gov.cost().check_or_raise(AGENT, SESSION).await {
                Ok(s) => break s,
                Err(gov_sdk::Error::BudgetExceeded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{backend:?}: an expired hold still blocks the check: {e}"),
            }
        };
        assert_eq!(status.session.reserved, MicroUsd(0), "{backend:?}");
        assert_eq!(status.day.reserved, MicroUsd(0), "{backend:?}");
        gov.close().await;
    }
}

/// Set in the child process of the full-disk test: the small file system it runs on.
const DISK: &str = "GOV_TEST_FAULTS_DISK";
const FULL_TEST: &str = "faults::a_full_disk_spools_and_writes_resume_once_space_is_freed";

fn big_event(n: u64) -> gov_sdk::AuditEvent {
    gov_sdk::AuditEvent::builder(AGENT, "tool.call")
        .session(SESSION)
        .payload(json!({ "n": n, "blob": "x".repeat(16 * 1024) }))
        .build()
        .expect("event")
}

/// The child: a SQLite file on a 4 MiB file system of its own (a tmpfs in a private mount
/// namespace), the spool on the ordinary disk. It fills the disk, expects the records that do
/// not fit to be spooled (not refused with an unclassified database error), frees the space and
/// expects durable writes again with every acknowledged record in the chain once.
async fn full_disk_child(disk: PathBuf) {
    let spool = TempDir::new("full-spool");
    let url = format!("sqlite://{}", disk.join("governance.db").display());
    let gov = Governance::builder()
        .database_url(&url)
        .migrate_on_connect(true)
        .audit_secret(SECRET)
        .spool_dir(&spool.0)
        .acquire_timeout(Duration::from_secs(2))
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("connect");
    let mut acked = Vec::new();
    let mut durable = 0;
    for n in 0..3 {
        let at = gov.audit().log(big_event(n)).await.expect("log");
        assert!(at.seq().is_some(), "durable while there is room");
        acked.push(at.event_id());
        durable += 1;
    }
    // Fill what is left of the disk.
    let ballast = disk.join("ballast");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&ballast).expect("ballast");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // Log until the database runs out of room: those records are spooled.
    let mut spooled = 0;
    let mut n = 3;
    while spooled < 3 {
        assert!(n < 500, "the disk never filled up");
        match gov.audit().log(big_event(n)).await {
            Ok(at) => {
                if at.seq().is_none() {
                    spooled += 1;
                } else {
                    durable += 1;
                }
                acked.push(at.event_id());
            }
            Err(e) => panic!("a full disk refused a record instead of spooling it: {e}"),
        }
        n += 1;
    }
    // A write that is not observation fails, and says why.
    let refused = gov
        .cost()
        .register(BudgetPolicy::new(AGENT.parse().expect("agent")).per_session(MicroUsd(5)))
        .await
        .expect_err("no room for a policy");
    let msg = refused.to_string();
    assert!(msg.contains("disk") && msg.contains("full"), "{msg}");
    assert!(refused.is_unavailable(), "{msg}");
    // Space is freed: the spool drains and new records are durable again.
    std::fs::remove_file(&ballast).expect("free the space");
    let freed = Instant::now();
    let mut first_durable_after_free = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = gov
            .audit()
            .log(
                gov_sdk::AuditEvent::builder(AGENT, "tool.call")
                    .session(SESSION)
                    .payload(json!({ "n": n }))
                    .build()
                    .expect("event"),
            )
            .await
            .expect("log");
        acked.push(at.event_id());
        n += 1;
        if at.seq().is_some() {
            durable += 1;
            first_durable_after_free.get_or_insert(freed.elapsed());
        } else {
            spooled += 1;
        }
        if at.seq().is_some() && gov.audit().spooled() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no durable write 30 s after space was freed ({} spooled)",
            gov.audit().spooled()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = gov
        .audit()
        .events(&gov_sdk::EventFilter {
            limit: Some(10_000),
            ..gov_sdk::EventFilter::default()
        })
        .await
        .expect("events");
    let drained_after_free = freed.elapsed();
    let mut stored: std::collections::HashMap<gov_sdk::EventId, usize> = Default::default();
    for r in &rows {
        *stored.entry(r.event_id).or_default() += 1;
    }
    let lost = acked.iter().filter(|id| !stored.contains_key(id)).count();
    let duplicates = stored.values().filter(|c| **c > 1).count();
    let clean = gov.audit().verify_all().await.expect("verify").is_clean();
    crate::support::report(
        "full_disk",
        &json!({
            "acknowledged_durable": durable,
            "acknowledged_spooled": spooled,
            "lost": lost,
            "duplicates": duplicates,
            "first_durable_after_space_freed_ms": first_durable_after_free.map(|d| d.as_millis() as u64),
            "spool_drained_after_space_freed_ms": drained_after_free.as_millis() as u64,
            "verify_clean": clean,
        }),
    );
    for id in &acked {
        assert_eq!(
            stored.get(id),
            Some(&1),
            "acknowledged event {id} is in the chain once"
        );
    }
    assert_eq!(duplicates, 0, "no event twice");
    assert!(clean);
    gov.close().await;
    println!(
        "full-disk child: {} acknowledged, {spooled} spooled, all durable once",
        acked.len()
    );
}

/// SQLite on a full disk: the records that do not fit are spooled (SQLITE_FULL is "storage
/// unavailable: disk full", not an unclassified error), a write that cannot spool says the disk
/// is full, and once space is freed the same process writes durably again (no pooled
/// connection is left in a failed transaction). The disk is a 4 MiB tmpfs in a private mount
/// namespace of a child process (`unshare`; as an unprivileged user, in a user namespace).
#[tokio::test]
async fn a_full_disk_spools_and_writes_resume_once_space_is_freed() {
    if let Ok(disk) = std::env::var(DISK) {
        full_disk_child(PathBuf::from(disk)).await;
        return;
    }
    let disk = TempDir::new("disk");
    let mut cmd = std::process::Command::new("unshare");
    // Root may mount in a private mount namespace; anyone else needs a user namespace.
    let root =
        std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !matches!(root, Ok(true)) {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=4m,mode=700 tmpfs "$0" && exec "$@""#)
        .arg(&disk.0)
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", FULL_TEST, "--nocapture", "--test-threads", "1"])
        .env(DISK, &disk.0);
    let out = cmd.output().expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("full-disk child:"),
        "the child on a full disk failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    if let Some(line) = stdout.lines().find(|l| l.contains("full-disk child:")) {
        eprintln!("{line}");
    }
}

/// A chain import is one transaction fenced on the head the import checked, on both
/// backends: nothing lands until it commits, a dropped import leaves nothing, and a chain
/// appended to since the check is refused before anything is written.
#[tokio::test]
async fn a_chain_import_is_one_transaction_fenced_on_the_checked_head() {
    for backend in [TestBackend::Postgres, TestBackend::Sqlite] {
        let source = TestStore::new(backend).await;
        let gov = Governance::builder()
            .database_url(source.url())
            .audit_secret(SECRET)
            .spool(false)
            .warn_on_no_wrappers(false)
            .connect()
            .await
            .expect("connect");
        for n in 0..5 {
            gov.audit().log(big_event(n)).await.expect("log");
        }
        gov.close().await;
        let src = raw_store(&source).await;
        let rows = src.read_chain_page("default", 0, 100).await.expect("rows");
        assert_eq!(rows.len(), 5);
        src.close().await;

        let target = TestStore::new(backend).await;
        let store = gov_store::Store::connect(target.url(), &gov_store::StoreOptions::default())
            .await
            .expect("connect");
        let zero = [0u8; 32];
        // Dropped before its commit: nothing is there.
        let mut import = store
            .begin_chain_import("default", (0, &zero))
            .await
            .expect("begin");
        import.rows(&rows[..2]).await.expect("rows 1..2");
        import.rows(&rows[2..]).await.expect("rows 3..5");
        drop(import);
        let head = store.chain_head("default").await.expect("head");
        assert!(
            head.is_none_or(|h| h.seq == 0),
            "{backend:?}: nothing landed"
        );
        // Committed: all of it.
        let mut import = store
            .begin_chain_import("default", (0, &zero))
            .await
            .expect("begin");
        import.rows(&rows).await.expect("rows");
        import.commit().await.expect("commit");
        assert_eq!(store.chain_head("default").await.unwrap().unwrap().seq, 5);
        // The head the caller checked is gone: refused, nothing written.
        let refused = store
            .begin_chain_import("default", (0, &zero))
            .await
            .expect_err("the chain moved");
        assert!(
            matches!(
                refused,
                gov_store::StoreError::ChainMoved {
                    expected: 0,
                    found: 5,
                    ..
                }
            ),
            "{backend:?}: {refused}"
        );
        assert_eq!(store.chain_head("default").await.unwrap().unwrap().seq, 5);
        store.close().await;
    }
}
