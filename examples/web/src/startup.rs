//! How the binary starts and how it says why it stopped: one line on stderr,
//! exit 2 for a setting to fix, 1 for anything else.

use std::io::IsTerminal;

use pushq_producer::{EndpointPolicy, Producer, PublishError, Topology};
use pushq_schemas::error_text::sentence;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// lapin logs every connection error at ERROR itself, several lines per
/// failed attempt, and the same error reaches the example as a Result, which
/// it reports once: lapin's own lines are for RUST_LOG=lapin=debug.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=off";

/// Why the example stopped.
#[derive(Debug)]
pub struct Failure {
    /// 2: a setting must change; 1: anything else.
    pub status: u8,
    /// Each cause once; never a URL's password.
    pub sentence: String,
}

impl Failure {
    pub fn setting(sentence: impl Into<String>) -> Self {
        Self {
            status: 2,
            sentence: sentence.into(),
        }
    }

    pub fn running(sentence: impl Into<String>) -> Self {
        Self {
            status: 1,
            sentence: sentence.into(),
        }
    }
}

/// Text logs on stderr: `RUST_LOG` when set, else [`DEFAULT_LOG_FILTER`].
pub fn init_logs() -> Result<(), Failure> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::try_new(&directives).map_err(|err| {
                Failure::setting(format!(
                    "RUST_LOG is not a valid log filter ({err}): expected levels like info or info,pushq_example_web=debug"
                ))
            })?
        }
        _ => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::env::var_os("NO_COLOR").as_deref()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

/// Escape codes are for a terminal: a file or a log collector gets them as
/// noise. `NO_COLOR` (https://no-color.org) turns them off on a terminal too.
fn colour(no_color: Option<&std::ffi::OsStr>) -> bool {
    std::io::stderr().is_terminal() && no_color.is_none_or(|value| value.is_empty())
}

/// The producer for `PUSHQ_AMQP_URL`, `PUSHQ_TOPOLOGY_PREFIX` and the
/// workers' endpoint policy, read the way the worker reads them.
pub async fn connect(source: &str) -> Result<Producer, Failure> {
    let endpoint_policy = EndpointPolicy::from_env().map_err(Failure::setting)?;
    let topology = match std::env::var("PUSHQ_TOPOLOGY_PREFIX") {
        Ok(prefix) => Topology::new(prefix).map_err(|why| {
            Failure::setting(format!(
                "PUSHQ_TOPOLOGY_PREFIX is not a valid prefix: {why}"
            ))
        })?,
        Err(_) => Topology::default(),
    };
    let amqp_url = std::env::var("PUSHQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let address = pushq_producer::broker_address(&amqp_url)
        .map_err(|err| Failure::setting(format!("PUSHQ_AMQP_URL: {}", sentence(&err))))?;
    let producer = Producer::connect(&amqp_url, topology, source)
        .await
        .map_err(|err| {
            let cause = sentence(&err);
            match err {
                PublishError::InvalidUrl(_) => Failure::setting(format!("PUSHQ_AMQP_URL: {cause}")),
                _ => Failure::running(format!(
                    "cannot connect to RabbitMQ at {address} (PUSHQ_AMQP_URL): {cause}"
                )),
            }
        })?;
    Ok(producer.with_endpoint_policy(endpoint_policy))
}

/// SIGTERM (how containers and systemd stop a service) or SIGINT (Ctrl-C):
/// either one stops the example with exit 0, whether it is still connecting
/// or already serving (then in-flight requests finish first).
#[derive(Debug)]
pub struct StopSignals {
    term: Signal,
    interrupt: Signal,
}

impl StopSignals {
    /// Both handlers, installed now: `tokio::signal::ctrl_c` would install
    /// SIGINT's only when first polled, leaving the default action (killed,
    /// 130 in a shell) while the example connects.
    pub fn install() -> Result<Self, Failure> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|err| {
                Failure::running(format!(
                    "cannot install the {name} handler: {}",
                    sentence(&err)
                ))
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT received since [`Self::install`].
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
