//! Declares the exchanges, queues and bindings of DESIGN §2.1.1. Every
//! declaration is idempotent with fixed arguments, so any number of replicas
//! (and producers) may declare at once.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use pushq_schemas::delays::DELAY_QUEUE_MS;
use pushq_schemas::{Topology, event_types};

use super::{BrokerError, amqp_error};

/// The result type a feedback queue listens for.
pub const GONE_ROUTING_KEY: &str = "pushq.subscription.gone";

fn quorum_arguments(dead_letter_queue: Option<&str>) -> FieldTable {
    let mut arguments = FieldTable::default();
    // Quorum queues replicate and survive a node loss; they also track
    // redeliveries, which RabbitMQ 4 caps (20 by default).
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if let Some(dead) = dead_letter_queue {
        // A message the broker gives up on (RabbitMQ 4's delivery limit) goes
        // to the dead-letter queue rather than vanishing.
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

async fn declare_queue(
    channel: &Channel,
    name: &str,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map(drop)
        .map_err(amqp_error("declaring a queue"))
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
/// set of delay queues included.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<(), BrokerError> {
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
    declare_queue(channel, &dead, quorum_arguments(None)).await?;
    for queue in [
        topology.jobs_queue(),
        topology.due_queue(),
        topology.subscriptions_queue(),
        topology.feedback_queue(),
    ] {
        declare_queue(channel, &queue, quorum_arguments(Some(&dead))).await?;
    }
    for delay_ms in DELAY_QUEUE_MS {
        declare_queue(
            channel,
            &topology.delay_queue(delay_ms),
            retry_arguments(topology, delay_ms),
        )
        .await?;
    }
    bind(
        channel,
        &topology.jobs_queue(),
        &topology.exchange(),
        event_types::NOTIFICATION_BINDING,
    )
    .await?;
    bind(
        channel,
        &topology.subscriptions_queue(),
        &topology.exchange(),
        event_types::SUBSCRIPTION_BINDING,
    )
    .await?;
    bind(
        channel,
        &topology.feedback_queue(),
        &topology.results_exchange(),
        GONE_ROUTING_KEY,
    )
    .await?;
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
