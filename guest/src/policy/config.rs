//! Plugin configuration: parsing from the plugin's `config:` mapping (as JSON),
//! defaults, and validation that names the key path of every problem.
//!
//! Parity with the native plugin (`cpex-retry-with-backoff` 0.3.11): the same
//! keys, defaults and validation rules; unknown keys are ignored. Two
//! deliberate differences: every `tool_overrides` entry is validated here, at
//! configure time, against the global values it inherits (the native plugin
//! only fails on the first call for that tool); and all problems are reported
//! together instead of the first one.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use serde_json::{Map, Value};

use super::backoff::{Curve, Jitter, Shape};
use super::budget::RetryBudget;

/// Largest `max_retries` accepted (as in the native plugin).
pub const MAX_RETRIES_LIMIT: u32 = 10;
/// Default TTL of a retry-state entry, counted from its last failure. The
/// native plugin hard-codes 300 s.
pub const DEFAULT_STATE_TTL_MS: u64 = 300_000;
/// Default bound on live retry-state entries.
pub const DEFAULT_MAX_STATE_ENTRIES: u32 = 100_000;
/// Largest `max_total_delay_ms` accepted (~49.7 days): a key's summed delays
/// are kept in 32 bits.
pub const MAX_TOTAL_DELAY_LIMIT: u64 = u32::MAX as u64;
/// Default floor of a retry budget (tokens per second).
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SEC: u32 = 1;
/// Default clamp of a server delay hint (ms).
pub const DEFAULT_MAX_RETRY_AFTER_MS: u64 = 60_000;
/// Largest `max_retry_after_ms`: the largest hint the wire carries.
pub const MAX_RETRY_AFTER_LIMIT: u64 = crate::wire::RETRY_AFTER_MAX_MS as u64;
/// Tool names longer than this (in characters) reach the engine as a digest
/// (`#sha256:` and 64 hex digits): the host bounds what crosses into the
/// guest, and keeps keys distinct. An override for such a name could never
/// match, so it is a config error.
pub const TOOL_NAME_MAX_CHARS: usize = 256;
/// The prefix of a digested tool name (see [`TOOL_NAME_MAX_CHARS`]). The
/// host digests names that start with it too, so that a name and a digest
/// never collide.
pub const DIGEST_PREFIX: &str = "#sha256:";
/// Largest `max_state_entries` accepted. The state index is allocated for the
/// bound up front (4 bytes per entry, rounded up to a power of two), and each
/// live entry takes ~100 bytes plus its key, so a million entries already needs
/// a memory cap well above the host's default.
pub const MAX_STATE_ENTRIES_LIMIT: u32 = 1_000_000;

/// The effective retry policy of one tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed a retry before giving up.
    pub max_retries: u32,
    /// Delay of the first retry (ms); always > 0 once validated.
    pub backoff_base_ms: u64,
    /// Cap of any delay (ms); always >= `backoff_base_ms` once validated.
    pub max_backoff_ms: u64,
    /// How the delay ceiling grows with the attempt.
    pub backoff: Shape,
    /// `backoff_base_ms` of a throttled failure (429, or one that carries a
    /// server delay hint); `None` = the same as `backoff_base_ms`.
    pub throttle_backoff_base_ms: Option<u64>,
    /// `max_backoff_ms` of a throttled failure; `None` = the same as
    /// `max_backoff_ms`.
    pub throttle_max_backoff_ms: Option<u64>,
    /// Status codes that count as a retriable failure.
    pub retry_on_status: Vec<i32>,
    /// Whether delays are jittered (`jitter: false` or `"none"` turn it off).
    pub jitter: bool,
    /// Which jitter applies while `jitter` is on: `Full` (the default, also
    /// what `jitter: true` means), `Equal` or `Decorrelated`; never
    /// `Jitter::None` (that is `jitter == false`). Two fields rather than one
    /// so that `jitter` keeps its boolean meaning for parity configs.
    pub jitter_mode: Jitter,
    /// Inspect JSON text content when there is no structured content.
    pub check_text_content: bool,
    /// Deadline of one `(tool, request)`: a retry is never scheduled when its
    /// delay would push the key's summed delays past this many ms. `None` =
    /// no deadline (the default; the native plugin has none).
    pub max_total_delay_ms: Option<u64>,
    /// Opt-in safe classification (issue 6 §5): `resultType:
    /// "input_required"` is not a failure; input-validation errors and
    /// `retryable: false` are non-retryable. Off by default (parity).
    pub safe_classification: bool,
    /// Opt-in: a server delay hint (signal bits 7..29) is the retry's floor.
    pub honor_retry_after: bool,
    /// Clamp of a server delay hint (ms).
    pub max_retry_after_ms: u64,
    /// Share of a token each success deposits in the tool's retry budget, in
    /// percent; `None` = no budget (the default, parity).
    pub retry_budget_percent: Option<u32>,
    /// The budget's floor: tokens per second refilled regardless of traffic.
    pub retry_budget_min_per_sec: u32,
    /// Which failures of a non-idempotent tool may be retried (issue 15 §1).
    pub non_idempotent_retries: NonIdempotentRetries,
    /// Whether the tool is idempotent, as the operator says; `None` (the
    /// default) lets the call's annotations decide.
    pub idempotent: Option<bool>,
}

/// `non_idempotent_retries`: which failures of a non-idempotent tool may be
/// retried (see [`super::classify::may_repeat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonIdempotentRetries {
    /// Every retriable failure (the default; the native plugin's behaviour).
    All,
    /// Only a 429, or a 503 with a server delay hint; never a timeout.
    Throttled,
    /// None.
    None,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            backoff_base_ms: 200,
            max_backoff_ms: 5000,
            backoff: Shape::Exponential,
            throttle_backoff_base_ms: None,
            throttle_max_backoff_ms: None,
            retry_on_status: vec![429, 500, 502, 503, 504],
            jitter: true,
            jitter_mode: Jitter::Full,
            check_text_content: false,
            max_total_delay_ms: None,
            safe_classification: false,
            honor_retry_after: false,
            max_retry_after_ms: DEFAULT_MAX_RETRY_AFTER_MS,
            retry_budget_percent: None,
            retry_budget_min_per_sec: DEFAULT_RETRY_BUDGET_MIN_PER_SEC,
            non_idempotent_retries: NonIdempotentRetries::All,
            idempotent: None,
        }
    }
}

impl Policy {
    /// The tool's retry budget, if it has one.
    pub fn retry_budget(&self) -> Option<RetryBudget> {
        self.retry_budget_percent.map(|percent| RetryBudget {
            percent,
            min_per_sec: self.retry_budget_min_per_sec,
        })
    }

    /// The delay curve of a failure: the throttle class's (`throttled`: a 429
    /// or a server delay hint) or the transient one's.
    pub fn curve(&self, throttled: bool) -> Curve {
        let (base_ms, max_ms) = if throttled {
            self.throttle_bounds()
        } else {
            (self.backoff_base_ms, self.max_backoff_ms)
        };
        Curve {
            shape: self.backoff,
            base_ms,
            max_ms,
        }
    }

