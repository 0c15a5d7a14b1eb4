//! A claim follows the work: it lasts while its replica is alive, however
//! long a fan-out runs, so the same event handled twice at once reaches each
//! device exactly once.

use std::time::Duration;

use pushq_fake_push::{BrowserSubscription, Reply};
use pushq_producer::{CloudEvent, NotificationSend, Target};
use serde_json::json;

use crate::helpers::{TestApp, WAIT};

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
