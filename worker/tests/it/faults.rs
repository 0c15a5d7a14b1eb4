//! Stopping and killing worker processes loses nothing: a signalled worker
//! finishes what it holds and exits 0; a killed one's messages go to the
//! other replica, and no delivery recorded as done is sent again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::future::try_join_all;
use pushq_fake_push::{BrowserSubscription, Reply};
use pushq_producer::NotificationSend;
use pushq_schemas::{ResultReason, ResultType};
use serde_json::json;

use crate::helpers::{TestApp, WAIT, inline};

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

/// Waits until `total` distinct notifications arrived (duplicates count
/// once). It waits on progress, not on a deadline a loaded machine can miss:
/// it fails when nothing new arrives for `stall`, or after [`AT_MOST`].
async fn wait_for_distinct(app: &TestApp, total: usize, stall: Duration) {
    let mut accepted = app.fake.watch_received();
    let deadline = tokio::time::Instant::now() + AT_MOST;
    loop {
        // Counting distinct payloads reads every arrival: only once enough arrived.
        if *accepted.borrow_and_update() >= total && copies(app).len() >= total {
            return;
        }
        let waited = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + stall),
            accepted.changed(),
        )
        .await;
        assert!(
            waited.is_ok(),
            "{} of {total} delivered; nothing new arrived for {stall:?} (or {AT_MOST:?} passed)",
            copies(app).len()
        );
    }
}

/// The longest any of these tests waits for its notifications.
const AT_MOST: Duration = Duration::from_secs(300);

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

/// What goes wrong while two replicas deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of one replica.
    Kill,
    /// The broker closes every connection of both replicas.
    CloseBrokerConnections,
    /// PostgreSQL terminates every session of the workers' database.
    TerminateDatabaseSessions,
    /// The push service refuses connections until deliveries are being retried.
    PushServiceRefuses,
}

