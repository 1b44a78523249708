//! The retry-budget simulation of issue 6 §2, against the built component:
//! requests arrive at a fixed rate on the virtual clock, each is retried
//! while the engine says so (retry delays are not waited out: they only
//! shift when a retry lands, which the budget does not look at), and every
//! attempt fails with a fixed probability. Reports load amplification (total
//! attempts / first attempts) and how many requests end in success.
//! `make bench` prints it (`--example budget`); `tests/all/budget.rs`
//! asserts the targets.

use anyhow::Result;

use crate::{Harness, Signals};

/// What one run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    /// Requests (= first attempts).
    pub requests: u64,
    /// All attempts, first ones included.
    pub attempts: u64,
    /// Requests whose last attempt succeeded.
    pub succeeded: u64,
}

impl Outcome {
    /// Total attempts per first attempt.
    pub fn amplification(&self) -> f64 {
        self.attempts as f64 / self.requests as f64
    }
    /// Share of requests that ended in success.
    pub fn success_rate(&self) -> f64 {
        self.succeeded as f64 / self.requests as f64
    }
}

/// A small deterministic generator (SplitMix64) for the failure draws.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `per_mille` / 1000.
    fn fails(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
}

/// Drive `requests` requests of one tool, one every `gap_ms`, through an
/// engine configured with `config` (JSON); each attempt fails with
/// probability `fail_per_mille` / 1000.
pub fn run(
    config: &str,
    requests: u64,
    gap_ms: u64,
    fail_per_mille: u64,
    seed: u64,
) -> Result<Outcome> {
    let mut h = Harness::new()?;
    h.configure_ok(config)?;
    let mut draws = Draws(seed);
    let mut out = Outcome {
        requests,
        attempts: 0,
        succeeded: 0,
    };
    for r in 0..requests {
        h.clock.advance_ms(gap_ms);
        let rid = r.to_string();
        loop {
            out.attempts += 1;
            if !draws.fails(fail_per_mille) {
                h.decide("tool", &rid, Signals::OK)?;
                out.succeeded += 1;
                break;
            }
            let d = h.decide("tool", &rid, Signals::status(true, 503))?;
            if !d.is_retry() {
                break;
            }
        }
    }
    Ok(out)
}
