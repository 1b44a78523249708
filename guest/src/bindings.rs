//! The wit-bindgen glue: converts WIT values and delegates to [`crate::policy`].
//! No policy logic lives here; it owns the instance's one engine and its
//! clock offset.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::policy::backoff::{Jitter, Shape};
use crate::policy::config::{KeyScope, NonIdempotentRetries};
use crate::policy::{
    simulate, snapshot, Config, ConfigError, Decision, Engine, Outcome, Policy, Reason,
};
use crate::wire;

mod wit {
    wit_bindgen::generate!({
        world: "retry-component",
        path: "../wit",
        // `pollable` (from wasi:io/poll) appears in monotonic-clock's
        // signature; the engine never calls the functions that use it, so the
        // built component does not import wasi:io.
        generate_all,
    });
}

use wit::exports::contextforge::retry::retry_engine as api;
use wit::wasi::clocks::monotonic_clock;
use wit::wasi::random::insecure_seed;

/// The instance's engine (created on first use, seeded from the import) and
/// the offset from the imported clock to the host's process clock (`init`).
struct Instance {
    engine: Option<Engine>,
    clock_offset_ns: u64,
}

struct Global(RefCell<Instance>);
// SAFETY: a component instance is single-threaded; nothing here is shared
// across threads.
unsafe impl Sync for Global {}
static INSTANCE: Global = Global(RefCell::new(Instance {
    engine: None,
    clock_offset_ns: 0,
}));

fn with_engine<R>(f: impl FnOnce(&mut Engine) -> R) -> R {
    // Never already borrowed: nothing calls back into the component (were it
    // to, the borrow would trap, and the host rebuild the instance).
    let mut instance = INSTANCE.0.borrow_mut();
    f(instance
        .engine
        .get_or_insert_with(|| Engine::new(insecure_seed::insecure_seed())))
}

/// Now on the host's process clock (ms): the imported clock plus the offset.
fn now_ms() -> u64 {
    let offset = INSTANCE.0.borrow().clock_offset_ns;
    monotonic_clock::now().wrapping_add(offset) / 1_000_000
}

struct Component;

impl api::Guest for Component {
    fn init(clock_ns: u64, memory_bytes: u64) {
        INSTANCE.0.borrow_mut().clock_offset_ns = clock_ns.wrapping_sub(monotonic_clock::now());
        if memory_bytes > 0 {
            with_engine(|e| e.set_memory_limit(memory_bytes));
        }
    }

    fn open_policy(
        scope: String,
        config_json: String,
        max_retries_ceiling: Option<u32>,
    ) -> Result<api::OpenedPolicy, Vec<api::ConfigError>> {
        let now = now_ms();
        with_engine(|e| {
            let opened = e
                .open_json(&scope, &config_json, max_retries_ceiling, now)
                .map_err(to_wit_errors)?;
            let config = e.config(opened.id).expect("just opened");
            Ok(api::OpenedPolicy {
                id: opened.id,
                reads: reads(config),
                key_scope: match config.key_scope() {
                    KeyScope::Request => api::KeyScope::Request,
                    KeyScope::Tenant => api::KeyScope::Tenant,
                    KeyScope::User => api::KeyScope::User,
                },
                global: to_wit_policy(config.global()),
                warnings: to_wit_errors(opened.warnings),
            })
        })
    }

    fn close_policy(policy: u64) {
        with_engine(|e| e.close(policy));
    }

    fn decide(policy: u64, key: String, parts: u64, signals: u64) -> u64 {
        decide(policy, &key, parts, signals, None)
    }

    fn decide_text(policy: u64, key: String, parts: u64, signals: u64, texts: Vec<String>) -> u64 {
        decide(policy, &key, parts, signals, Some(&texts))
    }

