//! A subscription's health counts only its own failures: a VAPID
//! misconfiguration, a malformed notification or a push service's outage
//! never deletes subscriptions, however often it repeats.

use pushq_fake_push::Reply;
use pushq_producer::{NotificationSend, Target};
use pushq_schemas::ResultReason;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_faults_and_outages_never_delete_a_subscription() {
    let app = TestApp::spawn_with(&[("PUSHQ_MAX_CONSECUTIVE_FAILURES", "2")]).await;
    let mut results = app.watch_results().await;
    // 503, 408 and 421 run through the retry schedule (50,50 in tests) to
    // exhaustion; 405 and 407 are unexpected but no sign of the subscription.
    let retried = [503, 408, 421];
    let statuses = [401, 403, 400, 413, 405, 407, 503, 408, 421];
    for status in statuses {
        let device = app.browser();
        app.fake.answer_always(&device, Reply::status(status));
        app.register(&device, "vera", &[]).await;
    }
    let sends = 3;
    for n in 0..sends {
        app.producer
            .send(&NotificationSend::new(
                Target::User("vera".into()),
                Some(json!(n)),
            ))
            .await
            .expect("published");
        // Each fails once, the retried ones after two retries each.
        let got = results.next(statuses.len() + 2 * retried.len()).await;
        let failed: Vec<_> = got
            .iter()
            .filter(|r| r.event_type == "pushq.delivery.failed")
            .filter_map(|r| r.data.reason)
            .collect();
        assert_eq!(failed.len(), statuses.len(), "{got:#?}");
        assert!(failed.contains(&ResultReason::RetriesExhausted), "{got:#?}");
    }
    assert_eq!(
        app.subscription_count().await,
        statuses.len() as i64,
        "every subscription is kept though each failed {sends} times in a row"
    );
    let failures: Vec<i32> = sqlx::query_scalar("SELECT consecutive_failures FROM subscriptions")
        .fetch_all(&app.pool)
        .await
        .expect("health");
    assert!(failures.iter().all(|f| *f == 0), "{failures:?}");

    let metrics = app.get("/metrics").await.1;
    let origin = app.fake.host_entry();
    for reason in [
        "unauthorized",
        "forbidden",
        "bad_request",
        "payload_too_large",
    ] {
        let series = format!(
            r#"pushq_sender_faults_total{{reason="{reason}",push_service="{origin}"}} {sends}"#
        );
        assert!(
            metrics.contains(&series),
            "{series} missing from:\n{metrics}"
        );
    }
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_no_longer_a_push_service_is_dropped_at_the_threshold() {
    let app = TestApp::spawn_with(&[("PUSHQ_MAX_CONSECUTIVE_FAILURES", "2")]).await;
    let mut results = app.watch_results().await;
    let moved = app.browser();
    app.register(&moved, "sybil", &[]).await;
    app.fake.answer_always(&moved, Reply::status(301));
    for n in 0..2 {
        assert_eq!(
            app.subscription_count().await,
            1,
            "kept below the threshold"
        );
        app.producer
            .send(&NotificationSend::new(
                Target::User("sybil".into()),
                Some(json!(n)),
            ))
            .await
            .expect("published");
        let got = results.next(1).await;
        assert_eq!(got[0].data.reason, Some(ResultReason::UnexpectedStatus));
    }
    app.wait_until("the subscription is deleted at the threshold", || async {
        app.subscription_count().await == 0
    })
    .await;
    results.close().await;
    app.stop().await;
}
