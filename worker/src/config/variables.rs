//! Every environment variable pushq reads, in one table: the settings, the
//! help text of each command, the warning about unknown `PUSHQ_*` names and
//! the README's Configuration table all come from it.

use crate::push::endpoint_policy::DEFAULT_ENDPOINT_HOSTS;
use crate::push::limits::DEFAULT_RATE_LIMITS;

use super::parse::DEFAULT_RETRY_DELAYS_MS;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/pushq";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    /// What an unset (or, for most, empty) variable means; `None`: nothing.
    pub default: Option<&'static str>,
    pub about: &'static str,
    /// What a bad value is refused for, before anything starts.
    pub checked: &'static str,
    /// The worker's commands that read it (as typed: `dead list`), or the
    /// other program of the workspace that does.
    pub read_by: &'static [&'static str],
}

/// The worker's commands, as typed.
pub const COMMANDS: [&str; 9] = [
    "run",
    "migrate",
    "vapid generate",
    "vapid public",
    "demo",
    "subscriptions list",
    "dead list",
    "dead replay",
    "probe",
];

/// Programs other than the worker that read `PUSHQ_*` variables, so that
/// setting one of theirs draws no warning.
pub const OTHER_READERS: [&str; 5] = [
    "examples/web",
    "send_notification",
    "bench",
    "compose.yaml",
    "tests",
];

const LOGGING: &[&str] = &[
    "run",
    "migrate",
    "vapid public",
    "demo",
    "subscriptions list",
    "dead list",
    "dead replay",
];
const BROKER: &[&str] = &[
    "run",
    "demo",
    "dead list",
    "dead replay",
    "examples/web",
    "send_notification",
];
const DATABASE: &[&str] = &["run", "migrate", "demo", "subscriptions list"];
/// `demo` runs the worker in-process, with its own key, subject and push service.
const WORKING: &[&str] = &["run", "demo"];
const SIGNING: &[&str] = &["run", "vapid public"];
const SENDING: &[&str] = &["run"];
/// The example web app (through the SDK) refuses what the worker would.
const ENDPOINTS: &[&str] = &["run", "examples/web", "send_notification"];

const fn var(
    name: &'static str,
    default: Option<&'static str>,
    about: &'static str,
    checked: &'static str,
    read_by: &'static [&'static str],
) -> Variable {
    Variable {
        name,
        default,
        about,
        checked,
        read_by,
    }
}

const WHOLE_NUMBER: &str = "a whole number";
const POSITIVE: &str = "a whole number from 1";

