//! Result events (DESIGN §2.1): one per outcome, published to the results
//! exchange with a confirm before the job is acked. Ids are derived from
//! (notification source and id, subscription, attempt, type), so a repeat after a crash has
//! the same id and consumers can drop it.

use pushq_schemas::{CloudEvent, DeliveryResult, ResultType};
use ring::digest::{SHA256, digest};
use uuid::Uuid;

use crate::broker::BrokerError;
use crate::broker::publisher::Publisher;
use crate::telemetry::TraceContext;

/// A UUID (version 8) from a hash of `parts`, stable across replicas.
pub fn derived_id(parts: &[&str]) -> Uuid {
    let mut input = Vec::new();
    for part in parts {
        input.extend_from_slice(part.as_bytes());
        input.push(0);
    }
    let hash = digest(&SHA256, &input);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Builds the result event; `trace` is the delivery's (DESIGN §2.6).
pub fn result_event(
    result_type: ResultType,
    data: &DeliveryResult,
    source: &str,
    trace: Option<&TraceContext>,
) -> CloudEvent {
    let subscription = data.subscription.as_deref().unwrap_or("-");
    let attempt = data.attempt.to_string();
    let id = derived_id(&[
        &data.notification_source,
        &data.notification,
        subscription,
        &attempt,
        result_type.as_str(),
    ]);
    let mut event = CloudEvent::new(
        result_type.as_str(),
        source,
        serde_json::to_value(data).unwrap_or_default(),
    );
    event.id = id.to_string();
    event.subject = data.subscription.clone();
    if let Some(trace) = trace {
        event.traceparent = Some(trace.traceparent.clone());
        event.tracestate = trace.tracestate.clone();
    }
    event
}

/// Publishes results in the structured mode, all confirmed. Not `mandatory`:
/// results are a stream that any number of consumers (or none) may bind to.
/// A result some bound queue refused (full, with `reject-publish`) is not
/// published again: the other queues have it, and holding up delivery for
/// one consumer's full queue would stop it for everyone. It is logged and
/// counted instead. Returns how many were refused.
pub async fn publish(publisher: &Publisher, events: &[CloudEvent]) -> Result<usize, BrokerError> {
    if events.is_empty() {
        return Ok(0);
    }
    let messages = events
        .iter()
        .map(|event| {
            let properties = lapin::BasicProperties::default()
                .with_content_type(pushq_schemas::STRUCTURED_CONTENT_TYPE.into())
                .with_message_id(event.id.clone().into());
            (
                event.event_type.clone(),
                event.to_structured_json(),
                properties,
            )
        })
        .collect();
    let refused = publisher
        .publish_batch(&publisher.topology().results_exchange(), messages)
        .await?;
    if refused > 0 {
        tracing::warn!(
            refused,
            "a queue bound to the results exchange refused result events (full?); they are not published again"
        );
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_ids_are_stable_and_distinct_per_type_and_attempt() {
        let data = DeliveryResult {
            notification: "n1".into(),
            notification_source: "/orders".into(),
            subscription: Some("s1".into()),
            user: None,
            push_service: "https://fcm.googleapis.com".into(),
            status: Some(201),
            attempt: 1,
            reason: None,
            retry_in_ms: None,
        };
        let a = result_event(ResultType::Succeeded, &data, "/w1", None);
        let again = result_event(ResultType::Succeeded, &data, "/w2", None);
        let other_type = result_event(ResultType::Failed, &data, "/w1", None);
        let second = result_event(
            ResultType::Succeeded,
            &DeliveryResult {
                attempt: 2,
                ..data.clone()
            },
            "/w1",
            None,
        );
        let other_source = result_event(
            ResultType::Succeeded,
            &DeliveryResult {
                notification_source: "/billing".into(),
                ..data.clone()
            },
            "/w1",
            None,
        );
        assert_eq!(a.id, again.id);
        assert_ne!(a.id, other_source.id, "id \"n1\" of two services");
        assert_ne!(a.id, other_type.id);
        assert_ne!(a.id, second.id);
        assert_eq!(a.subject.as_deref(), Some("s1"));
    }
}
