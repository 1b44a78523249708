//! Retry-and-backoff policy engine for the ContextForge MCP gateway.
//!
//! Two layers, so that a change has one obvious home:
//! - [`policy`]: the pure decision core. Plain Rust, no bindings, no I/O, no
//!   clock and no global state: time and randomness come in as arguments. It
//!   builds and is unit-tested on the native target.
//! - [`wire`]: the bit layouts the hot-path `decide` call uses in the WIT
//!   contract (packed signals in, packed decision out). Also pure.
//! - `bindings` (wasm32 only): the wit-bindgen glue. It owns the one engine of
//!   the instance, reads the imported clock and seed, converts and delegates.
//!
//! On wasm32 the crate is `no_std` + `alloc`: std on `wasm32-wasip2` would make
//! the component import a dozen WASI interfaces (cli, io, filesystem) that a
//! sandboxed policy engine must not have. `rt` supplies what std otherwise
//! would (allocator, panic handler, `memcmp`).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod policy;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod bindings;
#[cfg(target_arch = "wasm32")]
mod rt;

/// The version of the WIT contract (`contextforge:retry@…`) this crate implements.
pub const CONTRACT_VERSION: &str = "0.5.0";
