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
use uuid::Uuid;

use super::{DEPENDENCY_BACKOFF, FollowUp, Outcome, Pipeline};
use crate::broker::BrokerError;
use crate::broker::publisher::Publisher;
use crate::push::{DeliveryError, PushMessage, Verdict, classify_status};
use crate::results;
use crate::retry::RetryDecision;
use crate::store::StoreError;
use crate::store::deliveries::{self, Claim, DeliveryStatus, Recorded};
use crate::store::subscriptions::{self, StoredSubscription};

/// How long after its creation an event with no matching subscription is
/// looked up again (see [`Pipeline::resolve_after_settling`]).
pub const REGISTRATION_SETTLE: Duration = Duration::from_secs(2);
/// The longest a message waits in-process before going back to the broker
/// while another replica holds one of its deliveries.
const MAX_HELD_ELSEWHERE_WAIT: Duration = Duration::from_secs(5);

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

/// One notification being delivered.
struct Job<'a> {
    notification: &'a CloudEvent,
    send: &'a NotificationSend,
    ttl_started: DateTime<Utc>,
    first_received: DateTime<Utc>,
    replay: bool,
}

/// One subscription a notification goes to.
struct Recipient {
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

/// What became of one recipient.
enum RecipientOutcome {
    Final,
    Retry { id: Uuid, delay_ms: u64 },
    Exhausted { id: Uuid },
    Requeue(Duration),
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
    pub(super) async fn notify(
        &self,
        event: &CloudEvent,
        send: &NotificationSend,
        received_at: DateTime<Utc>,
        publisher: &Publisher,
    ) -> Outcome {
        let job = Job {
            notification: event,
            send,
            ttl_started: event.time.unwrap_or(received_at),
            first_received: received_at,
            replay: false,
        };
        let recipients = match self.resolve(send).await {
            Ok(Ok(recipients)) => recipients,
            Ok(Err(refused)) => return Outcome::DeadLetter(refused),
            Err(err) => return interrupted(event, &Interrupted::Store(err)),
        };
        let recipients = if recipients.is_empty() && !matches!(send.to, Target::Subscription(_)) {
            match self.resolve_after_settling(send, job.ttl_started).await {
                Ok(recipients) => recipients,
                Err(err) => return interrupted(event, &Interrupted::Store(err)),
            }
        } else {
            recipients
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
            return match self
                .publish_result(&job, ResultType::Skipped, &data, publisher)
                .await
            {
                Ok(()) => Outcome::ack(),
                Err(err) => interrupted(event, &Interrupted::Broker(err)),
            };
        }
        self.deliver_all(&job, recipients, publisher).await
    }

    /// A `pushq.internal.retry` event back from its delay queue.
    pub(super) async fn retry(
        &self,
        event: &CloudEvent,
        replay: bool,
        publisher: &Publisher,
    ) -> Outcome {
        let Some(data) = event
            .data
            .clone()
            .and_then(|data| serde_json::from_value::<RetryData>(data).ok())
        else {
            return Outcome::DeadLetter(InvalidEvent::data("a retry event's data is not a retry"));
        };
        let notification = match serde_json::to_vec(&data.event)
            .map_err(|err| InvalidEvent::data(err.to_string()))
            .and_then(|bytes| CloudEvent::from_structured(&bytes))
        {
            Ok(notification) => notification,
            Err(invalid) => return Outcome::DeadLetter(invalid),
        };
        let send = match ProducerEvent::parse(&notification.event_type, notification.data.as_ref())
        {
            Ok(ProducerEvent::Send(send)) => send,
            Ok(_) => {
                return Outcome::DeadLetter(InvalidEvent::new(
                    InvalidKind::UnknownType,
                    "a retry carries an event that is not a notification",
                ));
            }
            Err(invalid) => return Outcome::DeadLetter(invalid),
        };
        let job = Job {
            notification: &notification,
            send: &send,
            ttl_started: notification.time.unwrap_or(data.first_received),
            first_received: data.first_received,
            replay,
        };
        let recipients = match self.resolve_ids(&send, &data.subscriptions).await {
            Ok(recipients) => recipients,
            Err(err) => return interrupted(&notification, &Interrupted::Store(err)),
        };
        // Recipients deleted since (gone, unregistered) simply drop out.
        self.deliver_all(&job, recipients, publisher).await
    }

