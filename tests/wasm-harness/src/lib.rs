//! Drives the **built** retry-engine component (`target/wasm/retry_engine.wasm`)
//! through wasmtime, the way a production host does, but with a virtual
//! monotonic clock and a fixed `insecure-seed` so every run is deterministic.
//!
//! The integration tests (`tests/all`) and the examples share this library:
//! loading the component, a host with exactly the two WASI imports the contract
//! allows, the bit layouts of `decide`'s `key` parts, `signals` argument and
//! `decision` result (see `wit/retry-engine.wit`), and a [`Harness`] that keeps
//! the policy it opened last, so a test reads "configure, then decide".

pub mod budget_sim;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context as _, Result};
/// The wire names and values, declared once for Rust (the guest's).
pub use retry_engine::wire;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{HostMonotonicClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "retry-component",
    additional_derives: [PartialEq, Eq],
    require_store_data_send: true,
    // The imports are wasmtime-wasi's own implementations; the harness only
    // needs generated types for the exports.
    with: {
        "wasi:clocks/monotonic-clock": wasmtime_wasi::p2::bindings::clocks::monotonic_clock,
        "wasi:random/insecure-seed": wasmtime_wasi::p2::bindings::random::insecure_seed,
        "wasi:io/poll": wasmtime_wasi::p2::bindings::io::poll,
    },
});

pub use exports::contextforge::retry::retry_engine::{
    BackoffShape, CallFacts, ConfigError, DecisionReason, JitterMode, KeyScope,
    NonIdempotentRetries, OpenedPolicy, Policy, PolicyReads, SimDecision, SimStep,
};

/// The contract version the harness is written against (the guest's).
pub const CONTRACT_VERSION: &str = retry_engine::CONTRACT_VERSION;
/// The seed every harness instance gets unless a test asks for another.
pub const DEFAULT_SEED: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0001;
/// The stanza (`open-policy`'s `scope`) [`Harness::configure`] opens under.
pub const SCOPE: &str = "harness";
/// The environment variable that overrides where the component is read from.
pub const WASM_ENV: &str = "RETRY_ENGINE_WASM";

const NANOS_PER_MS: u64 = 1_000_000;

/// Where the component is read from: `$RETRY_ENGINE_WASM`, else
/// `<workspace>/target/wasm/retry_engine.wasm` (what `make wasm` writes).
pub fn wasm_path() -> PathBuf {
    match std::env::var_os(WASM_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm/retry_engine.wasm"),
    }
}

/// The component's bytes, or an error telling the reader to run `make wasm`.
pub fn read_wasm() -> Result<Vec<u8>> {
    read_wasm_from(&wasm_path())
}

/// [`read_wasm`] for an explicit path.
pub fn read_wasm_from(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| {
        format!(
            "cannot read the retry-engine component at {}: run `make wasm` first \
             (or set {WASM_ENV} to the .wasm file)",
            path.display()
        )
    })
}

/// One engine and one compiled component per process: Cranelift compiling the
/// component is the slowest step of a test, so every test shares the result.
pub fn engine_and_component() -> Result<&'static (Engine, Component)> {
    static LOADED: OnceLock<std::result::Result<(Engine, Component), String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| compile(&Config::new()).map_err(|e| format!("{e:#}")));
    match loaded {
        Ok(pair) => Ok(pair),
        Err(msg) => bail!("{msg}"),
    }
}

/// A new engine with `config` and the component compiled for it (for tests
/// that need fuel or other engine settings).
pub fn compile(config: &Config) -> Result<(Engine, Component)> {
    let bytes = read_wasm()?;
    let engine = Engine::new(config)?;
    let component = Component::new(&engine, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{} is not a valid component", wasm_path().display()))?;
    Ok((engine, component))
}

/// A monotonic clock the test moves by hand. Clones share the same time, so a
/// test keeps one handle while the store owns another.
#[derive(Clone, Debug, Default)]
pub struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    /// Current reading in nanoseconds (what `monotonic-clock.now` returns).
    pub fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
    /// Current reading in whole milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ns() / NANOS_PER_MS
    }
    /// Move the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms * NANOS_PER_MS, Ordering::SeqCst);
    }
    /// Move the clock forward by `ns` nanoseconds.
    pub fn advance_ns(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }
    /// Set the clock to exactly `ms` milliseconds (never backwards in tests).
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms * NANOS_PER_MS, Ordering::SeqCst);
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// Store data: what the two allowed imports need, plus a memory recorder.
pub struct HostState {
    ctx: WasiCtx,
    table: ResourceTable,
    /// Linear-memory sizes the guest grew to (for the memory benchmark).
    pub memory: MemoryRecorder,
}

