//! Who a notification goes to: a `pushq.notification.send` resolved to its
//! recipients (or chunks, or nothing), a retry to the recipients still to
//! deliver to, a chunk to its page of the audience.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pushq_schemas::{
    CloudEvent, DeliveryResult, InvalidEvent, InvalidKind, NotificationSend, ResultReason,
    ResultType, Target, event_types,
};
use serde_json::json;
use tracing::Span;
use uuid::Uuid;

use super::Pipeline;
use super::job::{ChunkData, Job, Recipient, RetryData, carried, one_off};
use crate::results;
use crate::step::{FollowUp, Outcome};
use crate::store::StoreError;
use crate::store::subscriptions::{self, Audience, StoredSubscription};

/// How long after its creation an event with no matching subscription is
/// looked up again (see [`Pipeline::resolve_after_settling`]).
pub const REGISTRATION_SETTLE: Duration = Duration::from_secs(2);

/// Stored subscriptions looked up ahead for a batch, by endpoint. An endpoint
/// looked up but not found is known to have no subscription.
#[derive(Debug, Default)]
pub(super) struct KnownEndpoints {
    pub looked_up: HashSet<String>,
    pub found: HashMap<String, StoredSubscription>,
}

impl KnownEndpoints {
    /// `None` when this endpoint was not looked up ahead.
    fn get(&self, endpoint: &str) -> Option<Option<StoredSubscription>> {
        self.looked_up
            .contains(endpoint)
            .then(|| self.found.get(endpoint).cloned())
    }
}

/// What a message comes to before delivery.
pub(super) enum Prepared {
    /// Nothing to deliver: this is its outcome.
    Done(Outcome),
    /// Recipients to deliver to, possibly together with other jobs'.
    Deliver(Box<Job>, Vec<Recipient>),
}

/// Who a notification goes to.
enum Resolved {
    Recipients(Vec<Recipient>),
    /// Too many for one worker: id ranges of the audience, one event each.
    Chunks(Vec<(Option<Uuid>, Uuid)>),
    Refused(InvalidEvent),
}

impl Resolved {
    fn is_empty(&self) -> bool {
        matches!(self, Self::Recipients(recipients) if recipients.is_empty())
    }
}

impl Pipeline {
    /// Resolves a `pushq.notification.send`: what is left to deliver, or the
    /// outcome when nothing is (skipped, split into chunks, refused).
    pub(super) async fn prepare_send(
        &self,
        job: Job,
        known: &KnownEndpoints,
    ) -> Result<Prepared, StoreError> {
        let mut resolved = self.resolve(&job.send, Some(known)).await?;
        if resolved.is_empty() && !matches!(job.send.to, Target::Subscription(_)) {
            resolved = self
                .resolve_after_settling(&job.send, job.ttl_started)
                .await?;
        }
        let recipients = match resolved {
            Resolved::Recipients(recipients) => recipients,
            Resolved::Refused(refused) => return Ok(Prepared::Done(Outcome::DeadLetter(refused))),
            Resolved::Chunks(ranges) => {
                tracing::info!(event_id = %job.notification.id, chunks = ranges.len(), "fanning out in chunks");
                let follow_ups = ranges
                    .into_iter()
                    .map(|(after, until)| FollowUp::Chunk {
                        event: job.internal_event(
                            event_types::INTERNAL_CHUNK,
                            &self.settings.source,
                            json!({"after": after, "until": until}),
                        ),
                    })
                    .collect();
                return Ok(Prepared::Done(Outcome::Ack {
                    follow_ups,
                    published: Vec::new(),
                }));
            }
        };
        if recipients.is_empty() {
            return Ok(Prepared::Done(self.skipped(&job)));
        }
        Ok(Prepared::Deliver(Box::new(job), recipients))
    }

    /// A target that matched nothing: acked, with a `skipped` result.
    fn skipped(&self, job: &Job) -> Outcome {
        tracing::info!(event_id = %job.notification.id, target = job.send.to.kind(), "no subscription matches; skipped");
        let data = DeliveryResult {
            notification: job.notification.id.clone(),
            notification_source: job.notification.source.clone(),
            subscription: None,
            user: match &job.send.to {
                Target::User(user) => Some(user.clone()),
                _ => None,
            },
            push_service: String::new(),
            status: None,
            attempt: 1,
            reason: Some(ResultReason::NoSubscription),
            retry_in_ms: None,
        };
        self.metrics().delivery(ResultType::Skipped, "");
        let event = results::result_event(
            ResultType::Skipped,
            &data,
            &self.settings.source,
            job.trace_context(&job.span).as_ref(),
        );
        Outcome::Ack {
            follow_ups: vec![FollowUp::Result { event }],
            published: Vec::new(),
        }
    }

    /// A `pushq.internal.retry` event back from the delay queues: the
    /// recipients still to deliver to.
    pub(super) async fn prepare_retry(
        &self,
        event: &CloudEvent,
        replay: bool,
        span: &Span,
    ) -> Result<Prepared, StoreError> {
        let (data, notification, send) = match carried::<RetryData>(event) {
            Ok(carried) => carried,
            Err(invalid) => return Ok(Prepared::Done(Outcome::DeadLetter(invalid))),
        };
        // Recipients deleted since (gone, unregistered) simply drop out.
        let recipients = self.resolve_ids(&send, &data.subscriptions).await?;
        let job = Job::new(
            span.clone(),
            notification,
            send,
            data.first_received,
            replay,
        );
        Ok(Prepared::Deliver(Box::new(job), recipients))
    }

