//! Retry delays after failures, the way the kubelet does it: 100 ms doubling to a 7 s cap.

use crate::time::Duration;

/// First retry delay.
pub const INITIAL_MS: Duration = Duration::from_ms(100);
/// Longest retry delay.
pub const CAP_MS: Duration = Duration::from_ms(7_000);

/// Exponential backoff state for one kind of request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backoff {
    failures: u8,
}

impl Backoff {
    /// Records a failure and returns how long to wait before the next try.
    pub fn fail(&mut self) -> Duration {
        let delay = INITIAL_MS
            .saturating_mul(1 << self.failures.min(16))
            .min(CAP_MS);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Forgets earlier failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u8 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_to_a_7s_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: [u64; 9] = core::array::from_fn(|_| b.fail().as_ms());
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
        for _ in 0..300 {
            assert_eq!(b.fail(), Duration::from_ms(7000));
        }
        b.reset();
        assert_eq!(b.fail(), Duration::from_ms(100));
    }
}
