//! Settings from the environment (DESIGN §2.3), validated once at start. A bad
//! value stops the start with one sentence naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

use pushq_schemas::Topology;
use secrecy::{ExposeSecret, SecretString};

use crate::push::client::PushProxy;
use crate::push::limits::{LimitSettings, parse_rate_limits};
use crate::push::{EndpointPolicy, HttpSettings, VapidPrivateKey};
use crate::retry::RetrySchedule;

mod parse;
mod unknown;
pub mod variables;

pub use parse::DEFAULT_RETRY_DELAYS_MS;
pub(crate) use unknown::edit_distance;
pub use unknown::unknown as unknown_variables;
pub use variables::{DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL};

use parse::{parse_delays, parse_number, validate_subject};
use variables::default_of;

/// One sentence naming the variable and what it expects; never its value when
/// the value may be secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the worker is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// May carry a password, hence secret.
    pub amqp_url: SecretString,
    /// May carry a password, hence secret.
    pub database_url: SecretString,
    /// Required by `run`; `demo` makes a throwaway one.
    pub vapid_private_key: Option<VapidPrivateKey>,
    /// `mailto:` or `https:`; Apple refuses anything else.
    pub vapid_subject: Option<String>,
    pub topology: Topology,
    pub endpoint_policy: EndpointPolicy,
    /// `PUSHQ_HTTPS_PROXY`: pushes go through this proxy; without it, through
    /// none (ambient `HTTPS_PROXY`/`ALL_PROXY`/`HTTP_PROXY` are ignored).
    pub https_proxy: Option<PushProxy>,
    pub http_addr: SocketAddr,
    /// The delay before each retry; its length is the number of retries.
    pub retry_delays: Vec<Duration>,
    /// A push service's Retry-After is honoured up to this.
    pub retry_after_max: Duration,
    /// Consecutive failures after which a stored subscription is deleted; 0 never.
    pub max_consecutive_failures: u32,
    /// Subscriptions per fan-out chunk.
    pub fanout_chunk: usize,
    /// How long final delivery records are kept for idempotency.
    pub delivery_retention: Duration,
    /// Rates and requests in flight.
    pub limits: LimitSettings,
    /// Unacked messages per queue per replica.
    pub prefetch: u16,
    pub shutdown_grace: Duration,
    pub database_max_connections: u32,
    pub log_format: LogFormat,
    /// Where spans go; `None` when no OTLP endpoint is configured.
    pub trace_export: Option<TraceExport>,
}

/// OTLP over HTTP with protobuf; the exporter reads the endpoint, headers and
/// timeouts from the standard `OTEL_EXPORTER_OTLP_*` variables itself, and
/// the SDK its sampler (`OTEL_TRACES_SAMPLER`) and batching (`OTEL_BSP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceExport {
    /// `OTEL_SERVICE_NAME`, or `pushq-worker`.
    pub service_name: String,
}

