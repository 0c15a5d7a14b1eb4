//! The configured rates are the fleet's: replicas together send to a push
//! service no faster than its one configured rate, each taking its share.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pushq_producer::NotificationSend;
use serde_json::json;

use crate::helpers::{TestApp, WAIT, heavy, http_get, inline};

/// The fake push service's rate, for all replicas together.
const FLEET_PER_SECOND: f64 = 20.0;
/// What a rate of 20 per second lets through at once: a second's worth.
const FLEET_BURST: f64 = 20.0;
/// Arrivals may bunch by this much between the limiter and the fake push
/// service (scheduling, connection set-up on a loaded machine).
const ARRIVAL_JITTER: Duration = Duration::from_millis(250);
const NOTIFICATIONS: usize = 100;

/// Waits until the replica serving `addr` counts `live` replicas.
async fn wait_for_live_replicas(addr: SocketAddr, live: u32) {
    let series = format!("pushq_live_replicas {live}");
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if let Ok((200, metrics)) = http_get(addr, "/metrics").await
            && metrics.lines().any(|line| line == series)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica at {addr} never counted {live} live replicas"
        );
    }
}

/// The most arrivals in any stretch beyond what the rate allows over it:
/// max over i ≤ j of (j - i + 1) - rate × (t_j - t_i). A limiter with a
/// burst of b keeps it at or below b.
fn excess_over_rate(arrivals: &[Instant], per_second: f64) -> f64 {
    let mut worst = 0.0_f64;
    for (i, first) in arrivals.iter().enumerate() {
        for (j, last) in arrivals.iter().enumerate().skip(i) {
            let count = (j - i + 1) as f64;
            worst = worst.max(count - per_second * last.duration_since(*first).as_secs_f64());
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_together_send_no_faster_than_the_one_configured_rate() {
    let _heavy = heavy().await;
    // The fake push service is 127.0.0.1: a rule for its host, not its port.
    let app = TestApp::spawn_with(&[("PUSHQ_RATE_LIMITS", "127.0.0.1=20")]).await;
    let (mut replica, replica_addr) = app.spawn_replica_serving().await;
    wait_for_live_replicas(app.http_addr, 2).await;
    wait_for_live_replicas(replica_addr, 2).await;

    let browsers: Vec<_> = (0..NOTIFICATIONS).map(|_| app.browser()).collect();
    for (n, browser) in browsers.iter().enumerate() {
        app.producer
            .send(&NotificationSend::new(inline(browser), Some(json!(n))))
            .await
            .expect("published");
    }
    // At 20 per second the burst takes about 4 s; twice the rate, 2 s.
    let received = app
        .fake
        .wait_for_received(NOTIFICATIONS, WAIT)
        .await
        .expect("every notification arrived in time");
    let mut arrivals: Vec<Instant> = received.iter().map(|push| push.at).collect();
    arrivals.sort();
    let took = arrivals[arrivals.len() - 1].duration_since(arrivals[0]);
    let excess = excess_over_rate(&arrivals, FLEET_PER_SECOND);
    eprintln!(
        "{NOTIFICATIONS} notifications through two replicas sharing {FLEET_PER_SECOND}/s: \
         {took:?} from first to last arrival ({:.1}/s), at most {excess:.1} beyond the rate \
         in any stretch (a burst of {FLEET_BURST} is allowed)",
        (NOTIFICATIONS - 1) as f64 / took.as_secs_f64(),
    );
    let tolerance = FLEET_BURST + FLEET_PER_SECOND * ARRIVAL_JITTER.as_secs_f64();
    assert!(
        excess <= tolerance,
        "the two replicas sent {excess:.1} messages beyond {FLEET_PER_SECOND}/s in one stretch \
         (at most {tolerance} allowed): each sent at the whole rate"
    );
    let status = replica.terminate().await;
    assert!(status.success(), "the replica exited with {status}");
    app.stop().await;
}