pub const VARIABLES: &[Variable] = &[
    var(
        "PUSHQ_AMQP_URL",
        Some(DEFAULT_AMQP_URL),
        "the RabbitMQ broker",
        "an `amqp://` or `amqps://` URL with a host and a valid port (its password is never shown)",
        BROKER,
    ),
    var(
        "PUSHQ_DATABASE_URL",
        Some(DEFAULT_DATABASE_URL),
        "the PostgreSQL database; `run`, `migrate` and `demo` create it if missing (only then connecting to the `postgres` maintenance database)",
        "a `postgres://` or `postgresql://` URL that parses, with a valid port (its password is never shown)",
        DATABASE,
    ),
    var(
        "PUSHQ_VAPID_PRIVATE_KEY",
        None,
        "the base64url raw P-256 private key (`pushq-worker vapid generate`); required by `run`",
        "32 bytes of base64url making a P-256 key; not set together with `PUSHQ_VAPID_PRIVATE_KEY_FILE`",
        SIGNING,
    ),
    var(
        "PUSHQ_VAPID_PRIVATE_KEY_FILE",
        None,
        "instead of `PUSHQ_VAPID_PRIVATE_KEY`: a PEM file, SEC1 (as `openssl ecparam -name prime256v1 -genkey` writes it, with or without its `EC PARAMETERS` block) or PKCS#8",
        "readable, holding a private key on P-256 (another curve is refused by name)",
        SIGNING,
    ),
    var(
        "PUSHQ_VAPID_SUBJECT",
        None,
        "where push services can reach you; required by `run`",
        "a `mailto:` or `https:` URL, not at `localhost` or a loopback address, without spaces (Apple refuses those)",
        SENDING,
    ),
    var(
        "PUSHQ_TOPOLOGY_PREFIX",
        Some("pushq"),
        "prefix of every exchange and queue",
        "letters, digits, `-`, `_` and `.`",
        BROKER,
    ),
    var(
        "PUSHQ_ENDPOINT_HOSTS",
        Some(DEFAULT_ENDPOINT_HOSTS),
        "push services the worker sends to",
        "`host`, `host:port` or `host:*`, comma-separated (a host, not a URL)",
        ENDPOINTS,
    ),
    var(
        "PUSHQ_ALLOW_HTTP",
        Some("false"),
        "allow `http://` push services (tests)",
        "`true`/`false` (or `1`/`0`, `yes`/`no`)",
        ENDPOINTS,
    ),
    var(
        "PUSHQ_HTTPS_PROXY",
        None,
        "a proxy every push goes through; without it none is used, whatever `HTTPS_PROXY`/`ALL_PROXY`/`HTTP_PROXY` say",
        "an `http://` or `https://` URL with a host and no path (credentials allowed, never shown)",
        WORKING,
    ),
    var(
        "PUSHQ_HTTP_ADDR",
        Some("127.0.0.1:9464"),
        "`/healthz`, `/readyz`, `/metrics`; port 0 picks one, the bound address is logged; `probe` asks it",
        "an address with a port",
        &["run", "probe"],
    ),
    var(
        "PUSHQ_RETRY_DELAYS_MS",
        Some(DEFAULT_RETRY_DELAYS_MS),
        "the delay before each retry; as many retries as delays",
        "positive milliseconds up to 28 days (2419200000), comma-separated (spaces around them are trimmed), none smaller than the one before; set but empty is refused",
        WORKING,
    ),
    var(
        "PUSHQ_RETRY_AFTER_MAX_MS",
        Some("3600000"),
        "the longest `Retry-After` honoured",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_MAX_CONSECUTIVE_FAILURES",
        Some("10"),
        "the subscription's own failures in a row (see Results) after which it is deleted; 0 never",
        WHOLE_NUMBER,
        WORKING,
    ),
    var(
        "PUSHQ_RATE_LIMITS",
        Some(DEFAULT_RATE_LIMITS),
        "messages per second to a push service (host and subdomains) for all replicas together: each live replica sends its share; 0 unlimited",
        "`host=per_second` entries, comma-separated",
        WORKING,
    ),
    var(
        "PUSHQ_RATE_LIMIT_DEFAULT",
        Some("1000"),
        "the same for any other host",
        WHOLE_NUMBER,
        WORKING,
    ),
    var(
        "PUSHQ_RATE_LIMIT_GLOBAL",
        Some("0"),
        "messages per second in all, for all replicas together (each its share); 0 unlimited",
        WHOLE_NUMBER,
        WORKING,
    ),
    var(
        "PUSHQ_MAX_IN_FLIGHT",
        Some("256"),
        "requests to push services in flight per replica",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN",
        Some("128"),
        "of those, to one push service, so a slow one cannot take them all",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_DELIVERY_RETENTION_HOURS",
        Some("168"),
        "final delivery records (the idempotency guard) are pruned after this",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_FANOUT_CHUNK",
        Some("500"),
        "a user or tag with more subscriptions is split into chunks of this many",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_PREFETCH",
        Some("256"),
        "unacked messages per queue per replica",
        "a whole number from 1 to 65535",
        WORKING,
    ),
    var(
        "PUSHQ_SHUTDOWN_GRACE_MS",
        Some("30000"),
        "on SIGTERM/SIGINT: stop consuming, finish in-flight work within this, exit 0; else hand it back and exit 1",
        WHOLE_NUMBER,
        WORKING,
    ),
    var(
        "PUSHQ_DATABASE_MAX_CONNECTIONS",
        Some("16"),
        "database connections per replica",
        POSITIVE,
        WORKING,
    ),
    var(
        "PUSHQ_LOG_FORMAT",
        Some("text"),
        "`json` for JSON lines",
        "`text` or `json`",
        LOGGING,
    ),
    var(
        "RUST_LOG",
        Some("info (demo: warn)"),
        "log levels, e.g. `info,pushq_worker=debug`",
        "a valid `tracing` filter, without a bare word that is a misspelt level (`warning`, `infoo`), which would name a crate and turn every other log off",
        LOGGING,
    ),
    var(
        "NO_COLOR",
        None,
        "set (non-empty) for text logs without colours; they are coloured only on a terminal anyway",
        "nothing",
        LOGGING,
    ),
    var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "export spans over OTLP/HTTP (protobuf) to this collector; nothing is exported when unset",
        "with `OTEL_EXPORTER_OTLP_PROTOCOL` only `http/protobuf`",
        LOGGING,
    ),
    var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        None,
        "the same, for traces only",
        "as above, with `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`",
        LOGGING,
    ),
    var(
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        Some("http/protobuf"),
        "the OTLP protocol",
        "`http/protobuf`, the one built in",
        LOGGING,
    ),
    var(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        Some("http/protobuf"),
        "the same, for traces only",
        "`http/protobuf`",
        LOGGING,
    ),
    var(
        "OTEL_SDK_DISABLED",
        Some("false"),
        "`true` exports nothing, whatever the endpoint",
        "nothing",
        LOGGING,
    ),
    var(
        "OTEL_SERVICE_NAME",
        Some("pushq-worker"),
        "the service name spans carry",
        "nothing",
        LOGGING,
    ),
    var(
        "PUSHQ_VAPID_PUBLIC_KEY",
        None,
        "the example web app's `applicationServerKey` (`pushq-worker vapid public`)",
        "by the example web app when it starts",
        &["examples/web"],
    ),
    var(
        "PUSHQ_BENCH_DATABASE_URL",
        None,
        "the database the benchmark uses instead of its own",
        "by the benchmark",
        &["bench"],
    ),
    var(
        "PUSHQ_DB_PASSWORD",
        Some("pushq"),
        "the PostgreSQL password compose.yaml sets up",
        "nothing",
        &["compose.yaml"],
    ),
    var(
        "PUSHQ_TEST_POSTGRES",
        Some("postgres://postgres@127.0.0.1:5432"),
        "the PostgreSQL server the test suite creates its databases on",
        "nothing",
        &["tests"],
    ),
    var(
        "PUSHQ_TEST_CHROMIUM",
        Some("/usr/bin/chromium"),
        "the browser the browser test drives",
        "nothing",
        &["tests"],
    ),
    var(
        "PUSHQ_TEST_SCREENSHOT",
        None,
        "where the browser test saves a screenshot",
        "nothing",
        &["tests"],
    ),
];

pub fn find(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|variable| variable.name == name)
}

/// Whether `command` reads `name`; a variable it does not read cannot stop it.
pub fn reads(command: &str, name: &str) -> bool {
    find(name).is_some_and(|variable| variable.read_by.contains(&command))
}

/// The default the table gives `name`; only for variables with one.
pub(super) fn default_of(name: &str) -> &'static str {
    find(name)
        .and_then(|variable| variable.default)
        .unwrap_or_else(|| panic!("{name} has a default in the table"))
}

/// The settings `command` reads, for its `--help`.
pub fn help_for(command: &str) -> String {
    let mut help = String::from("Environment (checked before anything starts):\n");
    for variable in VARIABLES.iter().filter(|v| v.read_by.contains(&command)) {
        let default = variable
            .default
            .map_or_else(String::new, |default| format!(" [default: {default}]"));
        let checked = match variable.checked {
            "nothing" => String::new(),
            checked => format!(" (checked: {})", plain(checked)),
        };
        help.push_str(&format!(
            "  {}{default}\n      {}{checked}\n",
            variable.name,
            plain(variable.about),
        ));
    }
    help
}

/// Markdown code spans read as noise in a terminal.
fn plain(text: &str) -> String {
    text.replace('`', "")
}
