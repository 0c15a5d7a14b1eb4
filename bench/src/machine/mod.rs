//! Where the machine goes during a scenario, per delivered notification:
//! the CPU of every process involved (from /proc), PostgreSQL's row writes,
//! commits and WAL, and RabbitMQ's traffic on the worker's connections.
//! A source that cannot be read gives `null` (n/a), never a failed run.

mod broker;
mod database;
pub mod procs;

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::report::Report;
use broker::ConnectionCounters;
use database::DbCounters;
use procs::Proc;

/// CPU of the processes outside the worker, in ticks, at one moment.
#[derive(Debug, Clone)]
struct CpuSample {
    /// Every `postgres` process with its ticks, by pid.
    postgres: HashMap<u32, Proc>,
    /// RabbitMQ's VM (`beam.smp` running `rabbit`), `rabbitmqctl`'s left out.
    rabbitmq: HashMap<u32, Proc>,
    /// This process: the publisher and the sink, on one tokio runtime.
    bench: Option<u64>,
    machine_busy: Option<u64>,
}

impl CpuSample {
    fn take() -> Self {
        let mut found = procs::processes(&["postgres", "beam.smp"]);
        found.retain(|_, p| p.stat.comm == "postgres" || p.cmdline.contains("rabbit boot"));
        let (postgres, rabbitmq) = found
            .into_iter()
            .partition(|(_, p)| p.stat.comm == "postgres");
        CpuSample {
            postgres,
            rabbitmq,
            bench: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|line| procs::parse_stat(&line))
                .map(|stat| stat.ticks),
            machine_busy: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|stat| procs::parse_machine_busy(&stat)),
        }
    }
}

fn group(procs: &HashMap<u32, Proc>) -> Option<u64> {
    (!procs.is_empty()).then(|| procs::group_ticks(procs.values().map(|p| &p.stat)))
}

/// The moment a scenario starts: counters read before anything is published.
pub struct Start {
    cpu: CpuSample,
    broker: Option<ConnectionCounters>,
    db: DbCounters,
    database: String,
    worker_connections: String,
}

/// The moment the last subscription was reached: CPU and broker counters.
pub struct CpuEnd {
    start: Start,
    cpu: CpuSample,
    broker: Option<ConnectionCounters>,
}

impl Start {
    /// `worker_connections`: what the worker's broker connection names
    /// contain. Reads the broker and the database first, then /proc, so that
    /// `rabbitmqctl` and the queries stay outside the measured window.
    pub async fn take(pool: &sqlx::PgPool, worker_connections: String) -> Self {
        let broker = broker::connection_counters(&worker_connections).await;
        database::flush_own_statistics(pool).await;
        let db = database::counters(pool, Duration::ZERO).await;
        let database = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(pool)
            .await
            .unwrap_or_default();
        Start {
            cpu: CpuSample::take(),
            broker,
            db,
            database,
            worker_connections,
        }
    }

    /// Reads /proc first, then the broker while the worker is still connected.
    pub async fn cpu_end(self) -> CpuEnd {
        let cpu = CpuSample::take();
        let broker = broker::connection_counters(&self.worker_connections).await;
        CpuEnd {
            start: self,
            cpu,
            broker,
        }
    }
}

impl CpuEnd {
    /// Reads the database's counters (after the worker has exited, so that
    /// its backends have flushed theirs) and divides everything by
    /// `delivered`. `worker_cpu_us` is the worker's CPU over the same window.
    pub async fn finish(
        self,
        pool: &sqlx::PgPool,
        delivered: usize,
        worker_cpu_us: u64,
    ) -> PerMessage {
        let db = database::counters(pool, Duration::from_millis(300)).await;
        let (start, end) = (&self.start, &self.cpu);
        let n = delivered.max(1) as f64;
        let us = |ticks: u64| ticks as f64 * 1e6 / procs::ticks_per_second() as f64 / n;
        let delta =
            |before: Option<u64>, after: Option<u64>| Some(us(after?.saturating_sub(before?)));
        let postgres = delta(group(&start.cpu.postgres), group(&end.postgres));
        let rabbitmq = delta(group(&start.cpu.rabbitmq), group(&end.rabbitmq));
        let bench = delta(start.cpu.bench, end.bench);
        let worker = worker_cpu_us as f64 / n;
        let per = |before: Option<i64>, after: Option<i64>| Some((after? - before?) as f64 / n);
        let broker = |field: fn(&ConnectionCounters) -> u64| {
            Some(
                field(self.broker.as_ref()?).saturating_sub(field(start.broker.as_ref()?)) as f64
                    / n,
            )
        };
        PerMessage {
            postgres_cpu_us_per_msg: postgres,
            postgres_bench_backends_cpu_us_per_msg: (!start.database.is_empty()).then(|| {
                us(backends_ticks(
                    &start.cpu.postgres,
                    &end.postgres,
                    &start.database,
                ))
            }),
            rabbitmq_cpu_us_per_msg: rabbitmq,
            bench_cpu_us_per_msg: bench,
            total_cpu_us_per_msg: (|| Some(worker + postgres? + rabbitmq? + bench?))(),
            machine_busy_us_per_msg: delta(start.cpu.machine_busy, end.machine_busy),
            row_writes_per_msg: per(start.db.row_writes, db.row_writes),
            commits_per_msg: per(start.db.commits, db.commits),
            wal_bytes_per_msg: per(start.db.wal_lsn, db.wal_lsn),
            wal_syncs_per_msg: per(start.db.wal_syncs, db.wal_syncs),
            broker_recv_bytes_per_msg: broker(|c| c.recv_oct),
            broker_send_bytes_per_msg: broker(|c| c.send_oct),
            broker_recv_cnt_per_msg: broker(|c| c.recv_cnt),
            broker_send_cnt_per_msg: broker(|c| c.send_cnt),
        }
    }
}

