//! Starting a consumer: a channel of its own with the prefetch, then
//! `basic.consume`. What is done with each message belongs to the
//! orchestration (the top-level consumer module), not to this adapter.

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::{BrokerError, amqp_error};

/// Opens a channel with `prefetch` unacked messages and starts consuming.
pub async fn open(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
    consumer_tag: &str,
) -> Result<(Channel, lapin::Consumer), BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(amqp_error("opening a consuming channel"))?;
    // Prefetch is the replica's concurrency bound and its redelivery exposure:
    // after a crash at most this many messages per queue come back.
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp_error("setting the prefetch"))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_error("starting a consumer"))?;
    Ok((channel, consumer))
}

/// Waits until the broker has applied every ack sent on `channel` so far.
/// An ack has no reply, and a channel closed right after its last acks can
/// lose them: the broker then hands those messages out again although they
/// were handled. `basic.qos` is answered only after the frames before it,
/// so its reply says the acks are in. `prefetch` is the channel's own.
pub async fn settle_acks(channel: &Channel, prefetch: u16) -> Result<(), BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(amqp_error("waiting for the broker to take the last acks"))
}
