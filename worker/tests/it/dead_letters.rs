//! Every kind of invalid event is dead-lettered with its reason and original
//! body and headers, while the good events around it are delivered.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString, ShortString};
use pushq_producer::{NotificationSend, Target};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, WAIT, assert_dead_letter_kinds, binary_properties, new_id, structured_properties,
};

fn structured(event_type: &str, data: Value) -> Vec<u8> {
    json!({"specversion": "1.0", "id": new_id(), "source": "/tests", "type": event_type, "data": data})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_event_is_dead_lettered_with_its_reason_and_good_ones_flow_around_it() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "kim", &[]).await;
    let good = |text: &str| NotificationSend::new(Target::User("kim".into()), Some(json!(text)));
    app.producer.send(&good("before")).await.expect("published");

    let keys = browser.to_json()["keys"].clone();
    let send = "pushq.notification.send";
    let mut custom = binary_properties(
        "cloudEvents_",
        &[
            ("specversion", "1.0"),
            ("id", "x"),
            ("source", "/t"),
            ("type", send),
        ],
        Some("application/json"),
    );
    let mut headers = custom.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from("x-custom"),
        AMQPValue::LongString(LongString::from("kept")),
    );
    // A producer's message TTL must not make its dead letter expire out of
    // the dead-letter queue.
    custom = custom.with_headers(headers).with_expiration("60000".into());

    let cases: Vec<(&str, &str, BasicProperties, Vec<u8>)> = vec![
        (
            "not_cloudevent",
            send,
            BasicProperties::default().with_content_type("text/plain".into()),
            b"hello".to_vec(),
        ),
        (
            "invalid_json",
            send,
            structured_properties(),
            b"{not json".to_vec(),
        ),
        (
            "missing_attribute",
            send,
            structured_properties(),
            json!({"specversion": "1.0", "id": "1", "type": send, "data": {}})
                .to_string()
                .into_bytes(),
        ),
        (
            "bad_specversion",
            send,
            structured_properties(),
            json!({"specversion": "0.3", "id": "1", "source": "/t", "type": send})
                .to_string()
                .into_bytes(),
        ),
        (
            "unknown_type",
            "pushq.notification.schedule",
            structured_properties(),
            structured(
                "pushq.notification.schedule",
                json!({"to": {"user": "kim"}}),
            ),
        ),
        (
            "invalid_data",
            send,
            custom,
            json!({"to": {"user": "kim"}, "ttl": -1})
                .to_string()
                .into_bytes(),
        ),
        (
            "unknown_target",
            send,
            structured_properties(),
            structured(send, json!({"to": {"group": "admins"}})),
        ),
        (
            "payload_too_large",
            send,
            structured_properties(),
            structured(
                send,
                json!({"to": {"user": "kim"}, "payload": "x".repeat(3994)}),
            ),
        ),
        (
            "endpoint_refused",
            send,
            structured_properties(),
            structured(
                send,
                json!({"to": {"subscription": {"endpoint": "https://push.evil.example/x", "keys": keys}}}),
            ),
        ),
        (
            "endpoint_refused",
            "pushq.subscription.register",
            structured_properties(),
            structured(
                "pushq.subscription.register",
                json!({"user": "kim", "subscription": {"endpoint": "https://169.254.169.254/latest", "keys": keys}}),
            ),
        ),
        (
            "invalid_data",
            "pushq.subscription.unregister",
            structured_properties(),
            structured(
                "pushq.subscription.unregister",
                json!({"user": "kim", "endpoint": browser.endpoint}),
            ),
        ),
    ];
    for (_, routing_key, properties, body) in &cases {
        app.publish_raw(routing_key, properties.clone(), body).await;
    }
    app.producer.send(&good("after")).await.expect("published");

    let received = app
        .fake
        .wait_for_received(2, WAIT)
        .await
        .expect("good events delivered");
    let mut texts: Vec<String> = received.iter().map(|push| push.text()).collect();
    texts.sort();
    assert_eq!(texts, ["after", "before"]);

    let letters = app.dead_letters(cases.len()).await;
    assert_dead_letter_kinds(&letters, cases.iter().map(|(kind, ..)| *kind));
    for letter in &letters {
        assert!(
            cases.iter().any(|(_, _, _, body)| *body == letter.body),
            "{} lost its original body",
            letter.kind
        );
    }
    let binary = letters
        .iter()
        .find(|letter| letter.headers.inner().contains_key("x-custom"))
        .expect("the binary event kept its own headers");
    assert_eq!(binary.kind, "invalid_data");
    assert!(
        letters.iter().all(|letter| letter.expiration.is_none()),
        "a dead letter kept the message's expiration"
    );
    assert!(binary.headers.inner().contains_key("cloudEvents_id"));
    // Nothing was stored for the refused registration.
    let stored = app.subscription_count().await;
    assert_eq!(stored, 1);
    app.stop().await;
}
