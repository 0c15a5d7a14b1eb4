//! A worker with its own database, topology and fake push service.

mod forward;
mod process;
mod results;

mod messages;

pub use forward::{Forwarder, Silent};
pub use messages::{assert_dead_letter_kinds, binary_properties, new_id, structured_properties};
pub use process::{WorkerProcess, free_local_addr, wait_ready};
pub use results::ResultEvent;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
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

/// Tests that load the whole machine (thousands of notifications through
/// several worker processes) take turns, so that none of them measures how
/// they share two cores.
static HEAVY: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub async fn heavy() -> tokio::sync::SemaphorePermit<'static> {
    HEAVY.acquire().await.expect("never closed")
}

/// A one-off subscription target: the browser's subscription in the event.
pub fn inline(browser: &BrowserSubscription) -> pushq_producer::Target {
    pushq_producer::Target::Subscription(PushSubscription {
        endpoint: browser.endpoint.clone(),
        expiration_time: None,
        keys: pushq_producer::SubscriptionKeys {
            p256dh: browser.p256dh.clone(),
            auth: browser.auth.clone(),
        },
    })
}

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
    /// `/healthz`, `/readyz` and `/metrics`.
    pub http_addr: SocketAddr,
    raw_connection: Connection,
    database: String,
    worker: Worker,
    /// The worker's environment, for starting more replicas like it.
    vars: HashMap<String, String>,
}

/// Where the worker under test runs.
enum Worker {
    /// A task of the test's own runtime.
    Task {
        shutdown: CancellationToken,
        handle: tokio::task::JoinHandle<Exit>,
    },
    /// The `pushq-worker run` binary, as operators run it.
    Process(WorkerProcess),
}

