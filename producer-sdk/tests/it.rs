//! The SDK against the real broker: invalid events never leave the process,
//! valid ones arrive confirmed, unroutable ones are errors.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use pushq_producer::{
    InvalidKind, NotificationSend, Producer, PublishError, PushSubscription, SubscriptionKeys,
    SubscriptionRegister, Target, Topology,
};
use serde_json::json;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// A real P-256 point and auth secret (RFC 8291 Appendix A's browser keys).
const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

fn subscription(endpoint: &str, p256dh: &str, auth: &str) -> PushSubscription {
    PushSubscription {
        endpoint: endpoint.into(),
        expiration_time: None,
        keys: SubscriptionKeys {
            p256dh: p256dh.into(),
            auth: auth.into(),
        },
    }
}

struct Broker {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    queue: String,
}

/// A producer topology with one queue bound to everything, to see what arrives.
async fn broker_with_probe_queue() -> Broker {
    let prefix = format!(
        "pushq-sdk-test-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let topology = Topology::new(prefix).expect("prefix");
    let connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .expect("is RabbitMQ running?");
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("{}.probe", topology.prefix());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("probe queue");
    Broker {
        connection,
        channel,
        topology,
        queue,
    }
}

impl Broker {
    async fn bind_probe(&self) {
        self.channel
            .queue_bind(
                self.queue.as_str().into(),
                self.topology.exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    async fn drain(&self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
        {
            events.push(serde_json::from_slice(&message.delivery.data).expect("structured JSON"));
        }
        events
    }

    async fn cleanup(self) {
        let _ = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self
            .channel
            .exchange_delete(
                self.topology.exchange().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn invalid_kind(result: Result<String, PublishError>) -> InvalidKind {
    match result {
        Err(PublishError::Invalid { source, .. }) => source.kind,
        other => panic!("expected an invalid event, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_events_are_refused_before_publishing_and_valid_ones_arrive() {
    let broker = broker_with_probe_queue().await;
    let producer = Producer::connect(AMQP_URL, broker.topology.clone(), "/sdk-test")
        .await
        .expect("connects");
    broker.bind_probe().await;

    let to_user = || Target::User("u1".into());
    let mut too_large = NotificationSend::new(to_user(), Some(json!("x".repeat(3994))));
    assert_eq!(
        invalid_kind(producer.send(&too_large).await),
        InvalidKind::PayloadTooLarge
    );
    // Encoded size counts: 1997 two-byte characters plus quotes and braces.
    too_large.payload = Some(json!({"t": "é".repeat(1997)}));
    assert_eq!(
        invalid_kind(producer.send(&too_large).await),
        InvalidKind::PayloadTooLarge
    );

    let mut bad_ttl = NotificationSend::new(to_user(), None);
    bad_ttl.ttl = 2_419_201;
    assert_eq!(
        invalid_kind(producer.send(&bad_ttl).await),
        InvalidKind::InvalidData
    );
    let mut bad_topic = NotificationSend::new(to_user(), None);
    bad_topic.topic = Some("not a topic!".into());
    assert_eq!(
        invalid_kind(producer.send(&bad_topic).await),
        InvalidKind::InvalidData
    );
    let empty_user = NotificationSend::new(Target::User(String::new()), None);
    assert_eq!(
        invalid_kind(producer.send(&empty_user).await),
        InvalidKind::InvalidData
    );

    let off_curve = format!("{}A{}", &P256DH[..40], &P256DH[41..]);
    for (endpoint, p256dh, auth) in [
        (
            "https://fcm.googleapis.com/fcm/send/x",
            off_curve.as_str(),
            AUTH,
        ),
        ("https://fcm.googleapis.com/fcm/send/x", P256DH, "c2hvcnQ"),
        ("fcm.googleapis.com/fcm/send/x", P256DH, AUTH),
        ("https://user:pw@fcm.googleapis.com/x", P256DH, AUTH),
    ] {
        let register = SubscriptionRegister {
            user: "u1".into(),
            subscription: subscription(endpoint, p256dh, auth),
            tags: vec![],
        };
        assert_eq!(
            invalid_kind(producer.register(&register).await),
            InvalidKind::InvalidData
        );
    }
    let mut long_id = pushq_producer::CloudEvent::new(
        "pushq.notification.send",
        "/sdk-test",
        serde_json::to_value(NotificationSend::new(to_user(), None)).expect("json"),
    );
    long_id.id = "x".repeat(256);
    assert_eq!(
        invalid_kind(producer.publish(long_id).await.map(|()| String::new())),
        InvalidKind::FieldTooLong
    );
    assert!(
        broker.drain().await.is_empty(),
        "an invalid event was published"
    );

    let mut largest = NotificationSend::new(to_user(), Some(json!("x".repeat(3993))));
    largest.ttl = 60;
    let id = producer
        .send(&largest)
        .await
        .expect("the largest payload is valid");
    let valid = SubscriptionRegister {
        user: "u1".into(),
        subscription: subscription("https://fcm.googleapis.com/fcm/send/x", P256DH, AUTH),
        tags: vec!["news".into()],
    };
    producer.register(&valid).await.expect("valid registration");
    let events = broker.drain().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[0]["type"], "pushq.notification.send");
    assert_eq!(events[0]["source"], "/sdk-test");
    assert_eq!(events[0]["data"]["ttl"], 60);
    assert_eq!(events[1]["type"], "pushq.subscription.register");

    producer.close().await.expect("closes");
    broker.cleanup().await;
}

#[tokio::test]
async fn an_event_no_queue_takes_is_an_error_not_a_silent_loss() {
    let broker = broker_with_probe_queue().await;
    let producer = Producer::connect(AMQP_URL, broker.topology.clone(), "/sdk-test")
        .await
        .expect("connects");
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        producer.send(&NotificationSend::new(Target::Tag("all".into()), None)),
    )
    .await
    .expect("the confirm arrives");
    assert!(
        matches!(result, Err(PublishError::Unroutable { .. })),
        "{result:?}"
    );
    producer.close().await.expect("closes");
    broker.cleanup().await;
}

#[tokio::test]
async fn a_subscription_the_worker_would_refuse_is_refused_here() {
    let broker = broker_with_probe_queue().await;
    let producer = Producer::connect(AMQP_URL, broker.topology.clone(), "/sdk-test")
        .await
        .expect("connects");
    broker.bind_probe().await;
    let register = |endpoint: &str| SubscriptionRegister {
        user: "u1".into(),
        subscription: subscription(endpoint, P256DH, AUTH),
        tags: vec![],
    };

    for (endpoint, origin, why) in [
        (
            "http://fcm.googleapis.com/fcm/send/plain-http-path",
            "http://fcm.googleapis.com",
            "only https",
        ),
        (
            "https://push.example.net/wpush/elsewhere-path",
            "https://push.example.net",
            "not an allowed push service",
        ),
    ] {
        match producer.register(&register(endpoint)).await {
            Err(PublishError::Invalid { source, .. }) => {
                assert_eq!(source.kind, InvalidKind::EndpointRefused);
                assert!(source.message.contains(origin), "{source}");
                assert!(source.message.contains(why), "{source}");
                assert!(!source.message.contains("-path"), "the path: {source}");
            }
            other => panic!("{endpoint} was not refused: {other:?}"),
        }
    }
    assert!(
        broker.drain().await.is_empty(),
        "a refused subscription was published"
    );

    // The workers' own settings allow it: so does the SDK given them.
    let producer = producer.with_endpoint_policy(
        pushq_producer::EndpointPolicy::from_settings(Some("push.example.net"), None)
            .expect("policy"),
    );
    producer
        .register(&register("https://push.example.net/wpush/elsewhere-path"))
        .await
        .expect("allowed by the policy given");
    assert_eq!(broker.drain().await.len(), 1);

    producer.close().await.expect("closes");
    broker.cleanup().await;
}

/// A hung server or a load balancer without a backend: the TCP connection
/// is accepted and nothing is ever written back.
#[tokio::test]
async fn a_broker_that_never_answers_is_an_error_within_the_bound() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "amqp://guest:s3cret@{}/%2f",
        listener.local_addr().expect("addr")
    );
    let bound = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let connect = Producer::connect_within(&url, Topology::default(), "/sdk-test", bound);
    let (result, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(connect, listener.accept())
    })
    .await
    .expect("connect_within returns instead of waiting for the broker");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let err = result.expect_err("nothing answered");
    assert!(
        matches!(
            err,
            PublishError::Broker {
                action: "connecting",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let sentence = pushq_schemas::error_text::sentence(&err);
    assert!(
        sentence.contains("did not answer within 0.5 s"),
        "{sentence}"
    );
    assert!(!sentence.contains("s3cret"), "{sentence}");

    // The connection is not left open behind the error: lapin sent its
    // protocol header, then the socket ends.
    assert_lapin_gave_up(accepted, "the SDK closes the socket it gave up on").await;
}

#[tokio::test]
async fn a_url_without_a_scheme_is_refused_without_quoting_it() {
    for url in ["127.0.0.1:5672", "guest:s3cret@127.0.0.1:5672"] {
        let err = Producer::connect(url, Topology::default(), "/sdk-test")
            .await
            .expect_err(url);
        assert!(matches!(err, PublishError::InvalidUrl(_)), "{err:?}");
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("not an amqp:// or amqps:// URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    assert_eq!(
        pushq_producer::broker_address("amqps://guest:s3cret@rabbit.internal/prod").ok(),
        Some("rabbit.internal:5671".to_owned())
    );
}

#[tokio::test]
async fn a_connection_attempt_given_up_early_leaves_no_socket_behind() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "amqp://guest:guest@{}/%2f",
        listener.local_addr().expect("addr")
    );
    // The caller gives up (drops the future) long before the bound: the
    // worker's own patience does that when waiting for a dependency.
    let attempt = pushq_producer::open_connection(
        &url,
        lapin::ConnectionProperties::default(),
        Duration::from_secs(60),
    );
    let (given_up, accepted) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(300), attempt),
        listener.accept()
    );
    assert!(given_up.is_err(), "nothing answered, yet it connected");
    assert_lapin_gave_up(
        accepted,
        "the abandoned attempt's socket is shut down, ending lapin's I/O thread",
    )
    .await;
}

/// The broker's side of a connection lapin gave up on: lapin sent its
/// protocol header, then the socket ends (within 5 s).
async fn assert_lapin_gave_up(
    accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
    ended: &str,
) {
    let (mut stream, _) = accepted.expect("accepted");
    let mut received = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut received),
    )
    .await
    .expect(ended)
    .expect("read");
    assert!(received.starts_with(b"AMQP"), "{received:?}");
}
