//! `pushq-worker`: settings, logs, then the subcommand.

use std::process::ExitCode;

use anyhow::Context;
use clap::builder::PossibleValuesParser;
use clap::{Parser, Subcommand};
use pushq_schemas::error_text;
use pushq_worker::app::{self, App, Exit};
use pushq_worker::config::{self, ConfigError, LogFormat, Settings, variables};
use pushq_worker::dependency::{DependencyError, Patience};
use pushq_worker::push::VapidPrivateKey;
use pushq_worker::store::{self, subscriptions};
use pushq_worker::terminal::{StdoutError, printable};
use pushq_worker::{dead, demo, telemetry};
use tokio_util::sync::CancellationToken;

/// Delivers Web Push notifications from RabbitMQ. Configured by environment
/// variables: each command's --help lists those it reads, with their defaults.
#[derive(Debug, Parser)]
#[command(name = "pushq-worker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker until SIGTERM or SIGINT.
    #[command(
        long_about = "Run the worker until SIGTERM or SIGINT: consume the jobs, subscription and feedback queues, deliver, retry and dead-letter; serve /healthz, /readyz and /metrics. Applies pending migrations and declares the topology at start.\n\nWaits for RabbitMQ and PostgreSQL while they are unreachable, then carries on; a refused login, virtual host or database stops it with exit status 2.",
        after_help = variables::help_for("run")
    )]
    Run,
    /// Create the database if missing and apply pending migrations.
    ///
    /// Tries PostgreSQL once.
    #[command(after_help = variables::help_for("migrate"))]
    Migrate,
    /// VAPID key pairs.
    #[command(subcommand)]
    Vapid(VapidCommand),
    /// The whole flow on this machine against the local RabbitMQ and PostgreSQL.
    #[command(
        long_about = "The whole flow on this machine against the local RabbitMQ and PostgreSQL: a fake push service plays every browser, the worker runs in-process with a throwaway key and topology, every notification is decrypted and compared. Logs at warn unless RUST_LOG says otherwise.\n\nTries RabbitMQ and PostgreSQL for 3 s, then says how to start what is missing.",
        after_help = variables::help_for("demo")
    )]
    Demo(demo::DemoArgs),
    /// Stored subscriptions.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// The dead-letter queue: what is in it, and replaying it.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Exit 0 if the worker at PUSHQ_HTTP_ADDR is ready (for container health checks).
    #[command(after_help = variables::help_for("probe"))]
    Probe,
}

#[derive(Debug, Subcommand)]
enum VapidCommand {
    /// Print a new key pair: PUSHQ_VAPID_PRIVATE_KEY and the public key for web pages.
    #[command(after_help = "Reads no settings: it works whatever the environment holds.")]
    Generate,
    /// Print the public key (applicationServerKey) of the configured private key.
    #[command(after_help = variables::help_for("vapid public"))]
    Public,
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// Count the letters by kind, with a sample reason for each (nothing is removed).
    ///
    /// Tries RabbitMQ once.
    #[command(after_help = variables::help_for("dead list"))]
    List {
        /// Read at most this many letters.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Send letters back where they came from, each acked only once its replay is confirmed.
    ///
    /// Tries RabbitMQ once.
    #[command(after_help = variables::help_for("dead replay"))]
    Replay {
        /// Only letters of this kind.
        #[arg(long, value_parser = PossibleValuesParser::new(dead::kinds()))]
        kind: Option<String>,
        /// Replay at most this many letters [default: no limit].
        #[arg(long)]
        limit: Option<usize>,
    },
}

#[derive(Debug, Subcommand)]
enum SubscriptionsCommand {
    /// List stored subscriptions (id, user, push service, tags).
    ///
    /// Tries PostgreSQL once.
    #[command(after_help = variables::help_for("subscriptions list"))]
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

impl Command {
    /// As typed, the name the variables table knows the command by.
    fn name(&self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Migrate => "migrate",
            Self::Vapid(VapidCommand::Generate) => "vapid generate",
            Self::Vapid(VapidCommand::Public) => "vapid public",
            Self::Demo(_) => "demo",
            Self::Subscriptions(SubscriptionsCommand::List { .. }) => "subscriptions list",
            Self::Dead(DeadCommand::List { .. }) => "dead list",
            Self::Dead(DeadCommand::Replay { .. }) => "dead replay",
            Self::Probe => "probe",
        }
    }

