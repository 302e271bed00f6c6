//! A refused request must not break the sender's next one: Customer.io
//! keeps connections alive, and a webhook written onto a connection koala
//! has closed fails in transport and stalls the workspace's queue.
//!
//! These tests speak raw HTTP/1.1 over one TCP connection, as a keep-alive
//! client does: send a request that koala refuses, read the answer, then
//! send a valid webhook — on the same connection, unless the answer said
//! `Connection: close` (then a well-behaved client reconnects).

use std::time::Duration;

use koala::customerio::signature::sign;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::app::*;

struct Answer {
    status: u16,
    connection_close: bool,
    body: String,
}

async fn read_answer(conn: &mut BufReader<TcpStream>) -> std::io::Result<Answer> {
    let mut status_line = String::new();
    if conn.read_line(&mut status_line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let (mut length, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header line");
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "connection" => close = value.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok(Answer {
        status,
        connection_close: close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn signed_webhook(host: &str, person: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&segment_body(
        CART_SEGMENT,
        person,
        "entered",
        chrono::Utc::now().timestamp(),
    ))
    .unwrap();
    let ts = chrono::Utc::now().timestamp().to_string();
    let mut req = format!(
        "POST /webhooks/customerio/segments HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         X-CIO-Timestamp: {ts}\r\nX-CIO-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        sign(WEBHOOK_KEY, &ts, &body),
        body.len()
    )
    .into_bytes();
    req.extend(body);
    req
}

/// Sends `refused` then a valid webhook the way a keep-alive client does,
/// and returns the refused answer's status. Fails if the valid webhook
/// does not get through.
async fn refused_then_valid(app: &TestApp, refused: Vec<u8>, person: &str) -> u16 {
    let host = app.base.trim_start_matches("http://").to_owned();
    let mut conn = BufReader::new(TcpStream::connect(&host).await.unwrap());
    conn.get_mut().write_all(&refused).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut conn))
        .await
        .expect("an answer in time")
        .expect("an answer to the refused request");
    assert!(first.status >= 400, "{} {}", first.status, first.body);
    assert!(
        first.body.contains("\"error\""),
        "refusals are JSON: {}",
        first.body
    );
    if first.connection_close {
        // Announced: the client reconnects, and that must work.
        conn = BufReader::new(TcpStream::connect(&host).await.unwrap());
    }
    conn.get_mut()
        .write_all(&signed_webhook(&host, person))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut conn))
        .await
        .expect("an answer in time")
        .unwrap_or_else(|e| {
            panic!(
                "the connection was closed after a {} without Connection: close: {e}",
                first.status
            )
        });
    assert_eq!(second.status, 200, "{}", second.body);
    first.status
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_breaking_the_next_webhook() {
    let config = base_config("").replace("[customerio]", "body_limit_bytes = 1024\n[customerio]")
        + &cart_audience("", "mirror");
    let app = TestApp::start_with(&config).await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let big = vec![b'x'; 64 * 1024];
    let mut req = format!(
        "POST /webhooks/customerio/segments HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend(&big);
    assert_eq!(refused_then_valid(&app, req, "ka-1").await, 413);

    // Chunked, so the limit is only found while reading.
    let mut req = format!(
        "POST /webhooks/customerio/segments HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        big.len()
    )
    .into_bytes();
    req.extend(&big);
    req.extend(b"\r\n0\r\n\r\n");
    assert_eq!(refused_then_valid(&app, req, "ka-2").await, 413);
    app.stop().await;
}

#[tokio::test]
async fn refusals_before_or_after_reading_the_body_keep_the_sender_working() {
    let app = TestApp::start().await;
    let host = app.base.trim_start_matches("http://").to_owned();
    let body = br#"{"segment_id":42,"action":"entered","occurred_at":1750000000,"identifiers":{"id":"x"}}"#;
    let post = |path: &str, extra: &str| {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend(body);
        req
    };
    // A bad signature (the body is read, then refused).
    let bad_sig = post(
        "/webhooks/customerio/segments",
        "X-CIO-Timestamp: 1\r\nX-CIO-Signature: 00\r\n",
    );
    assert_eq!(refused_then_valid(&app, bad_sig, "ka-3").await, 401);
    // The admin guard refuses before any handler reads the body.
    let no_token = post("/v1/dead-letters/redrive", "");
    assert_eq!(refused_then_valid(&app, no_token, "ka-4").await, 401);
    // No such route.
    let nowhere = post("/webhooks/customerio/nowhere", "");
    assert_eq!(refused_then_valid(&app, nowhere, "ka-5").await, 404);
    // Malformed JSON (read in full, then refused).
    let mut garbage = format!(
        "POST /webhooks/customerio/segments HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\n"
    )
    .into_bytes();
    garbage.extend(b"{{{");
    assert!(refused_then_valid(&app, garbage, "ka-6").await >= 400);
    assert_eq!(app.members(CART).await, 4);
    app.stop().await;
}
