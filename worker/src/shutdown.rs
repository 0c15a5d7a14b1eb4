//! The signals that ask a pushq process to stop: SIGTERM (orchestrators)
//! and SIGINT (a terminal), for `run` and `demo` alike.

/// Resolves when either arrives. Once first polled, neither ends the
/// process by itself any more: the caller decides what stopping means.
pub async fn requested() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
