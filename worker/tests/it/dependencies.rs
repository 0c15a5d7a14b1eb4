//! RabbitMQ and PostgreSQL as an operator meets them: not there yet, there
//! but refusing, or a managed PostgreSQL whose `postgres` database is off
//! limits. Each case starts the real `pushq-worker` and reads its output.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Output;

use pushq_schemas::Topology;
use pushq_worker::push::VapidPrivateKey;

use crate::helpers::{
    AMQP_URL, Forwarder, Silent, WAIT, WorkerProcess, drop_database, free_local_addr, http_get,
    postgres_base, unique, wait_ready,
};

fn postgres_addr() -> SocketAddr {
    let url = url::Url::parse(&postgres_base()).expect("PUSHQ_TEST_POSTGRES is a URL");
    let host = url.host_str().expect("a host");
    let port = url.port().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .expect("a loopback address")
}

fn broker_addr() -> SocketAddr {
    "127.0.0.1:5672".parse().expect("an address")
}

/// What `run` needs besides the two URLs.
fn run_vars(database_url: String, amqp_url: String) -> HashMap<String, String> {
    HashMap::from([
        ("PUSHQ_DATABASE_URL".into(), database_url),
        ("PUSHQ_AMQP_URL".into(), amqp_url),
        ("PUSHQ_TOPOLOGY_PREFIX".into(), unique("pushq-test-")),
        (
            "PUSHQ_VAPID_PRIVATE_KEY".into(),
            VapidPrivateKey::generate().to_base64url(),
        ),
        (
            "PUSHQ_VAPID_SUBJECT".into(),
            "mailto:ops@example.com".into(),
        ),
        ("PUSHQ_HTTP_ADDR".into(), free_local_addr().to_string()),
        ("PUSHQ_LOG_FORMAT".into(), "json".into()),
    ])
}

pub(crate) async fn command(args: &[&str], vars: &[(&str, &str)]) -> (Output, String) {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_pushq-worker"))
            .args(args)
            .envs(vars.iter().copied())
            .output(),
    )
    .await
    .expect("the command ends in time")
    .expect("it runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stderr)
}

pub(crate) async fn create_database(name: &str) {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("database created");
}

#[tokio::test]
async fn the_maintenance_database_is_used_only_to_create_a_missing_database() {
    let listen = free_local_addr();
    let managed = Forwarder::postgres_without_maintenance_database(listen, postgres_addr()).await;

    let existing = unique("pushq_test_");
    create_database(&existing).await;
    let url = format!("postgres://postgres@{listen}/{existing}");
    let (output, stderr) = command(&["migrate"], &[("PUSHQ_DATABASE_URL", &url)]).await;
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "migrations applied\n"
    );
    assert_eq!(
        managed
            .maintenance_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let missing = unique("pushq_test_");
    let url = format!("postgres://postgres@{listen}/{missing}");
    let (output, stderr) = command(&["migrate"], &[("PUSHQ_DATABASE_URL", &url)]).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "pushq-worker: PostgreSQL at {listen} (PUSHQ_DATABASE_URL) has no database \"{missing}\", and connecting to the maintenance database \"postgres\" to create it failed (permission denied for database \"postgres\" (42501)): create it as a role that may (CREATE DATABASE \"{missing}\" OWNER \"postgres\"), or point PUSHQ_DATABASE_URL at an existing database\n"
        )
    );
    assert_eq!(
        managed
            .maintenance_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop_database(&existing).await;
}

