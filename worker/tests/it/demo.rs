//! The README's main command, small: every notification delivered and checked.

use std::collections::HashMap;

use pushq_worker::config::Settings;
use pushq_worker::demo::{self, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_delivers_and_verifies_every_notification() {
    let database = format!(
        "pushq_test_demo_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let vars = HashMap::from([(
        "PUSHQ_DATABASE_URL".to_owned(),
        format!("{}/{database}", crate::helpers::postgres_base()),
    )]);
    let settings = Settings::from_lookup(|name| vars.get(name).cloned()).expect("settings");
    let summary = demo::run(
        settings,
        &DemoArgs {
            count: 50,
            concurrency: 8,
        },
    )
    .await
    .expect("the demo runs");
    assert_eq!(summary.sent, 50);
    assert_eq!(summary.delivered, 50);
    assert_eq!(summary.failed, 0);
    assert!(summary.table().contains("delivered"));
    // What the demo made in the database it also removes.
    let pool = sqlx::PgPool::connect(&vars["PUSHQ_DATABASE_URL"])
        .await
        .expect("the demo's database");
    for table in ["subscriptions", "deliveries"] {
        let left: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .expect("counted");
        assert_eq!(left, 0, "the demo left rows in {table}");
    }
    pool.close().await;
    crate::helpers::drop_database(&database).await;
}
