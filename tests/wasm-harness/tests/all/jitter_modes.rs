//! Jitter modes `none | full | equal | decorrelated` through the built
//! component (issue 6 §4): bounds per mode, the cap after jitter, never 0 on
//! a retry, per-tool modes, exact replay under a fixed seed, and the previous
//! delay carried across a hot reload (export-state format 3).

use crate::support::*;

const BASE: u64 = 100;
const MAX: u64 = 1_000;
const KEYS: usize = 2_000;
const RETRIES: usize = 6;

fn with_mode(mode: &str, seed: u128) -> Result<Harness> {
    let mut h = Harness::with_seed(seed)?;
    h.configure_ok(
        &json!({
            "max_retries": RETRIES, "backoff_base_ms": BASE, "max_backoff_ms": MAX,
            "jitter": mode, "max_state_entries": 10_000
        })
        .to_string(),
    )?;
    Ok(h)
}

/// Delays of `KEYS` keys failing `RETRIES` times each: `[key][attempt]`.
fn sequences(h: &mut Harness) -> Result<Vec<Vec<u64>>> {
    (0..KEYS)
        .map(|k| {
            (0..RETRIES)
                .map(|n| {
                    let d = h.decide("t", &k.to_string(), Signals::ERROR)?;
                    ensure!(d.is_retry() && d.retry_count as usize == n + 1, "{d:?}");
                    ensure!(d.delay_ms >= 1 && d.delay_ms <= MAX, "cap or zero: {d:?}");
                    Ok(d.delay_ms)
                })
                .collect()
        })
        .collect()
}

fn ceiling(attempt: usize) -> u64 {
    (BASE << attempt).min(MAX)
}

#[test]
fn test_jitter_mode_none_is_the_ceiling() -> Result<()> {
    let mut h = with_mode("none", harness::DEFAULT_SEED)?;
    for seq in sequences(&mut h)? {
        ensure!(seq == [100, 200, 400, 800, 1000, 1000], "{seq:?}");
    }
    ensure!(h.global_policy()?.jitter_mode == JitterMode::None);
    ensure!(!h.global_policy()?.jitter);
    Ok(())
}

#[test]
fn test_jitter_mode_full_is_the_boolean_default() -> Result<()> {
    // "full" and `true` draw the same values from the same seed.
    let a = sequences(&mut with_mode("full", 9)?)?;
    let mut h = Harness::with_seed(9)?;
    h.configure_ok(
        &json!({"max_retries": RETRIES, "backoff_base_ms": BASE, "max_backoff_ms": MAX,
                "jitter": true, "max_state_entries": 10_000})
        .to_string(),
    )?;
    ensure!(a == sequences(&mut h)?);
    ensure!(h.global_policy()?.jitter_mode == JitterMode::Full);
    Ok(())
}

#[test]
fn test_jitter_mode_equal_keeps_the_upper_half() -> Result<()> {
    let seqs = sequences(&mut with_mode("equal", harness::DEFAULT_SEED)?)?;
    for attempt in 0..RETRIES {
        let c = ceiling(attempt);
        let col: Vec<u64> = seqs.iter().map(|s| s[attempt]).collect();
        let (lo, hi) = (*col.iter().min().unwrap(), *col.iter().max().unwrap());
        ensure!(
            lo >= c.div_ceil(2) && hi <= c,
            "attempt {attempt}: [{lo}, {hi}] vs {c}"
        );
        ensure!(
            lo <= c.div_ceil(2) + c / 20 && hi >= c - c / 20,
            "attempt {attempt} does not span its range: [{lo}, {hi}]"
        );
    }
    Ok(())
}

#[test]
fn test_jitter_mode_decorrelated_grows_from_the_previous_delay() -> Result<()> {
    let mut h = with_mode("decorrelated", harness::DEFAULT_SEED)?;
    let seqs = sequences(&mut h)?;
    let mut reached_cap = false;
    for seq in &seqs {
        let mut previous = BASE;
        for &d in seq {
            ensure!(d >= BASE && d <= (previous * 3).min(MAX), "{seq:?}");
            reached_cap |= d == MAX;
            previous = d;
        }
    }
    ensure!(reached_cap, "decorrelated delays should reach the cap");
    ensure!(h.global_policy()?.jitter_mode == JitterMode::Decorrelated);
    // Same seed, same draws.
    ensure!(seqs == sequences(&mut with_mode("decorrelated", harness::DEFAULT_SEED)?)?);
    Ok(())
}

#[test]
fn test_jitter_mode_per_tool_and_errors() -> Result<()> {
    let mut h = configured(json!({
        "jitter": "equal",
        "tool_overrides": {"a": {"jitter": false}, "b": {"jitter": "decorrelated"}, "c": {"jitter": true}}
    }))?;
    ensure!(h.tool_policy("a")?.jitter_mode == JitterMode::None);
    ensure!(h.tool_policy("b")?.jitter_mode == JitterMode::Decorrelated);
    ensure!(h.tool_policy("c")?.jitter_mode == JitterMode::Full);
    ensure!(h.tool_policy("z")?.jitter_mode == JitterMode::Equal);
    ensure!(h.decide("a", "r", Signals::ERROR)?.delay_ms == 200);
    let errors = rejected(
        &mut h,
        r#"{"tool_overrides": {"t": {"jitter": "exponential"}}}"#,
    )?;
    ensure!(
        errors.len() == 1
            && errors[0].path == "tool_overrides.t.jitter"
            && errors[0]
                .message
                .starts_with("must be a boolean or one of \"none\""),
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn test_jitter_mode_decorrelated_state_survives_export_import() -> Result<()> {
    // The previous delay travels in the snapshot, so the next draw is bounded
    // by it on the new instance too.
    let mut old = with_mode("decorrelated", 3)?;
    let mut delays = Vec::new();
    for _ in 0..3 {
        delays.push(old.decide("t", "r", Signals::ERROR)?.delay_ms);
    }
    let doc = old.export_state()?;
    let rows = exported_entries(&doc)?;
    let tail = rows[0].as_array().map(|r| r[7..].to_vec());
    let want = vec![
        json!(3),
        json!(0),
        json!(delays[2]),
        json!(delays.iter().sum::<u64>()),
    ];
    ensure!(rows.len() == 1 && tail == Some(want), "{doc}");
    let mut new = Harness::with_seed(4)?;
    ensure!(new.import_state(&doc)? == Ok(1));
    new.select_id(old.policy());
    let d = new.decide("t", "r", Signals::ERROR)?;
    ensure!(
        d.retry_count == 4 && d.delay_ms >= BASE && d.delay_ms <= (delays[2] * 3).min(MAX),
        "{d:?}"
    );
    // A key new to the instance starts from the base.
    let d = new.decide("t", "q", Signals::ERROR)?;
    ensure!(
        d.retry_count == 1 && d.delay_ms >= BASE && d.delay_ms <= 3 * BASE,
        "{d:?}"
    );
    Ok(())
}
