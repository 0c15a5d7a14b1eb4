//! One message from decoding to its [`Outcome`]: validate, store or resolve
//! the targets, deliver to each, record. It decides nothing about acks; the
//! consumer maps the outcome to an ack, a dead letter or a requeue.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use lapin::BasicProperties;
use pushq_schemas::data::{ProducerEvent, endpoint_origin};
use pushq_schemas::{
    CloudEvent, InvalidEvent, InvalidKind, NotificationSend, ResultReason, SubscriptionRegister,
    SubscriptionUnregister, Target,
};
use ring::digest::{SHA256, digest};
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::decode::decode;
use crate::push::{DeliveryError, PushClient, PushMessage, Verdict, classify_status};
use crate::store::StoreError;
use crate::store::deliveries::{self, Claim, DeliveryStatus};
use crate::store::subscriptions::{self, StoredSubscription};

/// What to do with the message that was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything it asked for is durable: ack it.
    Ack,
    /// It can never be processed: copy it to the dead-letter queue, then ack.
    DeadLetter(InvalidEvent),
    /// Not now (a dependency failed, or another replica holds a delivery):
    /// hand it back to the broker after `after`.
    Requeue { after: Duration },
}

#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// How long a claimed delivery stays reserved for the worker sending it.
    pub claim_lease: Duration,
    /// Delays before each retry; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// Deliveries of one notification in flight at once.
    pub fanout_concurrency: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            claim_lease: Duration::from_secs(60),
            retry_delays: vec![Duration::from_secs(1); 3],
            fanout_concurrency: 32,
        }
    }
}

/// A pause before handing back a message whose dependency failed.
const DEPENDENCY_BACKOFF: Duration = Duration::from_secs(1);
/// How long after its creation an event with no matching subscription is
/// looked up again (see [`Pipeline::resolve_after_settling`]).
pub const REGISTRATION_SETTLE: Duration = Duration::from_secs(2);
/// Until retries go through delay queues, a retry is a requeue after at most this.
const MAX_INLINE_RETRY_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Pipeline {
    pool: PgPool,
    push: PushClient,
    settings: PipelineSettings,
}

/// One subscription a notification goes to.
struct Recipient {
    /// The stored id, or for a one-off subscription a UUID derived from its endpoint.
    id: Uuid,
    stored: bool,
    endpoint: String,
    p256dh: String,
    auth: String,
}

impl From<StoredSubscription> for Recipient {
    fn from(stored: StoredSubscription) -> Self {
        Self {
            id: stored.id,
            stored: true,
            endpoint: stored.endpoint,
            p256dh: stored.p256dh,
            auth: stored.auth,
        }
    }
}

/// What became of one recipient.
enum RecipientOutcome {
    Final,
    Requeue(Duration),
}

