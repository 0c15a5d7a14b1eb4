//! `cargo run -p pushq-example-web`: the example web app on
//! http://127.0.0.1:8080 (EXAMPLE_ADDR), publishing to pushq's RabbitMQ.
//! Every variable it reads is in README's "From the browser".

use std::process::ExitCode;
use std::sync::Arc;

use pushq_example_web::startup::{self, Failure, StopSignals};
use pushq_example_web::{AppState, router, vapid_key};
use pushq_schemas::error_text::sentence;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("pushq-example-web: {}", failure.sentence);
            ExitCode::from(failure.status)
        }
    }
}

async fn run() -> Result<(), Failure> {
    startup::init_logs()?;
    // Installed before anything that can wait (the broker, the address being
    // announced): until then SIGTERM would find the default action and end
    // the process 143, or find a handler nobody listens to yet and wait out
    // the 10 s connect bound.
    let mut stop = StopSignals::install()?;
    let vapid_public_key = std::env::var("PUSHQ_VAPID_PUBLIC_KEY").map_err(|_| {
        Failure::setting(
            "PUSHQ_VAPID_PUBLIC_KEY must hold the worker's public key: export PUSHQ_VAPID_PUBLIC_KEY=$(pushq-worker vapid public)",
        )
    })?;
    vapid_key::check_public_key(&vapid_public_key).map_err(Failure::setting)?;
    let producer = tokio::select! {
        producer = startup::connect("/pushq-example-web") => producer?,
        () = stop.recv() => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    let addr = std::env::var("EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .and_then(|listener| listener.local_addr().map(|local| (listener, local)));
    let (listener, local) = listener.map_err(|err| {
        let why = format!("cannot listen on {addr} (EXAMPLE_ADDR): {}", sentence(&err));
        if err.kind() == std::io::ErrorKind::InvalidInput {
            Failure::setting(why)
        } else {
            Failure::running(why)
        }
    })?;
    tracing::info!("the example is on http://{local}");
    let state = AppState {
        producer: Arc::new(producer),
        vapid_public_key: vapid_public_key.trim().to_owned(),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { stop.recv().await })
        .await
        .map_err(|err| Failure::running(format!("serving failed: {}", sentence(&err))))?;
    tracing::info!("stopped");
    Ok(())
}
