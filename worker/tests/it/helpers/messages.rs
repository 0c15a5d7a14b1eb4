//! Messages as the tests build and read them: AMQP properties for either
//! content mode, and dead letters.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Asserts that the letters' kinds are exactly `expected` in any order, each
/// with a sentence saying why.
pub fn assert_dead_letter_kinds(
    letters: &[DeadLetter],
    expected: impl IntoIterator<Item = &'static str>,
) {
    let mut kinds: Vec<&str> = letters.iter().map(|letter| letter.kind.as_str()).collect();
    kinds.sort_unstable();
    let mut expected: Vec<&str> = expected.into_iter().collect();
    expected.sort_unstable();
    assert_eq!(kinds, expected);
    for letter in letters {
        assert!(!letter.error.is_empty(), "{} has no sentence", letter.kind);
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub kind: String,
    pub error: String,
    pub body: Vec<u8>,
    pub headers: FieldTable,
    /// The AMQP `expiration` property: a dead letter must never carry one.
    pub expiration: Option<String>,
}

/// Binary-mode properties: attributes as `{prefix}{name}` headers.
pub fn binary_properties(
    prefix: &str,
    attributes: &[(&str, &str)],
    content_type: Option<&str>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in attributes {
        headers.insert(
            ShortString::from(format!("{prefix}{name}")),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    let properties = BasicProperties::default().with_headers(headers);
    match content_type {
        Some(content_type) => properties.with_content_type(content_type.into()),
        None => properties,
    }
}

pub fn structured_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/cloudevents+json".into())
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
