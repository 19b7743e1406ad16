//! Email over SMTP to a sink on loopback: the notifier (running beside the console, as an
//! operator) sends the approval request, and the link in the email opens the request's page
//! in the console for a signed-in operator.

use std::time::Duration;

use gov_notify::{Notifier, NotifyConfig, Secrets};
use gov_sdk::{Governance, OperatorRole};
use gov_testdb::TestDb;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::support::SECRET;

const PW: &str = "correct horse battery staple";

/// A tiny SMTP sink: answers one session and hands over the message's DATA.
async fn smtp_sink() -> (u16, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let _ = w.write_all(b"220 sink.test ESMTP\r\n").await;
        let mut data = String::new();
        let mut in_data = false;
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    in_data = false;
                    let _ = w.write_all(b"250 2.0.0 queued\r\n").await;
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(std::mem::take(&mut data));
                    }
                } else {
                    data.push_str(&line);
                    data.push('\n');
                }
                continue;
            }
            let verb = line
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" | "HELO" => b"250 sink.test\r\n",
                "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 2.1.0 ok\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 end with .\r\n"
                }
                "QUIT" => {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ => b"502 not implemented\r\n",
            };
            let _ = w.write_all(reply).await;
        }
    });
    (port, rx)
}

#[tokio::test]
async fn the_email_reaches_an_smtp_sink_with_a_working_link_to_the_approval_page() {
    let db = TestDb::new().await;
    let ops = Governance::builder()
        .database_url(db.url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("operator handle");
    let agent = Governance::builder()
        .database_url(db.app_url())
        .audit_secret(SECRET)
        .warn_on_no_wrappers(false)
        .connect()
        .await
        .expect("agent handle");
    ops.operators()
        .add("alice", OperatorRole::Operator, PW)
        .await
        .expect("operator");

    // The console, served on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let console = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(gov_console::serve_on(
        ops.clone(),
        gov_console::ConsoleConfig::default(),
        listener,
    ));

    let (port, mail) = smtp_sink().await;
    let config = NotifyConfig::parse(&format!(
        r#"
console_url = "{console}"

[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Governance <governance@example.com>"

[[email]]
name = "approvers"
to = ["approvers@example.com"]
"#
    ))
    .expect("config");
    let notifier = Notifier::new(ops.clone(), config, Secrets::default()).expect("notifier");
    let req = agent
        .gates()
        .request(
            "billing-agent",
            Some("s-1"),
            "refund",
            &serde_json::json!({ "amount": 5000 }),
        )
        .await
        .expect("request");
    let round = notifier.run_once().await.expect("round");
    assert_eq!((round.queued, round.delivered), (1, 1), "{round:?}");
    let message = tokio::time::timeout(Duration::from_secs(10), mail)
        .await
        .expect("the sink got the message in time")
        .expect("a message");
    assert!(message.contains("To: approvers@example.com"), "{message}");
    assert!(
        message.contains("Subject: [governance] Approval requested: refund by billing-agent"),
        "{message}"
    );
    let link = message
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&console))
        .expect("a link to the console")
        .to_owned();
    assert_eq!(link, format!("{console}/approvals/{}", req.id));

    // The link works: after signing in, it is the request's page.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = http.get(&link).send().await.expect("get");
    assert_eq!(
        r.status().as_u16(),
        303,
        "not signed in: to the sign-in page"
    );
    let r = http
        .post(format!("{console}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(format!("username=alice&password={}", PW.replace(' ', "+")))
        .send()
        .await
        .expect("sign in");
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let r = http
        .get(&link)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    let page = r.text().await.expect("page");
    assert!(page.contains("billing-agent"), "{page}");
    assert!(page.contains("refund"), "{page}");
    assert!(
        page.contains(&format!("/approvals/{}/approve", req.id)),
        "{page}"
    );

    // Delivered once: the next round sends nothing.
    let round = notifier.run_once().await.expect("round");
    assert_eq!((round.queued, round.delivered), (0, 0));
}
