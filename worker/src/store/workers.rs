//! The replicas' liveness: each refreshes its row every [`HEARTBEAT`], and
//! one not seen for [`DEAD_AFTER`] is dead, its claims free for the others.
//! The live ones share the configured rates (push::limits).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, db_error};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not seen for this long is dead: a missed heartbeat or three
/// under load is not death, a `kill -9` is known within seconds.
pub const DEAD_AFTER: Duration = Duration::from_secs(4);

/// Says that replica `id` is alive (and registers it the first time), and
/// returns how many replicas are alive, this one included: those seen within
/// [`DEAD_AFTER`], the rule claims follow.
pub async fn beat(pool: &PgPool, id: Uuid, name: &str) -> Result<u32, StoreError> {
    // One round trip: a data-modifying WITH runs whether or not it is read,
    // and the count sees the rows as they were before it, hence the others
    // plus this one.
    sqlx::query_scalar::<_, i64>(
        "WITH beat AS (
             INSERT INTO workers (id, name) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET seen_at = now()
         )
         SELECT count(*) + 1 FROM workers
         WHERE id <> $1 AND seen_at > now() - make_interval(secs => $3::float8)",
    )
    .bind(id)
    .bind(name)
    .bind(DEAD_AFTER.as_secs_f64())
    .fetch_one(pool)
    .await
    .map(|live| u32::try_from(live).unwrap_or(u32::MAX))
    .map_err(db_error("refreshing this replica's liveness"))
}

/// A replica that stops cleanly leaves at once: its claims are all final by
/// then, or handed back with its messages.
pub async fn leave(pool: &PgPool, id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(drop)
        .map_err(db_error("removing this replica's liveness row"))
}

/// Forgets replicas dead for an hour: nothing refers to them any more.
pub async fn prune(pool: &PgPool) -> Result<u64, StoreError> {
    sqlx::query("DELETE FROM workers WHERE seen_at < now() - interval '1 hour'")
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(db_error("pruning dead replicas"))
}