    fn decide_held(handle: u32, signals: u64) -> u64 {
        #[cfg(feature = "fault-injection")]
        with_engine(|e| {
            if let Some((_, _, key)) = e.state().key_of(handle) {
                inject_held_fault(key.tool);
            }
        });
        let hints = wire::unpack_hints(signals);
        let signals = wire::unpack_signals(signals);
        let now = now_ms();
        with_engine(|e| match e.decide_held(handle, signals, hints, now) {
            Some(outcome) => decision_bits(outcome),
            None => wire::UNKNOWN_HANDLE,
        })
    }

    fn tool_policy(policy: u64, tool: String) -> Option<api::Policy> {
        with_engine(|e| e.config(policy).map(|c| to_wit_policy(c.policy_for(&tool))))
    }

    fn state_count(policy: Option<u64>) -> u32 {
        with_engine(|e| match policy {
            None => e.state_count() as u32,
            Some(id) => e.policy_state_count(id).unwrap_or(0) as u32,
        })
    }

    fn policy_count() -> u32 {
        with_engine(|e| e.policy_count() as u32)
    }

    fn evict_expired() -> u32 {
        let now = now_ms();
        with_engine(|e| e.evict_expired(now) as u32)
    }

    fn export_state() -> String {
        let now = now_ms();
        with_engine(|e| snapshot::export(e, now))
    }

    fn import_state(state_json: String) -> Result<u32, String> {
        let now = now_ms();
        with_engine(|e| snapshot::import(e, &state_json, now))
    }

    fn simulate(
        config_json: String,
        seed: u64,
        steps: Vec<api::SimStep>,
    ) -> Result<Vec<api::SimDecision>, Vec<api::ConfigError>> {
        let borrowed: Vec<simulate::Step<'_>> = steps
            .iter()
            .map(|s| simulate::Step {
                tool: &s.tool,
                request_id: &s.request_id,
                result_json: &s.result_json,
                advance_ms: s.advance_ms,
                timeout: has_fact(s.call, api::CallFacts::TIMEOUT),
                idempotent: has_fact(s.call, api::CallFacts::IDEMPOTENT),
            })
            .collect();
        let decisions = simulate::simulate(&config_json, seed, &borrowed).map_err(to_wit_errors)?;
        Ok(decisions.iter().map(to_wit_decision).collect())
    }

    fn contract_version() -> String {
        crate::CONTRACT_VERSION.to_string()
    }
}

fn decide(policy: u64, key: &str, parts: u64, signals: u64, texts: Option<&[String]>) -> u64 {
    let key = wire::split_key(key, parts);
    #[cfg(feature = "fault-injection")]
    inject_fault(key.tool);
    let hints = wire::unpack_hints(signals);
    let signals = wire::unpack_signals(signals);
    let now = now_ms();
    with_engine(|e| decision_bits(e.decide(policy, &key, signals, hints, texts, now)))
}

/// The `decision` word of an outcome.
fn decision_bits(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Decided(d, handle) => wire::pack_decision(&d, handle),
        Outcome::NeedText => wire::NEED_TEXT,
        Outcome::UnknownPolicy => wire::UNKNOWN_POLICY,
    }
}

/// What a host reads of `config` to call with it.
fn reads(config: &Config) -> api::PolicyReads {
    let mut reads = api::PolicyReads::empty();
    for (on, flag) in [
        (config.reads_result_hints(), api::PolicyReads::RESULT_HINTS),
        (config.reads_call_facts(), api::PolicyReads::CALL_FACTS),
        (
            config.stateless_successes(),
            api::PolicyReads::STATELESS_SUCCESSES,
        ),
        (config.metrics_reason(), api::PolicyReads::METRICS_REASON),
    ] {
        if on {
            reads = reads | flag;
        }
    }
    reads
}

/// A runaway guest in `decide-held` only: a key of this tool gets its first
/// failure decided normally, then spins once the host asks by handle.
#[cfg(feature = "fault-injection")]
fn inject_held_fault(tool: &str) {
    if tool == "__fault_spin_held__" {
        loop {
            core::hint::black_box(());
        }
    }
}

