//! Repeats, the one thing a fault-free scenario must never show: arrivals at
//! a subscription already reached, and messages left behind for the next
//! worker to handle again.

use pushq_schemas::Topology;

use crate::report::Report;
use crate::scenarios::AMQP_URL;
use crate::sink::Arrival;

/// Messages waiting in the worker's queues (jobs, due, subscriptions,
/// feedback) once it has exited.
pub async fn messages_left(topology: &Topology) -> anyhow::Result<u32> {
    let connection = pushq_worker::broker::connect(AMQP_URL, "pushq-bench-check").await?;
    let channel = connection.create_channel().await?;
    let mut left = 0;
    for queue in [
        topology.jobs_queue(),
        topology.due_queue(),
        topology.subscriptions_queue(),
        topology.feedback_queue(),
    ] {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await?;
        left += declared.message_count();
    }
    let _ = connection.close(200, "checked".into()).await;
    if left > 0 {
        eprintln!(
            "LEFT IN THE QUEUES: {left} messages after the worker exited, although every subscription was reached: their acks were lost at its exit"
        );
    }
    Ok(left)
}

/// No scenario injects a fault, and at-least-once allows a repeat after a
/// failure, never without one: any repeated arrival fails the run, and so
/// does a message left in the queues after every subscription was reached
/// (its ack was lost at the worker's exit: the next worker would send it again).
pub fn failure(reports: &[Report]) -> Option<String> {
    let repeated: Vec<String> = reports
        .iter()
        .filter(|r| r.repeated > 0 || r.left_in_queues > 0)
        .map(|r| match (r.repeated, r.left_in_queues) {
            (repeated, 0) => format!("{} ({repeated} repeated)", r.scenario),
            (repeated, left) => format!(
                "{} ({repeated} repeated, {left} messages left in the queues after the worker exited)",
                r.scenario
            ),
        })
        .collect();
    (!repeated.is_empty()).then(|| {
        format!(
            "a subscription was reached more than once in a fault-free scenario: {}; the REPEATED ARRIVALS lines and the worker's log above tell why",
            repeated.join(", ")
        )
    })
}

/// What tells a repeat's cause apart: the same salt is one request sent
/// twice on the wire (HTTP), a different one a second attempt by the
/// worker (which the deliveries table should then show); the gap and the
/// connection say when and how.
pub async fn report(pool: &sqlx::PgPool, name: &str, arrivals: &[Arrival], repeated: usize) {
    let mut first: std::collections::HashMap<u32, Arrival> = std::collections::HashMap::new();
    let mut repeats = Vec::new();
    for arrival in arrivals {
        match first.get(&arrival.n) {
            None => {
                first.insert(arrival.n, *arrival);
            }
            Some(earlier) => repeats.push((*earlier, *arrival)),
        }
    }
    let same_body = repeats.iter().filter(|(a, b)| a.salt == b.salt).count();
    let same_connection = repeats
        .iter()
        .filter(|(a, b)| a.peer_port == b.peer_port)
        .count();
    let subscriptions: std::collections::HashSet<u32> = repeats.iter().map(|(a, _)| a.n).collect();
    eprintln!(
        "{name}: REPEATED ARRIVALS: {repeated} arrivals reached a subscription already reached \
         ({} subscriptions; {same_body} with the very same encrypted body, i.e. one request sent \
         twice on the wire, {} newly encrypted, i.e. sent again by the worker; {same_connection} \
         on the connection of the first)",
        subscriptions.len(),
        repeats.len() - same_body,
    );
    for (earlier, later) in repeats.iter().take(10) {
        eprintln!(
            "  subscription {}: again {:.1} ms after the first, {}, {}",
            earlier.n,
            later.at.duration_since(earlier.at).as_secs_f64() * 1000.0,
            if earlier.salt == later.salt {
                "same body"
            } else {
                "newly encrypted"
            },
            if earlier.peer_port == later.peer_port {
                "same connection".to_owned()
            } else {
                format!(
                    "connections :{} then :{}",
                    earlier.peer_port, later.peer_port
                )
            },
        );
    }
    let attempts: Result<Vec<(String, i32, i64)>, _> = sqlx::query_as(
        "SELECT status, attempts, count(*) FROM deliveries GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await;
    match attempts {
        Ok(rows) => eprintln!(
            "  deliveries by status and attempts: {}",
            rows.iter()
                .map(|(status, attempts, n)| format!("{status}/{attempts}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(err) => eprintln!("  could not read the deliveries table: {err}"),
    }
}

/// How many subscriptions these arrivals reached.
pub fn distinct(arrivals: &[Arrival]) -> usize {
    arrivals
        .iter()
        .map(|a| a.n)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn report(scenario: &str, repeated: usize) -> Report {
        Report {
            scenario: scenario.into(),
            count: 10,
            delivered: 10,
            seconds: 1.0,
            per_second: 10.0,
            p50_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
            worker_cpu_us_per_msg: 0.0,
            peak_rss_mb: 0.0,
            crypto_floor_us: 0.0,
            machine: String::new(),
            machine_per_msg: Default::default(),
            date: String::new(),
            repeated,
            left_in_queues: 0,
        }
    }

    #[test]
    fn a_repeated_arrival_in_any_scenario_fails_the_run() {
        assert_eq!(
            failure(&[report("unicast-inline", 0), report("broadcast", 0)]),
            None
        );
        let failure = failure(&[report("unicast-inline", 0), report("broadcast", 95)])
            .expect("a repeat fails the run");
        assert!(failure.contains("broadcast (95 repeated)"), "{failure}");
        assert!(!failure.contains("unicast-inline"), "{failure}");
    }

    #[test]
    fn a_message_left_in_the_queues_fails_the_run() {
        let mut left = report("unicast-stored", 0);
        left.left_in_queues = 3;
        let failure = failure(&[left]).expect("a lost ack fails the run");
        assert!(failure.contains("3 messages left"), "{failure}");
    }

    #[test]
    fn repeats_are_not_in_the_json() {
        let json = serde_json::to_value(report("broadcast", 3)).expect("serializes");
        assert!(json.get("repeated").is_none());
    }
}
