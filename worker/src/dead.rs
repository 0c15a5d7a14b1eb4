//! Operators' tools for the dead-letter queue: what is in it, and sending it
//! back where it came from. A letter is acked only after its replay is
//! confirmed, so an interrupted replay loses nothing (at worst one letter is
//! replayed twice, which the deliveries table absorbs).

use std::collections::BTreeMap;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection};
use pushq_schemas::{InvalidKind, Topology};

use crate::broker::publisher::{
    ERROR_HEADER, ERROR_KIND_HEADER, ORIGIN_EXCHANGE_HEADER, ORIGIN_ROUTING_KEY_HEADER, Publisher,
    header_str,
};
use crate::broker::{self, BrokerError, amqp_error};
use crate::dependency::Patience;
use crate::step::{REPLAY_HEADER, UNTRUSTED_HEADER};

/// Letters of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KindSummary {
    pub count: usize,
    /// The reason sentence of the first letter of this kind.
    pub sample: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeadLetterList {
    /// Messages in the queue when it was read.
    pub in_queue: u32,
    /// How many were read (at most the limit).
    pub read: usize,
    pub by_kind: BTreeMap<String, KindSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayReport {
    pub replayed: usize,
    /// Letters of other kinds, left in place.
    pub skipped: usize,
    /// Letters with no recorded origin, left in place.
    pub without_origin: usize,
}

/// Headers the broker adds when it dead-letters a message itself (its
/// delivery limit, for one): `x-death` and its summaries. A replay drops
/// them, as it drops ours, so the message starts afresh.
const BROKER_DEATH_HEADERS: [&str; 8] = [
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    "x-delivery-count",
];

/// Why the broker dead-letters a message itself (RabbitMQ's `x-death` reasons).
pub const BROKER_REASONS: [&str; 4] = ["delivery_limit", "rejected", "expired", "maxlen"];
/// The kind of a letter that says neither ours nor the broker's.
pub const UNKNOWN_KIND: &str = "unknown";

/// Every kind a letter can have, as `dead list` shows them and `dead replay
/// --kind` accepts them.
pub fn kinds() -> Vec<&'static str> {
    InvalidKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .chain(BROKER_REASONS)
        .chain([UNKNOWN_KIND])
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    /// No worker has declared this topology on the broker (or the prefix is
    /// mistyped): there is no dead-letter queue to read.
    #[error(
        "the topology {prefix:?} does not exist yet on this broker (no {queue} queue): start a worker with it, or check PUSHQ_TOPOLOGY_PREFIX"
    )]
    NoTopology { prefix: String, queue: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// A letter's kind: ours (`x-pushq-error-kind`), or for one the broker
/// dead-lettered, its reason (`delivery_limit`, `rejected`, `expired`,
/// `maxlen`), which `dead replay --kind` filters on alike.
fn letter_kind(headers: Option<&FieldTable>, topology: &Topology) -> String {
    if let Some(death) = broker_death(headers, topology) {
        return death.reason;
    }
    header_str(headers, ERROR_KIND_HEADER).unwrap_or_else(|| UNKNOWN_KIND.into())
}

/// Where a letter goes back to. One the worker dead-lettered carries where
/// it came from in our headers (the worker sets them, over any a producer
/// sent). One the broker dead-lettered out of our queues carries headers
/// nobody checked: it goes back to the queue it died in, marked untrusted,
/// so the worker treats it as a producer's message whatever its headers
/// and its `x-death` claim.
fn letter_origin(headers: Option<&FieldTable>, topology: &Topology) -> Option<Origin> {
    if let Some(death) = broker_death(headers, topology) {
        return Some(Origin {
            exchange: String::new(),
            routing_key: death.queue,
            untrusted: true,
        });
    }
    match (
        header_str(headers, ORIGIN_EXCHANGE_HEADER),
        header_str(headers, ORIGIN_ROUTING_KEY_HEADER),
    ) {
        (Some(exchange), Some(routing_key)) => Some(Origin {
            exchange,
            routing_key,
            untrusted: false,
        }),
        _ => None,
    }
}

struct Origin {
    exchange: String,
    routing_key: String,
    untrusted: bool,
}

/// The queue a message died in and why, when the broker dead-lettered it
/// out of one of our queues. The newest `x-death` entry is the broker's own
/// (it matches entries by queue and reason, so a forged entry can only
/// name the real queue); a message that lists one of our queues anywhere
/// is taken as broker-made, the safe side.
struct BrokerDeath {
    queue: String,
    reason: String,
}

fn broker_death(headers: Option<&FieldTable>, topology: &Topology) -> Option<BrokerDeath> {
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let ours = [
        topology.jobs_queue(),
        topology.due_queue(),
        topology.subscriptions_queue(),
        topology.feedback_queue(),
    ];
    deaths.as_slice().iter().find_map(|death| {
        let AMQPValue::FieldTable(death) = death else {
            return None;
        };
        let queue = header_str(Some(death), "queue")?;
        ours.contains(&queue).then(|| BrokerDeath {
            queue,
            reason: header_str(Some(death), "reason").unwrap_or_else(|| UNKNOWN_KIND.into()),
        })
    })
}

/// A passive declare on a channel of its own: when the queue is missing the
/// broker closes that channel (404), which would otherwise end the listing.
async fn message_count(connection: &Connection, topology: &Topology) -> Result<u32, DeadError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a channel"))?;
    let queue = channel
        .queue_declare(
            topology.dead_queue().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|err| match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == NOT_FOUND => {
                DeadError::NoTopology {
                    prefix: topology.prefix().to_owned(),
                    queue: topology.dead_queue(),
                }
            }
            _ => amqp_error("inspecting the dead-letter queue")(err).into(),
        })?;
    let _ = channel.close(200, "done".into()).await;
    Ok(queue.message_count())
}

