use serde_json::json;

use super::*;

const P256DH: &str =
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

fn refusal(event_type: &str, data: Value) -> InvalidEvent {
    ProducerEvent::parse(event_type, Some(&data)).expect_err("refused")
}

fn register(user: &str, endpoint: &str, tags: &[&str]) -> Value {
    json!({"user": user, "tags": tags, "subscription": {"endpoint": endpoint,
        "keys": {"p256dh": P256DH, "auth": AUTH}}})
}

/// `n` distinct CJK characters (3 bytes each), as a real path might hold.
fn cjk(n: u32) -> String {
    (0..n)
        .filter_map(|i| char::from_u32(0x4E00 + (i * 7919) % 20_000))
        .collect()
}

#[test]
fn lengths_are_bounded_in_bytes_not_characters() {
    let register_type = event_types::SUBSCRIPTION_REGISTER;
    let fcm = "https://fcm.googleapis.com/fcm/send/";
    // 2,000 CJK characters pass a 2,048-character limit but are 6,000 bytes.
    let long_endpoint = format!("{fcm}{}", cjk(2000));
    assert!(long_endpoint.chars().count() < 2048);
    for (why, data) in [
        ("endpoint", register("u", &long_endpoint, &[])),
        ("user", register(&cjk(86), &format!("{fcm}x"), &[])),
        ("tag", register("u", &format!("{fcm}x"), &[&cjk(22)])),
    ] {
        let refused = refusal(register_type, data);
        assert_eq!(refused.kind, InvalidKind::FieldTooLong, "{why}");
        assert!(refused.message.contains("bytes"), "{why}: {refused}");
    }
    let at_bound = format!("{fcm}{}", "x".repeat(MAX_ENDPOINT_BYTES - fcm.len()));
    assert!(ProducerEvent::parse(register_type, Some(&register("u", &at_bound, &[]))).is_ok());
    assert!(
        ProducerEvent::parse(register_type, Some(&register(&cjk(85), &at_bound, &[]))).is_ok(),
        "255 bytes of user"
    );

    let send = event_types::NOTIFICATION_SEND;
    let mut padded_key = register("u", &format!("{fcm}x"), &[]);
    padded_key["subscription"]["keys"]["p256dh"] = json!(format!("{P256DH}{}", "=".repeat(5000)));
    assert_eq!(
        refusal(
            send,
            json!({"to": {"subscription": padded_key["subscription"]}})
        )
        .kind,
        InvalidKind::FieldTooLong
    );
    for to in [
        json!({"endpoint": long_endpoint}),
        json!({"user": cjk(86)}),
        json!({"tag": cjk(22)}),
    ] {
        assert_eq!(
            refusal(send, json!({"to": to})).kind,
            InvalidKind::FieldTooLong
        );
    }
    assert_eq!(
        refusal(send, json!({"to": {"user": "u"}, "topic": "t".repeat(33)})).kind,
        InvalidKind::FieldTooLong
    );
    let unregister = event_types::SUBSCRIPTION_UNREGISTER;
    assert_eq!(
        refusal(unregister, json!({"endpoint": long_endpoint})).kind,
        InvalidKind::FieldTooLong
    );
    assert_eq!(
        refusal(unregister, json!({"user": cjk(86)})).kind,
        InvalidKind::FieldTooLong
    );
}

#[test]
fn what_postgresql_cannot_store_is_invalid() {
    let fcm = "https://fcm.googleapis.com/fcm/send/";
    for data in [
        register("a\0b", &format!("{fcm}x"), &[]),
        register("u", &format!("{fcm}x\0y"), &[]),
        register("u", &format!("{fcm}x"), &["a\0"]),
    ] {
        let refused = refusal(event_types::SUBSCRIPTION_REGISTER, data);
        assert_eq!(refused.kind, InvalidKind::InvalidData);
        assert!(refused.message.contains("NUL"), "{refused}");
    }
}

#[test]
fn serde_refusals_name_the_field_and_never_echo_its_value() {
    let secret = "https://secret-endpoint.example/SECRET-TOKEN-7f3a";
    let send = event_types::NOTIFICATION_SEND;
    for (data, expected) in [
        (
            json!({"to": {"subscription": secret}}),
            "data.to.subscription: invalid type, expected struct PushSubscription",
        ),
        (
            json!({"to": {"subscription": {"endpoint": [secret], "keys": {"p256dh": P256DH, "auth": AUTH}}}}),
            "data.to.subscription.endpoint: invalid type, expected a string",
        ),
        (
            json!({"to": {"subscription": {"endpoint": "https://fcm.googleapis.com/x", "keys": secret}}}),
            "data.to.subscription.keys: invalid type, expected struct SubscriptionKeys",
        ),
        (
            json!({"to": {"user": "u"}, "urgency": secret}),
            "data.urgency: unknown variant, expected one of `very-low`, `low`, `normal`, `high`",
        ),
        (
            json!({"to": {"user": "u"}, "ttl": secret}),
            "data.ttl: invalid type, expected u32",
        ),
        (
            json!({"to": {"user": "u"}, "ttl": -1}),
            "data.ttl: invalid value, expected u32",
        ),
        (
            json!({"to": {"user": "u"}, "topic": {"t": secret}}),
            "data.topic: invalid type, expected a string",
        ),
    ] {
        let refused = refusal(send, data);
        assert_eq!(refused.kind, InvalidKind::InvalidData);
        assert_eq!(refused.message, expected);
        assert!(!refused.message.contains("SECRET"), "{refused}");
    }
    let register = event_types::SUBSCRIPTION_REGISTER;
    for (data, expected) in [
        (
            json!({"user": "u", "subscription": {"endpoint": "https://fcm.googleapis.com/x",
                "keys": {"p256dh": P256DH, "auth": AUTH}}, "tags": ["a", secret.len()]}),
            "data.tags[1]: invalid type, expected a string",
        ),
        (json!({"user": "u"}), "data: missing field `subscription`"),
        (
            json!({"user": "u", "subscription": {"endpoint": "https://fcm.googleapis.com/x",
                "keys": {"p256dh": P256DH, "auth": AUTH}}, "colour": secret}),
            "data.colour: unknown field, expected one of `user`, `subscription`, `tags`",
        ),
    ] {
        let refused = refusal(register, data);
        assert_eq!(refused.message, expected);
    }
}
