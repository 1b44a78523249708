//! Retry budgets per tool (issue 6 §2): a token bucket that bounds retries to
//! a share of the tool's recent successes, with a floor for low-traffic tools.
//! One bucket per (policy, gateway context, tool, identity): two contexts or
//! two identities never spend each other's retries (issue 23 §5).
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
use core::cmp::Ordering;

use super::key::{KeyParts, PolicyId};

/// The most buckets kept (memory bound: tool names and identities come
/// from the gateway, but nothing stops clients inventing them). A new bucket
/// beyond it first drops every bucket that is full again (losslessly: a
/// dropped bucket comes back full), else the least recently used one (which
/// then comes back full: a refill for its owner, never a charge on another).
pub const MAX_BUDGET_BUCKETS: usize = 4096;
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
    /// The setting it was last used under (its cap and floor), to tell
    /// whether it is full again without its policy at hand.
    budget: RetryBudget,
}

impl Bucket {
    fn full(b: RetryBudget, now_ms: u64) -> Self {
        Self {
            milli: b.cap_milli(),
            last_ms: now_ms,
            budget: b,
        }
    }

    fn refill(&mut self, b: RetryBudget, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // min_per_sec tokens a second = min_per_sec thousandths a millisecond.
        let earned = elapsed.saturating_mul(u64::from(b.min_per_sec));
        self.milli = self.milli.saturating_add(earned).min(b.cap_milli());
        self.last_ms = self.last_ms.max(now_ms);
        self.budget = b;
    }

    /// Whether it would be full at `now_ms`: dropping it changes no decision.
    fn is_full_at(&self, now_ms: u64) -> bool {
        let b = self.budget;
        let earned = now_ms
            .saturating_sub(self.last_ms)
            .saturating_mul(u64::from(b.min_per_sec));
        self.milli.saturating_add(earned) >= b.cap_milli()
    }
}

/// One bucket's owner: the policy, and the key's tenant, server, tool and
/// identity.
struct Owner {
    policy: PolicyId,
    parts: [Box<str>; 4],
}

impl Owner {
    fn new(policy: PolicyId, key: &KeyParts<'_>) -> Self {
        Self {
            policy,
            parts: [key.tenant, key.server, key.tool, key.identity].map(Box::from),
        }
    }

    fn order(&self, policy: PolicyId, key: &KeyParts<'_>) -> Ordering {
        let [tenant, server, tool, identity] = &self.parts;
        (self.policy, &**tenant, &**server, &**tool, &**identity).cmp(&(
            policy,
            key.tenant,
            key.server,
            key.tool,
            key.identity,
        ))
    }
}

/// The buckets of every (policy, context, tool, identity) with a budget.
pub struct Budgets {
    /// Sorted by owner (binary search); at most [`MAX_BUDGET_BUCKETS`].
    buckets: Vec<(Owner, Bucket)>,
    /// Bytes counted for the buckets (their owners' text, their place in the list), and
    /// their bound: a long identity or tool name is up to 1 KiB of UTF-8 each.
    bytes: u64,
    max_bytes: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            buckets: Vec::new(),
            bytes: 0,
            max_bytes: u64::MAX,
        }
    }
}

/// Bytes a bucket is counted for besides its owner's text.
const BUCKET_BYTES: u64 = 2 * core::mem::size_of::<(Owner, Bucket)>() as u64 + 4 * 16;

impl Owner {
    fn bytes(&self) -> u64 {
        BUCKET_BYTES + self.parts.iter().map(|p| p.len() as u64).sum::<u64>()
    }
}

impl Budgets {
    /// Bound the bytes the buckets are counted for (see [`Budgets::bucket`]).
    pub fn set_max_bytes(&mut self, bytes: u64) {
        self.max_bytes = bytes;
    }

    fn bucket(
        &mut self,
        policy: PolicyId,
        key: &KeyParts<'_>,
        b: RetryBudget,
        now_ms: u64,
    ) -> &mut Bucket {
        let find = |buckets: &[(Owner, Bucket)]| {
            buckets.binary_search_by(|(owner, _)| owner.order(policy, key))
        };
        if let Ok(i) = find(&self.buckets) {
            return &mut self.buckets[i].1;
        }
        let owner = Owner::new(policy, key);
        let need = owner.bytes();
        while !self.buckets.is_empty()
            && (self.buckets.len() >= MAX_BUDGET_BUCKETS
                || self.bytes.saturating_add(need) > self.max_bytes)
        {
            self.make_room(now_ms);
        }
        let i = find(&self.buckets).unwrap_err();
        self.bytes += need;
        self.buckets.insert(i, (owner, Bucket::full(b, now_ms)));
        &mut self.buckets[i].1
    }

