//! RabbitMQ: topology, decoding CloudEvents from AMQP messages, confirmed
//! publishing, and starting consumers.

pub mod acks;
pub mod consume;
pub mod decode;
pub mod publisher;
pub mod topology;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
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

/// Through the SDK's connector: an attempt given up (the dependency
/// policy's own bound, 10 s or a command's patience) or a handshake not
/// complete within HANDSHAKE_MAX shuts its socket, so that no lapin I/O
/// thread is left waiting on a silent broker, one per attempt.
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    pushq_producer::open_connection(url, properties, HANDSHAKE_MAX)
        .await
        .map_err(amqp_error("connecting"))
}

/// Longer than the dependency policy's bound on an attempt, which is the
/// one that speaks; this one bounds the callers outside that policy.
const HANDSHAKE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

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
    Dependency::rabbitmq(
        pushq_producer::broker_address(url).unwrap_or_else(|_| "an invalid URL".into()),
    )
}

/// Whether waiting can fix a failed connection attempt.
pub fn unavailable(err: &lapin::Error) -> Unavailable {
    match err.kind() {
        // rustls reports a peer that does not speak TLS, or a certificate
        // it refuses, as invalid data: a setting must change.
        ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Unavailable::Refused(format!(
                "failed the TLS handshake ({io}): amqps:// needs the broker's TLS port (5671 by default) and a certificate this machine trusts"
            ))
        }
        ErrorKind::IOError(io) => Unavailable::Transient(dependency::io_reason(io)),
        ErrorKind::ParsingError(_) | ErrorKind::InvalidProtocolVersion(_) => {
            Unavailable::Refused(
                "answered, but not in AMQP 0-9-1: is this RabbitMQ's AMQP port (5672, or 5671 for amqps://)?"
                    .into(),
            )
        }
        ErrorKind::ProtocolError(amqp) => match refusal(amqp, Phase::Login) {
            Some(why) => Unavailable::Refused(why),
            None => Unavailable::Transient(amqp.get_message().to_string()),
        },
        ErrorKind::AuthProviderError(why) => {
            Unavailable::Refused(format!("refused the user and password: {why}"))
        }
        _ => Unavailable::Transient(err.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Login,
    /// Declaring the topology, consuming, publishing.
    Working,
}

/// The broker's refusals that waiting cannot fix, whenever they come.
fn refusal(amqp: &lapin::protocol::AMQPError, phase: Phase) -> Option<String> {
    // RabbitMQ's text starts with the code's name (ACCESS_REFUSED - …).
    let said = amqp.get_message();
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if phase == Phase::Login => {
            Some(format!("refused the user and password: {said}"))
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Some(format!(
            "refused what the worker asked of it: {said}: check PUSHQ_TOPOLOGY_PREFIX (names starting with amq. are the broker's) and the user's configure, write and read permissions on the virtual host"
        )),
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => Some(format!(
            "refused the virtual host (missing, or the user may not use it): {said}"
        )),
        _ => None,
    }
}

/// A refusal that waiting cannot fix, met after connecting (declaring the
/// topology, consuming): the sentence, or `None` when waiting may help.
pub fn refused_after_connecting(err: &BrokerError) -> Option<String> {
    match err {
        BrokerError::Amqp { source, .. } => match source.kind() {
            ErrorKind::ProtocolError(amqp) => refusal(amqp, Phase::Working),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use lapin::protocol::AMQPError;

    use super::*;

    fn refused_by_broker(code: u16, text: &str) -> lapin::Error {
        let amqp = AMQPError::from_id(code, text.into()).expect("a known code");
        ErrorKind::ProtocolError(amqp).into()
    }

    fn is_refused(unavailable: Unavailable) -> bool {
        matches!(unavailable, Unavailable::Refused(_))
    }

    #[test]
    fn what_waiting_cannot_fix_is_a_refusal_whenever_it_comes() {
        let login = refused_by_broker(403, "ACCESS_REFUSED - Login was refused");
        assert!(is_refused(unavailable(&login)));
        let vhost = refused_by_broker(530, "NOT_ALLOWED - vhost nosuch not found");
        assert!(is_refused(unavailable(&vhost)));
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "corrupt message");
        assert!(is_refused(unavailable(&tls.into())));

        let declaring = BrokerError::Amqp {
            action: "declaring an exchange",
            source: refused_by_broker(403, "ACCESS_REFUSED - access to exchange 'x' refused"),
        };
        let why = refused_after_connecting(&declaring).expect("a refusal");
        assert!(why.contains("PUSHQ_TOPOLOGY_PREFIX"), "{why}");
    }

    #[test]
    fn what_passes_by_itself_is_waited_for() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            unavailable(&refused.into()),
            Unavailable::Transient("connection refused".into())
        );
        let forced = refused_by_broker(320, "CONNECTION_FORCED - broker shutting down");
        assert!(!is_refused(unavailable(&forced)));
        let lost = BrokerError::Amqp {
            action: "consuming",
            source: forced,
        };
        assert_eq!(refused_after_connecting(&lost), None);
    }
}