impl Pipeline {
    pub fn new(pool: PgPool, push: PushClient, settings: PipelineSettings) -> Self {
        Self {
            pool,
            push,
            settings,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Handles one AMQP message of either queue.
    pub async fn handle(&self, properties: &BasicProperties, body: &[u8]) -> Outcome {
        let received_at = Utc::now();
        let event = match decode(properties, body) {
            Ok(event) => event,
            Err(invalid) => return Outcome::DeadLetter(invalid),
        };
        let parsed = match ProducerEvent::parse(&event.event_type, event.data.as_ref()) {
            Ok(parsed) => parsed,
            Err(invalid) => return Outcome::DeadLetter(invalid),
        };
        let result = match parsed {
            ProducerEvent::Register(register) => self.register(&register).await,
            ProducerEvent::Unregister(unregister) => self.unregister(&unregister).await,
            ProducerEvent::Send(send) => return self.send(&event, &send, received_at).await,
        };
        match result {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(event_id = %event.id, error = %err, "storage failed; the event goes back to the queue");
                Outcome::Requeue {
                    after: DEPENDENCY_BACKOFF,
                }
            }
        }
    }

    async fn register(&self, register: &SubscriptionRegister) -> Result<Outcome, StoreError> {
        if let Err(refusal) = self.push.policy().check(&register.subscription.endpoint) {
            return Ok(Outcome::DeadLetter(InvalidEvent::new(
                InvalidKind::EndpointRefused,
                refusal.0,
            )));
        }
        let id = subscriptions::upsert(&self.pool, register).await?;
        tracing::debug!(subscription = %id, "subscription registered");
        Ok(Outcome::Ack)
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
        Ok(Outcome::Ack)
    }

    async fn send(
        &self,
        event: &CloudEvent,
        send: &NotificationSend,
        received_at: DateTime<Utc>,
    ) -> Outcome {
        let recipients = match self.resolve(&send.to).await {
            Ok(Ok(recipients)) => recipients,
            Ok(Err(refused)) => return Outcome::DeadLetter(refused),
            Err(err) => {
                tracing::warn!(event_id = %event.id, error = %err, "resolving targets failed; the event goes back to the queue");
                return Outcome::Requeue {
                    after: DEPENDENCY_BACKOFF,
                };
            }
        };
        let ttl_started = event.time.unwrap_or(received_at);
        let recipients = if recipients.is_empty() && !matches!(send.to, Target::Subscription(_)) {
            match self.resolve_after_settling(&send.to, ttl_started).await {
                Ok(recipients) => recipients,
                Err(err) => {
                    tracing::warn!(event_id = %event.id, error = %err, "resolving targets failed; the event goes back to the queue");
                    return Outcome::Requeue {
                        after: DEPENDENCY_BACKOFF,
                    };
                }
            }
        } else {
            recipients
        };
        if recipients.is_empty() {
            tracing::info!(event_id = %event.id, target = send.to.kind(), "no subscription matches; skipped");
            return Outcome::Ack;
        }
        let payload = send.payload_bytes();
        let outcomes: Vec<Result<RecipientOutcome, StoreError>> = stream::iter(recipients)
            .map(|recipient| self.deliver(event, send, &payload, ttl_started, recipient))
            .buffer_unordered(self.settings.fanout_concurrency.max(1))
            .collect()
            .await;
        let mut requeue_after: Option<Duration> = None;
        for outcome in outcomes {
            match outcome {
                Ok(RecipientOutcome::Final) => {}
                Ok(RecipientOutcome::Requeue(after)) => {
                    requeue_after = Some(requeue_after.map_or(after, |current| current.min(after)));
                }
                Err(err) => {
                    tracing::warn!(event_id = %event.id, error = %err, "recording a delivery failed; the event goes back to the queue");
                    requeue_after = Some(DEPENDENCY_BACKOFF);
                }
            }
        }
        match requeue_after {
            None => Outcome::Ack,
            Some(after) => Outcome::Requeue { after },
        }
    }

    /// A service that registers a subscription and sends to it right away
    /// publishes to two queues that are consumed concurrently, so the send may
    /// be handled before the registration is stored. A young event whose stored
    /// target matches nothing is looked up once more when it is
    /// [`REGISTRATION_SETTLE`] old, instead of being skipped at once.
    async fn resolve_after_settling(
        &self,
        target: &Target,
        ttl_started: DateTime<Utc>,
    ) -> Result<Vec<Recipient>, StoreError> {
        let age = (Utc::now() - ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let Some(wait) = REGISTRATION_SETTLE.checked_sub(age) else {
            return Ok(Vec::new());
        };
        tokio::time::sleep(wait).await;
        Ok(self.resolve(target).await?.unwrap_or_default())
    }

    /// The recipients of a target. A one-off subscription the endpoint policy
    /// refuses is the event's fault: `Ok(Err(dead letter reason))`.
    async fn resolve(
        &self,
        target: &Target,
    ) -> Result<Result<Vec<Recipient>, InvalidEvent>, StoreError> {
        let stored = match target {
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
                return Ok(Ok(vec![Recipient {
                    id: one_off_id(&subscription.endpoint),
                    stored: false,
                    endpoint: subscription.endpoint.clone(),
                    p256dh: subscription.keys.p256dh.clone(),
                    auth: subscription.keys.auth.clone(),
                }]));
            }
        };
        Ok(Ok(stored.into_iter().map(Recipient::from).collect()))
    }

    async fn deliver(
        &self,
        event: &CloudEvent,
        send: &NotificationSend,
        payload: &[u8],
        ttl_started: DateTime<Utc>,
        recipient: Recipient,
    ) -> Result<RecipientOutcome, StoreError> {
        let attempt = match deliveries::claim(
            &self.pool,
            &event.id,
            recipient.id,
            self.settings.claim_lease,
        )
        .await?
        {
            Claim::Granted { attempt } => attempt,
            Claim::Done(_) => return Ok(RecipientOutcome::Final),
            Claim::HeldElsewhere { remaining } => {
                return Ok(RecipientOutcome::Requeue(
                    remaining.min(MAX_INLINE_RETRY_DELAY),
                ));
            }
        };
        let origin = endpoint_origin(&recipient.endpoint);
        let elapsed = u64::try_from((Utc::now() - ttl_started).num_seconds()).unwrap_or(0);
        if elapsed > u64::from(send.ttl) {
            tracing::info!(event_id = %event.id, push_service = %origin, "TTL passed before delivery; expired");
            self.finish(event, &recipient, DeliveryStatus::Expired, None)
                .await?;
            return Ok(RecipientOutcome::Final);
        }
        let remaining_ttl = send
            .ttl
            .saturating_sub(u32::try_from(elapsed).unwrap_or(u32::MAX));
        let result = self
            .push
            .deliver(PushMessage {
                endpoint: &recipient.endpoint,
                p256dh: &recipient.p256dh,
                auth: &recipient.auth,
                payload,
                ttl_seconds: remaining_ttl,
                urgency: send.urgency,
                topic: send.topic.as_deref(),
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
            Err(err) => (verdict_for_error(&err), None),
        };
        match verdict {
            Verdict::Delivered => {
                self.finish(event, &recipient, DeliveryStatus::Delivered, status)
                    .await?;
                tracing::debug!(event_id = %event.id, push_service = %origin, attempt, "delivered");
                Ok(RecipientOutcome::Final)
            }
            Verdict::Gone => {
                self.finish(event, &recipient, DeliveryStatus::Gone, status)
                    .await?;
                if recipient.stored {
                    subscriptions::delete_by_id(&self.pool, recipient.id).await?;
                }
                tracing::info!(event_id = %event.id, subscription = %recipient.id, push_service = %origin, "subscription gone; deleted");
                Ok(RecipientOutcome::Final)
            }
            Verdict::Failed(reason) => {
                if matches!(reason, ResultReason::Unauthorized | ResultReason::Forbidden) {
                    tracing::error!(push_service = %origin, status, "the push service refused our VAPID credentials: check PUSHQ_VAPID_PRIVATE_KEY and PUSHQ_VAPID_SUBJECT");
                } else {
                    tracing::warn!(event_id = %event.id, push_service = %origin, status, reason = reason.as_str(), "delivery failed");
                }
                self.finish(event, &recipient, DeliveryStatus::Failed, status)
                    .await?;
                Ok(RecipientOutcome::Final)
            }
            Verdict::Retry { reason, after } => {
                let retries_done = usize::try_from(attempt)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(1);
                let Some(delay) = self.settings.retry_delays.get(retries_done).copied() else {
                    tracing::warn!(event_id = %event.id, push_service = %origin, attempt, reason = reason.as_str(), "retries exhausted");
                    self.finish(event, &recipient, DeliveryStatus::Failed, status)
                        .await?;
                    return Ok(RecipientOutcome::Final);
                };
                deliveries::record(
                    &self.pool,
                    &event.id,
                    recipient.id,
                    DeliveryStatus::Retrying,
                    status,
                )
                .await?;
                let after = after.unwrap_or(delay).min(MAX_INLINE_RETRY_DELAY);
                tracing::info!(event_id = %event.id, push_service = %origin, attempt, reason = reason.as_str(), retry_in_ms = after.as_millis() as u64, "will retry");
                Ok(RecipientOutcome::Requeue(after))
            }
        }
    }

    async fn finish(
        &self,
        event: &CloudEvent,
        recipient: &Recipient,
        status: DeliveryStatus,
        http_status: Option<u16>,
    ) -> Result<(), StoreError> {
        deliveries::record(&self.pool, &event.id, recipient.id, status, http_status).await?;
        if recipient.stored {
            match status {
                DeliveryStatus::Delivered => {
                    subscriptions::record_success(&self.pool, recipient.id).await?
                }
                DeliveryStatus::Failed => {
                    subscriptions::record_failure(&self.pool, recipient.id).await?
                }
                _ => {}
            }
        }
        Ok(())
    }
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

/// A stable id for a one-off subscription, so its deliveries are idempotent
/// like a stored one's.
pub fn one_off_id(endpoint: &str) -> Uuid {
    let hash = digest(&SHA256, endpoint.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}