/// Deliberate faults for the host's fault-injection tests, keyed by magic tool
/// names. Only in the `fault-injection` build (`make wasm-faulty`, written to
/// `target/wasm/retry_engine_faulty.wasm`); the release component has none.
#[cfg(feature = "fault-injection")]
fn inject_fault(tool: &str) {
    match tool {
        // A guest bug: trap.
        "__fault_trap__" => core::arch::wasm32::unreachable(),
        // A runaway guest: only the host's fuel budget stops it.
        "__fault_spin__" => loop {
            core::hint::black_box(());
        },
        // A leak: allocate (untouched, so fuel is not what runs out) until the
        // host's memory cap refuses to grow; the failed allocation aborts.
        "__fault_oom__" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(Vec::with_capacity(1 << 20));
                core::hint::black_box(&hog);
            }
        }
        _ => {}
    }
}

/// Whether a step's `call` facts include `fact` (wit-bindgen's flags type,
/// without the bitflags crate, has no `contains`).
fn has_fact(call: Option<api::CallFacts>, fact: api::CallFacts) -> bool {
    call.is_some_and(|c| (c & fact).bits() != 0)
}

fn to_wit_errors(errors: Vec<ConfigError>) -> Vec<api::ConfigError> {
    errors
        .into_iter()
        .map(|e| api::ConfigError {
            path: e.path,
            message: e.message,
        })
        .collect()
}

fn to_wit_policy(p: &Policy) -> api::Policy {
    api::Policy {
        max_retries: p.max_retries,
        backoff_base_ms: p.backoff_base_ms,
        max_backoff_ms: p.max_backoff_ms,
        backoff: match p.backoff {
            Shape::Exponential => api::BackoffShape::Exponential,
            Shape::Linear => api::BackoffShape::Linear,
            Shape::Constant => api::BackoffShape::Constant,
        },
        throttle_backoff_base_ms: p.throttle_bounds().0,
        throttle_max_backoff_ms: p.throttle_bounds().1,
        retry_on_status: p.retry_on_status.clone(),
        jitter: p.jitter,
        jitter_mode: match p.jitter_kind() {
            Jitter::None => api::JitterMode::None,
            Jitter::Full => api::JitterMode::Full,
            Jitter::Equal => api::JitterMode::Equal,
            Jitter::Decorrelated => api::JitterMode::Decorrelated,
        },
        check_text_content: p.check_text_content,
        max_total_delay_ms: p.max_total_delay_ms,
        safe_classification: p.safe_classification,
        honor_retry_after: p.honor_retry_after,
        max_retry_after_ms: p.max_retry_after_ms,
        retry_budget_percent: p.retry_budget_percent,
        retry_budget_min_per_sec: p.retry_budget_min_per_sec,
        non_idempotent_retries: match p.non_idempotent_retries {
            NonIdempotentRetries::All => api::NonIdempotentRetries::All,
            NonIdempotentRetries::Throttled => api::NonIdempotentRetries::Throttled,
            NonIdempotentRetries::None => api::NonIdempotentRetries::None,
        },
        idempotent: p.idempotent,
    }
}

fn to_wit_decision(d: &Decision) -> api::SimDecision {
    api::SimDecision {
        delay_ms: d.delay_ms,
        retry_count: d.failures,
        reason: match d.reason {
            Reason::Success => api::DecisionReason::Success,
            Reason::Retry => api::DecisionReason::Retry,
            Reason::Exhausted => api::DecisionReason::Exhausted,
            Reason::NonRetryable => api::DecisionReason::NonRetryable,
            Reason::Budget => api::DecisionReason::Budget,
            Reason::Deadline => api::DecisionReason::Deadline,
            Reason::RetryAfter => api::DecisionReason::RetryAfter,
            Reason::NonIdempotent => api::DecisionReason::NonIdempotent,
        },
    }
}

wit::export!(Component with_types_in wit);
