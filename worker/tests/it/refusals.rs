//! What the broker refuses never stalls delivery: a results consumer's full
//! queue misses results, it does not hold up everyone's notifications.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use pushq_producer::{NotificationSend, Target};
use serde_json::json;

use crate::helpers::{TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_bound_to_the_results_misses_results_and_delivery_goes_on() {
    let app = TestApp::spawn().await;
    let device = app.browser();
    app.register(&device, "quinn", &[]).await;
    let full = format!("{}.full-consumer", app.topology.prefix());
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-max-length"), AMQPValue::LongInt(1));
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    app.raw
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("a consumer's queue");
    app.raw
        .queue_bind(
            full.as_str().into(),
            app.topology.results_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bound to the results");
    let mut results = app.watch_results().await;
    let count = 5;
    for n in 0..count {
        app.producer
            .send(&NotificationSend::new(
                Target::User("quinn".into()),
                Some(json!(n)),
            ))
            .await
            .expect("published");
    }
    let received = app
        .fake
        .wait_for_received(count, WAIT)
        .await
        .expect("every notification delivered");
    assert_eq!(received.len(), count);
    // Our own probe queue has room: it gets every result once.
    let got = results.next(count).await;
    assert!(
        got.iter()
            .all(|r| r.event_type == "pushq.delivery.succeeded")
    );
    app.wait_until(
        "every delivery is recorded and its result marked",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM deliveries WHERE status = 'delivered' AND result_published",
            )
            .fetch_one(&app.pool)
            .await
            .is_ok_and(|n| n == count as i64)
        },
    )
    .await;
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains(&format!("pushq_results_refused_total {}", count - 1)),
        "{metrics}"
    );
    assert_eq!(
        app.fake.received_by(&device).len(),
        count,
        "none sent twice"
    );
    results.close().await;
    app.stop().await;
}