    /// The throttle class's `(base, max)` in ms, each the transient value
    /// unless set.
    pub fn throttle_bounds(&self) -> (u64, u64) {
        (
            self.throttle_backoff_base_ms
                .unwrap_or(self.backoff_base_ms),
            self.throttle_max_backoff_ms.unwrap_or(self.max_backoff_ms),
        )
    }

    /// The jitter in force: `Jitter::None` when off, else `jitter_mode`.
    pub fn jitter_kind(&self) -> Jitter {
        if self.jitter {
            self.jitter_mode
        } else {
            Jitter::None
        }
    }

    /// Whether `status` is one of the retriable status codes.
    pub fn retries_status(&self, status: i32) -> bool {
        self.retry_on_status.contains(&status)
    }
}

/// A validated configuration. Immutable: a new configuration replaces it whole.
#[derive(Debug, Clone)]
pub struct Config {
    global: Policy,
    /// Overrides by tool name, already merged over `global` (so the hot path
    /// never merges).
    overrides: BTreeMap<String, Policy>,
    state_ttl_ms: u64,
    max_state_entries: u32,
    /// Opt-in: the host adds the decision reason to the trace metrics. Off by
    /// default because the native plugin's metrics carry no reason (parity).
    metrics_reason: bool,
    /// What identifies a retry-state key besides the tool (the host builds
    /// the key's request part accordingly).
    key_scope: KeyScope,
}

/// `key_scope`: which identity the host puts in a state key's identity part
/// (every key also carries the gateway context's tenant and server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyScope {
    /// None: the request id alone within the context (the default; the
    /// native plugin's key).
    Request,
    /// None either: the tenant is part of every key's context already (it was
    /// the identity before contract 0.5).
    Tenant,
    /// The user.
    User,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            global: Policy::default(),
            overrides: BTreeMap::new(),
            state_ttl_ms: DEFAULT_STATE_TTL_MS,
            max_state_entries: DEFAULT_MAX_STATE_ENTRIES,
            metrics_reason: false,
            key_scope: KeyScope::Request,
        }
    }
}

/// One problem in a configuration, located by its dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// E.g. `tool_overrides.search.max_backoff_ms`; empty for the document.
    pub path: String,
    /// E.g. `must be >= backoff_base_ms (200)`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl Config {
    /// Parse and validate a configuration from JSON text. `null` and `{}` give
    /// the defaults.
    pub fn from_json(text: &str) -> Result<Self, Vec<ConfigError>> {
        Self::from_value(&parse_json(text)?)
    }

    /// Parse and validate a configuration from a JSON value.
    pub fn from_value(value: &Value) -> Result<Self, Vec<ConfigError>> {
        Self::from_value_capped(value, None).map(|(config, _)| config)
    }

    /// [`Config::from_value`] under the gateway's retry ceiling
    /// (`MAX_TOOL_RETRIES`): every effective `max_retries` above it, the
    /// default's included, is lowered to it, as the gateway would never make
    /// more attempts anyway (a budget above it would leave state behind that a
    /// later call sharing the request id inherits). An explicit value above
    /// the ceiling is lowered before it is validated, as the native plugin
    /// does, so `max_retries: 20` under a ceiling of 3 is 3, not an error.
    /// Returns the configuration and one warning per key lowered.
    pub fn from_value_capped(
        value: &Value,
        ceiling: Option<u32>,
    ) -> Result<(Self, Vec<ConfigError>), Vec<ConfigError>> {
        let mut errors = Errors::default();
        let mut warnings = Errors::default();
        let empty = Map::default();
        let root = match value {
            Value::Null => &empty,
            Value::Object(map) => map,
            other => {
                errors.push("", must_be("a mapping", other));
                return Err(errors.0);
            }
        };

        let cap = Cap {
            ceiling,
            warnings: core::cell::RefCell::new(&mut warnings),
        };
        let (mut global, set) = parse_policy(root, "", &Policy::default(), &cap, &mut errors);
        if !root.contains_key("max_retries") {
            cap.lower("", &mut global.max_retries, " (the default)");
        }
        check_policy(&global, set, "", &mut errors);

        let keys = Keys {
            map: root,
            prefix: "",
        };
        let state_ttl_ms = keys
            .int(
                "state_ttl_ms",
                1,
                u64::MAX,
                "a positive integer (ms)",
                &mut errors,
            )
            .unwrap_or(DEFAULT_STATE_TTL_MS);
        let max_state_entries = keys
            .int(
                "max_state_entries",
                1,
                u64::from(MAX_STATE_ENTRIES_LIMIT),
                "an integer from 1 to 1000000",
                &mut errors,
            )
            .map_or(DEFAULT_MAX_STATE_ENTRIES, |n| n as u32);
        let metrics_reason = keys.boolean("metrics_reason", &mut errors).unwrap_or(false);

        let key_scope = root
            .get("key_scope")
            .and_then(|v| one_of(v, "key_scope", KEY_SCOPES, &mut errors))
            .unwrap_or(KeyScope::Request);

        let mut overrides = BTreeMap::new();
        match root.get("tool_overrides") {
            None => {}
            Some(Value::Object(tools)) => {
                // In key order (the order of the errors): serde_json's map is
                // sorted.
                for (tool, entry) in tools {
                    let prefix = override_path(tool);
                    if let Some(why) = unmatchable_tool_name(tool) {
                        errors.push(&prefix, why);
                        continue;
                    }
                    let Value::Object(fields) = entry else {
                        errors.push(&prefix, must_be("a mapping", entry));
                        continue;
                    };
                    let (merged, set) = parse_policy(fields, &prefix, &global, &cap, &mut errors);
                    check_policy(&merged, set, &prefix, &mut errors);
                    overrides.insert(tool.clone(), merged);
                }
            }
            Some(other) => errors.push("tool_overrides", must_be("a mapping", other)),
        }

        if errors.0.is_empty() {
            Ok((
                Self {
                    global,
                    overrides,
                    state_ttl_ms,
                    max_state_entries,
                    metrics_reason,
                    key_scope,
                },
                warnings.0,
            ))
        } else {
            Err(errors.0)
        }
    }

    /// The global policy.
    pub fn global(&self) -> &Policy {
        &self.global
    }

    /// The effective policy of `tool`: its override (merged) or the global one.
    pub fn policy_for(&self, tool: &str) -> &Policy {
        self.overrides.get(tool).unwrap_or(&self.global)
    }

    /// Whether any policy reads a key's delay history (decorrelated jitter
    /// its previous delay, a deadline its summed delays), so exported state
    /// must carry it.
    pub fn uses_delay_history(&self) -> bool {
        let reads =
            |p: &Policy| p.jitter_kind() == Jitter::Decorrelated || p.max_total_delay_ms.is_some();
        reads(&self.global) || self.overrides.values().any(reads)
    }

    /// Whether any policy has a retry budget (successes then change state,
    /// so no success may be answered without calling in).
    pub fn any_budget(&self) -> bool {
        self.global.retry_budget_percent.is_some()
            || self
                .overrides
                .values()
                .any(|p| p.retry_budget_percent.is_some())
    }

    /// Whether any policy (global or an override) inspects text content.
    pub fn any_text_check(&self) -> bool {
        self.global.check_text_content || self.overrides.values().any(|p| p.check_text_content)
    }

    /// Every policy: the global one, then each override's.
    fn policies(&self) -> impl Iterator<Item = &Policy> {
        core::iter::once(&self.global).chain(self.overrides.values())
    }

    /// Whether a result with no failure signal is, for every tool, a success
    /// that changes nothing for a key without state: no policy inspects text
    /// content or keeps a retry budget (which counts successes).
    pub fn stateless_successes(&self) -> bool {
        !self.any_text_check() && !self.any_budget()
    }

    /// Whether some policy reads signal bits 4..29 (safe classification, a
    /// delay hint: honoured, or making a failure throttled where the throttle
    /// bounds differ, or a refusal under `non_idempotent_retries`).
    pub fn reads_result_hints(&self) -> bool {
        self.policies().any(|p| {
            p.safe_classification
                || p.honor_retry_after
                || p.throttle_bounds() != (p.backoff_base_ms, p.max_backoff_ms)
                || p.non_idempotent_retries != NonIdempotentRetries::All
        })
    }

    /// Whether some policy reads signal bits 30..31 (the call's facts).
    pub fn reads_call_facts(&self) -> bool {
        self.policies()
            .any(|p| p.non_idempotent_retries != NonIdempotentRetries::All)
    }

    /// Tool names that have an override.
    pub fn overridden_tools(&self) -> impl Iterator<Item = &str> {
        self.overrides.keys().map(String::as_str)
    }

    /// TTL of a retry-state entry after its last failure (ms).
    pub fn state_ttl_ms(&self) -> u64 {
        self.state_ttl_ms
    }

    /// Bound on live retry-state entries of one gateway context (tenant and
    /// server) under this configuration.
    pub fn max_state_entries(&self) -> u32 {
        self.max_state_entries
    }

    /// Which identity the host puts in a state key besides the request id.
    pub fn key_scope(&self) -> KeyScope {
        self.key_scope
    }

    /// Whether the host should add the decision reason to trace metrics.
    pub fn metrics_reason(&self) -> bool {
        self.metrics_reason
    }
}

