//! An event nothing takes comes back from the broker whole; no log line may
//! hold it. Its own test binary because it installs the process's global
//! subscriber, the one lapin's I/O thread logs to, at TRACE.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ExchangeDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use pushq_producer::{
    NotificationSend, Producer, PublishError, PushSubscription, SubscriptionKeys,
    SubscriptionRegister, Target, Topology,
};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const ENDPOINT_PATH: &str = "/fcm/send/returned-endpoint-path-7f3a9c";
/// RFC 8291 Appendix A's browser keys.
const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
const PAYLOAD: &str = "returned-payload-secret-5e1d";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a byte string shows in a `Debug` of `Vec<u8>`, as lapin prints bodies.
fn as_debug_bytes(text: &str) -> String {
    let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
    bytes.join(", ")
}

#[tokio::test]
async fn a_returned_event_is_unroutable_and_never_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // The producer declares the exchange; no queue is bound to it.
    let prefix = format!(
        "pushq-sdk-returned-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let topology = Topology::new(prefix).expect("prefix");
    let producer = Producer::connect(AMQP_URL, topology.clone(), "/sdk-test")
        .await
        .expect("is RabbitMQ running?");
    let register = SubscriptionRegister {
        user: "u1".into(),
        subscription: PushSubscription {
            endpoint: format!("https://fcm.googleapis.com{ENDPOINT_PATH}"),
            expiration_time: None,
            keys: SubscriptionKeys {
                p256dh: P256DH.into(),
                auth: AUTH.into(),
            },
        },
        tags: vec![],
    };
    let send = NotificationSend::new(
        Target::User("u1".into()),
        Some(serde_json::json!({ "secret": PAYLOAD })),
    );
    for result in [
        tokio::time::timeout(Duration::from_secs(10), producer.register(&register)).await,
        tokio::time::timeout(Duration::from_secs(10), producer.send(&send)).await,
    ] {
        let result = result.expect("the confirm arrives");
        assert!(
            matches!(result, Err(PublishError::Unroutable { .. })),
            "{result:?}"
        );
    }
    producer.close().await.expect("closes");

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("logs")).into_owned();
    assert!(
        logs.contains("lapin"),
        "lapin's own logs still reach the service's subscriber"
    );
    for secret in [ENDPOINT_PATH, P256DH, AUTH, PAYLOAD] {
        assert!(!logs.contains(secret), "a log line holds {secret}:\n{logs}");
        assert!(
            !logs.contains(&as_debug_bytes(secret)),
            "a log line holds the bytes of {secret}"
        );
    }
    assert!(
        !logs.contains("Server returned us a message"),
        "lapin logged the returned message"
    );

    let cleanup = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("cleanup connection");
    let channel = cleanup.create_channel().await.expect("channel");
    let _ = channel
        .exchange_delete(topology.exchange().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = cleanup.close(200, "done".into()).await;
}
