//! Logs and traces. Logs are text by default, JSON lines on request; a line
//! written while a job is handled carries the job's `trace_id` when there is
//! a trace (spans exported, or a `traceparent` on the event). Spans go to an
//! OTLP collector only when one is configured (DESIGN §2.3, §2.6).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TraceExport};

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
#[must_use = "spans still buffered are lost unless shutdown() is called"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every span still buffered. Call it outside the async runtime:
    /// the exporter's blocking HTTP client cannot be used from inside one.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("pushq-worker: flushing spans to the OTLP endpoint failed: {err}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error(
        "RUST_LOG is not a valid log filter ({0}): expected levels like info or info,pushq_worker=debug"
    )]
    Filter(String),
}

/// The levels when neither `RUST_LOG` nor the command says otherwise.
/// lapin logs every connection and channel error at ERROR itself, several
/// lines per failed attempt, and the same error reaches pushq as a Result,
/// which it logs once with the variable to look at: lapin's own lines are
/// kept for RUST_LOG=lapin=debug.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=off";

/// What the logs start with: `RUST_LOG` when set, else the command's default.
/// `RUST_LOG=info` keeps lapin off and sqlx at warn too: only a RUST_LOG that
/// names them (`lapin=debug`) brings their own lines back.
pub fn filter(rust_log: Option<&str>, default: &str) -> Result<EnvFilter, TelemetryError> {
    let Some(directives) = rust_log.filter(|value| !value.trim().is_empty()) else {
        return Ok(EnvFilter::new(default));
    };
    if let Some(why) = misspelt_level(directives) {
        return Err(TelemetryError::Filter(why));
    }
    let mut filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|err| TelemetryError::Filter(err.to_string()))?;
    for (target, quiet) in [("lapin", "lapin=off"), ("sqlx", "sqlx=warn")] {
        if !directives.contains(target)
            && let Ok(directive) = quiet.parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    Ok(filter)
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Crates whose logs a bare name (`RUST_LOG=lapin`) plausibly asks for.
const TARGETS: &[&str] = &[
    "pushq_worker",
    "pushq_schemas",
    "pushq_producer",
    "pushq_fake_push",
    "lapin",
    "amq_protocol",
    "amq_protocol_tcp",
    "sqlx",
    "sqlx_core",
    "sqlx_postgres",
    "reqwest",
    "hyper",
    "hyper_util",
    "axum",
    "tower",
    "tower_http",
    "tokio",
    "tokio_util",
    "rustls",
    "tracing",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// A directive without `=` that is one word names a target, so `infoo` or
/// `warning` parses and silently turns every other log off. A word that is
/// another name for a level, or two edits from one, is taken for a misspelt
/// level; any other word stays a target (`RUST_LOG=hyper`).
fn misspelt_level(directives: &str) -> Option<String> {
    directives.split(',').map(str::trim).find_map(|directive| {
        let word = !directive.is_empty()
            && directive
                .bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'_');
        let lower = directive.to_ascii_lowercase();
        let level = LEVELS.contains(&lower.as_str());
        if !word || level || TARGETS.contains(&directive) {
            return None;
        }
        let meant = level_alias(&lower).or_else(|| {
            LEVELS
                .into_iter()
                .find(|level| crate::config::edit_distance(&lower, level) <= 2)
        })?;
        Some(format!(
            "{directive:?} is not a level (it would name a crate and turn every other log off); did you mean {meant}?"
        ))
    })
}

fn level_alias(word: &str) -> Option<&'static str> {
    match word {
        "warning" | "warnings" => Some("warn"),
        "err" | "errors" | "fatal" | "critical" | "crit" | "panic" => Some("error"),
        "information" | "informational" | "notice" => Some("info"),
        "verbose" | "all" => Some("trace"),
        "none" | "silent" | "quiet" | "disabled" => Some("off"),
        _ => None,
    }
}

/// Escape codes are for a terminal: a file or a log collector gets them as
/// noise. `NO_COLOR` (https://no-color.org) turns them off on a terminal too.
fn colour(no_color: Option<&std::ffi::OsStr>) -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && no_color.is_none_or(|value| value.is_empty())
}

