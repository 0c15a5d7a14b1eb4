//! `pushq-worker demo`: the whole flow on this machine. A fake push service on
//! loopback plays every browser; N subscriptions are registered and N
//! notifications sent through the producer SDK; the worker runs in-process;
//! every message is decrypted and compared with what was sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt, stream};
use indicatif::{ProgressBar, ProgressStyle};
use pushq_fake_push::FakePushService;
use pushq_producer::{NotificationSend, Producer, PushSubscription, SubscriptionRegister, Target};
use pushq_schemas::Topology;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Exit};
use crate::broker::{self, topology};
use crate::config::Settings;
use crate::dependency::Patience;
use crate::push::{EndpointPolicy, VapidPrivateKey};
use crate::store::{self, deliveries, subscriptions};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How many subscriptions to register and notifications to send (at
    /// most 100000: every browser's keys are held in memory).
    #[arg(long, default_value_t = 1000, value_parser = demo_count)]
    pub count: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    pub sent: usize,
    /// Delivered, decrypted and equal to what was sent.
    pub delivered: usize,
    pub failed: usize,
    pub elapsed: Duration,
}

impl DemoSummary {
    pub fn per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn table(&self) -> String {
        format!(
            "\n  pushq demo\n  ─────────────────────────\n  sent          {:>9}\n  delivered     {:>9}\n  failed        {:>9}\n  elapsed       {:>8.2}s\n  per second    {:>9.0}\n",
            self.sent,
            self.delivered,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.per_second()
        )
    }
}

const SUBJECT: &str = "mailto:demo@pushq.example";

const MAX_COUNT: usize = 100_000;

fn demo_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(count) if count <= MAX_COUNT => Ok(count),
        _ => Err(format!("expected a whole number from 0 to {MAX_COUNT}")),
    }
}

/// How long the demo waits for RabbitMQ and PostgreSQL before saying how to start them.
const DEMO_PATIENCE: Patience = Patience::Within(Duration::from_secs(3));

pub async fn run(mut settings: Settings, args: &DemoArgs) -> anyhow::Result<DemoSummary> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let topology = Topology::new(format!("{}-demo-{run_id}", settings.topology.prefix()))
        .map_err(anyhow::Error::msg)?;
    let fake = FakePushService::start()
        .await
        .context("while starting the fake push service")?;
    let key = VapidPrivateKey::generate();
    settings.topology = topology.clone();
    settings.endpoint_policy =
        EndpointPolicy::parse(&fake.host_entry(), true).map_err(anyhow::Error::msg)?;
    let user_prefix = format!("demo-{run_id}-");
    let event_source = format!("/pushq/demo/{run_id}");

    // On a machine where RabbitMQ or PostgreSQL is not running, a few
    // seconds and one sentence, not a worker waiting for them for ever.
    let broker = broker::reach(settings.amqp_url(), "pushq-demo-check", DEMO_PATIENCE).await?;
    let _ = broker.close(200, "reachable".into()).await;
    store::prepare(settings.database_url(), 1, DEMO_PATIENCE)
        .await?
        .close()
        .await;

    let app = App::build_with_vapid(settings.clone(), &key, SUBJECT)
        .await
        .context("while preparing the database")?;
    let pool = app.pool().clone();
    let mut ready = app.ready();
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(app.run(shutdown.clone()));

    let made = Made {
        topology: &topology,
        user_prefix: &user_prefix,
        event_source: &event_source,
    };
    // Interrupted (Ctrl-C, SIGTERM), the demo still removes what it made.
    let result = tokio::select! {
        result = async {
            tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|ready| *ready))
                .await
                .context("the worker did not start consuming within 30 s")?
                .context("the worker stopped")?;
            exercise(&settings, &made, &fake, &key, &pool, args).await
        } => result,
        () = crate::shutdown::requested() => Err(anyhow::Error::new(Interrupted { cleaned: false })),
    };

    shutdown.cancel();
    let exit = worker.await.context("the worker task failed")?;
    let cleaned = cleanup(&settings, &made, &pool).await;
    let result = result.map_err(|err| match err.downcast::<Interrupted>() {
        Ok(_) => anyhow::Error::new(Interrupted { cleaned }),
        Err(err) => err,
    });
    if exit != Exit::Clean {
        bail!("the worker did not stop cleanly");
    }
    result
}

/// The demo was stopped by a signal before it finished.
#[derive(Debug, thiserror::Error)]
#[error("interrupted; {}", if *cleaned {
    "the demo removed the subscriptions, delivery records and queues it had made"
} else {
    "the demo could not remove all it had made (see the warnings above)"
})]
pub struct Interrupted {
    cleaned: bool,
}

/// What one demo run makes, and removes again.
struct Made<'a> {
    topology: &'a Topology,
    user_prefix: &'a str,
    /// Its events' source, which keys their delivery records.
    event_source: &'a str,
}

