//! Result events published to the results exchange (DESIGN §2.1).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResultType {
    #[serde(rename = "pushq.delivery.succeeded")]
    Succeeded,
    #[serde(rename = "pushq.delivery.retrying")]
    Retrying,
    #[serde(rename = "pushq.delivery.failed")]
    Failed,
    #[serde(rename = "pushq.delivery.expired")]
    Expired,
    #[serde(rename = "pushq.delivery.skipped")]
    Skipped,
    #[serde(rename = "pushq.subscription.gone")]
    Gone,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "pushq.delivery.succeeded",
            Self::Retrying => "pushq.delivery.retrying",
            Self::Failed => "pushq.delivery.failed",
            Self::Expired => "pushq.delivery.expired",
            Self::Skipped => "pushq.delivery.skipped",
            Self::Gone => "pushq.subscription.gone",
        }
    }

    /// The `outcome` label of `pushq_deliveries_total`.
    pub fn outcome(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Skipped => "skipped",
            Self::Gone => "gone",
        }
    }
}

/// Stable reason codes; consumers branch on them, so never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultReason {
    Gone,
    BadRequest,
    Unauthorized,
    Forbidden,
    PayloadTooLarge,
    Throttled,
    ServerError,
    Timeout,
    ConnectionError,
    EndpointRefused,
    RetriesExhausted,
    Expired,
    NoSubscription,
    UnexpectedStatus,
}

impl ResultReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Throttled => "throttled",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::ConnectionError => "connection_error",
            Self::EndpointRefused => "endpoint_refused",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Expired => "expired",
            Self::NoSubscription => "no_subscription",
            Self::UnexpectedStatus => "unexpected_status",
        }
    }
}

/// The data of every result event. Never the payload, never the full endpoint.
/// Null fields are required to be present, as the schema says, so consumers can
/// tell "none" from "an older producer".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryResult {
    /// The `id` of the `pushq.notification.send` event.
    pub notification: String,
    /// Its `source`: with `notification`, the event's identity (CloudEvents
    /// 1.0). Empty in results of workers older than this field.
    #[serde(default)]
    pub notification_source: String,
    /// The stored subscription's id; null for a one-off subscription.
    #[serde(deserialize_with = "Option::deserialize")]
    pub subscription: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    pub user: Option<String>,
    /// The endpoint's origin, e.g. `https://fcm.googleapis.com`.
    pub push_service: String,
    #[serde(deserialize_with = "Option::deserialize")]
    pub status: Option<u16>,
    /// 1-based.
    pub attempt: u32,
    #[serde(deserialize_with = "Option::deserialize")]
    pub reason: Option<ResultReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

impl DeliveryResult {
    /// The rules of `pushq.delivery.result.schema.json` that serde does not check.
    pub fn validate(&self) -> Result<(), String> {
        if self.notification.is_empty() {
            return Err("notification must not be empty".into());
        }
        if self.attempt == 0 {
            return Err("attempt is 1-based".into());
        }
        if let Some(status) = self.status
            && !(100..=599).contains(&status)
        {
            return Err(format!("status {status} is not an HTTP status"));
        }
        Ok(())
    }
}
