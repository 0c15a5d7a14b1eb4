//! What a message keeps when it comes back: a hand-over through the delay
//! queues or the broker's redelivery never restarts its TTL clock, never
//! loses a dead letter, and never loops.

use lapin::types::{AMQPValue, FieldTable, ShortString};
use pushq_schemas::ResultReason;
use serde_json::json;

use crate::helpers::{TestApp, new_id, structured_properties};

fn epoch_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_time_keeps_its_first_receipt_when_it_is_passed_on() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let device = app.browser();
    app.register(&device, "ines", &[]).await;
    // No `time`: its TTL of 2 s runs from its first receipt. It is due only
    // 3 s later, so it waits in the delay queues and comes back expired.
    let event = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
        "type": "pushq.notification.send",
        "data": {"to": {"user": "ines"}, "payload": "late", "ttl": 2}});
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-pushq-not-before"),
        AMQPValue::LongLongInt(epoch_ms() + 3_000),
    );
    app.publish_raw(
        "pushq.notification.send",
        structured_properties().with_headers(headers),
        event.to_string().as_bytes(),
    )
    .await;
    let got = results.next(1).await;
    assert_eq!(got[0].event_type, "pushq.delivery.expired", "{got:#?}");
    assert_eq!(got[0].data.reason, Some(ResultReason::Expired));
    assert!(app.fake.received_by(&device).is_empty());
    results.close().await;
    app.stop().await;
}
