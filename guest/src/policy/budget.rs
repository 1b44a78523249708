//! Retry budgets per tool (issue 6 §2): a token bucket that bounds retries to
//! a share of the tool's recent successes, with a floor for low-traffic tools.
//!
//! Each success of the tool deposits `percent / 100` of a token; each retry
//! takes one whole token; the bucket also refills at `min_per_sec` tokens a
//! second and holds at most `max(10, 10 · min_per_sec)` tokens (the burst),
//! starting full. When an upstream fails every call, successes stop and the
//! bucket drains: retries fall to the floor rate, so total attempts approach
//! the first attempts (load amplification ~1×). Under independent failures
//! at rate p, retries per success are about p / (1 - p), so a `percent` above
//! that keeps every retry (e.g. 34 % covers p = 20 % with max_retries 3).
//! Counting successes rather than calls is what makes both hold: retries
//! themselves never earn tokens. (After the "retry budget" of Finagle and the
//! AWS SDKs' retry quota.) Tokens are kept in thousandths, integers only.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// Tools with their own bucket; beyond, the rest share one (memory bound:
/// tool names come from the gateway, but nothing stops a client inventing
/// them).
pub const MAX_BUDGET_TOOLS: usize = 4096;
const MILLI: u64 = 1000;

/// A validated budget setting (part of a tool's policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Share of a token each success deposits, in percent (1..=1000).
    pub percent: u32,
    /// Tokens per second refilled regardless of traffic (0..=1000).
    pub min_per_sec: u32,
}

impl RetryBudget {
    fn cap_milli(self) -> u64 {
        u64::from(self.min_per_sec.max(1)) * 10 * MILLI
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(b: RetryBudget, now_ms: u64) -> Self {
        Self {
            milli: b.cap_milli(),
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, b: RetryBudget, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // min_per_sec tokens a second = min_per_sec thousandths a millisecond.
        let earned = elapsed.saturating_mul(u64::from(b.min_per_sec));
        self.milli = self.milli.saturating_add(earned).min(b.cap_milli());
        self.last_ms = self.last_ms.max(now_ms);
    }
}

/// The buckets of every tool with a budget.
#[derive(Default)]
pub struct Budgets {
    /// Sorted by tool name (binary search).
    tools: Vec<(Box<str>, Bucket)>,
    /// Shared by tools beyond [`MAX_BUDGET_TOOLS`].
    overflow: Option<Bucket>,
}

impl Budgets {
    fn bucket(&mut self, tool: &str, b: RetryBudget, now_ms: u64) -> &mut Bucket {
        match self.tools.binary_search_by(|(t, _)| (**t).cmp(tool)) {
            Ok(i) => &mut self.tools[i].1,
            Err(_) if self.tools.len() >= MAX_BUDGET_TOOLS => {
                self.overflow.get_or_insert_with(|| Bucket::full(b, now_ms))
            }
            Err(i) => {
                self.tools
                    .insert(i, (Box::from(tool), Bucket::full(b, now_ms)));
                &mut self.tools[i].1
            }
        }
    }

    /// A success of `tool`: deposit its share of a token.
    pub fn deposit(&mut self, tool: &str, b: RetryBudget, now_ms: u64) {
        let bucket = self.bucket(tool, b, now_ms);
        bucket.refill(b, now_ms);
        bucket.milli = bucket
            .milli
            .saturating_add(u64::from(b.percent) * MILLI / 100)
            .min(b.cap_milli());
    }

    /// A retry of `tool`: take a token if there is one.
    pub fn try_withdraw(&mut self, tool: &str, b: RetryBudget, now_ms: u64) -> bool {
        let bucket = self.bucket(tool, b, now_ms);
        bucket.refill(b, now_ms);
        if bucket.milli >= MILLI {
            bucket.milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// Tokens left for `tool` (whole), for tests and inspection.
    pub fn tokens(&mut self, tool: &str, b: RetryBudget, now_ms: u64) -> u64 {
        let bucket = self.bucket(tool, b, now_ms);
        bucket.refill(b, now_ms);
        bucket.milli / MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: RetryBudget = RetryBudget {
        percent: 50,
        min_per_sec: 1,
    };

    #[test]
    fn test_budget_starts_full_drains_and_refills_at_the_floor() {
        let mut bs = Budgets::default();
        for _ in 0..10 {
            assert!(bs.try_withdraw("t", B, 0));
        }
        assert!(!bs.try_withdraw("t", B, 0));
        assert!(!bs.try_withdraw("t", B, 999));
        assert!(bs.try_withdraw("t", B, 1000), "one token a second");
        assert!(!bs.try_withdraw("t", B, 1000));
        // Other tools have their own bucket.
        assert!(bs.try_withdraw("u", B, 1000));
    }

    #[test]
    fn test_budget_successes_deposit_their_share_up_to_the_cap() {
        let mut bs = Budgets::default();
        for _ in 0..10 {
            bs.try_withdraw("t", B, 0);
        }
        bs.deposit("t", B, 0);
        assert!(!bs.try_withdraw("t", B, 0), "half a token");
        bs.deposit("t", B, 0);
        assert!(bs.try_withdraw("t", B, 0));
        for _ in 0..100 {
            bs.deposit("t", B, 0);
        }
        assert_eq!(bs.tokens("t", B, 0), 10, "capped at the burst");
    }

    #[test]
    fn test_budget_overflow_tools_share_one_bucket() {
        let mut bs = Budgets::default();
        for i in 0..MAX_BUDGET_TOOLS {
            bs.deposit(&alloc::format!("t{i}"), B, 0);
        }
        for _ in 0..10 {
            assert!(bs.try_withdraw("extra-a", B, 0));
        }
        assert!(!bs.try_withdraw("extra-b", B, 0));
        assert_eq!(bs.tools.len(), MAX_BUDGET_TOOLS);
    }
}
