use super::*;
use std::collections::HashMap;

fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::from_lookup(|name| vars.get(name).cloned())
}

#[test]
fn defaults_follow_the_design() {
    let s = settings(&[]).expect("defaults are valid");
    assert_eq!(s.amqp_url(), DEFAULT_AMQP_URL);
    assert_eq!(s.database_url(), DEFAULT_DATABASE_URL);
    assert_eq!(s.topology.prefix(), "pushq");
    assert_eq!(s.prefetch, 256);
    assert_eq!(s.retry_delays.len(), 8);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert!(s.require_vapid().is_err());
    assert_eq!(
        s.trace_export, None,
        "nothing is exported without an endpoint"
    );
}

#[test]
fn an_otlp_endpoint_turns_trace_export_on_over_http_protobuf_only() {
    let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]).expect("valid");
    assert_eq!(
        s.trace_export.map(|export| export.service_name).as_deref(),
        Some("pushq-worker")
    );
    let err = settings(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ])
    .expect_err("grpc is not built in");
    assert!(err.0.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
}

#[test]
fn each_bad_value_names_its_variable() {
    for (name, value) in [
        ("PUSHQ_PREFETCH", "0"),
        ("PUSHQ_PREFETCH", "many"),
        ("PUSHQ_ALLOW_HTTP", "maybe"),
        ("PUSHQ_RETRY_DELAYS_MS", "1000,soon"),
        ("PUSHQ_TOPOLOGY_PREFIX", "has space"),
        ("PUSHQ_HTTP_ADDR", "nowhere"),
        ("PUSHQ_VAPID_SUBJECT", "ops@example.com"),
        ("PUSHQ_ENDPOINT_HOSTS", "host:port"),
        ("PUSHQ_AMQP_URL", "http://x"),
        ("PUSHQ_DATABASE_URL", "mysql://x"),
        ("PUSHQ_SHUTDOWN_GRACE_MS", "-1"),
        ("PUSHQ_HTTPS_PROXY", "socks5://127.0.0.1:1080"),
    ] {
        let err = settings(&[(name, value)]).expect_err(name);
        assert!(err.0.starts_with(name), "{err}");
    }
}

#[test]
fn a_bad_private_key_is_named_but_never_echoed() {
    let secret = "c2VjcmV0LXZhbHVlLXRoYXQtaXMtbm90LWEta2V5";
    let err = settings(&[("PUSHQ_VAPID_PRIVATE_KEY", secret)]).expect_err("invalid");
    assert!(err.0.starts_with("PUSHQ_VAPID_PRIVATE_KEY"));
    assert!(!err.0.contains(secret));
    let key = VapidPrivateKey::generate();
    let s = settings(&[
        ("PUSHQ_VAPID_PRIVATE_KEY", &key.to_base64url()),
        ("PUSHQ_VAPID_SUBJECT", "mailto:ops@example.com"),
        ("PUSHQ_DATABASE_URL", "postgres://app:hunter2@db/pushq"),
    ])
    .expect("valid");
    let debug = format!("{s:?}");
    assert!(!debug.contains(&key.to_base64url()));
    assert!(!debug.contains("hunter2"));
    assert!(s.require_vapid().is_ok());
}

#[test]
fn a_vapid_subject_apple_would_refuse_stops_the_start() {
    for refused in [
        "mailto:ops@localhost",
        "mailto:ops@LOCALHOST.",
        "mailto:ops@push.localhost",
        "mailto: ops@example.com",
        "mailto:ops@example.com ",
        "mailto:ops team@example.com",
        "mailto:",
        "mailto:@example.com",
        "mailto:ops",
        "https://localhost/contact",
        "https://LocalHost:8443/",
        "mailto:ops@127.0.0.1",
        "mailto:ops@[::1]",
        "https://127.0.0.1/contact",
        "http://example.com/contact",
        "ops@example.com",
    ] {
        let err = settings(&[("PUSHQ_VAPID_SUBJECT", refused)]).expect_err(refused);
        assert!(err.0.starts_with("PUSHQ_VAPID_SUBJECT "), "{err}");
        assert!(err.0.contains("Apple"), "{err}");
        assert!(!err.0.contains('\n'), "one sentence: {err}");
    }
    for accepted in [
        "mailto:ops@example.com",
        "mailto:ops+push@sub.example.co.uk",
        "https://example.com/contact",
        "https://notlocalhost.example/",
    ] {
        let s = settings(&[("PUSHQ_VAPID_SUBJECT", accepted)]).expect(accepted);
        assert_eq!(s.vapid_subject.as_deref(), Some(accepted));
    }
}

