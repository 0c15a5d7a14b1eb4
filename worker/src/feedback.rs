//! The feedback loop: `pushq.subscription.gone` results, from any replica,
//! delete the subscription. Idempotent, so every replica may consume them.

use pushq_schemas::{DeliveryResult, InvalidEvent, InvalidKind, ResultType};
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::decode::decode;
use crate::metrics::Metrics;
use crate::step::{DEPENDENCY_BACKOFF, Outcome, Received};
use crate::store::subscriptions;

pub async fn handle(pool: &PgPool, metrics: &Metrics, message: &Received<'_>) -> Outcome {
    let event = match decode(message.properties, message.body) {
        Ok(event) => event,
        Err(invalid) => return Outcome::DeadLetter(invalid),
    };
    message.follow(&event);
    if event.event_type != ResultType::Gone.as_str() {
        return Outcome::DeadLetter(InvalidEvent::new(
            InvalidKind::UnknownType,
            format!(
                "the feedback queue takes {} events, not {:?}",
                ResultType::Gone.as_str(),
                event.event_type
            ),
        ));
    }
    let result: DeliveryResult = match event.data.map(serde_json::from_value) {
        Some(Ok(result)) => result,
        _ => {
            return Outcome::DeadLetter(InvalidEvent::data(
                "a gone event's data is not a delivery result",
            ));
        }
    };
    let Some(id) = result.subscription else {
        // A one-off subscription: nothing is stored.
        return Outcome::ack();
    };
    let Ok(id) = id.parse::<Uuid>() else {
        return Outcome::DeadLetter(InvalidEvent::data(
            "a gone event's subscription is not a UUID",
        ));
    };
    match subscriptions::delete_by_id(pool, id).await {
        Ok(deleted) => {
            metrics.subscriptions_deleted("gone", deleted);
            if deleted > 0 {
                tracing::info!(subscription = %id, push_service = %result.push_service, "gone subscription deleted");
            }
            Outcome::ack()
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not delete a gone subscription; it goes back to the queue");
            Outcome::Requeue {
                after: DEPENDENCY_BACKOFF,
            }
        }
    }
}
