//! Capped exponential backoff with full jitter, pure: the caller supplies the randomness.
//!
//! Attempt n waits a uniform random time in `[0, min(max, initial · 2ⁿ)]`, so a fleet of
//! daemons that lost the same broker does not come back in lockstep.

use std::time::Duration;

/// Backoff state for one run.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The ceiling for the next wait: `min(max, initial · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next wait, given a uniformly random `u64`, and counts the attempt.
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(random % (ceiling_ms.saturating_add(1)))
    }

    /// Starts over (a connection stayed up).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let ceilings: Vec<u128> = (0..6)
            .map(|_| {
                let c = b.ceiling().as_millis();
                b.next_delay(0);
                c
            })
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delay_is_within_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for random in [0, 1, 99, 100, 101, u64::MAX] {
            b.reset();
            let d = b.next_delay(random);
            assert!(d <= Duration::from_millis(100), "{d:?} for {random}");
        }
        // The first wait is uniform in [0, 100] ms inclusive.
        let fresh = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(fresh.clone().next_delay(57), Duration::from_millis(57));
        assert_eq!(fresh.clone().next_delay(100), Duration::from_millis(100));
        assert_eq!(fresh.clone().next_delay(101), Duration::from_millis(0));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for _ in 0..200 {
            b.next_delay(u64::MAX);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60));
    }
}
