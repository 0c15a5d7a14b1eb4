//! The deliveries table: claim before sending, record after, and remember
//! whether the result event went out.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
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
    /// Yours, for this 1-based attempt; `first_claimed` is when the delivery
    /// was first claimed (by any replica).
    Granted {
        attempt: u32,
        first_claimed: DateTime<Utc>,
    },
    /// Already final: skip it (publishing its result if that was missed).
    Done(Recorded),
    /// A live replica holds the claim (it may be sending right now).
    HeldElsewhere,
}

fn parse_reason(text: &str) -> Option<ResultReason> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// What a final outcome does to the subscription's health record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unchanged,
    /// Resets the consecutive failures and notes the success.
    Success,
    /// Counts one more consecutive failure.
    Failure,
}

impl Health {
    fn code(self) -> i16 {
        match self {
            Self::Unchanged => 0,
            Self::Success => 1,
            Self::Failure => 2,
        }
    }
}

/// The outcome of one attempt, for [`record_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub key: Key,
    pub status: DeliveryStatus,
    pub http_status: Option<u16>,
    pub reason: Option<ResultReason>,
    pub health: Health,
    /// False when nothing was sent (deferred by our own limiter): the claim's
    /// attempt is given back.
    pub attempt_counts: bool,
}

/// One (notification, subscription) delivery. A notification is its
/// CloudEvent's `source` and `id` together (CloudEvents 1.0): two services
/// may both send id "order-1". Ordered so that batched statements take their
/// row locks in one order and two replicas never deadlock.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub event_source: String,
    pub event_id: String,
    pub subscription_id: Uuid,
}

/// Keys as the three arrays a statement unnests.
pub(super) fn columns<'a>(
    keys: impl Iterator<Item = &'a Key>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<Uuid>) {
    let mut sources = Vec::new();
    let mut event_ids = Vec::new();
    let mut ids = Vec::new();
    for key in keys {
        sources.push(key.event_source.as_str());
        event_ids.push(key.event_id.as_str());
        ids.push(key.subscription_id);
    }
    (sources, event_ids, ids)
}

