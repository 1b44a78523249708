//! The engine: every policy of the instance, their retry state and budgets,
//! the jitter source, and the one decision function the gateway calls on every
//! tool result.

use alloc::string::String;
use alloc::vec::Vec;
use fastrand::Rng;

use super::backoff;
use super::budget::Budgets;
use super::classify::{classify_with, is_throttled, may_repeat, Classification, Hints, Signals};
use super::config::{parse_json, Config, ConfigError};
use super::key::KeyParts;
use super::registry::{Lookup, PolicyId, Registered, Registry, MAX_POLICIES};
use super::state::{Entry, Handle, Limits, StateTable, ENTRY_BYTES, NO_HANDLE};

/// What the instance keeps for itself out of its memory cap before bounding
/// retry state: the stack (1 MiB), the component's data and allocator, the
/// budgets' buckets.
pub const RESERVED_BYTES: u64 = 4 << 20;
/// Bytes a typical entry takes (a tool name and a UUID request id), for
/// refusing a `max_state_entries` that could never fit the instance.
pub const TYPICAL_ENTRY_BYTES: u64 = ENTRY_BYTES + 64;
/// The largest configuration text a policy takes (every policy's is kept): a thousand tool
/// overrides fit; one configuration cannot take the policies' whole share of memory.
pub const MAX_CONFIG_BYTES: usize = 64 << 10;
/// How many policies each open looks at for release.
const RELEASE_PER_OPEN: usize = 2;

/// No texts (a result decided on its signals alone). Of the type the bindings
/// pass texts as, so that `decide-held` shares their decision code.
const NO_TEXT: Option<&[String]> = None;

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
    /// A success: no retry, nothing counted.
    pub const SUCCESS: Self = Self {
        delay_ms: 0,
        failures: 0,
        reason: Reason::Success,
    };
    /// A failure that is not retriable.
    pub const NON_RETRYABLE: Self = Self {
        delay_ms: 0,
        failures: 0,
        reason: Reason::NonRetryable,
    };

    /// No retry after `failures` failures, for `reason`.
    fn refused(failures: u32, reason: Reason) -> Self {
        Self {
            delay_ms: 0,
            failures,
            reason,
        }
    }
}

/// What [`Engine::decide`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decided; state updated. The handle names the key while it holds state
    /// (a retry), [`NO_HANDLE`] otherwise.
    Decided(Decision, Handle),
    /// Depends on the text content, which was not supplied; nothing changed.
    NeedText,
    /// The instance holds no policy of that id; nothing changed.
    UnknownPolicy,
}

/// A policy opened: its id and what opening lowered to the ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The policy's id (the same for the same content in every instance).
    pub id: PolicyId,
    /// One warning per `max_retries` lowered to the gateway's ceiling.
    pub warnings: Vec<ConfigError>,
}

/// Every policy of one instance, their retry state and budgets, and the
/// jitter source.
pub struct Engine {
    policies: Registry,
    state: StateTable,
    budgets: Budgets,
    rng: Rng,
    /// The bytes policies may be counted for ([`Engine::set_memory_limit`]).
    policy_bytes_max: u64,
}

impl Engine {
    /// An engine holding no policy. `seed` keys the state table's hash
    /// function and seeds jitter.
    pub fn new(seed: (u64, u64)) -> Self {
        Self {
            policies: Registry::default(),
            state: StateTable::new(seed),
            budgets: Budgets::default(),
            // Jitter must not be derivable from the hash key: mix the halves.
            rng: Rng::with_seed(seed.0.rotate_left(32) ^ seed.1 ^ 0x9e37_79b9_7f4a_7c15),
            policy_bytes_max: u64::MAX,
        }
    }

    /// Bound everything by the instance's linear-memory cap. Of what [`RESERVED_BYTES`]
    /// leaves (at least a quarter of a cap too small for that: the stack alone takes 1 MiB),
    /// live retry state gets a quarter, policies an eighth and retry budgets a sixteenth. The rest is headroom the state needs besides itself: the
    /// slab keeps its high-water mark when entries go, and moving the state to another
    /// instance writes all of it out as one document (`export-state`).
    pub fn set_memory_limit(&mut self, bytes: u64) {
        let usable = bytes.saturating_sub(RESERVED_BYTES).max(bytes / 4);
        self.state.set_budget(usable / 4);
        self.budgets.set_max_bytes(usable / 16);
        self.policy_bytes_max = usable / 8;
    }