/// Ticks of the live backends connected to `database` (the worker's pool and
/// the benchmark's): a lower bound, since a backend that exited during the
/// window is not listed, but one that other users of the server cannot inflate.
fn backends_ticks(before: &HashMap<u32, Proc>, after: &HashMap<u32, Proc>, database: &str) -> u64 {
    after
        .values()
        .filter(|p| p.cmdline.split_whitespace().any(|word| word == database))
        .map(|p| {
            let earlier = before.get(&p.stat.pid).map_or(0, |b| b.stat.ticks);
            p.stat.ticks.saturating_sub(earlier)
        })
        .sum()
}

/// Per delivered notification, over the window from the first publish to
/// the last subscription reached (the database's counters: to the worker's
/// exit). `None` where the source could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerMessage {
    /// Every `postgres` process of the server, exited backends included
    /// (through the postmaster's reaped-children time), whoever they served.
    pub postgres_cpu_us_per_msg: Option<f64>,
    /// Of which the backends connected to the benchmark's database and still
    /// alive at the end (the worker's and the benchmark's pools).
    pub postgres_bench_backends_cpu_us_per_msg: Option<f64>,
    /// RabbitMQ's VM (`beam.smp`), whoever it served.
    pub rabbitmq_cpu_us_per_msg: Option<f64>,
    /// The benchmark's own process: the publisher and the sink share its
    /// tokio runtime, so they are counted together.
    pub bench_cpu_us_per_msg: Option<f64>,
    /// Worker + PostgreSQL + RabbitMQ + benchmark.
    pub total_cpu_us_per_msg: Option<f64>,
    /// Every CPU of the machine busy (anything, anyone's), from /proc/stat:
    /// much above the total, the machine was shared during the scenario.
    pub machine_busy_us_per_msg: Option<f64>,
    /// Rows inserted, updated or deleted in the benchmark's database.
    pub row_writes_per_msg: Option<f64>,
    /// Transactions committed in the benchmark's database.
    pub commits_per_msg: Option<f64>,
    /// WAL bytes written by the whole cluster.
    pub wal_bytes_per_msg: Option<f64>,
    /// WAL flushes to disk by the whole cluster (`pg_stat_wal.wal_sync`).
    pub wal_syncs_per_msg: Option<f64>,
    /// Octets RabbitMQ received on the worker's connections.
    pub broker_recv_bytes_per_msg: Option<f64>,
    /// Octets RabbitMQ sent on the worker's connections.
    pub broker_send_bytes_per_msg: Option<f64>,
    /// Socket reads RabbitMQ made on the worker's connections.
    pub broker_recv_cnt_per_msg: Option<f64>,
    /// Socket writes RabbitMQ made on the worker's connections.
    pub broker_send_cnt_per_msg: Option<f64>,
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The per-process table: where each delivered notification's CPU went, and
/// what it cost the database and the broker.
pub fn print_table(reports: &[Report]) {
    println!();
    println!(
        "per delivered notification: CPU µs by process; database writes; broker traffic on the worker's connections"
    );
    let width = reports
        .iter()
        .map(|r| r.scenario.len())
        .max()
        .unwrap_or(0)
        .max("scenario".len());
    println!(
        "{:<width$} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6}",
        "scenario",
        "worker",
        "postgres",
        "(bench)",
        "rabbitmq",
        "bench",
        "total",
        "machine",
        "rows",
        "commits",
        "WAL B",
        "fsyncs",
        "AMQP in",
        "out B",
        "reads",
        "writes",
    );
    for r in reports {
        let m = &r.machine_per_msg;
        println!(
            "{:<width$} {:>7.0} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>7} {:>7} {:>6} {:>7} {:>7} {:>6} {:>6}",
            r.scenario,
            r.worker_cpu_us_per_msg,
            cell(m.postgres_cpu_us_per_msg, 0),
            cell(m.postgres_bench_backends_cpu_us_per_msg, 0),
            cell(m.rabbitmq_cpu_us_per_msg, 0),
            cell(m.bench_cpu_us_per_msg, 0),
            cell(m.total_cpu_us_per_msg, 0),
            cell(m.machine_busy_us_per_msg, 0),
            cell(m.row_writes_per_msg, 2),
            cell(m.commits_per_msg, 2),
            cell(m.wal_bytes_per_msg, 0),
            cell(m.wal_syncs_per_msg, 2),
            cell(m.broker_recv_bytes_per_msg, 0),
            cell(m.broker_send_bytes_per_msg, 0),
            cell(m.broker_recv_cnt_per_msg, 2),
            cell(m.broker_send_cnt_per_msg, 2),
        );
    }
    println!(
        "postgres: every process of the server; (bench): of which the live backends of the benchmark's database; bench: this process, publisher and sink together; machine: every CPU busy, anyone's; WAL and fsyncs: the whole cluster; AMQP: octets in and out, socket reads and writes, as RabbitMQ counts them"
    );
}
