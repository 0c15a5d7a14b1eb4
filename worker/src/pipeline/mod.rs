//! Producer messages from decoding to their [`Outcome`]: validate, store or
//! resolve the targets, deliver to each, record. It decides and never
//! publishes: each outcome lists the results, retries, chunks and dead
//! letters for the consumer to publish before it acks.

mod claim;
mod deliver;
mod job;
mod record;
mod resolve;
mod sending;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use pushq_schemas::data::{ProducerEvent, validate_endpoint};
use pushq_schemas::delays::DUE_WITHIN_MS;
use pushq_schemas::{
    CloudEvent, InvalidEvent, InvalidKind, SubscriptionRegister, SubscriptionUnregister,
    event_types,
};
use sqlx::PgPool;
use tracing::Instrument;

use crate::broker::decode::decode;
use crate::broker::publisher::{epoch_ms_now, first_received_ms, header_str, not_before_ms};
use crate::metrics::Metrics;
use crate::push::endpoint_policy::check_resolved;
use crate::push::{OriginPauses, PushClient};
use crate::retry::RetrySchedule;
use crate::step::{Outcome, REPLAY_HEADER, Received};
use crate::store::StoreError;
use crate::store::deliveries;
use crate::store::group_commit::{Claims, GroupCommit, Records};
use crate::store::marks::PublishedMarks;
use crate::store::subscriptions;

use job::Job;
pub use job::{ChunkData, RetryData};
pub use resolve::REGISTRATION_SETTLE;
use resolve::{KnownEndpoints, Prepared};

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

#[derive(Debug)]
pub struct Pipeline {
    pool: PgPool,
    push: PushClient,
    pauses: Arc<OriginPauses>,
    marks: PublishedMarks,
    claims: GroupCommit<Claims>,
    records: GroupCommit<Records>,
    /// Deliveries this replica is sending now.
    sending: sending::Sending,
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
            claims: GroupCommit::start(Claims {
                pool: pool.clone(),
                owner: settings.replica,
            }),
            records: GroupCommit::start(Records {
                pool: pool.clone(),
                owner: settings.replica,
            }),
            pool,
            push,
            pauses: Arc::new(OriginPauses::default()),
            sending: sending::Sending::default(),
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

    /// Notes that these deliveries' results were published (confirmed), so
    /// that a redelivery does not publish them again.
    pub fn results_published(&self, keys: &[deliveries::Key]) {
        for key in keys {
            self.marks.mark(key);
        }
    }

