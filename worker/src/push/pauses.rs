//! Who a push service asked us to leave alone, and until when. A throttled
//! answer (429, or any answer with a Retry-After) concerns one subscription:
//! nothing more is sent to it, whatever the notification, until its wait is
//! over. Only when many distinct subscriptions of one push service are
//! throttled within a short window is the whole push service paused (a
//! circuit breaker), and then for the shortest wait among them, so no
//! delivery waits longer than the push service asked of any. Per replica.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use uuid::Uuid;

/// Distinct subscriptions throttled within [`BREAKER_WINDOW`] that pause
/// their push service.
pub const BREAKER_THRESHOLD: usize = 8;
/// How far back throttled answers count towards the breaker.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct OriginPauses {
    /// The least recently used beyond [`super::MAX_ORIGINS`] are dropped.
    origins: Mutex<LruCache<String, Origin>>,
    /// Subscriptions asked to wait, until when; the least recently asked
    /// beyond [`MAX_WAITING_SUBSCRIPTIONS`] are forgotten (a forgotten one
    /// may be sent to early and is throttled again, nothing worse).
    subscriptions: Mutex<LruCache<Uuid, Instant>>,
}

impl Default for OriginPauses {
    fn default() -> Self {
        Self {
            origins: Mutex::new(LruCache::new(super::MAX_ORIGINS)),
            subscriptions: Mutex::new(LruCache::new(MAX_WAITING_SUBSCRIPTIONS)),
        }
    }
}

/// About 50 bytes each: a few megabytes at most.
pub const MAX_WAITING_SUBSCRIPTIONS: usize = 100_000;

/// Above this many waiting subscriptions, the finished waits are dropped.
const SUBSCRIPTIONS_BEFORE_PRUNING: usize = 4096;

#[derive(Debug, Default)]
struct Origin {
    paused_until: Option<Instant>,
    /// Throttled answers within the window: when, which subscription, how
    /// long it was asked to wait.
    throttled: VecDeque<(Instant, Uuid, Duration)>,
}

impl OriginPauses {
    /// Notes that `subscription` at `origin` was asked to wait `asked`.
    /// Returns the pause of the whole push service when this trips the
    /// breaker.
    pub fn throttled(&self, origin: &str, subscription: Uuid, asked: Duration) -> Option<Duration> {
        self.throttled_at(origin, subscription, asked, Instant::now())
    }

    fn throttled_at(
        &self,
        origin: &str,
        subscription: Uuid,
        asked: Duration,
        now: Instant,
    ) -> Option<Duration> {
        {
            let mut waiting = self
                .subscriptions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if waiting.len() >= SUBSCRIPTIONS_BEFORE_PRUNING {
                waiting.retain(|_, until| *until > now);
            }
            let until = now + asked;
            let longest = waiting
                .get(&subscription)
                .map_or(until, |&was| was.max(until));
            waiting.insert(subscription, longest);
        }
        let mut origins = self.lock();
        origins.retain(|_, state| state.is_live(now));
        if !origins.contains_key(origin) {
            origins.insert(origin.to_owned(), Origin::default());
        }
        let state = origins.get_mut(origin)?;
        state
            .throttled
            .retain(|(at, id, _)| now.duration_since(*at) < BREAKER_WINDOW && *id != subscription);
        state.throttled.push_back((now, subscription, asked));
        if state.throttled.len() < BREAKER_THRESHOLD {
            return None;
        }
        let pause = state.throttled.iter().map(|(_, _, asked)| *asked).min()?;
        let until = now + pause;
        state.paused_until = Some(
            state
                .paused_until
                .map_or(until, |current| current.max(until)),
        );
        state.throttled.clear();
        (!pause.is_zero()).then_some(pause)
    }

    /// What is left of `origin`'s pause, if any.
    pub fn remaining(&self, origin: &str) -> Option<Duration> {
        let origins = self.lock();
        origins
            .peek(origin)?
            .paused_until?
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    /// How long a delivery to `subscription` at `origin` must still wait:
    /// the longer of the push service's pause and the subscription's own.
    pub fn remaining_for(&self, origin: &str, subscription: Uuid) -> Option<Duration> {
        let own = self
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .peek(&subscription)
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero());
        own.max(self.remaining(origin))
    }

    /// Origins with throttling state now.
    pub fn origins_tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<String, Origin>> {
        self.origins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Origin {
    fn is_live(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| until > now)
            || self
                .throttled
                .back()
                .is_some_and(|(at, _, _)| now.duration_since(*at) < BREAKER_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_state_is_kept_for_at_most_max_origins() {
        let pauses = OriginPauses::default();
        for n in 0..super::super::MAX_ORIGINS + 100 {
            let origin = format!("https://n{n}.notify.windows.com");
            pauses.throttled(&origin, Uuid::new_v4(), Duration::from_secs(60));
        }
        assert_eq!(pauses.origins_tracked(), super::super::MAX_ORIGINS);
    }

    const FCM: &str = "https://fcm.googleapis.com";

    #[test]
    fn one_chatty_device_never_pauses_its_push_service() {
        let pauses = OriginPauses::default();
        let device = Uuid::new_v4();
        let now = Instant::now();
        for n in 0..100 {
            let at = now + Duration::from_millis(n);
            assert_eq!(
                pauses.throttled_at(FCM, device, Duration::from_secs(30), at),
                None
            );
        }
        assert_eq!(pauses.remaining(FCM), None);
        assert!(
            pauses
                .remaining_for(FCM, device)
                .is_some_and(|left| left > Duration::from_secs(25)),
            "the device itself waits what it asked"
        );
        assert_eq!(pauses.remaining_for(FCM, Uuid::new_v4()), None);
    }

    #[test]
    fn many_devices_throttled_at_once_pause_it_for_the_shortest_wait_asked() {
        let pauses = OriginPauses::default();
        let now = Instant::now();
        for n in 1..BREAKER_THRESHOLD {
            let asked = Duration::from_secs(10 + n as u64);
            assert_eq!(pauses.throttled_at(FCM, Uuid::new_v4(), asked, now), None);
        }
        let tripped = pauses.throttled_at(FCM, Uuid::new_v4(), Duration::from_secs(60), now);
        assert_eq!(tripped, Some(Duration::from_secs(11)));
        assert!(pauses.remaining(FCM).is_some());
        assert_eq!(
            pauses.remaining("https://updates.push.services.mozilla.com"),
            None
        );
    }

    #[test]
    fn throttles_older_than_the_window_do_not_count() {
        let pauses = OriginPauses::default();
        let start = Instant::now();
        for n in 0..(BREAKER_THRESHOLD * 3) {
            let at = start + BREAKER_WINDOW / 2 * n as u32;
            assert_eq!(
                pauses.throttled_at(FCM, Uuid::new_v4(), Duration::from_secs(1), at),
                None,
                "throttle {n}"
            );
        }
    }
}
