//! The deliveries table: claim before sending, record after.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, db_error};

/// Where one (notification, subscription) delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Claimed by a worker that is calling the push service now.
    Sending,
    Delivered,
    Failed,
    Gone,
    Expired,
    /// Waiting for a retry.
    Retrying,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Gone => "gone",
            Self::Expired => "expired",
            Self::Retrying => "retrying",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Sending,
            Self::Delivered,
            Self::Failed,
            Self::Gone,
            Self::Expired,
            Self::Retrying,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// Final statuses are never sent again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Failed | Self::Gone | Self::Expired
        )
    }
}

/// The answer to "may I send this now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Yours, for this 1-based attempt.
    Granted { attempt: u32 },
    /// Already final: skip it.
    Done(DeliveryStatus),
    /// Another worker holds an unexpired claim (it may be sending right now).
    HeldElsewhere { remaining: Duration },
}

/// Claims a delivery with a lease. The lease outlives one HTTP attempt, so a
/// worker that dies mid-send only delays the redelivery by the lease.
pub async fn claim(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
    lease: Duration,
) -> Result<Claim, StoreError> {
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    let granted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO deliveries (event_id, subscription_id, status, attempts, claimed_until)
         VALUES ($1, $2, 'sending', 1, now() + make_interval(secs => $3::float8 / 1000))
         ON CONFLICT (event_id, subscription_id) DO UPDATE SET
             status = 'sending', attempts = deliveries.attempts + 1,
             claimed_until = EXCLUDED.claimed_until, updated_at = now()
         WHERE deliveries.status NOT IN ('delivered', 'failed', 'gone', 'expired')
           AND (deliveries.status <> 'sending' OR deliveries.claimed_until < now())
         RETURNING attempts",
    )
    .bind(event_id)
    .bind(subscription_id)
    .bind(lease_ms)
    .fetch_optional(pool)
    .await
    .map_err(db_error("claiming a delivery"))?;
    if let Some(attempts) = granted {
        return Ok(Claim::Granted {
            attempt: u32::try_from(attempts).unwrap_or(1),
        });
    }
    let (status, remaining_ms): (String, Option<f64>) = sqlx::query_as(
        "SELECT status, EXTRACT(EPOCH FROM (claimed_until - now())) * 1000
         FROM deliveries WHERE event_id = $1 AND subscription_id = $2",
    )
    .bind(event_id)
    .bind(subscription_id)
    .fetch_one(pool)
    .await
    .map_err(db_error("reading a delivery claim"))?;
    match DeliveryStatus::parse(&status) {
        Some(status) if status.is_final() => Ok(Claim::Done(status)),
        _ => Ok(Claim::HeldElsewhere {
            remaining: Duration::from_millis(remaining_ms.unwrap_or(0.0).max(0.0) as u64),
        }),
    }
}

/// Records the outcome of an attempt and releases the claim.
pub async fn record(
    pool: &PgPool,
    event_id: &str,
    subscription_id: Uuid,
    status: DeliveryStatus,
    http_status: Option<u16>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE deliveries SET status = $3, last_status_code = $4, claimed_until = NULL, updated_at = now()
         WHERE event_id = $1 AND subscription_id = $2",
    )
    .bind(event_id)
    .bind(subscription_id)
    .bind(status.as_str())
    .bind(http_status.map(|s| s as i16))
    .execute(pool)
    .await
    .map(drop)
    .map_err(db_error("recording a delivery"))
}

/// The status of one delivery, for tests and operators.
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
