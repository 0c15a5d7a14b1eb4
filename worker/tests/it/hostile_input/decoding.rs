//! Decoding and validation of any message end in an event or a reason,
//! never a panic (a property test over every AMQP header type, content types
//! and JSON shapes; no broker needed).

use lapin::BasicProperties;
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use proptest::collection::vec;
use proptest::prelude::*;
use pushq_producer::Target;
use pushq_schemas::CloudEvent;
use pushq_schemas::data::ProducerEvent;
use pushq_worker::broker::decode::decode;
use pushq_worker::push::EndpointPolicy;
use serde_json::{Value, json};

/// Every AMQP field type, nested a few levels.
fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        vec(any::<u8>(), 0..48).prop_map(|bytes| AMQPValue::LongString(LongString::from(bytes))),
        "[ -~]{0,40}".prop_map(|text| AMQPValue::ShortString(ShortString::from(text))),
        vec(any::<u8>(), 0..32).prop_map(|bytes| AMQPValue::ByteArray(ByteArray::from(bytes))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4)
                .prop_map(|values| AMQPValue::FieldArray(FieldArray::from(values))),
            vec(("[a-z]{1,8}", inner), 0..4).prop_map(|entries| {
                let mut table = FieldTable::default();
                for (name, value) in entries {
                    table.insert(ShortString::from(name), value);
                }
                AMQPValue::FieldTable(table)
            }),
        ]
    })
}

/// Names that the decoder reads, under both prefixes, and some it ignores.
fn header_name() -> impl Strategy<Value = String> {
    let attribute = prop_oneof![
        Just("specversion"),
        Just("id"),
        Just("source"),
        Just("type"),
        Just("time"),
        Just("subject"),
        Just("traceparent"),
        Just("datacontenttype"),
    ];
    prop_oneof![
        (
            prop_oneof![Just("cloudEvents_"), Just("cloudEvents:")],
            attribute
        )
            .prop_map(|(prefix, name)| format!("{prefix}{name}")),
        "[A-Za-z_:-]{1,20}",
    ]
}

/// JSON whose keys are often the contract's own, so validation goes deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|x| json!(x)),
        "\\PC{0,24}".prop_map(Value::String),
        Just(json!("https://fcm.googleapis.com/fcm/send/x")),
        Just(json!(
            "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
        )),
    ];
    let key = prop_oneof![
        Just("to".to_owned()),
        Just("user".to_owned()),
        Just("tag".to_owned()),
        Just("endpoint".to_owned()),
        Just("subscription".to_owned()),
        Just("keys".to_owned()),
        Just("p256dh".to_owned()),
        Just("auth".to_owned()),
        Just("payload".to_owned()),
        Just("ttl".to_owned()),
        Just("urgency".to_owned()),
        Just("topic".to_owned()),
        Just("tags".to_owned()),
        Just("expirationTime".to_owned()),
        "[a-z]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key.clone(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let event_type = prop_oneof![
        Just("pushq.notification.send"),
        Just("pushq.subscription.register"),
        Just("pushq.subscription.unregister"),
        Just("pushq.internal.retry"),
        Just("pushq.internal.chunk"),
        "[a-z.]{0,20}".prop_map(|t| Box::leak(t.into_boxed_str()) as &str),
    ];
    prop_oneof![
        vec(any::<u8>(), 0..512),
        json_value().prop_map(|value| value.to_string().into_bytes()),
        (event_type, json_value()).prop_map(|(event_type, data)| {
            json!({"specversion": "1.0", "id": "p", "source": "/p", "type": event_type, "data": data})
                .to_string()
                .into_bytes()
        }),
    ]
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/cloudevents+json".to_owned())),
        Just(Some(
            "application/cloudevents+json; charset=utf-8".to_owned()
        )),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ];
    (content_type, vec((header_name(), amqp_value()), 0..8)).prop_map(|(content_type, headers)| {
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(ShortString::from(name), value);
        }
        let properties = BasicProperties::default().with_headers(table);
        match content_type {
            Some(content_type) => properties.with_content_type(content_type.into()),
            None => properties,
        }
    })
}

proptest! {
    // Bounded so that the suite stays quick; `cargo fuzz` (fuzz/) goes further.
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_message_decodes_to_an_event_or_a_reason(properties in properties(), body in body()) {
        let policy = EndpointPolicy::default();
        match decode(&properties, &body) {
            Ok(event) => {
                // What the worker re-publishes (retries, dead letters) reads back.
                prop_assert!(CloudEvent::from_structured(&event.to_structured_json()).is_ok());
                match ProducerEvent::parse(&event.event_type, event.data.as_ref()) {
                    Ok(ProducerEvent::Send(send)) => {
                        if let Target::Subscription(subscription) = &send.to {
                            let _ = policy.check(&subscription.endpoint);
                        }
                        prop_assert!(send.payload_bytes().len() <= pushq_schemas::payload::MAX_PLAINTEXT_BYTES);
                    }
                    Ok(ProducerEvent::Register(register)) => {
                        let _ = policy.check(&register.subscription.endpoint);
                    }
                    Ok(ProducerEvent::Unregister(_)) => {}
                    Err(invalid) => prop_assert!(!invalid.message.is_empty()),
                }
            }
            Err(invalid) => prop_assert!(!invalid.message.is_empty()),
        }
    }
}
