//! What a replica does beside consuming, for as long as it runs: telling
//! the others it is alive (and counting them), and sweeping what has expired.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{self, subscriptions};
use pushq_schemas::error_text;

/// Tells the other replicas this one is alive (store::workers), on a
/// connection of its own so that a pool busy with deliveries never delays it
/// past the point where the others take this replica for dead; and counts the
/// live replicas, whose number divides the rates (push::limits). Without its
/// database the replica keeps the last count: the others take it for dead
/// and raise their shares, but without its database it claims nothing to send.
pub(crate) async fn heartbeat(
    pool: PgPool,
    replica: uuid::Uuid,
    name: String,
    replicas: watch::Sender<u32>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let own = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(store::workers::HEARTBEAT)
        .connect_lazy_with((*pool.connect_options()).clone());
    let database = store::connect::dependency(&pool.connect_options());
    let mut lost = false;
    let mut every = tokio::time::interval(store::workers::HEARTBEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => break,
        }
        // One line when the database goes and one when it is back, not one
        // a second while it is gone.
        let beat = store::workers::beat(&own, replica, &name).await;
        if let Ok(live) = beat {
            let before = replicas.send_replace(live);
            if before != live {
                metrics.live_replicas(live);
                tracing::info!(
                    live,
                    before,
                    "the live replicas changed; each takes its share of the rate limits"
                );
            }
        }
        match beat {
            Ok(_) if lost => {
                lost = false;
                tracing::info!("{database} answers again; this replica's liveness is refreshed");
            }
            Ok(_) => {}
            Err(err) if !lost => {
                lost = true;
                tracing::warn!(
                    "lost {database}: {}; until it answers, this replica's liveness is not refreshed and other replicas may take over its deliveries",
                    error_text::sentence(&err)
                );
            }
            Err(err) => tracing::debug!(error = %err, "the database still does not answer"),
        }
    }
    own.close().await;
}

/// Browsers give subscriptions an expiration time; lookups already skip
/// expired ones, and this removes them for good. It also prunes delivery
/// records past their retention.
pub(crate) async fn sweep(
    pool: PgPool,
    metrics: Metrics,
    delivery_retention: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match subscriptions::delete_expired(&pool).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics.subscriptions_deleted("expired", deleted);
                tracing::info!(deleted, "expired subscriptions deleted");
            }
            Err(err) => tracing::warn!(error = %err, "sweeping expired subscriptions failed"),
        }
        match store::deliveries::prune(&pool, delivery_retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old delivery records pruned"),
            Err(err) => tracing::warn!(error = %err, "pruning delivery records failed"),
        }
        if let Err(err) = store::workers::prune(&pool).await {
            tracing::warn!(error = %err, "pruning dead replicas failed");
        }
    }
}
