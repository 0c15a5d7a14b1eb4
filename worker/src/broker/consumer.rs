//! Consumes one queue and settles each message. This is the one place where a
//! message is acked, dead-lettered or handed back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::publisher::{Origin, Publisher, epoch_ms_now};
use super::{BrokerError, amqp_error};
use crate::metrics::Metrics;
use crate::pipeline::{FollowUp, Outcome, Pipeline, Received, Source};

/// The most messages handled as one batch.
const MAX_BATCH: usize = 64;

/// Opens a channel with `prefetch` unacked messages and starts consuming.
pub async fn open(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a consuming channel"))?;
    // Prefetch is the replica's concurrency bound and its redelivery exposure:
    // after a crash at most this many messages per queue come back.
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp_error("setting the prefetch"))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("starting a consumer"))?;
    Ok((channel, consumer))
}

/// What every consumer of one connection shares.
#[derive(Debug, Clone)]
pub struct Workers {
    pub pipeline: Arc<Pipeline>,
    /// Results, retries and dead letters go out on this confirmed channel.
    pub publisher: Publisher,
    /// Every message's task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub stop: CancellationToken,
}

/// Runs until `stop` is cancelled (then cancels the consumer and returns Ok)
/// or the broker ends the consumer (an error: the caller reconnects). Each
/// message is handled in its own task on `tracker`. The caller keeps the
/// channel open until those tasks are done: their acks travel on it.
pub async fn run(
    channel: &Channel,
    mut consumer: lapin::Consumer,
    queue: String,
    source: Source,
    workers: Workers,
) -> Result<(), BrokerError> {
    let Workers {
        pipeline,
        publisher,
        tracker,
        stop,
    } = workers;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                let tag = consumer.tag();
                if let Err(err) = channel.basic_cancel(tag, BasicCancelOptions::default()).await {
                    tracing::warn!(queue, error = %err, "cancelling the consumer failed");
                }
                return Ok(());
            }
            next = consumer.next() => match next {
                Some(Ok(first)) => {
                    // Whatever else has already arrived joins this batch, so
                    // a burst shares its database and broker round trips.
                    let mut batch = vec![first];
                    let mut failed = None;
                    while batch.len() < MAX_BATCH {
                        match consumer.next().now_or_never() {
                            Some(Some(Ok(delivery))) => batch.push(delivery),
                            Some(Some(Err(source))) => {
                                failed = Some(source);
                                break;
                            }
                            _ => break,
                        }
                    }
                    let pipeline = pipeline.clone();
                    let publisher = publisher.clone();
                    let stop = stop.clone();
                    let queue = queue.clone();
                    tracker.spawn(async move {
                        let messages: Vec<Received<'_>> = batch
                            .iter()
                            .map(|delivery| {
                                Received::new(&delivery.properties, &delivery.data, &queue)
                            })
                            .collect();
                        let outcomes = pipeline.handle_many(source, &messages, &publisher).await;
                        for ((delivery, message), outcome) in batch.iter().zip(messages).zip(outcomes) {
                            settle(delivery, outcome, &publisher, pipeline.metrics(), &stop)
                                .instrument(message.span)
                                .await;
                        }
                    });
                    if let Some(source) = failed {
                        return Err(BrokerError::Amqp { action: "consuming", source });
                    }
                }
                Some(Err(source)) => return Err(BrokerError::Amqp { action: "consuming", source }),
                None => return Err(BrokerError::ConsumerClosed { queue }),
            }
        }
    }
}

/// Acks only once the outcome is durable. A failure to ack or to dead-letter
/// leaves the message unacked, so the broker redelivers it: nothing is lost.
async fn settle(
    delivery: &Delivery,
    outcome: Outcome,
    publisher: &Publisher,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    let settled = match outcome {
        Outcome::Ack { follow_ups } => {
            match publish_follow_ups(follow_ups, publisher, metrics).await {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop),
                Err(err) => {
                    tracing::error!(error = %err, "could not publish a retry; handing the message back");
                    requeue(delivery, Duration::from_secs(1), stop).await
                }
            }
        }
        Outcome::DeadLetter(reason) => {
            tracing::warn!(kind = %reason.kind, error = %reason.message, "dead-lettering an event");
            let origin = Origin {
                exchange: delivery.exchange.as_str().to_owned(),
                routing_key: delivery.routing_key.as_str().to_owned(),
            };
            match publisher
                .dead_letter(&origin, &delivery.properties, &delivery.data, &reason)
                .await
            {
                Ok(()) => {
                    metrics.dead_letter(reason.kind.as_str());
                    delivery.ack(BasicAckOptions::default()).await.map(drop)
                }
                Err(err) => {
                    tracing::error!(error = %err, "could not dead-letter; handing the message back");
                    requeue(delivery, Duration::from_secs(1), stop).await
                }
            }
        }
        Outcome::Requeue { after } => requeue(delivery, after, stop).await,
        Outcome::Delay { not_before_ms } => {
            match publisher
                .delay_until(&delivery.data, delivery.properties.clone(), not_before_ms)
                .await
            {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(drop),
                Err(err) => {
                    tracing::error!(error = %err, "could not pass a delayed message on; handing it back");
                    requeue(delivery, Duration::from_secs(1), stop).await
                }
            }
        }
    };
    if let Err(err) = settled {
        tracing::warn!(error = %err, "could not settle a message; the broker will redeliver it");
    }
}

/// Retries go to their delay queue; exhausted ones to the dead-letter queue
/// with the jobs queue as their origin, so a replay retries them.
async fn publish_follow_ups(
    follow_ups: Vec<FollowUp>,
    publisher: &Publisher,
    metrics: &Metrics,
) -> Result<(), BrokerError> {
    let topology = publisher.topology().clone();
    let properties = lapin::BasicProperties::default()
        .with_content_type(pushq_schemas::STRUCTURED_CONTENT_TYPE.into());
    for follow_up in follow_ups {
        match follow_up {
            FollowUp::Retry { delay_ms, event } => {
                publisher
                    .delay_until(
                        &event.to_structured_json(),
                        properties.clone().with_message_id(event.id.clone().into()),
                        epoch_ms_now().saturating_add(delay_ms),
                    )
                    .await?;
            }
            FollowUp::Chunk { event } => {
                publisher
                    .publish(
                        "",
                        &topology.jobs_queue(),
                        &event.to_structured_json(),
                        properties.clone().with_message_id(event.id.clone().into()),
                    )
                    .await?;
            }
            FollowUp::Exhausted { event, reason } => {
                let origin = Origin {
                    exchange: String::new(),
                    routing_key: topology.jobs_queue(),
                };
                publisher
                    .dead_letter(
                        &origin,
                        &properties.clone().with_message_id(event.id.clone().into()),
                        &event.to_structured_json(),
                        &reason,
                    )
                    .await?;
                metrics.dead_letter(reason.kind.as_str());
            }
        }
    }
    Ok(())
}

/// Hands a message back after a pause, so a failing dependency is not hammered
/// in a tight loop; on shutdown it is handed back at once.
async fn requeue(
    delivery: &Delivery,
    after: Duration,
    stop: &CancellationToken,
) -> lapin::Result<()> {
    tokio::select! {
        () = tokio::time::sleep(after) => {}
        () = stop.cancelled() => {}
    }
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .map(drop)
}
