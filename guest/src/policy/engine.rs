//! The engine: configuration + retry state + jitter source, and the one
//! decision function the gateway calls on every tool result.

use alloc::string::String;
use fastrand::Rng;

use super::backoff;
use super::budget::Budgets;
use super::classify::{classify_with, is_throttled, may_repeat, Classification, Hints, Signals};
use super::config::{Config, Policy};
use super::state::{Entry, Handle, StateTable, NO_HANDLE};

/// [`Engine::is_text_free`] under `config`.
fn text_free(config: &Config) -> bool {
    !config.any_text_check() && !config.any_budget()
}

/// No texts (a result decided on its signals alone).
const NO_TEXT: Option<&[String]> = None;

/// How many expired entries one decision may sweep. Bounds the latency of a
/// single call after a burst of entries expires together; the backlog drains
/// over the following calls (each call adds at most one entry, so it does).
const SWEEP_PER_CALL: usize = 16;

/// Why a decision came out the way it did (ordinals are the WIT enum's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Not a failure: state cleared.
    Success = 0,
    /// A failure within budget: retry after the delay.
    Retry = 1,
    /// A failure beyond the budget: give up, state cleared.
    Exhausted = 2,
    /// A failure signal that is not retriable (e.g. `isError` with a status
    /// code outside `retry_on_status`): no retry, state cleared. The native
    /// plugin reports these as plain successes (count 0); only the reason
    /// differs.
    NonRetryable = 3,
    /// A retriable failure refused because the tool's retry budget is spent.
    Budget = 4,
    /// A retriable failure refused because its delay would cross the
    /// `(tool, request)` deadline (`max_total_delay_ms`); state cleared.
    Deadline = 5,
    /// A retriable failure refused because the server's delay hint exceeds
    /// what the policy allows.
    RetryAfter = 6,
    /// A retriable failure of a non-idempotent tool that the policy's
    /// `non_idempotent_retries` does not retry; state cleared.
    NonIdempotent = 7,
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Delay before the retry (ms); 0 = do not retry. Never 0 on a retry.
    pub delay_ms: u64,
    /// Consecutive failures after this result (0 on success).
    pub failures: u32,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    const SUCCESS: Self = Self {
        delay_ms: 0,
        failures: 0,
        reason: Reason::Success,
    };
    const NON_RETRYABLE: Self = Self {
        delay_ms: 0,
        failures: 0,
        reason: Reason::NonRetryable,
    };
}

/// What [`Engine::decide`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decided; state updated.
    Decided(Decision),
    /// Depends on the text content, which was not supplied; nothing changed.
    NeedText,
}

/// Configuration, retry state and jitter source of one instance.
pub struct Engine {
    config: Config,
    state: StateTable,
    budgets: Budgets,
    rng: Rng,
    /// [`Engine::is_text_free`] of `config`, worked out when it is set: every
    /// decision reports it, and it looks at every override.
    text_free: bool,
}

impl Engine {
    /// An engine with the default configuration. `seed` keys the state
    /// table's hash function and seeds jitter.
    pub fn new(seed: (u64, u64)) -> Self {
        Self {
            config: Config::default(),
            state: StateTable::new(seed, Config::default().max_state_entries() as usize),
            budgets: Budgets::default(),
            // Jitter must not be derivable from the hash key: mix the halves.
            rng: Rng::with_seed(seed.0.rotate_left(32) ^ seed.1 ^ 0x9e37_79b9_7f4a_7c15),
            text_free: text_free(&Config::default()),
        }
    }

