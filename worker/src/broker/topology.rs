//! Declares the exchanges, queues and bindings of DESIGN §2.1.1. Every
//! declaration is idempotent with fixed arguments, so any number of replicas
//! (and producers) may declare at once.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use pushq_schemas::delays::DELAY_QUEUE_MS;
use pushq_schemas::{Topology, event_types};

use super::{BrokerError, amqp_error};

/// The result type a feedback queue listens for.
pub const GONE_ROUTING_KEY: &str = "pushq.subscription.gone";

/// How often the broker hands one message to a consumer before it gives up
/// and dead-letters it (`x-delivery-limit`). The worker hands back nothing
/// by requeueing (a message waiting for a dependency waits in the delay
/// queues), so only crashes, broker blips and shutdowns count: a message
/// that kills every worker that takes it stops at this many. Set explicitly,
/// as RabbitMQ 4 would otherwise apply its own default of 20.
pub const DELIVERY_LIMIT: i64 = 20;

/// The dead-letter queue's: `dead list` reads letters and hands them back
/// unacked, which counts as a delivery, and nothing dead-letters out of it.
const DEAD_QUEUE_DELIVERY_LIMIT: i64 = 1_000_000;

fn quorum_arguments(dead_letter_queue: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    // Quorum queues replicate and survive a node loss; they also track
    // redeliveries.
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(if dead_letter_queue.is_some() {
            DELIVERY_LIMIT
        } else {
            DEAD_QUEUE_DELIVERY_LIMIT
        }),
    );
    if let Some(dead) = dead_letter_queue {
        // A message the broker gives up on goes to the dead-letter queue.
        // At most once, the broker's default: at-least-once dead-lettering
        // (with `reject-publish`) left messages stranded in the source
        // queue, neither ready nor in `pushq.dead`, on RabbitMQ 3.10 in an
        // outside test; a letter is lost only if `pushq.dead` refuses it.
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from("")),
        );
        arguments.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(dead)),
        );
    }
    arguments
}

/// A delay queue: messages wait `delay_ms`, then the broker dead-letters them
/// to the due queue, where the worker sends each on to its next hop until it
/// is due (pushq_schemas::delays). Every message in one
/// queue has the same TTL, so they expire in order and none waits behind a
/// longer one. Classic and durable with persistent messages: they survive a
/// broker restart, and dead-lettering from a classic queue is not the
/// at-most-once kind quorum queues default to.
fn retry_arguments(topology: &Topology, delay_ms: u64) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(i64::try_from(delay_ms).unwrap_or(i64::MAX)),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(topology.due_queue())),
    );
    arguments
}

/// Declares a queue on `channel`. A queue that exists with other arguments
/// (declared by an older pushq, before the delivery limit) is kept as it
/// is, with a warning: the broker refuses to change a queue's arguments,
/// and refusing to start would stop delivery for the sake of a setting.
/// Returns the channel to go on with (the refusal closes the first).
async fn declare_queue(
    connection: &Connection,
    channel: Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<Channel, BrokerError> {
    let declared = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await;
    match declared {
        Ok(_) => Ok(channel),
        Err(err) if is_precondition_failed(&err) => {
            let channel = open_channel(connection).await?;
            channel
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(amqp_error("declaring a queue"))?;
            tracing::warn!(
                queue = name,
                "this queue exists with other arguments than this version declares (x-delivery-limit, at-least-once dead-lettering); it is used as it is: delete it while it is empty, or set them by a policy, to get them"
            );
            Ok(channel)
        }
        Err(err) => Err(amqp_error("declaring a queue")(err)),
    }
}

fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

async fn open_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a channel"))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("binding a queue"))
}

/// Declares everything a worker consumes from or publishes to, the fixed
/// set of delay queues included, on a channel of its own.
pub async fn declare(connection: &Connection, topology: &Topology) -> Result<(), BrokerError> {
    let mut channel = open_channel(connection).await?;
    for exchange in [topology.exchange(), topology.results_exchange()] {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_error("declaring an exchange"))?;
    }
    let dead = topology.dead_queue();
    channel = declare_queue(connection, channel, &dead, quorum_arguments(None)).await?;
    for queue in [
        topology.jobs_queue(),
        topology.due_queue(),
        topology.subscriptions_queue(),
        topology.feedback_queue(),
    ] {
        channel = declare_queue(connection, channel, &queue, quorum_arguments(Some(&dead))).await?;
    }
    for delay_ms in DELAY_QUEUE_MS {
        channel = declare_queue(
            connection,
            channel,
            &topology.delay_queue(delay_ms),
            retry_arguments(topology, delay_ms),
        )
        .await?;
    }
    bind(
        &channel,
        &topology.jobs_queue(),
        &topology.exchange(),
        event_types::NOTIFICATION_BINDING,
    )
    .await?;
    bind(
        &channel,
        &topology.subscriptions_queue(),
        &topology.exchange(),
        event_types::SUBSCRIPTION_BINDING,
    )
    .await?;
    bind(
        &channel,
        &topology.feedback_queue(),
        &topology.results_exchange(),
        GONE_ROUTING_KEY,
    )
    .await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Deletes every queue (the delay queues included) and exchange of a
/// topology: what the demo, the tests and the benchmark made.
pub async fn delete(amqp_url: &str, topology: &Topology) -> Result<(), BrokerError> {
    let connection = super::connect(amqp_url, "pushq-cleanup").await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a channel"))?;
    let delay_queues = DELAY_QUEUE_MS.map(|delay| topology.delay_queue(delay));
    for queue in [
        topology.jobs_queue(),
        topology.due_queue(),
        topology.subscriptions_queue(),
        topology.feedback_queue(),
        topology.dead_queue(),
    ]
    .into_iter()
    .chain(delay_queues)
    {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
            .map_err(amqp_error("deleting a queue"))?;
    }
    for exchange in [topology.exchange(), topology.results_exchange()] {
        channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .map_err(amqp_error("deleting an exchange"))?;
    }
    connection
        .close(200, "cleanup done".into())
        .await
        .map_err(amqp_error("closing"))
}
