//! Consumes one queue and carries out each message's [`Outcome`]: the one
//! place where anything is published for a message (its results, retries,
//! chunks, dead letters, all with confirms) and where it is then acked,
//! dead-lettered or handed back. The handlers only decide.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{FutureExt, StreamExt};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::broker::BrokerError;
use crate::broker::acks::{Acks, Settled};
use crate::broker::publisher::{Origin, Publisher, epoch_ms_now};
use crate::pipeline::Pipeline;
use crate::results;
use crate::step::{DEPENDENCY_BACKOFF, FollowUp, Outcome, Received, Source, UNTRUSTED_HEADER};

/// The most messages handled as one batch.
const MAX_BATCH: usize = 64;

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
/// batch is handled in its own task on `tracker`. The caller keeps the
/// channel open until those tasks are done: their acks travel on it.
pub async fn run(
    channel: &Channel,
    mut consumer: lapin::Consumer,
    queue: String,
    source: Source,
    workers: Workers,
) -> Result<(), BrokerError> {
    let acks = Arc::new(Acks::new(channel.clone()));
    loop {
        tokio::select! {
            biased;
            () = workers.stop.cancelled() => {
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
                    acks.received(batch.iter().map(|delivery| delivery.delivery_tag)).await;
                    let workers_now = workers.clone();
                    let queue = queue.clone();
                    let acks = acks.clone();
                    workers.tracker.spawn(async move {
                        handle_batch(&batch, &queue, source, &workers_now, &acks).await;
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

async fn handle_batch(
    batch: &[Delivery],
    queue: &str,
    source: Source,
    workers: &Workers,
    acks: &Acks,
) {
    let producer_exchange = workers.publisher.topology().exchange();
    let messages: Vec<Received<'_>> = batch
        .iter()
        .map(|delivery| {
            let untrusted = delivery
                .properties
                .headers()
                .as_ref()
                .is_some_and(|headers| headers.contains_key(UNTRUSTED_HEADER));
            if untrusted || delivery.exchange.as_str() == producer_exchange {
                Received::from_producer(&delivery.properties, &delivery.data, queue)
            } else {
                Received::new(&delivery.properties, &delivery.data, queue)
            }
        })
        .collect();
    let pipeline = &workers.pipeline;
    let outcomes = match source {
        Source::Producer => pipeline.handle_many(&messages).await,
        Source::Feedback => {
            join_all(messages.iter().map(|message| {
                crate::feedback::handle(pipeline.pool(), pipeline.metrics(), message)
                    .instrument(message.span.clone())
            }))
            .await
        }
    };
    // Settled side by side: their publishes pipeline on the channel, and a
    // message handed back after a pause holds up none of the others. The
    // acks go last, together where they can (broker/acks.rs).
    let settled = join_all(batch.iter().zip(messages).zip(outcomes).map(
        |((delivery, message), outcome)| {
            let passed_on = passed_on_properties(delivery, message.from_producer);
            settle(delivery, passed_on, outcome, workers).instrument(message.span)
        },
    ))
    .await;
    let mut failed = false;
    let tags: Vec<(u64, Settled)> = batch
        .iter()
        .zip(settled)
        .map(|(delivery, settled)| {
            let settled = settled.unwrap_or_else(|err| {
                tracing::warn!(error = %err, "could not settle a message; the broker will redeliver it");
                failed = true;
                Settled::Otherwise
            });
            (delivery.delivery_tag, settled)
        })
        .collect();
    if let Err(err) = acks.settle_batch(&tags, failed).await {
        tracing::warn!(error = %err, "could not ack handled messages; the broker will redeliver them");
    }
}

/// The properties a message is passed on with (delayed or handed back): a
/// producer's stays marked as one when it comes back by the default exchange.
fn passed_on_properties(delivery: &Delivery, from_producer: bool) -> lapin::BasicProperties {
    if !from_producer {
        return delivery.properties.clone();
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        lapin::types::ShortString::from(UNTRUSTED_HEADER),
        lapin::types::AMQPValue::LongString("true".into()),
    );
    delivery.properties.clone().with_headers(headers)
}

/// Wants the ack only once the outcome is durable. What cannot be published
/// now waits in the delay queues (or, when even that fails, goes back
/// unacked, so the broker redelivers it): nothing is lost.
async fn settle(
    delivery: &Delivery,
    passed_on: lapin::BasicProperties,
    outcome: Outcome,
    workers: &Workers,
) -> lapin::Result<Settled> {
    let Workers {
        pipeline,
        publisher,
        stop,
        ..
    } = workers;
    match outcome {
        Outcome::Ack {
            follow_ups,
            published,
        } => match publish_follow_ups(follow_ups, publisher, pipeline).await {
            Ok(()) => {
                pipeline.results_published(&published);
                Ok(Settled::AckWanted)
            }
            Err(err) => {
                tracing::error!(error = %err, "could not publish what the message led to; it waits and comes back");
                hand_back(delivery, passed_on, DEPENDENCY_BACKOFF, publisher, stop).await
            }
        },
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
                    pipeline.metrics().dead_letter(reason.kind.as_str());
                    Ok(Settled::AckWanted)
                }
                Err(err) => {
                    tracing::error!(error = %err, "could not dead-letter; the message waits and comes back");
                    hand_back(delivery, passed_on, DEPENDENCY_BACKOFF, publisher, stop).await
                }
            }
        }
        Outcome::Requeue { after } => hand_back(delivery, passed_on, after, publisher, stop).await,
        Outcome::Delay { not_before_ms } => {
            match publisher
                .delay_until(&delivery.data, passed_on, not_before_ms)
                .await
            {
                Ok(()) => Ok(Settled::AckWanted),
                Err(err) => {
                    tracing::error!(error = %err, "could not pass a delayed message on; handing it back");
                    requeue(delivery, Duration::from_secs(1), stop).await
                }
            }
        }
    }
}

/// Results go to the results exchange (pipelined confirms), retries to the
/// delay queues, chunks to the jobs queue, exhausted ones to the dead-letter
/// queue with the jobs queue as their origin, so a replay retries them.
async fn publish_follow_ups(
    follow_ups: Vec<FollowUp>,
    publisher: &Publisher,
    pipeline: &Pipeline,
) -> Result<(), BrokerError> {
    let topology = publisher.topology().clone();
    let properties = lapin::BasicProperties::default()
        .with_content_type(pushq_schemas::STRUCTURED_CONTENT_TYPE.into());
    let mut result_events = Vec::new();
    let mut others = Vec::new();
    for follow_up in follow_ups {
        match follow_up {
            FollowUp::Result { event } => result_events.push(event),
            other => others.push(other),
        }
    }
    let refused = results::publish(publisher, &result_events).await?;
    pipeline.metrics().results_refused(refused);
    for follow_up in others {
        match follow_up {
            FollowUp::Result { .. } => {}
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
                pipeline.metrics().dead_letter(reason.kind.as_str());
            }
        }
    }
    Ok(())
}

/// A message that cannot be handled now (a dependency failed) waits `after`
/// in the delay queues, not in a requeue loop: the broker's delivery count
/// is for crashes, and a long outage would use it up. On shutdown, or when
/// the broker refuses the hand-over, it goes straight back to its queue.
async fn hand_back(
    delivery: &Delivery,
    passed_on: lapin::BasicProperties,
    after: Duration,
    publisher: &Publisher,
    stop: &CancellationToken,
) -> lapin::Result<Settled> {
    if !stop.is_cancelled() {
        let due_ms = epoch_ms_now().saturating_add(u64::try_from(after.as_millis()).unwrap_or(0));
        match publisher
            .delay_until(&delivery.data, passed_on, due_ms)
            .await
        {
            Ok(()) => return Ok(Settled::AckWanted),
            Err(err) => {
                tracing::error!(error = %err, "could not hand a message to the delay queues; handing it back to its queue");
            }
        }
    }
    requeue(delivery, after, stop).await
}

/// Hands a message back after a pause, so a failing dependency is not hammered
/// in a tight loop; on shutdown it is handed back at once.
async fn requeue(
    delivery: &Delivery,
    after: Duration,
    stop: &CancellationToken,
) -> lapin::Result<Settled> {
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
        .map(|_| Settled::Otherwise)
}
