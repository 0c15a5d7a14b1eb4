//! Notifications reach the browser decrypted, whatever the content mode and target.

use pushq_producer::{NotificationSend, PushSubscription, Target, Urgency};
use serde_json::json;

use crate::helpers::{TestApp, WAIT, binary_properties, new_id, structured_properties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_from_the_sdk_reaches_the_browser_decrypted_and_signed() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "alice", &[]).await;

    let mut send = NotificationSend::new(
        Target::User("alice".into()),
        Some(json!({"title": "Your order shipped", "body": "Arrives Tuesday", "n": [1, 2]})),
    );
    send.ttl = 3600;
    send.urgency = Urgency::High;
    send.topic = Some("order-42".into());
    app.producer.send(&send).await.expect("published");

    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    let push = &received[0];
    assert_eq!(push.subscription_id, browser.id);
    // Compact JSON with the producer's key order is what the browser sees.
    assert_eq!(
        push.text(),
        r#"{"title":"Your order shipped","body":"Arrives Tuesday","n":[1,2]}"#
    );
    assert!(push.ttl <= 3600 && push.ttl >= 3590, "ttl {}", push.ttl);
    assert_eq!(push.urgency.as_deref(), Some("high"));
    assert_eq!(push.topic.as_deref(), Some("order-42"));
    assert_eq!(push.vapid_subject, crate::helpers::SUBJECT);
    assert_eq!(push.vapid_key, app.vapid.public_key_base64url());
    assert!(
        app.fake.rejections().is_empty(),
        "{:?}",
        app.fake.rejections()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_is_read_with_either_header_prefix_and_structured_with_parameters() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "bob", &[]).await;

    for (i, prefix) in ["cloudEvents_", "cloudEvents:"].into_iter().enumerate() {
        let id = new_id();
        let properties = binary_properties(
            prefix,
            &[
                ("specversion", "1.0"),
                ("id", &id),
                ("source", "/other-language"),
                ("type", "pushq.notification.send"),
            ],
            Some("application/json"),
        );
        let body = json!({"to": {"user": "bob"}, "payload": format!("binary {i}"), "ttl": 60});
        app.publish_raw(
            "pushq.notification.send",
            properties,
            body.to_string().as_bytes(),
        )
        .await;
    }
    let structured = json!({
        "specversion": "1.0", "id": new_id(), "source": "/other-language",
        "type": "pushq.notification.send", "time": chrono::Utc::now().to_rfc3339(),
        "data": {"to": {"endpoint": browser.endpoint}, "payload": "structured"},
    });
    app.publish_raw(
        "pushq.notification.send",
        structured_properties()
            .with_content_type("application/cloudevents+json; charset=utf-8".into()),
        structured.to_string().as_bytes(),
    )
    .await;

    let received = app
        .fake
        .wait_for_received(3, WAIT)
        .await
        .expect("delivered");
    let mut texts: Vec<String> = received.iter().map(|push| push.text()).collect();
    texts.sort();
    assert_eq!(texts, ["binary 0", "binary 1", "structured"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_kind_reaches_exactly_its_subscriptions() {
    let app = TestApp::spawn().await;
    let phone = app.browser();
    let laptop = app.browser();
    let other = app.browser();
    app.register(&phone, "carol", &["news"]).await;
    app.register(&laptop, "carol", &[]).await;
    app.register(&other, "dave", &["news", "sport"]).await;
    let one_off = app.browser();

    let sends = [
        (Target::User("carol".into()), json!("to carol")),
        (Target::Tag("news".into()), json!("news")),
        (
            Target::Endpoint(laptop.endpoint.clone()),
            json!("to the laptop"),
        ),
        (
            Target::Subscription(
                serde_json::from_value::<PushSubscription>(one_off.to_json())
                    .expect("subscription"),
            ),
            json!({"one": "off"}),
        ),
    ];
    for (to, payload) in sends {
        app.producer
            .send(&NotificationSend::new(to, Some(payload)))
            .await
            .expect("published");
    }
    // Empty push: no payload at all.
    app.producer
        .send(&NotificationSend::new(Target::User("dave".into()), None))
        .await
        .expect("published");

    app.fake
        .wait_for_received(7, WAIT)
        .await
        .expect("all delivered");
    let texts = |browser| {
        let mut texts: Vec<String> = app
            .fake
            .received_by(browser)
            .iter()
            .map(|p| p.text())
            .collect();
        texts.sort();
        texts
    };
    assert_eq!(texts(&phone), ["news", "to carol"]);
    assert_eq!(texts(&laptop), ["to carol", "to the laptop"]);
    assert_eq!(texts(&other), ["", "news"]);
    assert_eq!(texts(&one_off), [r#"{"one":"off"}"#]);
    // The one-off subscription was not stored.
    let stored = app.subscription_count().await;
    assert_eq!(stored, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_not_sent_twice_and_an_unmatched_target_is_skipped() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "erin", &[]).await;

    let event = json!({
        "specversion": "1.0", "id": "fixed-id-1", "source": "/tests", "type": "pushq.notification.send",
        "data": {"to": {"user": "erin"}, "payload": "once"},
    });
    for _ in 0..2 {
        app.publish_raw(
            "pushq.notification.send",
            structured_properties(),
            event.to_string().as_bytes(),
        )
        .await;
    }
    app.producer
        .send(&NotificationSend::new(
            Target::User("nobody".into()),
            Some(json!("lost")),
        ))
        .await
        .expect("published");
    let marker = NotificationSend::new(Target::User("erin".into()), Some(json!("marker")));
    app.producer.send(&marker).await.expect("published");

    app.fake
        .wait_for_received(2, WAIT)
        .await
        .expect("delivered");
    // Both copies and the skipped event are settled before the marker, as the
    // queue is consumed in order; wait for the queue to drain anyway.
    app.wait_until("the jobs are settled", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE status = 'delivered'")
            .fetch_one(&app.pool)
            .await
            .map(|n| n == 2)
            .unwrap_or(false)
    })
    .await;
    let texts: Vec<String> = app.fake.received().iter().map(|p| p.text()).collect();
    assert_eq!(
        texts.iter().filter(|t| *t == "once").count(),
        1,
        "{texts:?}"
    );
    assert!(!texts.contains(&"lost".to_owned()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_right_after_its_registration_is_delivered() {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        let browser = app.browser();
        let subscription: PushSubscription =
            serde_json::from_value(browser.to_json()).expect("subscription");
        let user = format!("fresh-{i}");
        app.producer
            .register(&pushq_producer::SubscriptionRegister {
                user: user.clone(),
                subscription,
                tags: vec![],
            })
            .await
            .expect("registered");
        // No wait: the two events travel through different queues.
        app.producer
            .send(&NotificationSend::new(Target::User(user), Some(json!(i))))
            .await
            .expect("sent");
    }
    let received = app
        .fake
        .wait_for_received(5, WAIT)
        .await
        .expect("all delivered");
    assert_eq!(received.len(), 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_audience_is_delivered_in_chunks_once_each() {
    let app = TestApp::spawn_with(&[("PUSHQ_FANOUT_CHUNK", "10")]).await;
    let mut results = app.watch_results().await;
    let crowd: Vec<_> = (0..25).map(|_| app.browser()).collect();
    for (i, browser) in crowd.iter().enumerate() {
        app.register(browser, &format!("fan-{i}"), &["crowd"]).await;
    }
    app.producer
        .send(&NotificationSend::new(
            Target::Tag("crowd".into()),
            Some(json!("to all")),
        ))
        .await
        .expect("published");
    app.fake
        .wait_for_received(25, WAIT)
        .await
        .expect("all delivered");
    for browser in &crowd {
        assert_eq!(app.fake.received_by(browser).len(), 1);
    }
    let got = results.next(25).await;
    assert!(
        got.iter()
            .all(|r| r.event_type == "pushq.delivery.succeeded")
    );
    results
        .none_within(std::time::Duration::from_millis(300))
        .await;
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_by_endpoint_reaches_each_its_own_browser() {
    let app = TestApp::spawn().await;
    let browsers: Vec<_> = (0..20).map(|_| app.browser()).collect();
    for (i, browser) in browsers.iter().enumerate() {
        app.register(browser, &format!("burst-{i}"), &[]).await;
    }
    // Published concurrently, so the worker takes many in one batch and looks
    // their endpoints up together.
    let sends = browsers.iter().enumerate().map(|(i, browser)| {
        let send = NotificationSend::new(
            Target::Endpoint(browser.endpoint.clone()),
            Some(json!(format!("for {i}"))),
        );
        let producer = &app.producer;
        async move { producer.send(&send).await }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.expect("published");
    }
    app.fake
        .wait_for_received(20, WAIT)
        .await
        .expect("all delivered");
    for (i, browser) in browsers.iter().enumerate() {
        let texts: Vec<String> = app
            .fake
            .received_by(browser)
            .iter()
            .map(|p| p.text())
            .collect();
        assert_eq!(texts, [format!("for {i}")]);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_in_one_batch_is_delivered_once_and_both_copies_are_acked() {
    use pushq_worker::pipeline::{Pipeline, PipelineSettings};
    use pushq_worker::push::limits::{LimitSettings, Limits};
    use pushq_worker::push::{HttpSettings, PushClient, VapidSigner};
    use pushq_worker::step::{FollowUp, Outcome, Received};

    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "twin", &[]).await;
    // A pipeline of our own, so that both copies are handed to it as one batch.
    let signer = VapidSigner::new(&app.vapid, crate::helpers::SUBJECT).expect("signer");
    let push = PushClient::new(
        signer,
        app.settings.endpoint_policy.clone(),
        Limits::new(LimitSettings::default()),
        &HttpSettings::default(),
        pushq_worker::metrics::Metrics::new(),
    )
    .expect("client");
    let pipeline = Pipeline::new(
        app.pool.clone(),
        push,
        PipelineSettings {
            replica: uuid::Uuid::new_v4(),
            schedule: app.settings.retry_schedule(),
            fanout_concurrency: 8,
            fanout_chunk: 500,
            max_consecutive_failures: 10,
            source: "/tests".into(),
        },
    );
    let event = json!({
        "specversion": "1.0", "id": "twin-event", "source": "/tests", "type": "pushq.notification.send",
        "data": {"to": {"user": "twin"}, "payload": "one copy"},
    })
    .to_string();
    let properties = crate::helpers::structured_properties();
    // The step needs no broker: its outcomes list everything to publish.
    let outcomes = pipeline
        .handle_many(&[
            Received::new(&properties, event.as_bytes(), "tests"),
            Received::new(&properties, event.as_bytes(), "tests"),
        ])
        .await;
    let Outcome::Ack {
        follow_ups,
        published,
    } = &outcomes[0]
    else {
        panic!("the first copy is acked: {:?}", outcomes[0]);
    };
    let results: Vec<&str> = follow_ups
        .iter()
        .map(|follow_up| match follow_up {
            FollowUp::Result { event } => event.event_type.as_str(),
            other => panic!("only a result to publish, not {other:?}"),
        })
        .collect();
    assert_eq!(results, ["pushq.delivery.succeeded"]);
    assert_eq!(published.len(), 1);
    assert_eq!(
        outcomes[1],
        Outcome::ack(),
        "the second copy has nothing to do"
    );
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    assert_eq!(received.len(), 1);
    assert_eq!(app.fake.received_by(&browser)[0].text(), "one copy");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_in_binary_mode_is_read_like_structured_with_its_trace_context() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let producer =
        pushq_producer::Producer::connect(crate::helpers::AMQP_URL, app.topology.clone(), "/tests")
            .await
            .expect("producer connects")
            .without_endpoint_check()
            .with_content_mode(pushq_producer::ContentMode::Binary);
    let mut results = app.watch_results().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let send = NotificationSend::new(
        Target::Subscription(PushSubscription {
            endpoint: browser.endpoint.clone(),
            expiration_time: None,
            keys: pushq_producer::SubscriptionKeys {
                p256dh: browser.p256dh.clone(),
                auth: browser.auth.clone(),
            },
        }),
        Some(json!({"title": "binary"})),
    );
    let mut event = pushq_producer::CloudEvent::new(
        "pushq.notification.send",
        "/tests",
        serde_json::to_value(&send).expect("json"),
    );
    event.traceparent = Some(traceparent.into());
    producer.publish(event).await.expect("published");
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("delivered");
    assert_eq!(received[0].text(), r#"{"title":"binary"}"#);
    // No spans are exported here: the result passes the producer's context on.
    let result = results.next(1).await.remove(0);
    assert_eq!(result.traceparent.as_deref(), Some(traceparent));
    results.close().await;
    let _ = producer.close().await;
    app.stop().await;
}