/// AMQP's reply code for a missing queue or exchange.
const NOT_FOUND: u16 = 404;

/// The next letter, held unacked: it goes back to the queue unless acked
/// before the channel closes.
async fn next_letter(
    channel: &lapin::Channel,
    topology: &Topology,
) -> Result<Option<lapin::message::BasicGetMessage>, BrokerError> {
    channel
        .basic_get(
            topology.dead_queue().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .map_err(amqp_error("reading a dead letter"))
}

/// Reads up to `limit` letters without removing any: they are held unacked
/// and go back to the queue when the channel closes.
pub async fn list(
    amqp_url: &str,
    topology: &Topology,
    limit: usize,
) -> Result<DeadLetterList, DeadError> {
    let connection = broker::reach(amqp_url, "pushq-dead-list", Patience::ONCE)
        .await
        .map_err(BrokerError::Unavailable)?;
    let in_queue = message_count(&connection, topology).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a channel"))?;
    let mut list = DeadLetterList {
        in_queue,
        ..DeadLetterList::default()
    };
    while list.read < limit.min(in_queue as usize) {
        let Some(message) = next_letter(&channel, topology).await? else {
            break;
        };
        list.read += 1;
        let headers = message.delivery.properties.headers().as_ref();
        let summary = list
            .by_kind
            .entry(letter_kind(headers, topology))
            .or_default();
        summary.count += 1;
        if summary.sample.is_empty() {
            summary.sample = header_str(headers, ERROR_HEADER).unwrap_or_else(|| {
                header_str(headers, "x-first-death-queue")
                    .map(|queue| format!("dead-lettered by the broker from {queue}"))
                    .unwrap_or_default()
            });
        }
    }
    let _ = channel.close(200, "listing done".into()).await;
    let _ = connection.close(200, "listing done".into()).await;
    Ok(list)
}

/// Sends letters (of `kind`, or all) back to the exchange and routing key
/// they first came through, at most `limit` of them.
pub async fn replay(
    amqp_url: &str,
    topology: &Topology,
    kind: Option<&str>,
    limit: usize,
) -> Result<ReplayReport, DeadError> {
    let connection = broker::reach(amqp_url, "pushq-dead-replay", Patience::ONCE)
        .await
        .map_err(BrokerError::Unavailable)?;
    let in_queue = message_count(&connection, topology).await?;
    let publisher = Publisher::open(&connection, topology.clone()).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a channel"))?;
    let mut report = ReplayReport::default();
    for _ in 0..in_queue {
        if report.replayed >= limit {
            break;
        }
        let Some(message) = next_letter(&channel, topology).await? else {
            break;
        };
        let delivery = message.delivery;
        let headers = delivery.properties.headers().as_ref();
        if kind.is_some_and(|kind| letter_kind(headers, topology) != kind) {
            report.skipped += 1;
            continue;
        }
        let Some(origin) = letter_origin(headers, topology) else {
            report.without_origin += 1;
            continue;
        };
        publisher
            .publish(
                &origin.exchange,
                &origin.routing_key,
                &delivery.data,
                replay_properties(&delivery.properties, origin.untrusted),
            )
            .await?;
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(amqp_error("acking a replayed letter"))?;
        report.replayed += 1;
    }
    // Letters left unacked (skipped) go back to the queue.
    let _ = channel.close(200, "replay done".into()).await;
    let _ = connection.close(200, "replay done".into()).await;
    Ok(report)
}

/// The original properties, without the dead-letter headers, marked as a
/// replay (and as untrusted for one the broker dead-lettered).
fn replay_properties(properties: &BasicProperties, untrusted: bool) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(original) = properties.headers() {
        for (name, value) in original {
            let ours = [
                ERROR_HEADER,
                ERROR_KIND_HEADER,
                ORIGIN_EXCHANGE_HEADER,
                ORIGIN_ROUTING_KEY_HEADER,
            ];
            if !ours.contains(&name.as_str()) && !BROKER_DEATH_HEADERS.contains(&name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    headers.insert(
        ShortString::from(REPLAY_HEADER),
        AMQPValue::LongString(LongString::from("true")),
    );
    if untrusted {
        headers.insert(
            ShortString::from(UNTRUSTED_HEADER),
            AMQPValue::LongString(LongString::from("true")),
        );
    }
    properties.clone().with_headers(headers)
}
