//! Backoff shapes with a choice of jitter.
//!
//! The n-th retry (attempt `n-1`, counting from 0) waits up to a ceiling that
//! the policy's [`Shape`] draws from its base and caps at its max:
//! - `exponential` (the default): `min(base · 2^attempt, max)` — the native
//!   plugin's formula;
//! - `linear`: `min(base · (attempt + 1), max)`;
//! - `constant`: `min(base, max)`.
//!
//! Jitter modes follow the AWS Architecture Blog, "Exponential Backoff and
//! Jitter" (Marc Brooker, 2015), with that ceiling as `cap`:
//! - `none`: the ceiling itself;
//! - `full` (the default): uniform in `[1, ceiling]`. The native plugin draws
//!   from `[0, ceiling]`, but the gateway reads a delay of 0 as "do not retry",
//!   so a lucky draw silently cancelled the retry; here a retry never carries 0;
//! - `equal`: half the ceiling (rounded up) plus a uniform draw over the rest,
//!   so in `[ceil(ceiling/2), ceiling]`;
//! - `decorrelated`: `min(max, uniform [base, 3 · previous delay])`, the
//!   previous delay of the same key (`base` before the first retry). It has
//!   its own growth and does not follow the shape's ceiling, only `max`; the
//!   configuration allows it only with the exponential shape.
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

/// How the ceiling grows with the attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `base · 2^attempt`.
    Exponential,
    /// `base · (attempt + 1)`.
    Linear,
    /// `base`.
    Constant,
}

impl Shape {
    /// The name used in the configuration and the WIT `backoff-shape` enum.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Exponential => "exponential",
            Shape::Linear => "linear",
            Shape::Constant => "constant",
        }
    }
}

/// One class of failures' delays: a shape between a base and a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Curve {
    /// How the ceiling grows.
    pub shape: Shape,
    /// Ceiling of the first retry (ms).
    pub base_ms: u64,
    /// Cap of every delay (ms).
    pub max_ms: u64,
}

impl Curve {
    /// The exponential curve from `base_ms` capped at `max_ms`.
    pub fn exponential(base_ms: u64, max_ms: u64) -> Self {
        Self {
            shape: Shape::Exponential,
            base_ms,
            max_ms,
        }
    }

    /// The capped ceiling for `attempt` (0 = first retry).
    ///
    /// Saturates instead of overflowing: `2^attempt` is `u64::MAX` from
    /// attempt 64 on and the products saturate too, so any attempt number
    /// yields at most `max_ms`.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let uncapped = match self.shape {
            Shape::Exponential => {
                let factor = 1u64.checked_shl(attempt).unwrap_or(u64::MAX);
                self.base_ms.saturating_mul(factor)
            }
            Shape::Linear => self.base_ms.saturating_mul(u64::from(attempt) + 1),
            Shape::Constant => self.base_ms,
        };
        uncapped.min(self.max_ms)
    }
}