    /// Open the policy of `config` (JSON text; `null`: the defaults) for the
    /// stanza `scope` under the gateway's retry `ceiling`: the one held for the
    /// same scope, text and ceiling, or a new one. Errors name every problem
    /// at once, with its key path.
    pub fn open_json(
        &mut self,
        scope: &str,
        config: &str,
        ceiling: Option<u32>,
        now_ms: u64,
    ) -> Result<Opened, Vec<ConfigError>> {
        let id = match self.policies.lookup(scope, config, ceiling) {
            Lookup::Held(ix) => {
                self.policies.touch(ix, now_ms);
                let p = self.policies.get(ix);
                return Ok(Opened {
                    id: p.id,
                    warnings: p.warnings.clone(),
                });
            }
            Lookup::Collision(_) => {
                return Err(document_error(
                    "this configuration's policy id collides with another configuration held; \
                     change any value (e.g. add an unused key)",
                ))
            }
            Lookup::Vacant(id) => id,
        };
        if config.len() > MAX_CONFIG_BYTES {
            return Err(document_error(&alloc::format!(
                "is {} bytes of JSON, more than a configuration may be ({MAX_CONFIG_BYTES})",
                config.len()
            )));
        }
        let (parsed, warnings) = Config::from_value_capped(&parse_json(config)?, ceiling)?;
        // A few in turn each time, all of them at a bound: unused policies go at the pace new
        // ones come, without a scan of every policy per open (releasing one costs its own
        // state only).
        let unused = self.policies.some_unused(now_ms, RELEASE_PER_OPEN);
        self.release(&unused);
        if self.policies.len() >= MAX_POLICIES || self.check_fits(&parsed, config.len()).is_err() {
            self.release_unused(now_ms);
        }
        self.check_fits(&parsed, config.len())?;
        if self.policies.len() >= MAX_POLICIES {
            return Err(document_error(&alloc::format!(
                "this instance holds {MAX_POLICIES} configurations in use, its bound: \
                 another is opened once one goes unused for its state_ttl_ms"
            )));
        }
        self.policies.insert(Registered {
            id,
            scope: scope.into(),
            canonical: config.into(),
            ceiling,
            config: parsed,
            warnings: warnings.clone(),
            last_used_ms: now_ms,
        });
        Ok(Opened { id, warnings })
    }

    /// Refuse a configuration the instance's memory could never hold.
    fn check_fits(&self, config: &Config, text_len: usize) -> Result<(), Vec<ConfigError>> {
        let budget = self.state.budget();
        if budget == u64::MAX {
            return Ok(());
        }
        let share = self.policy_bytes_max;
        let mib = |b: u64| b.div_ceil(1 << 20);
        let entries = u64::from(config.max_state_entries());
        let need = entries.saturating_mul(TYPICAL_ENTRY_BYTES);
        if need > budget {
            return Err(alloc::vec![ConfigError {
                path: String::from("max_state_entries"),
                message: alloc::format!(
                    "{entries} entries need about {} MiB of guest memory (~{TYPICAL_ENTRY_BYTES} \
                     bytes each), more than the instance's memory cap leaves for retry state \
                     ({} MiB): lower max_state_entries or raise wasm_max_memory_bytes",
                    mib(need),
                    mib(budget)
                ),
            }]);
        }
        if self.policies.bytes() + Registry::bytes_of(text_len) > share {
            return Err(document_error(&alloc::format!(
                "the configurations held would take more than the instance's memory cap leaves \
                 for them ({} MiB): raise wasm_max_memory_bytes",
                mib(share)
            )));
        }
        Ok(())
    }