    /// Handles several messages at once: each is decoded and resolved on its
    /// own, then every delivery among them is claimed and recorded together,
    /// so a burst of unicast notifications costs a few round trips instead of
    /// a few per message. One outcome per message, in order.
    pub async fn handle_many(&self, messages: &[Received<'_>]) -> Vec<Outcome> {
        // A message back from a delay queue before its time goes on to the
        // next hop; the rest are handled as one batch. A due time further
        // away than any this worker sets was not set by a worker: it is
        // ignored rather than parking the message for ever.
        let now_ms = epoch_ms_now();
        let latest_ms = now_ms.saturating_add(
            u64::try_from(self.settings.schedule.longest_delay().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(60_000),
        );
        let mut outcomes: Vec<Option<Outcome>> = messages
            .iter()
            .map(|message| {
                if message.from_producer {
                    return None;
                }
                let not_before_ms = not_before_ms(message.properties)?;
                if not_before_ms > latest_ms {
                    tracing::warn!(
                        not_before_ms,
                        "a due time no worker would set; handling the message now"
                    );
                    return None;
                }
                (not_before_ms >= now_ms + DUE_WITHIN_MS)
                    .then_some(Outcome::Delay { not_before_ms })
            })
            .collect();
        let due: Vec<(usize, &Received<'_>)> = messages
            .iter()
            .enumerate()
            .filter(|(index, _)| outcomes[*index].is_none())
            .collect();
        let handled = self.handle_due(due.iter().map(|(_, m)| *m).collect()).await;
        for ((index, _), outcome) in due.into_iter().zip(handled) {
            outcomes[index] = Some(outcome);
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(Outcome::requeue))
            .collect()
    }

    async fn handle_due(&self, messages: Vec<&Received<'_>>) -> Vec<Outcome> {
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
            // One message's endpoint refused by the database: each is looked
            // up on its own instead, where only that one fails.
            Err(err) if err.refused_data().is_some() => KnownEndpoints::default(),
            Err(err) => {
                tracing::warn!(error = %err, "looking up endpoints failed; the batch waits in the delay queues and comes back");
                return messages.iter().map(|_| Outcome::requeue()).collect();
            }
        };
        let prepared = join_all(messages.iter().zip(decoded).map(|(message, event)| {
            // Anyone's header may only make the clock start earlier (the
            // message expire sooner), so a producer's harms only its own.
            let first_received = first_received_ms(message.properties)
                .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).ok()?))
                .map_or(received_at, |passed_on| passed_on.min(received_at));
            self.prepare(message, event, &known, first_received)
                .instrument(message.span.clone())
        }))
        .await;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(prepared.len());
        let mut to_deliver = Vec::new();
        let mut delivered_at = Vec::new();
        for (index, prepared) in prepared.into_iter().enumerate() {
            match prepared {
                Prepared::Done(outcome) => outcomes.push(Some(outcome)),
                Prepared::Deliver(job, recipients) => {
                    outcomes.push(None);
                    to_deliver.push((*job, recipients));
                    delivered_at.push(index);
                }
            }
        }
        if !to_deliver.is_empty() {
            let delivered = self.deliver_many(to_deliver).await;
            for (index, outcome) in delivered_at.into_iter().zip(delivered) {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(Outcome::requeue))
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
                    .filter(|endpoint| validate_endpoint(endpoint).is_ok())
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
        received_at: DateTime<Utc>,
    ) -> Prepared {
        let event = match event {
            Ok(event) => event,
            Err(invalid) => return Prepared::Done(Outcome::DeadLetter(invalid)),
        };
        if event.event_type.starts_with(event_types::INTERNAL_PREFIX) && message.from_producer {
            return Prepared::Done(Outcome::DeadLetter(InvalidEvent::new(
                InvalidKind::UnknownType,
                format!(
                    "{} is the worker's own type: it is accepted only on the worker's own route, never through the producer exchange",
                    event.event_type
                ),
            )));
        }
        if event.event_type == event_types::INTERNAL_CHUNK {
            return Prepared::Done(self.chunk(&event, &message.span).await);
        }
        let prepared = if event.event_type == event_types::INTERNAL_RETRY {
            let replay = header_str(message.properties.headers().as_ref(), REPLAY_HEADER)
                .as_deref()
                == Some("true");
            self.prepare_retry(&event, replay, &message.span).await
        } else {
            match ProducerEvent::parse(&event.event_type, event.data.as_ref()) {
                Err(invalid) => Ok(Prepared::Done(Outcome::DeadLetter(invalid))),
                Ok(ProducerEvent::Register(register)) => {
                    self.register(&register).await.map(Prepared::Done)
                }
                Ok(ProducerEvent::Unregister(unregister)) => {
                    self.unregister(&unregister).await.map(Prepared::Done)
                }
                Ok(ProducerEvent::Send(send)) => {
                    let job = Job::new(
                        message.span.clone(),
                        event.clone(),
                        send,
                        received_at,
                        false,
                    );
                    self.prepare_send(job, known).await
                }
            }
        };
        prepared.unwrap_or_else(|err| Prepared::Done(interrupted(&event, &err)))
    }

    async fn register(&self, register: &SubscriptionRegister) -> Result<Outcome, StoreError> {
        if let Err(refusal) =
            check_resolved(self.push.policy(), &register.subscription.endpoint).await
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

/// A dependency failed mid-way; the message waits and comes back, and the
/// deliveries table resumes it. Data the database refuses would fail the
/// same way every time: that message is dead-lettered instead.
fn interrupted(event: &CloudEvent, err: &StoreError) -> Outcome {
    if let Some(refused) = refused_by_the_database(err) {
        return Outcome::DeadLetter(refused);
    }
    tracing::warn!(event_id = %event.id, error = %err, "interrupted; the event waits in the delay queues and comes back");
    Outcome::requeue()
}

/// The dead letter's reason when the database refused a message's data.
fn refused_by_the_database(err: &StoreError) -> Option<InvalidEvent> {
    let code = err.refused_data()?;
    Some(InvalidEvent::data(format!(
        "the database refused this event's data (SQLSTATE {code})"
    )))
}
