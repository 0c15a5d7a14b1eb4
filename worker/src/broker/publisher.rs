//! Confirmed publishing on a channel of its own: a message counts as handed
//! over only once the broker has confirmed it and found a queue for it.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use pushq_schemas::delays::{NOT_BEFORE_HEADER, next_hop};
use pushq_schemas::{InvalidEvent, Topology};

use super::{BrokerError, amqp_error};

pub const ERROR_HEADER: &str = "x-pushq-error";
pub const ERROR_KIND_HEADER: &str = "x-pushq-error-kind";
/// When a worker first received a message it passes on (epoch milliseconds):
/// the TTL clock of an event without `time` survives the hand-over.
pub const FIRST_RECEIVED_HEADER: &str = "x-pushq-first-received";
/// Where a dead letter was first published, so a replay sends it back there.
pub const ORIGIN_EXCHANGE_HEADER: &str = "x-pushq-exchange";
pub const ORIGIN_ROUTING_KEY_HEADER: &str = "x-pushq-routing-key";

/// The exchange and routing key a message arrived through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub exchange: String,
    pub routing_key: String,
}

#[derive(Debug, Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    pub async fn open(connection: &Connection, topology: Topology) -> Result<Self, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp_error("opening the publishing channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_error("enabling publisher confirms"))?;
        Ok(Self { channel, topology })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes persistent and `mandatory` (a message no queue takes is an
    /// error instead of a silent drop), and waits for the confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .map_err(amqp_error("publishing"))?
            .await
            .map_err(amqp_error("awaiting a publisher confirm"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(BrokerError::Nacked {
                routing_key: routing_key.to_owned(),
            }),
        }
    }

    /// Publishes several messages to one exchange (not `mandatory`), sending
    /// them all before waiting for their confirms, so a batch costs about one
    /// round trip instead of one each. Returns how many the broker nacked (a
    /// queue bound to the exchange refused them, e.g. full with
    /// `x-overflow: reject-publish`); the other queues took them.
    pub async fn publish_batch(
        &self,
        exchange: &str,
        messages: Vec<(String, Vec<u8>, BasicProperties)>,
    ) -> Result<usize, BrokerError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for (routing_key, body, properties) in messages {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.with_delivery_mode(2),
                )
                .await
                .map_err(amqp_error("publishing"))?;
            confirms.push(confirm);
        }
        let mut nacked = 0;
        for confirm in confirms {
            match confirm
                .await
                .map_err(amqp_error("awaiting a publisher confirm"))?
            {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) | Confirmation::NotRequested => nacked += 1,
            }
        }
        Ok(nacked)
    }

    /// Hands a message to the delay queues: it comes back to the due queue
    /// at `not_before_ms` (epoch milliseconds), hop by hop, or now when it is
    /// already due.
    pub async fn delay_until(
        &self,
        body: &[u8],
        properties: BasicProperties,
        not_before_ms: u64,
    ) -> Result<(), BrokerError> {
        let now_ms = epoch_ms_now();
        let mut headers = properties.headers().clone().unwrap_or_default();
        if !headers.contains_key(FIRST_RECEIVED_HEADER) {
            headers.insert(
                ShortString::from(FIRST_RECEIVED_HEADER),
                AMQPValue::LongLongInt(i64::try_from(now_ms).unwrap_or(i64::MAX)),
            );
        }
        let properties = republished(&properties).with_headers(headers.clone());
        let remaining = not_before_ms.saturating_sub(now_ms);
        let Some(hop) = next_hop(remaining) else {
            return self
                .publish("", &self.topology.due_queue(), body, properties)
                .await;
        };
        headers.insert(
            ShortString::from(NOT_BEFORE_HEADER),
            AMQPValue::LongLongInt(i64::try_from(not_before_ms).unwrap_or(i64::MAX)),
        );
        self.publish(
            "",
            &self.topology.delay_queue(hop),
            body,
            properties.with_headers(headers),
        )
        .await
    }

    /// Copies a message to the dead-letter queue with its original body and
    /// headers plus the reason and where it came from, so an operator can
    /// read, fix and replay it.
    pub async fn dead_letter(
        &self,
        origin: &Origin,
        properties: &BasicProperties,
        body: &[u8],
        reason: &InvalidEvent,
    ) -> Result<(), BrokerError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(ORIGIN_EXCHANGE_HEADER),
            AMQPValue::LongString(LongString::from(origin.exchange.as_str())),
        );
        headers.insert(
            ShortString::from(ORIGIN_ROUTING_KEY_HEADER),
            AMQPValue::LongString(LongString::from(origin.routing_key.as_str())),
        );
        headers.insert(
            ShortString::from(ERROR_HEADER),
            AMQPValue::LongString(LongString::from(reason.message.as_str())),
        );
        headers.insert(
            ShortString::from(ERROR_KIND_HEADER),
            AMQPValue::LongString(LongString::from(reason.kind.as_str())),
        );
        let properties = republished(properties).with_headers(headers);
        self.publish("", &self.topology.dead_queue(), body, properties)
            .await
    }
}

/// A message's properties as the worker publishes it again: without its
/// `expiration` (a dead letter must not expire out of `pushq.dead`, and a
/// delayed message must not leave its delay queue early) and without its
/// `user-id` (the broker checks it against the publishing connection's user,
/// which is the worker's, not the producer's).
fn republished(properties: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(value) = properties.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = properties.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = properties.headers() {
        copy = copy.with_headers(value.clone());
    }
    if let Some(value) = properties.priority() {
        copy = copy.with_priority(*value);
    }
    if let Some(value) = properties.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = properties.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = properties.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = properties.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = properties.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = properties.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    copy
}

/// When a worker first received this message, if one passed it on before.
pub fn first_received_ms(properties: &BasicProperties) -> Option<u64> {
    header_ms(properties, FIRST_RECEIVED_HEADER)
}

/// Milliseconds since the Unix epoch, as the delay header counts them.
pub fn epoch_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// When a delayed message is due, from its [`NOT_BEFORE_HEADER`].
pub fn not_before_ms(properties: &BasicProperties) -> Option<u64> {
    header_ms(properties, NOT_BEFORE_HEADER)
}

fn header_ms(properties: &BasicProperties, name: &str) -> Option<u64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(ms) => u64::try_from(*ms).ok(),
        AMQPValue::LongUInt(ms) => Some(u64::from(*ms)),
        AMQPValue::LongInt(ms) => u64::try_from(*ms).ok(),
        AMQPValue::Timestamp(ms) => Some(*ms),
        _ => None,
    }
}

/// A header's text, whatever string type it arrived as.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}
