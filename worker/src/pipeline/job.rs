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

    pub fn key(&self, recipient: &Recipient) -> deliveries::Key {
        deliveries::Key {
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
