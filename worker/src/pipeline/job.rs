//! One notification being delivered, owning its data, and who it goes to;
//! the internal events (retries, chunks) that carry it between steps.

use std::time::Duration;

use chrono::{DateTime, Utc};
use pushq_schemas::data::ProducerEvent;
use pushq_schemas::{CloudEvent, InvalidEvent, InvalidKind, NotificationSend, Target};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Span;
use uuid::Uuid;

use crate::results;
use crate::store::deliveries;
use crate::store::subscriptions::StoredSubscription;
use crate::telemetry::{self, TraceContext};

/// One notification (or one retry or chunk of it) being delivered.
#[derive(Debug)]
pub(super) struct Job {
    /// The message's CONSUMER span: the parent of each delivery's span.
    pub span: Span,
    pub notification: CloudEvent,
    pub send: NotificationSend,
    /// When a worker first received the notification.
    pub first_received: DateTime<Utc>,
    /// Its TTL clock: the event's `time`, else its first receipt.
    pub ttl_started: DateTime<Utc>,
    /// Replayed from the dead-letter queue: exhausted deliveries may go again.
    pub replay: bool,
}

impl Job {
    pub fn new(
        span: Span,
        notification: CloudEvent,
        send: NotificationSend,
        first_received: DateTime<Utc>,
        replay: bool,
    ) -> Self {
        Self {
            ttl_started: notification.time.unwrap_or(first_received),
            span,
            notification,
            send,
            first_received,
            replay,
        }
    }

    /// How long the notification's TTL clock has been running.
    pub fn age(&self) -> Duration {
        (Utc::now() - self.ttl_started)
            .to_std()
            .unwrap_or(Duration::ZERO)
    }

    pub fn ttl_left(&self) -> Duration {
        Duration::from_secs(u64::from(self.send.ttl)).saturating_sub(self.age())
    }

    /// Past its TTL: never sent. A TTL of 0 ("now or never") is sent once
    /// within its first second; any other is sent while a part of a second is
    /// left, so the `TTL` header is never 0 for a notification that had more.
    pub fn expired(&self) -> bool {
        let ttl = Duration::from_secs(u64::from(self.send.ttl));
        self.age() >= ttl.max(Duration::from_secs(1))
    }

    /// The `TTL` header: what is left, in whole seconds rounded up, so a
    /// notification sent at once carries exactly the TTL its producer asked.
    pub fn ttl_header(&self) -> u32 {
        let left = self.ttl_left();
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(seconds)
            .unwrap_or(u32::MAX)
            .min(self.send.ttl)
    }

    /// An event without `time` counts its TTL from its first receipt; a
    /// delivery row older than this receipt (a redelivery after a crash) is
    /// an earlier one.
    pub fn received_no_later_than(&mut self, first_claimed: DateTime<Utc>) {
        if self.notification.time.is_none() && first_claimed < self.ttl_started {
            self.ttl_started = first_claimed;
            self.first_received = first_claimed;
        }
    }

    pub fn key(&self, recipient: &Recipient) -> deliveries::Key {
        deliveries::Key {
            event_source: self.notification.source.clone(),
            event_id: self.notification.id.clone(),
            subscription_id: recipient.id,
        }
    }

    /// The trace context an event continuing `span` carries: the span's own
    /// when spans are exported, else the notification's, passed on unchanged.
    pub fn trace_context(&self, span: &Span) -> Option<TraceContext> {
        telemetry::trace_context(span).or_else(|| {
            Some(TraceContext {
                traceparent: self.notification.traceparent.clone()?,
                tracestate: self.notification.tracestate.clone(),
            })
        })
    }

    /// An internal event carrying the notification, when a worker first got
    /// it, and `extra` fields; it continues the notification's trace.
    pub fn internal_event(
        &self,
        event_type: &str,
        source: &str,
        extra: serde_json::Value,
    ) -> CloudEvent {
        let mut data = json!({
            "event": serde_json::from_slice::<serde_json::Value>(&self.notification.to_structured_json())
                .unwrap_or_default(),
            "first_received": self.first_received,
        });
        if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        let mut event = CloudEvent::new(event_type, source, data);
        if let Some(trace) = self.trace_context(&self.span) {
            event.traceparent = Some(trace.traceparent);
            event.tracestate = trace.tracestate;
        }
        event
    }
}

/// One subscription a notification goes to.
#[derive(Debug, Clone)]
pub(super) struct Recipient {
    /// The stored id, or for a one-off subscription a UUID derived from its endpoint.
    pub id: Uuid,
    pub stored: bool,
    pub user: Option<String>,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
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

/// The recipient of a notification to a one-off subscription.
pub(super) fn one_off(send: &NotificationSend) -> Option<Recipient> {
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

/// The data of an internal event that carries a notification.
pub(super) trait CarrierData: serde::de::DeserializeOwned {
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
pub(super) fn carried<T: CarrierData>(
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

#[cfg(test)]
mod tests {
    use pushq_schemas::event_types;

    use super::*;

    fn job_aged(ttl: u32, age: Duration) -> Job {
        let mut send = NotificationSend::new(Target::User("u".into()), Some(json!("hi")));
        send.ttl = ttl;
        let mut notification = CloudEvent::new(
            event_types::NOTIFICATION_SEND,
            "/tests",
            serde_json::to_value(&send).expect("send"),
        );
        let sent = Utc::now() - chrono::Duration::from_std(age).expect("age");
        notification.time = Some(sent);
        Job::new(Span::none(), notification, send, sent, false)
    }

    #[test]
    fn the_ttl_header_is_what_the_producer_asked_when_no_time_has_passed() {
        for ttl in [86_400, 120, 1] {
            assert_eq!(job_aged(ttl, Duration::from_millis(300)).ttl_header(), ttl);
        }
        assert_eq!(job_aged(10, Duration::from_millis(9_500)).ttl_header(), 1);
        assert_eq!(job_aged(0, Duration::ZERO).ttl_header(), 0);
    }

    #[test]
    fn a_notification_whose_ttl_ran_out_is_never_sent_with_ttl_zero() {
        assert!(job_aged(120, Duration::from_millis(120_500)).expired());
        assert!(job_aged(120, Duration::from_secs(120)).expired());
        assert!(!job_aged(120, Duration::from_millis(119_900)).expired());
        // "Now or never" is sent once, within its first second.
        assert!(!job_aged(0, Duration::from_millis(200)).expired());
        assert!(job_aged(0, Duration::from_millis(1_500)).expired());
    }

    #[test]
    fn an_event_without_time_keeps_its_first_receipt() {
        let mut job = job_aged(60, Duration::ZERO);
        let claimed = Utc::now() - chrono::Duration::seconds(30);
        job.received_no_later_than(claimed);
        assert!(job.ttl_header() > 59, "the event's own time rules");
        job.notification.time = None;
        job.received_no_later_than(claimed);
        assert_eq!(job.ttl_started, claimed);
        assert!(
            (29..=30).contains(&job.ttl_header()),
            "{}",
            job.ttl_header()
        );
    }

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