#[tokio::test]
async fn run_waits_for_postgresql_then_rabbitmq_one_line_per_attempt_and_starts_when_they_answer() {
    let database_at = free_local_addr();
    let broker_at = free_local_addr();
    let database = unique("pushq_test_");
    let vars = run_vars(
        format!("postgres://postgres@{database_at}/{database}"),
        format!("amqp://guest:guest@{broker_at}/%2f"),
    );
    let mut worker = WorkerProcess::spawn("run", &vars);

    let waiting_for_database =
        format!("waiting for PostgreSQL at {database_at} (PUSHQ_DATABASE_URL): connection refused");
    worker.wait_for_lines(&waiting_for_database, 2).await;
    // Waiting is not dead: an orchestrator's liveness probe must not kill it.
    let http_addr: SocketAddr = vars["PUSHQ_HTTP_ADDR"].parse().expect("an address");
    assert_eq!(
        http_get(http_addr, "/healthz").await.expect("answers").0,
        200
    );
    assert_eq!(
        http_get(http_addr, "/readyz").await.expect("answers"),
        (503, "starting: waiting for the database".into())
    );
    let _database = Forwarder::start(database_at, postgres_addr()).await;
    let waiting_for_broker =
        format!("waiting for RabbitMQ at {broker_at} (PUSHQ_AMQP_URL): connection refused");
    worker.wait_for_lines(&waiting_for_broker, 2).await;
    let _broker = Forwarder::start(broker_at, broker_addr()).await;
    wait_ready(http_addr).await;

    let status = worker.terminate().await;
    assert!(status.success(), "{status}");
    for line in worker.log_lines() {
        let loud = line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#);
        assert!(
            !loud || line.contains(&waiting_for_database) || line.contains(&waiting_for_broker),
            "a warning or error besides the one line per attempt: {line}"
        );
        assert!(!line.contains("lapin"), "lapin's own lines: {line}");
    }
    let topology = Topology::new(vars["PUSHQ_TOPOLOGY_PREFIX"].clone()).expect("a prefix");
    pushq_worker::broker::topology::delete(AMQP_URL, &topology)
        .await
        .expect("topology deleted");
    drop_database(&database).await;
}

