//! One message from decoding to its [`Outcome`]: validate, store or resolve
//! the targets, deliver to each, record, publish results. It decides nothing
//! about acks; the consumer maps the outcome to an ack (after publishing any
//! follow-ups), a dead letter or a requeue.

mod notify;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use lapin::BasicProperties;
use pushq_schemas::data::ProducerEvent;
use pushq_schemas::{
    CloudEvent, InvalidEvent, InvalidKind, SubscriptionRegister, SubscriptionUnregister,
    event_types,
};
use sqlx::PgPool;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::broker::decode::decode;
use crate::broker::publisher::{Publisher, epoch_ms_now, header_str, not_before_ms};
use crate::metrics::Metrics;
use crate::push::{OriginPauses, PushClient};
use crate::retry::RetrySchedule;
use crate::store::StoreError;
use crate::store::deliveries::PublishedMarks;
use crate::store::subscriptions;
use crate::telemetry;
use pushq_schemas::delays::DUE_WITHIN_MS;

use notify::Prepared;
pub use notify::{ChunkData, REGISTRATION_SETTLE, RetryData};

/// Header a replay adds, so that exhausted deliveries may be attempted again.
pub const REPLAY_HEADER: &str = "x-pushq-replay";

/// What to do with the message that was handled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish each follow-up with a confirm, then ack. Should a publish fail,
    /// the message is handed back instead (its deliveries table rows make the
    /// redelivery resume where this attempt stopped).
    Ack { follow_ups: Vec<FollowUp> },
    /// It can never be processed: copy it to the dead-letter queue, then ack.
    DeadLetter(InvalidEvent),
    /// Not now (a dependency failed, or another replica holds a delivery):
    /// hand it back to the broker after `after`.
    Requeue { after: Duration },
    /// Not due yet: publish it unchanged to the delay queues until
    /// `not_before_ms` (epoch milliseconds), then ack.
    Delay { not_before_ms: u64 },
}

impl Outcome {
    pub fn ack() -> Self {
        Self::Ack {
            follow_ups: Vec::new(),
        }
    }
}

/// A message to publish before the handled one is acked.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUp {
    /// An internal retry event, to the delay queue of `delay_ms`.
    Retry { delay_ms: u64, event: CloudEvent },
    /// An internal chunk event of a large audience, to the jobs queue.
    Chunk { event: CloudEvent },
    /// An internal retry event whose retries are used up, to the dead-letter
    /// queue, from where `pushq-worker dead replay` sends it back to the jobs queue.
    Exhausted {
        event: CloudEvent,
        reason: InvalidEvent,
    },
}

/// Stored subscriptions looked up ahead for a batch, by endpoint. An endpoint
/// looked up but not found is known to have no subscription.
#[derive(Debug, Default)]
pub(crate) struct KnownEndpoints {
    looked_up: std::collections::HashSet<String>,
    found: std::collections::HashMap<String, subscriptions::StoredSubscription>,
}

impl KnownEndpoints {
    /// `None` when this endpoint was not looked up ahead.
    pub(crate) fn get(&self, endpoint: &str) -> Option<Option<subscriptions::StoredSubscription>> {
        self.looked_up
            .contains(endpoint)
            .then(|| self.found.get(endpoint).cloned())
    }
}

/// One message as the consumer hands it over, with the CONSUMER span that
/// follows it until it is settled.
#[derive(Debug)]
pub struct Received<'a> {
    pub properties: &'a BasicProperties,
    pub body: &'a [u8],
    pub span: Span,
}

impl<'a> Received<'a> {
    pub fn new(properties: &'a BasicProperties, body: &'a [u8], queue: &str) -> Self {
        let span = tracing::info_span!(
            "pushq.job",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = queue,
            messaging.message.id = properties.message_id().as_ref().map(|id| id.as_str()),
            cloudevents.event_id = Empty,
            cloudevents.event_type = Empty,
            trace_id = Empty,
        );
        Self {
            properties,
            body,
            span,
        }
    }

    /// Makes the span continue the event's trace and name the event.
    pub(crate) fn follow(&self, event: &CloudEvent) {
        self.span.record("cloudevents.event_id", event.id.as_str());
        self.span
            .record("cloudevents.event_type", event.event_type.as_str());
        telemetry::continue_trace(
            &self.span,
            event.traceparent.as_deref(),
            event.tracestate.as_deref(),
        );
    }
}

