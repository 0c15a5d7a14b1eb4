//! The push service verifies VAPID; a subscription bound to another
//! application server key is refused, and the worker records the failure.

use pushq_producer::{NotificationSend, Target};
use pushq_worker::push::VapidPrivateKey;
use serde_json::json;

use crate::helpers::{TestApp, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_vapid_key_is_refused_and_recorded_as_failed() {
    let app = TestApp::spawn().await;
    let other_server = VapidPrivateKey::generate();
    let foreign = app
        .fake
        .subscribe_with_key(&other_server.public_key_base64url());
    let ours = app.browser();
    app.register(&foreign, "ivan", &[]).await;
    app.register(&ours, "ivan", &[]).await;

    app.producer
        .send(&NotificationSend::new(
            Target::User("ivan".into()),
            Some(json!("hi")),
        ))
        .await
        .expect("published");
    let received = app
        .fake
        .wait_for_received(1, WAIT)
        .await
        .expect("ours delivered");
    assert_eq!(received[0].subscription_id, ours.id);
    app.wait_until("the refusal is recorded", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM deliveries WHERE status = 'failed' AND last_status_code = 403",
        )
        .fetch_one(&app.pool)
        .await
        .map(|n| n == 1)
        .unwrap_or(false)
    })
    .await;
    let rejections = app.fake.rejections();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].status, 403);
    // 403 is our fault, not the subscription's: it is kept.
    let kept = app.subscription_count().await;
    assert_eq!(kept, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_subscription_is_deleted() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    app.register(&browser, "judy", &[]).await;
    app.fake.unsubscribe(&browser);
    app.producer
        .send(&NotificationSend::new(
            Target::User("judy".into()),
            Some(json!("bye")),
        ))
        .await
        .expect("published");
    app.wait_until("the gone subscription is deleted", || async {
        app.subscription_count().await == 0
    })
    .await;
    assert!(app.fake.answered().iter().any(|(_, status)| *status == 410));
    app.stop().await;
}
