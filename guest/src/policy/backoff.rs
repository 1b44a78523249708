//! Exponential backoff with optional full jitter.
//!
//! The n-th retry (attempt `n-1`, counting from 0) waits up to
//! `min(base · 2^attempt, max)` — the native plugin's formula. With jitter the
//! delay is drawn uniformly from `[1, ceiling]` ("full jitter", AWS
//! Architecture Blog, "Exponential Backoff and Jitter", 2015). The native
//! plugin draws from `[0, ceiling]`, but the gateway reads a delay of 0 as "do
//! not retry", so a lucky draw silently cancelled the retry; here a retry
//! never carries 0.

use fastrand::Rng;

/// The capped exponential ceiling for `attempt` (0 = first retry).
///
/// Saturates instead of overflowing: `2^attempt` is `u64::MAX` from attempt 64
/// on and the product saturates too, so any attempt number yields `max_ms`.
pub fn ceiling_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(max_ms)
}

/// The delay before retry `attempt` (0 = first retry); always >= 1.
pub fn delay_ms(attempt: u32, base_ms: u64, max_ms: u64, jitter: bool, rng: &mut Rng) -> u64 {
    // A validated policy has max >= base >= 1, so the ceiling is >= 1; the
    // `max(1)` only keeps the "never 0 on a retry" promise unconditional.
    let ceiling = ceiling_ms(attempt, base_ms, max_ms).max(1);
    if jitter {
        rng.u64(1..=ceiling)
    } else {
        ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_sequence_doubles_then_caps() {
        let mut rng = Rng::with_seed(1);
        let seq: Vec<u64> = (0..8)
            .map(|a| delay_ms(a, 200, 5000, false, &mut rng))
            .collect();
        assert_eq!(seq, vec![200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn test_backoff_saturates_on_huge_attempts() {
        for attempt in [63, 64, 65, 1000, u32::MAX] {
            assert_eq!(ceiling_ms(attempt, 100, 5000), 5000);
            assert_eq!(ceiling_ms(attempt, u64::MAX, u64::MAX), u64::MAX);
        }
    }

    #[test]
    fn test_backoff_jitter_within_one_and_ceiling() {
        let mut rng = Rng::with_seed(7);
        let mut seen_low = false;
        for _ in 0..10_000 {
            let d = delay_ms(2, 100, 5000, true, &mut rng);
            assert!((1..=400).contains(&d), "{d}");
            seen_low |= d <= 10;
        }
        assert!(seen_low, "full jitter should reach the bottom of the range");
    }

    #[test]
    fn test_backoff_jitter_on_ceiling_one_is_one() {
        let mut rng = Rng::with_seed(3);
        for _ in 0..100 {
            assert_eq!(delay_ms(0, 1, 1, true, &mut rng), 1);
        }
    }
}