/// Which queue a message came from: the same event type means different
/// things on the producer and the results side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Producer,
    Feedback,
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// This replica, as the owner of the deliveries it claims (store::workers).
    pub replica: uuid::Uuid,
    pub schedule: RetrySchedule,
    /// Deliveries of one notification in flight at once.
    pub fanout_concurrency: usize,
    /// Subscriptions per fan-out chunk: a user or tag with more is split.
    pub fanout_chunk: usize,
    /// Consecutive failures after which a stored subscription is deleted; 0 never.
    pub max_consecutive_failures: u32,
    /// `source` of the events this worker publishes.
    pub source: String,
}

/// See [`Pipeline::chunk_slots`].
const CHUNKS_AT_ONCE: usize = 2;

/// A pause before handing back a message whose dependency failed.
pub const DEPENDENCY_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Pipeline {
    pool: PgPool,
    push: PushClient,
    pauses: Arc<OriginPauses>,
    marks: PublishedMarks,
    /// Deliveries this replica is sending now: its own claims that a
    /// redelivered copy must not take back while they are in flight.
    sending: notify::Sending,
    /// Chunks of large audiences delivered at once by this replica: enough to
    /// keep every request slot busy, few enough that memory stays bounded
    /// however many chunks the prefetch brings in.
    chunk_slots: tokio::sync::Semaphore,
    settings: PipelineSettings,
}