#[tokio::test]
async fn a_broker_refusing_the_login_the_virtual_host_or_tls_stops_run_at_once() {
    let database = unique("pushq_test_");
    for (amqp_url, sentence) in [
        (
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
            "RabbitMQ at 127.0.0.1:5672 (PUSHQ_AMQP_URL) refused the user and password: ACCESS_REFUSED",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
            "RabbitMQ at 127.0.0.1:5672 (PUSHQ_AMQP_URL) refused the virtual host (missing, or the user may not use it): NOT_ALLOWED - vhost no-such-vhost not found",
        ),
        (
            "amqps://guest:guest@127.0.0.1:5672/%2f",
            "RabbitMQ at 127.0.0.1:5672 (PUSHQ_AMQP_URL) failed the TLS handshake",
        ),
    ] {
        let vars = run_vars(
            format!("{}/{database}", postgres_base()),
            amqp_url.to_owned(),
        );
        let mut worker = WorkerProcess::spawn("run", &vars);
        let status = worker.exited().await;
        let lines = worker.log_lines();
        assert_eq!(status.code(), Some(2), "{lines:#?}");
        let errors: Vec<_> = lines
            .iter()
            .filter(|line| line.contains(r#""level":"ERROR""#))
            .collect();
        assert_eq!(errors.len(), 1, "{lines:#?}");
        assert!(errors[0].contains(sentence), "{lines:#?}");
        assert!(
            lines.iter().all(|line| !line.contains("not-the-password")),
            "the password leaks: {lines:#?}"
        );
    }
    // A RUST_LOG of the operator's own neither brings lapin's lines back
    // nor hides the sentence `run` ends on.
    for rust_log in ["info", "hyper"] {
        let mut vars = run_vars(
            format!("{}/{database}", postgres_base()),
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f".into(),
        );
        vars.insert("RUST_LOG".into(), rust_log.into());
        let mut worker = WorkerProcess::spawn("run", &vars);
        let status = worker.exited().await;
        let lines = worker.log_lines();
        assert_eq!(status.code(), Some(2), "{rust_log}: {lines:#?}");
        assert!(
            lines
                .iter()
                .any(|line| line.contains("refused the user and password")),
            "{rust_log}: {lines:#?}"
        );
        assert!(
            lines.iter().all(|line| !line.contains("lapin")),
            "{rust_log}: lapin's own lines: {lines:#?}"
        );
    }
    drop_database(&database).await;
}

#[tokio::test]
async fn one_shot_commands_try_once_and_report_the_refusal() {
    let nothing_at = free_local_addr();
    let unreachable_database = format!("postgres://postgres@{nothing_at}/pushq");
    let unreachable_broker = format!("amqp://guest:guest@{nothing_at}/%2f");
    // (arguments, the one variable set, what stderr says, exit status)
    type Case<'a> = (&'a [&'a str], (&'a str, &'a str), String, i32);
    let cases: [Case; 4] = [
        (
            &["subscriptions", "list"],
            ("PUSHQ_DATABASE_URL", &unreachable_database),
            format!("cannot reach PostgreSQL at {nothing_at} (PUSHQ_DATABASE_URL): connection refused; start it with `docker compose up -d postgres`"),
            1,
        ),
        (
            &["migrate"],
            ("PUSHQ_DATABASE_URL", "postgres://no_such_role@127.0.0.1:5432/pushq"),
            "PostgreSQL at 127.0.0.1:5432 (PUSHQ_DATABASE_URL) refused the user or password: role \"no_such_role\" does not exist (28000)".into(),
            2,
        ),
        (
            &["dead", "list"],
            ("PUSHQ_AMQP_URL", &unreachable_broker),
            format!("cannot reach RabbitMQ at {nothing_at} (PUSHQ_AMQP_URL): connection refused; start it with `docker compose up -d rabbitmq`"),
            1,
        ),
        (
            &["run"],
            ("PUSHQ_AMQP_URL", "amqp://guest:guest@127.0.0.1:99999/%2f"),
            "PUSHQ_AMQP_URL is not a URL (invalid port number)".into(),
            2,
        ),
    ];
    for (args, var, sentence, code) in cases {
        let (output, stderr) = command(args, &[var]).await;
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, not {stderr}"
        );
        assert!(stderr.contains(&sentence), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_is_reported_not_waited_on_for_ever() {
    let silent = Silent::start().await;
    let at = silent.addr;
    let database_url = format!("postgres://postgres@{at}/pushq");
    let amqp_url = format!("amqp://guest:guest@{at}/%2f");
    let database = [("PUSHQ_DATABASE_URL", database_url.as_str())];
    let broker = [("PUSHQ_AMQP_URL", amqp_url.as_str())];
    let ((migrate, migrate_err), (dead, dead_err), (demo, demo_err)) = tokio::join!(
        command(&["migrate"], &database),
        command(&["dead", "list"], &broker),
        command(&["demo", "--count", "1"], &broker),
    );
    for (output, stderr, said) in [
        (
            migrate,
            migrate_err,
            format!("cannot reach PostgreSQL at {at} (PUSHQ_DATABASE_URL): no answer within 10 s"),
        ),
        (
            dead,
            dead_err,
            format!("cannot reach RabbitMQ at {at} (PUSHQ_AMQP_URL): no answer within 10 s"),
        ),
        (
            demo,
            demo_err,
            format!("cannot reach RabbitMQ at {at} (PUSHQ_AMQP_URL): no answer within 3 s"),
        ),
    ] {
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&said), "{stderr}");
    }
}

#[tokio::test]
async fn a_database_without_pushq_tables_or_rights_says_what_is_needed() {
    use sqlx::Connection;
    let database = unique("pushq_test_");
    let role = unique("pushq_test_role_");
    create_database(&database).await;
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base()))
        .await
        .expect("admin connection");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE ROLE \"{role}\" LOGIN")))
        .execute(&mut admin)
        .await
        .expect("role created");
    let base = url::Url::parse(&postgres_base()).expect("a URL");
    let host = base.host_str().expect("a host");
    let port = base.port().unwrap_or(5432);

    // Since PostgreSQL 15 only the owner may create tables in `public`.
    let as_role = format!("postgres://{role}@{host}:{port}/{database}");
    let (output, stderr) = command(&["migrate"], &[("PUSHQ_DATABASE_URL", &as_role)]).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused the migrations") && stderr.contains("(42501)"),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "{stderr}");

    let as_owner = format!("{}/{database}", postgres_base());
    let (output, stderr) = command(
        &["subscriptions", "list"],
        &[("PUSHQ_DATABASE_URL", &as_owner)],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the database has no pushq tables yet; create them with `pushq-worker migrate`"
        ),
        "{stderr}"
    );

    drop_database(&database).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE \"{role}\"")))
        .execute(&mut admin)
        .await
        .expect("role dropped");
}
