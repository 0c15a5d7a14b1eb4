//! PostgreSQL's work, from its statistics views: row writes and commits in
//! the benchmark's database, WAL written and flushed in the whole cluster.

use std::time::Duration;

/// Counters read at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct DbCounters {
    /// `tup_inserted + tup_updated + tup_deleted` of this database.
    pub row_writes: Option<i64>,
    /// `xact_commit` of this database.
    pub commits: Option<i64>,
    /// The current WAL position in bytes (the whole cluster).
    pub wal_lsn: Option<i64>,
    /// `pg_stat_wal.wal_sync`: WAL flushes to disk (the whole cluster).
    pub wal_syncs: Option<i64>,
}

/// Asks every idle connection of the benchmark's own pool to flush its
/// pending statistics now: a backend otherwise holds them up to 10 s
/// (PostgreSQL 15), and the rows the benchmark seeded would be counted as
/// the scenario's.
pub async fn flush_own_statistics(pool: &sqlx::PgPool) {
    let mut held = Vec::new();
    while let Some(connection) = pool.try_acquire() {
        held.push(connection);
    }
    for connection in &mut held {
        let _ = sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&mut **connection)
            .await;
    }
}

/// Reads the counters; each is `None` if its view is missing or refused.
/// Call it after the worker has exited: its backends flush their
/// statistics when they exit, not when each statement ends.
pub async fn counters(pool: &sqlx::PgPool, settle: Duration) -> DbCounters {
    tokio::time::sleep(settle).await;
    let database: Option<(i64, i64)> = sqlx::query_as(
        "SELECT tup_inserted + tup_updated + tup_deleted, xact_commit
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    let lsn: Option<i64> =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(pool)
            .await
            .ok();
    let wal_syncs: Option<i64> = sqlx::query_scalar("SELECT wal_sync FROM pg_stat_wal")
        .fetch_one(pool)
        .await
        .ok();
    DbCounters {
        row_writes: database.map(|d| d.0),
        commits: database.map(|d| d.1),
        wal_lsn: lsn,
        wal_syncs,
    }
}