/// Two replicas with the default settings (claims, delays), 3,000
/// notifications to 50 browsers, the fault once a tenth has arrived.
/// Everything must arrive; a delivery recorded as done when the fault struck
/// must not arrive twice. Only one sent but not yet recorded may
/// (at-least-once), and those are counted. Recovery is the longest pause in
/// arrivals after the fault: a notification held up by the fault (a claim of
/// a dead replica, a redelivery waiting) shows as a pause at the end.
async fn two_replicas_survive(fault: Fault) {
    // Two of these at once would only measure how two share the machine.
    let _alone = crate::helpers::heavy().await;
    let mut app =
        TestApp::spawn_process(&[("PUSHQ_RETRY_DELAYS_MS", "200,400,800,1600,3200,6400,12800")])
            .await;
    let mut replica = app.spawn_replica().await;
    let browsers: Vec<BrowserSubscription> = (0..50).map(|_| app.browser()).collect();
    let total = 3000;
    let ids = publish(&app, &browsers, total).await;
    app.fake
        .wait_for_received(total / 10, WAIT)
        .await
        .expect("delivery under way");
    // What was being sent when the fault struck: how long these wait is
    // how long the fault held work up.
    let sending: HashSet<String> =
        sqlx::query_scalar("SELECT event_id FROM deliveries WHERE status = 'sending'")
            .fetch_all(&app.pool)
            .await
            .expect("deliveries being sent")
            .into_iter()
            .collect();
    // Recorded before the fault: these must never be sent again. Read
    // before it strikes, not after: interrupted work comes back within a
    // second through the delay queues, and a delivery sent but not recorded
    // when the fault struck may be recorded again by then (at least once).
    let recorded: HashSet<String> =
        sqlx::query_scalar("SELECT event_id FROM deliveries WHERE status = 'delivered'")
            .fetch_all(&app.pool)
            .await
            .expect("recorded deliveries")
            .into_iter()
            .collect();
    let struck_at = std::time::Instant::now();
    match fault {
        Fault::Kill => {
            let killed = app.process_mut().stop_with("KILL").await;
            assert!(!killed.success(), "the replica was killed, not stopped");
        }
        Fault::CloseBrokerConnections => {
            let closed = app.close_all_worker_connections().await;
            assert!(
                closed >= 2,
                "both replicas' connections closed, not {closed}"
            );
        }
        Fault::TerminateDatabaseSessions => {
            let terminated: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_one(&app.pool)
            .await
            .expect("terminate sessions");
            assert!(
                terminated >= 2,
                "the replicas' sessions terminated, not {terminated}"
            );
        }
        Fault::PushServiceRefuses => {
            app.fake.refuse_connections().await;
            app.wait_until("deliveries are being retried", || async {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM deliveries WHERE status = 'retrying'",
                )
                .fetch_one(&app.pool)
                .await
                .is_ok_and(|retrying| retrying > 0)
            })
            .await;
            app.fake.accept_connections().await.expect("listens again");
        }
    }
    wait_for_distinct(&app, total, WAIT).await;
    let copies = copies(&app);
    let repeated: Vec<usize> = (0..total)
        .filter(|n| recorded.contains(&ids[*n]) && copies[n] > 1)
        .collect();
    assert!(
        repeated.is_empty(),
        "deliveries recorded before the fault were sent again: {repeated:?}"
    );
    let duplicates = copies.values().filter(|&&n| n > 1).count();
    let received = app.fake.received();
    let arrived_after = |n: usize| {
        received
            .iter()
            .filter(|push| push.text() == n.to_string())
            .map(|push| push.at.saturating_duration_since(struck_at))
            .max()
            .unwrap_or_default()
    };
    let held_up = (0..total)
        .filter(|n| sending.contains(&ids[*n]))
        .map(arrived_after)
        .max()
        .unwrap_or_default();
    let all_in = (0..total).map(arrived_after).max().unwrap_or_default();
    eprintln!(
        "{fault:?} with {total} notifications: {} being sent when it struck arrived within {held_up:.1?}, all within {all_in:.1?}; {} recorded when it struck, {duplicates} sent twice (sent, not yet recorded)",
        sending.len(),
        recorded.len()
    );
    // About 5 s is the design for a dead replica (known within 4 s, a held
    // delivery looked at again each second) and a broker blip (claims taken
    // back at once); the slack is for a loaded machine. With claims on a 60 s
    // lease these waited a minute. Work interrupted by a database or push
    // service fault is handed back to the end of the queue, so it waits for
    // the backlog: reported, not bounded here.
    if matches!(fault, Fault::Kill | Fault::CloseBrokerConnections) {
        assert!(
            held_up <= Duration::from_secs(12),
            "{fault:?}: work in flight when it struck waited {held_up:?}"
        );
    }
    assert!(replica.terminate().await.success());
    if fault == Fault::Kill {
        // The killed replica is gone already; only its database and topology remain.
        app.clean_up().await;
    } else {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_flight_loses_nothing_and_repeats_no_recorded_delivery() {
    two_replicas_survive(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_connection_closed_mid_flight_loses_nothing() {
    two_replicas_survive(Fault::CloseBrokerConnections).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_database_session_terminated_mid_flight_loses_nothing() {
    two_replicas_survive(Fault::TerminateDatabaseSessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_service_refusing_connections_mid_flight_is_retried_and_loses_nothing() {
    two_replicas_survive(Fault::PushServiceRefuses).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_service_refusing_connections_is_retried_until_it_is_back() {
    let app = TestApp::spawn_with(&[("PUSHQ_RETRY_DELAYS_MS", "200,400,800,1600,3200,6400")]).await;
    let browsers: Vec<BrowserSubscription> = (0..5).map(|_| app.browser()).collect();
    let mut results = app.watch_results().await;
    app.fake.refuse_connections().await;
    let total = 20;
    publish(&app, &browsers, total).await;
    for result in results.next(total).await {
        assert_eq!(
            result.event_type,
            ResultType::Retrying.as_str(),
            "{result:?}"
        );
        assert_eq!(result.data.reason, Some(ResultReason::ConnectionError));
    }
    app.fake.accept_connections().await.expect("listens again");
    wait_for_distinct(&app, total, WAIT).await;
    assert!(copies(&app).values().all(|&n| n == 1));
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_unfinished_at_the_grace_deadline_is_handed_back_and_the_exit_status_is_1() {
    let mut app = TestApp::spawn_process(&[("PUSHQ_SHUTDOWN_GRACE_MS", "300")]).await;
    let browsers: Vec<BrowserSubscription> = (0..5).map(|_| app.browser()).collect();
    for browser in &browsers {
        // Far slower than the grace period.
        app.fake
            .answer_always(browser, Reply::created().after(Duration::from_secs(10)));
    }
    let total = 20;
    publish(&app, &browsers, total).await;
    app.fake
        .wait_for_requests(1, WAIT)
        .await
        .expect("deliveries in flight");
    let status = app.process_mut().stop_with("TERM").await;
    assert_eq!(
        status.code(),
        Some(1),
        "the deadline passed with work unfinished"
    );
    for browser in &browsers {
        app.fake.answer_always(browser, Reply::created());
    }
    let mut replica = app.spawn_replica().await;
    wait_for_distinct(&app, total, WAIT).await;
    assert!(replica.terminate().await.success());
    app.clean_up().await;
}
