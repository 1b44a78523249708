//! The wasmtime harness for the retry-engine component: one integration-test
//! binary made of topical modules (wasmtime's own layout). Every test loads the
//! **built** `target/wasm/retry_engine.wasm` (or `$RETRY_ENGINE_WASM`) and
//! drives it through wasmtime with a virtual clock and a fixed seed; nothing
//! here sleeps or reads real time.
//!
//! Each test returns `anyhow::Result`: a trap surfaces as an `Err` through
//! `?`, a policy error is asserted on explicitly.

mod support;

mod budget;
mod capacity;
mod classify;
mod config;
mod contexts;
mod deadline;
mod decide;
mod golden;
mod handles;
mod idempotency;
mod imports;
mod jitter;
mod jitter_modes;
mod policies;
mod retry_after;
mod robustness;
mod safe;
mod simulate;
mod snapshot;
mod text_bounds;
mod throttle;
mod ttl;