/// Collected problems, in document order.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: &str, message: String) {
        self.0.push(ConfigError {
            path: path.to_string(),
            message,
        });
    }
}

/// The gateway's retry ceiling while a configuration is read, and the
/// warnings for the values it lowers.
struct Cap<'a> {
    ceiling: Option<u32>,
    warnings: core::cell::RefCell<&'a mut Errors>,
}

impl Cap<'_> {
    /// An explicit `max_retries` of `n` at `prefix`, lowered to the ceiling.
    fn lower_explicit(&self, prefix: &str, n: u64) -> u64 {
        match self.ceiling {
            Some(c) if n > u64::from(c) => {
                self.warn(prefix, &n.to_string(), c);
                u64::from(c)
            }
            _ => n,
        }
    }

    /// An effective `max_retries` the mapping at `prefix` does not set
    /// (`what` says where it comes from), lowered to the ceiling.
    fn lower(&self, prefix: &str, max_retries: &mut u32, what: &str) {
        if let Some(c) = self.ceiling.filter(|&c| *max_retries > c) {
            self.warn(prefix, &format!("{max_retries}{what}"), c);
            *max_retries = c;
        }
    }

    fn warn(&self, prefix: &str, value: &str, ceiling: u32) {
        self.warnings.borrow_mut().push(
            &join(prefix, "max_retries"),
            format!(
                "{value} exceeds the gateway's retry ceiling (max_tool_retries = {ceiling}); \
                 lowered to {ceiling}"
            ),
        );
    }
}

/// Which keys of the cross-field rules a mapping set (to a valid value).
#[derive(Clone, Copy)]
struct Sets {
    backoff_base_ms: bool,
    max_backoff_ms: bool,
    throttle_backoff_base_ms: bool,
    throttle_max_backoff_ms: bool,
    backoff: bool,
    jitter: bool,
}

/// Reads the keys of one mapping (the document or a tool override),
/// reporting a problem at `prefix.key`: one reader per kind of value, so each
/// key's rule is one line of [`parse_policy`].
struct Keys<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Keys<'_> {
    fn report(&self, key: &str, message: String, errors: &mut Errors) {
        errors.push(&join(self.prefix, key), message);
    }

    /// An integer in `min..=max`; `None` if absent or invalid (reported as
    /// "must be <what>").
    fn int(&self, key: &str, min: u64, max: u64, what: &str, errors: &mut Errors) -> Option<u64> {
        let v = self.map.get(key)?;
        match v.as_u64() {
            Some(n) if n >= min && n <= max => Some(n),
            _ => {
                self.report(key, must_be(what, v), errors);
                None
            }
        }
    }

    /// As [`Keys::int`], where `null` is also valid: `Some(None)`.
    fn nullable_int(
        &self,
        key: &str,
        max: u64,
        what: &str,
        errors: &mut Errors,
    ) -> Option<Option<u64>> {
        match self.map.get(key)? {
            Value::Null => Some(None),
            _ => self.int(key, 1, max, what, errors).map(Some),
        }
    }

    /// As [`Keys::boolean`], where `null` is also valid: `Some(None)`.
    fn nullable_bool(&self, key: &str, errors: &mut Errors) -> Option<Option<bool>> {
        match self.map.get(key)? {
            Value::Null => Some(None),
            Value::Bool(b) => Some(Some(*b)),
            other => {
                self.report(key, must_be("null or a boolean", other), errors);
                None
            }
        }
    }

    fn boolean(&self, key: &str, errors: &mut Errors) -> Option<bool> {
        let v = self.map.get(key)?;
        let b = v.as_bool();
        if b.is_none() {
            self.report(key, must_be("a boolean", v), errors);
        }
        b
    }
}

