//! Every answer of a push service ends as its outcome: recorded, published as
//! a result event, retried through delay queues, dead-lettered when retries
//! run out, and replayable.

use std::time::{Duration, Instant};

use pushq_fake_push::Reply;
use pushq_producer::{CloudEvent, NotificationSend, Target};
use pushq_schemas::ResultReason;
use serde_json::json;

use crate::helpers::{ResultEvent, TestApp, WAIT};

fn by_type<'a>(results: &'a [ResultEvent], event_type: &str) -> Vec<&'a ResultEvent> {
    results
        .iter()
        .filter(|r| r.event_type == event_type)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_answer_is_recorded_and_published_as_its_result() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let answers: [(u16, &str, Option<ResultReason>); 9] = [
        (201, "pushq.delivery.succeeded", None),
        (202, "pushq.delivery.succeeded", None),
        (404, "pushq.subscription.gone", Some(ResultReason::Gone)),
        (410, "pushq.subscription.gone", Some(ResultReason::Gone)),
        (400, "pushq.delivery.failed", Some(ResultReason::BadRequest)),
        (
            401,
            "pushq.delivery.failed",
            Some(ResultReason::Unauthorized),
        ),
        (403, "pushq.delivery.failed", Some(ResultReason::Forbidden)),
        (
            413,
            "pushq.delivery.failed",
            Some(ResultReason::PayloadTooLarge),
        ),
        (
            302,
            "pushq.delivery.failed",
            Some(ResultReason::UnexpectedStatus),
        ),
    ];
    let mut devices = Vec::new();
    for (status, ..) in answers {
        let device = app.browser();
        app.fake
            .answer_always(&device, Reply::status(status).with_retry_after("1"));
        app.register(&device, "mallory", &[]).await;
        devices.push(device);
    }
    let event_id = app
        .producer
        .send(&NotificationSend::new(
            Target::User("mallory".into()),
            Some(json!("hi")),
        ))
        .await
        .expect("published");

    let got = results.next(answers.len()).await;
    for (status, event_type, reason) in answers {
        let matching: Vec<_> = got
            .iter()
            .filter(|r| r.data.status == Some(status))
            .collect();
        assert_eq!(matching.len(), 1, "{status}: {got:#?}");
        let result = matching[0];
        assert_eq!(result.event_type, event_type, "{status}");
        assert_eq!(result.data.reason, reason, "{status}");
        assert_eq!(result.data.notification, event_id);
        assert_eq!(result.data.attempt, 1);
        assert_eq!(result.data.user.as_deref(), Some("mallory"));
        assert_eq!(
            result.subject, result.data.subscription,
            "subject is the subscription id"
        );
        assert!(result.data.push_service.starts_with("http://127.0.0.1:"));
        assert!(
            !result.data.push_service.contains("/push/"),
            "never the full endpoint"
        );
    }
    // Not retried: every device was asked exactly once.
    assert_eq!(app.fake.answered().len(), answers.len());
    // The feedback loop deletes the two gone subscriptions, and only those.
    app.wait_until("gone subscriptions are deleted", || async {
        app.subscription_count().await == 7
    })
    .await;
    results.none_within(Duration::from_millis(300)).await;
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_only_the_failing_device_is_retried() {
    let app = TestApp::spawn_with(&[("PUSHQ_RETRY_AFTER_MAX_MS", "2000")]).await;
    let mut results = app.watch_results().await;
    let devices: Vec<_> = (0..3).map(|_| app.browser()).collect();
    for device in &devices {
        app.register(device, "niaj", &[]).await;
    }
    app.fake.script(&devices[2], [Reply::throttled(1)]);
    let sent_at = Instant::now();
    app.producer
        .send(&NotificationSend::new(
            Target::User("niaj".into()),
            Some(json!("three devices")),
        ))
        .await
        .expect("published");

    app.fake
        .wait_for_received(3, WAIT)
        .await
        .expect("all three delivered");
    let throttled = app.fake.received_by(&devices[2]);
    assert_eq!(throttled.len(), 1);
    assert!(
        throttled[0].at.duration_since(sent_at) >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    for device in &devices[..2] {
        assert_eq!(app.fake.received_by(device).len(), 1);
    }
    let answered = app.fake.answered();
    let asked = |device: &pushq_fake_push::BrowserSubscription| {
        answered.iter().filter(|(id, _)| *id == device.id).count()
    };
    assert_eq!(
        (asked(&devices[0]), asked(&devices[1]), asked(&devices[2])),
        (1, 1, 2)
    );

    let got = results.next(4).await;
    let retrying = by_type(&got, "pushq.delivery.retrying");
    assert_eq!(retrying.len(), 1);
    assert_eq!(retrying[0].data.status, Some(429));
    assert_eq!(retrying[0].data.reason, Some(ResultReason::Throttled));
    assert!(retrying[0].data.retry_in_ms.is_some_and(|ms| ms >= 1000));
    let succeeded = by_type(&got, "pushq.delivery.succeeded");
    assert_eq!(succeeded.len(), 3);
    assert!(
        succeeded
            .iter()
            .any(|r| r.data.attempt == 2 && r.subject == retrying[0].subject)
    );
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_exhausted_dead_lettered_and_replayed() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let device = app.browser();
    app.register(&device, "olivia", &[]).await;
    app.fake.answer_always(&device, Reply::status(503));
    app.producer
        .send(&NotificationSend::new(
            Target::User("olivia".into()),
            Some(json!("eventually")),
        ))
        .await
        .expect("published");

    // PUSHQ_RETRY_DELAYS_MS=50,50 in tests: three attempts.
    let got = results.next(3).await;
    let types: Vec<&str> = got.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "pushq.delivery.retrying",
            "pushq.delivery.retrying",
            "pushq.delivery.failed"
        ]
    );
    assert_eq!(got[2].data.reason, Some(ResultReason::RetriesExhausted));
    assert_eq!(got[2].data.attempt, 3);
    let letters = app.dead_letters_peek().await;
    assert_eq!(
        letters.by_kind.get("retries_exhausted").map(|k| k.count),
        Some(1),
        "{letters:?}"
    );

    // The outage ends; the operator replays.
    app.fake.answer_always(&device, Reply::created());
    let report = pushq_worker::dead::replay(
        crate::helpers::AMQP_URL,
        &app.topology,
        Some("retries_exhausted"),
        usize::MAX,
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed, 1);
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered after replay");
    assert_eq!(received[0].text(), "eventually");
    let after = results.next(1).await;
    assert_eq!(after[0].event_type, "pushq.delivery.succeeded");
    assert_eq!(
        after[0].data.attempt, 1,
        "a replay starts the attempts again"
    );
    assert_eq!(app.dead_letters_peek().await.in_queue, 0);
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_past_its_ttl_expires_and_is_not_dead_lettered() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let failing = app.browser();
    let offline = app.browser();
    app.register(&failing, "peggy", &[]).await;
    app.register(&offline, "quentin", &[]).await;
    app.fake.answer_always(&failing, Reply::status(500));

    // TTL 0: one attempt, and no retry can start within the TTL.
    let mut now_or_never = NotificationSend::new(Target::User("peggy".into()), Some(json!("now")));
    now_or_never.ttl = 0;
    app.producer.send(&now_or_never).await.expect("published");
    // Created two minutes ago with a one-minute TTL: never sent.
    let mut stale = CloudEvent::new(
        "pushq.notification.send",
        "/tests",
        serde_json::to_value(NotificationSend {
            ttl: 60,
            ..NotificationSend::new(Target::User("quentin".into()), Some(json!("stale")))
        })
        .expect("json"),
    );
    stale.time = Some(chrono::Utc::now() - chrono::Duration::seconds(120));
    app.producer.publish(stale).await.expect("published");

    let got = results.next(2).await;
    assert!(
        got.iter().all(|r| r.event_type == "pushq.delivery.expired"),
        "{got:#?}"
    );
    assert!(
        got.iter()
            .all(|r| r.data.reason == Some(ResultReason::Expired))
    );
    let tried = got
        .iter()
        .find(|r| r.data.user.as_deref() == Some("peggy"))
        .expect("peggy's");
    assert_eq!(tried.data.status, Some(500));
    let never = got
        .iter()
        .find(|r| r.data.user.as_deref() == Some("quentin"))
        .expect("quentin's");
    assert_eq!(never.data.status, None);
    assert!(app.fake.received_by(&offline).is_empty());
    assert_eq!(app.dead_letters_peek().await.in_queue, 0);
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_between_the_push_service_201_and_its_ack_sends_no_second_copy() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let device = app.browser();
    app.register(&device, "rupert", &[]).await;
    // The push service takes its time, so the cut lands between request and answer.
    app.fake.script(
        &device,
        [Reply::created().after(Duration::from_millis(1500))],
    );
    app.producer
        .send(&NotificationSend::new(
            Target::User("rupert".into()),
            Some(json!("exactly once")),
        ))
        .await
        .expect("published");
    app.fake
        .wait_for_requests(1, WAIT)
        .await
        .expect("the request is in flight");
    app.cut_worker_connection().await;

    // The worker records the 201, cannot ack, reconnects, gets the job again,
    // and finds the delivery done: it publishes the missing result only.
    let got = results.next(1).await;
    assert_eq!(got[0].event_type, "pushq.delivery.succeeded");
    app.wait_until("the redelivered job is settled", || async {
        sqlx::query_scalar::<_, bool>("SELECT bool_and(result_published) FROM deliveries")
            .fetch_one(&app.pool)
            .await
            .unwrap_or(false)
    })
    .await;
    results.none_within(Duration::from_millis(500)).await;
    assert_eq!(app.fake.received_by(&device).len(), 1);
    assert_eq!(
        app.fake.answered().len(),
        1,
        "the push service was asked once"
    );
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_past_its_expiration_time_is_skipped_and_swept() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    // A browser-given expirationTime in the past: never sent to, then swept.
    let expired = app.browser();
    let mut subscription = expired.to_json();
    subscription["expirationTime"] = json!(1_000);
    app.producer
        .register(&pushq_producer::SubscriptionRegister {
            user: "trent".into(),
            subscription: serde_json::from_value(subscription).expect("subscription"),
            tags: vec![],
        })
        .await
        .expect("registered");
    app.wait_until("the registration is stored", || async {
        app.subscription_count().await == 1
    })
    .await;
    app.producer
        .send(&NotificationSend::new(
            Target::User("trent".into()),
            Some(json!("late")),
        ))
        .await
        .expect("published");
    let got = results.next(1).await;
    assert_eq!(got[0].event_type, "pushq.delivery.skipped");
    assert_eq!(got[0].data.reason, Some(ResultReason::NoSubscription));
    assert_eq!(
        pushq_worker::store::subscriptions::delete_expired(&app.pool)
            .await
            .expect("sweep"),
        1
    );
    assert!(app.fake.received_by(&expired).is_empty());
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_rate_limit_defers_without_spending_attempts() {
    let app = TestApp::spawn_with(&[
        ("PUSHQ_RATE_LIMIT_DEFAULT", "2"),
        ("PUSHQ_RETRY_AFTER_MAX_MS", "2000"),
    ])
    .await;
    let mut results = app.watch_results().await;
    let devices: Vec<_> = (0..6).map(|_| app.browser()).collect();
    for device in &devices {
        app.register(device, "uma", &[]).await;
    }
    let started = Instant::now();
    app.producer
        .send(&NotificationSend::new(
            Target::User("uma".into()),
            Some(json!("paced")),
        ))
        .await
        .expect("published");
    app.fake
        .wait_for_received(6, WAIT)
        .await
        .expect("all delivered");
    // 2 per second with a burst of 2: the last two cannot arrive before 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let got = results.next(6).await;
    assert!(
        got.iter()
            .all(|r| r.event_type == "pushq.delivery.succeeded" && r.data.attempt == 1),
        "{got:#?}"
    );
    assert_eq!(app.fake.answered().len(), 6, "nothing was sent twice");
    results.close().await;
    app.stop().await;
}
