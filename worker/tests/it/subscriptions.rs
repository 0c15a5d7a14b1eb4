//! Registration upserts by endpoint; unregistration by endpoint or by user.

use crate::helpers::TestApp;
use pushq_producer::SubscriptionUnregister;

async fn users(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT user_id FROM subscriptions ORDER BY user_id")
        .fetch_all(&app.pool)
        .await
        .expect("users")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_upserts_by_endpoint_and_unregister_removes() {
    let app = TestApp::spawn().await;
    let shared_device = app.browser();
    let second = app.browser();
    let third = app.browser();
    app.register(&shared_device, "frank", &["a"]).await;
    // The same browser handed to another user: replaced, not duplicated.
    app.register(&shared_device, "grace", &["b"]).await;
    app.register(&second, "grace", &[]).await;
    app.register(&third, "heidi", &[]).await;
    assert_eq!(users(&app).await, ["grace", "grace", "heidi"]);
    let tags: Vec<String> =
        sqlx::query_scalar("SELECT unnest(tags) FROM subscriptions WHERE endpoint = $1")
            .bind(&shared_device.endpoint)
            .fetch_all(&app.pool)
            .await
            .expect("tags");
    assert_eq!(tags, ["b"]);

    app.producer
        .unregister(&SubscriptionUnregister::Endpoint(third.endpoint.clone()))
        .await
        .expect("published");
    app.producer
        .unregister(&SubscriptionUnregister::User("grace".into()))
        .await
        .expect("published");
    app.wait_until("both unregistrations are applied", || async {
        users(&app).await.is_empty()
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_final_delivery_records_are_pruned_and_pending_ones_kept() {
    let app = TestApp::spawn().await;
    for (event, status, age_days) in [
        ("old-final", "delivered", 8),
        ("old-pending", "retrying", 8),
        ("new-final", "delivered", 1),
    ] {
        sqlx::query(
            "INSERT INTO deliveries (event_source, event_id, subscription_id, status, attempts, created_at)
             VALUES ('/tests', $1, gen_random_uuid(), $2, 1, now() - make_interval(days => $3))",
        )
        .bind(event)
        .bind(status)
        .bind(age_days)
        .execute(&app.pool)
        .await
        .expect("insert");
    }
    let pruned = pushq_worker::store::deliveries::prune(
        &app.pool,
        std::time::Duration::from_secs(7 * 86_400),
    )
    .await
    .expect("prune");
    assert_eq!(pruned, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT event_id FROM deliveries ORDER BY event_id")
        .fetch_all(&app.pool)
        .await
        .expect("left");
    assert_eq!(left, ["new-final", "old-pending"]);
    app.stop().await;
}

/// `(tag, endpoint)` of every row of the tag index, sorted.
async fn tag_rows(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT tag, endpoint FROM subscription_tags t
         LEFT JOIN subscriptions s ON s.id = t.subscription_id ORDER BY tag, endpoint",
    )
    .fetch_all(&app.pool)
    .await
    .expect("tag rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tag_index_follows_re_registration_and_unregistration() {
    use pushq_producer::{NotificationSend, Target};
    use pushq_worker::store::subscriptions::{Audience, audience_ids, audience_page};

    let app = TestApp::spawn().await;
    let moved = app.browser();
    let gone = app.browser();
    let stays = app.browser();
    app.register(&moved, "ivan", &["news", "sport"]).await;
    app.register(&gone, "judy", &["news"]).await;
    app.register(&stays, "judy", &["sport"]).await;
    // The same browser registered again with other tags, and one unregistered.
    app.register(&moved, "ivan-again", &["sport"]).await;
    app.producer
        .unregister(&SubscriptionUnregister::Endpoint(gone.endpoint.clone()))
        .await
        .expect("published");
    app.wait_until("the unregistration is applied", || async {
        app.subscription_count().await == 2
    })
    .await;

    let mut expected = vec![
        ("sport".to_owned(), moved.endpoint.clone()),
        ("sport".to_owned(), stays.endpoint.clone()),
    ];
    expected.sort();
    assert_eq!(
        tag_rows(&app).await,
        expected,
        "no row for a dropped tag or a deleted subscription"
    );
    let news = audience_page(&app.pool, Audience::Tag("news"), None, None, 10)
        .await
        .expect("page");
    assert!(news.is_empty(), "{news:?}");
    let ids = audience_ids(&app.pool, Audience::Tag("sport"), None, 10)
        .await
        .expect("ids");
    assert_eq!(ids.len(), 2);

    for tag in ["news", "sport"] {
        app.producer
            .send(&NotificationSend::new(
                Target::Tag(tag.into()),
                Some(serde_json::json!(tag)),
            ))
            .await
            .expect("published");
    }
    app.fake
        .wait_for_received(2, crate::helpers::WAIT)
        .await
        .expect("sport delivered");
    let texts = |browser| {
        app.fake
            .received_by(browser)
            .iter()
            .map(|p| p.text())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&moved), ["sport"]);
    assert_eq!(texts(&stays), ["sport"]);
    assert!(texts(&gone).is_empty());
    app.stop().await;
}