/// The policy a mapping (global or a tool override) describes: `base` with
/// the keys the mapping sets. An invalid value is reported (keys in a fixed
/// order: the order of the errors) and leaves the base value.
fn parse_policy(
    map: &Map<String, Value>,
    prefix: &str,
    base: &Policy,
    cap: &Cap<'_>,
    errors: &mut Errors,
) -> (Policy, Sets) {
    const NON_NEGATIVE: &str = "a non-negative integer";
    let keys = Keys { map, prefix };
    let mut p = base.clone();
    let max_retries = keys
        .int("max_retries", 0, u64::MAX, NON_NEGATIVE, errors)
        .map(|n| cap.lower_explicit(prefix, n))
        .and_then(|n| {
            if n > u64::from(MAX_RETRIES_LIMIT) {
                let message = format!("cannot exceed {MAX_RETRIES_LIMIT}, got {n}");
                keys.report("max_retries", message, errors);
                None
            } else {
                Some(n as u32)
            }
        });
    if let Some(n) = max_retries {
        p.max_retries = n;
    }
    let backoff_base_ms = keys
        .int("backoff_base_ms", 0, u64::MAX, NON_NEGATIVE, errors)
        .and_then(|n| {
            if n == 0 {
                keys.report("backoff_base_ms", String::from("must be > 0"), errors);
                None
            } else {
                Some(n)
            }
        });
    if let Some(n) = backoff_base_ms {
        p.backoff_base_ms = n;
    }
    let max_backoff_ms = keys.int("max_backoff_ms", 0, u64::MAX, NON_NEGATIVE, errors);
    if let Some(n) = max_backoff_ms {
        p.max_backoff_ms = n;
    }
    if let Some(codes) = map
        .get("retry_on_status")
        .and_then(|v| parse_status_list(v, &join(prefix, "retry_on_status"), errors))
    {
        p.retry_on_status = codes;
    }
    if let Some(ms) = keys.nullable_int(
        "max_total_delay_ms",
        MAX_TOTAL_DELAY_LIMIT,
        "null or an integer from 1 to 4294967295 (ms)",
        errors,
    ) {
        p.max_total_delay_ms = ms;
    }
    let backoff = map
        .get("backoff")
        .and_then(|v| one_of(v, &join(prefix, "backoff"), SHAPES, errors));
    if let Some(shape) = backoff {
        p.backoff = shape;
    }
    const POSITIVE_OR_NULL: &str = "null or a positive integer (ms)";
    let throttle_backoff_base_ms = keys.nullable_int(
        "throttle_backoff_base_ms",
        u64::MAX,
        POSITIVE_OR_NULL,
        errors,
    );
    if let Some(ms) = throttle_backoff_base_ms {
        p.throttle_backoff_base_ms = ms;
    }
    let throttle_max_backoff_ms = keys.nullable_int(
        "throttle_max_backoff_ms",
        u64::MAX,
        POSITIVE_OR_NULL,
        errors,
    );
    if let Some(ms) = throttle_max_backoff_ms {
        p.throttle_max_backoff_ms = ms;
    }
    // `(on, mode)`: `true` = full, `false` = none, or a mode name.
    let jitter = map
        .get("jitter")
        .and_then(|v| parse_jitter(v, &join(prefix, "jitter"), errors));
    if let Some((on, mode)) = jitter {
        p.jitter = on;
        p.jitter_mode = mode;
    }
    if let Some(b) = keys.boolean("check_text_content", errors) {
        p.check_text_content = b;
    }
    if let Some(b) = keys.boolean("safe_classification", errors) {
        p.safe_classification = b;
    }
    if let Some(b) = keys.boolean("honor_retry_after", errors) {
        p.honor_retry_after = b;
    }
    if let Some(percent) = keys.nullable_int(
        "retry_budget_percent",
        1000,
        "null or an integer from 1 to 1000",
        errors,
    ) {
        p.retry_budget_percent = percent.map(|n| n as u32);
    }
    if let Some(n) = keys.int(
        "retry_budget_min_per_sec",
        0,
        1000,
        "an integer from 0 to 1000",
        errors,
    ) {
        p.retry_budget_min_per_sec = n as u32;
    }
    let retry_after_range = format!("an integer from 1 to {MAX_RETRY_AFTER_LIMIT} (ms)");
    if let Some(ms) = keys.int(
        "max_retry_after_ms",
        1,
        MAX_RETRY_AFTER_LIMIT,
        &retry_after_range,
        errors,
    ) {
        p.max_retry_after_ms = ms;
    }
    if let Some(mode) = map.get("non_idempotent_retries").and_then(|v| {
        one_of(
            v,
            &join(prefix, "non_idempotent_retries"),
            NON_IDEMPOTENT_RETRIES,
            errors,
        )
    }) {
        p.non_idempotent_retries = mode;
    }
    if let Some(idempotent) = keys.nullable_bool("idempotent", errors) {
        p.idempotent = idempotent;
    }
    let set = Sets {
        backoff_base_ms: backoff_base_ms.is_some(),
        max_backoff_ms: max_backoff_ms.is_some(),
        throttle_backoff_base_ms: throttle_backoff_base_ms.is_some(),
        throttle_max_backoff_ms: throttle_max_backoff_ms.is_some(),
        backoff: backoff.is_some(),
        jitter: jitter.is_some(),
    };
    (p, set)
}

/// The cross-field rules of one mapping's merged policy: each class's cap
/// at or above its base, and decorrelated jitter only with the exponential
/// shape. A rule is reported at a key the mapping sets; a mapping that sets
/// none of a rule's keys has nothing to report (for an override, the global
/// mapping already did).
fn check_policy(merged: &Policy, set: Sets, prefix: &str, errors: &mut Errors) {
    check_order(
        Bound {
            key: "backoff_base_ms",
            value: merged.backoff_base_ms,
            set: set.backoff_base_ms,
        },
        Bound {
            key: "max_backoff_ms",
            value: merged.max_backoff_ms,
            set: set.max_backoff_ms,
        },
        prefix,
        errors,
    );
    // The throttle class's bounds, each read from the key it comes from: its
    // own, or the transient one it follows. When it follows both, the rule
    // above already covers it.
    if merged.throttle_backoff_base_ms.is_some() || merged.throttle_max_backoff_ms.is_some() {
        let (base, max) = merged.throttle_bounds();
        // A throttle key the mapping sets to null is reported at itself: it
        // is what brought the transient value in.
        let low = match (
            merged.throttle_backoff_base_ms,
            set.throttle_backoff_base_ms,
        ) {
            (Some(_), _) | (None, true) => {
                ("throttle_backoff_base_ms", set.throttle_backoff_base_ms)
            }
            (None, false) => ("backoff_base_ms", set.backoff_base_ms),
        };
        let high = match (merged.throttle_max_backoff_ms, set.throttle_max_backoff_ms) {
            (Some(_), _) | (None, true) => ("throttle_max_backoff_ms", set.throttle_max_backoff_ms),
            (None, false) => ("max_backoff_ms", set.max_backoff_ms),
        };
        check_order(
            Bound {
                key: low.0,
                value: base,
                set: low.1,
            },
            Bound {
                key: high.0,
                value: max,
                set: high.1,
            },
            prefix,
            errors,
        );
    }
    if merged.jitter_kind() == Jitter::Decorrelated && merged.backoff != Shape::Exponential {
        // Decorrelated jitter grows from the key's previous delay: a shape
        // would have nothing to shape.
        let shape = merged.backoff.name();
        if set.backoff {
            errors.push(
                &join(prefix, "backoff"),
                format!(
                    "must be \"exponential\" with jitter \"decorrelated\" (it grows from the \
                     previous delay, not by a shape), got \"{shape}\""
                ),
            );
        } else if set.jitter {
            errors.push(
                &join(prefix, "jitter"),
                format!(
                    "\"decorrelated\" needs backoff \"exponential\" (it grows from the \
                     previous delay, not by a shape), got backoff \"{shape}\""
                ),
            );
        }
    }
}

/// One bound of an ordered pair as a mapping sees it: its key, its merged
/// value and whether the mapping set it.
struct Bound {
    key: &'static str,
    value: u64,
    set: bool,
}

/// `high >= low`, reported at the bound the mapping sets (`high` first). The
/// message names where the other bound came from: the same mapping, the
/// default (for the global mapping), or the global config (for an override).
fn check_order(low: Bound, high: Bound, prefix: &str, errors: &mut Errors) {
    if high.value >= low.value {
        return;
    }
    let global = prefix.is_empty();
    if high.set {
        let note = if global || low.set { "" } else { INHERITED };
        let rule = format!(">= {}", low.key);
        let message = out_of_order(&rule, low.value, note, high.value);
        errors.push(&join(prefix, high.key), message);
    } else if low.set {
        let note = if global { ", the default" } else { INHERITED };
        let rule = format!("<= {}", high.key);
        let message = out_of_order(&rule, high.value, note, low.value);
        errors.push(&join(prefix, low.key), message);
    }
}

