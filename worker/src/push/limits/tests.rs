//! Limits: host rules, shares of the fleet's rates, waits and slots.

use super::*;

#[test]
fn the_most_specific_host_rule_wins() {
    let limits = Limits::new(LimitSettings {
        per_host: parse_rate_limits("example.com=10, push.example.com=20, other.net=0")
            .expect("parses"),
        ..LimitSettings::default()
    });
    assert_eq!(limits.rate_for("example.com"), 10);
    assert_eq!(limits.rate_for("a.example.com"), 10);
    assert_eq!(limits.rate_for("eu.push.example.com"), 20);
    assert_eq!(limits.rate_for("notexample.com"), DEFAULT_RATE_LIMIT);
    assert_eq!(limits.rate_for("other.net"), 0);
    assert!(parse_rate_limits("example.com").is_err());
    assert!(parse_rate_limits("example.com=fast").is_err());
}

#[test]
fn each_replica_takes_its_share_and_the_fleet_never_goes_past_the_rate() {
    // (fleet per second, replicas) → (one message every, burst)
    for (per_second, replicas, every_ns, burst) in [
        (20, 1, 50_000_000, 20),
        (20, 2, 100_000_000, 10),
        (5000, 10, 2_000_000, 500),
        (1, 3, 3_000_000_000, 1),
        (5, 3, 600_000_000, 1),
        (1000, 3, 3_000_000, 333),
        (20, 0, 50_000_000, 20),
        (u32::MAX, 1, 1, u32::MAX),
    ] {
        let quota = quota_share(per_second, replicas).expect("a limited rate");
        let case = format!("{per_second}/s shared by {replicas}");
        assert_eq!(quota.replenish_interval().as_nanos(), every_ns, "{case}");
        assert_eq!(quota.burst_size().get(), burst, "{case}");
        // The replicas together, sustained: never more than the rate.
        let fleet_per_second =
            1e9 * f64::from(replicas.max(1)) / quota.replenish_interval().as_nanos() as f64;
        assert!(fleet_per_second <= f64::from(per_second), "{case}");
    }
    assert!(quota_share(0, 4).is_none(), "0 stays unlimited");
}

#[tokio::test]
async fn a_change_in_live_replicas_reshapes_the_limiters_and_keeps_the_slots() {
    let (replicas, sharing) = watch::channel(1);
    let limits = Limits::shared(
        LimitSettings {
            per_host: vec![],
            default_per_second: 2,
            global_per_second: 0,
            max_in_flight: 8,
            max_in_flight_per_origin: 1,
        },
        sharing,
    );
    let Admission::Go(held) = limits.admit("https://a", "a").await else {
        panic!("the first message is let through")
    };
    drop(held);
    assert!(matches!(
        limits.admit("https://a", "a").await,
        Admission::Go(_)
    ));
    // Alone, a replica sends 2 per second: a third within the second waits 0.5 s.
    let Admission::Defer(alone) = limits.admit("https://a", "a").await else {
        panic!("a third message within the second was let through")
    };
    assert!(alone <= Duration::from_millis(500), "{alone:?}");

    replicas.send_replace(2);
    let Admission::Go(held) = limits.admit("https://a", "a").await else {
        panic!("a new share starts with its burst")
    };
    // One of two sends 1 per second: the next waits up to a second.
    let Admission::Defer(shared) = limits.admit("https://a", "a").await else {
        panic!("a second message within the second was let through")
    };
    assert!(
        shared > Duration::from_millis(500) && shared <= Duration::from_secs(1),
        "{shared:?}"
    );
    // The slot in flight taken before the change still counts.
    replicas.send_replace(1);
    let second_slot =
        tokio::time::timeout(Duration::from_millis(50), limits.admit("https://a", "a")).await;
    assert!(
        second_slot.is_err(),
        "a rebuilt limiter forgot the slot in flight"
    );
    drop(held);
}

#[tokio::test]
async fn the_global_rate_is_shared_too() {
    let (_replicas, sharing) = watch::channel(4);
    let limits = Limits::shared(
        LimitSettings {
            per_host: vec![],
            default_per_second: 0,
            global_per_second: 8,
            ..LimitSettings::default()
        },
        sharing,
    );
    for origin in ["https://a", "https://b"] {
        assert!(matches!(limits.admit(origin, "x").await, Admission::Go(_)));
    }
    // A quarter of 8 per second: 2, then one every half second.
    match limits.admit("https://c", "c").await {
        Admission::Defer(wait) => assert!(wait <= Duration::from_millis(500), "{wait:?}"),
        Admission::Go(_) => panic!("a third message within the burst of 2 went through"),
    }
}

#[tokio::test]
async fn limiters_are_kept_for_at_most_max_origins() {
    let limits = Limits::new(LimitSettings::default());
    for n in 0..crate::push::MAX_ORIGINS + 100 {
        let host = format!("n{n}.notify.windows.com");
        let admitted = limits.admit(&format!("https://{host}"), &host).await;
        assert!(matches!(admitted, Admission::Go(_)));
    }
    assert_eq!(limits.origins_tracked(), crate::push::MAX_ORIGINS);
}

#[tokio::test]
async fn a_rate_beyond_the_wait_defers_instead_of_waiting() {
    let limits = Limits::new(LimitSettings {
        per_host: vec![],
        default_per_second: 1,
        ..LimitSettings::default()
    });
    assert!(matches!(
        limits.admit("https://slow.example", "slow.example").await,
        Admission::Go(_)
    ));
    match limits.admit("https://slow.example", "slow.example").await {
        Admission::Defer(wait) => {
            assert!(wait > MAX_LIMITER_WAIT && wait <= Duration::from_secs(1))
        }
        Admission::Go(_) => panic!("a second message within the second was let through"),
    }
    // Another origin has its own budget.
    assert!(matches!(
        limits.admit("https://fast.example", "fast.example").await,
        Admission::Go(_)
    ));
}

#[tokio::test]
async fn in_flight_slots_per_origin_leave_room_for_others() {
    let limits = Limits::new(LimitSettings {
        per_host: vec![],
        default_per_second: 0,
        global_per_second: 0,
        max_in_flight: 3,
        max_in_flight_per_origin: 2,
    });
    let Admission::Go(_a) = limits.admit("https://slow", "slow").await else {
        panic!()
    };
    let Admission::Go(_b) = limits.admit("https://slow", "slow").await else {
        panic!()
    };
    let third_slow = tokio::time::timeout(
        Duration::from_millis(50),
        limits.admit("https://slow", "slow"),
    )
    .await;
    assert!(third_slow.is_err(), "the slow origin took a third slot");
    let other = tokio::time::timeout(
        Duration::from_millis(50),
        limits.admit("https://fast", "fast"),
    )
    .await;
    assert!(matches!(other, Ok(Admission::Go(_))));
}
