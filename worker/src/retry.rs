//! The retry schedule, as pure functions. Delays are exact: the delay
//! queues (pushq_schemas::delays) wait any length, so full jitter is drawn
//! from the whole range and a Retry-After is waited as asked.

use std::time::Duration;

use pushq_schemas::ResultReason;

use crate::push::Verdict;

/// What one attempt comes to, given what the push service said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conclusion {
    Delivered,
    /// Delete the subscription; never retried.
    Gone,
    Failed(ResultReason),
    /// Try again after `delay_ms`.
    Retry {
        reason: ResultReason,
        delay_ms: u64,
    },
    /// Failed for `reason` with the schedule used up.
    Exhausted {
        reason: ResultReason,
    },
    /// Failed for `reason`, and the next retry would start after the TTL.
    Expired {
        reason: ResultReason,
    },
}

/// The one rule from a verdict to what happens next: `attempt` is 1-based,
/// `ttl_left` what remains of the notification's TTL, `jitter` uniform in [0, 1).
pub fn conclude(
    verdict: Verdict,
    attempt: u32,
    ttl_left: Duration,
    schedule: &RetrySchedule,
    jitter: f64,
) -> Conclusion {
    match verdict {
        Verdict::Delivered => Conclusion::Delivered,
        Verdict::Gone => Conclusion::Gone,
        Verdict::Failed(reason) => Conclusion::Failed(reason),
        Verdict::Retry { reason, after } => match schedule.decide(attempt, after, jitter, ttl_left)
        {
            RetryDecision::After { delay_ms } => Conclusion::Retry { reason, delay_ms },
            RetryDecision::Exhausted => Conclusion::Exhausted { reason },
            RetryDecision::Expired => Conclusion::Expired { reason },
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    retry_after_max: Duration,
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this many milliseconds.
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
        Self {
            delays,
            retry_after_max,
        }
    }

    pub fn retry_after_max(&self) -> Duration {
        self.retry_after_max
    }

    /// The longest delay this schedule ever asks for: a due time further
    /// away than this was not set by a worker.
    pub fn longest_delay(&self) -> Duration {
        self.delays
            .iter()
            .copied()
            .chain([self.retry_after_max])
            .max()
            .unwrap_or_default()
    }

    /// Attempts in all: the first plus one per configured delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// A push service's Retry-After, clamped to what we honour.
    pub fn clamp_retry_after(&self, after: Duration) -> Duration {
        after.min(self.retry_after_max)
    }

    /// Decides the retry after attempt `attempt` (1-based) failed.
    /// `jitter` is uniform in [0, 1); `ttl_left` is what remains of the TTL.
    /// Full jitter: the delay is uniform over (0, base]; a Retry-After
    /// (clamped) replaces it, waited exactly.
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
        let jittered = ((base_ms as f64 * (1.0 - jitter.clamp(0.0, 1.0))).ceil() as u64).max(1);
        let delay_ms = match retry_after {
            // The push service said when: exactly that, not our schedule.
            Some(after) => self.clamp_retry_after(after).as_millis() as u64,
            None => jittered,
        };
        if Duration::from_millis(delay_ms) > ttl_left {
            RetryDecision::Expired
        } else {
            RetryDecision::After { delay_ms }
        }
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
    fn full_jitter_spans_the_whole_step_delay() {
        let s = schedule();
        assert_eq!(
            s.decide(1, None, 0.0, LONG),
            RetryDecision::After { delay_ms: 1000 }
        );
        assert_eq!(
            s.decide(1, None, 0.999_9, LONG),
            RetryDecision::After { delay_ms: 1 }
        );
        assert_eq!(
            s.decide(2, None, 0.5, LONG),
            RetryDecision::After { delay_ms: 2500 }
        );
        assert_eq!(s.decide(3, None, 0.5, LONG), RetryDecision::Exhausted);
        assert_eq!(s.max_attempts(), 3);
    }

    #[test]
    fn retry_after_is_waited_as_asked_up_to_the_maximum() {
        let s = schedule();
        assert_eq!(
            s.decide(1, Some(Duration::from_secs(10)), 0.0, LONG),
            RetryDecision::After { delay_ms: 10_000 }
        );
        assert_eq!(
            s.decide(1, Some(Duration::from_millis(2_000)), 0.7, LONG),
            RetryDecision::After { delay_ms: 2_000 }
        );
        assert_eq!(
            s.decide(1, Some(Duration::from_secs(86_400)), 0.0, LONG),
            RetryDecision::After { delay_ms: 60_000 }
        );
        // Shorter than the schedule's step: still exactly what was asked.
        assert_eq!(
            s.decide(2, Some(Duration::from_millis(300)), 0.0, LONG),
            RetryDecision::After { delay_ms: 300 }
        );
        assert_eq!(s.longest_delay(), Duration::from_secs(60));
    }

    #[test]
    fn each_verdict_comes_to_its_conclusion() {
        let s = schedule();
        let retry = |after| Verdict::Retry {
            reason: ResultReason::Throttled,
            after,
        };
        let cases = [
            (Verdict::Delivered, 1, LONG, Conclusion::Delivered),
            (Verdict::Gone, 1, LONG, Conclusion::Gone),
            (
                Verdict::Failed(ResultReason::Unauthorized),
                1,
                LONG,
                Conclusion::Failed(ResultReason::Unauthorized),
            ),
            (
                retry(Some(Duration::from_secs(2))),
                1,
                LONG,
                Conclusion::Retry {
                    reason: ResultReason::Throttled,
                    delay_ms: 2000,
                },
            ),
            (
                retry(None),
                3,
                LONG,
                Conclusion::Exhausted {
                    reason: ResultReason::Throttled,
                },
            ),
            (
                retry(Some(Duration::from_secs(2))),
                1,
                Duration::from_secs(1),
                Conclusion::Expired {
                    reason: ResultReason::Throttled,
                },
            ),
        ];
        for (verdict, attempt, ttl_left, expected) in cases {
            assert_eq!(
                conclude(verdict, attempt, ttl_left, &s, 0.0),
                expected,
                "{verdict:?} at attempt {attempt}"
            );
        }
    }

    #[test]
    fn a_retry_past_the_ttl_expires() {
        let s = schedule();
        assert_eq!(
            s.decide(1, None, 0.0, Duration::from_millis(999)),
            RetryDecision::Expired
        );
        assert_eq!(
            s.decide(1, None, 0.0, Duration::from_millis(1000)),
            RetryDecision::After { delay_ms: 1000 }
        );
    }
}