/// `backoff`'s names.
const SHAPES: &[(&str, Shape)] = &[
    ("exponential", Shape::Exponential),
    ("linear", Shape::Linear),
    ("constant", Shape::Constant),
];

/// `non_idempotent_retries`' names.
const NON_IDEMPOTENT_RETRIES: &[(&str, NonIdempotentRetries)] = &[
    ("all", NonIdempotentRetries::All),
    ("throttled", NonIdempotentRetries::Throttled),
    ("none", NonIdempotentRetries::None),
];

/// `key_scope`'s names.
const KEY_SCOPES: &[(&str, KeyScope)] = &[
    ("request", KeyScope::Request),
    ("tenant", KeyScope::Tenant),
    ("user", KeyScope::User),
];

/// A value that must be one of `names` (a string), reported at `path`
/// otherwise as `must be one of "a", "b", "c", got ...`.
fn one_of<T: Copy>(v: &Value, path: &str, names: &[(&str, T)], errors: &mut Errors) -> Option<T> {
    let found = v
        .as_str()
        .and_then(|s| names.iter().find(|(name, _)| *name == s));
    if found.is_none() {
        let listed: Vec<String> = names
            .iter()
            .map(|(name, _)| format!("\"{name}\""))
            .collect();
        errors.push(path, must_be(&format!("one of {}", listed.join(", ")), v));
    }
    found.map(|(_, value)| *value)
}

/// `jitter`: a boolean (parity: `true` is full jitter) or a mode name.
fn parse_jitter(v: &Value, path: &str, errors: &mut Errors) -> Option<(bool, Jitter)> {
    let parsed = match v {
        Value::Bool(on) => Some((*on, Jitter::Full)),
        Value::String(s) => match s.as_str() {
            "none" => Some((false, Jitter::Full)),
            "full" => Some((true, Jitter::Full)),
            "equal" => Some((true, Jitter::Equal)),
            "decorrelated" => Some((true, Jitter::Decorrelated)),
            _ => None,
        },
        _ => None,
    };
    if parsed.is_none() {
        errors.push(
            path,
            must_be(
                "a boolean or one of \"none\", \"full\", \"equal\", \"decorrelated\"",
                v,
            ),
        );
    }
    parsed
}

fn parse_status_list(v: &Value, path: &str, errors: &mut Errors) -> Option<Vec<i32>> {
    let Value::Array(items) = v else {
        errors.push(path, must_be("a list of integers", v));
        return None;
    };
    let mut codes = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(code) => codes.push(code),
            None => {
                ok = false;
                let item_path = format!("{path}[{i}]");
                errors.push(&item_path, must_be("an integer status code (32-bit)", item));
            }
        }
    }
    ok.then_some(codes)
}

/// Why an override for `tool` could never match, if it could not: the host
/// sends such tool names as a digest.
fn unmatchable_tool_name(tool: &str) -> Option<String> {
    if tool.chars().count() > TOOL_NAME_MAX_CHARS {
        Some(format!(
            "tool name is longer than {TOOL_NAME_MAX_CHARS} characters: the host sends such \
             names as a digest, so this override could never match"
        ))
    } else if tool.starts_with(DIGEST_PREFIX) {
        Some(format!(
            "tool name starts with \"{DIGEST_PREFIX}\": the host sends such names as a \
             digest, so this override could never match"
        ))
    } else {
        None
    }
}

/// `tool_overrides.<tool>`, quoting tool names that would make the path
/// ambiguous (empty, or containing `.`, `[`, `]` or `"`).
fn override_path(tool: &str) -> String {
    if !tool.is_empty() && !tool.contains(['.', '[', ']', '"']) {
        format!("tool_overrides.{tool}")
    } else {
        format!("tool_overrides[\"{}\"]", tool.replace('"', "\\\""))
    }
}

/// `text` as a JSON value; an error at the document's path otherwise.
pub fn parse_json(text: &str) -> Result<Value, Vec<ConfigError>> {
    serde_json::from_str::<Value>(text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            message: format!("config is not valid JSON: {e}"),
        }]
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn must_be(what: &str, got: &Value) -> String {
    format!("must be {what}, got {}", Described(got))
}

/// What a cross-field message says about an inherited bound.
const INHERITED: &str = ", inherited from the global config";

/// `must be <rule> (<bound><note>), got <got>`, e.g.
/// `must be >= backoff_base_ms (200), got 100`.
fn out_of_order(rule: &str, bound: u64, note: &str, got: u64) -> String {
    format!("must be {rule} ({bound}{note}), got {got}")
}