async fn exercise(
    settings: &Settings,
    made: &Made<'_>,
    fake: &FakePushService,
    key: &VapidPrivateKey,
    pool: &sqlx::PgPool,
    args: &DemoArgs,
) -> anyhow::Result<DemoSummary> {
    let count = args.count;
    let user_prefix = made.user_prefix;
    let producer = Arc::new(
        Producer::connect(
            settings.amqp_url(),
            made.topology.clone(),
            made.event_source,
        )
        .await
        .context("while connecting the producer")?
        // The fake push service is on loopback over http, as the demo's worker allows.
        .with_endpoint_policy(settings.endpoint_policy.clone()),
    );
    eprintln!("registering {count} subscriptions…");
    let mut browsers = Vec::with_capacity(count);
    for i in 0..count {
        browsers.push(fake.subscribe_with_key(&key.public_key_base64url()));
        // Each browser's keys cost CPU: a signal must still be heard.
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    stream::iter(browsers.iter().enumerate())
        .map(|(i, browser)| {
            let producer = producer.clone();
            async move {
                let subscription: PushSubscription = serde_json::from_value(browser.to_json())?;
                producer
                    .register(&SubscriptionRegister {
                        user: format!("{user_prefix}{i}"),
                        subscription,
                        tags: vec!["demo".into()],
                    })
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<()>()
        .await
        .context("while registering subscriptions")?;
    wait_for_subscriptions(pool, user_prefix, count).await?;

    eprintln!("sending {count} notifications…");
    let started = Instant::now();
    let progress = progress_bar(count);
    let mut received = fake.watch_received();
    let initial = *received.borrow();
    let sent = Arc::new(AtomicUsize::new(0));
    let progress_task = {
        let progress = progress.clone();
        let sent = sent.clone();
        let mut redraw = tokio::time::interval(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = received.changed() => if changed.is_err() { break },
                    _ = redraw.tick() => {}
                }
                let done = received.borrow().saturating_sub(initial);
                progress.set_position(done as u64);
                progress.set_message(format!("sent {:>6}", sent.load(Ordering::Relaxed)));
                if done >= count {
                    break;
                }
            }
        })
    };
    stream::iter(0..count)
        .map(|i| {
            let producer = producer.clone();
            let user = format!("{user_prefix}{i}");
            let sent = sent.clone();
            async move {
                let mut send =
                    NotificationSend::new(Target::User(user), Some(expected_payload(i, count)));
                send.ttl = 600;
                let published = producer.send(&send).await;
                sent.fetch_add(usize::from(published.is_ok()), Ordering::Relaxed);
                published
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await
        .context("while publishing notifications")?;

    // Generous, but bounded: a stuck delivery fails the demo instead of hanging it.
    let deadline = Duration::from_secs(60) + Duration::from_millis(20 * count as u64);
    let waited = fake.wait_for_received(initial + count, deadline).await;
    let elapsed = started.elapsed();
    progress_task.abort();
    progress.finish_and_clear();
    if let Err(err) = &waited {
        eprintln!("{err}");
    }

    let by_subscription: HashMap<&str, usize> = browsers
        .iter()
        .enumerate()
        .map(|(i, browser)| (browser.id.as_str(), i))
        .collect();
    let mut verified = vec![0usize; count];
    for push in fake.received() {
        if let Some(&i) = by_subscription.get(push.subscription_id.as_str())
            && push.json() == Some(expected_payload(i, count))
            && push.vapid_subject == SUBJECT
        {
            verified[i] += 1;
        }
    }
    let delivered = verified.iter().filter(|&&n| n == 1).count();
    let duplicates = verified.iter().filter(|&&n| n > 1).count();
    if duplicates > 0 {
        eprintln!("{duplicates} subscriptions received a notification more than once");
    }
    let _ = Arc::try_unwrap(producer).map(|producer| producer.close());
    Ok(DemoSummary {
        sent: count,
        delivered,
        failed: count - delivered,
        elapsed,
    })
}

fn expected_payload(i: usize, count: usize) -> serde_json::Value {
    json!({
        "title": "pushq demo",
        "body": format!("Notification {} of {count}", i + 1),
        "url": format!("/demo/{i}"),
    })
}

fn progress_bar(count: usize) -> ProgressBar {
    let progress = ProgressBar::new(count as u64);
    if let Ok(style) =
        ProgressStyle::with_template("  {msg}  delivered {pos:>6}/{len}  {bar:30}  {per_sec}")
    {
        progress.set_style(style);
    }
    progress
}

/// Registration and sending go through different queues, so the demo waits
/// for every subscription to be stored before it sends (bounded).
async fn wait_for_subscriptions(
    pool: &sqlx::PgPool,
    user_prefix: &str,
    count: usize,
) -> anyhow::Result<()> {
    let deadline =
        Instant::now() + Duration::from_secs(30) + Duration::from_millis(10 * count as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let stored = subscriptions::count_by_user_prefix(pool, user_prefix).await?;
        if stored >= count as i64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {stored} of {count} subscriptions were stored in time");
        }
    }
}

/// Removes what the demo made: its subscriptions, delivery records, queues
/// and exchanges.
/// True when all of it is gone. Each step is bounded, so that a database or
/// broker lost meanwhile costs seconds, not a pool's timeouts in a row.
async fn cleanup(settings: &Settings, made: &Made<'_>, pool: &sqlx::PgPool) -> bool {
    let bound = Duration::from_secs(5);
    let steps = [
        (
            "subscriptions",
            tokio::time::timeout(
                bound,
                subscriptions::delete_by_user_prefix(pool, made.user_prefix),
            )
            .await
            .map(|done| done.map(drop).map_err(|err| err.to_string())),
        ),
        (
            "delivery records",
            tokio::time::timeout(
                bound,
                deliveries::delete_by_event_source(pool, made.event_source),
            )
            .await
            .map(|done| done.map(drop).map_err(|err| err.to_string())),
        ),
        (
            "queues and exchanges",
            tokio::time::timeout(bound, topology::delete(settings.amqp_url(), made.topology))
                .await
                .map(|done| done.map_err(|err| err.to_string())),
        ),
    ];
    let mut cleaned = true;
    for (what, done) in steps {
        let failed = match done {
            Ok(Ok(())) => continue,
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {} s", bound.as_secs()),
        };
        cleaned = false;
        tracing::warn!("could not delete the demo's {what}: {failed}");
    }
    cleaned
}
