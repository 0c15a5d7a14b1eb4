//! Messages as the tests build and read them: AMQP properties for either
//! content mode, and dead letters.

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::{TestApp, WAIT};

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

impl TestApp {
    /// Waits for `count` dead letters and returns (kind, error, body, headers).
    pub async fn dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        let channel = self.raw_connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                self.topology.dead_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume dead letters");
        let mut letters = Vec::new();
        while letters.len() < count {
            let delivery = tokio::time::timeout(WAIT, consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {count} dead letters arrived", letters.len())
                })
                .expect("consumer open")
                .expect("delivery");
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let text = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            letters.push(DeadLetter {
                kind: text("x-pushq-error-kind"),
                error: text("x-pushq-error"),
                body: delivery.data.clone(),
                headers: headers.clone(),
                expiration: delivery
                    .properties
                    .expiration()
                    .as_ref()
                    .map(|expiration| expiration.to_string()),
            });
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let _ = channel.close(200, "done".into()).await;
        letters
    }
}
