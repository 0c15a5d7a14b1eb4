//! The VAPID private key and the database password never reach a log line,
//! an error message or a span, however the worker is run or fails.

use pushq_producer::{NotificationSend, Target};
use pushq_worker::push::VapidPrivateKey;
use serde_json::json;

use crate::helpers::{TestApp, WAIT, postgres_base, vapid_pem};

const DATABASE_PASSWORD: &str = "db-secret-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_log_line_even_at_debug_level() {
    let key_file = std::env::temp_dir().join(format!("pushq-test-{}.pem", uuid::Uuid::new_v4()));
    let key_path = key_file.to_string_lossy().into_owned();
    // Trust authentication lets the password through unchecked; it still
    // travels in the URL the worker is given.
    let database_url = format!(
        "{}/{{database}}",
        postgres_base().replacen(
            "://postgres@",
            &format!("://postgres:{DATABASE_PASSWORD}@"),
            1
        )
    );
    assert!(database_url.contains(DATABASE_PASSWORD));
    let mut app = TestApp::spawn_process(&[
        ("PUSHQ_VAPID_PRIVATE_KEY_FILE", &key_path),
        ("PUSHQ_DATABASE_URL", &database_url),
        ("RUST_LOG", "debug"),
        ("PUSHQ_LOG_FORMAT", "text"),
    ])
    .await;
    let ours = app.browser();
    // A subscription bound to another server's key: the push service answers
    // 403, the loudest error path the worker has about its credentials.
    let foreign = app
        .fake
        .subscribe_with_key(&VapidPrivateKey::generate().public_key_base64url());
    app.register(&ours, "judy", &[]).await;
    app.register(&foreign, "judy", &[]).await;
    app.producer
        .send(&NotificationSend::new(
            Target::User("judy".into()),
            Some(json!("psst")),
        ))
        .await
        .expect("published");
    app.fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    app.wait_until("the 403 is answered", || async {
        !app.fake.rejections().is_empty()
    })
    .await;
    app.stop_worker().await;

    let pem = vapid_pem(&app.vapid);
    let pem_body: Vec<&str> = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let lines = app.process().log_lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("refused our VAPID credentials")),
        "the credential error was logged"
    );
    let raw_key = app.vapid.to_base64url();
    for line in &lines {
        assert!(!line.contains(&raw_key), "the VAPID key leaks: {line}");
        assert!(
            !line.contains(DATABASE_PASSWORD),
            "the database password leaks: {line}"
        );
        for pem_line in &pem_body {
            assert!(!line.contains(pem_line), "the PEM key leaks: {line}");
        }
    }
    let _ = std::fs::remove_file(&key_file);
    app.clean_up().await;
}

#[tokio::test]
async fn failing_starts_name_the_setting_but_never_its_secret_value() {
    let not_a_key = "c2VjcmV0LW5vdC1hLXZhbGlkLWtleS12YWx1ZQ";
    let unreachable = format!("postgres://app:{DATABASE_PASSWORD}@127.0.0.1:1/pushq");
    for (vars, command) in [
        (vec![("PUSHQ_VAPID_PRIVATE_KEY", not_a_key)], "run"),
        (
            vec![("PUSHQ_DATABASE_URL", unreachable.as_str())],
            "migrate",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_pushq-worker"))
            .arg(command)
            .envs(vars.iter().copied())
            .env("PUSHQ_VAPID_SUBJECT", "mailto:ops@example.com")
            .output()
            .await
            .expect("runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} must fail: {stderr}");
        let (name, secret) = vars[0];
        let secret = if name == "PUSHQ_DATABASE_URL" {
            DATABASE_PASSWORD
        } else {
            secret
        };
        assert!(
            stderr.contains(name) || name == "PUSHQ_DATABASE_URL",
            "{stderr}"
        );
        assert!(!stderr.contains(secret), "{name}'s secret leaks: {stderr}");
    }
}
