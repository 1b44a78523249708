//! Test-only helpers on top of the `harness` library.

pub use anyhow::{bail, ensure, Result};
pub use harness::{
    reason, BackoffShape, CallFacts, ConfigError, Decision, DecisionReason, Harness, JitterMode,
    Key, KeyScope, NonIdempotentRetries, Policy, PolicyReads, Signals,
};
pub use serde_json::json;

/// A fresh instance whose current policy is `config` (a JSON value) under
/// [`harness::SCOPE`], without a ceiling.
pub fn configured(config: serde_json::Value) -> Result<Harness> {
    let mut h = Harness::new()?;
    h.configure_ok(&config.to_string())?;
    Ok(h)
}

/// A fresh instance with jitter off and `overrides` merged into the defaults.
pub fn no_jitter(mut overrides: serde_json::Value) -> Result<Harness> {
    overrides
        .as_object_mut()
        .expect("no_jitter takes a JSON object")
        .entry("jitter")
        .or_insert(json!(false));
    configured(overrides)
}

/// The global policy of the default configuration (`null` or `{}`) per issue
/// 2 §3.
pub fn default_policy() -> Policy {
    Policy {
        max_retries: 2,
        backoff_base_ms: 200,
        max_backoff_ms: 5000,
        backoff: BackoffShape::Exponential,
        throttle_backoff_base_ms: 200,
        throttle_max_backoff_ms: 5000,
        retry_on_status: vec![429, 500, 502, 503, 504],
        jitter: true,
        jitter_mode: JitterMode::Full,
        check_text_content: false,
        max_total_delay_ms: None,
        safe_classification: false,
        honor_retry_after: false,
        max_retry_after_ms: 60_000,
        retry_budget_percent: None,
        retry_budget_min_per_sec: 1,
        non_idempotent_retries: NonIdempotentRetries::All,
        idempotent: None,
    }
}

/// `configure` that must be rejected; returns the errors.
pub fn rejected(h: &mut Harness, config: &str) -> Result<Vec<ConfigError>> {
    match h.configure(config)? {
        Ok(_) => bail!("configure({config}) was accepted; expected config errors"),
        Err(errors) => {
            ensure!(
                !errors.is_empty(),
                "configure({config}) failed with an empty error list"
            );
            Ok(errors)
        }
    }
}

/// The key paths of `errors`, sorted.
pub fn paths(errors: &[ConfigError]) -> Vec<String> {
    let mut paths: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    paths.sort();
    paths
}

/// Fail `count` times on `(tool, rid)` and return the decisions.
pub fn fail_n(h: &mut Harness, tool: &str, rid: &str, count: usize) -> Result<Vec<Decision>> {
    (0..count)
        .map(|_| h.decide(tool, rid, Signals::ERROR))
        .collect()
}

/// The delays of `decisions`.
pub fn delays(decisions: &[Decision]) -> Vec<u64> {
    decisions.iter().map(|d| d.delay_ms).collect()
}

/// Assert `d` is a retry after `delay_ms` with `count` failures recorded,
/// naming its key by a handle.
pub fn assert_retry(d: Decision, delay_ms: u64, count: u8) -> Result<()> {
    ensure!(
        d.is_retry() && d.delay_ms == delay_ms && d.retry_count == count,
        "expected retry after {delay_ms} ms with count {count}, got {d:?}"
    );
    ensure!(d.handle != 0, "a retry without a handle: {d:?}");
    ensure!(d.reserved == 0, "reserved bits set in {d:?}");
    Ok(())
}

/// Assert `d` is a success decision: delay 0, count 0, no handle (the raw
/// word is 0).
pub fn assert_success(d: Decision) -> Result<()> {
    ensure!(
        d.is_success() && d.delay_ms == 0 && d.retry_count == 0 && d.handle == 0,
        "expected success, got {d:?}"
    );
    ensure!(d.raw == 0, "a success packs as 0, got {d:?}");
    Ok(())
}

/// Assert `d` is a non-retryable failure: delay 0, count 0, reason
/// `non-retryable` (issue 6 §7), no handle.
pub fn assert_non_retryable(d: Decision) -> Result<()> {
    ensure!(
        d.is_decision()
            && d.reason == reason::NON_RETRYABLE
            && d.delay_ms == 0
            && d.retry_count == 0
            && d.handle == 0,
        "expected non-retryable, got {d:?}"
    );
    ensure!(d.reserved == 0, "reserved bits set in {d:?}");
    Ok(())
}

/// Assert `d` gives up: delay 0, reason exhausted, no handle.
pub fn assert_exhausted(d: Decision) -> Result<()> {
    ensure!(
        d.is_exhausted() && d.delay_ms == 0 && d.handle == 0,
        "expected exhausted, got {d:?}"
    );
    ensure!(d.reserved == 0, "reserved bits set in {d:?}");
    Ok(())
}

/// The `entries` of an `export-state` document (policy, handle, tenant,
/// server, identity, tool, request id, failures, last failure, last delay,
/// total delay), as JSON values.
pub fn exported_entries(doc: &str) -> Result<Vec<serde_json::Value>> {
    let doc: serde_json::Value = serde_json::from_str(doc)?;
    match doc.get("entries") {
        Some(serde_json::Value::Array(rows)) => Ok(rows.clone()),
        _ => bail!("no entries list in {doc}"),
    }
}
