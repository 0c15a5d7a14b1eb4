//! Registers a browser subscription and sends it a notification.
//!
//! ```sh
//! cargo run --release -p pushq-producer --example send_notification -- '<PushSubscription JSON>'
//! ```
//! With no argument it registers nothing and sends to the user `example-user`.
//! A failure is one line on stderr: exit 2 for a setting or an argument to
//! fix, 1 otherwise.

use std::process::ExitCode;

use pushq_producer::{
    NotificationSend, Producer, PublishError, PushSubscription, SubscriptionRegister, Target,
    Topology, Urgency,
};
use pushq_schemas::error_text::sentence;
use serde_json::json;

/// Why it stopped: the exit status and one sentence.
type Failure = (u8, String);

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err((status, sentence)) => {
            eprintln!("send_notification: {sentence}");
            ExitCode::from(status)
        }
    }
}

async fn run() -> Result<(), Failure> {
    let amqp_url = std::env::var("PUSHQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = std::env::var("PUSHQ_TOPOLOGY_PREFIX").unwrap_or_else(|_| "pushq".into());
    let topology = Topology::new(prefix).map_err(|why| {
        (
            2,
            format!("PUSHQ_TOPOLOGY_PREFIX is not a valid prefix: {why}"),
        )
    })?;
    let address = pushq_producer::broker_address(&amqp_url)
        .map_err(|err| (2, format!("PUSHQ_AMQP_URL: {}", sentence(&err))))?;
    let subscription = match std::env::args().nth(1) {
        Some(json) => Some(
            serde_json::from_str::<PushSubscription>(&json)
                .map_err(|err| (2, format!("the argument is not a PushSubscription: {err}")))?,
        ),
        None => None,
    };
    let broker = |err: PublishError| {
        (
            1,
            format!("RabbitMQ at {address} (PUSHQ_AMQP_URL): {}", sentence(&err)),
        )
    };
    let producer = Producer::connect(&amqp_url, topology, "/examples/send-notification")
        .await
        .map_err(broker)?;

    if let Some(subscription) = subscription {
        let id = producer
            .register(&SubscriptionRegister {
                user: "example-user".into(),
                subscription,
                tags: vec!["examples".into()],
            })
            .await
            .map_err(|err| {
                // The SDK refused the argument's subscription before sending it.
                let status = if matches!(err, PublishError::Invalid { .. }) {
                    2
                } else {
                    1
                };
                (status, format!("not registered: {}", sentence(&err)))
            })?;
        println!("registered (event {id})");
    }

    let mut send = NotificationSend::new(
        Target::User("example-user".into()),
        Some(json!({"title": "Hello from pushq", "body": "It works.", "url": "/"})),
    );
    send.ttl = 3600;
    send.urgency = Urgency::Normal;
    let id = producer
        .send(&send)
        .await
        .map_err(|err| (1, format!("not sent: {}", sentence(&err))))?;
    println!("sent notification {id}");
    producer.close().await.map_err(broker)
}
