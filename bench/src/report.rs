//! One scenario's figures, and the table people read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::sink::Arrival;
use crate::{machine, measure};

/// One scenario's figures (DESIGN §2.5).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub count: usize,
    pub delivered: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub worker_cpu_us_per_msg: f64,
    pub peak_rss_mb: f64,
    pub crypto_floor_us: f64,
    pub machine: String,
    /// Where the machine went, per delivered notification.
    #[serde(flatten)]
    pub machine_per_msg: machine::PerMessage,
    pub date: String,
    /// Arrivals at a subscription already reached, until the worker exited.
    /// Not in the JSON (DESIGN §2.5): a run with any fails instead.
    #[serde(skip)]
    pub repeated: usize,
    /// Messages left in the worker's queues after it exited although every
    /// subscription was reached: acks lost at shutdown, which the next
    /// worker would handle again. Not in the JSON either.
    #[serde(skip)]
    pub left_in_queues: u32,
}

/// What one worker (pushq's or the peer's) did with a scenario's messages.
#[derive(Debug)]
pub struct Run<'a> {
    pub scenario: &'a str,
    pub count: usize,
    pub seconds: f64,
    /// First publish to first arrival, one per delivered notification.
    pub latencies: Vec<Duration>,
    pub cpu_us: u64,
    pub peak_rss_mb: f64,
    pub crypto_floor_us: f64,
    pub machine: &'a str,
}

/// From the first publish to the last first arrival, in seconds, and each
/// reached subscription's latency (its first arrival only: a repeat counts
/// once for the figures).
pub fn timing(arrivals: &[Arrival], sent_at: &[Instant], started: Instant) -> (f64, Vec<Duration>) {
    let mut first: HashMap<u32, Instant> = HashMap::with_capacity(arrivals.len());
    for arrival in arrivals {
        first.entry(arrival.n).or_insert(arrival.at);
    }
    let last = first.values().copied().max().unwrap_or(started);
    let latencies = first
        .iter()
        .map(|(n, at)| {
            at.saturating_duration_since(sent_at.get(*n as usize).copied().unwrap_or(started))
        })
        .collect();
    (last.duration_since(started).as_secs_f64(), latencies)
}

impl Report {
    /// The figures of a run; what only pushq's scenarios measure (where the
    /// machine went, repeats, messages left) starts empty.
    pub fn of(mut run: Run<'_>) -> Self {
        run.latencies.sort();
        let delivered = run.latencies.len();
        Self {
            scenario: run.scenario.to_owned(),
            count: run.count,
            delivered,
            seconds: run.seconds,
            per_second: delivered as f64 / run.seconds.max(1e-9),
            p50_ms: measure::percentile_ms(&run.latencies, 0.50),
            p95_ms: measure::percentile_ms(&run.latencies, 0.95),
            p99_ms: measure::percentile_ms(&run.latencies, 0.99),
            worker_cpu_us_per_msg: run.cpu_us as f64 / delivered.max(1) as f64,
            peak_rss_mb: run.peak_rss_mb,
            crypto_floor_us: run.crypto_floor_us,
            machine: run.machine.to_owned(),
            machine_per_msg: machine::PerMessage::default(),
            date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
            repeated: 0,
            left_in_queues: 0,
        }
    }
}

pub fn print_table(reports: &[Report], crypto_floor_us: f64, vapid_us: f64, web_push_us: f64) {
    println!();
    println!(
        "{:<26} {:>8} {:>9} {:>8} {:>10} {:>8} {:>8} {:>8} {:>12} {:>9}",
        "scenario",
        "count",
        "delivered",
        "seconds",
        "per second",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "CPU µs/msg",
        "RSS MB"
    );
    for r in reports {
        println!(
            "{:<26} {:>8} {:>9} {:>8.2} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>12.0} {:>9.1}",
            r.scenario,
            r.count,
            r.delivered,
            r.seconds,
            r.per_second,
            r.p50_ms,
            r.p95_ms,
            r.p99_ms,
            r.worker_cpu_us_per_msg,
            r.peak_rss_mb
        );
    }
    println!();
    println!(
        "crypto floor: {crypto_floor_us:.1} µs per RFC 8291 encryption (ring, one core); VAPID signature {vapid_us:.1} µs (once per origin)"
    );
    println!(
        "web-push crate: {web_push_us:.1} µs per encryption of the same payload ({:.1}× ours)",
        web_push_us / crypto_floor_us
    );
    for r in reports {
        println!(
            "{}: worker CPU per notification = {:.1}× the crypto floor",
            r.scenario,
            r.worker_cpu_us_per_msg / crypto_floor_us
        );
    }
}
