//! Property tests of the pure policy core (issue 7, item 1), run natively.
//!
//! Only a stable toolchain is available, so these use `proptest` instead of
//! cargo-fuzz/libFuzzer (which needs nightly). They run as part of
//! `cargo test -p retry-engine-guest` with a modest number of cases per
//! property; `make fuzz` runs the same properties long (`PROPTEST_CASES`).
//! A failing case is shrunk and its seed saved under
//! `guest/tests/proptest-regressions/`; commit those files so the
//! case is replayed on every run.
//!
//! Modules:
//! - `config`: the configuration parser on arbitrary JSON (never panics;
//!   accepted exactly when an independent statement of the rules says so,
//!   with the values that statement predicts);
//! - `classify`: the text classifier on arbitrary and deeply nested text, and
//!   the classification rules on arbitrary signals;
//! - `engine`: arbitrary interleavings of decisions, evictions, clock jumps
//!   (forward by years, backwards), reconfiguration and export/import of the
//!   state, checked against invariants and against a reference model.

mod classify;
mod config;
mod engine;

use proptest::prelude::*;
use serde_json::Value;

/// Cases per property: `PROPTEST_CASES` when set (the long run), else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A proptest configuration with [`cases`] cases.
pub fn config_with(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        ..ProptestConfig::default()
    }
}

/// Short strings over all of Unicode, sometimes longer than the 60-character
/// cut of error messages (multi-byte characters at the cut).
pub fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,12}",
        1 => "[a-zé✓😀\"\\\\.\\[\\] ]{55,70}",
    ]
}

/// JSON numbers of every kind serde_json distinguishes: small and huge
/// unsigned, negative, and floats.
pub fn any_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..20).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1000i64..1000).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

/// Arbitrary JSON values, nested a few levels, keys sometimes a config key.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any_number(),
        any_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(any_key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object key: usually a key the parser knows, sometimes anything.
pub fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(config::KNOWN_KEYS).prop_map(str::to_string),
        1 => any_text(),
    ]
}
