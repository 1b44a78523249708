//! Shared fixtures for the policy core's unit tests.

use super::{Engine, Hints, KeyParts, Outcome, PolicyId, Signals};

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

/// An engine holding one policy, for tests of one configuration.
pub struct One {
    /// The engine.
    pub e: Engine,
    /// Its one policy.
    pub id: PolicyId,
}

/// An engine with a fixed seed holding the policy of `json` (which must be
/// valid).
pub fn engine(json: &str) -> One {
    let mut e = Engine::new((1, 2));
    let id = e
        .open_json("test", json, None, 0)
        .expect("test config must be valid")
        .id;
    One { e, id }
}

impl One {
    /// Decide for `(tool, request_id)` in the default context.
    pub fn decide<T: AsRef<str>>(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        self.decide_with_hints(tool, request_id, signals, Hints::NONE, texts, now_ms)
    }

    /// [`One::decide`] with the host's hints.
    pub fn decide_with_hints<T: AsRef<str>>(
        &mut self,
        tool: &str,
        request_id: &str,
        signals: Signals,
        hints: Hints,
        texts: Option<&[T]>,
        now_ms: u64,
    ) -> Outcome {
        let key = KeyParts::new(tool, request_id);
        self.e.decide(self.id, &key, signals, hints, texts, now_ms)
    }

    /// Entries held.
    pub fn state_count(&self) -> usize {
        self.e.state_count()
    }
}
