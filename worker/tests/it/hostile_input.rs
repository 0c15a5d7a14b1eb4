//! Hostile input: whatever arrives, decoding and validation end in an event
//! or a reason, never a panic; through the broker each bad message is
//! dead-lettered with its reason while the worker's memory stays bounded.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use pushq_producer::SubscriptionRegister;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, WAIT, assert_dead_letter_kinds, binary_properties, new_id, structured_properties,
};

mod decoding;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_dead_lettered_with_reasons_in_bounded_memory() {
    let app = TestApp::spawn_process(&[]).await;
    let browser = app.browser();
    app.register(&browser, "ivan", &[]).await;
    let send = "pushq.notification.send";
    let eight_mib = 8 * 1024 * 1024;
    let mut huge_event = json!({"specversion": "1.0", "id": "huge", "source": "/t", "type": send,
        "data": {"to": {"user": "ivan"}, "payload": "x".repeat(eight_mib)}})
    .to_string()
    .into_bytes();
    huge_event.shrink_to_fit();
    let attributes = [
        ("specversion", "1.0"),
        ("id", "b"),
        ("source", "/t"),
        ("type", send),
    ];
    let with_header = |name: &str, value: AMQPValue| {
        let mut properties =
            binary_properties("cloudEvents_", &attributes, Some("application/json"));
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(name), value);
        properties = properties.with_headers(headers);
        properties
    };
    let cases: Vec<(&str, BasicProperties, Vec<u8>)> = vec![
        ("payload_too_large", structured_properties(), huge_event),
        (
            "invalid_json",
            structured_properties(),
            vec![b'{'; eight_mib],
        ),
        ("invalid_json", structured_properties(), vec![b'['; 100_000]),
        (
            "invalid_json",
            structured_properties(),
            b"{\"specversion\": \"1.0\", \"id\": \"\xff\xfe\"}".to_vec(),
        ),
        (
            "not_cloudevent",
            with_header(
                "cloudEvents_subject",
                AMQPValue::LongString(LongString::from(vec![0xff, 0xfe])),
            ),
            b"{}".to_vec(),
        ),
        (
            "not_cloudevent",
            with_header(
                "cloudEvents_id",
                AMQPValue::FieldTable(FieldTable::default()),
            ),
            b"{}".to_vec(),
        ),
        (
            "invalid_data",
            binary_properties("cloudEvents_", &attributes, Some("application/xml")),
            b"<to user=\"ivan\"/>".to_vec(),
        ),
        (
            "invalid_json",
            structured_properties()
                .with_content_type("application/cloudevents+json; charset=utf-8".into()),
            Vec::new(),
        ),
        (
            "not_cloudevent",
            BasicProperties::default().with_content_type("application/octet-stream".into()),
            vec![0u8; 4096],
        ),
    ];
    for (_, properties, body) in &cases {
        app.publish_raw(send, properties.clone(), body).await;
    }
    app.send_text("ivan", "still here").await;
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    assert_eq!(received[0].text(), "still here");

    let letters = app.dead_letters(cases.len()).await;
    assert_dead_letter_kinds(&letters, cases.iter().map(|(kind, ..)| *kind));
    for letter in &letters {
        assert!(
            letter.error.len() < 500,
            "a bounded sentence, not the input: {}",
            letter.kind
        );
    }
    let peak = app.process().peak_rss_mb();
    assert!(peak < 200.0, "the worker peaked at {peak:.1} MB");
    eprintln!(
        "hostile input: {} dead-lettered, worker peak RSS {peak:.1} MB",
        letters.len()
    );
    app.stop().await;
}

/// `n` distinct CJK characters (3 bytes each), which PostgreSQL cannot
/// compress into an index entry as it would one character repeated.
fn cjk(n: u32) -> String {
    (0..n)
        .filter_map(|i| char::from_u32(0x4E00 + (i * 7919) % 20_000))
        .collect()
}