    /// A `pushq.internal.chunk` event: one id range of a large audience,
    /// delivered while it holds one of this replica's chunk slots.
    pub(super) async fn chunk(&self, event: &CloudEvent, span: &Span) -> Outcome {
        let (data, notification, send) = match carried::<ChunkData>(event) {
            Ok(carried) => carried,
            Err(invalid) => return Outcome::DeadLetter(invalid),
        };
        let audience = match &send.to {
            Target::User(user) => Audience::User(user),
            Target::Tag(tag) => Audience::Tag(tag),
            _ => {
                return Outcome::DeadLetter(InvalidEvent::data(
                    "a chunk carries a notification to a single subscription",
                ));
            }
        };
        let Ok(_slot) = self.chunk_slots.acquire().await else {
            return Outcome::requeue();
        };
        // The range held one chunk when it was cut; twice that bounds a page
        // even if subscriptions were re-registered into it since.
        let limit = i64::try_from(self.settings.fanout_chunk.max(1) * 2).unwrap_or(i64::MAX);
        let page =
            subscriptions::audience_page(&self.pool, audience, data.after, Some(data.until), limit)
                .await;
        let recipients = match page {
            Ok(page) => page.into_iter().map(Recipient::from).collect(),
            Err(err) => return super::interrupted(&notification, &err),
        };
        let job = Job::new(span.clone(), notification, send, data.first_received, false);
        self.deliver_many(vec![(job, recipients)])
            .await
            .pop()
            .unwrap_or_else(Outcome::ack)
    }

    /// Who a notification goes to. A user or tag with more subscriptions than
    /// one chunk is split into id ranges instead, each delivered by its own
    /// internal event, so every replica shares the work and no worker holds a
    /// whole audience. A one-off subscription the endpoint policy refuses is
    /// the event's fault.
    async fn resolve(
        &self,
        send: &NotificationSend,
        known: Option<&KnownEndpoints>,
    ) -> Result<Resolved, StoreError> {
        let chunk = self.settings.fanout_chunk.max(1);
        let stored: Vec<StoredSubscription> = match &send.to {
            Target::User(user) => {
                return self.resolve_audience(Audience::User(user), chunk).await;
            }
            Target::Tag(tag) => return self.resolve_audience(Audience::Tag(tag), chunk).await,
            Target::Endpoint(endpoint) => match known.and_then(|known| known.get(endpoint)) {
                Some(found) => found.into_iter().collect(),
                None => subscriptions::find_by_endpoint(&self.pool, endpoint)
                    .await?
                    .into_iter()
                    .collect(),
            },
            Target::Subscription(subscription) => {
                if let Err(refusal) = self.push.policy().check(&subscription.endpoint) {
                    return Ok(Resolved::Refused(InvalidEvent::new(
                        InvalidKind::EndpointRefused,
                        refusal.0,
                    )));
                }
                return Ok(Resolved::Recipients(one_off(send).into_iter().collect()));
            }
        };
        Ok(Resolved::Recipients(
            stored.into_iter().map(Recipient::from).collect(),
        ))
    }

    async fn resolve_audience(
        &self,
        audience: Audience<'_>,
        chunk: usize,
    ) -> Result<Resolved, StoreError> {
        let limit = i64::try_from(chunk).unwrap_or(i64::MAX);
        let first =
            subscriptions::audience_page(&self.pool, audience, None, None, limit + 1).await?;
        if first.len() <= chunk {
            return Ok(Resolved::Recipients(
                first.into_iter().map(Recipient::from).collect(),
            ));
        }
        drop(first);
        let mut ranges = Vec::new();
        let mut after = None;
        loop {
            let ids = subscriptions::audience_ids(&self.pool, audience, after, limit).await?;
            let Some(&last) = ids.last() else { break };
            ranges.push((after, last));
            after = Some(last);
            if ids.len() < chunk {
                break;
            }
        }
        Ok(Resolved::Chunks(ranges))
    }

    /// A retry's recipients, by id.
    async fn resolve_ids(
        &self,
        send: &NotificationSend,
        ids: &[Uuid],
    ) -> Result<Vec<Recipient>, StoreError> {
        if let Some(recipient) = one_off(send) {
            return Ok(ids
                .contains(&recipient.id)
                .then_some(recipient)
                .into_iter()
                .collect());
        }
        let stored = subscriptions::find_by_ids(&self.pool, ids).await?;
        Ok(stored.into_iter().map(Recipient::from).collect())
    }

    /// A service that registers a subscription and sends to it right away
    /// publishes to two queues that are consumed concurrently, so the send may
    /// be handled before the registration is stored. A young event whose stored
    /// target matches nothing is looked up once more when it is
    /// [`REGISTRATION_SETTLE`] old, instead of being skipped at once.
    async fn resolve_after_settling(
        &self,
        send: &NotificationSend,
        ttl_started: DateTime<Utc>,
    ) -> Result<Resolved, StoreError> {
        let age = (Utc::now() - ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let Some(wait) = REGISTRATION_SETTLE.checked_sub(age) else {
            return Ok(Resolved::Recipients(Vec::new()));
        };
        tokio::time::sleep(wait).await;
        // Looked up afresh: what was known ahead is what the settle waits past.
        self.resolve(send, None).await
    }
}
