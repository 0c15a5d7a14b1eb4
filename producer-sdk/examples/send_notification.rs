//! Registers a browser subscription and sends it a notification.
//!
//! ```sh
//! cargo run --release -p pushq-producer --example send_notification -- '<PushSubscription JSON>'
//! ```
//! With no argument it registers nothing and sends to the user `example-user`.
//! `--help` prints [`USAGE`]. A failure is one line on stderr: exit 2 for a
//! setting or an argument to fix, 1 otherwise.

use std::process::ExitCode;

use pushq_producer::{
    EndpointPolicy, NotificationSend, Producer, PublishError, PushSubscription,
    SubscriptionRegister, Target, Topology, Urgency,
};
use pushq_schemas::error_text::sentence;
use serde_json::json;

/// Why it stopped: the exit status and one sentence.
type Failure = (u8, String);

const USAGE: &str = "\
Usage: send_notification [<PushSubscription JSON>]

Registers the browser subscription given as JSON (what the page's
subscription.toJSON() returns: endpoint, keys.p256dh, keys.auth) for the user
example-user, then sends example-user a notification. With no argument it
registers nothing and sends to example-user's stored subscriptions.

Reads, to match the workers' settings:
  PUSHQ_AMQP_URL         default amqp://guest:guest@127.0.0.1:5672/%2f
  PUSHQ_TOPOLOGY_PREFIX  default pushq
  PUSHQ_ENDPOINT_HOSTS   push services a subscription may name (host, host:port
                         or host:*, comma-separated); default the public ones
  PUSHQ_ALLOW_HTTP       true to allow http:// endpoints; default false

Example, against a development worker run with the same two settings:
  PUSHQ_ENDPOINT_HOSTS='127.0.0.1:*' PUSHQ_ALLOW_HTTP=true \\
    cargo run -p pushq-producer --example send_notification -- \\
    '{\"endpoint\":\"http://127.0.0.1:8443/push/1\",\"keys\":{\"p256dh\":\"…\",\"auth\":\"…\"}}'

Exit status: 0 sent, 2 a setting or argument to fix, 1 otherwise.
";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let subscription = match (args.next(), args.next()) {
        (Some(flag), None) if flag == "--help" || flag == "-h" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        (None, None) => None,
        // JSON starts with `{`: anything else that looks like an option is
        // one, misspelt, and would otherwise be reported as broken JSON.
        (Some(json), None) if !json.starts_with('-') => Some(json),
        _ => {
            eprintln!("send_notification: takes one PushSubscription JSON, or --help\n");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(subscription).await {
        Ok(()) => ExitCode::SUCCESS,
        Err((status, sentence)) => {
            eprintln!("send_notification: {sentence}");
            ExitCode::from(status)
        }
    }
}

async fn run(subscription: Option<String>) -> Result<(), Failure> {
    // A worker that allows http:// or other hosts (a development one) would
    // take subscriptions the SDK's default policy refuses before publishing.
    let endpoint_policy = EndpointPolicy::from_env().map_err(|why| (2, why))?;
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
    let subscription = subscription
        .map(|json| {
            serde_json::from_str::<PushSubscription>(&json)
                .map_err(|err| (2, format!("the argument is not a PushSubscription: {err}")))
        })
        .transpose()?;
    let broker = |err: PublishError| {
        (
            1,
            format!("RabbitMQ at {address} (PUSHQ_AMQP_URL): {}", sentence(&err)),
        )
    };
    let producer = Producer::connect(&amqp_url, topology, "/examples/send-notification")
        .await
        .map_err(broker)?
        .with_endpoint_policy(endpoint_policy);

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
