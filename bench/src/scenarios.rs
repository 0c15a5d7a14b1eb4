//! The scenarios, each against a fresh worker process.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use pushq_producer::{
    EndpointPolicy, NotificationSend, Producer, PushSubscription, SubscriptionKeys, Target,
};
use pushq_schemas::Topology;
use pushq_schemas::keys::base64url;
use pushq_worker::app::App;
use pushq_worker::config::Settings;
use pushq_worker::push::VapidPrivateKey;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::machine;
use crate::measure;
use crate::repeats;
use crate::report::{self, Report};
use crate::sink::Sink;

pub struct Options {
    pub count: usize,
    pub scenarios: Vec<String>,
    pub payload_bytes: usize,
    pub json: Option<PathBuf>,
    pub peer: bool,
}

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PUBLISH_CONCURRENCY: usize = 256;
/// How long the worker runs on after the last subscription was reached, so
/// that a late repeat is counted too (longer than the first retry delay).
const REPEAT_SETTLE: Duration = Duration::from_millis(1500);
/// Browser key pairs shared round-robin by the subscriptions (generating
/// 100k would take longer than the scenario).
const KEY_POOL: usize = 16;

fn database_url() -> String {
    std::env::var("PUSHQ_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/pushq_bench".into())
}

/// The hidden `worker` subcommand: `pushq-worker run`, configured by the
/// environment the benchmark gives it, stopped by SIGTERM.
pub async fn worker_process(settings: Settings) -> anyhow::Result<()> {
    let app = App::build(settings.clone()).await?;
    let shutdown = CancellationToken::new();
    pushq_worker::http::serve(settings.http_addr, app.observed(), shutdown.clone()).await?;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        signal.cancel();
    });
    app.run(shutdown).await;
    Ok(())
}

struct Bench {
    options: Options,
    sink: Sink,
    pool: sqlx::PgPool,
    topology: Topology,
    vapid: VapidPrivateKey,
    keys: Vec<SubscriptionKeys>,
    machine: String,
    crypto_floor_us: f64,
}

