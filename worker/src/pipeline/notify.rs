//! `pushq.notification.send` and its retries: resolve the recipients, then per
//! recipient claim, send, classify, record and publish the result.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use pushq_schemas::data::{ProducerEvent, endpoint_origin};
use pushq_schemas::{
    CloudEvent, DeliveryResult, InvalidEvent, InvalidKind, NotificationSend, ResultReason,
    ResultType, Target, event_types,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::field::Empty;
use tracing::{Instrument, Span};
use uuid::Uuid;

use super::{DEPENDENCY_BACKOFF, FollowUp, KnownEndpoints, Outcome, Pipeline};
use crate::broker::BrokerError;
use crate::broker::publisher::Publisher;
use crate::push::{DeliveryError, PushMessage, Verdict, classify_status};
use crate::results;
use crate::retry::RetryDecision;
use crate::store::StoreError;
use crate::store::deliveries::{self, Claim, DeliveryStatus, Health};
use crate::store::subscriptions::{self, Audience, StoredSubscription};
use crate::telemetry::{self, TraceContext};

/// How long after its creation an event with no matching subscription is
/// looked up again (see [`Pipeline::resolve_after_settling`]).
pub const REGISTRATION_SETTLE: Duration = Duration::from_secs(2);
/// How soon a delivery that a live replica is sending is looked at again:
/// by then it is final (and skipped), or its holder is dead and it is sent.
const HELD_ELSEWHERE_RETRY_MS: u64 = 1000;

/// The deliveries this replica is sending now.
#[derive(Debug, Default)]
pub(super) struct Sending(std::sync::Mutex<std::collections::HashSet<deliveries::Key>>);

impl Sending {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<deliveries::Key>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserves for this task, until the guard is dropped, each pending
    /// delivery that no other task of this replica has reserved; returns the
    /// guard, the reserved and the others. Reserved before the claim, so two
    /// copies of one event in two batches never both take this replica's
    /// own claim.
    fn reserve(
        &self,
        pending: Vec<Pending>,
        key_of: impl Fn(&Pending) -> deliveries::Key,
    ) -> (SendingGuard<'_>, Vec<Pending>, Vec<Pending>) {
        let mut sending = self.lock();
        let mut keys = Vec::new();
        let (reserved, held): (Vec<Pending>, Vec<Pending>) = pending.into_iter().partition(|p| {
            let key = key_of(p);
            let free = sending.insert(key.clone());
            if free {
                keys.push(key);
            }
            free
        });
        drop(sending);
        (
            SendingGuard {
                sending: self,
                keys,
            },
            reserved,
            held,
        )
    }
}

/// Releases its deliveries when dropped, however the sending ended.
struct SendingGuard<'a> {
    sending: &'a Sending,
    keys: Vec<deliveries::Key>,
}

impl Drop for SendingGuard<'_> {
    fn drop(&mut self) {
        let mut sending = self.sending.lock();
        for key in &self.keys {
            sending.remove(key);
        }
    }
}

/// The data of a `pushq.internal.retry` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryData {
    /// The original `pushq.notification.send` event, structured.
    pub event: serde_json::Value,
    /// The recipients still to deliver to.
    pub subscriptions: Vec<Uuid>,
    /// When a worker first received the notification: its TTL clock if the
    /// event has no `time`.
    pub first_received: DateTime<Utc>,
}

/// The data of a `pushq.internal.chunk` event: the audience members with
/// `after < id <= until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkData {
    pub event: serde_json::Value,
    pub after: Option<Uuid>,
    pub until: Uuid,
    pub first_received: DateTime<Utc>,
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

/// What a message comes to before delivery.
pub(super) enum Prepared {
    /// Nothing to deliver: this is its outcome.
    Done(Outcome),
    /// Recipients to deliver to, possibly together with other jobs'.
    Deliver(Box<OwnedJob>),
}

/// A job that owns its notification, so jobs of several messages can be
/// delivered together.
pub(super) struct OwnedJob {
    span: Span,
    notification: CloudEvent,
    send: NotificationSend,
    first_received: DateTime<Utc>,
    replay: bool,
    recipients: Vec<Recipient>,
}

impl OwnedJob {
    fn new(job: &Job<'_>, recipients: Vec<Recipient>) -> Self {
        Self {
            span: job.span.clone(),
            notification: job.notification.clone(),
            send: job.send.clone(),
            first_received: job.first_received,
            replay: job.replay,
            recipients,
        }
    }
}

