//! Webhooks against a receiver on loopback: the signature verifies, a 500 is retried after its
//! backoff (on the store's clock, no sleeping), a receiver that keeps failing ends in the
//! dead-letter record, and the Slack and CloudEvents bodies carry the deep link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gov_notify::{Notifier, NotifyConfig, Secrets, verify};
use gov_sdk::{Clock, Governance, OperatorRole, WorkflowSpec};
use gov_testdb::TestDb;
use serde_json::{Value, json};

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const SIGNING: &[u8] = b"a webhook signing secret";

/// What the receiver saw: (path, headers, body), and how many times it still fails first.
#[derive(Default)]
struct Seen {
    calls: Vec<(String, HeaderMap, Vec<u8>)>,
    fail_first: usize,
}

async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen {
        fail_first,
        ..Seen::default()
    }));
    let state = seen.clone();
    let handler =
        move |path: axum::extract::Path<String>, headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let mut s = state.lock().expect("lock");
                s.calls.push((path.0, headers, body.to_vec()));
                if s.fail_first > 0 {
                    s.fail_first -= 1;
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        };
    let app = axum::Router::new().route("/hook/{name}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

struct Setup {
    _db: TestDb,
    agent: Governance,
    ops: Governance,
    clock: Clock,
}

async fn setup() -> Setup {
    let db = TestDb::new().await;
    let clock = Clock::manual(time::OffsetDateTime::now_utc());
    let agent = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .clock(clock.clone())
        .connect()
        .await
        .expect("agent");
    let ops = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .clock(clock.clone())
        .connect()
        .await
        .expect("operator");
    Setup {
        _db: db,
        agent,
        ops,
        clock,
    }
}

fn config(base: &str, extra: &str) -> NotifyConfig {
    NotifyConfig::parse(&format!(
        r#"
console_url = "https://console.example.com/"
retry_initial_ms = 1000
retry_max_secs = 60
max_attempts = 3

[[webhook]]
name = "ops"
url = "{base}/hook/ops"
secret_env = "OPS_WEBHOOK_SECRET"
{extra}
"#
    ))
    .expect("config")
}

fn secrets() -> Secrets {
    let mut s = Secrets::default();
    s.signing.insert("ops".into(), SIGNING.to_vec());
    s
}

#[tokio::test]
async fn a_signed_webhook_is_retried_after_a_500_and_delivered_once() {
    let s = setup().await;
    let (base, seen) = receiver(1).await;
    let n = Notifier::new(s.ops.clone(), config(&base, ""), secrets()).expect("notifier");
    let req = s
        .agent
        .gates()
        .request(
            "billing",
            Some("s-1"),
            "send_payment",
            &json!({ "amount": 1200 }),
        )
        .await
        .expect("request");

    // First round: queued, sent, the receiver answers 500: a retry is scheduled.
    let r = n.run_once().await.expect("round");
    assert_eq!((r.queued, r.delivered, r.retried), (1, 0, 1));
    // Nothing is due before the backoff has passed, however often a round runs.
    let r = n.run_once().await.expect("round");
    assert_eq!((r.queued, r.delivered, r.retried), (0, 0, 0));
    assert_eq!(seen.lock().expect("lock").calls.len(), 1);
    s.clock.advance(Duration::from_millis(1_001));
    let r = n.run_once().await.expect("round");
    assert_eq!((r.delivered, r.retried), (1, 0));
    // Delivered: never again.
    s.clock.advance(Duration::from_secs(120));
    let r = n.run_once().await.expect("round");
    assert_eq!((r.queued, r.delivered), (0, 0));

    let calls = std::mem::take(&mut seen.lock().expect("lock").calls);
    assert_eq!(calls.len(), 2);
    for (path, headers, body) in &calls {
        assert_eq!(path, "ops");
        let sig = headers
            .get(gov_notify::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .expect("signed");
        assert!(verify(SIGNING, sig, body), "the signature verifies");
        assert!(!verify(b"another secret", sig, body));
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(!verify(SIGNING, sig, &tampered));
        let v: Value = serde_json::from_slice(body).expect("json");
        assert_eq!(v["type"], "governance.approval.requested");
        assert_eq!(v["request_id"], req.id.to_string());
        assert_eq!(
            v["url"],
            format!("https://console.example.com/approvals/{}", req.id)
        );
    }
    // The same delivery id on the retry: a receiver deduplicates by it.
    let ids: Vec<_> = calls
        .iter()
        .map(|c| c.1.get(gov_notify::DELIVERY_HEADER).cloned())
        .collect();
    assert_eq!(ids[0], ids[1]);
    let rows = s
        .ops
        .workflows()
        .notifications(None, 10)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status.as_str(), rows[0].attempts),
        ("delivered", 2)
    );
}