pub async fn run_all(options: Options) -> anyhow::Result<()> {
    pushq_worker::push::client::install_crypto_provider();
    let machine = measure::machine();
    eprintln!("measuring the crypto floor…");
    let crypto_floor_us = measure::ece_us(3000, options.payload_bytes);
    let vapid_us = measure::vapid_sign_us(500);
    let web_push_us = measure::web_push_crate_us(3000, options.payload_bytes);
    let pool =
        pushq_worker::store::prepare(&database_url(), 4, pushq_worker::dependency::Patience::ONCE)
            .await
            .context("while preparing the benchmark database (is PostgreSQL running?)")?;
    let topology = Topology::new(format!(
        "pushq-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
    .map_err(anyhow::Error::msg)?;
    let keys = (0..KEY_POOL)
        .map(|_| {
            let secret = p256::SecretKey::random(&mut rand_core::OsRng);
            let mut auth = [0u8; 16];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
            SubscriptionKeys {
                p256dh: base64url(secret.public_key().to_encoded_point(false).as_bytes()),
                auth: base64url(&auth),
            }
        })
        .collect();
    let bench = Bench {
        sink: Sink::start().await?,
        pool,
        topology,
        vapid: VapidPrivateKey::generate(),
        keys,
        machine,
        crypto_floor_us,
        options,
    };
    let mut reports: Vec<Report> = Vec::new();
    for scenario in bench.options.scenarios.clone() {
        eprintln!("scenario {scenario}…");
        let paced_rate = reports
            .iter()
            .find(|r| r.scenario == "unicast-stored" || r.scenario == "unicast-inline")
            .map(|r| r.per_second / 2.0);
        let report = bench.scenario(&scenario, paced_rate).await?;
        reports.push(report);
    }
    if bench.options.peer {
        eprintln!("scenario {}…", crate::peer::SCENARIO);
        reports.push(crate::peer::run(&bench.peer_inputs()).await?);
    }
    let _ = pushq_worker::broker::topology::delete(AMQP_URL, &bench.topology).await;
    report::print_table(&reports, crypto_floor_us, vapid_us, web_push_us);
    machine::print_table(&reports);
    crate::peer::print_ratios(&reports);
    if let Some(path) = &bench.options.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)
            .with_context(|| format!("while writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(failure) = repeats::failure(&reports) {
        bail!(failure);
    }
    Ok(())
}

impl Bench {
    fn peer_inputs(&self) -> crate::peer::Inputs<'_> {
        crate::peer::Inputs {
            sink: &self.sink,
            keys: &self.keys,
            vapid: &self.vapid,
            prefix: self.topology.prefix(),
            count: self.options.count,
            payload_bytes: self.options.payload_bytes,
            crypto_floor_us: self.crypto_floor_us,
            machine: &self.machine,
            pool: &self.pool,
        }
    }

    fn worker_env(&self, http_port: u16) -> Vec<(String, String)> {
        [
            ("PUSHQ_AMQP_URL", AMQP_URL.to_owned()),
            ("PUSHQ_DATABASE_URL", database_url()),
            ("PUSHQ_TOPOLOGY_PREFIX", self.topology.prefix().to_owned()),
            ("PUSHQ_ENDPOINT_HOSTS", self.sink.host_entry.clone()),
            ("PUSHQ_ALLOW_HTTP", "true".to_owned()),
            ("PUSHQ_VAPID_PRIVATE_KEY", self.vapid.to_base64url()),
            (
                "PUSHQ_VAPID_SUBJECT",
                "mailto:bench@pushq.example".to_owned(),
            ),
            ("PUSHQ_HTTP_ADDR", format!("127.0.0.1:{http_port}")),
            // The sink is an unknown origin; its default rate would cap the run.
            ("PUSHQ_RATE_LIMIT_DEFAULT", "0".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn subscription(&self, n: u32) -> PushSubscription {
        subscription(&self.sink, &self.keys, n)
    }

    async fn seed(&self, count: usize, tag: &str) -> anyhow::Result<()> {
        for start in (0..count).step_by(5000) {
            let end = (start + 5000).min(count);
            let ids: Vec<uuid::Uuid> = (start..end).map(|_| uuid::Uuid::now_v7()).collect();
            let subs: Vec<PushSubscription> =
                (start..end).map(|n| self.subscription(n as u32)).collect();
            sqlx::query(
                "INSERT INTO subscriptions (id, user_id, endpoint, p256dh, auth, tags)
                 SELECT id, 'bench', endpoint, p256dh, auth, ARRAY[$5]
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS s(id, endpoint, p256dh, auth)",
            )
            .bind(&ids)
            .bind(subs.iter().map(|s| s.endpoint.clone()).collect::<Vec<_>>())
            .bind(subs.iter().map(|s| s.keys.p256dh.clone()).collect::<Vec<_>>())
            .bind(subs.iter().map(|s| s.keys.auth.clone()).collect::<Vec<_>>())
            .bind(tag)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Publishes one notification to each subscription in `range` (one-off
    /// or stored by endpoint), noting when each was handed to the producer.
    async fn publish_unicast(
        &self,
        producer: &Arc<Producer>,
        range: std::ops::Range<usize>,
        inline: bool,
        payload: &serde_json::Value,
        sent_at: &mut [Instant],
    ) -> anyhow::Result<()> {
        publish_timed(producer, range, sent_at, |n| {
            let to = if inline {
                Target::Subscription(self.subscription(n as u32))
            } else {
                Target::Endpoint(self.sink.endpoint(n as u32))
            };
            NotificationSend::new(to, Some(payload.clone()))
        })
        .await
    }

    async fn scenario(&self, name: &str, paced_rate: Option<f64>) -> anyhow::Result<Report> {
        let count = self.options.count;
        sqlx::query("TRUNCATE subscriptions, deliveries")
            .execute(&self.pool)
            .await?;
        self.sink.reset();
        let tag = "bench";
        if matches!(name, "unicast-stored" | "broadcast" | "unicast-paced") {
            self.seed(count, tag).await?;
        }
        let http_port = free_port()?;
        let mut worker = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .envs(self.worker_env(http_port))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("while starting the worker process")?;
        let pid = worker.id().context("the worker has no pid")?;
        wait_ready(http_port).await?;
        // The sink is on loopback over http, as the worker's settings allow.
        let sink_policy = EndpointPolicy::parse(&self.sink.host_entry, true)
            .map_err(|why| anyhow::anyhow!("the sink's address: {why}"))?;
        let producer = Arc::new(
            Producer::connect(AMQP_URL, self.topology.clone(), "/bench")
                .await?
                .with_endpoint_policy(sink_policy),
        );
        let payload = json!("x".repeat(self.options.payload_bytes.saturating_sub(2)));
        let machine_start =
            machine::Start::take(&self.pool, format!("{}-worker-", self.topology.prefix())).await;
        let cpu_before = measure::process_cpu_us(pid)?;
        let started = Instant::now();
        let mut sent_at: Vec<Instant> = vec![started; count];
        match name {
            "broadcast" => {
                producer
                    .send(&NotificationSend::new(
                        Target::Tag(tag.into()),
                        Some(payload),
                    ))
                    .await?;
            }
            "unicast-inline" | "unicast-stored" => {
                let inline = name == "unicast-inline";
                self.publish_unicast(&producer, 0..count, inline, &payload, &mut sent_at)
                    .await?;
            }
            "unicast-paced" => {
                let rate = paced_rate
                    .context("unicast-paced runs after a unicast scenario, at half its rate")?;
                let per_tick = ((rate / 100.0).ceil() as usize).max(1);
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let mut n = 0;
                while n < count {
                    tick.tick().await;
                    let batch = n..(n + per_tick).min(count);
                    n = batch.end;
                    self.publish_unicast(&producer, batch, false, &payload, &mut sent_at)
                        .await?;
                }
            }
            other => bail!("unknown scenario {other:?}"),
        }
        let timeout = Duration::from_secs(60) + Duration::from_millis(count as u64);
        let arrivals = self.sink.wait_for(count, timeout).await;
        let cpu_after = measure::process_cpu_us(pid)?;
        let machine_end = machine_start.cpu_end().await;
        let rss = measure::peak_rss_mb(pid)?;
        // A repeat may come after the last subscription was first reached
        // (a retry waits up to its first delay, 1 s by default): the worker
        // is given that long before it is stopped.
        tokio::time::sleep(REPEAT_SETTLE).await;
        stop(&mut worker).await;
        let left_in_queues = repeats::messages_left(&self.topology).await?;
        if let Ok(producer) = Arc::try_unwrap(producer) {
            let _ = producer.close().await;
        }

        // A subscription reached twice counts once for the figures. Repeats
        // are counted over everything that arrived until the worker exited
        // (a late one is a repeat too) and reported with what tells their
        // cause apart.
        let everything = self.sink.arrivals();
        let repeated = everything.len() - repeats::distinct(&everything);
        if repeated > 0 {
            repeats::report(&self.pool, name, &everything, repeated).await;
        }
        let (seconds, latencies) = report::timing(&arrivals, &sent_at, started);
        let delivered = latencies.len();
        let machine_per_msg = machine_end
            .finish(&self.pool, delivered, cpu_after - cpu_before)
            .await;
        Ok(Report {
            machine_per_msg,
            repeated,
            left_in_queues,
            ..Report::of(report::Run {
                scenario: name,
                count,
                seconds,
                latencies,
                cpu_us: cpu_after - cpu_before,
                peak_rss_mb: rss,
                crypto_floor_us: self.crypto_floor_us,
                machine: &self.machine,
            })
        })
    }
}

/// The `n`th subscription of the sink, its keys taken from the pool in turn.
pub fn subscription(sink: &Sink, keys: &[SubscriptionKeys], n: u32) -> PushSubscription {
    PushSubscription {
        endpoint: sink.endpoint(n),
        expiration_time: None,
        keys: keys[n as usize % keys.len()].clone(),
    }
}

/// Publishes `send_for(n)` for each `n` in `range`, noting in `sent_at[n]`
/// when each was handed to the producer.
pub async fn publish_timed(
    producer: &Arc<Producer>,
    range: std::ops::Range<usize>,
    sent_at: &mut [Instant],
    send_for: impl Fn(usize) -> NotificationSend,
) -> anyhow::Result<()> {
    let times: Vec<(usize, Instant)> = stream::iter(range)
        .map(|n| {
            let producer = producer.clone();
            let send = send_for(n);
            async move {
                let at = Instant::now();
                producer.send(&send).await.map(|_| (n, at))
            }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect()
        .await?;
    for (n, at) in times {
        sent_at[n] = at;
    }
    Ok(())
}

/// A port for the worker's health endpoints, free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the worker was not ready within 60 s");
        }
    }
}

async fn stop(worker: &mut tokio::process::Child) {
    if let Some(pid) = worker.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(40), worker.wait())
        .await
        .is_err()
    {
        let _ = worker.kill().await;
    }
}
