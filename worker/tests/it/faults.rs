//! Stopping and killing worker processes loses nothing: a signalled worker
//! finishes what it holds and exits 0; a killed one's messages go to the
//! other replica, and no delivery recorded as done is sent again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::try_join_all;
use pushq_fake_push::{BrowserSubscription, Reply};
use pushq_producer::{NotificationSend, PushSubscription, SubscriptionKeys, Target};
use serde_json::json;

use crate::helpers::{TestApp, WAIT};

fn inline(browser: &BrowserSubscription) -> Target {
    Target::Subscription(PushSubscription {
        endpoint: browser.endpoint.clone(),
        expiration_time: None,
        keys: SubscriptionKeys {
            p256dh: browser.p256dh.clone(),
            auth: browser.auth.clone(),
        },
    })
}

/// Publishes `total` notifications round-robin over `browsers`, the payload
/// being each one's number. Returns the event ids by number.
async fn publish(app: &TestApp, browsers: &[BrowserSubscription], total: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(total);
    let numbers: Vec<usize> = (0..total).collect();
    for chunk in numbers.chunks(250) {
        let sends = chunk.iter().map(|&n| {
            let send = NotificationSend::new(inline(&browsers[n % browsers.len()]), Some(json!(n)));
            async move { app.producer.send(&send).await }
        });
        ids.extend(try_join_all(sends).await.expect("published"));
    }
    ids
}

/// How many times each numbered payload reached its browser.
fn copies(app: &TestApp) -> HashMap<usize, usize> {
    let mut copies = HashMap::new();
    for push in app.fake.received() {
        let n: usize = push.text().parse().expect("a numbered payload");
        *copies.entry(n).or_default() += 1;
    }
    copies
}

/// Waits until `total` distinct notifications arrived: duplicates count once.
async fn wait_for_distinct(app: &TestApp, total: usize, within: Duration) {
    let mut received = app.fake.watch_received();
    let waited = tokio::time::timeout(within, async {
        while copies(app).len() < total {
            if received.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "{} of {total} delivered within {within:?}",
        copies(app).len()
    );
}

fn in_flight_at_stop(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "stopped consuming; finishing in-flight work")
        .and_then(|line| line["in_flight"].as_u64())
        .expect("the worker logged its stop")
}

async fn a_signal_finishes_in_flight_work_and_exits_0(signal: &str) {
    let mut app = TestApp::spawn_process(&[("PUSHQ_SHUTDOWN_GRACE_MS", "15000")]).await;
    let browsers: Vec<BrowserSubscription> = (0..10).map(|_| app.browser()).collect();
    for browser in &browsers {
        // Slow enough that work is in flight when the signal lands.
        app.fake
            .answer_always(browser, Reply::created().after(Duration::from_millis(200)));
    }
    let total = 300;
    publish(&app, &browsers, total).await;
    app.fake
        .wait_for_requests(1, WAIT)
        .await
        .expect("deliveries in flight");
    let status = app.process_mut().stop_with(signal).await;
    assert!(
        status.success(),
        "SIG{signal} ends with exit 0, not {status}"
    );
    assert!(
        in_flight_at_stop(&app.process().log_lines()) > 0,
        "the signal arrived while work was in flight"
    );
    // What the stopped worker had not taken is still queued; another takes it.
    let mut replica = app.spawn_replica().await;
    wait_for_distinct(&app, total, WAIT * 2).await;
    let copies = copies(&app);
    assert_eq!(copies.len(), total, "every notification arrived");
    assert!(
        copies.values().all(|&n| n == 1),
        "a graceful stop sends nothing twice: {:?}",
        copies.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(replica.terminate().await.success());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_exits_0_and_loses_nothing() {
    a_signal_finishes_in_flight_work_and_exits_0("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_finishes_in_flight_work_exits_0_and_loses_nothing() {
    a_signal_finishes_in_flight_work_and_exits_0("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_flight_loses_nothing_and_repeats_no_recorded_delivery() {
    let mut app = TestApp::spawn_process(&[]).await;
    let mut replica = app.spawn_replica().await;
    let browsers: Vec<BrowserSubscription> = (0..50).map(|_| app.browser()).collect();
    let total = 5000;
    let ids = publish(&app, &browsers, total).await;
    app.fake
        .wait_for_received(total / 10, WAIT)
        .await
        .expect("delivery under way");
    let killed = app.process_mut().stop_with("KILL").await;
    assert!(!killed.success(), "the replica was killed, not stopped");

    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT event_id FROM deliveries WHERE status = 'delivered'")
            .fetch_all(&app.pool)
            .await
            .expect("recorded deliveries")
            .into_iter()
            .collect();
    // Deliveries the killed replica had claimed wait out their claim's lease
    // (60 s) before the survivor may send them: that bounds this wait.
    wait_for_distinct(&app, total, Duration::from_secs(120)).await;
    let copies = copies(&app);
    assert_eq!(copies.len(), total, "every notification arrived");
    let repeated: Vec<usize> = (0..total)
        .filter(|n| recorded.contains(&ids[*n]) && copies[n] > 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "deliveries recorded before the kill were sent again: {repeated:?}"
    );
    let duplicates = copies.values().filter(|&&n| n > 1).count();
    eprintln!(
        "kill -9 with {total} notifications: {} recorded at the kill, {duplicates} sent twice (in flight, unrecorded)",
        recorded.len()
    );
    assert!(replica.terminate().await.success());
    // The killed replica is gone already; only its database and topology remain.
    app.clean_up().await;
}
