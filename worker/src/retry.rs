//! The retry schedule, as pure functions. Each retry waits in a delay queue
//! whose name carries its delay (`<prefix>.retry.<ms>`); full jitter is
//! approximated by quarter steps, so a schedule needs four queues per step
//! instead of one queue per possible delay.

use std::collections::BTreeSet;
use std::time::Duration;

/// How many jitter steps each configured delay is split into.
const JITTER_STEPS: u64 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    retry_after_max: Duration,
    tiers: Vec<u64>,
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait in the delay queue for this many milliseconds (one of the tiers).
    After { delay_ms: u64 },
    /// The schedule is used up.
    Exhausted,
    /// The retry would start after the notification's TTL.
    Expired,
}

impl RetrySchedule {
    /// `delays[k]` is the base delay before retry k+1; a push service's
    /// Retry-After is honoured up to `retry_after_max`.
    pub fn new(delays: Vec<Duration>, retry_after_max: Duration) -> Self {
        let mut tiers = BTreeSet::new();
        for delay in delays.iter().chain(std::iter::once(&retry_after_max)) {
            let ms = delay.as_millis().max(1) as u64;
            for step in 1..=JITTER_STEPS {
                tiers.insert((ms * step).div_ceil(JITTER_STEPS).max(1));
            }
        }
        Self {
            delays,
            retry_after_max,
            tiers: tiers.into_iter().collect(),
        }
    }

    /// Every delay a retry can wait, in ms: one queue each.
    pub fn tiers(&self) -> &[u64] {
        &self.tiers
    }

    pub fn retry_after_max(&self) -> Duration {
        self.retry_after_max
    }

    /// Attempts in all: the first plus one per configured delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Decides the retry after attempt `attempt` (1-based) failed.
    /// `jitter` is uniform in [0, 1); `ttl_left` is what remains of the TTL.
    pub fn decide(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter: f64,
        ttl_left: Duration,
    ) -> RetryDecision {
        let Some(base) = self.delays.get(attempt.saturating_sub(1) as usize) else {
            return RetryDecision::Exhausted;
        };
        let base_ms = base.as_millis().max(1) as u64;
        // Full jitter over quarter steps: base/4, base/2, 3·base/4 or base.
        let step = ((jitter.clamp(0.0, 0.999_999) * JITTER_STEPS as f64) as u64) + 1;
        let jittered = (base_ms * step).div_ceil(JITTER_STEPS);
        let wanted = match retry_after {
            Some(after) => jittered.max(after.min(self.retry_after_max).as_millis() as u64),
            None => jittered,
        };
        let delay_ms = self.tier_at_least(wanted);
        if Duration::from_millis(delay_ms) > ttl_left {
            RetryDecision::Expired
        } else {
            RetryDecision::After { delay_ms }
        }
    }

    /// A pause (Retry-After still running for a push service) as a tier.
    pub fn tier_for_pause(&self, pause: Duration) -> u64 {
        self.tier_at_least(pause.min(self.retry_after_max).as_millis() as u64)
    }

    fn tier_at_least(&self, ms: u64) -> u64 {
        self.tiers
            .iter()
            .copied()
            .find(|&tier| tier >= ms)
            .or_else(|| self.tiers.last().copied())
            .unwrap_or(ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::new(
            vec![Duration::from_millis(1000), Duration::from_millis(5000)],
            Duration::from_secs(60),
        )
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn tiers_are_quarter_steps_of_each_delay() {
        assert_eq!(
            schedule().tiers(),
            [
                250, 500, 750, 1000, 1250, 2500, 3750, 5000, 15000, 30000, 45000, 60000
            ]
        );
        assert_eq!(schedule().max_attempts(), 3);
    }

    #[test]
    fn full_jitter_spans_the_quarter_steps_of_the_step_delay() {
        let s = schedule();
        assert_eq!(
            s.decide(1, None, 0.0, LONG),
            RetryDecision::After { delay_ms: 250 }
        );
        assert_eq!(
            s.decide(1, None, 0.99, LONG),
            RetryDecision::After { delay_ms: 1000 }
        );
        assert_eq!(
            s.decide(2, None, 0.5, LONG),
            RetryDecision::After { delay_ms: 3750 }
        );
        assert_eq!(s.decide(3, None, 0.5, LONG), RetryDecision::Exhausted);
    }

    #[test]
    fn retry_after_is_honoured_rounded_up_to_a_tier_and_clamped() {
        let s = schedule();
        assert_eq!(
            s.decide(1, Some(Duration::from_secs(10)), 0.0, LONG),
            RetryDecision::After { delay_ms: 15000 }
        );
        assert_eq!(
            s.decide(1, Some(Duration::from_secs(86_400)), 0.0, LONG),
            RetryDecision::After { delay_ms: 60000 }
        );
        assert_eq!(s.tier_for_pause(Duration::from_millis(1)), 250);
    }

    #[test]
    fn a_retry_past_the_ttl_expires() {
        let s = schedule();
        assert_eq!(
            s.decide(1, None, 0.99, Duration::from_millis(999)),
            RetryDecision::Expired
        );
        assert_eq!(
            s.decide(1, None, 0.99, Duration::from_millis(1000)),
            RetryDecision::After { delay_ms: 1000 }
        );
    }
}