    /// Replace the configuration; live state is kept (trimmed to a smaller
    /// `max_state_entries`, oldest first; re-indexed for a new bound).
    pub fn configure(&mut self, config: Config) {
        self.state.set_capacity(config.max_state_entries() as usize);
        self.text_free = text_free(&config);
        self.config = config;
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The effective policy of `tool`.
    pub fn policy_for(&self, tool: &str) -> &Policy {
        self.config.policy_for(tool)
    }

    /// Decide on one tool result of `(tool, request_id)` at `now_ms`.
    ///
    /// The n-th consecutive failure within `max_retries` gets a retry after
    /// `min(base · 2^(n-1), max)` (jittered when enabled); the failure after
    /// the budget gets no retry and clears the key, so the next failure starts
    /// a fresh budget; a non-failure clears the key. Failures older than the
    /// state TTL are forgotten.
    pub fn decide<T: AsRef<str>>(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        self.decide_with_hints(tool, request_id, signals, Hints::NONE, texts, now_ms)
    }

    /// [`Engine::decide`] with the host's [`Hints`] (safe classification).
    pub fn decide_with_hints<T: AsRef<str>>(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        self.decide_naming(tool, request_id, signals, hints, texts, now_ms, NO_HANDLE)
    }

    /// Decide on a result of the key `handle` names (see
    /// [`super::state::Handle`]), exactly as [`Engine::decide_with_hints`] would with
    /// that key; `None` when the handle names no key (never given, or the key's
    /// state has gone since: TTL, capacity, a decision that cleared it).
    pub fn decide_held(
        &mut self,
        handle: Handle,
        signals: Signals,
        hints: Hints,
        now_ms: u64,
    ) -> Option<Outcome> {
        // Copied out of the table, which the decision then updates (at most
        // `HANDLE_KEY_MAX_BYTES`: longer keys are never named).
        let (hash, tool, request_id) = self.state.key_of(handle)?;
        let split = tool.len();
        let mut key = String::with_capacity(split + request_id.len());
        key.push_str(tool);
        key.push_str(request_id);
        let (tool, request_id) = key.split_at_checked(split)?;
        Some(self.decide_by_hash(
            hash, tool, request_id, signals, hints, NO_TEXT, now_ms, handle,
        ))
    }

    /// [`Engine::decide_with_hints`], naming the key `handle` when it keeps state;
    /// otherwise (and for a key too long to name) `handle` names nothing
    /// afterwards. [`Outcome::NeedText`] changes nothing, handles included.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_naming<T: AsRef<str>>(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
        handle: Handle,
    ) -> Outcome {
        let hash = self.state.key_hash(tool, request_id);
        self.decide_by_hash(
            hash, tool, request_id, signals, hints, texts, now_ms, handle,
        )
    }

