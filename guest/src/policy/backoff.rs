//! Exponential backoff with a choice of jitter.
//!
//! The n-th retry (attempt `n-1`, counting from 0) waits up to
//! `min(base · 2^attempt, max)` — the native plugin's formula. Jitter modes
//! follow the AWS Architecture Blog, "Exponential Backoff and Jitter" (Marc
//! Brooker, 2015), with the ceiling above as `cap`:
//! - `none`: the ceiling itself;
//! - `full` (the default): uniform in `[1, ceiling]`. The native plugin draws
//!   from `[0, ceiling]`, but the gateway reads a delay of 0 as "do not retry",
//!   so a lucky draw silently cancelled the retry; here a retry never carries 0;
//! - `equal`: half the ceiling (rounded up) plus a uniform draw over the rest,
//!   so in `[ceil(ceiling/2), ceiling]`;
//! - `decorrelated`: `min(max, uniform [base, 3 · previous delay])`, the
//!   previous delay of the same key (`base` before the first retry). It does
//!   not follow the attempt's ceiling, only `max`.
//!
//! Every mode's result lies in `[1, max]`: the cap holds after jitter.

use fastrand::Rng;

/// How a retry delay is jittered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// No jitter: the capped exponential ceiling.
    None,
    /// Uniform in `[1, ceiling]`.
    Full,
    /// Uniform in `[ceil(ceiling / 2), ceiling]`.
    Equal,
    /// `min(max, uniform [base, 3 · previous])`.
    Decorrelated,
}

impl Jitter {
    /// The name used in the configuration and the WIT `jitter-mode` enum.
    pub fn name(self) -> &'static str {
        match self {
            Jitter::None => "none",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
        }
    }
}

/// The capped exponential ceiling for `attempt` (0 = first retry).
///
/// Saturates instead of overflowing: `2^attempt` is `u64::MAX` from attempt 64
/// on and the product saturates too, so any attempt number yields `max_ms`.
pub fn ceiling_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
    base_ms.saturating_mul(factor).min(max_ms)
}

/// The delay before retry `attempt` (0 = first retry); always in `[1, max]`
/// (for a validated policy, `max >= base >= 1`). `previous_ms` is the key's
/// previous delay (0 = none yet); only `decorrelated` reads it.
pub fn delay_ms(
    attempt: u32,
    base_ms: u64,
    max_ms: u64,
    jitter: Jitter,
    previous_ms: u64,
    rng: &mut Rng,
) -> u64 {
    // A validated policy has max >= base >= 1, so the ceiling is >= 1; the
    // `max(1)` only keeps the "never 0 on a retry" promise unconditional.
    let ceiling = ceiling_ms(attempt, base_ms, max_ms).max(1);
    match jitter {
        Jitter::None => ceiling,
        // The same single draw as before jitter modes existed: seeded replays
        // (goldens, the CLI examples) keep their values.
        Jitter::Full => rng.u64(1..=ceiling),
        Jitter::Equal => rng.u64(ceiling.div_ceil(2)..=ceiling),
        Jitter::Decorrelated => {
            let low = base_ms.max(1);
            let previous = if previous_ms == 0 { low } else { previous_ms };
            let high = previous.saturating_mul(3).max(low);
            rng.u64(low..=high).min(max_ms.max(1))
        }
    }
}

/// The random spread added above a server's delay hint (the hint is a floor):
/// 0 without jitter, else uniform in `[0, ceiling]` for the attempt, so
/// clients told the same wait do not all come back at once.
pub fn spread_ms(attempt: u32, base_ms: u64, max_ms: u64, jitter: Jitter, rng: &mut Rng) -> u64 {
    match jitter {
        Jitter::None => 0,
        _ => rng.u64(0..=ceiling_ms(attempt, base_ms, max_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_sequence_doubles_then_caps() {
        let mut rng = Rng::with_seed(1);
        let seq: Vec<u64> = (0..8)
            .map(|a| delay_ms(a, 200, 5000, Jitter::None, 0, &mut rng))
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
            let d = delay_ms(2, 100, 5000, Jitter::Full, 0, &mut rng);
            assert!((1..=400).contains(&d), "{d}");
            seen_low |= d <= 10;
        }
        assert!(seen_low, "full jitter should reach the bottom of the range");
    }

    #[test]
    fn test_backoff_jitter_on_ceiling_one_is_one() {
        let mut rng = Rng::with_seed(3);
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
            for _ in 0..100 {
                assert_eq!(delay_ms(0, 1, 1, jitter, 0, &mut rng), 1);
                assert_eq!(delay_ms(5, 1, 1, jitter, 1, &mut rng), 1);
            }
        }
    }

    #[test]
    fn test_backoff_equal_jitter_keeps_the_upper_half() {
        let mut rng = Rng::with_seed(11);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..10_000 {
            let d = delay_ms(2, 100, 5000, Jitter::Equal, 0, &mut rng);
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert_eq!((lo, hi), (200, 400));
        // An odd ceiling rounds the floor up: [2, 3], never 1.
        for _ in 0..100 {
            assert!((2..=3).contains(&delay_ms(0, 3, 3, Jitter::Equal, 0, &mut rng)));
        }
    }

    #[test]
    fn test_backoff_decorrelated_grows_from_the_previous_delay_and_caps() {
        let mut rng = Rng::with_seed(5);
        let mut previous = 0;
        for _ in 0..1_000 {
            let d = delay_ms(0, 100, 5000, Jitter::Decorrelated, previous, &mut rng);
            let high = if previous == 0 { 300 } else { previous * 3 };
            assert!(d >= 100 && d <= high.min(5000), "{d} after {previous}");
            previous = d;
        }
        // Saturating: a huge previous delay cannot overflow, and the cap holds.
        assert_eq!(
            delay_ms(0, 7, 7, Jitter::Decorrelated, u64::MAX, &mut rng),
            7
        );
        let d = delay_ms(0, 100, 5000, Jitter::Decorrelated, u64::MAX, &mut rng);
        assert!((100..=5000).contains(&d));
    }
}
