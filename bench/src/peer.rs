//! `--peer`: the usual alternative, measured in the same run as pushq. A
//! minimal worker on Node's `web-push` and `amqplib` (bench/peers/node-web-push)
//! consumes a plain durable queue bound to an exchange of its own, fed the
//! same unicast-inline events (same payload size, same key pool) that reach
//! the same sink; its delivered/s, CPU per notification and peak RSS come
//! from /proc as the pushq worker's do. It has no database, so no
//! idempotency, no retries and no result events.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use pushq_producer::{EndpointPolicy, NotificationSend, Producer, SubscriptionKeys, Target};
use pushq_schemas::Topology;
use pushq_worker::push::VapidPrivateKey;
use tokio::sync::mpsc;

use crate::measure;
use crate::report::Report;
use crate::scenarios::AMQP_URL;
use crate::sink::Sink;

/// The scenario's name in the table and the JSON.
pub const SCENARIO: &str = "peer-node-web-push-unicast";
/// The peer's prefetch, as its docs suggest bounding unacked messages.
const PREFETCH: u16 = 256;

/// What the peer's run needs from the benchmark.
pub struct Inputs<'a> {
    pub sink: &'a Sink,
    pub keys: &'a [SubscriptionKeys],
    pub vapid: &'a VapidPrivateKey,
    /// The benchmark's topology prefix; the peer's exchange and queue are
    /// named after it, apart from pushq's.
    pub prefix: &'a str,
    pub count: usize,
    pub payload_bytes: usize,
    pub crypto_floor_us: f64,
    pub machine: &'a str,
    /// The benchmark's database: the peer has none, but the machine's
    /// table reads its counters as for pushq's rows.
    pub pool: &'a sqlx::PgPool,
}

/// One line the peer prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLine {
    /// It consumes.
    Ready,
    /// Its totals, printed as SIGTERM stops it.
    Done {
        acked: u64,
        failed: u64,
    },
    Other,
}

pub fn parse_line(line: &str) -> PeerLine {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
        return PeerLine::Other;
    };
    if value.get("ready").and_then(serde_json::Value::as_bool) == Some(true) {
        return PeerLine::Ready;
    }
    match (
        value.get("acked").and_then(serde_json::Value::as_u64),
        value.get("failed").and_then(serde_json::Value::as_u64),
    ) {
        (Some(acked), Some(failed)) => PeerLine::Done { acked, failed },
        _ => PeerLine::Other,
    }
}

/// The peer's folder, in the source tree the benchmark was built from.
pub fn peer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/node-web-push")
}

/// `npm ci` when node_modules is missing.
fn ensure_installed(dir: &Path) -> anyhow::Result<()> {
    if dir.join("node_modules").is_dir() {
        return Ok(());
    }
    eprintln!("installing the peer's npm packages (npm ci)…");
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .context("while running npm ci for the peer (are node and npm installed?)")?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
    }
    Ok(())
}

/// The peer's process and its stdout, line by line.
struct PeerProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl PeerProcess {
    fn start(dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg("worker.js")
            .current_dir(dir)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .spawn()
            .context("while starting the peer (node worker.js)")?;
        let stdout = child.stdout.take().context("the peer has no stdout")?;
        let (send, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    /// The next line the peer prints that is not `Other`, within `timeout`.
    async fn next(&mut self, timeout: Duration) -> Option<PeerLine> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .ok()??;
            match parse_line(&line) {
                PeerLine::Other => eprintln!("peer: {line}"),
                known => return Some(known),
            }
        }
    }

    /// SIGTERM, then its totals; killed if it does not exit.
    async fn stop(mut self) -> Option<(u64, u64)> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let done = match self.next(Duration::from_secs(10)).await {
            Some(PeerLine::Done { acked, failed }) => Some((acked, failed)),
            _ => None,
        };
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        done
    }
}