impl Pipeline {
    pub fn new(pool: PgPool, push: PushClient, settings: PipelineSettings) -> Self {
        Self {
            marks: PublishedMarks::start(pool.clone()),
            pool,
            push,
            pauses: Arc::new(OriginPauses::default()),
            sending: notify::Sending::default(),
            chunk_slots: tokio::sync::Semaphore::new(CHUNKS_AT_ONCE),
            settings,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn settings(&self) -> &PipelineSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &Metrics {
        self.push.metrics()
    }

    /// Handles several messages at once: each is decoded and resolved on its
    /// own, then every delivery among them is claimed, recorded and published
    /// together, so a burst of unicast notifications costs a few round trips
    /// instead of a few per message. One outcome per message, in order.
    pub async fn handle_many(
        &self,
        source: Source,
        messages: &[Received<'_>],
        publisher: &Publisher,
    ) -> Vec<Outcome> {
        if source == Source::Feedback {
            return join_all(messages.iter().map(|message| {
                crate::feedback::handle(&self.pool, self.metrics(), message)
                    .instrument(message.span.clone())
            }))
            .await;
        }
        // A message back from a delay queue before its time goes on to the
        // next hop; the rest are handled as one batch.
        let now_ms = epoch_ms_now();
        let (waiting, due): (Vec<_>, Vec<_>) = messages.iter().enumerate().partition(|(_, m)| {
            not_before_ms(m.properties).is_some_and(|due| due >= now_ms + DUE_WITHIN_MS)
        });
        if !waiting.is_empty() {
            let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];
            for (index, message) in waiting {
                outcomes[index] = Some(Outcome::Delay {
                    not_before_ms: not_before_ms(message.properties).unwrap_or(now_ms),
                });
            }
            let due_messages: Vec<&Received<'_>> = due.iter().map(|(_, m)| *m).collect();
            let handled = Box::pin(self.handle_due(&due_messages, publisher)).await;
            for ((index, _), outcome) in due.into_iter().zip(handled) {
                outcomes[index] = Some(outcome);
            }
            return outcomes.into_iter().flatten().collect();
        }
        let all: Vec<&Received<'_>> = messages.iter().collect();
        self.handle_due(&all, publisher).await
    }

    async fn handle_due(&self, messages: &[&Received<'_>], publisher: &Publisher) -> Vec<Outcome> {
        if messages.is_empty() {
            return Vec::new();
        }
        let received_at = Utc::now();
        let decoded: Vec<Result<CloudEvent, InvalidEvent>> = messages
            .iter()
            .map(|message| {
                let event = decode(message.properties, message.body);
                if let Ok(event) = &event {
                    message.follow(event);
                }
                event
            })
            .collect();
        let known = match self.known_endpoints(&decoded).await {
            Ok(known) => known,
            Err(err) => {
                tracing::warn!(error = %err, "looking up endpoints failed; the batch goes back to the queue");
                return messages
                    .iter()
                    .map(|_| Outcome::Requeue {
                        after: DEPENDENCY_BACKOFF,
                    })
                    .collect();
            }
        };
        let prepared = join_all(messages.iter().zip(decoded).map(|(message, event)| {
            self.prepare(message, event, &known, received_at, publisher)
                .instrument(message.span.clone())
        }))
        .await;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(prepared.len());
        let mut to_deliver = Vec::new();
        let mut delivered_at = Vec::new();
        for (index, prepared) in prepared.into_iter().enumerate() {
            match prepared {
                Prepared::Done(outcome) => outcomes.push(Some(outcome)),
                Prepared::Deliver(job) => {
                    outcomes.push(None);
                    to_deliver.push(*job);
                    delivered_at.push(index);
                }
            }
        }
        if !to_deliver.is_empty() {
            let delivered = self.deliver_owned(to_deliver, publisher).await;
            for (index, outcome) in delivered_at.into_iter().zip(delivered) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or(Outcome::Requeue {
                    after: DEPENDENCY_BACKOFF,
                })
            })
            .collect()
    }

    /// The stored subscriptions that the batch's sends name by endpoint, in
    /// one query instead of one each.
    async fn known_endpoints(
        &self,
        decoded: &[Result<CloudEvent, InvalidEvent>],
    ) -> Result<KnownEndpoints, StoreError> {
        let endpoints: Vec<String> = decoded
            .iter()
            .flatten()
            .filter(|event| event.event_type == event_types::NOTIFICATION_SEND)
            .filter_map(|event| {
                event
                    .data
                    .as_ref()?
                    .get("to")?
                    .get("endpoint")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        if endpoints.len() < 2 {
            return Ok(KnownEndpoints::default());
        }
        let found = subscriptions::find_by_endpoints(&self.pool, &endpoints).await?;
        Ok(KnownEndpoints {
            looked_up: endpoints.into_iter().collect(),
            found: found.into_iter().map(|s| (s.endpoint.clone(), s)).collect(),
        })
    }

    async fn prepare(
        &self,
        message: &Received<'_>,
        event: Result<CloudEvent, InvalidEvent>,
        known: &KnownEndpoints,
        received_at: chrono::DateTime<Utc>,
        publisher: &Publisher,
    ) -> Prepared {
        let event = match event {
            Ok(event) => event,
            Err(invalid) => return Prepared::Done(Outcome::DeadLetter(invalid)),
        };
        if event.event_type == event_types::INTERNAL_CHUNK {
            return Prepared::Done(self.chunk(&event, &message.span, publisher).await);
        }
        if event.event_type == event_types::INTERNAL_RETRY {
            let replay = header_str(message.properties.headers().as_ref(), REPLAY_HEADER)
                .as_deref()
                == Some("true");
            return self.prepare_retry(&event, replay, &message.span).await;
        }
        let parsed = match ProducerEvent::parse(&event.event_type, event.data.as_ref()) {
            Ok(parsed) => parsed,
            Err(invalid) => return Prepared::Done(Outcome::DeadLetter(invalid)),
        };
        let stored = match parsed {
            ProducerEvent::Register(register) => self.register(&register).await,
            ProducerEvent::Unregister(unregister) => self.unregister(&unregister).await,
            ProducerEvent::Send(send) => {
                return self
                    .prepare_send(&event, &send, known, received_at, &message.span, publisher)
                    .await;
            }
        };
        Prepared::Done(match stored {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(event_id = %event.id, error = %err, "storage failed; the event goes back to the queue");
                Outcome::Requeue {
                    after: DEPENDENCY_BACKOFF,
                }
            }
        })
    }

    async fn register(&self, register: &SubscriptionRegister) -> Result<Outcome, StoreError> {
        if let Err(refusal) = self
            .push
            .policy()
            .check_resolved(&register.subscription.endpoint)
            .await
        {
            return Ok(Outcome::DeadLetter(InvalidEvent::new(
                InvalidKind::EndpointRefused,
                refusal.0,
            )));
        }
        let id = subscriptions::upsert(&self.pool, register).await?;
        tracing::debug!(subscription = %id, "subscription registered");
        Ok(Outcome::ack())
    }

    async fn unregister(&self, unregister: &SubscriptionUnregister) -> Result<Outcome, StoreError> {
        let deleted = match unregister {
            SubscriptionUnregister::Endpoint(endpoint) => {
                subscriptions::delete_by_endpoint(&self.pool, endpoint).await?
            }
            SubscriptionUnregister::User(user) => {
                subscriptions::delete_by_user(&self.pool, user).await?
            }
        };
        tracing::debug!(deleted, "subscriptions unregistered");
        Ok(Outcome::ack())
    }
}
