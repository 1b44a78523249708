//! Shared fixtures for the policy core's unit tests.

use super::{Config, Engine, Signals};

/// A result with `isError: true` and nothing else.
pub const FAIL: Signals = Signals {
    is_error: true,
    structured: false,
    structured_is_error: false,
    status: None,
};

/// A result with no failure signal.
pub const OK: Signals = Signals {
    is_error: false,
    structured: false,
    structured_is_error: false,
    status: None,
};

/// "Text items not read yet".
pub const NO_TEXT: Option<&[&str]> = None;

/// An engine with a fixed seed, configured from `json` (which must be valid).
pub fn engine(json: &str) -> Engine {
    let mut e = Engine::new((1, 2));
    e.configure(Config::from_json(json).expect("test config must be valid"));
    e
}