/// A short, bounded rendering of an offending value for error messages:
/// containers by kind, a string cut at 60 characters (quotes included, then
/// `…`), and a float named rather than printed (no integer setting, status
/// code or delay is ever one, and its digits would not help).
struct Described<'a>(&'a Value);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Characters of a string kept after its opening quote when the
        /// quoted string would be longer than 60.
        const KEEP: usize = 60 - 1;
        match self.0 {
            Value::Array(_) => f.write_str("a list"),
            Value::Object(_) => f.write_str("a mapping"),
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::String(s) if s.chars().nth(KEEP - 1).is_none() => write!(f, "\"{s}\""),
            Value::String(s) => {
                let cut = s.char_indices().nth(KEEP).map_or(s.len(), |(i, _)| i);
                write!(f, "\"{}…", &s[..cut])
            }
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => write!(f, "{u}"),
                (None, Some(i)) => write!(f, "{i}"),
                (None, None) => f.write_str("a non-integer number"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(json: &str) -> Vec<String> {
        Config::from_json(json)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn test_config_defaults_match_native_manifest() {
        for json in [
            "null",
            "{}",
            r#"{"unknown_key": [1, 2], "wasm_path": "/x"}"#,
        ] {
            let c = Config::from_json(json).unwrap();
            assert_eq!(c.global(), &Policy::default());
            assert_eq!(c.state_ttl_ms(), 300_000);
            assert_eq!(c.max_state_entries(), 100_000);
            assert!(!c.metrics_reason());
        }
    }

    #[test]
    fn test_config_metrics_reason_is_a_global_boolean() {
        assert!(Config::from_json(r#"{"metrics_reason": true}"#)
            .unwrap()
            .metrics_reason());
        assert_eq!(
            errors(r#"{"metrics_reason": "yes"}"#),
            vec!["metrics_reason: must be a boolean, got \"yes\""]
        );
    }

    #[test]
    fn test_config_limits_inclusive() {
        let c =
            Config::from_json(r#"{"max_retries": 10, "backoff_base_ms": 7, "max_backoff_ms": 7}"#)
                .unwrap();
        assert_eq!(c.global().max_retries, 10);
        assert_eq!(c.global().max_backoff_ms, 7);
    }

    #[test]
    fn test_config_every_problem_reported_with_path() {
        let errs = errors(
            r#"{"max_retries": 11, "backoff_base_ms": 0, "jitter": "yes",
                "retry_on_status": [500, "503", 1e3], "state_ttl_ms": 0,
                "tool_overrides": {"search": {"max_backoff_ms": 100},
                                   "a.b": {"check_text_content": 1},
                                   "bad": []}}"#,
        );
        assert_eq!(
            errs,
            vec![
                "max_retries: cannot exceed 10, got 11",
                "backoff_base_ms: must be > 0",
                "retry_on_status[1]: must be an integer status code (32-bit), got \"503\"",
                "retry_on_status[2]: must be an integer status code (32-bit), got a non-integer number",
                "jitter: must be a boolean or one of \"none\", \"full\", \"equal\", \"decorrelated\", got \"yes\"",
                "state_ttl_ms: must be a positive integer (ms), got 0",
                "tool_overrides[\"a.b\"].check_text_content: must be a boolean, got 1",
                "tool_overrides.bad: must be a mapping, got a list",
                "tool_overrides.search.max_backoff_ms: must be >= backoff_base_ms (200, inherited from the global config), got 100",
            ]
        );
    }

    #[test]
    fn test_config_override_validated_against_inherited_values() {
        assert_eq!(
            errors(r#"{"tool_overrides": {"t": {"backoff_base_ms": 6000}}}"#),
            vec!["tool_overrides.t.backoff_base_ms: must be <= max_backoff_ms (5000, inherited from the global config), got 6000"]
        );
        assert_eq!(
            errors(r#"{"max_backoff_ms": 100}"#),
            vec!["max_backoff_ms: must be >= backoff_base_ms (200), got 100"]
        );
    }

    #[test]
    fn test_config_nulls_and_wrong_types_rejected() {
        assert_eq!(
            errors(r#"{"max_retries": null, "max_backoff_ms": -1, "tool_overrides": 3}"#),
            vec![
                "max_retries: must be a non-negative integer, got null",
                "max_backoff_ms: must be a non-negative integer, got -1",
                "tool_overrides: must be a mapping, got 3",
            ]
        );
        assert_eq!(errors("[1]"), vec!["must be a mapping, got a list"]);
        assert!(errors("{")
            .iter()
            .all(|e| e.starts_with("config is not valid JSON")));
    }

    #[test]
    fn test_config_override_merges_and_inherits() {
        let c = Config::from_json(
            r#"{"max_retries": 3, "jitter": false,
                "tool_overrides": {"t": {"max_retries": 0, "retry_on_status": [503]}}}"#,
        )
        .unwrap();
        let t = c.policy_for("t");
        assert_eq!(t.max_retries, 0);
        assert_eq!(t.retry_on_status, vec![503]);
        assert!(!t.jitter);
        assert_eq!(c.policy_for("other").max_retries, 3);
    }

    #[test]
    fn test_config_jitter_modes_and_booleans() {
        let c = Config::from_json(
            r#"{"jitter": "decorrelated", "tool_overrides": {
                "a": {"jitter": true}, "b": {"jitter": "none"}, "c": {"jitter": "equal"},
                "d": {"max_retries": 1}}}"#,
        )
        .unwrap();
        assert_eq!(c.global().jitter_kind(), Jitter::Decorrelated);
        assert_eq!(c.policy_for("a").jitter_kind(), Jitter::Full);
        assert_eq!(c.policy_for("b").jitter_kind(), Jitter::None);
        assert!(!c.policy_for("b").jitter);
        assert_eq!(c.policy_for("c").jitter_kind(), Jitter::Equal);
        assert_eq!(c.policy_for("d").jitter_kind(), Jitter::Decorrelated);
        let c = Config::from_json(r#"{"jitter": false}"#).unwrap();
        assert_eq!(c.global().jitter_kind(), Jitter::None);
        assert_eq!(
            c.global().jitter_mode,
            Jitter::Full,
            "false is parity: as the default"
        );
        assert_eq!(
            errors(r#"{"tool_overrides": {"t": {"jitter": "Full"}}}"#),
            vec!["tool_overrides.t.jitter: must be a boolean or one of \"none\", \"full\", \"equal\", \"decorrelated\", got \"Full\""]
        );
    }

    #[test]
    fn test_config_backoff_shapes_and_throttle_bounds() {
        let c = Config::from_json(
            r#"{"backoff": "linear", "throttle_backoff_base_ms": 1000,
                "throttle_max_backoff_ms": 30000, "tool_overrides": {
                "c": {"backoff": "constant", "backoff_base_ms": 50},
                "same": {"throttle_backoff_base_ms": null, "throttle_max_backoff_ms": null}}}"#,
        )
        .unwrap();
        let g = c.global();
        assert_eq!(g.backoff, Shape::Linear);
        assert_eq!(
            g.curve(false),
            Curve {
                shape: Shape::Linear,
                base_ms: 200,
                max_ms: 5000
            }
        );
        assert_eq!(
            g.curve(true),
            Curve {
                shape: Shape::Linear,
                base_ms: 1000,
                max_ms: 30000
            }
        );
        let t = c.policy_for("c");
        assert_eq!(
            t.curve(false),
            Curve {
                shape: Shape::Constant,
                base_ms: 50,
                max_ms: 5000
            }
        );
        assert_eq!(t.throttle_bounds(), (1000, 30000), "inherited");
        // null: the throttle class follows the transient one again.
        assert_eq!(c.policy_for("same").throttle_bounds(), (200, 5000));
        // Unset, the throttle class follows each mapping's transient bounds.
        let c = Config::from_json(
            r#"{"backoff_base_ms": 300, "tool_overrides": {"t": {"max_backoff_ms": 900}}}"#,
        )
        .unwrap();
        assert_eq!(c.global().throttle_bounds(), (300, 5000));
        assert_eq!(c.policy_for("t").throttle_bounds(), (300, 900));
        assert_eq!(Config::default().global().backoff, Shape::Exponential);
    }

    #[test]
    fn test_config_backoff_and_throttle_errors_name_their_keys() {
        assert_eq!(
            errors(
                r#"{"backoff": "fibonacci", "throttle_backoff_base_ms": 0,
                    "throttle_max_backoff_ms": "5"}"#
            ),
            vec![
                "backoff: must be one of \"exponential\", \"linear\", \"constant\", got \"fibonacci\"",
                "throttle_backoff_base_ms: must be null or a positive integer (ms), got 0",
                "throttle_max_backoff_ms: must be null or a positive integer (ms), got \"5\"",
            ]
        );
        // The throttle class's order, against the key each bound comes from.
        assert_eq!(
            errors(r#"{"throttle_backoff_base_ms": 9000}"#),
            vec![
                "throttle_backoff_base_ms: must be <= max_backoff_ms (5000, the default), got 9000"
            ]
        );
        assert_eq!(
            errors(r#"{"throttle_backoff_base_ms": 900, "throttle_max_backoff_ms": 800}"#),
            vec!["throttle_max_backoff_ms: must be >= throttle_backoff_base_ms (900), got 800"]
        );
        assert_eq!(
            errors(
                r#"{"throttle_max_backoff_ms": 1000, "tool_overrides": {
                    "t": {"backoff_base_ms": 2000, "max_backoff_ms": 9000}}}"#
            ),
            vec!["tool_overrides.t.backoff_base_ms: must be <= throttle_max_backoff_ms (1000, inherited from the global config), got 2000"]
        );
        // A null in an override brings the transient bound back: checked too.
        assert_eq!(
            errors(
                r#"{"throttle_backoff_base_ms": 100, "throttle_max_backoff_ms": 150,
                    "tool_overrides": {"t": {"throttle_backoff_base_ms": null}}}"#
            ),
            vec!["tool_overrides.t.throttle_backoff_base_ms: must be <= throttle_max_backoff_ms (150, inherited from the global config), got 200"]
        );
        assert_eq!(
            errors(
                r#"{"max_backoff_ms": 3000, "throttle_backoff_base_ms": 4000,
                    "throttle_max_backoff_ms": 10000, "tool_overrides": {"u": {"throttle_max_backoff_ms": null}}}"#
            ),
            vec!["tool_overrides.u.throttle_max_backoff_ms: must be >= throttle_backoff_base_ms (4000, inherited from the global config), got 3000"]
        );
        // Decorrelated jitter has its own growth: only with the exponential shape.
        assert_eq!(
            errors(r#"{"backoff": "linear", "jitter": "decorrelated"}"#),
            vec!["backoff: must be \"exponential\" with jitter \"decorrelated\" (it grows from the previous delay, not by a shape), got \"linear\""]
        );
        assert_eq!(
            errors(r#"{"backoff": "constant", "tool_overrides": {"t": {"jitter": "decorrelated"}}}"#),
            vec!["tool_overrides.t.jitter: \"decorrelated\" needs backoff \"exponential\" (it grows from the previous delay, not by a shape), got backoff \"constant\""]
        );
    }

    #[test]
    fn test_config_max_total_delay_ms_inherits_and_null_turns_it_off() {
        let c = Config::from_json(
            r#"{"max_total_delay_ms": 1000, "tool_overrides": {
                "off": {"max_total_delay_ms": null}, "long": {"max_total_delay_ms": 4294967295},
                "same": {"max_retries": 1}}}"#,
        )
        .unwrap();
        assert_eq!(c.global().max_total_delay_ms, Some(1000));
        assert_eq!(c.policy_for("off").max_total_delay_ms, None);
        assert_eq!(
            c.policy_for("long").max_total_delay_ms,
            Some(u64::from(u32::MAX))
        );
        assert_eq!(c.policy_for("same").max_total_delay_ms, Some(1000));
        assert!(c.uses_delay_history());
        assert_eq!(Config::default().global().max_total_delay_ms, None);
        assert!(!Config::default().uses_delay_history());
        for bad in ["0", "4294967296", "-1", "\"1s\""] {
            let errs = errors(&format!(
                r#"{{"tool_overrides": {{"t": {{"max_total_delay_ms": {bad}}}}}}}"#
            ));
            assert_eq!(errs.len(), 1, "{bad}");
            assert!(
                errs[0].starts_with("tool_overrides.t.max_total_delay_ms: must be null or an integer from 1 to 4294967295 (ms), got"),
                "{}",
                errs[0]
            );
        }
    }

    #[test]
    fn test_config_safe_classification_global_and_per_tool() {
        let c = Config::from_json(
            r#"{"safe_classification": true, "tool_overrides": {"raw": {"safe_classification": false}}}"#,
        )
        .unwrap();
        assert!(c.global().safe_classification);
        assert!(!c.policy_for("raw").safe_classification);
        assert!(!Config::default().global().safe_classification);
        assert_eq!(
            errors(r#"{"tool_overrides": {"t": {"safe_classification": "yes"}}}"#),
            vec!["tool_overrides.t.safe_classification: must be a boolean, got \"yes\""]
        );
    }

    #[test]
    fn test_config_retry_after_keys() {
        let c = Config::from_json(
            r#"{"honor_retry_after": true, "tool_overrides": {"t": {"max_retry_after_ms": 4194303}}}"#,
        )
        .unwrap();
        assert!(c.policy_for("t").honor_retry_after);
        assert_eq!(c.policy_for("t").max_retry_after_ms, 4_194_303);
        assert_eq!(c.global().max_retry_after_ms, 60_000);
        assert!(!Config::default().global().honor_retry_after);
        assert_eq!(
            errors(r#"{"max_retry_after_ms": 4194304, "honor_retry_after": 1}"#),
            vec![
                "honor_retry_after: must be a boolean, got 1",
                "max_retry_after_ms: must be an integer from 1 to 4194303 (ms), got 4194304",
            ]
        );
    }

    #[test]
    fn test_config_non_idempotent_keys() {
        let c = Config::from_json(
            r#"{"non_idempotent_retries": "throttled", "tool_overrides": {
                "a": {"idempotent": true}, "b": {"non_idempotent_retries": "none", "idempotent": false},
                "c": {"idempotent": null}}}"#,
        )
        .unwrap();
        let g = c.global();
        assert_eq!(
            (g.non_idempotent_retries, g.idempotent),
            (NonIdempotentRetries::Throttled, None)
        );
        let a = c.policy_for("a");
        assert_eq!(
            (a.non_idempotent_retries, a.idempotent),
            (NonIdempotentRetries::Throttled, Some(true))
        );
        let b = c.policy_for("b");
        assert_eq!(
            (b.non_idempotent_retries, b.idempotent),
            (NonIdempotentRetries::None, Some(false))
        );
        assert_eq!(c.policy_for("c").idempotent, None);
        // A global `idempotent` is inherited, and an override's null takes it back.
        let c = Config::from_json(
            r#"{"idempotent": true, "tool_overrides": {"x": {"idempotent": null}}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.global().idempotent, c.policy_for("x").idempotent),
            (Some(true), None)
        );
        let d = Config::default();
        assert_eq!(
            (d.global().non_idempotent_retries, d.global().idempotent),
            (NonIdempotentRetries::All, None)
        );
        assert_eq!(
            errors(
                r#"{"non_idempotent_retries": "some", "idempotent": "yes",
                    "tool_overrides": {"t": {"non_idempotent_retries": true, "idempotent": 1}}}"#
            ),
            vec![
                "non_idempotent_retries: must be one of \"all\", \"throttled\", \"none\", got \"some\"",
                "idempotent: must be null or a boolean, got \"yes\"",
                "tool_overrides.t.non_idempotent_retries: must be one of \"all\", \"throttled\", \"none\", got true",
                "tool_overrides.t.idempotent: must be null or a boolean, got 1",
            ]
        );
    }

    #[test]
    fn test_config_retry_budget_keys() {
        let c = Config::from_json(
            r#"{"retry_budget_percent": 34, "tool_overrides": {
                "off": {"retry_budget_percent": null}, "fast": {"retry_budget_min_per_sec": 0}}}"#,
        )
        .unwrap();
        let b = |p: &Policy| p.retry_budget().map(|b| (b.percent, b.min_per_sec));
        assert_eq!(b(c.global()), Some((34, 1)));
        assert_eq!(b(c.policy_for("off")), None);
        assert_eq!(b(c.policy_for("fast")), Some((34, 0)));
        assert!(c.any_budget());
        assert!(!Config::default().any_budget());
        // A floor alone does not turn a budget on, but is inherited.
        let c = Config::from_json(
            r#"{"retry_budget_min_per_sec": 5, "tool_overrides": {"t": {"retry_budget_percent": 10}}}"#,
        )
        .unwrap();
        assert_eq!(c.global().retry_budget(), None);
        assert_eq!(b(c.policy_for("t")), Some((10, 5)));
        assert_eq!(
            errors(r#"{"retry_budget_percent": 0, "retry_budget_min_per_sec": 1001}"#),
            vec![
                "retry_budget_percent: must be null or an integer from 1 to 1000, got 0",
                "retry_budget_min_per_sec: must be an integer from 0 to 1000, got 1001",
            ]
        );
    }

    /// Issue 23 §6: the gateway's ceiling is the engine's input; no host
    /// clamps.
    #[test]
    fn test_config_ceiling_lowers_every_effective_max_retries() {
        let capped = |json: &str, ceiling| {
            let value: Value = serde_json::from_str(json).unwrap();
            let (c, warnings) = Config::from_value_capped(&value, ceiling).unwrap();
            let paths: Vec<String> = warnings.iter().map(ToString::to_string).collect();
            (c, paths)
        };
        // The default (2) above a ceiling of 1; an override's explicit 20 (past
        // the limit of 10: lowered before it is validated); an override that
        // inherits, unwarned.
        let (c, warnings) = capped(
            r#"{"tool_overrides": {"a": {"max_retries": 20}, "b": {"backoff_base_ms": 5}, "c": {"max_retries": 0}}}"#,
            Some(1),
        );
        assert_eq!(c.global().max_retries, 1);
        assert_eq!(c.policy_for("a").max_retries, 1);
        assert_eq!(c.policy_for("b").max_retries, 1);
        assert_eq!(c.policy_for("c").max_retries, 0);
        assert_eq!(
            warnings,
            vec![
                "max_retries: 2 (the default) exceeds the gateway's retry ceiling (max_tool_retries = 1); lowered to 1",
                "tool_overrides.a.max_retries: 20 exceeds the gateway's retry ceiling (max_tool_retries = 1); lowered to 1",
            ]
        );
        // At or under the ceiling, or no ceiling: nothing lowered.
        let (c, warnings) = capped(r#"{"max_retries": 3}"#, Some(3));
        assert_eq!((c.global().max_retries, warnings.len()), (3, 0));
        let (c, warnings) = capped(r#"{"max_retries": 3}"#, None);
        assert_eq!((c.global().max_retries, warnings.len()), (3, 0));
        // Without a ceiling, past the limit is still an error.
        assert_eq!(
            errors(r#"{"max_retries": 20}"#),
            vec!["max_retries: cannot exceed 10, got 20"]
        );
        // A ceiling of 0: no retries at all.
        let (c, _) = capped("{}", Some(0));
        assert_eq!(c.global().max_retries, 0);
    }

    #[test]
    fn test_config_flags_the_host_reads() {
        let c = |json: &str| Config::from_json(json).unwrap();
        let plain = c("{}");
        assert!(plain.stateless_successes());
        assert!(!plain.reads_result_hints() && !plain.reads_call_facts());
        assert!(
            !c(r#"{"tool_overrides": {"t": {"check_text_content": true}}}"#).stateless_successes()
        );
        assert!(!c(r#"{"retry_budget_percent": 10}"#).stateless_successes());
        for hints in [
            r#"{"safe_classification": true}"#,
            r#"{"tool_overrides": {"t": {"honor_retry_after": true}}}"#,
            r#"{"throttle_backoff_base_ms": 1000}"#,
        ] {
            let config = c(hints);
            assert!(config.reads_result_hints(), "{hints}");
            assert!(!config.reads_call_facts(), "{hints}");
        }
        // Equal throttle bounds differ from nothing.
        assert!(!c(r#"{"throttle_backoff_base_ms": 200}"#).reads_result_hints());
        let facts = c(r#"{"tool_overrides": {"t": {"non_idempotent_retries": "throttled"}}}"#);
        assert!(facts.reads_call_facts() && facts.reads_result_hints());
    }

    #[test]
    fn test_config_key_scope() {
        assert_eq!(Config::default().key_scope(), KeyScope::Request);
        for (name, want) in [
            ("request", KeyScope::Request),
            ("tenant", KeyScope::Tenant),
            ("user", KeyScope::User),
        ] {
            let c = Config::from_json(&format!(r#"{{"key_scope": "{name}"}}"#)).unwrap();
            assert_eq!(c.key_scope(), want);
        }
        assert_eq!(
            errors(r#"{"key_scope": "session"}"#),
            vec!["key_scope: must be one of \"request\", \"tenant\", \"user\", got \"session\""]
        );
    }

    #[test]
    fn test_config_max_state_entries_bounds() {
        let ok = Config::from_json(r#"{"max_state_entries": 1000000}"#).unwrap();
        assert_eq!(ok.max_state_entries(), MAX_STATE_ENTRIES_LIMIT);
        for bad in ["0", "1000001", "-1", "1.5"] {
            let errs = errors(&format!(r#"{{"max_state_entries": {bad}}}"#));
            assert_eq!(errs.len(), 1, "{bad}");
            assert!(errs[0].starts_with("max_state_entries: must be an integer from 1 to 1000000"));
        }
    }

    #[test]
    fn test_config_describe_cuts_strings_at_60_characters() {
        // The rule as first written: render, then cut at character 60.
        let oracle = |s: &str| {
            let text = format!("\"{s}\"");
            match text.char_indices().nth(60) {
                Some((end, _)) => format!("{}…", &text[..end]),
                None => text,
            }
        };
        for unit in ["x", "é", "✓", "😀"] {
            for n in [0, 1, 57, 58, 59, 60, 61, 100] {
                let s = unit.repeat(n);
                let got = Described(&Value::String(s.clone())).to_string();
                assert_eq!(got, oracle(&s), "{unit} x {n}");
                let mixed = format!("{s}é✓😀ab");
                let got = Described(&Value::String(mixed.clone())).to_string();
                assert_eq!(got, oracle(&mixed), "{unit} x {n} mixed");
            }
        }
    }

    #[test]
    fn test_config_override_names_the_host_digests_are_refused() {
        let long = "é".repeat(TOOL_NAME_MAX_CHARS + 1);
        let edge = "é".repeat(TOOL_NAME_MAX_CHARS);
        let errs = errors(&format!(
            r##"{{"tool_overrides": {{"{long}": {{"max_retries": 99}}, "{edge}": {{"max_retries": 1}},
                "#sha256:ab": {{}}, "x#sha256:": {{}}}}}}"##
        ));
        assert_eq!(
            errs,
            vec![
                "tool_overrides.#sha256:ab: tool name starts with \"#sha256:\": the host sends \
                 such names as a digest, so this override could never match"
                    .to_string(),
                format!(
                    "tool_overrides.{long}: tool name is longer than 256 characters: the host \
                     sends such names as a digest, so this override could never match"
                ),
            ]
        );
    }

    #[test]
    fn test_config_describe_truncates_long_values() {
        let long = "x".repeat(500);
        let errs = errors(&format!(r#"{{"check_text_content": "{long}"}}"#));
        assert!(errs[0].len() < 120, "{}", errs[0]);
    }
}
