//! The pure policy core: configuration, classification, backoff, retry state.
//!
//! Nothing here knows about WIT, wasm or the host. Every function that needs
//! the time takes `now_ms`; every random draw comes from an [`fastrand::Rng`]
//! the caller seeded.

pub mod backoff;
pub mod budget;
pub mod classify;
pub mod config;
pub mod engine;
pub mod key;
pub mod registry;
pub mod simulate;
pub mod snapshot;
pub mod state;
#[cfg(test)]
mod test_support;
pub mod text_markers;

pub use classify::{Hints, Signals};
pub use config::{Config, ConfigError, Policy};
pub use engine::{Decision, Engine, Opened, Outcome, Reason};
pub use key::KeyParts;
pub use registry::PolicyId;