    /// Release the policy `id` now, with its state and budgets (a host that
    /// refused the configuration after opening it); false when not held.
    pub fn close(&mut self, id: PolicyId) -> bool {
        let Some(ix) = self.policies.find(id) else {
            return false;
        };
        self.release(&[ix]);
        true
    }

    /// Release every policy unused for its `state_ttl_ms` (its state and
    /// budgets with it); returns how many went.
    pub fn release_unused(&mut self, now_ms: u64) -> usize {
        let unused = self.policies.unused(now_ms);
        self.release(&unused);
        unused.len()
    }

    /// Release the policies in registry slots `slots`, with their state and budgets.
    fn release(&mut self, slots: &[u32]) {
        for &ix in slots {
            if let Some(policy) = self.policies.remove(ix) {
                self.state.remove_policy(policy.id);
                self.budgets.remove_policy(policy.id);
            }
        }
    }

    /// The configuration of the policy `id`, if held.
    pub fn config(&self, id: PolicyId) -> Option<&Config> {
        self.policies
            .find(id)
            .map(|ix| &self.policies.get(ix).config)
    }

    /// Decide on one tool result of `key` under the policy `id` at `now_ms`.
    ///
    /// The n-th consecutive failure within `max_retries` gets a retry after
    /// `min(base · 2^(n-1), max)` (jittered when enabled); the failure after
    /// the budget gets no retry and clears the key, so the next failure starts
    /// a fresh budget; a non-failure clears the key. Failures older than the
    /// state TTL are forgotten.
    pub fn decide<T: AsRef<str>>(
        &mut self,
        id: PolicyId,
        key: &KeyParts<'_>,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        let Some(ix) = self.policies.find(id) else {
            return Outcome::UnknownPolicy;
        };
        let hash = self.state.key_hash(id, key);
        let slot = self.state.find(hash, id, key);
        self.decide_in(ix, id, hash, slot, key, signals, hints, texts, now_ms)
    }

    /// Decide on a result of the key `handle` names, exactly as
    /// [`Engine::decide`] would with that key and its policy; `None` when the
    /// handle names no key (never given, or the key's state has gone since:
    /// TTL, a bound, a decision that cleared it, its policy released).
    pub fn decide_held(
        &mut self,
        handle: Handle,
        signals: Signals,
        hints: Hints,
        now_ms: u64,
    ) -> Option<Outcome> {
        let (slot, id, key) = self.state.key_of(handle)?;
        // A policy's entries go with it: a live slot's policy is held.
        let ix = self.policies.find(id)?;
        // Copied out of the table, which the decision then updates.
        let lens = [key.tenant, key.server, key.identity, key.tool].map(str::len);
        let mut text = String::with_capacity(lens.iter().sum::<usize>() + key.request_id.len());
        for part in [
            key.tenant,
            key.server,
            key.identity,
            key.tool,
            key.request_id,
        ] {
            text.push_str(part);
        }
        // The hash stored with the entry: the key is not hashed again.
        let hash = self.state.hash_of(slot);
        let (tenant, rest) = text.split_at(lens[0]);
        let (server, rest) = rest.split_at(lens[1]);
        let (identity, rest) = rest.split_at(lens[2]);
        let (tool, request_id) = rest.split_at(lens[3]);
        let key = KeyParts {
            tenant,
            server,
            identity,
            tool,
            request_id,
        };
        Some(self.decide_in(
            ix,
            id,
            hash,
            Some(slot),
            &key,
            signals,
            hints,
            NO_TEXT,
            now_ms,
        ))
    }

    /// The decision for `key` of the policy `id` (in registry slot `ix`),
    /// whose state is in `slot` if it has any.
    #[allow(clippy::too_many_arguments)]
    fn decide_in<T: AsRef<str>>(
        &mut self,
        ix: u32,
        id: PolicyId,
        hash: u32,
        slot: Option<u32>,
        key: &KeyParts<'_>,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        let config = &self.policies.get(ix).config;
        let policy = config.policy_for(key.tool);
        let class = classify_with(signals, hints, policy, texts);
        if class == Classification::NeedText {
            return Outcome::NeedText;
        }
        let limits = Limits {
            ttl_ms: config.state_ttl_ms(),
            max_entries: config.max_state_entries(),
        };
        let (decision, kept) = match class {
            Classification::NotFailure => {
                if let Some(i) = slot {
                    self.state.remove(i);
                }
                if let Some(budget) = policy.retry_budget() {
                    self.budgets.deposit(id, key, budget, now_ms);
                }
                (Decision::SUCCESS, None)
            }
            Classification::NonRetryable => {
                if let Some(i) = slot {
                    self.state.remove(i);
                }
                (Decision::NON_RETRYABLE, None)
            }
            Classification::Failure | Classification::NeedText => {
                let i = match slot {
                    Some(i) => self.state.fail_again(i, now_ms),
                    None => self.state.insert_new(hash, id, key, now_ms, limits),
                };
                let entry = self.state.entry(i);
                let decision = decide_failure(
                    policy,
                    entry,
                    signals,
                    hints,
                    &mut self.rng,
                    &mut self.budgets,
                    id,
                    key,
                    now_ms,
                );
                match decision {
                    Ok((decision, entry)) => {
                        *self.state.entry_mut(i) = entry;
                        (decision, Some(i))
                    }
                    Err(decision) => {
                        self.state.remove(i);
                        (decision, None)
                    }
                }
            }
        };
        self.policies.touch(ix, now_ms);
        self.state.sweep(now_ms, kept);
        let handle = kept.map_or(NO_HANDLE, |i| i + 1);
        Outcome::Decided(decision, handle)
    }

    /// Whether, for every tool of the policy `id`, a result with no failure
    /// signal is a success that changes nothing for a key without state (no
    /// tool inspects text content or keeps a retry budget).
    pub fn stateless_successes(&self, id: PolicyId) -> bool {
        self.config(id).is_some_and(Config::stateless_successes)
    }

    /// Entries held, of every policy (expired ones not yet swept included).
    pub fn state_count(&self) -> usize {
        self.state.len()
    }

    /// Entries held by the policy `id`, if held.
    pub fn policy_state_count(&self, id: PolicyId) -> Option<usize> {
        self.policies.find(id).map(|_| self.state.policy_len(id))
    }

    /// Policies held.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Remove every expired entry and release every policy unused for its
    /// `state_ttl_ms`; returns how many entries went.
    pub fn evict_expired(&mut self, now_ms: u64) -> usize {
        let expired = self.state.evict_all_expired(now_ms);
        let before = self.state.len();
        self.release_unused(now_ms);
        expired + (before - self.state.len())
    }

    /// Forget every policy, entry and budget.
    pub fn clear(&mut self) {
        self.policies = Registry::default();
        self.state.clear();
        self.budgets = Budgets::default();
    }

    /// The policies, for snapshots.
    pub fn policies(&self) -> &Registry {
        &self.policies
    }

    /// The retry state, for snapshots and inspection.
    pub fn state(&self) -> &StateTable {
        &self.state
    }

    /// The retry budgets, for snapshots.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Parts for restoring a snapshot: the registry, the table and the
    /// budgets, to fill together.
    pub fn parts_mut(&mut self) -> (&mut Registry, &mut StateTable, &mut Budgets) {
        (&mut self.policies, &mut self.state, &mut self.budgets)
    }
}

