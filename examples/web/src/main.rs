//! `cargo run -p pushq-example-web`: the example web app on
//! http://127.0.0.1:8080 (EXAMPLE_ADDR), publishing to pushq's RabbitMQ.
//! Every variable it reads is in README's "From the browser".

use std::sync::Arc;

use anyhow::Context;
use pushq_example_web::{AppState, router, vapid_key};
use pushq_producer::{EndpointPolicy, Producer, Topology};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let vapid_public_key = std::env::var("PUSHQ_VAPID_PUBLIC_KEY").context(
        "PUSHQ_VAPID_PUBLIC_KEY must hold the worker's public key: export PUSHQ_VAPID_PUBLIC_KEY=$(pushq-worker vapid public)",
    )?;
    vapid_key::check_public_key(&vapid_public_key).map_err(anyhow::Error::msg)?;
    // The workers' own settings, read the way they read them.
    let endpoint_policy = EndpointPolicy::from_env().map_err(anyhow::Error::msg)?;
    let amqp_url = std::env::var("PUSHQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let topology = match std::env::var("PUSHQ_TOPOLOGY_PREFIX") {
        Ok(prefix) => Topology::new(prefix)
            .map_err(|why| anyhow::anyhow!("PUSHQ_TOPOLOGY_PREFIX is not a valid prefix: {why}"))?,
        Err(_) => Topology::default(),
    };
    // Installed before the address is announced: a SIGTERM sent as soon as
    // it is would otherwise find the default action, and end the process 143.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let addr = std::env::var("EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let producer = Producer::connect(&amqp_url, topology, "/pushq-example-web")
        .await
        .context("connecting to RabbitMQ (PUSHQ_AMQP_URL)")?
        .with_endpoint_policy(endpoint_policy);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding EXAMPLE_ADDR {addr}"))?;
    tracing::info!("the example is on http://{}", listener.local_addr()?);
    let state = AppState {
        producer: Arc::new(producer),
        vapid_public_key: vapid_public_key.trim().to_owned(),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stop_signal(term))
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM (how containers and systemd stop a service) or SIGINT (Ctrl-C):
/// in-flight requests finish and the process exits 0.
async fn stop_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