#[test]
fn an_explicit_proxy_is_the_only_one_and_its_credentials_stay_hidden() {
    let s = settings(&[]).expect("defaults");
    assert!(s.https_proxy.is_none() && s.http_settings().proxy.is_none());
    let s = settings(&[(
        "PUSHQ_HTTPS_PROXY",
        "http://pushq:hunter2@proxy.internal:3128",
    )])
    .expect("valid");
    let proxy = s.http_settings().proxy.expect("configured");
    assert_eq!(proxy.origin(), "http://proxy.internal:3128");
    let debug = format!("{s:?}");
    assert!(
        debug.contains("proxy.internal") && !debug.contains("hunter2"),
        "{debug}"
    );
    assert!(settings(&[("PUSHQ_HTTPS_PROXY", "https://proxy.internal")]).is_ok());
    for refused in [
        "proxy.internal:3128",
        "ftp://proxy.internal",
        "http://proxy.internal:3128/path",
        "http://user:hunter2@:3128",
        "socks5://user:hunter2@proxy.internal",
    ] {
        let err = settings(&[("PUSHQ_HTTPS_PROXY", refused)]).expect_err(refused);
        assert!(err.0.starts_with("PUSHQ_HTTPS_PROXY "), "{err}");
        assert!(!err.0.contains("hunter2"), "{err}");
    }
}

#[test]
fn retry_delays_are_trimmed_and_never_decrease() {
    let s = settings(&[("PUSHQ_RETRY_DELAYS_MS", " 1000, 5000 ,5000")]).expect("spaces trimmed");
    assert_eq!(
        s.retry_delays,
        [1000, 5000, 5000].map(Duration::from_millis).to_vec()
    );
    let err = settings(&[("PUSHQ_RETRY_DELAYS_MS", "1000,30000,5000")]).expect_err("decreases");
    assert!(
        err.0
            .starts_with("PUSHQ_RETRY_DELAYS_MS entry 3 (5000) is smaller than entry 2"),
        "{err}"
    );
    for refused in ["1000,,5000", "1000,", "0", "1000,soon"] {
        let err = settings(&[("PUSHQ_RETRY_DELAYS_MS", refused)]).expect_err(refused);
        assert!(err.0.starts_with("PUSHQ_RETRY_DELAYS_MS "), "{err}");
    }
}

#[test]
fn a_retry_delay_longer_than_any_push_service_keeps_a_notification_is_refused() {
    let longest = "1000,2419200000";
    let s = settings(&[("PUSHQ_RETRY_DELAYS_MS", longest)]).expect("28 days");
    assert_eq!(s.retry_delays[1], Duration::from_secs(28 * 24 * 3600));
    for (value, entry) in [
        ("1000,2419200001", "entry 2 (2419200001)"),
        ("1000000000000", "entry 1 (1000000000000)"),
        ("18446744073709551615", "entry 1 (18446744073709551615)"),
        (
            "5,99999999999999999999999",
            "entry 2 (99999999999999999999999)",
        ),
    ] {
        let err = settings(&[("PUSHQ_RETRY_DELAYS_MS", value)]).expect_err(value);
        assert!(
            err.0.starts_with(&format!(
                "PUSHQ_RETRY_DELAYS_MS {entry} is longer than 28 days (2419200000 ms)"
            )),
            "{err}"
        );
    }
}

#[test]
fn retry_delays_set_but_empty_are_refused_not_defaulted() {
    for empty in ["", "  "] {
        let err = settings(&[("PUSHQ_RETRY_DELAYS_MS", empty)]).expect_err("empty");
        assert!(
            err.0.starts_with("PUSHQ_RETRY_DELAYS_MS is set but empty"),
            "{err}"
        );
    }
    // Other variables keep reading an empty value as unset.
    assert_eq!(
        settings(&[("PUSHQ_PREFETCH", "")])
            .expect("default")
            .prefetch,
        256
    );
}