    /// [`Engine::decide_naming`] for a key of [`StateTable::key_hash`] `hash`: the
    /// key is hashed once per decision, and not at all when the engine already
    /// knows its hash (`decide_held`).
    #[allow(clippy::too_many_arguments)]
    fn decide_by_hash<T: AsRef<str>>(
        &mut self,
        hash: u32,
        tool: &str,
        request_id: &str,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
        handle: Handle,
    ) -> Outcome {
        let policy = self.config.policy_for(tool);
        let class = classify_with(signals, hints, policy, texts);
        if class == Classification::NeedText {
            return Outcome::NeedText;
        }
        let ttl = self.config.state_ttl_ms();
        self.state.sweep(now_ms, ttl, SWEEP_PER_CALL);
        match class {
            Classification::NotFailure => {
                self.state.remove_hashed(hash, tool, request_id);
                self.state.release(handle);
                if let Some(budget) = policy.retry_budget() {
                    let identity = self.config.key_scope().identity(request_id);
                    self.budgets.deposit(tool, identity, budget, now_ms);
                }
                return Outcome::Decided(Decision::SUCCESS);
            }
            Classification::NonRetryable => {
                self.state.remove_hashed(hash, tool, request_id);
                self.state.release(handle);
                return Outcome::Decided(Decision::NON_RETRYABLE);
            }
            Classification::Failure | Classification::NeedText => {}
        }

        let (max_retries, jitter, deadline) = (
            policy.max_retries,
            policy.jitter_kind(),
            policy.max_total_delay_ms,
        );
        // The failure's class picks the curve: throttled (the server refused
        // the load: a 429, or any failure carrying a delay hint) or transient.
        let curve = policy.curve(is_throttled(signals, hints));
        // A server delay hint, clamped, when this tool honours them.
        let floor = hints
            .retry_after_ms
            .filter(|_| policy.honor_retry_after)
            .map(|ms| u64::from(ms).min(policy.max_retry_after_ms));
        let entry = self
            .state
            .record_failure_hashed(hash, tool, request_id, now_ms, ttl, handle);
        let failures = entry.failures;
        if failures <= max_retries {
            if !may_repeat(signals, hints, policy) {
                // Running a non-idempotent tool again may repeat what the
                // failed call already did: give up, as on exhaustion.
                self.state.remove_hashed(hash, tool, request_id);
                return Outcome::Decided(Decision {
                    delay_ms: 0,
                    failures,
                    reason: Reason::NonIdempotent,
                });
            }
            let delay_ms = match floor {
                None => backoff::delay_ms(
                    curve,
                    failures - 1,
                    jitter,
                    u64::from(entry.last_delay_ms),
                    &mut self.rng,
                ),
                Some(floor) => {
                    let before = u64::from(entry.total_delay_ms);
                    if deadline.is_some_and(|limit| before.saturating_add(floor) > limit) {
                        // The server asks for a wait that ends past the deadline.
                        self.state.remove_hashed(hash, tool, request_id);
                        return Outcome::Decided(Decision {
                            delay_ms: 0,
                            failures,
                            reason: Reason::RetryAfter,
                        });
                    }
                    // The hint is a floor; the jitter spreads clients above it.
                    let spread = backoff::spread_ms(curve, failures - 1, jitter, &mut self.rng);
                    floor.saturating_add(spread).max(1)
                }
            };
            let total = u64::from(entry.total_delay_ms).saturating_add(delay_ms);
            if deadline.is_some_and(|limit| total > limit) {
                // This retry would end past the key's deadline: give up now,
                // and clear the key as exhaustion does.
                self.state.remove_hashed(hash, tool, request_id);
                return Outcome::Decided(Decision {
                    delay_ms: 0,
                    failures,
                    reason: Reason::Deadline,
                });
            }
            entry.last_delay_ms = u32::try_from(delay_ms).unwrap_or(u32::MAX);
            entry.total_delay_ms = u32::try_from(total).unwrap_or(u32::MAX);
            if let Some(budget) = policy.retry_budget() {
                // Per (tool, identity) under key_scope tenant/user: one tenant's
                // traffic cannot spend another's retries (issue 16).
                let identity = self.config.key_scope().identity(request_id);
                if !self.budgets.try_withdraw(tool, identity, budget, now_ms) {
                    // The tool's retries are spent: give up, as on exhaustion.
                    self.state.remove_hashed(hash, tool, request_id);
                    return Outcome::Decided(Decision {
                        delay_ms: 0,
                        failures,
                        reason: Reason::Budget,
                    });
                }
            }
            Outcome::Decided(Decision {
                delay_ms,
                failures,
                reason: Reason::Retry,
            })
        } else {
            self.state.remove_hashed(hash, tool, request_id);
            Outcome::Decided(Decision {
                delay_ms: 0,
                failures,
                reason: Reason::Exhausted,
            })
        }
    }

    /// True when a result with no failure signal is, for any tool, a success that
    /// changes nothing: no retry state is held and no policy inspects text
    /// content. The host may then answer such results without calling in (the
    /// `idle` bit of the wire format); any call can end it.
    pub fn is_idle(&self) -> bool {
        self.state.is_empty() && self.is_text_free()
    }

    /// True when, for every tool, a result with no failure signal is a success
    /// that changes nothing for a key without state: no policy inspects text
    /// content or keeps a retry budget (which counts successes). The
    /// `text-free` bit of the wire format.
    pub fn is_text_free(&self) -> bool {
        self.text_free
    }

    /// Entries held (expired ones not yet swept included).
    pub fn state_count(&self) -> usize {
        self.state.len()
    }