/// Claims deliveries (of any notifications) in one round trip for replica
/// `owner`. A claim lasts while its owner is alive (store::workers), however
/// long its sends take; one whose owner is dead is taken over, and the owner
/// takes back its own at once (after a broker blip redelivered them; the
/// caller leaves out those it is still sending). Where `replay` is set, an
/// exhausted delivery is claimed again with its attempts reset.
pub async fn claim_many(
    pool: &PgPool,
    keys: &[(Key, bool)],
    owner: Uuid,
) -> Result<HashMap<Key, Claim>, StoreError> {
    let mut sorted: Vec<&(Key, bool)> = keys.iter().collect();
    sorted.sort_unstable();
    let (sources, event_ids, ids) = columns(sorted.iter().map(|(key, _)| key));
    let replays: Vec<bool> = sorted.iter().map(|(_, replay)| *replay).collect();
    type Granted = (String, String, Uuid, i32, DateTime<Utc>);
    // Rows are inserted (and conflicting ones locked) in key order: ORDER BY
    // the input's position, which is sorted.
    let granted: Vec<Granted> = sqlx::query_as(
        "INSERT INTO deliveries AS d (event_source, event_id, subscription_id, status, attempts, claimed_by)
         SELECT source, event_id, id, 'sending', 1, $5
         FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bool[])
              WITH ORDINALITY AS input(source, event_id, id, replay, position)
         ORDER BY position
         ON CONFLICT (event_source, event_id, subscription_id) DO UPDATE SET
             status = 'sending',
             attempts = CASE WHEN d.status = 'exhausted' THEN 1 ELSE d.attempts + 1 END,
             reason = NULL, result_published = false,
             claimed_by = $5, claimed_until = NULL, updated_at = now()
         WHERE d.status = 'retrying'
            OR (d.status = 'sending' AND (
                    d.claimed_by = $5
                 OR (d.claimed_by IS NULL AND (d.claimed_until IS NULL OR d.claimed_until < now()))
                 OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = d.claimed_by
                                AND w.seen_at > now() - make_interval(secs => $6::float8))))
            OR (d.status = 'exhausted' AND EXISTS (
                    SELECT 1 FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bool[])
                        AS r(source, event_id, id, replay)
                    WHERE r.replay AND r.source = d.event_source AND r.event_id = d.event_id
                      AND r.id = d.subscription_id))
         RETURNING event_source, event_id, subscription_id, attempts, created_at",
    )
    .bind(&sources)
    .bind(&event_ids)
    .bind(&ids)
    .bind(&replays)
    .bind(owner)
    .bind(super::workers::DEAD_AFTER.as_secs_f64())
    .fetch_all(pool)
    .await
    .map_err(db_error("claiming deliveries"))?;
    let mut claims: HashMap<Key, Claim> = granted
        .into_iter()
        .map(
            |(event_source, event_id, subscription_id, attempts, first_claimed)| {
                (
                    Key {
                        event_source,
                        event_id,
                        subscription_id,
                    },
                    Claim::Granted {
                        attempt: u32::try_from(attempts).unwrap_or(1),
                        first_claimed,
                    },
                )
            },
        )
        .collect();
    let others: Vec<&Key> = sorted
        .iter()
        .map(|(key, _)| key)
        .filter(|key| !claims.contains_key(*key))
        .collect();
    if others.is_empty() {
        return Ok(claims);
    }
    let (other_sources, other_events, other_ids) = columns(others.into_iter());
    type Row = (
        String,
        String,
        Uuid,
        String,
        i32,
        Option<i16>,
        Option<String>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.event_source, d.event_id, d.subscription_id, d.status, d.attempts,
                d.last_status_code, d.reason, d.result_published
         FROM deliveries d
         JOIN unnest($1::text[], $2::text[], $3::uuid[]) AS k(source, event_id, id)
           ON d.event_source = k.source AND d.event_id = k.event_id AND d.subscription_id = k.id",
    )
    .bind(&other_sources)
    .bind(&other_events)
    .bind(&other_ids)
    .fetch_all(pool)
    .await
    .map_err(db_error("reading delivery claims"))?;
    for (
        event_source,
        event_id,
        subscription_id,
        status,
        attempts,
        http_status,
        reason,
        result_published,
    ) in rows
    {
        let claim = match DeliveryStatus::parse(&status) {
            Some(status) if status.is_final() => Claim::Done(Recorded {
                status,
                attempts: u32::try_from(attempts).unwrap_or(0),
                http_status: http_status.and_then(|code| u16::try_from(code).ok()),
                reason: reason.as_deref().and_then(parse_reason),
                result_published,
            }),
            _ => Claim::HeldElsewhere,
        };
        claims.insert(
            Key {
                event_source,
                event_id,
                subscription_id,
            },
            claim,
        );
    }
    Ok(claims)
}

/// What [`record_many`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The outcomes written: the writer still held their claims.
    pub recorded: std::collections::HashSet<Key>,
    /// The consecutive failures of each subscription that failed.
    pub failures: HashMap<Uuid, u32>,
}

