//! Drives the **built** retry-engine component (`target/wasm/retry_engine.wasm`)
//! through wasmtime, the way a production host does, but with a virtual
//! monotonic clock and a fixed `insecure-seed` so every run is deterministic.
//!
//! The integration tests (`tests/all`) and the throughput example share this
//! library: loading the component, a host with exactly the two WASI imports the
//! contract allows, and the bit layouts of `decide`'s `signals` argument and
//! its `decision` result (see `wit/retry-engine.wit`).

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
    BackoffShape, CallFacts, ConfigError, DecisionReason, JitterMode, NonIdempotentRetries, Policy,
    SimDecision, SimStep,
};

/// The contract version the harness is written against (the guest's).
pub const CONTRACT_VERSION: &str = retry_engine::CONTRACT_VERSION;
/// The seed every harness instance gets unless a test asks for another.
pub const DEFAULT_SEED: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0001;
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
    /// Bits 0..39: milliseconds before the retry; 0 = do not retry.
    pub delay_ms: u64,
    /// Bits 40..47: consecutive failures of the key after this result.
    pub retry_count: u8,
    /// Bits 48..55: the `decision-reason` ordinal.
    pub reason: u8,
    /// Bit 61: no policy checks text, so `signals == 0` is a success for any
    /// tool and a no-op for a key without state.
    pub text_free: bool,
    /// Bit 62: the engine holds no retry state and no policy checks text, so
    /// until the next call a result with `signals == 0` is a no-op success.
    pub idle: bool,
    /// Bit 63: the host must call `decide-text` instead.
    pub need_text: bool,
    /// Bits 56..60, reserved: must be 0.
    pub reserved: u8,
    /// The raw value.
    pub raw: u64,
}

/// `decision-reason` ordinals as packed in bits 48..55.
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
    pub const TEXT_FREE: u64 = wire::TEXT_FREE;
    pub const IDLE: u64 = wire::IDLE;
    pub const NEED_TEXT: u64 = wire::NEED_TEXT;

    pub fn unpack(raw: u64) -> Self {
        Decision {
            delay_ms: raw & Self::DELAY_MASK,
            retry_count: (raw >> wire::RETRY_COUNT_SHIFT) as u8,
            reason: (raw >> wire::REASON_SHIFT) as u8,
            text_free: raw & wire::TEXT_FREE != 0,
            idle: raw & wire::IDLE != 0,
            need_text: raw & wire::NEED_TEXT != 0,
            reserved: ((raw >> 56) & 0x1f) as u8,
            raw,
        }
    }
    pub fn is_success(&self) -> bool {
        self.reason == reason::SUCCESS
    }
    pub fn is_retry(&self) -> bool {
        self.reason == reason::RETRY
    }
    pub fn is_exhausted(&self) -> bool {
        self.reason == reason::EXHAUSTED
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

/// `decide`'s key: the tool name immediately followed by the request id, and
/// the tool name's length in Unicode scalar values.
pub fn key(tool: &str, request_id: &str) -> (String, u32) {
    let key = format!("{tool}{request_id}");
    (key, tool.chars().count() as u32)
}

/// One instance of the component with its own store, clock and seed.
pub struct Harness {
    pub store: Store<HostState>,
    pub component: RetryComponent,
    pub clock: VirtualClock,
}

impl Harness {
    /// A fresh instance on a virtual clock at 0 ms with [`DEFAULT_SEED`].
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
        })
    }

    /// `configure`: the outer error is a trap, the inner one the policy errors.
    pub fn configure(&mut self, json: &str) -> Result<Result<(), Vec<ConfigError>>> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_configure(&mut self.store, json)?)
    }

    /// `configure` that must succeed.
    pub fn configure_ok(&mut self, json: &str) -> Result<()> {
        match self.configure(json)? {
            Ok(()) => Ok(()),
            Err(errors) => bail!("configure({json}) rejected: {errors:?}"),
        }
    }

    pub fn decide_raw(&mut self, key: &str, tool_len: u32, signals: u64) -> Result<u64> {
        self.decide_named(key, tool_len, signals, 0)
    }

    /// `decide`, naming the key `handle` (0: none).
    pub fn decide_named(
        &mut self,
        key: &str,
        tool_len: u32,
        signals: u64,
        handle: u32,
    ) -> Result<u64> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_decide(&mut self.store, key, tool_len, signals, handle)?)
    }

    /// `decide-held`: the raw decision word (bit 60 alone: unknown handle).
    pub fn decide_held_raw(&mut self, handle: u32, signals: u64) -> Result<u64> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_decide_held(&mut self.store, handle, signals)?)
    }

    pub fn decide(&mut self, tool: &str, request_id: &str, signals: Signals) -> Result<Decision> {
        let (key, tool_len) = key(tool, request_id);
        Ok(Decision::unpack(self.decide_raw(
            &key,
            tool_len,
            signals.pack(),
        )?))
    }

    pub fn decide_text_raw(
        &mut self,
        key: &str,
        tool_len: u32,
        signals: u64,
        texts: &[String],
    ) -> Result<u64> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_decide_text(&mut self.store, key, tool_len, signals, texts, 0)?)
    }

    pub fn decide_text(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        texts: &[&str],
    ) -> Result<Decision> {
        let (key, tool_len) = key(tool, request_id);
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        Ok(Decision::unpack(self.decide_text_raw(
            &key,
            tool_len,
            signals.pack(),
            &texts,
        )?))
    }

    pub fn tool_policy(&mut self, tool: &str) -> Result<Policy> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_tool_policy(&mut self.store, tool)?)
    }

    pub fn global_policy(&mut self) -> Result<Policy> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_global_policy(&mut self.store)?)
    }

    pub fn state_count(&mut self) -> Result<u32> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_state_count(&mut self.store)?)
    }

    pub fn evict_expired(&mut self) -> Result<u32> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_evict_expired(&mut self.store)?)
    }

    /// `export-state`: the live state as a format-1 JSON document.
    pub fn export_state(&mut self) -> Result<String> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_export_state(&mut self.store)?)
    }

    /// `import-state`: the outer error is a trap, the inner one the engine's refusal.
    pub fn import_state(&mut self, json: &str) -> Result<Result<u32, String>> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_import_state(&mut self.store, json)?)
    }

    pub fn simulate(
        &mut self,
        config_json: &str,
        seed: u64,
        steps: &[SimStep],
    ) -> Result<Result<Vec<SimDecision>, Vec<ConfigError>>> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_simulate(&mut self.store, config_json, seed, steps)?)
    }

    pub fn contract_version(&mut self) -> Result<String> {
        Ok(self
            .component
            .contextforge_retry_retry_engine()
            .call_contract_version(&mut self.store)?)
    }
}