    async fn deliver_all(
        &self,
        job: &Job<'_>,
        recipients: Vec<Recipient>,
        publisher: &Publisher,
    ) -> Outcome {
        let outcomes: Vec<Result<RecipientOutcome, Interrupted>> = stream::iter(recipients)
            .map(|recipient| self.deliver(job, recipient, publisher))
            .buffer_unordered(self.settings.fanout_concurrency.max(1))
            .collect()
            .await;
        let mut retries: BTreeMap<u64, Vec<Uuid>> = BTreeMap::new();
        let mut exhausted = Vec::new();
        let mut requeue_after: Option<Duration> = None;
        for outcome in outcomes {
            match outcome {
                Ok(RecipientOutcome::Final) => {}
                Ok(RecipientOutcome::Retry { id, delay_ms }) => {
                    retries.entry(delay_ms).or_default().push(id)
                }
                Ok(RecipientOutcome::Exhausted { id }) => exhausted.push(id),
                Ok(RecipientOutcome::Requeue(after)) => {
                    requeue_after = Some(requeue_after.map_or(after, |current| current.min(after)));
                }
                Err(err) => {
                    tracing::warn!(event_id = %job.notification.id, error = %err, "delivery interrupted; the event goes back to the queue");
                    requeue_after = Some(DEPENDENCY_BACKOFF);
                }
            }
        }
        if let Some(after) = requeue_after {
            return Outcome::Requeue { after };
        }
        let mut follow_ups: Vec<FollowUp> = retries
            .into_iter()
            .map(|(delay_ms, ids)| FollowUp::Retry {
                delay_ms,
                event: self.retry_event(job, ids),
            })
            .collect();
        if !exhausted.is_empty() {
            follow_ups.push(FollowUp::Exhausted {
                event: self.retry_event(job, exhausted),
                reason: InvalidEvent::new(
                    InvalidKind::RetriesExhausted,
                    format!(
                        "delivery failed after {} attempts; replay with `pushq-worker dead replay --kind retries_exhausted`",
                        self.settings.schedule.max_attempts()
                    ),
                ),
            });
        }
        Outcome::Ack { follow_ups }
    }

    fn retry_event(&self, job: &Job<'_>, subscriptions: Vec<Uuid>) -> CloudEvent {
        let data = RetryData {
            event: serde_json::from_slice(&job.notification.to_structured_json())
                .unwrap_or_default(),
            subscriptions,
            first_received: job.first_received,
        };
        let mut event = CloudEvent::new(
            event_types::INTERNAL_RETRY,
            &self.settings.source,
            serde_json::to_value(data).unwrap_or_default(),
        );
        event.traceparent = job.notification.traceparent.clone();
        event.tracestate = job.notification.tracestate.clone();
        event
    }