/// A [`wasmtime::ResourceLimiter`] that allows everything and remembers the
/// largest linear memory the guest asked for.
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    /// Bytes of the largest linear memory so far.
    pub peak_bytes: usize,
}

impl wasmtime::ResourceLimiter for MemoryRecorder {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A linker that defines exactly `wasi:clocks/monotonic-clock` and
/// `wasi:random/insecure-seed` and nothing else, so a component that needs any
/// other import fails to instantiate.
pub fn minimal_linker(engine: &Engine) -> Result<Linker<HostState>> {
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(
        &mut linker,
        HostState::clocks,
    )?;
    wasmtime_wasi::p2::bindings::random::insecure_seed::add_to_linker::<HostState, WasiRandom>(
        &mut linker,
        HostState::random,
    )?;
    Ok(linker)
}

/// How a `decide` call's result reads once unpacked (see `decide` in
/// `wit/retry-engine.wit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Bits 0..31: milliseconds before the retry; 0 = do not retry.
    pub delay_ms: u64,
    /// Bits 32..35: consecutive failures of the key after this result.
    pub retry_count: u8,
    /// Bits 36..39: the `decision-reason` ordinal.
    pub reason: u8,
    /// Bits 40..59: the key's handle while it holds state (a retry); 0 on
    /// every other decision.
    pub handle: u32,
    /// Bit 60, reserved: must be 0.
    pub reserved: u8,
    /// Bit 61 alone: the instance holds no such policy; nothing changed.
    pub unknown_policy: bool,
    /// Bit 62 alone: `decide-held` got a handle that names no key.
    pub unknown_handle: bool,
    /// Bit 63 alone: the host must call `decide-text` instead.
    pub need_text: bool,
    /// The raw value.
    pub raw: u64,
}

/// `decision-reason` ordinals as packed in bits 36..39.
pub mod reason {
    pub const SUCCESS: u8 = 0;
    pub const RETRY: u8 = 1;
    pub const EXHAUSTED: u8 = 2;
    pub const NON_RETRYABLE: u8 = 3;
    pub const BUDGET: u8 = 4;
    pub const DEADLINE: u8 = 5;
    pub const RETRY_AFTER: u8 = 6;
    pub const NON_IDEMPOTENT: u8 = 7;
}

impl Decision {
    pub const DELAY_MASK: u64 = wire::DELAY_MASK;
    pub const NEED_TEXT: u64 = wire::NEED_TEXT;
    pub const UNKNOWN_HANDLE: u64 = wire::UNKNOWN_HANDLE;
    pub const UNKNOWN_POLICY: u64 = wire::UNKNOWN_POLICY;
    /// Bit 60: between the handle and the special words, never set.
    pub const RESERVED: u64 = 1 << 60;

    pub fn unpack(raw: u64) -> Self {
        Decision {
            delay_ms: raw & Self::DELAY_MASK,
            retry_count: (raw >> wire::RETRY_COUNT_SHIFT & wire::RETRY_COUNT_MASK) as u8,
            reason: (raw >> wire::REASON_SHIFT & wire::REASON_MASK) as u8,
            handle: (raw >> wire::HANDLE_SHIFT & wire::HANDLE_MASK) as u32,
            reserved: u8::from(raw & Self::RESERVED != 0),
            unknown_policy: raw & wire::UNKNOWN_POLICY != 0,
            unknown_handle: raw & wire::UNKNOWN_HANDLE != 0,
            need_text: raw & wire::NEED_TEXT != 0,
            raw,
        }
    }
    pub fn is_success(&self) -> bool {
        self.is_decision() && self.reason == reason::SUCCESS
    }
    pub fn is_retry(&self) -> bool {
        self.is_decision() && self.reason == reason::RETRY
    }
    pub fn is_exhausted(&self) -> bool {
        self.is_decision() && self.reason == reason::EXHAUSTED
    }
    /// Whether it is a decision rather than one of the three special words.
    pub fn is_decision(&self) -> bool {
        !(self.need_text || self.unknown_handle || self.unknown_policy)
    }
}

/// What a host reads from a tool result, packed as `decide`'s `signals`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// bit 0: `result["isError"] is True`.
    pub is_error: bool,
    /// bit 1: `structuredContent` present and not `None`.
    pub structured: bool,
    /// bit 2: `structuredContent["isError"] is True`.
    pub structured_is_error: bool,
    /// bit 3 + bits 32..63: `structuredContent["status_code"]` as an int.
    pub status: Option<i32>,
}

