//! Settings from the environment (DESIGN §2.3), validated once at start. A bad
//! value stops the start with one sentence naming the variable.

use std::net::SocketAddr;
use std::time::Duration;

use pushq_schemas::Topology;
use secrecy::{ExposeSecret, SecretString};

use crate::push::client::PushProxy;
use crate::push::limits::{
    DEFAULT_RATE_LIMIT, DEFAULT_RATE_LIMITS, LimitSettings, parse_rate_limits,
};
use crate::push::{EndpointPolicy, HttpSettings, VapidPrivateKey};
use crate::retry::RetrySchedule;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/pushq";
pub const DEFAULT_RETRY_DELAYS_MS: &str = "1000,5000,30000,120000,600000,1800000,3600000,7200000";

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
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `lookup` gives a variable's value, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let vapid_private_key = match (
            get("PUSHQ_VAPID_PRIVATE_KEY"),
            get("PUSHQ_VAPID_PRIVATE_KEY_FILE"),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set PUSHQ_VAPID_PRIVATE_KEY or PUSHQ_VAPID_PRIVATE_KEY_FILE, not both".into(),
                ));
            }
            (Some(key), None) => Some(VapidPrivateKey::from_base64url(&key).map_err(|why| {
                ConfigError(format!(
                    "PUSHQ_VAPID_PRIVATE_KEY {why}: expected the base64url raw P-256 private key that `pushq-worker vapid generate` prints"
                ))
            })?),
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(&path).map_err(|err| {
                    ConfigError(format!("PUSHQ_VAPID_PRIVATE_KEY_FILE {path:?} cannot be read: {err}"))
                })?;
                Some(VapidPrivateKey::from_pem(&pem).map_err(|why| {
                    ConfigError(format!("PUSHQ_VAPID_PRIVATE_KEY_FILE {path:?} {why}"))
                })?)
            }
            (None, None) => None,
        };
        let vapid_subject = get("PUSHQ_VAPID_SUBJECT")
            .map(|subject| validate_subject(&subject).map(|()| subject))
            .transpose()?;
        let topology =
            Topology::new(get("PUSHQ_TOPOLOGY_PREFIX").unwrap_or_else(|| "pushq".into()))
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
        let http_addr = get("PUSHQ_HTTP_ADDR")
            .unwrap_or_else(|| "127.0.0.1:9464".into())
            .parse()
            .map_err(|_| {
                ConfigError(
                    "PUSHQ_HTTP_ADDR must be an address with a port, like 127.0.0.1:9464".into(),
                )
            })?;
        let retry_delays = parse_delays(
            &get("PUSHQ_RETRY_DELAYS_MS").unwrap_or_else(|| DEFAULT_RETRY_DELAYS_MS.into()),
        )?;
        let retry_after_max = Duration::from_millis(parse_number::<u64>(
            "PUSHQ_RETRY_AFTER_MAX_MS",
            get("PUSHQ_RETRY_AFTER_MAX_MS"),
            3_600_000,
            1,
        )?);
        let max_consecutive_failures = parse_number::<u32>(
            "PUSHQ_MAX_CONSECUTIVE_FAILURES",
            get("PUSHQ_MAX_CONSECUTIVE_FAILURES"),
            10,
            0,
        )?;
        let delivery_retention = Duration::from_secs(
            3600 * parse_number::<u64>(
                "PUSHQ_DELIVERY_RETENTION_HOURS",
                get("PUSHQ_DELIVERY_RETENTION_HOURS"),
                168,
                1,
            )?,
        );
        let fanout_chunk =
            parse_number::<u32>("PUSHQ_FANOUT_CHUNK", get("PUSHQ_FANOUT_CHUNK"), 500, 1)? as usize;
        let prefetch = parse_number::<u16>("PUSHQ_PREFETCH", get("PUSHQ_PREFETCH"), 256, 1)?;
        let limits = LimitSettings {
            per_host: parse_rate_limits(
                &get("PUSHQ_RATE_LIMITS").unwrap_or_else(|| DEFAULT_RATE_LIMITS.into()),
            )
            .map_err(|why| {
                ConfigError(format!(
                    "PUSHQ_RATE_LIMITS must list host=per_second entries separated by commas: {why}"
                ))
            })?,
            default_per_second: parse_number::<u32>(
                "PUSHQ_RATE_LIMIT_DEFAULT",
                get("PUSHQ_RATE_LIMIT_DEFAULT"),
                DEFAULT_RATE_LIMIT,
                0,
            )?,
            global_per_second: parse_number::<u32>(
                "PUSHQ_RATE_LIMIT_GLOBAL",
                get("PUSHQ_RATE_LIMIT_GLOBAL"),
                0,
                0,
            )?,
            max_in_flight: parse_number::<u32>(
                "PUSHQ_MAX_IN_FLIGHT",
                get("PUSHQ_MAX_IN_FLIGHT"),
                256,
                1,
            )? as usize,
            max_in_flight_per_origin: parse_number::<u32>(
                "PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN",
                get("PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN"),
                128,
                1,
            )? as usize,
        };
        let shutdown_grace = Duration::from_millis(parse_number::<u64>(
            "PUSHQ_SHUTDOWN_GRACE_MS",
            get("PUSHQ_SHUTDOWN_GRACE_MS"),
            30_000,
            0,
        )?);
        let database_max_connections = parse_number::<u32>(
            "PUSHQ_DATABASE_MAX_CONNECTIONS",
            get("PUSHQ_DATABASE_MAX_CONNECTIONS"),
            16,
            1,
        )?;
        let trace_export = if get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some()
            && get("OTEL_SDK_DISABLED").as_deref() != Some("true")
        {
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
            Some(TraceExport {
                service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "pushq-worker".into()),
            })
        } else {
            None
        };
        let log_format = match get("PUSHQ_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(ConfigError("PUSHQ_LOG_FORMAT must be text or json".into())),
        };
        let amqp_url = get("PUSHQ_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into());
        urls::check_amqp_url(&amqp_url)?;
        let database_url = get("PUSHQ_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
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

/// RFC 8292 asks for a `mailto:` or `https:` URL push services can reach the
/// sender at; Apple answers 403 (BadJwtToken) to any other, to one at
/// `localhost`, and to one holding a space.
fn validate_subject(subject: &str) -> Result<(), ConfigError> {
    let refuse = |why: &str| {
        Err(ConfigError(format!(
            "PUSHQ_VAPID_SUBJECT {why} (Apple refuses it): expected a mailto: or https: URL push services can reach you at, like mailto:ops@example.com, not {subject:?}"
        )))
    };
    if subject.chars().any(char::is_whitespace) {
        return refuse("holds a space");
    }
    let Ok(url) = url::Url::parse(subject) else {
        return refuse("is not a URL");
    };
    let host = match url.scheme() {
        "mailto" => match url.path().rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.is_empty() => domain.to_owned(),
            _ => return refuse("names no address"),
        },
        "https" => url.host_str().unwrap_or_default().to_owned(),
        _ => return refuse("is neither a mailto: nor an https: URL"),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return refuse("names no host");
    }
    if host == "localhost" || host.ends_with(".localhost") {
        return refuse("is at localhost");
    }
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>();
    if ip.is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified()) {
        return refuse("is at a loopback address");
    }
    Ok(())
}

fn parse_number<T>(name: &str, value: Option<String>, default: T, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + num_bounds::Max,
{
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(number) if number >= min => Ok(number),
        _ => Err(ConfigError(format!(
            "{name} must be a whole number from {min} to {}, not {value:?}",
            T::MAX
        ))),
    }
}

mod num_bounds {
    pub trait Max {
        const MAX: Self;
    }
    impl Max for u16 {
        const MAX: Self = u16::MAX;
    }
    impl Max for u32 {
        const MAX: Self = u32::MAX;
    }
    impl Max for u64 {
        const MAX: Self = u64::MAX;
    }
}

fn parse_delays(value: &str) -> Result<Vec<Duration>, ConfigError> {
    let delays: Result<Vec<u64>, _> = value
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(str::parse::<u64>)
        .collect();
    match delays {
        Ok(delays) if delays.iter().all(|&ms| ms > 0) => {
            Ok(delays.into_iter().map(Duration::from_millis).collect())
        }
        _ => Err(ConfigError(format!(
            "PUSHQ_RETRY_DELAYS_MS must be comma-separated positive milliseconds like {DEFAULT_RETRY_DELAYS_MS}, not {value:?}"
        ))),
    }
}

mod urls;

#[cfg(test)]
mod tests;