/// Records many attempts' outcomes (of any notifications) and the
/// subscriptions' health in one round trip. Fenced: an outcome is written
/// only while `owner` still holds its claim, so a replica taken for dead
/// never overwrites what the one that took over recorded.
pub async fn record_many(
    pool: &PgPool,
    outcomes: &[Outcome],
    owner: Uuid,
) -> Result<Recording, StoreError> {
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let (sources, event_ids, ids) = columns(sorted.iter().map(|o| &o.key));
    let statuses: Vec<&str> = sorted.iter().map(|o| o.status.as_str()).collect();
    let codes: Vec<Option<i16>> = sorted
        .iter()
        .map(|o| o.http_status.map(|code| code as i16))
        .collect();
    let reasons: Vec<Option<&str>> = sorted
        .iter()
        .map(|o| o.reason.map(ResultReason::as_str))
        .collect();
    let health: Vec<i16> = sorted.iter().map(|o| o.health.code()).collect();
    let uncounted: Vec<bool> = sorted.iter().map(|o| !o.attempt_counts).collect();
    // Each replica updates only the deliveries it holds, so two never wait
    // for each other's; but any two may update the same subscriptions (two
    // notifications to one audience), so those rows are locked first, in id
    // order, and only where their health changes.
    // A recorded delivery's key, or a healed subscription's failures.
    type Row = (Option<String>, Option<String>, Uuid, Option<i32>);
    let rows: Vec<Row> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::int2[], $6::text[], $7::int2[], $8::bool[])
                 AS t(source, event_id, id, status, code, reason, health, uncounted)
         ), recorded AS (
             UPDATE deliveries SET status = input.status, last_status_code = input.code,
                 attempts = CASE WHEN input.uncounted THEN deliveries.attempts - 1 ELSE deliveries.attempts END,
                 reason = input.reason, result_published = false, claimed_by = NULL,
                 claimed_until = NULL, updated_at = now()
             FROM input WHERE deliveries.event_source = input.source
                 AND deliveries.event_id = input.event_id AND deliveries.subscription_id = input.id
                 AND deliveries.status = 'sending' AND deliveries.claimed_by = $9
             RETURNING deliveries.event_source, deliveries.event_id, deliveries.subscription_id
         ), health AS (
             SELECT input.id, sum(CASE WHEN health = 1 THEN 1 ELSE 0 END) AS successes,
                    sum(CASE WHEN health = 2 THEN 1 ELSE 0 END) AS failures
             FROM input JOIN recorded
               ON recorded.event_source = input.source AND recorded.event_id = input.event_id
              AND recorded.subscription_id = input.id
             WHERE health <> 0 GROUP BY input.id
         ), changing AS MATERIALIZED (
             SELECT subscriptions.id FROM subscriptions JOIN health ON subscriptions.id = health.id
             -- A healthy subscription's row is rewritten at most hourly, not
             -- on every delivery: last_success_at is hour-grained, and the
             -- database spends its time on deliveries instead.
             WHERE NOT (health.failures = 0 AND subscriptions.consecutive_failures = 0
                        AND subscriptions.last_success_at > now() - interval '1 hour')
             ORDER BY subscriptions.id
             FOR UPDATE OF subscriptions
         ), healed AS (
             UPDATE subscriptions SET
                 last_success_at = CASE WHEN health.successes > 0 THEN now() ELSE subscriptions.last_success_at END,
                 consecutive_failures = CASE WHEN health.successes > 0 THEN 0
                                             ELSE subscriptions.consecutive_failures + health.failures END
             FROM health JOIN changing ON changing.id = health.id
             WHERE subscriptions.id = health.id
             RETURNING subscriptions.id, subscriptions.consecutive_failures
         )
         SELECT event_source, event_id, subscription_id, NULL::int4 FROM recorded
         UNION ALL
         SELECT NULL, NULL, id, consecutive_failures FROM healed",
    )
    .bind(&sources)
    .bind(&event_ids)
    .bind(&ids)
    .bind(&statuses)
    .bind(&codes)
    .bind(&reasons)
    .bind(&health)
    .bind(&uncounted)
    .bind(owner)
    .fetch_all(pool)
    .await
    .map_err(db_error("recording deliveries"))?;
    let mut recording = Recording::default();
    for (event_source, event_id, subscription_id, failures) in rows {
        match (event_source, event_id, failures) {
            (Some(event_source), Some(event_id), _) => {
                recording.recorded.insert(Key {
                    event_source,
                    event_id,
                    subscription_id,
                });
            }
            (None, None, Some(failures)) => {
                let failed = outcomes.iter().any(|o| {
                    o.key.subscription_id == subscription_id && o.health == Health::Failure
                });
                if failed {
                    recording
                        .failures
                        .insert(subscription_id, u32::try_from(failures).unwrap_or(0));
                }
            }
            _ => {}
        }
    }
    Ok(recording)
}

/// Deletes final delivery records created more than `retention` ago: they
/// only guard against redeliveries, which never come that late.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, StoreError> {
    sqlx::query(
        "DELETE FROM deliveries
         WHERE created_at < now() - make_interval(secs => $1::float8)
           AND status IN ('delivered', 'failed', 'gone', 'expired')",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
    .map_err(db_error("pruning old deliveries"))
}

/// Deletes every delivery record of the events one source sent (the demo's,
/// once it has checked them).
pub async fn delete_by_event_source(pool: &PgPool, event_source: &str) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM deliveries WHERE event_source = $1")
        .bind(event_source)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting an event source's deliveries"))
}
