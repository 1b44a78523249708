//! The wit-bindgen glue: converts WIT values and delegates to [`crate::policy`].
//! No policy logic lives here.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use crate::policy::backoff::{Jitter, Shape};
use crate::policy::config::NonIdempotentRetries;
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

/// The instance's one engine, created on first use (seeded from the import).
struct Global(RefCell<Option<Engine>>);
// SAFETY: a component instance is single-threaded; nothing here is shared
// across threads.
unsafe impl Sync for Global {}
static ENGINE: Global = Global(RefCell::new(None));

fn with_engine<R>(f: impl FnOnce(&mut Engine) -> R) -> R {
    // Never already borrowed: nothing calls back into the component (were it
    // to, the borrow would trap, and the host rebuild the instance).
    let mut slot = ENGINE.0.borrow_mut();
    f(slot.get_or_insert_with(|| Engine::new(insecure_seed::insecure_seed())))
}

fn now_ms() -> u64 {
    monotonic_clock::now() / 1_000_000
}

struct Component;

impl api::Guest for Component {
    fn configure(config_json: String) -> Result<(), Vec<api::ConfigError>> {
        let config = Config::from_json(&config_json).map_err(to_wit_errors)?;
        with_engine(|e| {
            // Forget what has expired under the TTL in force first: a longer new TTL must not
            // bring back entries that were already gone (the sweep is amortized, so some may
            // not have been removed yet). The clock is only read when there is state.
            if e.state_count() > 0 {
                e.evict_expired(now_ms());
            }
            e.configure(config);
        });
        Ok(())
    }

    fn decide(key: String, tool_len: u32, signals: u64, handle: u32) -> u64 {
        decide(&key, tool_len, signals, None, handle)
    }

    fn decide_text(
        key: String,
        tool_len: u32,
        signals: u64,
        texts: Vec<String>,
        handle: u32,
    ) -> u64 {
        decide(&key, tool_len, signals, Some(&texts), handle)
    }

    fn decide_held(handle: u32, signals: u64) -> u64 {
        #[cfg(feature = "fault-injection")]
        with_engine(|e| {
            if let Some((_, tool, _)) = e.state().key_of(handle) {
                inject_held_fault(tool);
            }
        });
        let hints = wire::unpack_hints(signals);
        let signals = wire::unpack_signals(signals);
        let now = now_ms();
        with_engine(|e| match e.decide_held(handle, signals, hints, now) {
            Some(outcome) => decision_bits(e, outcome),
            None => wire::UNKNOWN_HANDLE,
        })
    }

    fn tool_policy(tool: String) -> api::Policy {
        with_engine(|e| to_wit_policy(e.policy_for(&tool)))
    }

    fn global_policy() -> api::Policy {
        with_engine(|e| to_wit_policy(e.config().global()))
    }

    fn state_count() -> u32 {
        with_engine(|e| e.state_count() as u32)
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
        let config = Config::from_json(&config_json).map_err(to_wit_errors)?;
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
        let decisions = simulate::simulate(config, seed, &borrowed).map_err(to_wit_errors)?;
        Ok(decisions.iter().map(to_wit_decision).collect())
    }

    fn contract_version() -> String {
        crate::CONTRACT_VERSION.to_string()
    }
}

fn decide(key: &str, tool_len: u32, signals: u64, texts: Option<&[String]>, handle: u32) -> u64 {
    let (tool, request_id) = wire::split_key(key, tool_len);
    #[cfg(feature = "fault-injection")]
    inject_fault(tool);
    let hints = wire::unpack_hints(signals);
    let signals = wire::unpack_signals(signals);
    let now = now_ms();
    with_engine(|e| {
        let outcome = e.decide_naming(tool, request_id, signals, hints, texts, now, handle);
        decision_bits(e, outcome)
    })
}

/// The `decision` word of an outcome, with the engine's `text-free` and `idle` bits.
fn decision_bits(e: &Engine, outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Decided(d) => {
            let mut bits = wire::pack_decision(&d);
            if e.is_text_free() {
                bits |= wire::TEXT_FREE;
            }
            if e.is_idle() {
                bits |= wire::IDLE;
            }
            bits
        }
        Outcome::NeedText => wire::NEED_TEXT,
    }
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
    let mut out = Vec::with_capacity(errors.len());
    for e in errors {
        out.push(api::ConfigError {
            path: e.path,
            message: e.message,
        });
    }
    out
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