/// `signals` bits 4..31: the host's facts beyond the native plugin's.
pub mod hint {
    use super::wire;
    /// bit 4: an MCP input-validation error.
    pub const VALIDATION_ERROR: u64 = wire::SIG_VALIDATION_ERROR;
    /// bit 5: `resultType` is `"input_required"`.
    pub const INPUT_REQUIRED: u64 = wire::SIG_INPUT_REQUIRED;
    /// bit 6: `retryable: false`.
    pub const NOT_RETRYABLE: u64 = wire::SIG_NOT_RETRYABLE;
    /// bit 7 + bits 8..29: a server delay hint of `ms` milliseconds.
    pub const fn retry_after(ms: u32) -> u64 {
        wire::SIG_RETRY_AFTER | ((ms & wire::RETRY_AFTER_MAX_MS) as u64) << wire::RETRY_AFTER_SHIFT
    }
    /// bit 30: the gateway marked the failure a timeout.
    pub const TIMEOUT: u64 = wire::SIG_TIMEOUT;
    /// bit 31: the tool's annotations say read-only or idempotent.
    pub const IDEMPOTENT: u64 = wire::SIG_IDEMPOTENT;
}

impl Signals {
    /// A plain success: nothing set.
    pub const OK: Signals = Signals {
        is_error: false,
        structured: false,
        structured_is_error: false,
        status: None,
    };
    /// `{"isError": true}` without structured content.
    pub const ERROR: Signals = Signals {
        is_error: true,
        structured: false,
        structured_is_error: false,
        status: None,
    };

    /// `{"isError": is_error, "structuredContent": {"status_code": status}}`.
    pub fn status(is_error: bool, status: i32) -> Signals {
        Signals {
            is_error,
            structured: true,
            structured_is_error: false,
            status: Some(status),
        }
    }

    pub fn pack(self) -> u64 {
        let mut bits = 0;
        for (on, bit) in [
            (self.is_error, wire::SIG_IS_ERROR),
            (self.structured, wire::SIG_STRUCTURED),
            (self.structured_is_error, wire::SIG_STRUCTURED_IS_ERROR),
        ] {
            if on {
                bits |= bit;
            }
        }
        if let Some(code) = self.status {
            bits |= wire::SIG_STATUS | u64::from(code as u32) << wire::STATUS_SHIFT;
        }
        bits
    }
}

/// The five parts of `decide`'s key, as a host sends them: the gateway
/// context (tenant, server), the identity `key_scope` adds, the tool name and
/// the request id (the guest's own type: the layout is declared once).
pub use retry_engine::policy::KeyParts as Key;

/// The `key` string and `parts` word `decide` takes for `key`. Panics when a
/// part is longer than its 16-bit length field (a host digests such names;
/// the guest's packer would clip the length and split the key elsewhere).
pub fn pack(key: &Key<'_>) -> (String, u64) {
    let parts = [key.tenant, key.server, key.identity, key.tool];
    for part in parts {
        let n = part.chars().count();
        assert!(
            n < 1 << wire::PART_LEN_BITS,
            "a key part of {n} characters does not fit its length field"
        );
    }
    (
        [
            key.tenant,
            key.server,
            key.identity,
            key.tool,
            key.request_id,
        ]
        .concat(),
        wire::pack_parts(key),
    )
}

/// `decide`'s key and parts for `(tool, request_id)` in the empty context.
pub fn key(tool: &str, request_id: &str) -> (String, u64) {
    pack(&Key::new(tool, request_id))
}

/// One instance of the component with its own store, clock and seed, and the
/// policy it opened last (its *current* policy: what [`Harness::decide`] and
/// the other calls without a policy argument decide under).
pub struct Harness {
    pub store: Store<HostState>,
    pub component: RetryComponent,
    pub clock: VirtualClock,
    current: Option<OpenedPolicy>,
    current_id: u64,
}

impl Harness {
    /// A fresh instance on a virtual clock at 0 ms with [`DEFAULT_SEED`],
    /// holding no policy, never `init`-ed (its clock is the virtual one).
    pub fn new() -> Result<Self> {
        Self::with_seed(DEFAULT_SEED)
    }

    /// A fresh instance on a virtual clock at 0 ms with the given seed.
    pub fn with_seed(seed: u128) -> Result<Self> {
        let (engine, component) = engine_and_component()?;
        Self::instantiate(engine, component, seed, |_| Ok(()))
    }