impl Settings {
    /// Every setting, as `run` reads them.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::for_command("run", |name| std::env::var(name).ok())
    }

    /// The settings `command` reads (per [`variables::VARIABLES`]); any other
    /// variable is taken as unset, so a bad value of a setting the command
    /// does not use cannot stop it.
    pub fn for_command(
        command: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| {
            if variables::reads(command, name) {
                lookup(name)
            } else {
                None
            }
        })
    }

    /// `lookup` gives a variable's value, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        // An empty value means unset, as `VAR=` in a compose or env file
        // usually does; PUSHQ_RETRY_DELAYS_MS alone refuses it (see parse_delays).
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let value = |name: &str| get(name).unwrap_or_else(|| default_of(name).to_owned());
        let vapid_private_key = vapid_private_key(&get)?;
        let vapid_subject = get("PUSHQ_VAPID_SUBJECT")
            .map(|subject| validate_subject(&subject).map(|()| subject))
            .transpose()?;
        let topology = Topology::new(value("PUSHQ_TOPOLOGY_PREFIX"))
            .map_err(|why| ConfigError(format!("PUSHQ_TOPOLOGY_PREFIX: {why}")))?;
        // Read by the contract's own function, as the SDK reads it.
        let endpoint_policy = EndpointPolicy::from_settings(
            get("PUSHQ_ENDPOINT_HOSTS").as_deref(),
            get("PUSHQ_ALLOW_HTTP").as_deref(),
        )
        .map_err(ConfigError)?;
        let https_proxy = get("PUSHQ_HTTPS_PROXY")
            .map(|value| {
                PushProxy::parse(&value).map_err(|why| {
                    ConfigError(format!(
                        "PUSHQ_HTTPS_PROXY {why}: expected an http:// or https:// URL like http://proxy.internal:3128"
                    ))
                })
            })
            .transpose()?;
        let http_addr = value("PUSHQ_HTTP_ADDR").parse().map_err(|_| {
            ConfigError(
                "PUSHQ_HTTP_ADDR must be an address with a port, like 127.0.0.1:9464".into(),
            )
        })?;
        let retry_delays = parse_delays(lookup("PUSHQ_RETRY_DELAYS_MS").as_deref())?;
        let number_u32 = |name: &str, min: u32| parse_number::<u32>(name, &value(name), min);
        let number_u64 = |name: &str, min: u64| parse_number::<u64>(name, &value(name), min);
        let retry_after_max = Duration::from_millis(number_u64("PUSHQ_RETRY_AFTER_MAX_MS", 1)?);
        let max_consecutive_failures = number_u32("PUSHQ_MAX_CONSECUTIVE_FAILURES", 0)?;
        let delivery_retention =
            Duration::from_secs(3600 * number_u64("PUSHQ_DELIVERY_RETENTION_HOURS", 1)?);
        let fanout_chunk = number_u32("PUSHQ_FANOUT_CHUNK", 1)? as usize;
        let prefetch = parse_number::<u16>("PUSHQ_PREFETCH", &value("PUSHQ_PREFETCH"), 1)?;
        let limits = LimitSettings {
            per_host: parse_rate_limits(&value("PUSHQ_RATE_LIMITS")).map_err(|why| {
                ConfigError(format!(
                    "PUSHQ_RATE_LIMITS must list host=per_second entries separated by commas: {why}"
                ))
            })?,
            default_per_second: number_u32("PUSHQ_RATE_LIMIT_DEFAULT", 0)?,
            global_per_second: number_u32("PUSHQ_RATE_LIMIT_GLOBAL", 0)?,
            max_in_flight: number_u32("PUSHQ_MAX_IN_FLIGHT", 1)? as usize,
            max_in_flight_per_origin: number_u32("PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN", 1)? as usize,
        };
        let shutdown_grace = Duration::from_millis(number_u64("PUSHQ_SHUTDOWN_GRACE_MS", 0)?);
        let database_max_connections = number_u32("PUSHQ_DATABASE_MAX_CONNECTIONS", 1)?;
        let trace_export = trace_export(&get)?;
        let log_format = match value("PUSHQ_LOG_FORMAT").as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(ConfigError("PUSHQ_LOG_FORMAT must be text or json".into())),
        };
        let amqp_url = value("PUSHQ_AMQP_URL");
        urls::check_amqp_url(&amqp_url)?;
        let database_url = value("PUSHQ_DATABASE_URL");
        urls::check_database_url(&database_url)?;
        Ok(Self {
            amqp_url: amqp_url.into(),
            database_url: database_url.into(),
            vapid_private_key,
            vapid_subject,
            topology,
            endpoint_policy,
            https_proxy,
            http_addr,
            retry_delays,
            retry_after_max,
            max_consecutive_failures,
            fanout_chunk,
            delivery_retention,
            limits,
            prefetch,
            shutdown_grace,
            database_max_connections,
            log_format,
            trace_export,
        })
    }

    pub fn amqp_url(&self) -> &str {
        self.amqp_url.expose_secret()
    }

    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }

    /// The push client's settings: the default timeouts, and the proxy if one
    /// is configured.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            proxy: self.https_proxy.clone(),
            ..HttpSettings::default()
        }
    }

    /// The retry schedule these settings make: delays, and the delay queues.
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule::new(self.retry_delays.clone(), self.retry_after_max)
    }

    /// `run` cannot sign without these; says which is missing.
    pub fn require_vapid(&self) -> Result<(VapidPrivateKey, String), ConfigError> {
        let key = self.vapid_private_key.clone().ok_or_else(|| {
            ConfigError(
                "PUSHQ_VAPID_PRIVATE_KEY (or PUSHQ_VAPID_PRIVATE_KEY_FILE) is required: create one with `pushq-worker vapid generate`".into(),
            )
        })?;
        let subject = self.vapid_subject.clone().ok_or_else(|| {
            ConfigError("PUSHQ_VAPID_SUBJECT is required: a mailto: or https: URL push services can reach you at".into())
        })?;
        Ok((key, subject))
    }
}

fn vapid_private_key(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<VapidPrivateKey>, ConfigError> {
    match (
        get("PUSHQ_VAPID_PRIVATE_KEY"),
        get("PUSHQ_VAPID_PRIVATE_KEY_FILE"),
    ) {
        (Some(_), Some(_)) => Err(ConfigError(
            "set PUSHQ_VAPID_PRIVATE_KEY or PUSHQ_VAPID_PRIVATE_KEY_FILE, not both".into(),
        )),
        (Some(key), None) => VapidPrivateKey::from_base64url(&key).map(Some).map_err(|why| {
            ConfigError(format!(
                "PUSHQ_VAPID_PRIVATE_KEY {why}: expected the base64url raw P-256 private key that `pushq-worker vapid generate` prints"
            ))
        }),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(&path).map_err(|err| {
                ConfigError(format!(
                    "PUSHQ_VAPID_PRIVATE_KEY_FILE {path:?} cannot be read: {err}"
                ))
            })?;
            VapidPrivateKey::from_pem(&pem)
                .map(Some)
                .map_err(|why| ConfigError(format!("PUSHQ_VAPID_PRIVATE_KEY_FILE {path:?} {why}")))
        }
        (None, None) => Ok(None),
    }
}

mod urls;

fn trace_export(get: &impl Fn(&str) -> Option<String>) -> Result<Option<TraceExport>, ConfigError> {
    let endpoint =
        get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"));
    if endpoint.is_none() || get("OTEL_SDK_DISABLED").as_deref() == Some("true") {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if get(name).is_some_and(|protocol| protocol != "http/protobuf") {
            return Err(ConfigError(format!(
                "{name} must be http/protobuf, the one OTLP protocol pushq exports with"
            )));
        }
    }
    Ok(Some(TraceExport {
        service_name: get("OTEL_SERVICE_NAME")
            .unwrap_or_else(|| default_of("OTEL_SERVICE_NAME").into()),
    }))
}

#[cfg(test)]
mod tests;
