//! The deliveries table: claim before sending, record after, and remember
//! whether the result event went out.

use std::time::Duration;

use pushq_schemas::ResultReason;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, db_error};

/// Where one (notification, subscription) delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Claimed by a worker that is calling the push service now.
    Sending,
    /// Waiting in a delay queue for its next attempt.
    Retrying,
    Delivered,
    Failed,
    Gone,
    Expired,
    /// Retries used up; dead-lettered. A replay starts its attempts again.
    Exhausted,
}

const ALL: [DeliveryStatus; 7] = [
    DeliveryStatus::Sending,
    DeliveryStatus::Retrying,
    DeliveryStatus::Delivered,
    DeliveryStatus::Failed,
    DeliveryStatus::Gone,
    DeliveryStatus::Expired,
    DeliveryStatus::Exhausted,
];

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Final statuses are never sent again (an exhausted one only by replay).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Sending | Self::Retrying)
    }
}

/// A final delivery as recorded, enough to publish its result again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub reason: Option<ResultReason>,
    pub result_published: bool,
}

/// The answer to "may I send this now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Yours, for this 1-based attempt.
    Granted { attempt: u32 },
    /// Already final: skip it (publishing its result if that was missed).
    Done(Recorded),
    /// Another worker holds an unexpired claim (it may be sending right now).
    HeldElsewhere { remaining: Duration },
}

/// Claims a delivery with a lease. The lease outlives one HTTP attempt, so a
/// worker that dies mid-send only delays the redelivery by the lease. With
/// `replay`, an exhausted delivery is claimed again with its attempts reset.
pub async fn claim(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
    lease: Duration,
    replay: bool,
) -> Result<Claim, StoreError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let granted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO deliveries (event_id, subscription_id, status, attempts, claimed_until)
         VALUES ($1, $2, 'sending', 1, now() + make_interval(secs => $3::float8 / 1000))
         ON CONFLICT (event_id, subscription_id) DO UPDATE SET
             status = 'sending',
             attempts = CASE WHEN deliveries.status = 'exhausted' THEN 1 ELSE deliveries.attempts + 1 END,
             reason = NULL, result_published = false,
             claimed_until = EXCLUDED.claimed_until, updated_at = now()
         WHERE (deliveries.status = 'retrying'
                OR (deliveries.status = 'sending' AND deliveries.claimed_until < now())
                OR (deliveries.status = 'exhausted' AND $4))
         RETURNING attempts",
    )
    .bind(event_id)
    .bind(subscription_id)
    .bind(lease_ms)
    .bind(replay)
    .fetch_optional(pool)
    .await
    .map_err(db_error("claiming a delivery"))?;
    if let Some(attempts) = granted {
        return Ok(Claim::Granted {
            attempt: u32::try_from(attempts).unwrap_or(1),
        });
    }
    let (status, attempts, http_status, reason, result_published, remaining_ms): (
        String,
        i32,
        Option<i16>,
        Option<String>,
        bool,
        Option<f64>,
    ) = sqlx::query_as(
        "SELECT status, attempts, last_status_code, reason, result_published,
                (EXTRACT(EPOCH FROM (claimed_until - now())) * 1000)::float8
         FROM deliveries WHERE event_id = $1 AND subscription_id = $2",
    )
    .bind(event_id)
    .bind(subscription_id)
    .fetch_one(pool)
    .await
    .map_err(db_error("reading a delivery claim"))?;
    match DeliveryStatus::parse(&status) {
        Some(status) if status.is_final() => Ok(Claim::Done(Recorded {
            status,
            attempts: u32::try_from(attempts).unwrap_or(0),
            http_status: http_status.and_then(|code| u16::try_from(code).ok()),
            reason: reason.as_deref().and_then(parse_reason),
            result_published,
        })),
        _ => Ok(Claim::HeldElsewhere {
            remaining: Duration::from_millis(remaining_ms.unwrap_or(0.0).max(0.0) as u64),
        }),
    }
}

fn parse_reason(text: &str) -> Option<ResultReason> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// Records the outcome of an attempt and releases the claim.
pub async fn record(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
    status: DeliveryStatus,
    http_status: Option<u16>,
    reason: Option<ResultReason>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET status = $3, last_status_code = $4, reason = $5,
             result_published = false, claimed_until = NULL, updated_at = now()
         WHERE event_id = $1 AND subscription_id = $2",
    )
    .bind(event_id)
    .bind(subscription_id)
    .bind(status.as_str())
    .bind(http_status.map(|s| s as i16))
    .bind(reason.map(ResultReason::as_str))
    .execute(pool)
    .await
    .map(drop)
    .map_err(db_error("recording a delivery"))
}

/// Notes that the result event of the recorded outcome was confirmed.
pub async fn mark_result_published(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE deliveries SET result_published = true WHERE event_id = $1 AND subscription_id = $2")
        .bind(event_id)
        .bind(subscription_id)
        .execute(pool)
        .await
        .map(drop)
        .map_err(db_error("marking a result published"))
}

/// The status and attempts of one delivery, for tests and operators.
pub async fn status(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
) -> Result<Option<(DeliveryStatus, u32)>, StoreError> {
    let row: Option<(String, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM deliveries WHERE event_id = $1 AND subscription_id = $2",
    )
    .bind(event_id)
    .bind(subscription_id)
    .fetch_optional(pool)
    .await
    .map_err(db_error("reading a delivery"))?;
    Ok(row.and_then(|(status, attempts)| {
        DeliveryStatus::parse(&status).map(|status| (status, u32::try_from(attempts).unwrap_or(0)))
    }))
}