/// The delay before retry `attempt` (0 = first retry) on `curve`; always in
/// `[1, max]` (for a validated policy, `max >= base >= 1`). `previous_ms` is
/// the key's previous delay (0 = none yet); only `decorrelated` reads it.
pub fn delay_ms(
    curve: Curve,
    attempt: u32,
    jitter: Jitter,
    previous_ms: u64,
    rng: &mut Rng,
) -> u64 {
    let Curve {
        base_ms, max_ms, ..
    } = curve;
    // A validated policy has max >= base >= 1, so the ceiling is >= 1; the
    // `max(1)` only keeps the "never 0 on a retry" promise unconditional.
    let ceiling = curve.ceiling_ms(attempt).max(1);
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
/// 0 without jitter, else uniform in `[0, ceiling]` for the attempt on
/// `curve`, so clients told the same wait do not all come back at once.
pub fn spread_ms(curve: Curve, attempt: u32, jitter: Jitter, rng: &mut Rng) -> u64 {
    match jitter {
        Jitter::None => 0,
        _ => rng.u64(0..=curve.ceiling_ms(attempt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_backoff_sequence_doubles_then_caps() {
        let mut rng = Rng::with_seed(1);
        let seq: Vec<u64> = (0..8)
            .map(|a| delay_ms(Curve::exponential(200, 5000), a, Jitter::None, 0, &mut rng))
            .collect();
        assert_eq!(seq, vec![200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn test_backoff_shapes_without_jitter() {
        let seq = |shape| {
            let curve = Curve {
                shape,
                base_ms: 300,
                max_ms: 1000,
            };
            let mut rng = Rng::with_seed(1);
            (0..5)
                .map(|a| delay_ms(curve, a, Jitter::None, 0, &mut rng))
                .collect::<Vec<u64>>()
        };
        assert_eq!(seq(Shape::Exponential), vec![300, 600, 1000, 1000, 1000]);
        assert_eq!(seq(Shape::Linear), vec![300, 600, 900, 1000, 1000]);
        assert_eq!(seq(Shape::Constant), vec![300, 300, 300, 300, 300]);
    }

    #[test]
    fn test_backoff_saturates_on_huge_attempts() {
        for attempt in [63, 64, 65, 1000, u32::MAX] {
            assert_eq!(Curve::exponential(100, 5000).ceiling_ms(attempt), 5000);
            assert_eq!(
                Curve::exponential(u64::MAX, u64::MAX).ceiling_ms(attempt),
                u64::MAX
            );
            for shape in [Shape::Linear, Shape::Constant] {
                let curve = Curve {
                    shape,
                    base_ms: u64::MAX,
                    max_ms: u64::MAX,
                };
                assert_eq!(curve.ceiling_ms(attempt), u64::MAX);
            }
        }
    }

    #[test]
    fn test_backoff_jitter_within_one_and_ceiling() {
        let mut rng = Rng::with_seed(7);
        let mut seen_low = false;
        for _ in 0..10_000 {
            let d = delay_ms(Curve::exponential(100, 5000), 2, Jitter::Full, 0, &mut rng);
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
                assert_eq!(
                    delay_ms(Curve::exponential(1, 1), 0, jitter, 0, &mut rng),
                    1
                );
                assert_eq!(
                    delay_ms(Curve::exponential(1, 1), 5, jitter, 1, &mut rng),
                    1
                );
            }
        }
    }

    #[test]
    fn test_backoff_equal_jitter_keeps_the_upper_half() {
        let mut rng = Rng::with_seed(11);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..10_000 {
            let d = delay_ms(Curve::exponential(100, 5000), 2, Jitter::Equal, 0, &mut rng);
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert_eq!((lo, hi), (200, 400));
        // An odd ceiling rounds the floor up: [2, 3], never 1.
        for _ in 0..100 {
            assert!((2..=3).contains(&delay_ms(
                Curve::exponential(3, 3),
                0,
                Jitter::Equal,
                0,
                &mut rng
            )));
        }
    }

    #[test]
    fn test_backoff_decorrelated_grows_from_the_previous_delay_and_caps() {
        let mut rng = Rng::with_seed(5);
        let mut previous = 0;
        for _ in 0..1_000 {
            let d = delay_ms(
                Curve::exponential(100, 5000),
                0,
                Jitter::Decorrelated,
                previous,
                &mut rng,
            );
            let high = if previous == 0 { 300 } else { previous * 3 };
            assert!(d >= 100 && d <= high.min(5000), "{d} after {previous}");
            previous = d;
        }
        // Saturating: a huge previous delay cannot overflow, and the cap holds.
        assert_eq!(
            delay_ms(
                Curve::exponential(7, 7),
                0,
                Jitter::Decorrelated,
                u64::MAX,
                &mut rng
            ),
            7
        );
        let d = delay_ms(
            Curve::exponential(100, 5000),
            0,
            Jitter::Decorrelated,
            u64::MAX,
            &mut rng,
        );
        assert!((100..=5000).contains(&d));
    }
}