/// The decision for a retriable failure whose entry (this failure counted)
/// is `entry`: `Ok` with the entry to keep for a retry, `Err` for a refusal
/// that clears the key.
#[allow(clippy::too_many_arguments)]
fn decide_failure(
    policy: &super::config::Policy,
    entry: Entry,
    signals: Signals,
    hints: Hints,
    rng: &mut Rng,
    budgets: &mut Budgets,
    id: PolicyId,
    key: &KeyParts<'_>,
    now_ms: u64,
) -> Result<(Decision, Entry), Decision> {
    let failures = entry.failures;
    if failures > policy.max_retries {
        return Err(Decision::refused(failures, Reason::Exhausted));
    }
    if !may_repeat(signals, hints, policy) {
        // Running a non-idempotent tool again may repeat what the failed call
        // already did: give up, as on exhaustion.
        return Err(Decision::refused(failures, Reason::NonIdempotent));
    }
    let deadline = policy.max_total_delay_ms;
    // The failure's class picks the curve: throttled (the server refused the
    // load: a 429, or any failure carrying a delay hint) or transient.
    let curve = policy.curve(is_throttled(signals, hints));
    // A server delay hint, clamped, when this tool honours them.
    let floor = hints
        .retry_after_ms
        .filter(|_| policy.honor_retry_after)
        .map(|ms| u64::from(ms).min(policy.max_retry_after_ms));
    let jitter = policy.jitter_kind();
    let delay_ms = match floor {
        None => backoff::delay_ms(
            curve,
            failures - 1,
            jitter,
            u64::from(entry.last_delay_ms),
            rng,
        ),
        Some(floor) => {
            let before = u64::from(entry.total_delay_ms);
            if deadline.is_some_and(|limit| before.saturating_add(floor) > limit) {
                // The server asks for a wait that ends past the deadline.
                return Err(Decision::refused(failures, Reason::RetryAfter));
            }
            // The hint is a floor; the jitter spreads clients above it.
            let spread = backoff::spread_ms(curve, failures - 1, jitter, rng);
            floor.saturating_add(spread).max(1)
        }
    };
    let total = u64::from(entry.total_delay_ms).saturating_add(delay_ms);
    if deadline.is_some_and(|limit| total > limit) {
        // This retry would end past the key's deadline: give up now, and
        // clear the key as exhaustion does.
        return Err(Decision::refused(failures, Reason::Deadline));
    }
    if let Some(budget) = policy.retry_budget() {
        // Per (context, tool, identity): one tenant's or user's traffic cannot
        // spend another's retries (issues 16, 23).
        if !budgets.try_withdraw(id, key, budget, now_ms) {
            return Err(Decision::refused(failures, Reason::Budget));
        }
    }
    let kept = Entry {
        last_delay_ms: u32::try_from(delay_ms).unwrap_or(u32::MAX),
        total_delay_ms: u32::try_from(total).unwrap_or(u32::MAX),
        ..entry
    };
    Ok((
        Decision {
            delay_ms,
            failures,
            reason: Reason::Retry,
        },
        kept,
    ))
}

