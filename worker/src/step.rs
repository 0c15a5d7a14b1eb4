//! One step of the worker: the message as the consumer hands it over, and
//! the [`Outcome`] a handler (pipeline, feedback) decides for it. Handlers
//! decide and never publish; the consumer carries the outcome out: it
//! publishes everything listed with confirms, then acks. Neither knows the
//! other.

use std::time::Duration;

use lapin::BasicProperties;
use pushq_schemas::{CloudEvent, InvalidEvent};
use tracing::Span;
use tracing::field::Empty;

use crate::store::deliveries;
use crate::telemetry;

/// A pause before handing back a message whose dependency failed.
pub const DEPENDENCY_BACKOFF: Duration = Duration::from_secs(1);

/// Header a replay adds, so that exhausted deliveries may be attempted again.
pub const REPLAY_HEADER: &str = "x-pushq-replay";

/// Header a replay adds to a letter the broker dead-lettered: nothing about
/// it was checked, so the worker treats it as a producer's message (its
/// internal types and delay headers are not trusted). Anyone may add it; it
/// only ever takes trust away.
pub const UNTRUSTED_HEADER: &str = "x-pushq-untrusted";

/// What to do with the message that was handled.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish each follow-up with a confirm, then ack, then note the
    /// `published` deliveries' results as published. Should a publish fail,
    /// the message is handed back instead (its deliveries table rows make
    /// the redelivery publish only what is missing).
    Ack {
        follow_ups: Vec<FollowUp>,
        published: Vec<deliveries::Key>,
    },
    /// It can never be processed: copy it to the dead-letter queue, then ack.
    DeadLetter(InvalidEvent),
    /// Not now (a dependency failed): hand it back to the broker after `after`.
    Requeue { after: Duration },
    /// Not due yet: publish it unchanged to the delay queues until
    /// `not_before_ms` (epoch milliseconds), then ack.
    Delay { not_before_ms: u64 },
}

impl Outcome {
    /// Ack with nothing to publish.
    pub fn ack() -> Self {
        Self::Ack {
            follow_ups: Vec::new(),
            published: Vec::new(),
        }
    }

    pub fn requeue() -> Self {
        Self::Requeue {
            after: DEPENDENCY_BACKOFF,
        }
    }
}

/// A message to publish before the handled one is acked.
#[derive(Debug, Clone, PartialEq)]
pub enum FollowUp {
    /// A result event, to the results exchange.
    Result { event: CloudEvent },
    /// An internal retry event, to the delay queues for `delay_ms`.
    Retry { delay_ms: u64, event: CloudEvent },
    /// An internal chunk event of a large audience, to the jobs queue.
    Chunk { event: CloudEvent },
    /// An internal retry event whose retries are used up, to the dead-letter
    /// queue, from where `pushq-worker dead replay` sends it back to the jobs queue.
    Exhausted {
        event: CloudEvent,
        reason: InvalidEvent,
    },
}

/// One message as the consumer hands it over, with the CONSUMER span that
/// follows it until it is settled.
#[derive(Debug)]
pub struct Received<'a> {
    pub properties: &'a BasicProperties,
    pub body: &'a [u8],
    pub span: Span,
    /// Came through the producer exchange: a producer's, never the worker's
    /// own (its internal events and hand-overs go by the default exchange
    /// and the delay queues). Such a message's internal types and delay
    /// header are not trusted.
    pub from_producer: bool,
}

impl<'a> Received<'a> {
    /// A message as a producer published it, through the producer exchange.
    pub fn from_producer(properties: &'a BasicProperties, body: &'a [u8], queue: &str) -> Self {
        let mut received = Self::new(properties, body, queue);
        received.from_producer = true;
        received
    }

    /// A message on the worker's own route.
    pub fn new(properties: &'a BasicProperties, body: &'a [u8], queue: &str) -> Self {
        let span = tracing::info_span!(
            "pushq.job",
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = queue,
            messaging.message.id = properties.message_id().as_ref().map(|id| id.as_str()),
            cloudevents.event_id = Empty,
            cloudevents.event_type = Empty,
            trace_id = Empty,
        );
        Self {
            properties,
            body,
            span,
            from_producer: false,
        }
    }

    /// Makes the span continue the event's trace and name the event.
    pub(crate) fn follow(&self, event: &CloudEvent) {
        self.span.record("cloudevents.event_id", event.id.as_str());
        self.span
            .record("cloudevents.event_type", event.event_type.as_str());
        telemetry::continue_trace(
            &self.span,
            event.traceparent.as_deref(),
            event.tracestate.as_deref(),
        );
    }
}

/// Which queue a message came from: the same event type means different
/// things on the producer and the results side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Producer,
    Feedback,
}
