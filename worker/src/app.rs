//! The worker as a value: built from settings, then run until a token says
//! stop. It waits for RabbitMQ and PostgreSQL as crate::dependency says: a
//! lost broker connection is never fatal (the app reconnects with backoff
//! and reports readiness as it goes), a refusal is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::try_join_all;
use lapin::Connection;
use pushq_schemas::Topology;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::publisher::Publisher;
use crate::broker::{self, BrokerError, consume, topology};
use crate::config::{ConfigError, Settings};
use crate::consumer;
use crate::dependency::{self, DependencyError, Patience};
use crate::http::Observed;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineSettings};
use crate::push::limits::Limits;
use crate::push::{PushClient, VapidPrivateKey, VapidSigner};
use crate::step::Source;
use crate::store::{self, StoreError};
use crate::upkeep;
use pushq_schemas::error_text;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("could not prepare the database")]
    Store(#[from] StoreError),
    #[error("the VAPID private key cannot sign")]
    Vapid,
    #[error("could not build the HTTP client")]
    Http(#[source] reqwest::Error),
}

/// How `run` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Every in-flight message was finished within the grace period.
    Clean,
    /// Work was still running at the deadline; it went back to the broker.
    GraceExceeded,
    /// The broker refused this replica (credentials, virtual host,
    /// permissions): waiting cannot fix it, so it stops. The caller says
    /// why, where a log filter cannot hide it.
    Refused(DependencyError),
}

#[derive(Debug)]
pub struct App {
    settings: Settings,
    pipeline: Arc<Pipeline>,
    ready: watch::Sender<bool>,
    consumer_tag: String,
    replica: uuid::Uuid,
    /// The live replicas, as the heartbeat counts them: the rates' divisor.
    replicas: watch::Sender<u32>,
    /// Whether the current connection got as far as consuming, so that a
    /// loss resets the reconnect backoff.
    consumed_since_connecting: AtomicBool,
}

