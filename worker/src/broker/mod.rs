//! RabbitMQ: topology, decoding CloudEvents from AMQP messages, confirmed
//! publishing, and starting consumers.

pub mod consume;
pub mod decode;
pub mod publisher;
pub mod topology;

use lapin::{Connection, ConnectionProperties};

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
