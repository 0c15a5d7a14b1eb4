//! The replicas' liveness: each refreshes its row every [`HEARTBEAT`], and
//! one not seen for [`DEAD_AFTER`] is dead, its claims free for the others.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, db_error};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not seen for this long is dead: a missed heartbeat or three
/// under load is not death, a `kill -9` is known within seconds.
pub const DEAD_AFTER: Duration = Duration::from_secs(4);

/// Says that replica `id` is alive (and registers it the first time).
pub async fn beat(pool: &PgPool, id: Uuid, name: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, name) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET seen_at = now()",
    )
    .bind(id)
    .bind(name)
    .execute(pool)
    .await
    .map(drop)
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
