//! `pushq-bench`: delivered notifications per second, latency, worker CPU per
//! notification and peak memory, for unicast and broadcast, with the worker in
//! a process of its own (so its CPU and memory are its own) against the local
//! RabbitMQ and PostgreSQL and a fast local sink. Also measures, in the same
//! run, the crypto floor and the `web-push` crate's encryption.

mod machine;
mod measure;
mod peer;
mod repeats;
mod report;
mod scenarios;
mod sink;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pushq-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Notifications per scenario (and subscriptions for broadcast).
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "unicast-inline,unicast-stored,broadcast,unicast-paced"
    )]
    scenarios: Vec<String>,
    /// Plaintext bytes per notification.
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    /// Also write one JSON object per scenario to this file (an array).
    #[arg(long)]
    json: Option<PathBuf>,
    /// After pushq's scenarios, run the Node `web-push` peer (bench/peers/) on
    /// unicast-inline with the same queue shape, payloads and sink.
    #[arg(long)]
    peer: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The worker under test (started by the benchmark itself).
    #[command(hide = true)]
    Worker,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Command::Worker) => {
            // Logs and spans as `pushq-worker run` has them, so that their cost is measured too.
            let settings = pushq_worker::config::Settings::from_env()?;
            let telemetry = pushq_worker::telemetry::init(
                settings.log_format,
                settings.trace_export.as_ref(),
                pushq_worker::telemetry::DEFAULT_FILTER,
            )?;
            let ran = runtime.block_on(scenarios::worker_process(settings));
            drop(runtime);
            telemetry.shutdown();
            ran
        }
        None => runtime.block_on(scenarios::run_all(scenarios::Options {
            count: cli.count,
            scenarios: cli.scenarios,
            payload_bytes: cli.payload_bytes,
            json: cli.json,
            peer: cli.peer,
        })),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn the_peer_is_opt_in() {
        let default = Cli::try_parse_from(["pushq-bench"]).expect("no arguments");
        assert!(!default.peer);
        let asked = Cli::try_parse_from(["pushq-bench", "--scenarios", "unicast-inline", "--peer"])
            .expect("--peer");
        assert!(asked.peer);
        assert_eq!(asked.scenarios, ["unicast-inline"]);
    }
}