impl App {
    /// Builds with the configured VAPID key.
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let (key, subject) = settings.require_vapid()?;
        Self::build_with_vapid(settings, &key, &subject).await
    }

    /// Builds with the given VAPID key (the demo's throwaway one).
    pub async fn build_with_vapid(
        settings: Settings,
        key: &VapidPrivateKey,
        subject: &str,
    ) -> Result<Self, BuildError> {
        let pool = store::prepare(
            settings.database_url(),
            settings.database_max_connections,
            Patience::Forever,
        )
        .await?;
        let signer = VapidSigner::new(key, subject).map_err(|_| BuildError::Vapid)?;
        // Named after the topology, so that an operator (or a test) listing the
        // broker's connections sees which environment each replica serves.
        let replica = uuid::Uuid::new_v4();
        let consumer_tag = format!("{}-worker-{}", settings.topology.prefix(), replica.simple());
        // Alive from the start: its first claims must not look orphaned, and
        // its first messages are sent at its share of the rates.
        let live = store::workers::beat(&pool, replica, &consumer_tag).await?;
        let (replicas, sharing) = watch::channel(live);
        let metrics = Metrics::new().labelling_push_services_by(settings.endpoint_policy.clone());
        metrics.live_replicas(live);
        let push = PushClient::new(
            signer,
            settings.endpoint_policy.clone(),
            Limits::shared(settings.limits.clone(), sharing),
            &settings.http_settings(),
            metrics,
        )
        .map_err(BuildError::Http)?;
        let pipeline = Pipeline::new(
            pool,
            push,
            PipelineSettings {
                replica,
                schedule: settings.retry_schedule(),
                fanout_concurrency: 32,
                fanout_chunk: settings.fanout_chunk,
                max_consecutive_failures: settings.max_consecutive_failures,
                source: format!("/pushq-worker/{consumer_tag}"),
            },
        );
        Ok(Self {
            settings,
            pipeline: Arc::new(pipeline),
            ready: watch::channel(false).0,
            consumer_tag,
            replica,
            replicas,
            consumed_since_connecting: AtomicBool::new(false),
        })
    }

    pub fn pool(&self) -> &PgPool {
        self.pipeline.pool()
    }

    pub fn topology(&self) -> &Topology {
        &self.settings.topology
    }

    /// True while both queues have this replica's consumer.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// What `/readyz` and `/metrics` report on.
    pub fn observed(&self) -> Observed {
        Observed {
            consuming: self.ready(),
            pool: self.pool().clone(),
            metrics: self.pipeline.metrics().clone(),
        }
    }

    /// The name of this replica's broker connection (and its consumer tag).
    pub fn connection_name(&self) -> &str {
        &self.consumer_tag
    }

    /// Consumes until `shutdown` is cancelled, reconnecting after failures.
    pub async fn run(self, shutdown: CancellationToken) -> Exit {
        tokio::spawn(upkeep::sweep(
            self.pool().clone(),
            self.pipeline.metrics().clone(),
            self.settings.delivery_retention,
            shutdown.clone(),
        ));
        let beating = CancellationToken::new();
        let heartbeat = tokio::spawn(upkeep::heartbeat(
            self.pool().clone(),
            self.replica,
            self.consumer_tag.clone(),
            self.replicas.clone(),
            self.pipeline.metrics().clone(),
            beating.clone(),
        ));
        let exit = self.consume_until(&shutdown).await;
        // Its claims are final by now, or (past the grace period) its messages
        // are handed back and the process ends: either way the others may
        // take its claims at once rather than wait for it to be seen dead.
        beating.cancel();
        let _ = heartbeat.await;
        if let Err(err) = store::workers::leave(self.pool(), self.replica).await {
            tracing::debug!(error = %err, "leaving the replicas table");
        }
        exit
    }

    async fn consume_until(&self, shutdown: &CancellationToken) -> Exit {
        let url = self.settings.amqp_url();
        let mut delays = dependency::backoff();
        loop {
            let connection = tokio::select! {
                reached = broker::reach(url, &self.consumer_tag, Patience::Forever) => match reached {
                    Ok(connection) => connection,
                    Err(refused) => return Exit::Refused(refused),
                },
                () = shutdown.cancelled() => return Exit::Clean,
            };
            let result = self.consume(&connection, shutdown).await;
            let _ = self.ready.send(false);
            if let Err(err) = connection.close(200, "pushq worker stopping".into()).await {
                tracing::debug!(error = %err, "closing the broker connection");
            }
            let err = match result {
                Ok(exit) => return exit,
                Err(err) => err,
            };
            if shutdown.is_cancelled() {
                return Exit::Clean;
            }
            let broker = broker::dependency(url);
            if let Some(why) = broker::refused_after_connecting(&err) {
                return Exit::Refused(DependencyError::Refused {
                    dependency: broker,
                    why,
                });
            }
            tracing::warn!(
                "lost {broker}: {}; reconnecting",
                error_text::sentence(&err)
            );
            // A connection lost after consuming is tried again at once (the
            // attempts that fail say so, one line each); one that never got
            // as far as consuming (a queue declared with other arguments)
            // would fail again at once, in a loop, so it waits first.
            if self
                .consumed_since_connecting
                .swap(false, Ordering::Relaxed)
            {
                delays = dependency::backoff();
                continue;
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => return Exit::Clean,
            }
        }
    }

    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
    ) -> Result<Exit, BrokerError> {
        let topology = &self.settings.topology;
        let publisher = Publisher::open(connection, topology.clone()).await?;
        topology::declare(connection, topology).await?;
        let prefetch = self.settings.prefetch;
        let queues = [
            (topology.jobs_queue(), Source::Producer),
            (topology.due_queue(), Source::Producer),
            (topology.subscriptions_queue(), Source::Producer),
            (topology.feedback_queue(), Source::Feedback),
        ];
        let mut channels = Vec::with_capacity(queues.len());
        let mut consumers = Vec::with_capacity(queues.len());
        for (queue, source) in queues {
            let (channel, consumer) =
                consume::open(connection, &queue, prefetch, &self.consumer_tag).await?;
            channels.push(channel);
            consumers.push((queue, source, consumer));
        }
        let _ = self.ready.send(true);
        self.consumed_since_connecting
            .store(true, Ordering::Relaxed);
        tracing::info!(prefix = topology.prefix(), prefetch, "consuming");

        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let workers = consumer::Workers {
            pipeline: self.pipeline.clone(),
            publisher: publisher.clone(),
            tracker: tracker.clone(),
            stop: stop.clone(),
        };
        let consumed = try_join_all(consumers.into_iter().zip(&channels).map(
            |((queue, source, consumer), channel)| {
                consumer::run(channel, consumer, queue, source, workers.clone())
            },
        ))
        .await;
        let _ = self.ready.send(false);
        // Whatever ended consuming, in-flight tasks stop waiting on retries.
        stop.cancel();
        consumed?;
        tracker.close();
        let grace = self.settings.shutdown_grace;
        tracing::info!(
            in_flight = tracker.len(),
            grace_ms = grace.as_millis() as u64,
            "stopped consuming; finishing in-flight work"
        );
        let exit = if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
            Exit::Clean
        } else {
            tracing::warn!(
                unfinished = tracker.len(),
                "grace period over; unfinished messages go back to the broker"
            );
            Exit::GraceExceeded
        };
        // Closing the channels hands anything unacked back to the broker;
        // what was acked must reach it first, or it comes back too.
        for channel in &channels {
            if let Err(err) = consume::settle_acks(channel, prefetch).await {
                tracing::warn!(error = %err, "the last acks may not have reached the broker; their messages may come back");
            }
        }
        for channel in channels.iter().chain([publisher.channel()]) {
            let _ = channel.close(200, "pushq worker stopping".into()).await;
        }
        Ok(exit)
    }
}