/// One notification being delivered.
pub(super) struct Job<'a> {
    /// The message's CONSUMER span: the parent of each delivery's span.
    span: &'a Span,
    notification: &'a CloudEvent,
    send: &'a NotificationSend,
    ttl_started: DateTime<Utc>,
    first_received: DateTime<Utc>,
    replay: bool,
}

impl<'a> Job<'a> {
    /// The TTL clock starts at the event's `time`, or when a worker first
    /// received it if the producer gave none.
    fn new(
        span: &'a Span,
        notification: &'a CloudEvent,
        send: &'a NotificationSend,
        first_received: DateTime<Utc>,
        replay: bool,
    ) -> Self {
        Self {
            span,
            notification,
            send,
            ttl_started: notification.time.unwrap_or(first_received),
            first_received,
            replay,
        }
    }

    /// How long the notification's TTL clock has been running.
    fn age(&self) -> Duration {
        (Utc::now() - self.ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    /// The trace context an event continuing `span` carries: the span's own
    /// when spans are exported, else the notification's, passed on unchanged.
    fn trace_context(&self, span: &Span) -> Option<TraceContext> {
        telemetry::trace_context(span).or_else(|| {
            Some(TraceContext {
                traceparent: self.notification.traceparent.clone()?,
                tracestate: self.notification.tracestate.clone(),
            })
        })
    }
}

/// One subscription a notification goes to.
pub(super) struct Recipient {
    /// The stored id, or for a one-off subscription a UUID derived from its endpoint.
    id: Uuid,
    stored: bool,
    user: Option<String>,
    endpoint: String,
    p256dh: String,
    auth: String,
}

impl From<StoredSubscription> for Recipient {
    fn from(stored: StoredSubscription) -> Self {
        Self {
            id: stored.id,
            stored: true,
            user: Some(stored.user_id),
            endpoint: stored.endpoint,
            p256dh: stored.p256dh,
            auth: stored.auth,
        }
    }
}

/// A dependency failed mid-way; the message goes back to the broker and the
/// deliveries table resumes it.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing a result failed")]
    Broker(#[from] BrokerError),
}

impl Pipeline {
    /// Resolves a `pushq.notification.send`: what is left to deliver, or the
    /// outcome when nothing is (skipped, split into chunks, refused).
    pub(super) async fn prepare_send(
        &self,
        event: &CloudEvent,
        send: &NotificationSend,
        known: &KnownEndpoints,
        received_at: DateTime<Utc>,
        span: &Span,
        publisher: &Publisher,
    ) -> Prepared {
        let job = Job::new(span, event, send, received_at, false);
        let mut resolved = match self.resolve(send, Some(known)).await {
            Ok(resolved) => resolved,
            Err(err) => return Prepared::Done(interrupted(event, &Interrupted::Store(err))),
        };
        if resolved.is_empty() && !matches!(send.to, Target::Subscription(_)) {
            resolved = match self.resolve_after_settling(send, job.ttl_started).await {
                Ok(resolved) => resolved,
                Err(err) => return Prepared::Done(interrupted(event, &Interrupted::Store(err))),
            };
        }
        let recipients = match resolved {
            Resolved::Recipients(recipients) => recipients,
            Resolved::Refused(refused) => return Prepared::Done(Outcome::DeadLetter(refused)),
            Resolved::Chunks(ranges) => {
                tracing::info!(event_id = %event.id, chunks = ranges.len(), "fanning out in chunks");
                let follow_ups = ranges
                    .into_iter()
                    .map(|(after, until)| FollowUp::Chunk {
                        event: self.internal_event(
                            &job,
                            event_types::INTERNAL_CHUNK,
                            json!({"after": after, "until": until}),
                        ),
                    })
                    .collect();
                return Prepared::Done(Outcome::Ack { follow_ups });
            }
        };
        if recipients.is_empty() {
            tracing::info!(event_id = %event.id, target = send.to.kind(), "no subscription matches; skipped");
            let user = match &send.to {
                Target::User(user) => Some(user.clone()),
                _ => None,
            };
            let data = DeliveryResult {
                notification: event.id.clone(),
                subscription: None,
                user,
                push_service: String::new(),
                status: None,
                attempt: 1,
                reason: Some(ResultReason::NoSubscription),
                retry_in_ms: None,
            };
            return Prepared::Done(
                match self
                    .publish_result(&job, ResultType::Skipped, &data, publisher)
                    .await
                {
                    Ok(()) => Outcome::ack(),
                    Err(err) => interrupted(event, &Interrupted::Broker(err)),
                },
            );
        }
        Prepared::Deliver(Box::new(OwnedJob::new(&job, recipients)))
    }

    /// A `pushq.internal.retry` event back from its delay queue: the
    /// recipients still to deliver to.
    pub(super) async fn prepare_retry(
        &self,
        event: &CloudEvent,
        replay: bool,
        span: &Span,
    ) -> Prepared {
        let (data, notification, send) = match carried::<RetryData>(event) {
            Ok(carried) => carried,
            Err(invalid) => return Prepared::Done(Outcome::DeadLetter(invalid)),
        };
        let job = Job::new(span, &notification, &send, data.first_received, replay);
        // Recipients deleted since (gone, unregistered) simply drop out.
        match self.resolve_ids(&send, &data.subscriptions).await {
            Ok(recipients) => Prepared::Deliver(Box::new(OwnedJob::new(&job, recipients))),
            Err(err) => Prepared::Done(interrupted(&notification, &Interrupted::Store(err))),
        }
    }

    /// A `pushq.internal.chunk` event: one id range of a large audience.
    pub(super) async fn chunk(
        &self,
        event: &CloudEvent,
        span: &Span,
        publisher: &Publisher,
    ) -> Outcome {
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
        let job = Job::new(span, &notification, &send, data.first_received, false);
        let Ok(_slot) = self.chunk_slots.acquire().await else {
            return Outcome::Requeue {
                after: DEPENDENCY_BACKOFF,
            };
        };
        // The range held one chunk when it was cut; twice that bounds a page
        // even if subscriptions were re-registered into it since.
        let limit = i64::try_from(self.settings.fanout_chunk.max(1) * 2).unwrap_or(i64::MAX);
        let page =
            subscriptions::audience_page(&self.pool, audience, data.after, Some(data.until), limit)
                .await;
        match page {
            Ok(page) => {
                let recipients = page.into_iter().map(Recipient::from).collect();
                self.deliver_all(&job, recipients, publisher).await
            }
            Err(err) => interrupted(&notification, &Interrupted::Store(err)),
        }
    }

    /// Delivers to every recipient of one notification (or one retry of it).
    async fn deliver_all(
        &self,
        job: &Job<'_>,
        recipients: Vec<Recipient>,
        publisher: &Publisher,
    ) -> Outcome {
        let mut outcomes = self.deliver_many(&[job], vec![recipients], publisher).await;
        outcomes.pop().unwrap_or_else(Outcome::ack)
    }

    /// Delivers prepared jobs together; one outcome each, in order.
    pub(super) async fn deliver_owned(
        &self,
        mut owned: Vec<OwnedJob>,
        publisher: &Publisher,
    ) -> Vec<Outcome> {
        let recipients: Vec<Vec<Recipient>> = owned
            .iter_mut()
            .map(|job| std::mem::take(&mut job.recipients))
            .collect();
        let jobs: Vec<Job<'_>> = owned
            .iter()
            .map(|job| {
                Job::new(
                    &job.span,
                    &job.notification,
                    &job.send,
                    job.first_received,
                    job.replay,
                )
            })
            .collect();
        let refs: Vec<&Job<'_>> = jobs.iter().collect();
        self.deliver_many(&refs, recipients, publisher).await
    }

    /// Delivers the recipients of several notifications together, with a
    /// constant number of database round trips for the lot: claim all, send
    /// all, record all, publish every result with pipelined confirms. Returns
    /// one outcome per job.
    pub(super) async fn deliver_many(
        &self,
        jobs: &[&Job<'_>],
        recipients: Vec<Vec<Recipient>>,
        publisher: &Publisher,
    ) -> Vec<Outcome> {
        let mut batches: Vec<Batch> = jobs.iter().map(|_| Batch::default()).collect();
        let mut to_claim = Vec::new();
        // The same notification can sit twice in one batch (a producer that
        // published it twice, or a redelivery beside a retry): each delivery
        // is claimed once, by the first; the others have nothing left to do.
        let mut seen = std::collections::HashSet::new();
        for (index, recipients) in recipients.into_iter().enumerate() {
            for recipient in recipients {
                if !seen.insert(key(jobs[index], &recipient)) {
                    continue;
                }
                let origin = endpoint_origin(&recipient.endpoint);
                match self.pauses.remaining(&origin) {
                    // Not an attempt: the push service asked us to wait.
                    Some(pause) => batches[index].retry(recipient.id, duration_ms(pause)),
                    None => to_claim.push(Pending {
                        job: index,
                        recipient,
                        origin,
                    }),
                }
            }
        }
        match self
            .attempt_all(jobs, to_claim, &mut batches, publisher)
            .await
        {
            Ok(()) => batches
                .into_iter()
                .zip(jobs)
                .map(|(batch, job)| batch.into_outcome(self, job))
                .collect(),
            Err(err) => jobs
                .iter()
                .map(|job| interrupted(job.notification, &err))
                .collect(),
        }
    }

    async fn attempt_all(
        &self,
        jobs: &[&Job<'_>],
        pending: Vec<Pending>,
        batches: &mut [Batch],
        publisher: &Publisher,
    ) -> Result<(), Interrupted> {
        if pending.is_empty() {
            return Ok(());
        }
        // What this replica is sending already is held, by itself.
        let (_sending, pending, held_here) = self
            .sending
            .reserve(pending, |p| key(jobs[p.job], &p.recipient));
        for p in held_here {
            batches[p.job].retry(p.recipient.id, HELD_ELSEWHERE_RETRY_MS);
        }
        let keys: Vec<(deliveries::Key, bool)> = pending
            .iter()
            .map(|p| (key(jobs[p.job], &p.recipient), jobs[p.job].replay))
            .collect();
        let claims = deliveries::claim_many(&self.pool, &keys, self.settings.replica).await?;
        let mut concluded: Vec<Concluded> = Vec::new();
        let mut to_send = Vec::new();
        for p in pending {
            let job = jobs[p.job];
            match claims.get(&key(job, &p.recipient)).copied() {
                Some(Claim::Granted { attempt }) => {
                    let span = deliver_span(job, &p.origin, attempt);
                    // Whole seconds, as the TTL header counts them: a TTL of 0 is sent once.
                    if job.age().as_secs() > u64::from(job.send.ttl) {
                        span.in_scope(|| tracing::info!(event_id = %job.notification.id, push_service = %p.origin, "TTL passed before delivery; expired"));
                        concluded.push(Concluded::new(
                            p,
                            span,
                            attempt,
                            DeliveryStatus::Expired,
                            None,
                            Some(ResultReason::Expired),
                        ));
                    } else {
                        to_send.push((p, attempt, span));
                    }
                }
                Some(Claim::Done(recorded)) => {
                    if !recorded.result_published {
                        let mut again = Concluded::new(
                            p,
                            job.span.clone(),
                            recorded.attempts.max(1),
                            recorded.status,
                            recorded.http_status,
                            recorded.reason,
                        );
                        again.already_recorded = true;
                        concluded.push(again);
                    }
                }
                Some(Claim::HeldElsewhere) => {
                    // Not an attempt, and no result: the holder publishes it.
                    batches[p.job].retry(p.recipient.id, HELD_ELSEWHERE_RETRY_MS);
                }
                None => batches[p.job].requeue(DEPENDENCY_BACKOFF),
            }
        }
        let payloads: Vec<Vec<u8>> = jobs.iter().map(|job| job.send.payload_bytes()).collect();
        let answers: Vec<(Pending, u32, Span, Answer)> = stream::iter(to_send)
            .map(|(p, attempt, span)| {
                let job = jobs[p.job];
                let payload = &payloads[p.job];
                async move {
                    let answer = self
                        .send_one(job, &p.recipient, &p.origin, payload)
                        .instrument(span.clone())
                        .await;
                    (p, attempt, span, answer)
                }
            })
            .buffer_unordered(self.settings.fanout_concurrency.max(1))
            .collect()
            .await;
        for (p, attempt, span, answer) in answers {
            let job = jobs[p.job];
            // No await below: the guard only scopes this delivery's log lines.
            let _in_span = span.clone().entered();
            let (verdict, status) = match answer {
                Ok(answer) => answer,
                Err(wait) => {
                    // Deferred by our own rate limit: back to a delay queue,
                    // and the attempt does not count.
                    batches[p.job].retry(p.recipient.id, duration_ms(wait));
                    let mut deferred = Concluded::new(
                        p,
                        span,
                        attempt,
                        DeliveryStatus::Retrying,
                        None,
                        Some(ResultReason::Throttled),
                    );
                    deferred.attempt_counts = false;
                    concluded.push(deferred);
                    continue;
                }
            };
            if let Some(status) = status {
                span.record("http.response.status_code", status);
            }
            let (delivery_status, reason) = match verdict {
                Verdict::Delivered => {
                    tracing::debug!(push_service = %p.origin, "delivered");
                    (DeliveryStatus::Delivered, None)
                }
                Verdict::Gone => {
                    tracing::info!(event_id = %job.notification.id, subscription = %p.recipient.id, push_service = %p.origin, "subscription gone");
                    (DeliveryStatus::Gone, Some(ResultReason::Gone))
                }
                Verdict::Failed(reason) => {
                    if matches!(reason, ResultReason::Unauthorized | ResultReason::Forbidden) {
                        tracing::error!(push_service = %p.origin, status, "the push service refused our VAPID credentials: check PUSHQ_VAPID_PRIVATE_KEY and PUSHQ_VAPID_SUBJECT");
                    } else {
                        tracing::warn!(event_id = %job.notification.id, push_service = %p.origin, status, reason = reason.as_str(), "delivery failed");
                    }
                    (DeliveryStatus::Failed, Some(reason))
                }
                Verdict::Retry { reason, after } => {
                    let ttl_left =
                        Duration::from_secs(u64::from(job.send.ttl)).saturating_sub(job.age());
                    let decision =
                        self.settings
                            .schedule
                            .decide(attempt, after, jitter(), ttl_left);
                    if reason == ResultReason::Throttled || after.is_some() {
                        // The wait concerns this subscription; the push
                        // service pauses only when many are throttled at once.
                        let asked = after.map_or_else(
                            || match decision {
                                RetryDecision::After { delay_ms } => {
                                    Duration::from_millis(delay_ms)
                                }
                                _ => Duration::ZERO,
                            },
                            |after| self.settings.schedule.clamp_retry_after(after),
                        );
                        if let Some(pause) = self.pauses.throttled(&p.origin, p.recipient.id, asked)
                        {
                            tracing::warn!(push_service = %p.origin, pause_ms = duration_ms(pause), "many subscriptions of this push service were throttled at once; pausing it");
                        }
                    }
                    match decision {
                        RetryDecision::After { delay_ms } => {
                            tracing::info!(event_id = %job.notification.id, push_service = %p.origin, attempt, reason = reason.as_str(), retry_in_ms = delay_ms, "will retry");
                            batches[p.job].retry(p.recipient.id, delay_ms);
                            let mut retrying = Concluded::new(
                                p,
                                span,
                                attempt,
                                DeliveryStatus::Retrying,
                                status,
                                Some(reason),
                            );
                            retrying.retry_in_ms = Some(delay_ms);
                            concluded.push(retrying);
                            continue;
                        }
                        RetryDecision::Exhausted => {
                            tracing::warn!(event_id = %job.notification.id, push_service = %p.origin, attempt, reason = reason.as_str(), "retries exhausted");
                            batches[p.job].exhausted.push(p.recipient.id);
                            (
                                DeliveryStatus::Exhausted,
                                Some(ResultReason::RetriesExhausted),
                            )
                        }
                        RetryDecision::Expired => {
                            tracing::info!(event_id = %job.notification.id, push_service = %p.origin, attempt, "the next retry would start after the TTL; expired");
                            (DeliveryStatus::Expired, Some(ResultReason::Expired))
                        }
                    }
                }
            };
            concluded.push(Concluded::new(
                p,
                span,
                attempt,
                delivery_status,
                status,
                reason,
            ));
        }
        self.record_and_publish(jobs, concluded, publisher).await
    }

    /// Encrypts, signs and POSTs one message with the TTL that is left; what
    /// the answer means, or `Err(wait)` when our own rate limit deferred it unsent.
    async fn send_one(
        &self,
        job: &Job<'_>,
        recipient: &Recipient,
        origin: &str,
        payload: &[u8],
    ) -> Answer {
        let remaining_ttl = Duration::from_secs(u64::from(job.send.ttl)).saturating_sub(job.age());
        let result = self
            .push
            .deliver(PushMessage {
                endpoint: &recipient.endpoint,
                p256dh: &recipient.p256dh,
                auth: &recipient.auth,
                payload,
                ttl_seconds: u32::try_from(remaining_ttl.as_secs()).unwrap_or(u32::MAX),
                urgency: job.send.urgency,
                topic: job.send.topic.as_deref(),
            })
            .await;
        match result {
            Ok(response) => Ok((
                classify_status(
                    response.status,
                    response.retry_after.as_deref(),
                    SystemTime::now(),
                ),
                Some(response.status),
            )),
            Err(DeliveryError::Deferred(wait)) => Err(wait),
            Err(err) => {
                tracing::debug!(push_service = %origin, error = %err, "no answer from the push service");
                Ok((verdict_for_error(&err), None))
            }
        }
    }

    /// Records every outcome (one statement), drops subscriptions past the
    /// failure threshold, then publishes every result (pipelined confirms).
    /// Recording first means a crash can repeat a result, never lose one.
    async fn record_and_publish(
        &self,
        jobs: &[&Job<'_>],
        concluded: Vec<Concluded>,
        publisher: &Publisher,
    ) -> Result<(), Interrupted> {
        if concluded.is_empty() {
            return Ok(());
        }
        let mut concluded = concluded;
        let outcomes: Vec<deliveries::Outcome> = concluded
            .iter()
            .filter(|c| !c.already_recorded)
            .map(|c| deliveries::Outcome {
                event_id: jobs[c.job].notification.id.clone(),
                subscription_id: c.recipient.id,
                status: c.status,
                http_status: c.http_status,
                reason: c.reason,
                attempt_counts: c.attempt_counts,
                health: match (c.recipient.stored, c.status) {
                    (true, DeliveryStatus::Delivered) => Health::Success,
                    (true, DeliveryStatus::Failed | DeliveryStatus::Exhausted) => Health::Failure,
                    _ => Health::Unchanged,
                },
            })
            .collect();
        if !outcomes.is_empty() {
            let recording =
                deliveries::record_many(&self.pool, &outcomes, self.settings.replica).await?;
            // An outcome not recorded lost its claim: this replica was taken
            // for dead, and the one that took over records and publishes.
            concluded.retain(|c| {
                let kept = c.already_recorded
                    || recording.recorded.contains(&key(jobs[c.job], &c.recipient));
                if !kept {
                    tracing::warn!(event_id = %jobs[c.job].notification.id, subscription = %c.recipient.id, "another replica took this delivery over; its outcome is that replica's to record");
                }
                kept
            });
            let limit = self.settings.max_consecutive_failures;
            for (id, failures) in recording.failures {
                if limit > 0 && failures >= limit {
                    let deleted = subscriptions::delete_by_id(&self.pool, id).await?;
                    self.metrics().subscriptions_deleted("failing", deleted);
                    tracing::warn!(subscription = %id, failures, "subscription deleted after consecutive failures (PUSHQ_MAX_CONSECUTIVE_FAILURES)");
                }
            }
        }
        let now = Utc::now();
        let events: Vec<CloudEvent> = concluded
            .iter()
            .filter_map(|c| {
                let job = jobs[c.job];
                let Some(result_type) = c.result_type() else {
                    c.span.record("pushq.outcome", "deferred");
                    return None;
                };
                c.span.record("pushq.outcome", result_type.outcome());
                if matches!(result_type, ResultType::Failed) {
                    c.span.record("otel.status_code", "error");
                }
                if !c.already_recorded {
                    self.metrics().delivery(result_type, &c.origin);
                    if c.status.is_final() {
                        self.metrics().delivery_latency(
                            (now - job.ttl_started).to_std().unwrap_or(Duration::ZERO),
                        );
                    }
                }
                let data = DeliveryResult {
                    notification: job.notification.id.clone(),
                    subscription: c.recipient.stored.then(|| c.recipient.id.to_string()),
                    user: c.recipient.user.clone(),
                    push_service: c.origin.clone(),
                    status: c.http_status,
                    attempt: c.attempt,
                    reason: c.reason,
                    retry_in_ms: c.retry_in_ms,
                };
                Some(results::result_event(
                    result_type,
                    &data,
                    &self.settings.source,
                    job.trace_context(&c.span).as_ref(),
                ))
            })
            .collect();
        results::publish(publisher, &events).await?;
        for c in concluded.iter().filter(|c| c.status.is_final()) {
            self.marks
                .mark(&jobs[c.job].notification.id, c.recipient.id);
        }
        Ok(())
    }

    async fn publish_result(
        &self,
        job: &Job<'_>,
        result_type: ResultType,
        data: &DeliveryResult,
        publisher: &Publisher,
    ) -> Result<(), BrokerError> {
        self.metrics().delivery(result_type, &data.push_service);
        let event = results::result_event(
            result_type,
            data,
            &self.settings.source,
            job.trace_context(job.span).as_ref(),
        );
        results::publish(publisher, &[event]).await
    }
}

/// What a push service said (with its HTTP status), or `Err(wait)` when our
/// own rate limit deferred the message unsent.
type Answer = Result<(Verdict, Option<u16>), Duration>;

/// A recipient waiting for its claim, with the index of its job.
struct Pending {
    job: usize,
    recipient: Recipient,
    origin: String,
}

fn key(job: &Job<'_>, recipient: &Recipient) -> deliveries::Key {
    deliveries::Key {
        event_id: job.notification.id.clone(),
        subscription_id: recipient.id,
    }
}

/// One recipient's outcome on its way to the table and the results exchange.
struct Concluded {
    job: usize,
    /// The delivery's CLIENT span, or the job's when nothing was attempted.
    span: Span,
    recipient: Recipient,
    origin: String,
    attempt: u32,
    status: DeliveryStatus,
    http_status: Option<u16>,
    reason: Option<ResultReason>,
    retry_in_ms: Option<u64>,
    /// Recorded by an earlier attempt; only its result is missing.
    already_recorded: bool,
    /// False for a delivery our own limiter deferred before sending: it is
    /// not an attempt, and no result is published for it.
    attempt_counts: bool,
}

impl Concluded {
    fn new(
        pending: Pending,
        span: Span,
        attempt: u32,
        status: DeliveryStatus,
        http_status: Option<u16>,
        reason: Option<ResultReason>,
    ) -> Self {
        Self {
            job: pending.job,
            span,
            recipient: pending.recipient,
            origin: pending.origin,
            attempt,
            status,
            http_status,
            reason,
            retry_in_ms: None,
            already_recorded: false,
            attempt_counts: true,
        }
    }

    fn result_type(&self) -> Option<ResultType> {
        if !self.attempt_counts {
            return None;
        }
        match self.status {
            DeliveryStatus::Delivered => Some(ResultType::Succeeded),
            DeliveryStatus::Gone => Some(ResultType::Gone),
            DeliveryStatus::Expired => Some(ResultType::Expired),
            DeliveryStatus::Failed | DeliveryStatus::Exhausted => Some(ResultType::Failed),
            DeliveryStatus::Retrying => Some(ResultType::Retrying),
            DeliveryStatus::Sending => None,
        }
    }
}

/// What one notification's recipients need next, gathered while they are handled.
#[derive(Default)]
struct Batch {
    retries: BTreeMap<u64, Vec<Uuid>>,
    exhausted: Vec<Uuid>,
    requeue_after: Option<Duration>,
}

impl Batch {
    fn retry(&mut self, id: Uuid, delay_ms: u64) {
        self.retries.entry(delay_ms).or_default().push(id);
    }

    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(
            self.requeue_after
                .map_or(after, |current| current.min(after)),
        );
    }

    fn into_outcome(self, pipeline: &Pipeline, job: &Job<'_>) -> Outcome {
        if let Some(after) = self.requeue_after {
            return Outcome::Requeue { after };
        }
        let mut follow_ups: Vec<FollowUp> = self
            .retries
            .into_iter()
            .map(|(delay_ms, ids)| FollowUp::Retry {
                delay_ms,
                event: pipeline.retry_event(job, ids),
            })
            .collect();
        if !self.exhausted.is_empty() {
            follow_ups.push(FollowUp::Exhausted {
                event: pipeline.retry_event(job, self.exhausted),
                reason: InvalidEvent::new(
                    InvalidKind::RetriesExhausted,
                    format!(
                        "delivery failed after {} attempts; replay with `pushq-worker dead replay --kind retries_exhausted`",
                        pipeline.settings.schedule.max_attempts()
                    ),
                ),
            });
        }
        Outcome::Ack { follow_ups }
    }
}

impl Pipeline {
    fn retry_event(&self, job: &Job<'_>, subscriptions: Vec<Uuid>) -> CloudEvent {
        self.internal_event(
            job,
            event_types::INTERNAL_RETRY,
            json!({ "subscriptions": subscriptions }),
        )
    }

    /// An internal event carrying the notification, when a worker first got
    /// it, and `extra` fields; it continues the notification's trace.
    fn internal_event(
        &self,
        job: &Job<'_>,
        event_type: &str,
        extra: serde_json::Value,
    ) -> CloudEvent {
        let mut data = json!({
            "event": serde_json::from_slice::<serde_json::Value>(&job.notification.to_structured_json())
                .unwrap_or_default(),
            "first_received": job.first_received,
        });
        if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        let mut event = CloudEvent::new(event_type, &self.settings.source, data);
        if let Some(trace) = job.trace_context(job.span) {
            event.traceparent = Some(trace.traceparent);
            event.tracestate = trace.tracestate;
        }
        event
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

/// A CLIENT span for one attempt to deliver; DESIGN §2.6 names its attributes.
/// It carries the push service's host only: never the endpoint's path, which
/// identifies the browser.
fn deliver_span(job: &Job<'_>, origin: &str, attempt: u32) -> Span {
    let host = url::Url::parse(origin)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default();
    tracing::info_span!(
        parent: job.span,
        "pushq.deliver",
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = host,
        pushq.attempt = attempt,
        http.response.status_code = Empty,
        pushq.outcome = Empty,
    )
}

fn interrupted(event: &CloudEvent, err: &Interrupted) -> Outcome {
    tracing::warn!(event_id = %event.id, error = %err, "interrupted; the event goes back to the queue");
    Outcome::Requeue {
        after: DEPENDENCY_BACKOFF,
    }
}

/// The data of an internal event that carries a notification.
trait CarrierData: serde::de::DeserializeOwned {
    /// As in "a retry event's data is not a retry".
    const NAME: &'static str;
    fn notification(&self) -> &serde_json::Value;
}

impl CarrierData for RetryData {
    const NAME: &'static str = "retry";
    fn notification(&self) -> &serde_json::Value {
        &self.event
    }
}

impl CarrierData for ChunkData {
    const NAME: &'static str = "chunk";
    fn notification(&self) -> &serde_json::Value {
        &self.event
    }
}

/// An internal event's data and the notification it carries, checked again:
/// it may have been replayed from a dead letter an operator edited.
fn carried<T: CarrierData>(
    event: &CloudEvent,
) -> Result<(T, CloudEvent, NotificationSend), InvalidEvent> {
    let data = event
        .data
        .as_ref()
        .and_then(|data| T::deserialize(data).ok())
        .ok_or_else(|| {
            InvalidEvent::data(format!(
                "a {name} event's data is not a {name}",
                name = T::NAME
            ))
        })?;
    let notification = serde_json::to_vec(data.notification())
        .map_err(|err| InvalidEvent::data(err.to_string()))
        .and_then(|bytes| CloudEvent::from_structured(&bytes))?;
    match ProducerEvent::parse(&notification.event_type, notification.data.as_ref())? {
        ProducerEvent::Send(send) => Ok((data, notification, send)),
        _ => Err(InvalidEvent::new(
            InvalidKind::UnknownType,
            "an internal event carries an event that is not a notification",
        )),
    }
}

fn one_off(send: &NotificationSend) -> Option<Recipient> {
    let Target::Subscription(subscription) = &send.to else {
        return None;
    };
    Some(Recipient {
        id: results::derived_id(&["one-off", &subscription.endpoint]),
        stored: false,
        user: None,
        endpoint: subscription.endpoint.clone(),
        p256dh: subscription.keys.p256dh.clone(),
        auth: subscription.keys.auth.clone(),
    })
}

fn verdict_for_error(err: &DeliveryError) -> Verdict {
    match err {
        DeliveryError::Timeout => Verdict::Retry {
            reason: ResultReason::Timeout,
            after: None,
        },
        DeliveryError::Connect(_) | DeliveryError::Request(_) => Verdict::Retry {
            reason: ResultReason::ConnectionError,
            after: None,
        },
        DeliveryError::Refused(_) => Verdict::Failed(ResultReason::EndpointRefused),
        DeliveryError::Encrypt(_) | DeliveryError::Keys(_) | DeliveryError::Vapid => {
            Verdict::Failed(ResultReason::BadRequest)
        }
        // Handled before classification: a deferral is not an attempt.
        DeliveryError::Deferred(wait) => Verdict::Retry {
            reason: ResultReason::Throttled,
            after: Some(*wait),
        },
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Uniform in [0, 1), for full jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 1.0 - f64::EPSILON;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(event_type: &str, data: serde_json::Value) -> CloudEvent {
        CloudEvent::new(event_type, "/tests", data)
    }

    #[test]
    fn an_internal_event_must_carry_its_own_data_and_a_notification() {
        let not_a_retry = carried::<RetryData>(&internal(event_types::INTERNAL_RETRY, json!({})))
            .expect_err("no fields");
        assert_eq!(not_a_retry.message, "a retry event's data is not a retry");
        let not_a_chunk = carried::<ChunkData>(&internal(event_types::INTERNAL_CHUNK, json!([])))
            .expect_err("not an object");
        assert_eq!(not_a_chunk.message, "a chunk event's data is not a chunk");

        let register = json!({"specversion": "1.0", "id": "r", "source": "/t",
            "type": "pushq.subscription.unregister", "data": {"user": "u"}});
        let carries_register = internal(
            event_types::INTERNAL_RETRY,
            json!({"event": register, "subscriptions": [], "first_received": "2026-11-22T00:00:00Z"}),
        );
        let refused = carried::<RetryData>(&carries_register).expect_err("not a notification");
        assert_eq!(refused.kind, InvalidKind::UnknownType);

        let send = json!({"specversion": "1.0", "id": "n", "source": "/t",
            "type": "pushq.notification.send", "data": {"to": {"user": "u"}, "payload": "hi"}});
        let chunk = internal(
            event_types::INTERNAL_CHUNK,
            json!({"event": send, "after": null, "until": Uuid::nil(), "first_received": "2026-11-22T00:00:00Z"}),
        );
        let (data, notification, send) = carried::<ChunkData>(&chunk).expect("a chunk");
        assert_eq!(data.until, Uuid::nil());
        assert_eq!(notification.id, "n");
        assert_eq!(send.to, Target::User("u".into()));
    }
}
