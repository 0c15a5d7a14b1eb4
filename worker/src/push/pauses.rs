//! Push services that asked us to wait (Retry-After): no request goes to a
//! paused origin until its pause ends; its deliveries wait in delay queues.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct OriginPauses {
    until: Mutex<HashMap<String, Instant>>,
}

impl OriginPauses {
    /// Pauses `origin` for `pause` (a longer pause already running is kept).
    pub fn pause(&self, origin: &str, pause: Duration) {
        let until = Instant::now() + pause;
        let mut map = self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        map.retain(|_, end| *end > now);
        let entry = map.entry(origin.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// What is left of `origin`'s pause, if any.
    pub fn remaining(&self, origin: &str) -> Option<Duration> {
        let map = self
            .until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(origin)
            .and_then(|end| end.checked_duration_since(Instant::now()))
            .filter(|left| !left.is_zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_covers_its_origin_only_and_keeps_the_longest() {
        let pauses = OriginPauses::default();
        pauses.pause("https://a.example", Duration::from_secs(60));
        pauses.pause("https://a.example", Duration::from_secs(1));
        assert!(
            pauses
                .remaining("https://a.example")
                .is_some_and(|left| left > Duration::from_secs(50))
        );
        assert_eq!(pauses.remaining("https://b.example"), None);
        pauses.pause("https://c.example", Duration::ZERO);
        assert_eq!(pauses.remaining("https://c.example"), None);
    }
}