    /// An instance of `component` on `engine`; `setup` adjusts the store
    /// (fuel, limits) before instantiation.
    pub fn instantiate(
        engine: &Engine,
        component: &Component,
        seed: u128,
        setup: impl FnOnce(&mut Store<HostState>) -> Result<()>,
    ) -> Result<Self> {
        let clock = VirtualClock::default();
        let ctx = WasiCtxBuilder::new()
            .monotonic_clock(clock.clone())
            .insecure_random_seed(seed)
            .build();
        let mut store = Store::new(
            engine,
            HostState {
                ctx,
                table: ResourceTable::new(),
                memory: MemoryRecorder::default(),
            },
        );
        store.limiter(|state| &mut state.memory);
        setup(&mut store)?;
        let linker = minimal_linker(engine)?;
        let bindings = RetryComponent::instantiate(&mut store, component, &linker)
            .map_err(anyhow::Error::from)
            .context("instantiating the component with only the clock and seed imports")?;
        Ok(Harness {
            store,
            component: bindings,
            clock,
            current: None,
            current_id: 0,
        })
    }

    /// `init`: the instance's clock becomes `clock_ns` now (the imported
    /// clock plus an offset), and state is bounded by `memory_bytes`.
    pub fn init(&mut self, clock_ns: u64, memory_bytes: u64) -> Result<()> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_init(&mut self.store, clock_ns, memory_bytes)?)
    }

    /// `open-policy`: the outer error is a trap, the inner one the policy
    /// errors. Does not change the current policy.
    pub fn open_policy(
        &mut self,
        scope: &str,
        config_json: &str,
        ceiling: Option<u32>,
    ) -> Result<Result<OpenedPolicy, Vec<ConfigError>>> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_open_policy(&mut self.store, scope, config_json, ceiling)?)
    }

    /// `open-policy` that must succeed.
    pub fn open_policy_ok(
        &mut self,
        scope: &str,
        config_json: &str,
        ceiling: Option<u32>,
    ) -> Result<OpenedPolicy> {
        match self.open_policy(scope, config_json, ceiling)? {
            Ok(opened) => Ok(opened),
            Err(errors) => bail!("open-policy({scope:?}, {config_json}, {ceiling:?}): {errors:?}"),
        }
    }

    /// Open `json` under [`SCOPE`] without a ceiling and, when it opens, make
    /// it the current policy (a failed one leaves the current policy as it
    /// was). The outer error is a trap, the inner one the policy errors.
    pub fn configure(&mut self, json: &str) -> Result<Result<OpenedPolicy, Vec<ConfigError>>> {
        let opened = self.open_policy(SCOPE, json, None)?;
        if let Ok(policy) = &opened {
            self.select(policy);
        }
        Ok(opened)
    }

    /// `configure` that must succeed.
    pub fn configure_ok(&mut self, json: &str) -> Result<OpenedPolicy> {
        match self.configure(json)? {
            Ok(opened) => Ok(opened),
            Err(errors) => bail!("configure({json}) rejected: {errors:?}"),
        }
    }

    /// `close-policy`: release the policy `policy` now, with its state and
    /// budgets (nothing when not held).
    pub fn close_policy(&mut self, policy: u64) -> Result<()> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_close_policy(&mut self.store, policy)?)
    }

    /// Make `opened` the current policy.
    pub fn select(&mut self, opened: &OpenedPolicy) {
        self.current_id = opened.id;
        self.current = Some(opened.clone());
    }

    /// Make the policy `id` the current one, without what opening it returned
    /// (one imported from a snapshot, or an id the instance does not hold).
    pub fn select_id(&mut self, id: u64) {
        self.current_id = id;
        self.current = None;
    }

    /// The current policy's id (0, never an id, before any).
    pub fn policy(&self) -> u64 {
        self.current_id
    }

    /// What opening the current policy returned, if this harness opened it.
    pub fn opened(&self) -> Option<&OpenedPolicy> {
        self.current.as_ref()
    }

    /// `decide` under the current policy: the raw decision word.
    pub fn decide_raw(&mut self, key: &str, parts: u64, signals: u64) -> Result<u64> {
        self.decide_raw_in(self.current_id, key, parts, signals)
    }

    /// `decide` under the policy `policy`: the raw decision word.
    pub fn decide_raw_in(
        &mut self,
        policy: u64,
        key: &str,
        parts: u64,
        signals: u64,
    ) -> Result<u64> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_decide(&mut self.store, policy, key, parts, signals)?)
    }

    /// `decide` on `(tool, request_id)` in the empty context, under the
    /// current policy.
    pub fn decide(&mut self, tool: &str, request_id: &str, signals: Signals) -> Result<Decision> {
        self.decide_key(&Key::new(tool, request_id), signals)
    }

    /// `decide` on `key` under the current policy.
    pub fn decide_key(&mut self, key: &Key<'_>, signals: Signals) -> Result<Decision> {
        self.decide_key_in(self.current_id, key, signals)
    }

    /// `decide` on `key` under the policy `policy`.
    pub fn decide_key_in(
        &mut self,
        policy: u64,
        key: &Key<'_>,
        signals: Signals,
    ) -> Result<Decision> {
        let (joined, parts) = pack(key);
        Ok(Decision::unpack(self.decide_raw_in(
            policy,
            &joined,
            parts,
            signals.pack(),
        )?))
    }

    /// `decide-held`: the raw decision word (bit 62 alone: unknown handle).
    pub fn decide_held_raw(&mut self, handle: u32, signals: u64) -> Result<u64> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_decide_held(&mut self.store, handle, signals)?)
    }

    /// `decide-held`, unpacked.
    pub fn decide_held(&mut self, handle: u32, signals: Signals) -> Result<Decision> {
        Ok(Decision::unpack(
            self.decide_held_raw(handle, signals.pack())?,
        ))
    }

    /// `decide-text` under the current policy: the raw decision word.
    pub fn decide_text_raw(
        &mut self,
        key: &str,
        parts: u64,
        signals: u64,
        texts: &[String],
    ) -> Result<u64> {
        self.decide_text_raw_in(self.current_id, key, parts, signals, texts)
    }

    /// `decide-text` under the policy `policy`: the raw decision word.
    pub fn decide_text_raw_in(
        &mut self,
        policy: u64,
        key: &str,
        parts: u64,
        signals: u64,
        texts: &[String],
    ) -> Result<u64> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_decide_text(&mut self.store, policy, key, parts, signals, texts)?)
    }

    /// `decide-text` on `(tool, request_id)` in the empty context, under the
    /// current policy.
    pub fn decide_text(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        texts: &[&str],
    ) -> Result<Decision> {
        let (key, parts) = key(tool, request_id);
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        Ok(Decision::unpack(self.decide_text_raw(
            &key,
            parts,
            signals.pack(),
            &texts,
        )?))
    }

    /// `tool-policy` under the current policy, which must be held.
    pub fn tool_policy(&mut self, tool: &str) -> Result<Policy> {
        let id = self.current_id;
        self.tool_policy_in(id, tool)?.with_context(|| {
            format!("tool-policy({id}, {tool:?}): the instance holds no such policy")
        })
    }

    /// `tool-policy` under the policy `policy` (none: not held).
    pub fn tool_policy_in(&mut self, policy: u64, tool: &str) -> Result<Option<Policy>> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_tool_policy(&mut self.store, policy, tool)?)
    }

    /// The current policy's global policy, as opening it returned.
    pub fn global_policy(&self) -> Result<Policy> {
        match &self.current {
            Some(opened) => Ok(opened.global.clone()),
            None => bail!("the harness has opened no current policy"),
        }
    }

    /// `state-count` of every policy.
    pub fn state_count(&mut self) -> Result<u32> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_state_count(&mut self.store, None)?)
    }

    /// `state-count` of the policy `policy`.
    pub fn state_count_of(&mut self, policy: u64) -> Result<u32> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_state_count(&mut self.store, Some(policy))?)
    }

    /// `policy-count`.
    pub fn policy_count(&mut self) -> Result<u32> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_policy_count(&mut self.store)?)
    }

    pub fn evict_expired(&mut self) -> Result<u32> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_evict_expired(&mut self.store)?)
    }

    /// `export-state`: policies, live state and budgets as a format-3 JSON
    /// document.
    pub fn export_state(&mut self) -> Result<String> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_export_state(&mut self.store)?)
    }

    /// `import-state`: the outer error is a trap, the inner one the engine's
    /// refusal.
    pub fn import_state(&mut self, json: &str) -> Result<Result<u32, String>> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_import_state(&mut self.store, json)?)
    }

    pub fn simulate(
        &mut self,
        config_json: &str,
        seed: u64,
        steps: &[SimStep],
    ) -> Result<Result<Vec<SimDecision>, Vec<ConfigError>>> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_simulate(&mut self.store, config_json, seed, steps)?)
    }

    pub fn contract_version(&mut self) -> Result<String> {
        let api = self.component.contextforge_retry_retry_engine();
        Ok(api.call_contract_version(&mut self.store)?)
    }
}