fn structured_event(id: &str, event_type: &str, data: Value) -> Vec<u8> {
    json!({"specversion": "1.0", "id": id, "source": "/tests", "type": event_type, "data": data})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_over_their_byte_bounds_are_dead_lettered_and_hold_no_batch_hostage() {
    let app = TestApp::spawn().await;
    let nina = app.browser();
    app.register(&nina, "nina", &[]).await;
    let send = "pushq.notification.send";
    let register = "pushq.subscription.register";
    // 10,000 characters that do not compress: the deliveries index holds
    // entries of about 2,700 bytes at most.
    let long_id: String = std::iter::repeat_with(|| uuid::Uuid::new_v4().simple().to_string())
        .take(313)
        .collect::<String>()[..10_000]
        .to_owned();
    // 2,000 characters, nearly all CJK: under 2,048 characters, over 5,800 bytes.
    let base = nina.endpoint.chars().count() as u32;
    let long_endpoint = format!("{}{}", nina.endpoint, cjk(2000 - base));
    assert!(long_endpoint.chars().count() == 2000 && long_endpoint.len() > 5800);
    let keys = nina.to_json()["keys"].clone();
    let one_off = json!({"endpoint": long_endpoint, "keys": keys});
    let olga = app.browser();

    let hostile: Vec<(&str, BasicProperties, Vec<u8>, &str)> = vec![
        (
            send,
            structured_properties(),
            structured_event(&long_id, send, json!({"to": {"user": "nina"}})),
            "attribute `id`",
        ),
        (
            send,
            binary_properties(
                "cloudEvents_",
                &[
                    ("specversion", "1.0"),
                    ("id", &long_id),
                    ("source", "/tests"),
                    ("type", send),
                ],
                Some("application/json"),
            ),
            json!({"to": {"user": "nina"}}).to_string().into_bytes(),
            "attribute `id`",
        ),
        (
            send,
            structured_properties(),
            structured_event("one-off", send, json!({"to": {"subscription": one_off}})),
            "endpoint",
        ),
        (
            register,
            structured_properties(),
            structured_event(
                "register",
                register,
                json!({"user": "nina", "subscription": one_off}),
            ),
            "endpoint",
        ),
    ];
    for (routing_key, properties, body, _) in &hostile {
        app.publish_raw(routing_key, properties.clone(), body).await;
    }
    // Published right behind them, so they share a batch.
    app.send_text("nina", "still delivered").await;
    app.producer
        .register(&SubscriptionRegister {
            user: "olga".into(),
            subscription: serde_json::from_value(olga.to_json()).expect("subscription"),
            tags: Vec::new(),
        })
        .await
        .expect("published");

    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("the good send is delivered");
    assert_eq!(received[0].text(), "still delivered");
    app.wait_until("the good registration is stored", || {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM subscriptions WHERE user_id = 'olga'",
            )
            .fetch_one(&pool)
            .await
            .is_ok_and(|n| n == 1)
        }
    })
    .await;
    let letters = app.dead_letters(hostile.len()).await;
    assert_dead_letter_kinds(&letters, hostile.iter().map(|_| "field_too_long"));
    let mut named: Vec<&str> = hostile.iter().map(|(.., field)| *field).collect();
    for letter in &letters {
        assert!(letter.error.contains("bytes"), "{}", letter.error);
        assert!(letter.error.len() < 200, "{}", letter.error);
        let field = named
            .iter()
            .position(|field| letter.error.starts_with(field))
            .unwrap_or_else(|| panic!("names no expected field: {}", letter.error));
        named.remove(field);
    }
    assert_eq!(app.subscription_count().await, 2, "nina and olga only");
    assert_eq!(
        app.fake.received().len(),
        1,
        "nothing went to the long endpoint"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_field_and_never_the_value_found_there() {
    let app = TestApp::spawn_process(&[("RUST_LOG", "debug")]).await;
    let browser = app.browser();
    app.register(&browser, "pia", &[]).await;
    let secret = "SECRET-7f3a91";
    let send = "pushq.notification.send";
    let cases = [
        (
            json!({"to": {"subscription": format!("https://secret-endpoint.example/{secret}")}}),
            "data.to.subscription: invalid type, expected struct PushSubscription",
        ),
        (
            json!({"to": {"user": "pia"}, "urgency": secret}),
            "data.urgency: unknown variant, expected one of `very-low`, `low`, `normal`, `high`",
        ),
        (
            json!({"to": {"subscription": {"endpoint": browser.endpoint, "keys": {"p256dh": [secret], "auth": browser.auth}}}}),
            "data.to.subscription.keys.p256dh: invalid type, expected a string",
        ),
    ];
    for (data, _) in &cases {
        app.publish_raw(
            send,
            structured_properties(),
            &structured_event(&new_id(), send, data.clone()),
        )
        .await;
    }
    app.send_text("pia", "after them").await;
    app.fake
        .wait_for_received(1, WAIT)
        .await
        .expect("the good send is delivered");
    let letters = app.dead_letters(cases.len()).await;
    let mut errors: Vec<&str> = letters.iter().map(|letter| letter.error.as_str()).collect();
    errors.sort_unstable();
    let mut expected: Vec<&str> = cases.iter().map(|(_, sentence)| *sentence).collect();
    expected.sort_unstable();
    assert_eq!(errors, expected);
    for letter in &letters {
        assert_eq!(letter.kind, "invalid_data");
        assert!(
            String::from_utf8_lossy(&letter.body).contains(secret),
            "the dead letter keeps its body"
        );
    }
    let logs = app.process().log_lines();
    assert!(!logs.is_empty());
    let leaked: Vec<&String> = logs.iter().filter(|line| line.contains(secret)).collect();
    assert!(leaked.is_empty(), "logged: {leaked:?}");
    app.stop().await;
}
