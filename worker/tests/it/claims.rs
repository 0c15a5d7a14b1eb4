//! A claim follows the work: it lasts while its replica is alive, however
//! long a fan-out runs, so the same event handled twice at once reaches each
//! device exactly once.

use std::time::Duration;

use pushq_fake_push::{BrowserSubscription, Reply};
use pushq_producer::{CloudEvent, NotificationSend, Target};
use pushq_worker::store::deliveries::{self, DeliveryStatus, Health, Key};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_sending_the_same_event_id_each_reach_the_device() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let device = app.browser();
    app.register(&device, "olga", &[]).await;
    for (source, text) in [("/orders", "your order"), ("/billing", "your invoice")] {
        let send = NotificationSend::new(Target::User("olga".into()), Some(json!(text)));
        let mut event = CloudEvent::new(
            "pushq.notification.send",
            source,
            serde_json::to_value(&send).expect("json"),
        );
        event.id = "order-1".into();
        app.producer.publish(event).await.expect("published");
    }
    let received = app
        .fake
        .wait_for_received(2, WAIT)
        .await
        .expect("both events delivered");
    let mut texts: Vec<String> = received.iter().map(|push| push.text()).collect();
    texts.sort();
    assert_eq!(texts, ["your invoice", "your order"]);
    let got = results.next(2).await;
    let mut sources: Vec<&str> = got
        .iter()
        .map(|r| r.data.notification_source.as_str())
        .collect();
    sources.sort_unstable();
    assert_eq!(sources, ["/billing", "/orders"]);
    assert!(got.iter().all(|r| r.data.notification == "order-1"));
    assert_ne!(got[0].id, got[1].id, "each result has its own id");
    results.close().await;
    app.stop().await;
}

/// Two replicas claiming and recording the same deliveries, and updating
/// the same subscriptions' health, in opposite orders at the same time: the
/// batched statements take their row locks in one order, so neither waits
/// for the other in a cycle (PostgreSQL would abort one with a deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_statements_of_two_replicas_never_deadlock() {
    let app = TestApp::spawn().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for replica in [a, b] {
        sqlx::query("INSERT INTO workers (id, name) VALUES ($1, 'test')")
            .bind(replica)
            .execute(&app.pool)
            .await
            .expect("replica");
    }
    let subscriptions: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO subscriptions (id, user_id, endpoint, p256dh, auth)
         SELECT gen_random_uuid(), 'crowd', 'https://push.example/' || n, 'k', 'a'
         FROM generate_series(1, 300) AS n RETURNING id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("subscriptions");
    for round in 0..10 {
        // Both claim one event's deliveries (one gets each row), then each
        // records another event's deliveries to the same subscriptions.
        let shared: Vec<(Key, bool)> = subscriptions
            .iter()
            .map(|id| (key("shared", round, *id), false))
            .collect();
        let mut reversed = shared.clone();
        reversed.reverse();
        let (first, second) = tokio::join!(
            deliveries::claim_many(&app.pool, &shared, a),
            deliveries::claim_many(&app.pool, &reversed, b),
        );
        first.expect("claims of replica a");
        second.expect("claims of replica b");

        let mut own = Vec::new();
        for (replica, name) in [(a, "a"), (b, "b")] {
            let keys: Vec<(Key, bool)> = subscriptions
                .iter()
                .map(|id| (key(name, round, *id), false))
                .collect();
            deliveries::claim_many(&app.pool, &keys, replica)
                .await
                .expect("own claims");
            let outcomes: Vec<deliveries::Outcome> = keys
                .into_iter()
                .map(|(key, _)| deliveries::Outcome {
                    key,
                    status: DeliveryStatus::Delivered,
                    http_status: Some(201),
                    reason: None,
                    health: Health::Success,
                    attempt_counts: true,
                })
                .collect();
            own.push(outcomes);
        }
        own[1].reverse();
        // Every round writes the health rows again.
        sqlx::query("UPDATE subscriptions SET last_success_at = NULL")
            .execute(&app.pool)
            .await
            .expect("reset");
        let (first, second) = tokio::join!(
            deliveries::record_many(&app.pool, &own[0], a),
            deliveries::record_many(&app.pool, &own[1], b),
        );
        assert_eq!(first.expect("records of replica a").recorded.len(), 300);
        assert_eq!(second.expect("records of replica b").recorded.len(), 300);
    }
    app.stop().await;
}

