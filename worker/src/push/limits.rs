//! How hard this replica may push: its share of the fleet's rate per
//! push-service origin (governor, per host, a default for the rest) and of an
//! optional global rate, and caps on requests in flight, globally and per
//! origin, so one slow push service cannot take every slot. A wait longer
//! than [`MAX_LIMITER_WAIT`] is not waited out in-process: the delivery is
//! deferred to a delay queue, so a throttled origin never holds the prefetch
//! the others need.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hashlink::LruCache;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Longest a delivery waits in-process for its origin's rate limit.
pub const MAX_LIMITER_WAIT: Duration = Duration::from_millis(250);

/// Rates (messages per second, for all replicas together) for the public push
/// services; `PUSHQ_RATE_LIMITS` overrides them, `PUSHQ_RATE_LIMIT_DEFAULT`
/// covers the rest.
pub const DEFAULT_RATE_LIMITS: &str = "fcm.googleapis.com=5000,android.googleapis.com=5000,\
push.services.mozilla.com=2000,web.push.apple.com=2000,notify.windows.com=2000";
pub const DEFAULT_RATE_LIMIT: u32 = 1000;

/// The rates are the fleet's: each replica takes [`quota_share`] of them.
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

/// This replica's part of a fleet-wide rate of `per_second` (0: unlimited)
/// when `replicas` share it: one message every `replicas / per_second`
/// seconds, rounded up to the nanosecond so that the fleet together never
/// goes past the rate, whatever the count (3 replicas sharing 1 per second
/// send one each every 3 s), and bursts of its share of one second's worth,
/// at least one message. The fleet's bursts add up to the rate's one second's
/// worth, or one message per replica when there are more replicas than that.
pub fn quota_share(per_second: u32, replicas: u32) -> Option<Quota> {
    let per_second = NonZeroU32::new(per_second)?;
    let replicas = replicas.max(1);
    let period_ns = (1_000_000_000 * u64::from(replicas)).div_ceil(u64::from(per_second.get()));
    let burst = NonZeroU32::new(per_second.get() / replicas).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_nanos(period_ns)).map(|quota| quota.allow_burst(burst))
}

/// A limiter for one share; rebuilt (governor quotas are fixed) when the
/// number of replicas sharing the rate changes, starting with a full burst.
struct Share {
    replicas: u32,
    rate: Option<DefaultDirectRateLimiter>,
}

impl Share {
    fn new(per_second: u32, replicas: u32) -> Self {
        Self {
            replicas,
            rate: quota_share(per_second, replicas).map(RateLimiter::direct),
        }
    }
}

struct OriginLimit {
    share: Share,
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
    /// How many live replicas share the rates (store::workers), at least 1.
    replicas: watch::Receiver<u32>,
    global_rate: Mutex<Arc<Share>>,
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

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Limits {
    /// Limits of a replica alone: it takes the whole of every rate.
    pub fn new(settings: LimitSettings) -> Self {
        Self::shared(settings, watch::channel(1).1)
    }

    /// Limits of one replica among `replicas` (kept current by the
    /// heartbeat): each rate is divided among them by [`quota_share`].
    pub fn shared(settings: LimitSettings, replicas: watch::Receiver<u32>) -> Self {
        let sharing = (*replicas.borrow()).max(1);
        Self {
            global_rate: Mutex::new(Arc::new(Share::new(settings.global_per_second, sharing))),
            replicas,
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

    fn sharing(&self) -> u32 {
        (*self.replicas.borrow()).max(1)
    }

    /// The origin's limits, its rate limiter rebuilt if the number of
    /// replicas changed since it was built; its slots in flight are kept.
    fn origin(&self, origin: &str, host: &str, sharing: u32) -> Arc<OriginLimit> {
        let mut origins = locked(&self.origins);
        let in_flight = match origins.get(origin) {
            Some(limit) if limit.share.replicas == sharing => return limit.clone(),
            Some(limit) => limit.in_flight.clone(),
            None => Arc::new(Semaphore::new(
                self.settings.max_in_flight_per_origin.max(1),
            )),
        };
        let limit = Arc::new(OriginLimit {
            share: Share::new(self.rate_for(host), sharing),
            in_flight,
        });
        origins.insert(origin.to_owned(), limit.clone());
        limit
    }

    fn global(&self, sharing: u32) -> Arc<Share> {
        let mut global = locked(&self.global_rate);
        if global.replicas != sharing {
            *global = Arc::new(Share::new(self.settings.global_per_second, sharing));
        }
        global.clone()
    }

    /// Origins with a limiter now.
    pub fn origins_tracked(&self) -> usize {
        locked(&self.origins).len()
    }

    /// Waits for the origin's and the global rate (up to [`MAX_LIMITER_WAIT`]
    /// each), then for a slot in flight.
    pub async fn admit(&self, origin: &str, host: &str) -> Admission {
        let sharing = self.sharing();
        let limit = self.origin(origin, host, sharing);
        let global = self.global(sharing);
        for rate in [limit.share.rate.as_ref(), global.rate.as_ref()]
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
mod tests;
