//! A worker with its own database, topology and fake push service.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pushq_fake_push::{BrowserSubscription, FakePushService};
use pushq_producer::{Producer, PushSubscription, SubscriptionRegister};
use pushq_schemas::Topology;
use pushq_worker::app::{App, Exit};
use pushq_worker::config::Settings;
use pushq_worker::push::VapidPrivateKey;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SUBJECT: &str = "mailto:tests@pushq.example";
/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn postgres_base() -> String {
    std::env::var("PUSHQ_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub struct TestApp {
    pub fake: FakePushService,
    pub producer: Producer,
    pub pool: PgPool,
    pub topology: Topology,
    pub vapid: VapidPrivateKey,
    pub raw: Channel,
    pub settings: Settings,
    pub connection_name: String,
    raw_connection: Connection,
    database: String,
    shutdown: CancellationToken,
    worker: tokio::task::JoinHandle<Exit>,
}

fn unique(label: &str) -> String {
    format!(
        "{label}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// `overrides` are extra PUSHQ_* variables.
    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let database = unique("pushq_test_");
        let prefix = unique("pushq-test-");
        let fake = FakePushService::start()
            .await
            .expect("fake push service starts");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PUSHQ_AMQP_URL".into(), AMQP_URL.into()),
            (
                "PUSHQ_DATABASE_URL".into(),
                format!("{}/{database}", postgres_base()),
            ),
            ("PUSHQ_TOPOLOGY_PREFIX".into(), prefix.clone()),
            ("PUSHQ_ENDPOINT_HOSTS".into(), fake.host_entry()),
            ("PUSHQ_ALLOW_HTTP".into(), "true".into()),
            ("PUSHQ_RETRY_DELAYS_MS".into(), "50,50".into()),
            ("PUSHQ_PREFETCH".into(), "32".into()),
            ("PUSHQ_SHUTDOWN_GRACE_MS".into(), "5000".into()),
            ("PUSHQ_DATABASE_MAX_CONNECTIONS".into(), "4".into()),
        ]);
        for (name, value) in overrides {
            vars.insert((*name).into(), (*value).into());
        }
        let settings =
            Settings::from_lookup(|name| vars.get(name).cloned()).expect("test settings are valid");
        let topology = settings.topology.clone();
        let vapid = VapidPrivateKey::generate();
        let app = App::build_with_vapid(settings.clone(), &vapid, SUBJECT)
            .await
            .expect("app builds (is PostgreSQL running?)");
        let connection_name = app.connection_name().to_owned();
        let pool = app.pool().clone();
        let mut ready = app.ready();
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(app.run(shutdown.clone()));
        tokio::time::timeout(WAIT, ready.wait_for(|ready| *ready))
            .await
            .expect("worker consumes in time (is RabbitMQ running?)")
            .expect("worker alive");
        let producer = Producer::connect(AMQP_URL, topology.clone(), "/tests")
            .await
            .expect("producer connects");
        let raw_connection = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("raw connection");
        let raw = raw_connection.create_channel().await.expect("raw channel");
        raw.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        Self {
            fake,
            producer,
            pool,
            topology,
            vapid,
            raw,
            settings,
            connection_name,
            raw_connection,
            database,
            shutdown,
            worker,
        }
    }

    /// A browser subscribed with this worker's VAPID key.
    pub fn browser(&self) -> BrowserSubscription {
        self.fake
            .subscribe_with_key(&self.vapid.public_key_base64url())
    }

    /// Registers through the SDK and waits until the worker stored it.
    pub async fn register(&self, browser: &BrowserSubscription, user: &str, tags: &[&str]) {
        let subscription: PushSubscription =
            serde_json::from_value(browser.to_json()).expect("browser JSON is a PushSubscription");
        self.producer
            .register(&SubscriptionRegister {
                user: user.into(),
                subscription,
                tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            })
            .await
            .expect("register published");
        let endpoint = browser.endpoint.clone();
        self.wait_until("the subscription is stored", || {
            let pool = self.pool.clone();
            let endpoint = endpoint.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM subscriptions WHERE endpoint = $1 AND user_id = $2",
                )
                .bind(endpoint)
                .bind(user)
                .fetch_one(&pool)
                .await
                .map(|n| n == 1)
                .unwrap_or(false)
            }
        })
        .await;
    }

    /// How many subscriptions are stored.
    pub async fn subscription_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM subscriptions")
            .fetch_one(&self.pool)
            .await
            .expect("count subscriptions")
    }

    /// Polls a condition on the database, bounded by [`WAIT`].
    pub async fn wait_until<F, Fut>(&self, what: &str, mut condition: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if condition().await {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
        }
    }

    /// Publishes a raw AMQP message to the producer exchange.
    pub async fn publish_raw(&self, routing_key: &str, properties: BasicProperties, body: &[u8]) {
        let confirm = self
            .raw
            .basic_publish(
                self.topology.exchange().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        assert!(
            confirm.take_message().is_none(),
            "{routing_key} was unroutable"
        );
    }

    /// Waits for `count` dead letters and returns (kind, error, body, headers).
    pub async fn dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        let channel = self.raw_connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                self.topology.dead_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume dead letters");
        let mut letters = Vec::new();
        while letters.len() < count {
            let delivery = tokio::time::timeout(WAIT, consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {count} dead letters arrived", letters.len())
                })
                .expect("consumer open")
                .expect("delivery");
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let text = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                _ => String::new(),
            };
            letters.push(DeadLetter {
                kind: text("x-pushq-error-kind"),
                error: text("x-pushq-error"),
                body: delivery.data.clone(),
                headers: headers.clone(),
            });
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let _ = channel.close(200, "done".into()).await;
        letters
    }

    /// Stops the worker and removes the database and topology.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let exit = tokio::time::timeout(WAIT, self.worker)
            .await
            .expect("worker stops in time")
            .expect("worker task");
        assert_eq!(exit, Exit::Clean);
        let _ = self.producer.close().await;
        let _ = self.raw_connection.close(200, "done".into()).await;
        self.pool.close().await;
        pushq_worker::broker::topology::delete(
            AMQP_URL,
            &self.topology,
            self.settings.retry_schedule().tiers(),
        )
        .await
        .expect("topology deleted");
        drop_database(&self.database).await;
    }
}