/// Installs the process's subscriber: `RUST_LOG` overrides `default_filter`,
/// which the command chooses. Call it before the async runtime starts.
pub fn init(
    format: LogFormat,
    export: Option<&TraceExport>,
    default_filter: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_filter)?;
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(colour(std::env::var_os("NO_COLOR").as_deref()))
                .with_writer(std::io::stderr),
        ),
        // The span list carries `trace_id` from the job's span into each line.
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .with_writer(std::io::stderr),
        ),
    };
    let (provider, traces) = match export {
        None => (None, None),
        Some(export) => {
            // The exporter builds its own HTTP client, which needs rustls' provider.
            crate::push::client::install_crypto_provider();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    Resource::builder()
                        .with_service_name(export.service_name.clone())
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("pushq-worker"));
            (Some(provider), Some(layer))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .with(filter)
        .try_init();
    Ok(Telemetry { provider })
}

/// The W3C trace context of a span, as an event carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// Makes `span` a child of the event's trace context, and records its
/// `trace_id` for the logs, taken from the event when no spans are exported.
/// Call it before the span is first entered: a started span keeps its parent.
pub fn continue_trace(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if let Some(traceparent) = traceparent {
        let parent = TraceContextPropagator::new().extract(&EventCarrier {
            traceparent,
            tracestate,
        });
        // An error only says that no span is exported (or this one is
        // filtered out): there is nothing to attach the parent to.
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let exported = context.span();
    let exported = exported.span_context();
    let trace_id = if exported.is_valid() {
        Some(exported.trace_id().to_string())
    } else {
        traceparent.and_then(trace_id_of).map(str::to_owned)
    };
    if let Some(trace_id) = trace_id {
        span.record("trace_id", trace_id);
    }
}

/// The context to write into an event that continues `span`'s trace, or
/// `None` when spans are not exported.
pub fn trace_context(span: &Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    Some(TraceContext {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier
            .remove("tracestate")
            .filter(|state| !state.is_empty()),
    })
}

/// The trace id field of a well-formed `traceparent`.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut fields = traceparent.split('-');
    let (_version, trace_id) = (fields.next()?, fields.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

struct EventCarrier<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for EventCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_a_well_formed_traceparent_only() {
        assert_eq!(
            trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id_of("00-nothex-b7ad6b7169203331-01"), None);
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn a_bad_rust_log_is_refused_naming_it_and_an_empty_one_is_the_default() {
        let err = filter(Some("pushq_worker=loud"), "info").expect_err("no such level");
        let sentence = err.to_string();
        assert!(
            sentence.starts_with("RUST_LOG is not a valid log filter"),
            "{sentence}"
        );
        assert!(!sentence.contains('\n'), "{sentence}");
        assert!(filter(Some(" "), "warn").is_ok());
        assert!(filter(Some("info,pushq_worker=debug"), "warn").is_ok());
    }

    #[test]
    fn a_misspelt_level_is_refused_naming_the_closest_one() {
        for (rust_log, meant) in [
            ("infoo", "info"),
            ("warning", "warn"),
            ("debgu", "debug"),
            ("info,eror", "error"),
            ("WARNING", "warn"),
            ("verbose", "trace"),
        ] {
            let err = filter(Some(rust_log), "info").expect_err(rust_log);
            let sentence = err.to_string();
            assert!(
                sentence.starts_with("RUST_LOG is not a valid log filter ("),
                "{sentence}"
            );
            assert!(
                sentence.contains(&format!("did you mean {meant}?")),
                "{rust_log}: {sentence}"
            );
        }
        for valid in [
            "info",
            "WARN",
            "pushq_worker",
            "info,pushq_worker=debug",
            "lapin=off",
            "want=trace",
            "hyper",
            "my_service",
            "pushq_worker::broker",
            "h2",
            "3",
            "info, sqlx ,",
        ] {
            assert!(filter(Some(valid), "info").is_ok(), "{valid}");
        }
    }

    #[test]
    fn lapin_and_sqlx_stay_quiet_unless_rust_log_names_them() {
        let filter = filter(Some("info,pushq_worker=debug"), "info").expect("valid");
        let shown = filter.to_string();
        assert!(shown.contains("lapin=off"), "{shown}");
        assert!(shown.contains("sqlx=warn"), "{shown}");
        let shown = super::filter(Some("info,lapin=debug"), "info")
            .expect("valid")
            .to_string();
        assert!(!shown.contains("lapin=off"), "{shown}");
    }

    #[test]
    fn no_color_set_turns_colours_off() {
        assert!(!colour(Some(std::ffi::OsStr::new("1"))));
    }
}