    /// The log levels when RUST_LOG says nothing. The demo prints its own
    /// report, which the worker's info lines would bury.
    fn default_log_filter(&self) -> &'static str {
        match self {
            Self::Demo(_) => "warn,lapin=off",
            _ => telemetry::DEFAULT_FILTER,
        }
    }
}

/// `println!` that returns a failed write as the command's error instead of
/// panicking or losing it: main ends quietly when the reader went away
/// (`vapid generate | head -1`) and fails on anything else (a full disk).
macro_rules! out {
    ($($arg:tt)*) => {
        pushq_worker::terminal::print_line(format_args!($($arg)*))?
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.name();
    let settings = match Settings::for_command(command, |name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(err) => {
            before_logging(&err.to_string());
            return ExitCode::from(2);
        }
    };
    // Commands that read no log settings (vapid generate, probe) print
    // their answer and nothing else.
    let telemetry = if variables::reads(command, "RUST_LOG") {
        match telemetry::init(
            settings.log_format,
            settings.trace_export.as_ref(),
            cli.command.default_log_filter(),
        ) {
            Ok(telemetry) => Some(telemetry),
            Err(err) => {
                before_logging(&err.to_string());
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    // Every command, logging or not: a misspelt name silently leaves its
    // setting at the default (`probe` asking the wrong address).
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .collect();
    for warning in config::unknown_variables(names.iter().map(String::as_str)) {
        if telemetry.is_some() {
            tracing::warn!("{warning}");
        } else {
            eprintln!("pushq-worker: warning: {warning}");
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("pushq-worker: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = telemetry.is_some() && settings.log_format == LogFormat::Json;
    let code = match runtime.block_on(execute(cli.command, settings)) {
        Ok(code) => code,
        Err(err) if reader_gone(&err) => ExitCode::SUCCESS,
        Err(err) => {
            fatal(&error_text::sentence(err.as_ref()), json_logs);
            exit_code_of(&err)
        }
    };
    drop(runtime);
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    code
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run => {
            let http_addr = settings.http_addr;
            // Installed first: a worker still waiting for its database stops on a signal too.
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let (_, serving) =
                pushq_worker::http::serve_while_starting(http_addr, shutdown.clone())
                    .await
                    .with_context(|| format!("while binding PUSHQ_HTTP_ADDR {http_addr}"))?;
            let app = tokio::select! {
                built = App::build(settings) => match built {
                    Ok(app) => app,
                    Err(app::BuildError::Config(err)) => return Err(err.into()),
                    Err(err) => return Err(anyhow::Error::new(err)),
                },
                () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            };
            serving.send_replace(Some(app.observed()));
            Ok(match app.run(shutdown).await {
                Exit::Clean => ExitCode::SUCCESS,
                Exit::GraceExceeded => ExitCode::FAILURE,
                Exit::Refused(refused) => return Err(refused.into()),
            })
        }
        Command::Migrate => {
            store::prepare(settings.database_url(), 2, Patience::ONCE).await?;
            out!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Vapid(VapidCommand::Generate) => {
            let key = VapidPrivateKey::generate();
            out!("PUSHQ_VAPID_PRIVATE_KEY={}", key.to_base64url());
            out!(
                "public key (applicationServerKey): {}",
                key.public_key_base64url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Vapid(VapidCommand::Public) => {
            let Some(key) = settings.vapid_private_key else {
                return Err(ConfigError(
                    "PUSHQ_VAPID_PRIVATE_KEY (or PUSHQ_VAPID_PRIVATE_KEY_FILE) is required: create one with `pushq-worker vapid generate`".into(),
                ).into());
            };
            out!("{}", key.public_key_base64url());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let summary = demo::run(settings, &args).await?;
            out!("{}", summary.table());
            Ok(if summary.failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Dead(DeadCommand::List { limit }) => {
            let list = dead::list(settings.amqp_url(), &settings.topology, limit).await?;
            out!(
                "{} letters in {} (read {})",
                list.in_queue,
                settings.topology.dead_queue(),
                list.read
            );
            out!("{:<20}  {:>7}  sample reason", "kind", "count");
            for (kind, summary) in &list.by_kind {
                // From the letters' headers, which a producer may have set.
                out!(
                    "{:<20}  {:>7}  {}",
                    printable(kind),
                    summary.count,
                    printable(&summary.sample)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dead(DeadCommand::Replay { kind, limit }) => {
            let report = dead::replay(
                settings.amqp_url(),
                &settings.topology,
                kind.as_deref(),
                limit.unwrap_or(usize::MAX),
            )
            .await?;
            out!(
                "replayed {}, left {} of other kinds, left {} with no recorded origin",
                report.replayed,
                report.skipped,
                report.without_origin
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe => Ok(match pushq_worker::http::probe(settings.http_addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("pushq-worker: not ready: {why}");
                ExitCode::FAILURE
            }
        }),
        Command::Subscriptions(SubscriptionsCommand::List { limit }) => {
            let pool = store::connect(settings.database_url(), 1, Patience::ONCE).await?;
            let listed = subscriptions::list(&pool, None, limit).await?;
            out!("{:<36}  {:<24}  {:<40}  tags", "id", "user", "push service");
            for sub in listed {
                // Stored as browsers' pages sent them: escaped, so that they
                // cannot drive the terminal.
                out!(
                    "{:<36}  {:<24}  {:<40}  {}",
                    sub.id,
                    printable(&sub.user_id),
                    pushq_schemas::data::endpoint_origin(&sub.endpoint),
                    printable(&sub.tags.join(","))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A bad setting found before logging is set up: as a JSON line when JSON
/// logs were asked for (a log collector drops plain lines), else plain.
fn before_logging(sentence: &str) {
    if std::env::var("PUSHQ_LOG_FORMAT").is_ok_and(|format| format.trim() == "json") {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "message": sentence,
            "target": "pushq_worker",
        });
        eprintln!("{line}");
    } else {
        eprintln!("pushq-worker: {sentence}");
    }
}

/// The sentence a command ends on. A log collector reading JSON lines
/// would drop a plain one, so with JSON logs it is one more line, at ERROR;
/// else (and when RUST_LOG filters it out) plain, as before logging starts.
fn fatal(sentence: &str, json_logs: bool) {
    if json_logs && tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{sentence}");
    } else {
        eprintln!("pushq-worker: {sentence}");
    }
}

/// 2 for a bad setting, or when a dependency refused us (a setting or a
/// permission must change), 130 for an interrupted demo, 1 for any other
/// failure.
fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    let refused = err.chain().any(|cause| {
        cause.is::<ConfigError>()
            || matches!(
                cause.downcast_ref::<DependencyError>(),
                Some(DependencyError::Refused { .. })
            )
    });
    if refused {
        ExitCode::from(2)
    } else if err.is::<demo::Interrupted>() {
        // As a shell reports a process stopped by SIGINT.
        ExitCode::from(130)
    } else {
        ExitCode::FAILURE
    }
}

/// What was printed reached a reader that no longer wants more.
fn reader_gone(err: &anyhow::Error) -> bool {
    err.downcast_ref::<StdoutError>()
        .is_some_and(StdoutError::is_broken_pipe)
}

/// SIGTERM (orchestrators) or SIGINT (a terminal) starts a graceful stop.
async fn cancel_on_signal(shutdown: CancellationToken) {
    pushq_worker::shutdown::requested().await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
