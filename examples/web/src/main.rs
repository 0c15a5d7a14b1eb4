//! `cargo run -p pushq-example-web`: the example web app on
//! http://127.0.0.1:8080 (EXAMPLE_ADDR), publishing to pushq's RabbitMQ.

use std::sync::Arc;

use anyhow::Context;
use pushq_example_web::{AppState, router};
use pushq_producer::{Producer, Topology};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let vapid_public_key = std::env::var("PUSHQ_VAPID_PUBLIC_KEY").context(
        "PUSHQ_VAPID_PUBLIC_KEY must hold the worker's public key: export PUSHQ_VAPID_PUBLIC_KEY=$(pushq-worker vapid public)",
    )?;
    let amqp_url = std::env::var("PUSHQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let topology = match std::env::var("PUSHQ_TOPOLOGY_PREFIX") {
        Ok(prefix) => Topology::new(prefix)
            .map_err(|why| anyhow::anyhow!("PUSHQ_TOPOLOGY_PREFIX is not a valid prefix: {why}"))?,
        Err(_) => Topology::default(),
    };
    let addr = std::env::var("EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let producer = Producer::connect(&amqp_url, topology, "/pushq-example-web")
        .await
        .context("connecting to RabbitMQ (PUSHQ_AMQP_URL)")?;
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding EXAMPLE_ADDR {addr}"))?;
    tracing::info!("the example is on http://{}", listener.local_addr()?);
    let state = AppState {
        producer: Arc::new(producer),
        vapid_public_key: vapid_public_key.trim().to_owned(),
    };
    axum::serve(listener, router(state)).await?;
    Ok(())
}