    /// The recipients of a target. A one-off subscription the endpoint policy
    /// refuses is the event's fault: `Ok(Err(dead letter reason))`.
    async fn resolve(
        &self,
        send: &NotificationSend,
    ) -> Result<Result<Vec<Recipient>, InvalidEvent>, StoreError> {
        let stored = match &send.to {
            Target::User(user) => subscriptions::find_by_user(&self.pool, user).await?,
            Target::Tag(tag) => subscriptions::find_by_tag(&self.pool, tag).await?,
            Target::Endpoint(endpoint) => subscriptions::find_by_endpoint(&self.pool, endpoint)
                .await?
                .into_iter()
                .collect(),
            Target::Subscription(subscription) => {
                if let Err(refusal) = self.push.policy().check(&subscription.endpoint) {
                    return Ok(Err(InvalidEvent::new(
                        InvalidKind::EndpointRefused,
                        refusal.0,
                    )));
                }
                return Ok(Ok(one_off(send).into_iter().collect()));
            }
        };
        Ok(Ok(stored.into_iter().map(Recipient::from).collect()))
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
    ) -> Result<Vec<Recipient>, StoreError> {
        let age = (Utc::now() - ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let Some(wait) = REGISTRATION_SETTLE.checked_sub(age) else {
            return Ok(Vec::new());
        };
        tokio::time::sleep(wait).await;
        Ok(self.resolve(send).await?.unwrap_or_default())
    }

    async fn deliver(
        &self,
        job: &Job<'_>,
        recipient: Recipient,
        publisher: &Publisher,
    ) -> Result<RecipientOutcome, Interrupted> {
        let origin = endpoint_origin(&recipient.endpoint);
        if let Some(pause) = self.pauses.remaining(&origin) {
            // Not an attempt: the push service asked us to wait.
            return Ok(RecipientOutcome::Retry {
                id: recipient.id,
                delay_ms: self.settings.schedule.tier_for_pause(pause),
            });
        }
        let claim = deliveries::claim(
            &self.pool,
            &job.notification.id,
            recipient.id,
            self.settings.claim_lease,
            job.replay,
        )
        .await?;
        let attempt = match claim {
            Claim::Granted { attempt } => attempt,
            Claim::Done(recorded) => {
                if !recorded.result_published {
                    self.publish_recorded(job, &recipient, &origin, recorded, publisher)
                        .await?;
                }
                return Ok(RecipientOutcome::Final);
            }
            Claim::HeldElsewhere { remaining } => {
                return Ok(RecipientOutcome::Requeue(
                    remaining.min(MAX_HELD_ELSEWHERE_WAIT),
                ));
            }
        };
        let age = (Utc::now() - job.ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let ttl = Duration::from_secs(u64::from(job.send.ttl));
        // Whole seconds, as the TTL header counts them: a TTL of 0 is sent once.
        if age.as_secs() > ttl.as_secs() {
            tracing::info!(event_id = %job.notification.id, push_service = %origin, "TTL passed before delivery; expired");
            self.conclude(
                job,
                &recipient,
                &origin,
                attempt,
                DeliveryStatus::Expired,
                None,
                Some(ResultReason::Expired),
                publisher,
            )
            .await?;
            return Ok(RecipientOutcome::Final);
        }
        let remaining_ttl = ttl.saturating_sub(age);
        let result = self
            .push
            .deliver(PushMessage {
                endpoint: &recipient.endpoint,
                p256dh: &recipient.p256dh,
                auth: &recipient.auth,
                payload: &job.send.payload_bytes(),
                ttl_seconds: u32::try_from(remaining_ttl.as_secs()).unwrap_or(u32::MAX),
                urgency: job.send.urgency,
                topic: job.send.topic.as_deref(),
            })
            .await;
        let (verdict, status) = match result {
            Ok(response) => (
                classify_status(
                    response.status,
                    response.retry_after.as_deref(),
                    SystemTime::now(),
                ),
                Some(response.status),
            ),
            Err(err) => {
                tracing::debug!(push_service = %origin, error = %err, "no answer from the push service");
                (verdict_for_error(&err), None)
            }
        };
        match verdict {
            Verdict::Delivered => {
                self.conclude(
                    job,
                    &recipient,
                    &origin,
                    attempt,
                    DeliveryStatus::Delivered,
                    status,
                    None,
                    publisher,
                )
                .await?;
                Ok(RecipientOutcome::Final)
            }
            Verdict::Gone => {
                tracing::info!(event_id = %job.notification.id, subscription = %recipient.id, push_service = %origin, "subscription gone");
                self.conclude(
                    job,
                    &recipient,
                    &origin,
                    attempt,
                    DeliveryStatus::Gone,
                    status,
                    Some(ResultReason::Gone),
                    publisher,
                )
                .await?;
                Ok(RecipientOutcome::Final)
            }
            Verdict::Failed(reason) => {
                if matches!(reason, ResultReason::Unauthorized | ResultReason::Forbidden) {
                    tracing::error!(push_service = %origin, status, "the push service refused our VAPID credentials: check PUSHQ_VAPID_PRIVATE_KEY and PUSHQ_VAPID_SUBJECT");
                } else {
                    tracing::warn!(event_id = %job.notification.id, push_service = %origin, status, reason = reason.as_str(), "delivery failed");
                }
                self.conclude(
                    job,
                    &recipient,
                    &origin,
                    attempt,
                    DeliveryStatus::Failed,
                    status,
                    Some(reason),
                    publisher,
                )
                .await?;
                Ok(RecipientOutcome::Final)
            }
            Verdict::Retry { reason, after } => {
                if let Some(after) = after {
                    self.pauses
                        .pause(&origin, after.min(self.settings.schedule.retry_after_max()));
                }
                let decision = self.settings.schedule.decide(
                    attempt,
                    after,
                    jitter(),
                    ttl.saturating_sub(age),
                );
                match decision {
                    RetryDecision::After { delay_ms } => {
                        deliveries::record(
                            &self.pool,
                            &job.notification.id,
                            recipient.id,
                            DeliveryStatus::Retrying,
                            status,
                            Some(reason),
                        )
                        .await?;
                        let data = self.result_data(
                            job,
                            &recipient,
                            &origin,
                            attempt,
                            status,
                            Some(reason),
                            Some(delay_ms),
                        );
                        self.publish_result(job, ResultType::Retrying, &data, publisher)
                            .await?;
                        tracing::info!(event_id = %job.notification.id, push_service = %origin, attempt, reason = reason.as_str(), retry_in_ms = delay_ms, "will retry");
                        Ok(RecipientOutcome::Retry {
                            id: recipient.id,
                            delay_ms,
                        })
                    }
                    RetryDecision::Exhausted => {
                        tracing::warn!(event_id = %job.notification.id, push_service = %origin, attempt, reason = reason.as_str(), "retries exhausted");
                        self.conclude(
                            job,
                            &recipient,
                            &origin,
                            attempt,
                            DeliveryStatus::Exhausted,
                            status,
                            Some(ResultReason::RetriesExhausted),
                            publisher,
                        )
                        .await?;
                        Ok(RecipientOutcome::Exhausted { id: recipient.id })
                    }
                    RetryDecision::Expired => {
                        tracing::info!(event_id = %job.notification.id, push_service = %origin, attempt, "the next retry would start after the TTL; expired");
                        self.conclude(
                            job,
                            &recipient,
                            &origin,
                            attempt,
                            DeliveryStatus::Expired,
                            status,
                            Some(ResultReason::Expired),
                            publisher,
                        )
                        .await?;
                        Ok(RecipientOutcome::Final)
                    }
                }
            }
        }
    }

    /// Records a final outcome, keeps the subscription's health, and
    /// publishes the result.
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        job: &Job<'_>,
        recipient: &Recipient,
        origin: &str,
        attempt: u32,
        status: DeliveryStatus,
        http_status: Option<u16>,
        reason: Option<ResultReason>,
        publisher: &Publisher,
    ) -> Result<(), Interrupted> {
        deliveries::record(
            &self.pool,
            &job.notification.id,
            recipient.id,
            status,
            http_status,
            reason,
        )
        .await?;
        if recipient.stored {
            match status {
                DeliveryStatus::Delivered => {
                    subscriptions::record_success(&self.pool, recipient.id).await?
                }
                DeliveryStatus::Failed | DeliveryStatus::Exhausted => {
                    let failures = subscriptions::record_failure(&self.pool, recipient.id).await?;
                    let limit = self.settings.max_consecutive_failures;
                    if limit > 0 && failures >= limit {
                        subscriptions::delete_by_id(&self.pool, recipient.id).await?;
                        tracing::warn!(subscription = %recipient.id, push_service = %origin, failures, "subscription deleted after consecutive failures (PUSHQ_MAX_CONSECUTIVE_FAILURES)");
                    }
                }
                _ => {}
            }
        }
        self.publish_recorded(
            job,
            recipient,
            origin,
            Recorded {
                status,
                attempts: attempt,
                http_status,
                reason,
                result_published: false,
            },
            publisher,
        )
        .await
    }

    async fn publish_recorded(
        &self,
        job: &Job<'_>,
        recipient: &Recipient,
        origin: &str,
        recorded: Recorded,
        publisher: &Publisher,
    ) -> Result<(), Interrupted> {
        let result_type = match recorded.status {
            DeliveryStatus::Delivered => ResultType::Succeeded,
            DeliveryStatus::Gone => ResultType::Gone,
            DeliveryStatus::Expired => ResultType::Expired,
            DeliveryStatus::Failed | DeliveryStatus::Exhausted => ResultType::Failed,
            DeliveryStatus::Sending | DeliveryStatus::Retrying => return Ok(()),
        };
        let data = self.result_data(
            job,
            recipient,
            origin,
            recorded.attempts.max(1),
            recorded.http_status,
            recorded.reason,
            None,
        );
        self.publish_result(job, result_type, &data, publisher)
            .await?;
        deliveries::mark_result_published(&self.pool, &job.notification.id, recipient.id).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn result_data(
        &self,
        job: &Job<'_>,
        recipient: &Recipient,
        origin: &str,
        attempt: u32,
        status: Option<u16>,
        reason: Option<ResultReason>,
        retry_in_ms: Option<u64>,
    ) -> DeliveryResult {
        DeliveryResult {
            notification: job.notification.id.clone(),
            subscription: recipient.stored.then(|| recipient.id.to_string()),
            user: recipient.user.clone(),
            push_service: origin.to_owned(),
            status,
            attempt,
            reason,
            retry_in_ms,
        }
    }

    async fn publish_result(
        &self,
        job: &Job<'_>,
        result_type: ResultType,
        data: &DeliveryResult,
        publisher: &Publisher,
    ) -> Result<(), BrokerError> {
        let event = results::result_event(
            result_type,
            data,
            &self.settings.source,
            job.notification.traceparent.as_deref(),
        );
        results::publish(publisher, &event).await
    }
}

fn interrupted(event: &CloudEvent, err: &Interrupted) -> Outcome {
    tracing::warn!(event_id = %event.id, error = %err, "interrupted; the event goes back to the queue");
    Outcome::Requeue {
        after: DEPENDENCY_BACKOFF,
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
    }
}

/// Uniform in [0, 1), for full jitter.
fn jitter() -> f64 {
    let mut bytes = [0u8; 8];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return 1.0 - f64::EPSILON;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