    /// Remove every expired entry; returns how many went.
    pub fn evict_expired(&mut self, now_ms: u64) -> usize {
        self.state
            .evict_all_expired(now_ms, self.config.state_ttl_ms())
    }

    /// Put an entry restored from another instance's state as the newest.
    pub fn restore_entry(&mut self, tool: &str, request_id: &str, entry: Entry) {
        self.state.put(tool, request_id, entry);
    }

    /// Read access to the state table (inspection, export).
    pub fn state(&self) -> &StateTable {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{engine, FAIL, NO_TEXT, OK};
    use crate::policy::Hints;

    fn delays(
        e: &mut Engine,
        tool: &str,
        rid: &str,
        n: usize,
        now: u64,
    ) -> Vec<(u64, u32, Reason)> {
        (0..n)
            .map(|_| match e.decide(tool, rid, FAIL, NO_TEXT, now) {
                Outcome::Decided(d) => (d.delay_ms, d.failures, d.reason),
                Outcome::NeedText => panic!("unexpected NeedText"),
            })
            .collect()
    }

    #[test]
    fn test_engine_backoff_then_exhausted_then_fresh_budget() {
        let mut e = engine(r#"{"jitter": false, "max_retries": 3}"#);
        use Reason::*;
        assert_eq!(
            delays(&mut e, "t", "r", 5, 0),
            vec![
                (200, 1, Retry),
                (400, 2, Retry),
                (800, 3, Retry),
                (0, 4, Exhausted),
                (200, 1, Retry)
            ]
        );
    }

    #[test]
    fn test_engine_success_clears() {
        let mut e = engine(r#"{"jitter": false}"#);
        delays(&mut e, "t", "r", 1, 0);
        assert_eq!(
            e.decide("t", "r", OK, NO_TEXT, 0),
            Outcome::Decided(Decision::SUCCESS)
        );
        assert_eq!(e.state_count(), 0);
        assert_eq!(delays(&mut e, "t", "r", 1, 0)[0].0, 200);
    }

    #[test]
    fn test_engine_max_retries_zero_never_retries() {
        let mut e = engine(r#"{"max_retries": 0}"#);
        assert_eq!(
            delays(&mut e, "t", "r", 2, 0),
            vec![(0, 1, Reason::Exhausted); 2]
        );
        assert_eq!(e.state_count(), 0);
    }

    #[test]
    fn test_engine_override_applies_per_tool() {
        let mut e = engine(
            r#"{"jitter": false, "tool_overrides": {"slow": {"backoff_base_ms": 1000, "max_retries": 1}}}"#,
        );
        assert_eq!(
            delays(&mut e, "slow", "r", 2, 0)[0],
            (1000, 1, Reason::Retry)
        );
        assert_eq!(
            delays(&mut e, "fast", "r", 1, 0)[0],
            (200, 1, Reason::Retry)
        );
    }

    #[test]
    fn test_engine_need_text_changes_nothing() {
        let mut e = engine(r#"{"check_text_content": true, "jitter": false}"#);
        delays(&mut e, "t", "r", 1, 0);
        assert_eq!(e.decide("t", "r", OK, NO_TEXT, 0), Outcome::NeedText);
        assert_eq!(e.state_count(), 1);
        let texts = [r#"{"status_code": 502}"#];
        match e.decide("t", "r", OK, Some(&texts[..]), 0) {
            Outcome::Decided(d) => assert_eq!((d.delay_ms, d.failures), (400, 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_engine_idle_only_without_state_and_text_checks() {
        let mut e = engine("{}");
        assert!(e.is_idle());
        delays(&mut e, "t", "r", 1, 0);
        assert!(!e.is_idle());
        e.decide("t", "r", OK, NO_TEXT, 0);
        assert!(e.is_idle());
        let e = engine(r#"{"tool_overrides": {"x": {"check_text_content": true}}}"#);
        assert!(!e.is_idle());
    }

    #[test]
    fn test_engine_non_retryable_clears_like_success() {
        let mut e = engine(r#"{"jitter": false}"#);
        delays(&mut e, "t", "r", 1, 0);
        let not_retriable = Signals {
            is_error: true,
            structured: true,
            structured_is_error: false,
            status: Some(404),
        };
        assert_eq!(
            e.decide("t", "r", not_retriable, NO_TEXT, 0),
            Outcome::Decided(Decision::NON_RETRYABLE)
        );
        assert_eq!(e.state_count(), 0);
    }

    #[test]
    fn test_engine_deadline_refuses_the_retry_that_would_cross_it() {
        // 200 + 400 = 600 fits 700; + 800 would not.
        let mut e = engine(r#"{"jitter": false, "max_retries": 5, "max_total_delay_ms": 700}"#);
        use Reason::*;
        assert_eq!(
            delays(&mut e, "t", "r", 4, 0),
            vec![
                (200, 1, Retry),
                (400, 2, Retry),
                (0, 3, Deadline),
                (200, 1, Retry)
            ]
        );
        // Exactly at the deadline is allowed.
        let mut e = engine(r#"{"jitter": false, "max_retries": 5, "max_total_delay_ms": 600}"#);
        assert_eq!(
            delays(&mut e, "t", "r", 3, 0),
            vec![(200, 1, Retry), (400, 2, Retry), (0, 3, Deadline)]
        );
        assert_eq!(e.state_count(), 0);
        // A success resets the sum; a deadline below the first delay never retries.
        let mut e = engine(
            r#"{"jitter": false, "max_total_delay_ms": 250, "tool_overrides": {"x": {"max_total_delay_ms": 100}}}"#,
        );
        delays(&mut e, "t", "r", 1, 0);
        e.decide("t", "r", OK, NO_TEXT, 0);
        assert_eq!(delays(&mut e, "t", "r", 1, 0), vec![(200, 1, Retry)]);
        assert_eq!(delays(&mut e, "x", "r", 1, 0), vec![(0, 1, Deadline)]);
    }

    #[test]
    fn test_engine_throttled_failures_take_the_throttle_curve() {
        let mut e = engine(
            r#"{"jitter": false, "max_retries": 4, "backoff": "linear",
                "throttle_backoff_base_ms": 1000, "throttle_max_backoff_ms": 2500}"#,
        );
        let fail = |status| Signals {
            status: Some(status),
            ..FAIL
        };
        let mut decide = |rid: &str, signals, hints| match e
            .decide_with_hints("t", rid, signals, hints, NO_TEXT, 0)
        {
            Outcome::Decided(d) => d.delay_ms,
            Outcome::NeedText => panic!("need text"),
        };
        // 429: throttled, linear from 1000 capped at 2500.
        let throttled: Vec<u64> = (0..4)
            .map(|_| decide("a", fail(429), Hints::NONE))
            .collect();
        assert_eq!(throttled, vec![1000, 2000, 2500, 2500]);
        // 503 and a bare error: transient, linear from 200.
        assert_eq!(decide("b", fail(503), Hints::NONE), 200);
        assert_eq!(decide("b", FAIL, Hints::NONE), 400);
        // A delay hint makes any failure throttled (here not honoured as a floor).
        let hint = Hints {
            retry_after_ms: Some(5),
            ..Hints::NONE
        };
        assert_eq!(decide("c", fail(503), hint), 1000);
        // The count is the key's, whatever the class of each failure.
        assert_eq!(decide("c", fail(503), Hints::NONE), 400);
        assert_eq!(decide("c", fail(429), Hints::NONE), 2500);
    }

    /// `non_idempotent_retries` against every kind of failure: which are
    /// retried for a tool the annotations call idempotent and for one they do
    /// not, and what a refusal does to the key.
    #[test]
    fn test_engine_non_idempotent_retries() {
        let status = |code| Signals {
            status: Some(code),
            ..FAIL
        };
        let hint = Hints {
            retry_after_ms: Some(1000),
            ..Hints::NONE
        };
        let timeout = Hints {
            timeout: true,
            ..Hints::NONE
        };
        let idempotent = |h: Hints| Hints {
            idempotent: true,
            ..h
        };
        // (signals, hints, retried under all / throttled / none)
        let cases = [
            (FAIL, Hints::NONE, [true, false, false]),
            (FAIL, timeout, [true, false, false]),
            (status(429), Hints::NONE, [true, true, false]),
            (status(429), hint, [true, true, false]),
            (status(503), hint, [true, true, false]),
            (status(503), Hints::NONE, [true, false, false]),
            (status(500), hint, [true, false, false]),
            (status(429), timeout, [true, false, false]),
            (FAIL, idempotent(timeout), [true, true, true]),
            (status(503), idempotent(Hints::NONE), [true, true, true]),
        ];
        for (i, mode) in ["all", "throttled", "none"].iter().enumerate() {
            let mut e = engine(&format!(
                r#"{{"jitter": false, "non_idempotent_retries": "{mode}"}}"#
            ));
            for (signals, hints, retried) in cases {
                let Outcome::Decided(d) = e.decide_with_hints("t", "r", signals, hints, NO_TEXT, 0)
                else {
                    panic!("need text")
                };
                let expected = if retried[i] {
                    (200, 1, Reason::Retry)
                } else {
                    (0, 1, Reason::NonIdempotent)
                };
                assert_eq!(
                    (d.delay_ms, d.failures, d.reason),
                    expected,
                    "{mode} {signals:?} {hints:?}"
                );
                // A refusal clears the key, as exhaustion does.
                assert_eq!(e.state_count(), usize::from(retried[i]));
                e.decide("t", "r", OK, NO_TEXT, 0);
            }
        }
    }

    #[test]
    fn test_engine_idempotent_override_beats_the_annotations() {
        let mut e = engine(
            r#"{"jitter": false, "non_idempotent_retries": "none",
                "tool_overrides": {"safe": {"idempotent": true}, "unsafe": {"idempotent": false}}}"#,
        );
        let annotated = Hints {
            idempotent: true,
            ..Hints::NONE
        };
        let mut decide =
            |tool: &str, hints| match e.decide_with_hints(tool, "r", FAIL, hints, NO_TEXT, 0) {
                Outcome::Decided(d) => d.reason,
                Outcome::NeedText => panic!("need text"),
            };
        assert_eq!(decide("safe", Hints::NONE), Reason::Retry);
        assert_eq!(decide("unsafe", annotated), Reason::NonIdempotent);
        assert_eq!(decide("other", annotated), Reason::Retry);
        assert_eq!(decide("other2", Hints::NONE), Reason::NonIdempotent);
    }

    #[test]
    fn test_engine_non_idempotent_refusal_keeps_the_count_and_spends_no_budget() {
        // Second failure of a key: a retry, then a timeout refused with the
        // count so far; the budget (one token) is untouched by the refusal.
        let mut e = engine(
            r#"{"jitter": false, "non_idempotent_retries": "throttled",
                "retry_budget_percent": 1, "retry_budget_min_per_sec": 0}"#,
        );
        let throttled = Signals {
            status: Some(429),
            ..FAIL
        };
        let timeout = Hints {
            timeout: true,
            ..Hints::NONE
        };
        let mut decide = |rid: &str, signals, hints| match e
            .decide_with_hints("t", rid, signals, hints, NO_TEXT, 0)
        {
            Outcome::Decided(d) => (d.delay_ms, d.failures, d.reason),
            Outcome::NeedText => panic!("need text"),
        };
        assert_eq!(decide("a", throttled, Hints::NONE), (200, 1, Reason::Retry));
        assert_eq!(decide("a", FAIL, timeout), (0, 2, Reason::NonIdempotent));
        // Ten tokens to start with, one spent: nine more retries, then none.
        for n in 0..9 {
            assert_eq!(
                decide(&format!("k{n}"), throttled, Hints::NONE).2,
                Reason::Retry
            );
        }
        assert_eq!(decide("z", throttled, Hints::NONE).2, Reason::Budget);
    }

    #[test]
    fn test_engine_retry_after_is_a_floor_clamped_and_opt_in() {
        let hint = |ms| Hints {
            retry_after_ms: Some(ms),
            ..Hints::NONE
        };
        let decide = |e: &mut Engine, rid: &str, h: Hints| match e
            .decide_with_hints("t", rid, FAIL, h, NO_TEXT, 0)
        {
            Outcome::Decided(d) => (d.delay_ms, d.failures, d.reason),
            Outcome::NeedText => panic!("need text"),
        };
        use Reason::*;
        let mut off = engine(r#"{"jitter": false}"#);
        assert_eq!(decide(&mut off, "r", hint(3000)), (200, 1, Retry));
        let mut on = engine(
            r#"{"jitter": false, "honor_retry_after": true, "max_retry_after_ms": 10000,
                "max_retries": 5, "max_total_delay_ms": 20000}"#,
        );
        assert_eq!(decide(&mut on, "r", hint(3000)), (3000, 1, Retry));
        assert_eq!(
            decide(&mut on, "r", hint(60_000)),
            (10_000, 2, Retry),
            "clamped"
        );
        assert_eq!(decide(&mut on, "r", hint(0)), (1, 3, Retry), "never 0");
        // 13 001 ms so far: a 10 s floor would end past 20 s.
        assert_eq!(decide(&mut on, "r", hint(9000)), (0, 4, RetryAfter));
        assert_eq!(on.state_count(), 0);
        assert_eq!(decide(&mut on, "q", Hints::NONE), (200, 1, Retry));
        // With jitter the spread goes above the floor: [floor, floor + ceiling].
        let mut jit = engine(r#"{"honor_retry_after": true}"#);
        for i in 0..200 {
            let (d, _, _) = decide(&mut jit, &i.to_string(), hint(1000));
            assert!((1000..=1200).contains(&d), "{d}");
        }
    }

    #[test]
    fn test_engine_retry_budget_refuses_when_spent_and_successes_refill() {
        let mut e = engine(
            r#"{"jitter": false, "max_retries": 1, "retry_budget_percent": 50, "retry_budget_min_per_sec": 1}"#,
        );
        use Reason::*;
        // The bucket starts with 10 tokens: ten keys get their retry.
        for k in 0..10 {
            assert_eq!(
                delays(&mut e, "t", &k.to_string(), 1, 0),
                vec![(200, 1, Retry)]
            );
        }
        assert_eq!(delays(&mut e, "t", "x", 1, 0), vec![(0, 1, Budget)]);
        assert_eq!(e.state_count(), 10, "the refused key is cleared");
        // Two successes earn one token.
        e.decide("t", "s1", OK, NO_TEXT, 0);
        e.decide("t", "s2", OK, NO_TEXT, 0);
        assert_eq!(delays(&mut e, "t", "y", 1, 0), vec![(200, 1, Retry)]);
        assert_eq!(delays(&mut e, "t", "z", 1, 0), vec![(0, 1, Budget)]);
        // Another tool has its own bucket; budgets make successes count.
        assert_eq!(delays(&mut e, "u", "y", 1, 0), vec![(200, 1, Retry)]);
        assert!(!e.is_text_free());
    }

    #[test]
    fn test_engine_retry_budget_per_tenant_under_tenant_scope() {
        // Issue 16: one engine serves every tenant; a tenant that spends its
        // budget leaves the others theirs.
        let config = r#"{"jitter": false, "max_retries": 1, "retry_budget_percent": 50,
            "retry_budget_min_per_sec": 1, "key_scope": "tenant"}"#;
        let mut e = engine(config);
        use Reason::*;
        for k in 0..10 {
            let rid = format!("4:acme{k}");
            assert_eq!(delays(&mut e, "t", &rid, 1, 0), vec![(200, 1, Retry)]);
        }
        assert_eq!(delays(&mut e, "t", "4:acmex", 1, 0), vec![(0, 1, Budget)]);
        assert_eq!(
            delays(&mut e, "t", "6:globexr", 1, 0),
            vec![(200, 1, Retry)]
        );
        // A success of acme refills acme's bucket, not globex's.
        e.decide("t", "4:acmes1", OK, NO_TEXT, 0);
        e.decide("t", "4:acmes2", OK, NO_TEXT, 0);
        assert_eq!(delays(&mut e, "t", "4:acmey", 1, 0), vec![(200, 1, Retry)]);
        // Under request scope the same keys share the tool's bucket (native).
        let mut shared = engine(&config.replace("tenant", "request"));
        for k in 0..10 {
            delays(&mut shared, "t", &format!("4:acme{k}"), 1, 0);
        }
        assert_eq!(
            delays(&mut shared, "t", "6:globexr", 1, 0),
            vec![(0, 1, Budget)]
        );
    }

    #[test]
    fn test_engine_success_path_sweeps_expired() {
        let mut e = engine(r#"{"state_ttl_ms": 100}"#);
        delays(&mut e, "t", "old", 1, 0);
        e.decide("t", "other", OK, NO_TEXT, 101);
        assert_eq!(e.state_count(), 0);
    }

    #[test]
    fn test_engine_reconfigure_keeps_and_trims_state() {
        let mut e = engine(r#"{"jitter": false}"#);
        delays(&mut e, "t", "a", 1, 0);
        delays(&mut e, "t", "b", 1, 1);
        e.configure(Config::from_json(r#"{"jitter": false, "max_state_entries": 1}"#).unwrap());
        assert_eq!(e.state_count(), 1);
        assert_eq!(delays(&mut e, "t", "b", 1, 2)[0], (400, 2, Reason::Retry));
    }

    #[test]
    fn test_engine_decide_held_matches_decide_by_key() {
        // Two engines with the same seed: one told every key, one given handles.
        let config = r#"{"max_retries": 3, "backoff_base_ms": 10, "max_backoff_ms": 70}"#;
        let (mut by_key, mut by_handle) = (engine(config), engine(config));
        let keys = [("t", "r1"), ("t", "r2"), ("search", "r1")];
        for step in 0..60u64 {
            let k = (step % 3) as usize;
            let (tool, rid) = keys[k];
            let signals = if step % 7 == 6 { OK } else { FAIL };
            let now = step * 10;
            let want = by_key.decide_with_hints(tool, rid, signals, Hints::NONE, NO_TEXT, now);
            let handle = k as u32 + 1;
            let got = match by_handle.decide_held(handle, signals, Hints::NONE, now) {
                Some(outcome) => outcome,
                // Unknown (first failure, or the key's state was cleared): by key.
                None => {
                    by_handle.decide_naming(tool, rid, signals, Hints::NONE, NO_TEXT, now, handle)
                }
            };
            assert_eq!(got, want, "step {step}");
            assert_eq!(by_handle.state_count(), by_key.state_count());
        }
    }

    #[test]
    fn test_engine_decide_held_is_none_once_the_key_is_cleared() {
        let mut e = engine(r#"{"max_retries": 1}"#);
        assert_eq!(e.decide_held(1, FAIL, Hints::NONE, 0), None);
        e.decide_naming("t", "r", FAIL, Hints::NONE, NO_TEXT, 0, 1);
        let exhausted = e.decide_held(1, FAIL, Hints::NONE, 0);
        assert!(matches!(
            exhausted,
            Some(Outcome::Decided(Decision {
                reason: Reason::Exhausted,
                ..
            }))
        ));
        assert_eq!(e.decide_held(1, FAIL, Hints::NONE, 0), None);
        // A success clears the key too.
        e.decide_naming("t", "r", FAIL, Hints::NONE, NO_TEXT, 0, 1);
        assert_eq!(
            e.decide_held(1, OK, Hints::NONE, 0),
            Some(Outcome::Decided(Decision::SUCCESS))
        );
        assert_eq!(e.decide_held(1, OK, Hints::NONE, 0), None);
    }
}
