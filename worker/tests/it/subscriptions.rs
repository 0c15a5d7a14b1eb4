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
