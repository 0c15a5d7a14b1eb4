//! `pushq-producer`: how a service hands notifications and subscriptions to
//! pushq. Every event is validated with the same rules as the worker before it
//! leaves the process, published persistent and `mandatory` in the CloudEvents
//! structured mode (or binary, see [`ContentMode`]), and only reported sent
//! once the broker has confirmed it.
//!
//! Each publish is a PRODUCER span (`tracing`, exported through
//! `tracing-opentelemetry` when the service installs its layer) whose W3C trace
//! context the event carries as `traceparent` / `tracestate`, so the worker's
//! spans continue the service's trace.
//!
//! ```no_run
//! # async fn run() -> Result<(), pushq_producer::PublishError> {
//! use pushq_producer::{Producer, NotificationSend, Target};
//! let producer = Producer::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default(), "/billing").await?;
//! let mut send = NotificationSend::new(Target::User("user-42".into()), Some(serde_json::json!({"title": "Paid"})));
//! send.ttl = 3600;
//! producer.send(&send).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use pushq_schemas::data::ProducerEvent;
use pushq_schemas::event_types;
use tracing::Instrument;

pub use pushq_schemas::{
    CloudEvent, EndpointPolicy, InvalidEvent, InvalidKind, NotificationSend, PushSubscription,
    Refusal, SubscriptionKeys, SubscriptionRegister, SubscriptionUnregister, Target, Topology,
    Urgency,
};

pub use connect::{DEFAULT_CONNECT_TIMEOUT, broker_address, open_connection};

mod broker_logs;
mod connect;
mod trace_context;

/// Why an event was not published. Only `Broker` is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event breaks the contract; nothing was sent.
    #[error("invalid {event_type} event: {source}")]
    Invalid {
        event_type: &'static str,
        #[source]
        source: InvalidEvent,
    },
    /// The AMQP URL cannot be used; the text never quotes it (it may hold
    /// a password).
    #[error("the AMQP URL {0}: expected amqp://user:password@host:5672/vhost (amqps:// for TLS)")]
    InvalidUrl(&'static str),
    #[error("the broker connection failed while {action}")]
    Broker {
        action: &'static str,
        #[source]
        source: lapin::Error,
    },
    /// The broker refused to take responsibility for the message.
    #[error("the broker refused (nacked) the event {event_id}")]
    Nacked { event_id: String },
    /// No queue is bound for this event type: is the worker's topology declared?
    #[error(
        "no queue is bound for routing key {routing_key} on exchange {exchange}: start a pushq worker with the same topology prefix first"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

impl PublishError {
    /// Whether publishing the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Broker { .. } | Self::Nacked { .. })
    }
}

/// How events travel in AMQP messages (the CloudEvents AMQP binding). The
/// worker reads both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContentMode {
    /// The whole event as `application/cloudevents+json`.
    #[default]
    Structured,
    /// The data as the body, each attribute in a `cloudEvents_<name>` header.
    Binary,
}

/// A confirmed publisher for one topology. Cheap to share behind an `Arc`;
/// concurrent calls pipeline on one channel.
#[derive(Debug)]
pub struct Producer {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    source: String,
    content_mode: ContentMode,
    /// `None`: registrations are left to the worker's check alone.
    endpoint_policy: Option<EndpointPolicy>,
}

impl Producer {
    /// `source` names the publishing service in every event (a URI-reference,
    /// e.g. `/billing`). Gives up after [`DEFAULT_CONNECT_TIMEOUT`].
    pub async fn connect(
        amqp_url: &str,
        topology: Topology,
        source: impl Into<String>,
    ) -> Result<Self, PublishError> {
        Self::connect_within(amqp_url, topology, source, DEFAULT_CONNECT_TIMEOUT).await
    }

    /// [`Producer::connect`], giving up with [`PublishError::Broker`] (an I/O
    /// error of kind `TimedOut`) when the broker has not completed the
    /// connection, the channel and the exchange declaration within `timeout`.
    pub async fn connect_within(
        amqp_url: &str,
        topology: Topology,
        source: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let (connection, channel) = connect::open(amqp_url, &topology, timeout).await?;
        Ok(Self {
            connection,
            channel,
            topology,
            source: source.into(),
            content_mode: ContentMode::default(),
            endpoint_policy: Some(EndpointPolicy::default()),
        })
    }

    /// Publishes in this content mode from now on.
    pub fn with_content_mode(mut self, content_mode: ContentMode) -> Self {
        self.content_mode = content_mode;
        self
    }

    /// Refuses registrations whose endpoint this policy refuses, as the
    /// worker would (it dead-letters them). The default is the worker's: the
    /// public push services over https. Give the workers' settings with
    /// [`EndpointPolicy::from_env`] (`PUSHQ_ENDPOINT_HOSTS`, `PUSHQ_ALLOW_HTTP`).
    pub fn with_endpoint_policy(mut self, endpoint_policy: EndpointPolicy) -> Self {
        self.endpoint_policy = Some(endpoint_policy);
        self
    }

