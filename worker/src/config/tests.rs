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