#[test]
fn the_table_gives_every_default() {
    let s = settings(&[]).expect("defaults");
    assert_eq!(
        s.limits.default_per_second,
        crate::push::limits::DEFAULT_RATE_LIMIT
    );
    assert_eq!(
        s.http_addr.to_string(),
        variables::default_of("PUSHQ_HTTP_ADDR")
    );
    for variable in variables::VARIABLES {
        for reader in variable.read_by {
            assert!(
                variables::COMMANDS.contains(reader) || variables::OTHER_READERS.contains(reader),
                "{} is read by unknown {reader}",
                variable.name
            );
        }
        assert!(
            variables::VARIABLES
                .iter()
                .filter(|other| other.name == variable.name)
                .count()
                == 1,
            "{} is listed once",
            variable.name
        );
    }
}

#[test]
fn a_command_is_not_stopped_by_a_setting_it_does_not_read() {
    let lookup = |name: &str| match name {
        "PUSHQ_VAPID_SUBJECT" => Some("mailto:me@localhost".to_owned()),
        "PUSHQ_HTTP_ADDR" => Some("127.0.0.1:1234".to_owned()),
        _ => None,
    };
    assert!(Settings::for_command("run", lookup).is_err());
    let probe = Settings::for_command("probe", lookup).expect("probe ignores the subject");
    assert_eq!(probe.http_addr.port(), 1234);
    assert!(Settings::for_command("vapid generate", lookup).is_ok());
    let dead = Settings::for_command("dead list", lookup).expect("dead list");
    assert_eq!(dead.http_addr.port(), 9464, "dead list does not read it");
}

#[test]
fn unknown_pushq_names_are_named_with_the_closest_known_one() {
    let warnings = unknown_variables([
        "PUSHQ_RETRY_DELAY_MS",
        "PUSHQ_RETRY_DELAY_MS",
        "PUSHQ_VAPID_PUBLIC_KEY",
        "PUSHQ_BENCH_DATABASE_URL",
        "PUSHQ_NOTHING_LIKE_IT_AT_ALL",
        "HOME",
    ]);
    assert_eq!(
        warnings,
        [
            "PUSHQ_NOTHING_LIKE_IT_AT_ALL is not a pushq setting and is ignored",
            "PUSHQ_RETRY_DELAY_MS is not a pushq setting; did you mean PUSHQ_RETRY_DELAYS_MS?",
        ]
    );
}

#[test]
fn each_command_help_lists_the_variables_it_reads_with_defaults() {
    let run = variables::help_for("run");
    assert!(run.contains("PUSHQ_VAPID_SUBJECT"), "{run}");
    assert!(run.contains("PUSHQ_PREFETCH [default: 256]"), "{run}");
    let probe = variables::help_for("probe");
    assert!(probe.contains("PUSHQ_HTTP_ADDR [default: 127.0.0.1:9464]"));
    assert!(!probe.contains("PUSHQ_AMQP_URL"), "{probe}");
    let dead = variables::help_for("dead list");
    assert!(dead.contains("PUSHQ_TOPOLOGY_PREFIX") && dead.contains("PUSHQ_AMQP_URL"));
}

/// The README's Configuration table names exactly the variables of the table.
#[test]
fn the_readme_lists_every_variable_and_no_other() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Configuration section");
    let mut listed: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split('`').next())
        .collect();
    listed.sort_unstable();
    let mut known: Vec<&str> = variables::VARIABLES.iter().map(|v| v.name).collect();
    known.sort_unstable();
    assert_eq!(listed, known);
    for variable in variables::VARIABLES {
        let row = section
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", variable.name)))
            .expect("a row");
        let default = variable
            .default
            .map_or_else(|| "—".to_owned(), |default| format!("`{default}`"));
        assert!(row.contains(&default), "{row} shows {default}");
        assert!(row.contains(variable.checked), "{row} says what is checked");
    }
}
