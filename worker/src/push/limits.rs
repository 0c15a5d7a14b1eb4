//! How hard this replica may push: a rate per push-service origin (governor,
//! per host, a default for the rest), an optional global rate, and caps on
//! requests in flight, globally and per origin, so one slow push service
//! cannot take every slot. A wait longer than [`MAX_LIMITER_WAIT`] is not
//! waited out in-process: the delivery is deferred to a delay queue, so a
//! throttled origin never holds the prefetch the others need.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hashlink::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest a delivery waits in-process for its origin's rate limit.
pub const MAX_LIMITER_WAIT: Duration = Duration::from_millis(250);

/// Per-replica rates (messages per second) for the public push services;
/// `PUSHQ_RATE_LIMITS` overrides them, `PUSHQ_RATE_LIMIT_DEFAULT` covers the rest.
pub const DEFAULT_RATE_LIMITS: &str = "fcm.googleapis.com=5000,android.googleapis.com=5000,\
push.services.mozilla.com=2000,web.push.apple.com=2000,notify.windows.com=2000";
pub const DEFAULT_RATE_LIMIT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// (host, per second): the host and its subdomains; 0 is unlimited.
    pub per_host: Vec<(String, u32)>,
    pub default_per_second: u32,
    /// 0 is unlimited.
    pub global_per_second: u32,
    pub max_in_flight: usize,
    pub max_in_flight_per_origin: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            per_host: parse_rate_limits(DEFAULT_RATE_LIMITS).unwrap_or_default(),
            default_per_second: DEFAULT_RATE_LIMIT,
            global_per_second: 0,
            max_in_flight: 256,
            max_in_flight_per_origin: 128,
        }
    }
}

/// `host=per_second,…`
pub fn parse_rate_limits(text: &str) -> Result<Vec<(String, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (host, rate) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {entry:?} is not host=per_second"))?;
            let rate = rate.trim().parse().map_err(|_| {
                format!("entry {entry:?} has no whole number of messages per second")
            })?;
            Ok((host.trim().trim_matches('.').to_ascii_lowercase(), rate))
        })
        .collect()
}

struct OriginLimit {
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: Arc<Semaphore>,
}

/// What a delivery may do now.
#[derive(Debug)]
pub enum Admission {
    /// Send; the permits free the slots when dropped.
    Go(Permits),
    /// Too long a wait for the rate limit: try again after this.
    Defer(Duration),
}

#[derive(Debug)]
pub struct Permits {
    _origin: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

pub struct Limits {
    settings: LimitSettings,
    global_rate: Option<DefaultDirectRateLimiter>,
    global_in_flight: Arc<Semaphore>,
    /// The least recently used beyond [`super::MAX_ORIGINS`] are dropped.
    origins: Mutex<LruCache<String, Arc<OriginLimit>>>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn limiter(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    NonZeroU32::new(per_second).map(|rate| RateLimiter::direct(Quota::per_second(rate)))
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        Self {
            global_rate: limiter(settings.global_per_second),
            global_in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            origins: Mutex::new(LruCache::new(super::MAX_ORIGINS)),
            clock: DefaultClock::default(),
            settings,
        }
    }

    /// The rate for a host: the most specific listed entry matching it at a
    /// dot boundary, else the default.
    pub fn rate_for(&self, host: &str) -> u32 {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.settings
            .per_host
            .iter()
            .filter(|(rule, _)| {
                host == *rule
                    || host
                        .strip_suffix(rule.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            })
            .max_by_key(|(rule, _)| rule.len())
            .map_or(self.settings.default_per_second, |(_, rate)| *rate)
    }

    fn origin(&self, origin: &str, host: &str) -> Arc<OriginLimit> {
        let mut origins = self
            .origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(limit) = origins.get(origin) {
            return limit.clone();
        }
        let limit = Arc::new(OriginLimit {
            rate: limiter(self.rate_for(host)),
            in_flight: Arc::new(Semaphore::new(
                self.settings.max_in_flight_per_origin.max(1),
            )),
        });
        origins.insert(origin.to_owned(), limit.clone());
        limit
    }

    /// Origins with a limiter now.
    pub fn origins_tracked(&self) -> usize {
        self.origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Waits for the origin's and the global rate (up to [`MAX_LIMITER_WAIT`]
    /// each), then for a slot in flight.
    pub async fn admit(&self, origin: &str, host: &str) -> Admission {
        let limit = self.origin(origin, host);
        for rate in [limit.rate.as_ref(), self.global_rate.as_ref()]
            .into_iter()
            .flatten()
        {
            loop {
                match rate.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        if wait > MAX_LIMITER_WAIT {
                            return Admission::Defer(wait);
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        let Ok(origin_permit) = limit.in_flight.clone().acquire_owned().await else {
            return Admission::Defer(MAX_LIMITER_WAIT);
        };
        let Ok(global_permit) = self.global_in_flight.clone().acquire_owned().await else {
            return Admission::Defer(MAX_LIMITER_WAIT);
        };
        Admission::Go(Permits {
            _origin: origin_permit,
            _global: global_permit,
        })
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn limiters_are_kept_for_at_most_max_origins() {
        let limits = Limits::new(LimitSettings::default());
        for n in 0..super::super::MAX_ORIGINS + 100 {
            let host = format!("n{n}.notify.windows.com");
            let admitted = limits.admit(&format!("https://{host}"), &host).await;
            assert!(matches!(admitted, Admission::Go(_)));
        }
        assert_eq!(limits.origins_tracked(), super::super::MAX_ORIGINS);
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
}
