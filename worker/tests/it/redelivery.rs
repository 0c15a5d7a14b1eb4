//! What a message keeps when it comes back: a hand-over through the delay
//! queues or the broker's redelivery never restarts its TTL clock, never
//! loses a dead letter, and never loops.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use pushq_schemas::ResultReason;
use serde_json::json;

use crate::helpers::{TestApp, WAIT, new_id, structured_properties};

/// Waits for the one dead letter and checks its kind and what its reason says.
async fn one_dead_letter(app: &TestApp, kind: &str, says: &str) {
    let letters = app.dead_letters(1).await;
    assert_eq!(letters[0].kind, kind, "{}", letters[0].error);
    assert!(letters[0].error.contains(says), "{}", letters[0].error);
}

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
    // Passed on by the default exchange, as the worker passes its own on.
    app.publish_to(
        "",
        &app.topology.due_queue(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_types_and_delay_headers_through_the_producer_exchange_are_not_trusted() {
    let app = TestApp::spawn().await;
    let device = app.browser();
    app.register(&device, "jack", &[]).await;
    let subscription: uuid::Uuid = sqlx::query_scalar("SELECT id FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    let carried = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
        "type": "pushq.notification.send",
        "data": {"to": {"user": "jack"}, "payload": "forged", "ttl": 60}});
    let forged = json!({"specversion": "1.0", "id": new_id(), "source": "/attacker",
        "type": "pushq.internal.retry",
        "data": {"event": carried, "subscriptions": [subscription],
                 "first_received": "2026-12-01T00:00:00Z"}});
    app.publish_raw(
        "pushq.notification.send",
        structured_properties(),
        forged.to_string().as_bytes(),
    )
    .await;
    // A producer's own delay header is not ours either: sent at once.
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-pushq-not-before"),
        AMQPValue::LongLongInt(epoch_ms() + 30_000),
    );
    let now = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
        "type": "pushq.notification.send", "data": {"to": {"user": "jack"}, "payload": "now"}});
    app.publish_raw(
        "pushq.notification.send",
        structured_properties().with_headers(headers),
        now.to_string().as_bytes(),
    )
    .await;

    one_dead_letter(&app, "unknown_type", "worker's own route").await;
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("sent at once");
    assert_eq!(received[0].text(), "now");
    assert!(
        app.fake
            .wait_for_received(2, std::time::Duration::from_millis(500))
            .await
            .is_err(),
        "the forged retry was delivered"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_delivery_whose_dead_letter_went_missing_gets_it_on_redelivery() {
    let app = TestApp::spawn().await;
    let mut results = app.watch_results().await;
    let device = app.browser();
    app.register(&device, "kate", &[]).await;
    let id = new_id();
    // A crash (or a dead letter that could not be published) after its
    // retries ran out: recorded exhausted, nothing published yet.
    sqlx::query(
        "INSERT INTO deliveries (event_source, event_id, subscription_id, status, attempts, reason)
         SELECT '/tests', $1, id, 'exhausted', 3, 'retries_exhausted' FROM subscriptions",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .expect("recorded");
    let event = json!({"specversion": "1.0", "id": id, "source": "/tests",
        "type": "pushq.notification.send", "data": {"to": {"user": "kate"}, "payload": "x"}});
    app.publish_raw(
        "pushq.notification.send",
        structured_properties(),
        event.to_string().as_bytes(),
    )
    .await;
    let got = results.next(1).await;
    assert_eq!(got[0].data.reason, Some(ResultReason::RetriesExhausted));
    one_dead_letter(&app, "retries_exhausted", "").await;
    assert!(app.fake.received_by(&device).is_empty(), "not sent again");
    results.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_dead_letters_at_its_delivery_limit_is_replayed_to_the_queue_it_died_in()
 {
    let mut app = TestApp::spawn().await;
    // No worker: the test is the consumer that keeps handing it back.
    app.stop_worker().await;
    let event = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
        "type": "pushq.notification.send", "data": {"to": {"user": "liam"}, "payload": "x"}});
    let body = event.to_string().into_bytes();
    app.publish_raw("pushq.notification.send", structured_properties(), &body)
        .await;
    let channel = app.raw.clone();
    let mut consumer = channel
        .basic_consume(
            app.topology.jobs_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let limit = pushq_worker::broker::topology::DELIVERY_LIMIT;
    for _ in 0..=limit {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("handed back to the queue")
            .expect("open")
            .expect("delivery");
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .expect("nack");
    }
    channel
        .basic_cancel(consumer.tag(), Default::default())
        .await
        .expect("cancel");
    let deadline = std::time::Instant::now() + WAIT;
    let list = loop {
        let list = pushq_worker::dead::list(crate::helpers::AMQP_URL, &app.topology, 10)
            .await
            .expect("list");
        if list.in_queue == 1 || std::time::Instant::now() > deadline {
            break list;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(list.in_queue, 1, "{list:?}");
    assert!(list.by_kind.contains_key("delivery_limit"), "{list:?}");
    let report = pushq_worker::dead::replay(
        crate::helpers::AMQP_URL,
        &app.topology,
        Some("delivery_limit"),
        usize::MAX,
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed, 1, "{report:?}");
    let queue = channel
        .queue_declare(
            app.topology.jobs_queue().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("jobs queue");
    assert_eq!(queue.message_count(), 1, "back in the queue it died in");
    app.clean_up().await;
}

/// Messages in the delay queues and the due queue, waiting to come back.
async fn waiting_in_delay_queues(app: &TestApp) -> u32 {
    let mut waiting = 0;
    let queues = pushq_schemas::delays::DELAY_QUEUE_MS
        .iter()
        .map(|ms| app.topology.delay_queue(*ms))
        .chain([app.topology.due_queue()]);
    for queue in queues {
        let declared = app
            .raw
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("a delay queue");
        waiting += declared.message_count();
    }
    waiting
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_database_outage_messages_wait_in_the_delay_queues_not_in_requeue_loops() {
    let database = crate::proxy::TcpProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let url = format!("postgres://postgres@{}/{{database}}", database.addr);
    let app = TestApp::spawn_with(&[("PUSHQ_DATABASE_URL", &url)]).await;
    let device = app.browser();
    app.register(&device, "mona", &[]).await;
    database.cut();
    let count = 64;
    for n in 0..count {
        let send = pushq_producer::NotificationSend::new(
            pushq_producer::Target::User("mona".into()),
            Some(json!(n)),
        );
        app.producer.send(&send).await.expect("published");
    }
    // Each message that found the database down waits out its pause in the
    // delay queues, acked, so the broker never counts a redelivery of it.
    let deadline = std::time::Instant::now() + 2 * WAIT;
    loop {
        let waiting = waiting_in_delay_queues(&app).await;
        if waiting >= count / 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {waiting} of {count} messages went to the delay queues"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    database.restore().await;
    let received = app
        .fake
        .wait_for_received(count as usize, 2 * WAIT)
        .await
        .expect("every notification delivered once the database is back");
    assert_eq!(received.len(), count as usize, "none twice");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_dead_lettered_and_its_batch_mates_go_on() {
    let app = TestApp::spawn().await;
    let device = app.browser();
    app.register(&device, "nina", &[]).await;
    // Whatever the bounds let through, a database may still refuse one
    // message's data (here an operator's constraint): the batched claim
    // fails for every message in it.
    sqlx::query("ALTER TABLE deliveries ADD CONSTRAINT no_poison CHECK (event_id <> 'poison')")
        .execute(&app.pool)
        .await
        .expect("constraint");
    let count = 20;
    for n in 0..count {
        let id = if n == count / 2 {
            "poison".to_owned()
        } else {
            new_id()
        };
        let event = json!({"specversion": "1.0", "id": id, "source": "/tests",
            "type": "pushq.notification.send", "data": {"to": {"user": "nina"}, "payload": n}});
        app.publish_raw(
            "pushq.notification.send",
            structured_properties(),
            event.to_string().as_bytes(),
        )
        .await;
    }
    one_dead_letter(&app, "invalid_data", "SQLSTATE 23514").await;
    let received = app
        .fake
        .wait_for_received(count - 1, WAIT)
        .await
        .expect("the batch-mates delivered");
    assert_eq!(received.len(), count - 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_the_database_refuses_is_dead_lettered_and_the_others_are_stored() {
    let app = TestApp::spawn().await;
    sqlx::query("ALTER TABLE subscriptions ADD CONSTRAINT no_poison CHECK (user_id <> 'poison')")
        .execute(&app.pool)
        .await
        .expect("constraint");
    let devices: Vec<_> = (0..5).map(|_| app.browser()).collect();
    for (n, device) in devices.iter().enumerate() {
        let user = if n == 2 { "poison" } else { "oscar" };
        let event = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
            "type": "pushq.subscription.register",
            "data": {"user": user, "subscription": device.to_json()}});
        app.publish_raw(
            "pushq.subscription.register",
            structured_properties(),
            event.to_string().as_bytes(),
        )
        .await;
    }
    one_dead_letter(&app, "invalid_data", "SQLSTATE 23514").await;
    app.wait_until("the other four are stored", || async {
        app.subscription_count().await == 4
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_letter_the_broker_dead_lettered_is_replayed_as_a_producers_message() {
    let mut app = TestApp::spawn().await;
    let device = app.browser();
    app.register(&device, "pete", &[]).await;
    let subscription: uuid::Uuid = sqlx::query_scalar("SELECT id FROM subscriptions")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    app.stop_worker().await;
    // A producer forges our dead-letter headers and an x-death naming the
    // due queue, then has the broker dead-letter the message by expiring.
    let carried = json!({"specversion": "1.0", "id": new_id(), "source": "/tests",
        "type": "pushq.notification.send",
        "data": {"to": {"user": "nobody"}, "payload": "forged", "ttl": 600}});
    let forged = json!({"specversion": "1.0", "id": new_id(), "source": "/attacker",
        "type": "pushq.internal.retry",
        "data": {"event": carried, "subscriptions": [subscription],
                 "first_received": chrono::Utc::now()}});
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-pushq-exchange", String::new()),
        ("x-pushq-routing-key", app.topology.due_queue()),
        ("x-pushq-error-kind", "retries_exhausted".to_owned()),
    ] {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    app.publish_raw(
        "pushq.notification.send",
        structured_properties()
            .with_headers(headers)
            .with_expiration("1".into()),
        forged.to_string().as_bytes(),
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while pushq_worker::dead::list(crate::helpers::AMQP_URL, &app.topology, 1)
        .await
        .expect("list")
        .in_queue
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let report =
        pushq_worker::dead::replay(crate::helpers::AMQP_URL, &app.topology, None, usize::MAX)
            .await
            .expect("replay");
    assert_eq!(report.replayed, 1, "{report:?}");
    let mut replica = app.spawn_replica().await;
    one_dead_letter(&app, "unknown_type", "worker's own route").await;
    assert!(
        app.fake.received_by(&device).is_empty(),
        "the forged retry was delivered"
    );
    assert!(replica.terminate().await.success());
    app.clean_up().await;
}
