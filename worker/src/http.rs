//! The operator's endpoints: `/healthz` (the process is sound), `/readyz`
//! (consuming every queue, so connected to the broker with the topology
//! declared, and the database answering) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long `/readyz` waits for the database before calling it unreachable.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_millis(800);

/// What the endpoints report on; [`crate::app::App::observed`] gives it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// True while every queue has this replica's consumer.
    pub consuming: watch::Receiver<bool>,
    pub pool: PgPool,
    pub metrics: Metrics,
}

/// Binds `addr` (port 0 picks a free port) and serves until `shutdown`.
/// Returns the bound address, which is also logged.
pub async fn serve(
    addr: SocketAddr,
    observed: Observed,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let (bound, app) = serve_while_starting(addr, shutdown).await?;
    app.send_replace(Some(observed));
    Ok(bound)
}

/// Serves before the app is built, so that a worker still waiting for its
/// database answers `/healthz` (an orchestrator must not kill it for
/// waiting) and `/readyz` 503; the app is handed over once built.
pub async fn serve_while_starting(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, watch::Sender<Option<Observed>>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (app, observed) = watch::channel(None);
    let app_router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(observed);
    tracing::info!(addr = %bound, "health and metrics endpoints listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, app_router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the health endpoint server failed");
        }
    });
    Ok((bound, app))
}

type Watched = watch::Receiver<Option<Observed>>;

async fn readyz(State(observed): State<Watched>) -> (StatusCode, &'static str) {
    let Some(observed) = observed.borrow().clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: waiting for the database",
        );
    };
    if !*observed.consuming.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not consuming: the broker is unreachable or the topology is not declared",
        );
    }
    let database = tokio::time::timeout(
        DATABASE_CHECK_TIMEOUT,
        sqlx::query("SELECT 1").execute(&observed.pool),
    )
    .await;
    match database {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database does not answer",
        ),
    }
}

async fn metrics(State(observed): State<Watched>) -> impl IntoResponse {
    let rendered = observed
        .borrow()
        .as_ref()
        .map(|observed| observed.metrics.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        rendered,
    )
}

/// `pushq-worker probe`: asks a running worker's `/readyz`, for container
/// health checks in images that have no curl.
pub async fn probe(addr: SocketAddr) -> Result<(), String> {
    crate::push::client::install_crypto_provider();
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await
        .map_err(|err| {
            // reqwest's own text names only the URL; the cause is below it.
            format!(
                "no answer from {addr}: {}",
                pushq_schemas::error_text::sentence(&err)
            )
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{addr} answered {}", response.status()))
    }
}