fn key(event: &str, round: usize, subscription_id: Uuid) -> Key {
    Key {
        event_source: "/tests".into(),
        event_id: format!("{event}-{round}"),
        subscription_id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_during_a_long_fan_out_reaches_each_device_once() {
    let _alone = crate::helpers::heavy().await;
    // Four requests at a time to one push service answering in a second:
    // the fan-out to 24 devices takes about six seconds.
    let mut app = TestApp::spawn_process(&[("PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN", "4")]).await;
    let mut replica = app.spawn_replica().await;
    let devices: Vec<BrowserSubscription> = (0..24).map(|_| app.browser()).collect();
    for device in &devices {
        app.register(device, "crowd", &[]).await;
        app.fake
            .answer_always(device, Reply::created().after(Duration::from_secs(1)));
    }
    let send = NotificationSend::new(Target::User("crowd".into()), Some(json!("once each")));
    let event = CloudEvent::new(
        "pushq.notification.send",
        "/tests",
        serde_json::to_value(&send).expect("json"),
    );
    // A producer's retry: the same event again while the first is under way.
    app.producer
        .publish(event.clone())
        .await
        .expect("published");
    app.fake
        .wait_for_requests(1, WAIT)
        .await
        .expect("the fan-out started");
    app.producer.publish(event).await.expect("published again");

    app.fake
        .wait_for_received(devices.len(), WAIT)
        .await
        .expect("every device reached");
    app.wait_until("every delivery is recorded", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            .fetch_one(&app.pool)
            .await
            .is_ok_and(|delivered| delivered == 24)
    })
    .await;
    // The copy that found the deliveries held looks again every second; by
    // now it finds them final, so nothing more goes out.
    assert!(
        app.fake
            .wait_for_requests(devices.len() + 1, Duration::from_secs(3))
            .await
            .is_err(),
        "a device was sent to twice"
    );
    for device in &devices {
        assert_eq!(app.fake.received_by(device).len(), 1);
    }
    assert!(replica.terminate().await.success());
    assert!(app.process_mut().terminate().await.success());
    app.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_fan_out_leaves_only_its_requests_in_flight_to_send_again() {
    let _alone = crate::helpers::heavy().await;
    let in_flight = 4;
    let mut app = TestApp::spawn_process(&[
        ("PUSHQ_MAX_IN_FLIGHT_PER_ORIGIN", "4"),
        ("PUSHQ_FANOUT_CHUNK", "60"),
    ])
    .await;
    let devices: Vec<BrowserSubscription> = (0..120).map(|_| app.browser()).collect();
    for device in &devices {
        let subscription = serde_json::from_value(device.to_json()).expect("a subscription");
        app.producer
            .register(&pushq_producer::SubscriptionRegister {
                user: "many".into(),
                subscription,
                tags: vec![],
            })
            .await
            .expect("registered");
        app.fake
            .answer_always(device, Reply::created().after(Duration::from_millis(100)));
    }
    app.wait_until("every device is registered", || async {
        app.subscription_count().await == devices.len() as i64
    })
    .await;
    let send = NotificationSend::new(Target::User("many".into()), Some(json!("fan-out")));
    app.producer.send(&send).await.expect("published");
    app.fake
        .wait_for_received(devices.len() * 3 / 10, WAIT)
        .await
        .expect("the fan-out is under way");
    // The only replica dies mid fan-out; the next one takes its work over.
    assert!(!app.process_mut().stop_with("KILL").await.success());
    let mut replica = app.spawn_replica().await;
    app.fake
        .wait_for_received(devices.len(), WAIT)
        .await
        .expect("every device reached");
    let twice = devices
        .iter()
        .filter(|device| app.fake.received_by(device).len() > 1)
        .count();
    eprintln!(
        "a replica killed mid fan-out: {twice} of {} devices got a second copy",
        devices.len()
    );
    // Only what the killed replica had in flight (and answered but not yet
    // recorded) may go out again: not the whole of its chunk.
    assert!(
        twice <= 2 * in_flight,
        "{twice} devices got a second copy; at most {} were in flight",
        in_flight
    );
    assert!(replica.terminate().await.success());
    app.clean_up().await;
}
