//! Registers a browser subscription and sends it a notification.
//!
//! ```sh
//! cargo run --release -p pushq-producer --example send_notification -- '<PushSubscription JSON>'
//! ```
//! With no argument it registers nothing and sends to the user `example-user`.

use anyhow::Context;
use pushq_producer::{
    NotificationSend, Producer, PushSubscription, SubscriptionRegister, Target, Topology, Urgency,
};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let amqp_url = std::env::var("PUSHQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let prefix = std::env::var("PUSHQ_TOPOLOGY_PREFIX").unwrap_or_else(|_| "pushq".into());
    let topology = Topology::new(prefix).map_err(anyhow::Error::msg)?;
    let producer = Producer::connect(&amqp_url, topology, "/examples/send-notification")
        .await
        .context("while connecting to RabbitMQ")?;

    if let Some(json) = std::env::args().nth(1) {
        let subscription: PushSubscription =
            serde_json::from_str(&json).context("the argument is not a PushSubscription")?;
        let id = producer
            .register(&SubscriptionRegister {
                user: "example-user".into(),
                subscription,
                tags: vec!["examples".into()],
            })
            .await?;
        println!("registered (event {id})");
    }

    let mut send = NotificationSend::new(
        Target::User("example-user".into()),
        Some(json!({"title": "Hello from pushq", "body": "It works.", "url": "/"})),
    );
    send.ttl = 3600;
    send.urgency = Urgency::Normal;
    match producer.send(&send).await {
        Ok(id) => println!("sent notification {id}"),
        Err(err) if !err.is_retryable() => eprintln!("not sent: {err}"),
        Err(err) => return Err(err).context("while publishing"),
    }
    producer.close().await?;
    Ok(())
}
