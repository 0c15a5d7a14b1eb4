//! Every error is JSON, and a subscription no worker would deliver to is
//! refused with the reason instead of accepted.

use std::sync::Arc;

use pushq_example_web::{AppState, router};
use pushq_producer::{Producer, Topology};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{AMQP_URL, AUTH, P256DH, unique_prefix};

/// Serves the example with the default (public push services) policy.
async fn serve() -> (String, Topology) {
    let topology = Topology::new(unique_prefix()).expect("prefix");
    let producer = Producer::connect(AMQP_URL, topology.clone(), "/example-test")
        .await
        .expect("is RabbitMQ running?");
    let state = AppState {
        producer: Arc::new(producer),
        vapid_public_key: P256DH.into(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    (addr, topology)
}

async fn post(addr: &str, path: &str, content_type: &str, body: &str) -> (u16, Value) {
    request(addr, "POST", path, content_type, body).await
}

/// One HTTP/1.1 request; the status and the body parsed as JSON.
async fn request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer in time")
    .expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let (head, body) = response.split_once("\r\n\r\n").expect("a body");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body}"));
    (status, body)
}

fn subscribe(endpoint: &str) -> String {
    json!({
        "user": "kate",
        "subscription": {"endpoint": endpoint, "keys": {"p256dh": P256DH, "auth": AUTH}},
    })
    .to_string()
}

#[tokio::test]
async fn a_refused_request_is_answered_in_json() {
    let (addr, _topology) = serve().await;
    let (status, body) = post(
        &addr,
        "/subscriptions",
        "application/json",
        r#"{"user":"kate"}"#,
    )
    .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("subscription")),
        "{body}"
    );
    let (status, body) = post(&addr, "/notify", "text/plain", "hello").await;
    assert_eq!(status, 415);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = post(&addr, "/notify", "application/json", "{").await;
    assert_eq!(status, 400);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = request(&addr, "GET", "/no-such-page", "text/plain", "").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = request(&addr, "GET", "/notify", "text/plain", "").await;
    assert_eq!(status, 405);
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn an_endpoint_no_worker_would_call_is_refused_with_the_reason() {
    let (addr, _topology) = serve().await;
    for (endpoint, why) in [
        (
            "http://fcm.googleapis.com/fcm/send/secret-path",
            "only https",
        ),
        (
            "https://push.example.net/secret-path",
            "not an allowed push service",
        ),
    ] {
        let (status, body) = post(
            &addr,
            "/subscriptions",
            "application/json",
            &subscribe(endpoint),
        )
        .await;
        assert_eq!(status, 422, "{endpoint}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{body}");
        assert!(!error.contains("secret-path"), "the path: {body}");
    }
}
