//! RabbitMQ: topology, decoding CloudEvents from AMQP messages, confirmed
//! publishing, and starting consumers.

pub mod consume;
pub mod decode;
pub mod publisher;
pub mod topology;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::dependency::{self, Dependency, DependencyError, Patience, Unavailable};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker error while {action}")]
    Amqp {
        action: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused (nacked) a message published to {routing_key}")]
    Nacked { routing_key: String },
    #[error("no queue is bound for routing key {routing_key} on exchange {exchange:?}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the consumer of {queue} was closed by the broker")]
    ConsumerClosed { queue: String },
    /// Unreachable, or refused: the sentence names the variable to look at.
    #[error("{0}")]
    Unavailable(#[source] DependencyError),
}

pub fn amqp_error(action: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |source| BrokerError::Amqp { action, source }
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .map_err(amqp_error("connecting"))
}

/// Connects once the broker answers, following the dependency policy: a
/// refusal (credentials, virtual host, permissions) stops at once.
pub async fn reach(
    url: &str,
    name: &str,
    patience: Patience,
) -> Result<Connection, DependencyError> {
    dependency::wait_for(&self::dependency(url), patience, || async {
        connect(url, name).await.map_err(|err| match err {
            BrokerError::Amqp { source, .. } => unavailable(&source),
            other => Unavailable::Transient(other.to_string()),
        })
    })
    .await
}

/// The broker as an operator names it: host and port, never the URL.
pub fn dependency(url: &str) -> Dependency {
    Dependency::rabbitmq(match url.parse::<AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an invalid URL".into(),
    })
}

/// Whether waiting can fix a failed connection attempt.
pub fn unavailable(err: &lapin::Error) -> Unavailable {
    match err.kind() {
        ErrorKind::IOError(io) => Unavailable::Transient(dependency::io_reason(io)),
        ErrorKind::ProtocolError(amqp) => {
            // RabbitMQ's text starts with the code's name (ACCESS_REFUSED - …).
            let said = amqp.get_message().to_string();
            match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                    Unavailable::Refused(format!("refused the user and password: {said}"))
                }
                AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Unavailable::Refused(format!(
                    "refused the virtual host (missing, or the user may not use it): {said}"
                )),
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => {
                    Unavailable::Transient(said)
                }
                _ => Unavailable::Refused(format!("refused the connection: {said}")),
            }
        }
        ErrorKind::AuthProviderError(why) => {
            Unavailable::Refused(format!("refused the user and password: {why}"))
        }
        _ => Unavailable::Transient(err.to_string()),
    }
}
