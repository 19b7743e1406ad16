//! Live events over SSE never drop an event silently: a client that falls behind the broadcast
//! buffer is told (`event: lagged`) and sent what it missed from the database, in seq order;
//! a client that reconnects with `Last-Event-ID` gets everything after that id first.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use gov_console::{ConsoleConfig, router};
use gov_sdk::{AuditEvent, Governance, OperatorRole};
use gov_testdb::TestDb;
use tokio_stream::StreamExt as _;
use tower::ServiceExt as _;

const SECRET: &str = "9f2c4e7a1b3d5f6081a2c3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5a6b7c8";
const PW: &str = "correct horse battery staple";

struct Live {
    _db: TestDb,
    gov: Governance,
    app: Router,
    cookie: String,
}

async fn live(buffer: usize) -> Live {
    let db = TestDb::new().await;
    let gov = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .connect()
        .await
        .expect("connect");
    gov.operators()
        .add("vera", OperatorRole::Viewer, PW)
        .await
        .expect("add user");
    let app = router(
        gov.clone(),
        ConsoleConfig {
            live_buffer: buffer,
            ..ConsoleConfig::default()
        },
    )
    .layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 3], 40_000))));
    let res = app
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!(
                    "username=vera&password={}",
                    PW.replace(' ', "+")
                )))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("name=value")
        .to_owned();
    Live {
        _db: db,
        gov,
        app,
        cookie,
    }
}

/// One SSE event: (event, id, data).
type Sse = (String, String, String);

struct Stream {
    body: axum::body::BodyDataStream,
    buf: String,
}

impl Stream {
    async fn open(l: &Live, last_event_id: Option<&str>) -> Self {
        let mut req = Request::get("/events/stream").header(header::COOKIE, &l.cookie);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = l
            .app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(res.status(), StatusCode::OK);
        Self {
            body: res.into_body().into_data_stream(),
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped); fails after 30 seconds.
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = v.to_owned();
                    }
                }
                if event.is_empty() {
                    continue;
                }
                return (event, id, data);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next())
                .await
                .expect("an event within 30 s")
                .expect("the stream goes on")
                .expect("a chunk");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn log(gov: &Governance, n: u64) {
    gov.audit()
        .log(
            AuditEvent::builder("pay-bot", "tool.call")
                .payload(serde_json::json!({ "n": n }))
                .build()
                .expect("event"),
        )
        .await
        .expect("log");
}

fn seq_of(id: &str) -> i64 {
    id.strip_prefix("default:")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an id <chain>:<seq>, not {id:?}"))
}

/// Runs a test body, failing (rather than hanging the run) after a minute.
async fn within_a_minute(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("the test finishes within a minute");
}

#[tokio::test]
async fn a_client_that_falls_behind_is_told_and_caught_up_from_the_database() {
    within_a_minute(falls_behind()).await;
}

async fn falls_behind() {
    const EVENTS: u64 = 300;
    let l = live(8).await;
    let mut s = Stream::open(&l, None).await;
    // The follower is live once a first event arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let first = loop {
        log(&l.gov, n).await;
        n += 1;
        if let Ok(e) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no event arrived");
    };
    assert_eq!(first.0, "audit");
    let mut expect = seq_of(&first.1) + 1;
    // The client stops reading while many more events are written than the buffer holds.
    for i in 0..EVENTS {
        log(&l.gov, n + i).await;
    }
    let head = l
        .gov
        .audit()
        .head("default")
        .await
        .expect("head")
        .expect("the chain exists")
        .seq;
    let mut lagged = 0;
    while expect <= head {
        let (event, id, data) = s.next().await;
        match event.as_str() {
            "lagged" => {
                lagged += 1;
                let v: serde_json::Value = serde_json::from_str(&data).expect("json");
                assert!(v["missed"].as_u64().unwrap_or(0) > 0, "{data}");
            }
            "audit" => {
                assert_eq!(seq_of(&id), expect, "every event once, in order");
                let v: serde_json::Value = serde_json::from_str(&data).expect("json");
                assert_eq!(v["seq"], expect);
                expect += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(lagged > 0, "the client was told it fell behind");
    l.gov.close().await;
}

#[tokio::test]
async fn a_reconnecting_client_resumes_after_its_last_event_id() {
    within_a_minute(reconnects()).await;
}

async fn reconnects() {
    let l = live(4_096).await;
    for n in 0..5 {
        log(&l.gov, n).await;
    }
    let mut s = Stream::open(&l, Some("default:2")).await;
    for seq in 3..=5 {
        let (event, id, _) = s.next().await;
        assert_eq!((event.as_str(), seq_of(&id)), ("audit", seq));
    }
    // Then live, without a gap or a repeat.
    log(&l.gov, 5).await;
    let (event, id, _) = s.next().await;
    assert_eq!((event.as_str(), seq_of(&id)), ("audit", 6));
    // An id of another chain is not a position here: the client starts live.
    let mut other = Stream::open(&l, Some("billing:1")).await;
    log(&l.gov, 6).await;
    let (_, id, _) = other.next().await;
    assert_eq!(seq_of(&id), 7);
    l.gov.close().await;
}
