//! Stored browser subscriptions.

use chrono::{DateTime, Utc};
use pushq_schemas::SubscriptionRegister;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, db_error};

#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredSubscription {
    pub id: Uuid,
    pub user_id: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
    pub tags: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Endpoints and keys stay out of logs: only the id, user and origin show.
impl std::fmt::Debug for StoredSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSubscription")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field(
                "origin",
                &pushq_schemas::data::endpoint_origin(&self.endpoint),
            )
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "id, user_id, endpoint, p256dh, auth, tags, expires_at";

fn expiration(register: &SubscriptionRegister) -> Option<DateTime<Utc>> {
    register
        .subscription
        .expiration_time
        .and_then(|ms| DateTime::from_timestamp_millis(ms as i64))
}

/// Upserts by endpoint; returns the subscription's id (kept across updates).
pub async fn upsert(pool: &PgPool, register: &SubscriptionRegister) -> Result<Uuid, StoreError> {
    let mut tags = register.tags.clone();
    tags.sort();
    tags.dedup();
    sqlx::query_scalar(
        "INSERT INTO subscriptions (id, user_id, endpoint, p256dh, auth, tags, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (endpoint) DO UPDATE SET
             user_id = EXCLUDED.user_id, p256dh = EXCLUDED.p256dh, auth = EXCLUDED.auth,
             tags = EXCLUDED.tags, expires_at = EXCLUDED.expires_at,
             consecutive_failures = 0, updated_at = now()
         RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(&register.user)
    .bind(&register.subscription.endpoint)
    .bind(&register.subscription.keys.p256dh)
    .bind(&register.subscription.keys.auth)
    .bind(&tags)
    .bind(expiration(register))
    .fetch_one(pool)
    .await
    .map_err(db_error("storing a subscription"))
}

pub async fn delete_by_endpoint(pool: &PgPool, endpoint: &str) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM subscriptions WHERE endpoint = $1")
        .bind(endpoint)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting a subscription"))
}

pub async fn delete_by_user(pool: &PgPool, user: &str) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM subscriptions WHERE user_id = $1")
        .bind(user)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting a user's subscriptions"))
}

pub async fn delete_by_id(pool: &PgPool, id: Uuid) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM subscriptions WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting a gone subscription"))
}

/// A user's or a tag's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience<'a> {
    User(&'a str),
    Tag(&'a str),
}

impl Audience<'_> {
    /// A page of the audience's live rows with `$2 < id <= $3`, `$1` its key,
    /// at most `$4`, by id, read from a B-tree in id order
    /// (`subscriptions (user_id, id)`, `subscription_tags` primary key), so a
    /// page reads its own rows only, wherever it starts (docs/tag-paging.md).
    ///
    /// The bounds are always bound (the nil and max UUIDs for an open end)
    /// rather than `$2 IS NULL OR id > $2`, which a generic prepared plan
    /// cannot use as an index bound: every page would walk from the first id.
    /// A tag's members are looked up one by one in `subscriptions` (the
    /// `OFFSET 0` keeps the lateral subquery from being merged into a join):
    /// a merge join would walk `subscriptions` by id from the page's start,
    /// through every subscription the tag does not have.
    fn page(self, columns: &str) -> String {
        match self {
            Self::User(_) => format!(
                "SELECT {columns} FROM subscriptions
                 WHERE user_id = $1 AND id > $2 AND id <= $3
                   AND (expires_at IS NULL OR expires_at > now())
                 ORDER BY id LIMIT $4"
            ),
            Self::Tag(_) => format!(
                "SELECT {columns} FROM subscription_tags
                 CROSS JOIN LATERAL (
                     SELECT * FROM subscriptions
                     WHERE id = subscription_id AND (expires_at IS NULL OR expires_at > now())
                     OFFSET 0
                 ) AS member
                 WHERE tag = $1 AND subscription_id > $2 AND subscription_id <= $3
                 ORDER BY subscription_id LIMIT $4"
            ),
        }
    }

    fn key(self) -> String {
        match self {
            Self::User(key) | Self::Tag(key) => key.to_owned(),
        }
    }
}

/// Live subscriptions of an audience with `after < id <= until` (either end
/// open), by id, at most `limit`: keyset pagination, so a page costs the same
/// wherever it starts. Subscription ids are UUIDv7, never the nil UUID an open
/// start stands for.
pub async fn audience_page(
    pool: &PgPool,
    audience: Audience<'_>,
    after: Option<Uuid>,
    until: Option<Uuid>,
    limit: i64,
) -> Result<Vec<StoredSubscription>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(audience.page(COLUMNS)))
        .bind(audience.key())
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(until.unwrap_or(Uuid::max()))
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(db_error("looking up an audience"))
}

/// The ids only of the next page of an audience after `after`, to cut it into
/// chunks. A tag's are read from `subscription_tags` alone (an index-only
/// scan), so they may include an expired subscription not swept yet: its
/// chunk's page leaves it out.
pub async fn audience_ids(
    pool: &PgPool,
    audience: Audience<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Uuid>, StoreError> {
    let sql = match audience {
        Audience::User(_) => audience.page("id"),
        Audience::Tag(_) => "SELECT subscription_id FROM subscription_tags
             WHERE tag = $1 AND subscription_id > $2 AND subscription_id <= $3
             ORDER BY subscription_id LIMIT $4"
            .to_owned(),
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(audience.key())
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(Uuid::max())
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(db_error("paging through an audience"))
}

pub async fn find_by_endpoint(
    pool: &PgPool,
    endpoint: &str,
) -> Result<Option<StoredSubscription>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriptions
         WHERE endpoint = $1 AND (expires_at IS NULL OR expires_at > now())"
    )))
    .bind(endpoint)
    .fetch_optional(pool)
    .await
    .map_err(db_error("looking up a subscription by endpoint"))
}

/// Live subscriptions with any of these endpoints.
pub async fn find_by_endpoints(
    pool: &PgPool,
    endpoints: &[String],
) -> Result<Vec<StoredSubscription>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriptions
         WHERE endpoint = ANY($1) AND (expires_at IS NULL OR expires_at > now())"
    )))
    .bind(endpoints)
    .fetch_all(pool)
    .await
    .map_err(db_error("looking up subscriptions by endpoint"))
}

/// A page of all subscriptions by id, for operators' listings.
pub async fn list(
    pool: &PgPool,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<StoredSubscription>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
    )))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db_error("listing subscriptions"))
}

/// Stored subscriptions among `ids` (a retry's recipients; some may be gone since).
pub async fn find_by_ids(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<StoredSubscription>, StoreError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM subscriptions
         WHERE id = ANY($1) AND (expires_at IS NULL OR expires_at > now()) ORDER BY id"
    )))
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(db_error("looking up subscriptions by id"))
}

/// Deletes subscriptions whose browser-given expiration time has passed.
pub async fn delete_expired(pool: &PgPool) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM subscriptions WHERE expires_at < now()")
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting expired subscriptions"))
}

/// Subscriptions whose user id starts with `prefix` (the demo's own users).
pub async fn count_by_user_prefix(pool: &PgPool, prefix: &str) -> Result<i64, StoreError> {
    sqlx::query_scalar("SELECT count(*) FROM subscriptions WHERE left(user_id, length($1)) = $1")
        .bind(prefix)
        .fetch_one(pool)
        .await
        .map_err(db_error("counting subscriptions"))
}

pub async fn delete_by_user_prefix(pool: &PgPool, prefix: &str) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM subscriptions WHERE left(user_id, length($1)) = $1")
        .bind(prefix)
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("deleting subscriptions"))
}
