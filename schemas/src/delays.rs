//! Exact delays over a fixed set of delay queues (DESIGN §2.1.1).
//!
//! A RabbitMQ classic queue expires messages only at its head, so each delay
//! queue holds one delay length: queue `<prefix>.delay.<2^k ms>` for k from 5
//! to 27 (32 ms to about 37 h). A message that must wait `d` carries its due
//! time in the header [`NOT_BEFORE_HEADER`] and hops through the largest
//! queue not longer than what is left, back to the jobs queue, then through
//! the next, until less than [`DUE_WITHIN_MS`] is left: at most one hop per
//! power of two, and it arrives at most [`DUE_WITHIN_MS`] early or one hop's
//! handling late, whatever the delay.

/// Milliseconds since the Unix epoch before which the message is not handled.
pub const NOT_BEFORE_HEADER: &str = "x-pushq-not-before";

/// A message with less than this left is due now.
pub const DUE_WITHIN_MS: u64 = 16;

/// The delay of each delay queue, shortest first.
pub const DELAY_QUEUE_MS: [u64; 23] = {
    let mut delays = [0u64; 23];
    let mut k = 0;
    while k < delays.len() {
        delays[k] = 1 << (k + 5);
        k += 1;
    }
    delays
};

/// The delay queue a message with `remaining_ms` left waits in next, or
/// `None` when it is due now.
pub fn next_hop(remaining_ms: u64) -> Option<u64> {
    if remaining_ms < DUE_WITHIN_MS {
        return None;
    }
    Some(
        DELAY_QUEUE_MS
            .iter()
            .copied()
            .take_while(|&delay| delay <= remaining_ms)
            .last()
            .unwrap_or(DELAY_QUEUE_MS[0]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hops a delay takes, if each hop is exact.
    fn hops(mut remaining: u64) -> Vec<u64> {
        let mut hops = Vec::new();
        while let Some(hop) = next_hop(remaining) {
            hops.push(hop);
            remaining = remaining.saturating_sub(hop);
        }
        hops
    }

    #[test]
    fn queues_are_the_powers_of_two_from_32_ms_to_37_hours() {
        assert_eq!(DELAY_QUEUE_MS[0], 32);
        assert_eq!(DELAY_QUEUE_MS[22], 134_217_728);
        assert!(DELAY_QUEUE_MS.windows(2).all(|pair| pair[1] == 2 * pair[0]));
    }

    #[test]
    fn every_delay_from_100_ms_to_a_day_is_met_within_the_tolerance() {
        let day = 86_400_000u64;
        let mut delay = 100u64;
        while delay <= 2 * day {
            let hops = hops(delay);
            let waited: u64 = hops.iter().sum();
            let tolerance = (delay / 10).max(250);
            assert!(
                waited.abs_diff(delay) <= DUE_WITHIN_MS.max(32)
                    && waited.abs_diff(delay) <= tolerance,
                "{delay} ms waited {waited} ms over {hops:?}"
            );
            assert!(hops.len() <= 23, "{delay} ms takes {} hops", hops.len());
            delay = delay * 13 / 10 + 7;
        }
    }

    #[test]
    fn a_due_message_takes_no_hop_and_a_short_one_the_shortest_queue() {
        assert_eq!(next_hop(0), None);
        assert_eq!(next_hop(15), None);
        assert_eq!(next_hop(16), Some(32));
        assert_eq!(next_hop(300), Some(256));
        assert_eq!(next_hop(2000), Some(1024));
        assert_eq!(hops(2000), vec![1024, 512, 256, 128, 64, 32]);
        assert_eq!(next_hop(u64::MAX), Some(134_217_728));
    }
}
