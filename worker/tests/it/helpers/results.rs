//! What the worker publishes, seen from outside: a probe queue bound to the
//! results exchange.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;

use super::{AMQP_URL, TestApp, WAIT};

/// A queue bound to every result event of one topology.
pub struct ResultsProbe {
    channel: Channel,
    consumer: lapin::Consumer,
}

#[derive(Debug, Clone)]
pub struct ResultEvent {
    pub id: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub traceparent: Option<String>,
    pub data: pushq_schemas::DeliveryResult,
}

impl TestApp {
    /// Starts collecting result events; call before publishing what causes them.
    pub async fn watch_results(&self) -> ResultsProbe {
        let channel = self.raw_connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                lapin::options::QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("probe queue");
        channel
            .queue_bind(
                queue.name().clone(),
                self.topology.results_exchange().into(),
                "#".into(),
                Default::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind probe");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume probe");
        ResultsProbe { channel, consumer }
    }

    /// Closes this replica's broker connection from the broker's side, as a
    /// network cut or a broker failover would.
    pub async fn cut_worker_connection(&self) {
        let closed = self.close_worker_connections(&self.connection_name).await;
        assert_eq!(closed, 1, "the worker's connection is listed");
    }

    /// Closes, from the broker's side, every connection of every worker
    /// replica of this test (named `<prefix>-worker-…`), leaving other tests'
    /// connections alone. Returns how many were closed.
    pub async fn close_all_worker_connections(&self) -> usize {
        let prefix = format!("{}-worker-", self.topology.prefix());
        self.close_worker_connections(&prefix).await
    }

    async fn close_worker_connections(&self, name_part: &str) -> usize {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "--quiet",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs");
        let listing = String::from_utf8_lossy(&output.stdout);
        let pids: Vec<String> = listing
            .lines()
            .filter(|line| line.contains(name_part))
            .filter_map(|line| line.split('\t').next())
            .map(str::to_owned)
            .collect();
        for pid in &pids {
            let closed = tokio::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "test cuts the worker off"])
                .output()
                .await
                .expect("rabbitmqctl runs");
            assert!(
                closed.status.success(),
                "{}",
                String::from_utf8_lossy(&closed.stderr)
            );
        }
        pids.len()
    }
}

impl TestApp {
    /// What `pushq-worker dead list` shows, without removing anything.
    pub async fn dead_letters_peek(&self) -> pushq_worker::dead::DeadLetterList {
        pushq_worker::dead::list(AMQP_URL, &self.topology, 1000)
            .await
            .expect("dead list")
    }
}

impl ResultsProbe {
    /// The next `count` result events, bounded by [`WAIT`].
    pub async fn next(&mut self, count: usize) -> Vec<ResultEvent> {
        let mut events = Vec::new();
        while events.len() < count {
            let delivery = tokio::time::timeout(WAIT, self.consumer.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "only {} of {count} results arrived: {events:#?}",
                        events.len()
                    )
                })
                .expect("probe open")
                .expect("delivery");
            let event = pushq_schemas::CloudEvent::from_structured(&delivery.data)
                .expect("a structured result");
            events.push(ResultEvent {
                id: event.id,
                event_type: event.event_type,
                subject: event.subject,
                traceparent: event.traceparent,
                data: serde_json::from_value(event.data.expect("data")).expect("a delivery result"),
            });
        }
        events
    }

    /// Asserts nothing more arrives within `quiet`.
    pub async fn none_within(&mut self, quiet: Duration) {
        if let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.consumer.next()).await {
            panic!(
                "unexpected result: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
    }
}