/// A problem with the document as a whole.
fn document_error(message: &str) -> Vec<ConfigError> {
    alloc::vec![ConfigError {
        path: String::new(),
        message: String::from(message),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{engine, FAIL, NO_TEXT, OK};
    use crate::policy::Hints;

    use crate::policy::test_support::One;

    fn delays(e: &mut One, tool: &str, rid: &str, n: usize, now: u64) -> Vec<(u64, u32, Reason)> {
        (0..n)
            .map(|_| match e.decide(tool, rid, FAIL, NO_TEXT, now) {
                Outcome::Decided(d, _) => (d.delay_ms, d.failures, d.reason),
                other => panic!("unexpected {other:?}"),
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
            Outcome::Decided(Decision::SUCCESS, 0)
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
            Outcome::Decided(d, _) => assert_eq!((d.delay_ms, d.failures), (400, 2)),
            other => panic!("{other:?}"),
        }
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
            Outcome::Decided(Decision::NON_RETRYABLE, 0)
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
            Outcome::Decided(d, _) => d.delay_ms,
            other => panic!("unexpected {other:?}"),
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
                let Outcome::Decided(d, _) =
                    e.decide_with_hints("t", "r", signals, hints, NO_TEXT, 0)
                else {
                    panic!("not decided")
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
                Outcome::Decided(d, _) => d.reason,
                other => panic!("unexpected {other:?}"),
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
            Outcome::Decided(d, _) => (d.delay_ms, d.failures, d.reason),
            other => panic!("unexpected {other:?}"),
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
        let decide = |e: &mut One, rid: &str, h: Hints| match e
            .decide_with_hints("t", rid, FAIL, h, NO_TEXT, 0)
        {
            Outcome::Decided(d, _) => (d.delay_ms, d.failures, d.reason),
            other => panic!("unexpected {other:?}"),
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
        assert!(!e.e.stateless_successes(e.id));
    }

    #[test]
    fn test_engine_success_path_sweeps_expired() {
        let mut e = engine(r#"{"state_ttl_ms": 100}"#);
        delays(&mut e, "t", "old", 1, 0);
        e.decide("t", "other", OK, NO_TEXT, 101);
        assert_eq!(e.state_count(), 0);
    }

    /// The key of `tool`/`rid` in a team's context.
    fn team<'a>(tenant: &'a str, tool: &'a str, rid: &'a str) -> KeyParts<'a> {
        KeyParts {
            tenant,
            ..KeyParts::new(tool, rid)
        }
    }

    fn decided(outcome: Outcome) -> (u64, u32, Reason, Handle) {
        match outcome {
            Outcome::Decided(d, handle) => (d.delay_ms, d.failures, d.reason, handle),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn test_engine_retry_budget_per_context_and_identity() {
        // Issues 16 and 23: one engine serves every tenant and user; one that
        // spends its budget leaves the others theirs, whatever the request ids.
        let mut e = Engine::new((1, 2));
        let p = e
            .open_json(
                "p",
                r#"{"jitter": false, "max_retries": 1, "retry_budget_percent": 50,
                    "retry_budget_min_per_sec": 1}"#,
                None,
                0,
            )
            .unwrap()
            .id;
        let mut fail =
            |key: KeyParts<'_>| decided(e.decide(p, &key, FAIL, Hints::NONE, NO_TEXT, 0)).2;
        use Reason::*;
        for k in 0..10 {
            assert_eq!(fail(team("acme", "t", &k.to_string())), Retry);
        }
        assert_eq!(fail(team("acme", "t", "x")), Budget);
        assert_eq!(fail(team("globex", "t", "x")), Retry, "another context");
        let user = |identity| KeyParts {
            identity,
            ..team("acme", "t", "y")
        };
        assert_eq!(fail(user("ann")), Retry, "another identity");
        assert_eq!(fail(user("")), Budget);
    }

    #[test]
    fn test_engine_contexts_never_share_a_key() {
        // Issue 23 §5: team A's failures of `t` with request id corr-1 do not
        // exhaust team B's first failure of its own `t` with the same id.
        let mut e = Engine::new((1, 2));
        let p = e
            .open_json("p", r#"{"jitter": false}"#, None, 0)
            .unwrap()
            .id;
        let mut fail =
            |key: KeyParts<'_>| decided(e.decide(p, &key, FAIL, Hints::NONE, NO_TEXT, 0));
        assert_eq!(fail(team("a", "t", "corr-1")).1, 1);
        assert_eq!(fail(team("a", "t", "corr-1")).1, 2);
        assert_eq!(fail(team("b", "t", "corr-1")).1, 1);
        let server = KeyParts {
            server: "s2",
            ..team("a", "t", "corr-1")
        };
        assert_eq!(fail(server).1, 1, "another virtual server");
    }

    #[test]
    fn test_engine_one_contexts_flood_keeps_anothers_backoff() {
        // Issue 23 §1: two unbound teams (one configuration, one policy) with
        // max_state_entries 1000; team A's 3,000 new failing keys leave team
        // B's key in mid-backoff (its next delay is 100, not a fresh 50).
        let mut e = Engine::new((1, 2));
        e.set_memory_limit(64 << 20);
        let p = e
            .open_json(
                "p",
                r#"{"jitter": false, "backoff_base_ms": 50, "max_state_entries": 1000}"#,
                None,
                0,
            )
            .unwrap()
            .id;
        let mut fail =
            |key: KeyParts<'_>, now| decided(e.decide(p, &key, FAIL, Hints::NONE, NO_TEXT, now));
        assert_eq!(fail(team("b", "t", "victim"), 0).0, 50);
        for i in 0..3000u64 {
            fail(team("a", "t", &i.to_string()), 1 + i);
        }
        assert_eq!(fail(team("b", "t", "victim"), 4000).0, 100);
        assert_eq!(e.state_count(), 1001);
    }

    #[test]
    fn test_engine_policies_are_apart_and_shared_by_content() {
        let mut e = Engine::new((1, 2));
        let a = e
            .open_json("p", r#"{"jitter": false, "max_retries": 1}"#, None, 0)
            .unwrap();
        // The same text: the same policy.
        let again = e
            .open_json("p", r#"{"jitter": false, "max_retries": 1}"#, None, 5)
            .unwrap();
        assert_eq!(again.id, a.id);
        let b = e
            .open_json("p", r#"{"jitter": false, "max_retries": 3}"#, None, 0)
            .unwrap();
        let other_stanza = e
            .open_json("q", r#"{"jitter": false, "max_retries": 1}"#, None, 0)
            .unwrap();
        let capped = e
            .open_json("p", r#"{"jitter": false, "max_retries": 1}"#, Some(0), 0)
            .unwrap();
        let ids = [a.id, b.id, other_stanza.id, capped.id];
        for (i, x) in ids.iter().enumerate() {
            for y in &ids[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(e.policy_count(), 4);
        let key = KeyParts::new("t", "r");
        let mut fail = |id| decided(e.decide(id, &key, FAIL, Hints::NONE, NO_TEXT, 0));
        assert_eq!(fail(a.id).2, Reason::Retry);
        assert_eq!(fail(b.id).2, Reason::Retry, "its own state");
        assert_eq!(fail(a.id).2, Reason::Exhausted);
        assert_eq!(
            fail(other_stanza.id).1,
            1,
            "a stanza counts its own failures"
        );
        assert_eq!(fail(capped.id).2, Reason::Exhausted, "ceiling 0");
        assert_eq!(e.policy_state_count(b.id), Some(1));
        assert_eq!(capped.warnings.len(), 1);
        // An id this instance does not hold: nothing changes.
        assert_eq!(
            e.decide(7, &key, FAIL, Hints::NONE, NO_TEXT, 0),
            Outcome::UnknownPolicy
        );
    }

    #[test]
    fn test_engine_unused_policies_are_released_with_their_state() {
        let mut e = Engine::new((1, 2));
        let short = e
            .open_json("p", r#"{"state_ttl_ms": 100}"#, None, 0)
            .unwrap()
            .id;
        let long = e
            .open_json("p", r#"{"state_ttl_ms": 1000}"#, None, 0)
            .unwrap()
            .id;
        let key = KeyParts::new("t", "r");
        decided(e.decide(short, &key, FAIL, Hints::NONE, NO_TEXT, 50));
        decided(e.decide(long, &key, FAIL, Hints::NONE, NO_TEXT, 50));
        // Used at 50: held through 150, released after.
        e.evict_expired(150);
        assert_eq!(e.policy_count(), 2);
        assert_eq!(e.evict_expired(151), 1, "its entry went with it");
        assert_eq!(e.policy_count(), 1);
        assert_eq!(
            e.decide(short, &key, FAIL, Hints::NONE, NO_TEXT, 151),
            Outcome::UnknownPolicy
        );
        // Opening it again makes it anew, under the same id.
        assert_eq!(
            e.open_json("p", r#"{"state_ttl_ms": 100}"#, None, 200)
                .unwrap()
                .id,
            short
        );
        assert_eq!(
            decided(e.decide(long, &key, FAIL, Hints::NONE, NO_TEXT, 200)).1,
            2
        );
    }

    #[test]
    fn test_engine_refuses_past_the_policy_bound() {
        let mut e = Engine::new((1, 2));
        for i in 0..MAX_POLICIES {
            e.open_json("p", &alloc::format!(r#"{{"n": {i}}}"#), None, 0)
                .unwrap();
        }
        let err = e.open_json("p", r#"{"n": -1}"#, None, 1).unwrap_err();
        assert!(err[0].message.contains("4096 configurations"), "{err:?}");
        // Unused for their TTL, they make room: a few in turn at each open...
        assert!(e.open_json("p", r#"{"n": -1}"#, None, 300_001).is_ok());
        assert_eq!(e.policy_count(), MAX_POLICIES - 1);
        // ... and all of them at an eviction.
        e.evict_expired(300_001);
        assert_eq!(e.policy_count(), 1);
    }

    #[test]
    fn test_engine_refuses_a_configuration_past_its_size() {
        let mut e = Engine::new((1, 2));
        let big = alloc::format!(r#"{{"pad": "{}"}}"#, "x".repeat(MAX_CONFIG_BYTES));
        let err = e.open_json("p", &big, None, 0).unwrap_err();
        assert_eq!(err[0].path, "");
        assert!(
            err[0].message.contains("more than a configuration may be"),
            "{err:?}"
        );
        assert_eq!(e.policy_count(), 0);
    }

    #[test]
    fn test_engine_refuses_a_bound_the_memory_cannot_hold() {
        let mut e = Engine::new((1, 2));
        e.set_memory_limit(16 << 20);
        let err = e
            .open_json("p", r#"{"max_state_entries": 1000000}"#, None, 0)
            .unwrap_err();
        assert_eq!(err[0].path, "max_state_entries");
        assert!(err[0].message.contains("wasm_max_memory_bytes"), "{err:?}");
        assert!(e
            .open_json("p", r#"{"max_state_entries": 10000}"#, None, 0)
            .is_ok());
    }

    #[test]
    fn test_engine_decide_held_matches_decide_by_key() {
        // Two engines with the same seed: one told every key, one given handles.
        let config = r#"{"max_retries": 3, "backoff_base_ms": 10, "max_backoff_ms": 70}"#;
        let (mut by_key, mut by_handle) = (engine(config), engine(config));
        let keys = [("t", "r1"), ("t", "r2"), ("search", "r1")];
        let mut handles = [NO_HANDLE; 3];
        for step in 0..60u64 {
            let k = (step % 3) as usize;
            let (tool, rid) = keys[k];
            let signals = if step % 7 == 6 { OK } else { FAIL };
            let now = step * 10;
            let want = by_key.decide_with_hints(tool, rid, signals, Hints::NONE, NO_TEXT, now);
            let got = match by_handle
                .e
                .decide_held(handles[k], signals, Hints::NONE, now)
            {
                Some(outcome) => outcome,
                // Unknown (first failure, or the key's state was cleared): by key.
                None => by_handle.decide_with_hints(tool, rid, signals, Hints::NONE, NO_TEXT, now),
            };
            assert_eq!(got, want, "step {step}");
            if let Outcome::Decided(_, handle) = got {
                handles[k] = handle;
            }
            assert_eq!(by_handle.state_count(), by_key.state_count());
        }
    }

    #[test]
    fn test_engine_handles_name_a_key_while_it_holds_state() {
        let mut e = engine(r#"{"max_retries": 1}"#);
        assert_eq!(e.e.decide_held(1, FAIL, Hints::NONE, 0), None);
        let (_, _, reason, handle) = decided(e.decide("t", "r", FAIL, NO_TEXT, 0));
        assert_eq!((reason, handle), (Reason::Retry, 1));
        let (_, _, reason, after) = decided(e.e.decide_held(handle, FAIL, Hints::NONE, 0).unwrap());
        assert_eq!((reason, after), (Reason::Exhausted, NO_HANDLE));
        assert_eq!(e.e.decide_held(handle, FAIL, Hints::NONE, 0), None);
        // A success clears the key too.
        let (_, _, _, handle) = decided(e.decide("t", "r", FAIL, NO_TEXT, 0));
        assert_eq!(
            e.e.decide_held(handle, OK, Hints::NONE, 0),
            Some(Outcome::Decided(Decision::SUCCESS, NO_HANDLE))
        );
        assert_eq!(e.e.decide_held(handle, OK, Hints::NONE, 0), None);
        // Refusals keep no state, so they give no handle.
        let mut none = engine(r#"{"max_retries": 0}"#);
        assert_eq!(
            decided(none.decide("t", "r", FAIL, NO_TEXT, 0)).3,
            NO_HANDLE
        );
    }
}