#[tokio::test]
async fn a_receiver_that_keeps_failing_ends_in_the_dead_letter_record() {
    let s = setup().await;
    let (base, seen) = receiver(usize::MAX).await;
    let n = Notifier::new(s.ops.clone(), config(&base, ""), secrets()).expect("notifier");
    s.agent
        .gates()
        .request("billing", None, "wire", &json!({}))
        .await
        .expect("request");
    let mut dead = 0;
    for _ in 0..5 {
        dead += n.run_once().await.expect("round").dead;
        s.clock.advance(Duration::from_secs(120));
    }
    assert_eq!(dead, 1);
    assert_eq!(seen.lock().expect("lock").calls.len(), 3, "max_attempts");
    let rows = s
        .ops
        .workflows()
        .notifications(Some("dead"), 10)
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{rows:?}"
    );
    // The agent's credentials cannot read or clear the record.
    assert!(s.agent.workflows().notifications(None, 10).await.is_err());
}

#[tokio::test]
async fn slack_and_cloudevents_bodies_and_who_hears_of_what() {
    let s = setup().await;
    let (base, seen) = receiver(0).await;
    let cfg = NotifyConfig::parse(&format!(
        r#"
console_url = "https://console.example.com"

[[webhook]]
name = "slack"
url = "{base}/hook/slack"
format = "slack"
events = ["requested", "escalated"]
groups = ["finance"]

[[webhook]]
name = "events"
url = "{base}/hook/events"
format = "cloudevents"
events = ["escalated", "expired"]

[[webhook]]
name = "other-agent"
url = "{base}/hook/other"
agents = ["someone-else"]
"#
    ))
    .expect("config");
    s.ops
        .workflows()
        .put(
            &WorkflowSpec {
                name: "four-eyes".into(),
                quorum: 2,
                approver_group: Some("finance".into()),
                escalate_to: Some("cfo".into()),
                escalate_after_secs: Some(600),
                timeout_secs: Some(3_600),
            },
            "admin",
        )
        .await
        .expect("workflow");
    s.ops
        .workflows()
        .route("billing", "*", "four-eyes")
        .await
        .expect("route");
    s.ops
        .operators()
        .add(
            "alice",
            OperatorRole::Operator,
            "correct horse battery staple",
        )
        .await
        .expect("operator");
    let n = Notifier::new(s.ops.clone(), cfg, Secrets::default()).expect("notifier");
    let req = s
        .agent
        .gates()
        .request("billing", Some("s-9"), "wire", &json!({ "amount": 7 }))
        .await
        .expect("request");
    n.run_once().await.expect("round");
    // (Timers start when the request reached the database, by its own clock: a minute of
    // slack for the time this test took so far.)
    s.clock.advance(Duration::from_secs(660));
    let r = n.run_once().await.expect("round");
    assert_eq!(r.escalated, 1);
    s.clock.advance(Duration::from_secs(3_600));
    let r = n.run_once().await.expect("round");
    assert_eq!(r.expired, 1);

    let seen = seen.lock().expect("lock");
    let by: Vec<(String, String)> = seen
        .calls
        .iter()
        .map(|(p, h, _)| {
            (
                p.clone(),
                h.get(gov_notify::EVENT_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("slack".to_owned(), "requested".to_owned()),
            ("events".to_owned(), "escalated".to_owned()),
            ("events".to_owned(), "expired".to_owned()),
        ]
    );
    let link = format!("https://console.example.com/approvals/{}", req.id);
    let slack: Value = serde_json::from_slice(&seen.calls[0].2).expect("json");
    assert!(slack["text"].as_str().expect("text").contains(&link));
    assert_eq!(slack["blocks"][2]["elements"][0]["url"], link);
    let (_, headers, body) = &seen.calls[1];
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/cloudevents+json")
    );
    let ce: Value = serde_json::from_slice(body).expect("json");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "dev.governance.approval.escalated");
    assert_eq!(ce["data"]["url"], link);
    assert_eq!(ce["data"]["escalate_to"], "cfo");
    assert!(
        headers.get(gov_notify::SIGNATURE_HEADER).is_none(),
        "no secret, no signature"
    );
}
