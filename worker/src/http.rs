//! Health endpoints for orchestrators: `/healthz` (the process is sound) and
//! `/readyz` (both queues have this replica's consumer).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Binds `addr` (port 0 picks a free port) and serves until `shutdown`.
/// Returns the bound address, which is also logged.
pub async fn serve(
    addr: SocketAddr,
    ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(ready);
    tracing::info!(addr = %bound, "health endpoints listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "the health endpoint server failed");
        }
    });
    Ok(bound)
}

async fn readyz(State(ready): State<watch::Receiver<bool>>) -> (StatusCode, &'static str) {
    if *ready.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not consuming")
    }
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
        .map_err(|err| format!("no answer from {addr}: {err}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{addr} answered {}", response.status()))
    }
}
