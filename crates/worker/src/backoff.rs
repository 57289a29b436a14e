//! Capped exponential backoff with full jitter, for retrying writes while MongoDB or Redis is down.

use std::time::Duration;

use rand::Rng;

/// Delays grow as `first * 2^attempt`, capped at `max`; each is drawn uniformly from the upper half
/// of that, so a fleet of workers does not retry in lockstep yet never spins.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new((first, max): (Duration, Duration)) -> Self {
        Self { first, max, attempt: 0 }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.first.saturating_mul(1 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter_inside_bounds() {
        let mut b = Backoff::new((Duration::from_millis(100), Duration::from_secs(2)));
        let expected_ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for ceiling in expected_ceilings {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= ceiling / 2 && d <= ceiling, "{d} outside [{}, {ceiling}]", ceiling / 2);
        }
        assert_eq!(b.attempts(), 8);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
    }
}