    /// Room for one more bucket: drop one that is full again (losslessly), else the least
    /// recently used. One at a time: a linear look, only at the bound, and never a mass drop
    /// (freeing thousands of owners in one call would burn a call's fuel).
    fn make_room(&mut self, now_ms: u64) {
        let victim = self
            .buckets
            .iter()
            .position(|(_, bucket)| bucket.is_full_at(now_ms))
            .or_else(|| (0..self.buckets.len()).min_by_key(|&i| self.buckets[i].1.last_ms));
        if let Some(i) = victim {
            let (owner, _) = self.buckets.remove(i);
            self.bytes -= owner.bytes();
        }
    }

    /// A success of `key`'s tool under `policy`: deposit its share of a
    /// token (the request id does not matter).
    pub fn deposit(&mut self, policy: PolicyId, key: &KeyParts<'_>, b: RetryBudget, now_ms: u64) {
        let bucket = self.bucket(policy, key, b, now_ms);
        bucket.refill(b, now_ms);
        bucket.milli = bucket
            .milli
            .saturating_add(u64::from(b.percent) * MILLI / 100)
            .min(b.cap_milli());
    }

    /// A retry of `key`'s tool under `policy`: take a token if there is one.
    pub fn try_withdraw(
        &mut self,
        policy: PolicyId,
        key: &KeyParts<'_>,
        b: RetryBudget,
        now_ms: u64,
    ) -> bool {
        let bucket = self.bucket(policy, key, b, now_ms);
        bucket.refill(b, now_ms);
        if bucket.milli >= MILLI {
            bucket.milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// Tokens left for `key`'s bucket (whole), for tests and inspection.
    pub fn tokens(
        &mut self,
        policy: PolicyId,
        key: &KeyParts<'_>,
        b: RetryBudget,
        now_ms: u64,
    ) -> u64 {
        let bucket = self.bucket(policy, key, b, now_ms);
        bucket.refill(b, now_ms);
        bucket.milli / MILLI
    }

    /// Forget every bucket of `policy` (released): they are together, the buckets being
    /// ordered by policy first.
    pub fn remove_policy(&mut self, policy: PolicyId) {
        let from = self.buckets.partition_point(|(o, _)| o.policy < policy);
        let to = self.buckets.partition_point(|(o, _)| o.policy <= policy);
        for (owner, _) in self.buckets.drain(from..to) {
            self.bytes -= owner.bytes();
        }
    }

    /// Every bucket as (policy, key with an empty request id, tokens in
    /// thousandths, last refill ms), in owner order: by policy id first (for
    /// snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (PolicyId, KeyParts<'_>, u64, u64)> + '_ {
        self.buckets.iter().map(|(owner, bucket)| {
            let [tenant, server, tool, identity] = &owner.parts;
            let key = KeyParts {
                tenant,
                server,
                identity,
                tool,
                request_id: "",
            };
            (owner.policy, key, bucket.milli, bucket.last_ms)
        })
    }

    /// Put a bucket back from a snapshot (tokens clamped to the cap).
    pub fn restore(
        &mut self,
        policy: PolicyId,
        key: &KeyParts<'_>,
        b: RetryBudget,
        milli: u64,
        last_ms: u64,
    ) {
        let bucket = self.bucket(policy, key, b, last_ms);
        bucket.milli = milli.min(b.cap_milli());
        bucket.last_ms = last_ms;
        bucket.budget = b;
    }

    /// Buckets kept (for tests and inspection).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tool`'s key for `identity` in the default context.
    fn k<'a>(tool: &'a str, identity: &'a str) -> KeyParts<'a> {
        KeyParts {
            identity,
            ..KeyParts::new(tool, "")
        }
    }

    const B: RetryBudget = RetryBudget {
        percent: 50,
        min_per_sec: 1,
    };

    #[test]
    fn test_budget_starts_full_drains_and_refills_at_the_floor() {
        let mut bs = Budgets::default();
        for _ in 0..10 {
            assert!(bs.try_withdraw(0, &k("t", ""), B, 0));
        }
        assert!(!bs.try_withdraw(0, &k("t", ""), B, 0));
        assert!(!bs.try_withdraw(0, &k("t", ""), B, 999));
        assert!(
            bs.try_withdraw(0, &k("t", ""), B, 1000),
            "one token a second"
        );
        assert!(!bs.try_withdraw(0, &k("t", ""), B, 1000));
        // Other tools have their own bucket.
        assert!(bs.try_withdraw(0, &k("u", ""), B, 1000));
    }

    #[test]
    fn test_budget_identities_have_their_own_buckets() {
        let mut bs = Budgets::default();
        for _ in 0..10 {
            assert!(bs.try_withdraw(0, &k("t", "acme"), B, 0));
        }
        assert!(
            !bs.try_withdraw(0, &k("t", "acme"), B, 0),
            "acme spent its own"
        );
        assert!(
            bs.try_withdraw(0, &k("t", "globex"), B, 0),
            "globex's is untouched"
        );
        assert!(
            bs.try_withdraw(0, &k("t", ""), B, 0),
            "no identity: the tool's bucket"
        );
        assert_eq!(bs.tokens(0, &k("t", "globex"), B, 0), 9);
    }

    #[test]
    fn test_budget_successes_deposit_their_share_up_to_the_cap() {
        let mut bs = Budgets::default();
        for _ in 0..10 {
            bs.try_withdraw(0, &k("t", ""), B, 0);
        }
        bs.deposit(0, &k("t", ""), B, 0);
        assert!(!bs.try_withdraw(0, &k("t", ""), B, 0), "half a token");
        bs.deposit(0, &k("t", ""), B, 0);
        assert!(bs.try_withdraw(0, &k("t", ""), B, 0));
        for _ in 0..100 {
            bs.deposit(0, &k("t", ""), B, 0);
        }
        assert_eq!(bs.tokens(0, &k("t", ""), B, 0), 10, "capped at the burst");
    }

    #[test]
    fn test_budget_contexts_and_policies_have_their_own_buckets() {
        let mut bs = Budgets::default();
        let team = |tenant| KeyParts {
            tenant,
            ..k("t", "")
        };
        for _ in 0..10 {
            assert!(bs.try_withdraw(0, &team("a"), B, 0));
        }
        assert!(!bs.try_withdraw(0, &team("a"), B, 0));
        assert!(bs.try_withdraw(0, &team("b"), B, 0), "another context");
        assert!(bs.try_withdraw(1, &team("a"), B, 0), "another policy");
        bs.remove_policy(0);
        assert_eq!(bs.len(), 1);
        assert_eq!(bs.tokens(0, &team("a"), B, 0), 10, "released: full again");
    }

    #[test]
    fn test_budget_bound_drops_full_buckets_first() {
        let mut bs = Budgets::default();
        // A drained victim, then hostile identities up to the bound (full buckets).
        for _ in 0..10 {
            bs.try_withdraw(0, &k("t", "victim"), B, 0);
        }
        for i in 1..MAX_BUDGET_BUCKETS {
            bs.deposit(0, &k("t", &alloc::format!("x{i}")), B, 0);
        }
        assert_eq!(bs.len(), MAX_BUDGET_BUCKETS);
        assert!(bs.try_withdraw(0, &k("t", "newcomer"), B, 0));
        assert_eq!(
            bs.len(),
            MAX_BUDGET_BUCKETS,
            "one full bucket went, losslessly"
        );
        assert!(
            !bs.try_withdraw(0, &k("t", "victim"), B, 0),
            "the victim is still drained"
        );
    }

    #[test]
    fn test_budget_bytes_are_bounded() {
        let mut bs = Budgets::default();
        bs.set_max_bytes(64 * 1024);
        let long = "u".repeat(1000);
        for i in 0..1000 {
            let identity = alloc::format!("{i}{long}");
            bs.try_withdraw(0, &k("t", &identity), B, i);
            assert!(bs.bytes <= bs.max_bytes, "{}", bs.bytes);
        }
        assert!(bs.len() < 64, "{}", bs.len());
        // Releasing a policy gives its bytes back.
        bs.remove_policy(0);
        assert_eq!((bs.len(), bs.bytes), (0, 0));
    }

    #[test]
    fn test_budget_bound_evicts_the_least_recently_used() {
        let mut bs = Budgets::default();
        let floorless = RetryBudget {
            percent: 50,
            min_per_sec: 0,
        };
        for i in 0..MAX_BUDGET_BUCKETS as u64 {
            bs.try_withdraw(0, &k("t", &alloc::format!("x{i}")), floorless, i);
        }
        assert!(bs.try_withdraw(0, &k("t", "newcomer"), floorless, 1 << 20));
        assert_eq!(bs.len(), MAX_BUDGET_BUCKETS);
        // x0 was the least recently used: it went, and comes back full (10 tokens).
        assert_eq!(bs.tokens(0, &k("t", "x0"), floorless, 1 << 20), 10);
        assert_eq!(
            bs.tokens(0, &k("t", "x2"), floorless, 1 << 20),
            9,
            "x2 kept"
        );
    }
}