pub async fn drop_database(database: &str) {
    let mut admin = PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("database dropped");
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub kind: String,
    pub error: String,
    pub body: Vec<u8>,
    pub headers: FieldTable,
}

/// Binary-mode properties: attributes as `{prefix}{name}` headers.
pub fn binary_properties(
    prefix: &str,
    attributes: &[(&str, &str)],
    content_type: Option<&str>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in attributes {
        headers.insert(
            ShortString::from(format!("{prefix}{name}")),
            AMQPValue::LongString(LongString::from(*value)),
        );
    }
    let properties = BasicProperties::default().with_headers(headers);
    match content_type {
        Some(content_type) => properties.with_content_type(content_type.into()),
        None => properties,
    }
}

pub fn structured_properties() -> BasicProperties {
    BasicProperties::default().with_content_type("application/cloudevents+json".into())
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A queue bound to every result event of one topology.
pub struct ResultsProbe {
    channel: Channel,
    consumer: lapin::Consumer,
}

#[derive(Debug, Clone)]
pub struct ResultEvent {
    pub event_type: String,
    pub subject: Option<String>,
    pub data: pushq_schemas::DeliveryResult,
}

impl TestApp {
    /// Starts collecting result events; call before publishing what causes them.
    pub async fn watch_results(&self) -> ResultsProbe {
        let channel = self.raw_connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("probe queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.results_exchange().into(),
                "#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind probe");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume probe");
        ResultsProbe { channel, consumer }
    }

    /// Closes this replica's broker connection from the broker's side, as a
    /// network cut or a broker failover would.
    pub async fn cut_worker_connection(&self) {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "--quiet",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs");
        let listing = String::from_utf8_lossy(&output.stdout);
        let pid = listing
            .lines()
            .find(|line| line.contains(&self.connection_name))
            .and_then(|line| line.split('\t').next())
            .unwrap_or_else(|| panic!("the worker's connection is not listed:\n{listing}"))
            .to_owned();
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "test cuts the worker off"])
            .output()
            .await
            .expect("rabbitmqctl runs");
        assert!(
            closed.status.success(),
            "{}",
            String::from_utf8_lossy(&closed.stderr)
        );
    }
}

impl TestApp {
    /// What `pushq-worker dead list` shows, without removing anything.
    pub async fn dead_letters_peek(&self) -> pushq_worker::dead::DeadLetterList {
        pushq_worker::dead::list(AMQP_URL, &self.topology, 1000)
            .await
            .expect("dead list")
    }
}

impl ResultsProbe {
    /// The next `count` result events, bounded by [`WAIT`].
    pub async fn next(&mut self, count: usize) -> Vec<ResultEvent> {
        let mut events = Vec::new();
        while events.len() < count {
            let delivery = tokio::time::timeout(WAIT, self.consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {count} results arrived: {events:#?}",
                        events.len()
                    )
                })
                .expect("probe open")
                .expect("delivery");
            let event = pushq_schemas::CloudEvent::from_structured(&delivery.data)
                .expect("a structured result");
            events.push(ResultEvent {
                event_type: event.event_type,
                subject: event.subject,
                data: serde_json::from_value(event.data.expect("data")).expect("a delivery result"),
            });
        }
        events
    }

    /// Asserts nothing more arrives within `quiet`.
    pub async fn none_within(&mut self, quiet: Duration) {
        if let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.consumer.next()).await {
            panic!(
                "unexpected result: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
