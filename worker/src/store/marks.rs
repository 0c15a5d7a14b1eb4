//! Which results were confirmed published, noted in batches off the
//! delivery path.

use sqlx::PgPool;

use super::deliveries::{Key, columns};

/// Notes, in batches and off the delivery path, which results were
/// confirmed. Losing a mark (a crash before the flush) only means a
/// redelivery publishes that result again, with the same id.
#[derive(Debug, Clone)]
pub struct PublishedMarks {
    sender: tokio::sync::mpsc::UnboundedSender<Key>,
}

impl PublishedMarks {
    /// Starts the flusher; it ends, after a last flush, when every handle is dropped.
    pub fn start(pool: PgPool) -> Self {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Key>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while receiver.recv_many(&mut batch, 1000).await > 0 {
                batch.sort_unstable();
                let (sources, events, ids) = columns(batch.iter());
                let marked = sqlx::query(
                    "UPDATE deliveries SET result_published = true
                     FROM unnest($1::text[], $2::text[], $3::uuid[]) AS t(source, event_id, subscription_id)
                     WHERE deliveries.event_source = t.source AND deliveries.event_id = t.event_id
                       AND deliveries.subscription_id = t.subscription_id",
                )
                .bind(&sources)
                .bind(&events)
                .bind(&ids)
                .execute(&pool)
                .await;
                drop((sources, events, ids));
                batch.clear();
                if let Err(err) = marked {
                    tracing::warn!(error = %err, "marking results published failed; a redelivery would publish them again");
                }
            }
        });
        Self { sender }
    }

    pub fn mark(&self, key: &Key) {
        let _ = self.sender.send(key.clone());
    }
}