    /// Publishes registrations whatever their endpoint, for a producer that
    /// feeds workers with other policies, or a test of the worker's refusal.
    pub fn without_endpoint_check(mut self) -> Self {
        self.endpoint_policy = None;
        self
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Registers (upserts by endpoint) a browser's subscription. Returns the event id.
    pub async fn register(&self, data: &SubscriptionRegister) -> Result<String, PublishError> {
        self.publish_data(event_types::SUBSCRIPTION_REGISTER, data)
            .await
    }

    pub async fn unregister(&self, data: &SubscriptionUnregister) -> Result<String, PublishError> {
        self.publish_data(event_types::SUBSCRIPTION_UNREGISTER, data)
            .await
    }

    /// Sends a notification. Returns the event id, which result events name.
    pub async fn send(&self, data: &NotificationSend) -> Result<String, PublishError> {
        self.publish_data(event_types::NOTIFICATION_SEND, data)
            .await
    }

    async fn publish_data(
        &self,
        event_type: &'static str,
        data: &impl serde::Serialize,
    ) -> Result<String, PublishError> {
        let data = serde_json::to_value(data).map_err(|err| PublishError::Invalid {
            event_type,
            source: InvalidEvent::data(err.to_string()),
        })?;
        let event = CloudEvent::new(event_type, &self.source, data);
        let id = event.id.clone();
        self.publish(event).await?;
        Ok(id)
    }

    /// Publishes a prepared event (own id or time) after the same validation
    /// as the typed methods. A `traceparent` already on the event is taken as
    /// the parent of the publish span when no span is current.
    pub async fn publish(&self, mut event: CloudEvent) -> Result<(), PublishError> {
        // Bounded before it reaches a header: the id becomes the AMQP
        // message-id, a short string of at most 255 bytes.
        let parsed = ProducerEvent::parse(&event.event_type, event.data.as_ref())
            .and_then(|parsed| event.check_bounds().map(|()| parsed));
        let parsed = parsed.and_then(|parsed| self.check_endpoint(&parsed).map(|()| parsed));
        let event_type = match parsed {
            Ok(parsed) => parsed.event_type(),
            Err(source) => {
                return Err(PublishError::Invalid {
                    event_type: "pushq",
                    source,
                });
            }
        };
        let exchange = self.topology.exchange();
        let span = tracing::info_span!(
            "pushq.publish",
            otel.name = format!("publish {event_type}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.destination.name = exchange.as_str(),
            messaging.rabbitmq.destination.routing_key = event_type,
            messaging.message.id = event.id.as_str(),
        );
        trace_context::inject(&span, &mut event);
        let published = self
            .publish_confirmed(&exchange, event_type, &event)
            .instrument(span.clone())
            .await;
        if published.is_err() {
            span.record("otel.status_code", "error");
        }
        published
    }

    /// A registration or a one-off subscription the worker would refuse is
    /// refused here, before the service believes it worked.
    fn check_endpoint(&self, parsed: &ProducerEvent) -> Result<(), InvalidEvent> {
        let Some(policy) = &self.endpoint_policy else {
            return Ok(());
        };
        let endpoint = match parsed {
            ProducerEvent::Register(register) => &register.subscription.endpoint,
            ProducerEvent::Send(NotificationSend {
                to: Target::Subscription(subscription),
                ..
            }) => &subscription.endpoint,
            _ => return Ok(()),
        };
        policy
            .check(endpoint)
            .map(drop)
            .map_err(|refusal| InvalidEvent::new(InvalidKind::EndpointRefused, refusal.0))
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        event: &CloudEvent,
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(event.id.clone().into())
            .with_timestamp(
                chrono::Utc::now()
                    .timestamp()
                    .try_into()
                    .unwrap_or_default(),
            );
        let (properties, body) = match self.content_mode {
            ContentMode::Structured => (
                properties.with_content_type(pushq_schemas::STRUCTURED_CONTENT_TYPE.into()),
                event.to_structured_json(),
            ),
            ContentMode::Binary => binary_message(properties, event),
        };
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                properties,
            )
            .await
            .map_err(|source| PublishError::Broker {
                action: "publishing",
                source,
            })?
            .await
            .map_err(|source| PublishError::Broker {
                action: "awaiting the publisher confirm",
                source,
            })?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            // The returned message is dropped here unread: its body is the
            // event, which no error or log may carry.
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked {
                event_id: event.id.clone(),
            }),
        }
    }

    /// Closes the connection after every confirm has arrived.
    pub async fn close(self) -> Result<(), PublishError> {
        self.connection
            .close(200, "producer closed".into())
            .await
            .map_err(|source| PublishError::Broker {
                action: "closing",
                source,
            })
    }
}

/// The binary content mode: the data is the body (`datacontenttype` becomes
/// the content type), every other attribute a `cloudEvents_` header.
fn binary_message(properties: BasicProperties, event: &CloudEvent) -> (BasicProperties, Vec<u8>) {
    let mut headers = FieldTable::default();
    let mut content_type = pushq_schemas::envelope::JSON_CONTENT_TYPE.to_owned();
    for (name, value) in event.attributes() {
        if name == "datacontenttype" {
            content_type = value;
        } else {
            headers.insert(
                format!("cloudEvents_{name}").into(),
                AMQPValue::LongString(value.into()),
            );
        }
    }
    let body = event
        .data
        .as_ref()
        .map(|data| serde_json::to_vec(data).unwrap_or_default())
        .unwrap_or_default();
    (
        properties
            .with_content_type(content_type.into())
            .with_headers(headers),
        body,
    )
}
