//! The resilience contract on a private Postgres cluster that the test stops and starts:
//! observation is spooled and replayed in order; enforcement fails closed meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gov_sdk::admin::Admin;
use gov_sdk::{AuditEvent, BudgetPolicy, EventFilter, Governance, MicroUsd, TokenUsage};
use gov_testdb::Cluster;

use crate::support::SECRET;

#[tokio::test]
async fn a_postgres_outage_loses_no_event_and_fails_enforcement_closed() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let admin = Admin::connect(&url).await.unwrap();
    admin.migrate().await.unwrap();
    admin.close().await;
    let spool = std::env::temp_dir().join(format!("gov-spool-test-{}", uuid_like()));
    let gov = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .acquire_timeout(Duration::from_millis(300))
        .spool_dir(&spool)
        .connect()
        .await
        .unwrap();
    gov.cost()
        .register(BudgetPolicy::new("agent".parse().unwrap()).per_day(MicroUsd::from_cents(10_000)))
        .await
        .unwrap();
    gov.cost().check_or_raise("agent", "s").await.unwrap();

    let logged = Arc::new(AtomicUsize::new(0));
    let logger = {
        let (gov, logged) = (gov.clone(), logged.clone());
        tokio::spawn(async move {
            let mut spooled = 0;
            for n in 0..1_000u32 {
                let ev = AuditEvent::builder("agent", "tool.call")
                    .session("s")
                    .payload(serde_json::json!({ "n": n }))
                    .build()
                    .unwrap();
                // Never a storage error for the host.
                let at = gov
                    .audit()
                    .log(ev)
                    .await
                    .expect("log never fails on an outage");
                if at.seq().is_none() {
                    spooled += 1;
                }
                logged.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            spooled
        })
    };
    while logged.load(Ordering::Acquire) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.stop();

    // During the outage: budget checks deny, gates refuse, spend tracking is spooled.
    assert!(gov.cost().check_or_raise("agent", "s").await.is_err());
    assert!(
        gov.cost()
            .reserve("agent", "s", "gpt-4o-mini", 10, Some(10))
            .await
            .is_err()
    );
    // A gate request either refuses at once (the halt state cannot be read) or, while a cached
    // answer is still in bound, is spooled; either way nothing can be approved or used.
    match gov
        .gates()
        .request("agent", Some("s"), "wire", &serde_json::json!({}))
        .await
    {
        Err(e) => assert!(matches!(e, gov_sdk::Error::HaltStateUnknown { .. }), "{e}"),
        Ok(req) => {
            assert!(gov.gates().poll(req.id).await.is_err());
            assert!(
                gov.gates()
                    .wait_for(req.id, Duration::from_millis(200))
                    .await
                    .is_err()
            );
        }
    }
    let usage = TokenUsage {
        input_tokens: 1_000,
        output_tokens: 0,
        cached_input_tokens: 0,
    };
    gov.cost()
        .track("agent", "s", "gpt-4o-mini", usage)
        .await
        .expect("tracking is spooled");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = logged.load(Ordering::Acquire);
    assert!(
        gov.audit().spooled() > 0,
        "events logged during the outage must be spooled"
    );
    cluster.start_again();

    let spooled = logger.await.unwrap();
    eprintln!("{spooled} of 1000 events were spooled; {during} logged before the restart");
    assert!(spooled > 0);
    let start = Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spool did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // All 1,000 in the chain, in the order they were logged, and the chain verifies.
    let mut ns = Vec::new();
    let mut after = 0;
    loop {
        let page = gov
            .audit()
            .events(&EventFilter {
                after_seq: Some(after),
                limit: Some(500),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        ns.extend(
            page.iter()
                .filter(|r| r.kind == "tool.call")
                .map(|r| r.payload_json().unwrap()["n"].as_u64().unwrap()),
        );
    }
    assert_eq!(ns, (0..1_000).collect::<Vec<u64>>());
    let report = gov.audit().verify_chain().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    // The spooled spend arrived too.
    let snap = gov.cost().snapshot("agent", "s").await.unwrap();
    assert_eq!(snap.status.day.spent, MicroUsd(150)); // 1,000 input tokens of gpt-4o-mini
    gov.close().await;
    let _ = std::fs::remove_dir_all(&spool);
}

#[tokio::test]
async fn an_llm_answer_that_arrives_during_an_outage_is_returned_and_recorded_later() {
    use gov_sdk::ScopePolicy;
    use gov_sdk::llm::{Completion, LlmCall};
    use std::sync::atomic::AtomicBool;

    let cluster = Cluster::start();
    let url = cluster.url();
    let admin = Admin::connect(&url).await.unwrap();
    admin.migrate().await.unwrap();
    admin.close().await;
    let spool = std::env::temp_dir().join(format!("gov-spool-llm-test-{}", uuid_like()));
    let gov = Governance::builder()
        .database_url(&url)
        .audit_secret(SECRET)
        .acquire_timeout(Duration::from_millis(300))
        .spool_dir(&spool)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .unwrap();
    gov.scope()
        .register(ScopePolicy::new("agent".parse().unwrap()).allow_apis(["openai"]))
        .await
        .unwrap();
    gov.cost()
        .register(BudgetPolicy::new("agent".parse().unwrap()).per_day(MicroUsd::from_cents(10_000)))
        .await
        .unwrap();
    let client = gov.llm().client("openai").build().await.unwrap();
    let call = || LlmCall::new("agent", "s", "gpt-4o-mini").max_tokens(100);
    let usage = TokenUsage {
        input_tokens: 1_000,
        output_tokens: 0,
        cached_input_tokens: 0,
    };

    // The reservation and llm.request committed; storage goes away while the provider answers.
    let out = client
        .guard(call(), || async {
            cluster.stop();
            Ok::<_, std::io::Error>(Completion::new("hi").usage(usage))
        })
        .await
        .expect("the answer reaches the caller");
    assert_eq!(out.output, "hi");
    // The settlement runs after the answer is returned: wait for it to give up on storage.
    gov.llm().settled().await;
    assert!(
        gov.audit().spooled() > 0,
        "llm.response and the spend are spooled"
    );

    // Meanwhile a new call fails closed: the provider is never asked.
    let asked = AtomicBool::new(false);
    let refused = client
        .guard(call(), || async {
            asked.store(true, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Completion::new("no"))
        })
        .await;
    assert!(refused.is_err());
    assert!(!asked.load(Ordering::SeqCst));

    cluster.start_again();
    let start = Instant::now();
    while gov.audit().spooled() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spool did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = gov.audit().events(&EventFilter::default()).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["llm.request", "llm.response"]);
    assert_eq!(events[1].parent_event_id, Some(events[0].event_id));
    assert!(gov.audit().verify_chain().await.unwrap().is_clean());
    // The spend arrived as tracked; the reservation itself expires later.
    let snap = gov.cost().snapshot("agent", "s").await.unwrap();
    assert_eq!(snap.status.day.spent, MicroUsd(150)); // 1,000 input tokens of gpt-4o-mini
    gov.close().await;
    let _ = std::fs::remove_dir_all(&spool);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}
