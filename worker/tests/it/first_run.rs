//! `demo`, the README's first command, as a new operator meets it: what is
//! missing said in one sentence, a size it cannot hold refused, and an
//! interruption at any moment leaving nothing behind.

use std::collections::HashMap;

use pushq_schemas::Topology;

use crate::dependencies::{command, create_database};
use crate::helpers::{
    AMQP_URL, WorkerProcess, drop_database, free_local_addr, postgres_base, unique,
};

#[tokio::test]
async fn the_demo_says_in_one_sentence_how_to_start_what_is_missing() {
    let nothing_at = free_local_addr();
    for (var, value, sentence) in [
        (
            "PUSHQ_AMQP_URL",
            format!("amqp://guest:guest@{nothing_at}/%2f"),
            format!(
                "pushq-worker: cannot reach RabbitMQ at {nothing_at} (PUSHQ_AMQP_URL): connection refused; start it with `docker compose up -d rabbitmq` or the system's service, or point PUSHQ_AMQP_URL at a running one\n"
            ),
        ),
        (
            "PUSHQ_DATABASE_URL",
            format!("postgres://postgres@{nothing_at}/pushq"),
            format!(
                "pushq-worker: cannot reach PostgreSQL at {nothing_at} (PUSHQ_DATABASE_URL): connection refused; start it with `docker compose up -d postgres` or the system's service, or point PUSHQ_DATABASE_URL at a running one\n"
            ),
        ),
    ] {
        let (output, stderr) = command(&["demo", "--count", "1"], &[(var, &value)]).await;
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr, sentence);
    }
}

#[tokio::test]
async fn an_interrupted_demo_removes_what_it_made() {
    let database = unique("pushq_test_");
    create_database(&database).await;
    let database_url = format!("{}/{database}", postgres_base());
    let vars = HashMap::from([
        ("PUSHQ_DATABASE_URL".to_owned(), database_url.clone()),
        ("PUSHQ_TOPOLOGY_PREFIX".to_owned(), unique("pushq-test-")),
    ]);
    let mut demo = WorkerProcess::spawn("demo --count 1000", &vars);
    demo.wait_for_lines("sending 1000 notifications", 1).await;
    // The demo's own topology is named in its replica's row, which it
    // removes when it stops.
    let pool = sqlx::PgPool::connect(&database_url)
        .await
        .expect("the demo's database");
    let replica: String = sqlx::query_scalar("SELECT name FROM workers")
        .fetch_one(&pool)
        .await
        .expect("the demo's worker is alive");
    let prefix = replica
        .rsplit_once("-worker-")
        .expect("a replica name")
        .0
        .to_owned();

    let status = demo.stop_with("INT").await;
    assert_interrupted_and_cleaned_up(status, &demo);
    for table in ["subscriptions", "deliveries", "workers"] {
        let left: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .expect("counted");
        assert_eq!(left, 0, "the interrupted demo left rows in {table}");
    }
    pool.close().await;
    let topology = Topology::new(prefix).expect("the demo's prefix");
    let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .expect("broker");
    let channel = connection.create_channel().await.expect("channel");
    let declared = channel
        .queue_declare(
            topology.jobs_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(
        declared.is_err(),
        "the interrupted demo left {}",
        topology.jobs_queue()
    );
    let _ = connection.close(200, "done".into()).await;
    drop_database(&database).await;
}

#[tokio::test]
async fn a_demo_too_large_is_refused_and_one_interrupted_while_preparing_stops_at_once() {
    let (output, stderr) = command(&["demo", "--count", "100001"], &[]).await;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("from 0 to 100000"), "{stderr}");

    let database = unique("pushq_test_");
    let vars = HashMap::from([(
        "PUSHQ_DATABASE_URL".to_owned(),
        format!("{}/{database}", postgres_base()),
    )]);
    let mut demo = WorkerProcess::spawn("demo --count 100000", &vars);
    demo.wait_for_lines("registering 100000 subscriptions", 1)
        .await;
    let status = demo.stop_with("TERM").await;
    assert_interrupted_and_cleaned_up(status, &demo);
    drop_database(&database).await;
}

/// Exit status 130 and the sentence saying the demo removed what it made.
fn assert_interrupted_and_cleaned_up(status: std::process::ExitStatus, demo: &WorkerProcess) {
    let lines = demo.log_lines();
    assert_eq!(status.code(), Some(130), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|line| line.contains("interrupted; the demo removed")),
        "{lines:#?}"
    );
}