pub fn unique(label: &str) -> String {
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
        Self::start(overrides, true).await
    }

    /// The worker as its own `pushq-worker run` process; `overrides` are extra
    /// environment variables (PUSHQ_*, OTEL_*, RUST_LOG).
    pub async fn spawn_process(overrides: &[(&str, &str)]) -> Self {
        Self::start(overrides, false).await
    }

    async fn start(overrides: &[(&str, &str)], in_process: bool) -> Self {
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
        // In a value, `{fake}` stands for the fake push service's `host:port`
        // and `{database}` for this test's database name.
        for (name, value) in overrides {
            let value = value
                .replace("{fake}", &fake.host_entry())
                .replace("{database}", &database);
            vars.insert((*name).into(), value);
        }
        let vapid = VapidPrivateKey::generate();
        // A key file asked for gets this test's key in PEM; else the variable
        // carries it (for worker processes and replicas).
        if let Some(path) = vars.get("PUSHQ_VAPID_PRIVATE_KEY_FILE") {
            std::fs::write(path, vapid_pem(&vapid)).expect("key file written");
        } else {
            vars.insert("PUSHQ_VAPID_PRIVATE_KEY".into(), vapid.to_base64url());
        }
        vars.insert("PUSHQ_VAPID_SUBJECT".into(), SUBJECT.into());
        let settings =
            Settings::from_lookup(|name| vars.get(name).cloned()).expect("test settings are valid");
        let topology = settings.topology.clone();
        let (worker, connection_name, pool, http_addr) = if in_process {
            let app = App::build_with_vapid(settings.clone(), &vapid, SUBJECT)
                .await
                .expect("app builds (is PostgreSQL running?)");
            let connection_name = app.connection_name().to_owned();
            let pool = app.pool().clone();
            let mut ready = app.ready();
            let shutdown = CancellationToken::new();
            let http_addr = pushq_worker::http::serve(
                "127.0.0.1:0".parse().expect("addr"),
                app.observed(),
                shutdown.clone(),
            )
            .await
            .expect("http endpoints");
            let handle = tokio::spawn(app.run(shutdown.clone()));
            tokio::time::timeout(WAIT, ready.wait_for(|ready| *ready))
                .await
                .expect("worker consumes in time (is RabbitMQ running?)")
                .expect("worker alive");
            let worker = Worker::Task { shutdown, handle };
            (worker, connection_name, pool, http_addr)
        } else {
            let (process, http_addr) = WorkerProcess::start(&vars).await;
            let pool = PgPool::connect(settings.database_url())
                .await
                .expect("the worker created its database");
            (Worker::Process(process), String::new(), pool, http_addr)
        };
        // These tests send what any producer might, endpoints the SDK would
        // refuse included: the worker's own refusal is what they check.
        let producer = Producer::connect(AMQP_URL, topology.clone(), "/tests")
            .await
            .expect("producer connects")
            .without_endpoint_check();
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
            http_addr,
            raw_connection,
            database,
            worker,
            vars,
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
        self.publish_to(&self.topology.exchange(), routing_key, properties, body)
            .await;
    }

    /// Publishes a raw AMQP message to any exchange (`""`: to a queue by name).
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) {
        let confirm = self
            .raw
            .basic_publish(
                exchange.into(),
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

    /// Stops the worker and removes the database and topology.
    pub async fn stop(mut self) {
        self.stop_worker().await;
        self.clean_up().await;
    }

    /// Stops the worker (SIGTERM for a process) and asserts a clean exit.
    pub async fn stop_worker(&mut self) {
        match &mut self.worker {
            Worker::Task { shutdown, handle } => {
                shutdown.cancel();
                let exit = tokio::time::timeout(WAIT, handle)
                    .await
                    .expect("worker stops in time")
                    .expect("worker task");
                assert_eq!(exit, Exit::Clean);
            }
            Worker::Process(process) => {
                let status = process.terminate().await;
                assert!(status.success(), "the worker exited with {status}");
            }
        }
    }

    /// Publishes a notification whose payload is `text` to `user`'s subscriptions.
    pub async fn send_text(&self, user: &str, text: &str) -> String {
        self.producer
            .send(&pushq_producer::NotificationSend::new(
                pushq_producer::Target::User(user.into()),
                Some(serde_json::json!(text)),
            ))
            .await
            .expect("published")
    }

    /// Another `pushq-worker run` process on the same database, topology,
    /// VAPID key and push service, once it is ready.
    pub async fn spawn_replica(&self) -> WorkerProcess {
        self.spawn_replica_serving().await.0
    }

    /// The same, with the address of its `/metrics`.
    pub async fn spawn_replica_serving(&self) -> (WorkerProcess, SocketAddr) {
        WorkerProcess::start(&self.vars).await
    }

    /// The worker process, when the test started one.
    pub fn process(&self) -> &WorkerProcess {
        match &self.worker {
            Worker::Process(process) => process,
            Worker::Task { .. } => panic!("this test's worker runs in-process"),
        }
    }

    pub fn process_mut(&mut self) -> &mut WorkerProcess {
        match &mut self.worker {
            Worker::Process(process) => process,
            Worker::Task { .. } => panic!("this test's worker runs in-process"),
        }
    }

    /// GETs one of the worker's HTTP endpoints: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path)
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    /// Removes the database and topology of a stopped worker.
    pub async fn clean_up(self) {
        let _ = self.producer.close().await;
        let _ = self.raw_connection.close(200, "done".into()).await;
        self.pool.close().await;
        pushq_worker::broker::topology::delete(AMQP_URL, &self.topology)
            .await
            .expect("topology deleted");
        drop_database(&self.database).await;
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), reqwest::Error> {
    pushq_worker::push::client::install_crypto_provider();
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// The key as `PUSHQ_VAPID_PRIVATE_KEY_FILE` takes it (SEC1 PEM).
pub fn vapid_pem(key: &VapidPrivateKey) -> String {
    use base64::Engine;
    use p256::pkcs8::LineEnding;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.to_base64url())
        .expect("base64url");
    p256::SecretKey::from_slice(&raw)
        .expect("a P-256 scalar")
        .to_sec1_pem(LineEnding::LF)
        .expect("PEM")
        .to_string()
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
