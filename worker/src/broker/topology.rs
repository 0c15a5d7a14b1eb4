//! Declares the exchanges, queues and bindings of DESIGN §2.1.1. Every
//! declaration is idempotent with fixed arguments, so any number of replicas
//! (and producers) may declare at once.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
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

/// Declares everything a worker consumes from or publishes to.
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
        topology.subscriptions_queue(),
        topology.feedback_queue(),
    ] {
        declare_queue(channel, &queue, quorum_arguments(Some(&dead))).await?;
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