/// The peer's run: unicast-inline through Node's `web-push`.
pub async fn run(inputs: &Inputs<'_>) -> anyhow::Result<Report> {
    let dir = peer_dir();
    ensure_installed(&dir)?;
    let count = inputs.count;
    inputs.sink.reset();

    // An exchange of its own (so pushq's jobs queue, bound to the bench's
    // exchange, gets none of these) and a plain durable queue bound to it
    // for the event type.
    let topology = Topology::new(format!("{}-peer", inputs.prefix)).map_err(anyhow::Error::msg)?;
    let queue = format!("{}.node-web-push", topology.prefix());
    let sink_policy = EndpointPolicy::parse(&inputs.sink.host_entry, true)
        .map_err(|why| anyhow::anyhow!("the sink's address: {why}"))?;
    let producer = Arc::new(
        Producer::connect(AMQP_URL, topology.clone(), "/bench")
            .await?
            .with_endpoint_policy(sink_policy),
    );
    let admin = pushq_worker::broker::connect(AMQP_URL, "pushq-bench-peer").await?;
    let channel = admin.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            topology.exchange().into(),
            pushq_schemas::event_types::NOTIFICATION_SEND.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let connection_name = format!("{}-worker-node-web-push", topology.prefix());
    let env = [
        ("PEER_AMQP_URL", AMQP_URL.to_owned()),
        ("PEER_QUEUE", queue.clone()),
        ("PEER_CONNECTION_NAME", connection_name.clone()),
        ("PEER_PREFETCH", PREFETCH.to_string()),
        ("PEER_VAPID_PUBLIC_KEY", inputs.vapid.public_key_base64url()),
        ("PEER_VAPID_PRIVATE_KEY", inputs.vapid.to_base64url()),
        (
            "PEER_VAPID_SUBJECT",
            "mailto:bench@pushq.example".to_owned(),
        ),
    ];
    let mut peer = PeerProcess::start(&dir, &env)?;
    let pid = peer.child.id();
    if peer.next(Duration::from_secs(30)).await != Some(PeerLine::Ready) {
        let _ = peer.stop().await;
        bail!("the peer did not say it was ready within 30 s");
    }

    let payload = serde_json::json!("x".repeat(inputs.payload_bytes.saturating_sub(2)));
    let machine_start = crate::machine::Start::take(inputs.pool, connection_name).await;
    let cpu_before = measure::process_cpu_us(pid)?;
    let started = Instant::now();
    let mut sent_at = vec![started; count];
    crate::scenarios::publish_timed(&producer, 0..count, &mut sent_at, |n| {
        let to = crate::scenarios::subscription(inputs.sink, inputs.keys, n as u32);
        NotificationSend::new(Target::Subscription(to), Some(payload.clone()))
    })
    .await?;
    let timeout = Duration::from_secs(60) + Duration::from_millis(count as u64);
    let arrivals = inputs.sink.wait_for(count, timeout).await;
    let cpu_after = measure::process_cpu_us(pid)?;
    let machine_end = machine_start.cpu_end().await;
    let rss = measure::peak_rss_mb(pid)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let totals = peer.stop().await;

    let left = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .unwrap_or(0);
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(topology.exchange().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = admin.close(200, "peer done".into()).await;
    if let Ok(producer) = Arc::try_unwrap(producer) {
        let _ = producer.close().await;
    }

    let everything = inputs.sink.arrivals();
    let repeated = everything.len() - crate::repeats::distinct(&everything);
    match totals {
        Some((acked, failed)) => eprintln!(
            "peer: {acked} acked, {failed} failed, {repeated} repeated arrivals, {left} left in its queue"
        ),
        None => eprintln!("peer: gave no totals at exit; {repeated} repeated arrivals"),
    }
    let (seconds, latencies) = crate::report::timing(&arrivals, &sent_at, started);
    // The peer makes no at-least-once promise to hold it to: its repeats
    // are printed above, and do not fail pushq's run.
    let machine_per_msg = machine_end
        .finish(inputs.pool, latencies.len(), cpu_after - cpu_before)
        .await;
    Ok(Report {
        machine_per_msg,
        ..Report::of(crate::report::Run {
            scenario: SCENARIO,
            count,
            seconds,
            latencies,
            cpu_us: cpu_after - cpu_before,
            peak_rss_mb: rss,
            crypto_floor_us: inputs.crypto_floor_us,
            machine: inputs.machine,
        })
    })
}

/// pushq's unicast-inline beside the peer's: (rate ratio, CPU ratio peer/pushq,
/// RSS ratio peer/pushq), when both ran.
pub fn ratios(reports: &[Report]) -> Option<(f64, f64, f64)> {
    let pushq = reports.iter().find(|r| r.scenario == "unicast-inline")?;
    let peer = reports.iter().find(|r| r.scenario == SCENARIO)?;
    Some((
        pushq.per_second / peer.per_second.max(1e-9),
        peer.worker_cpu_us_per_msg / pushq.worker_cpu_us_per_msg.max(1e-9),
        peer.peak_rss_mb / pushq.peak_rss_mb.max(1e-9),
    ))
}

pub fn print_ratios(reports: &[Report]) {
    if let Some((rate, cpu, rss)) = ratios(reports) {
        println!(
            "pushq unicast-inline / peer (Node web-push, same run): {rate:.2}× the rate; the peer uses {cpu:.2}× the CPU per notification and {rss:.2}× the peak RSS"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peers_lines() {
        assert_eq!(parse_line(r#"{"ready":true}"#), PeerLine::Ready);
        assert_eq!(
            parse_line("{\"acked\":5000,\"failed\":2}\n"),
            PeerLine::Done {
                acked: 5000,
                failed: 2
            }
        );
        assert_eq!(parse_line("send failed: 500 oops"), PeerLine::Other);
        assert_eq!(parse_line(r#"{"ready":false}"#), PeerLine::Other);
        assert_eq!(parse_line(r#"{"acked":-1,"failed":0}"#), PeerLine::Other);
    }

    fn report(scenario: &str, per_second: f64, cpu: f64, rss: f64) -> Report {
        Report {
            scenario: scenario.into(),
            count: 10,
            delivered: 10,
            seconds: 1.0,
            per_second,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            worker_cpu_us_per_msg: cpu,
            peak_rss_mb: rss,
            crypto_floor_us: 50.0,
            machine: String::new(),
            date: String::new(),
            repeated: 0,
            left_in_queues: 0,
            machine_per_msg: Default::default(),
        }
    }

    #[test]
    fn ratios_need_both_rows() {
        let pushq = report("unicast-inline", 3000.0, 300.0, 40.0);
        let peer = report(SCENARIO, 1000.0, 900.0, 100.0);
        assert_eq!(ratios(std::slice::from_ref(&pushq)), None);
        assert_eq!(ratios(&[pushq, peer]), Some((3.0, 3.0, 2.5)));
    }

    #[test]
    fn the_peer_ships_its_lock_file() {
        let dir = peer_dir();
        assert!(dir.join("worker.js").is_file());
        assert!(dir.join("package-lock.json").is_file());
        let package: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("package.json")).expect("package.json"))
                .expect("package.json is JSON");
        // Exact versions, so that the figures name what was measured.
        for (name, version) in package["dependencies"].as_object().expect("dependencies") {
            let version = version.as_str().expect("a version string");
            assert!(
                version.chars().all(|c| c.is_ascii_digit() || c == '.'),
                "{name} {version}"
            );
        }
    }
}
