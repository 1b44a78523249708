//! Full jitter: every retry delay lies in `[1, min(base·2^(n-1), max)]`,
//! never 0, spans its range, and replays exactly under a fixed seed
//! (issue 2 §2).

use crate::support::*;

const DRAWS: usize = 10_000;
const BASE: u64 = 100;
const MAX: u64 = 1_000;
/// Attempts 1..=6: ceilings 100, 200, 400, 800, 1000 (capped), 1000.
const ATTEMPTS: usize = 6;

fn ceiling(attempt: usize) -> u64 {
    (BASE << (attempt - 1)).min(MAX)
}

fn jittered(seed: u128) -> Result<Harness> {
    let mut h = Harness::with_seed(seed)?;
    h.configure_ok(
        &json!({
            "max_retries": ATTEMPTS, "backoff_base_ms": BASE, "max_backoff_ms": MAX,
            "jitter": true, "max_state_entries": 1_000
        })
        .to_string(),
    )?;
    Ok(h)
}

/// `DRAWS` delays for each attempt 1..=ATTEMPTS: each key fails ATTEMPTS
/// times (one draw per attempt), then once more to exhaust and clear.
fn draws(seed: u128) -> Result<Vec<Vec<u64>>> {
    let mut h = jittered(seed)?;
    let mut per_attempt: Vec<Vec<u64>> = (0..ATTEMPTS).map(|_| Vec::with_capacity(DRAWS)).collect();
    for i in 0..DRAWS {
        let rid = i.to_string();
        for (n, bucket) in per_attempt.iter_mut().enumerate() {
            let d = h.decide("t", &rid, Signals::ERROR)?;
            ensure!(
                d.is_retry() && d.retry_count as usize == n + 1 && d.reserved == 0,
                "draw {i} attempt {}: {d:?}",
                n + 1
            );
            bucket.push(d.delay_ms);
        }
        assert_exhausted(h.decide("t", &rid, Signals::ERROR)?)?;
    }
    ensure!(h.state_count()? == 0);
    Ok(per_attempt)
}

#[test]
fn test_jitter_within_capped_ceiling_and_never_zero() -> Result<()> {
    for (n, bucket) in draws(harness::DEFAULT_SEED)?.iter().enumerate() {
        let attempt = n + 1;
        let ceil = ceiling(attempt);
        let min = *bucket.iter().min().unwrap();
        let max = *bucket.iter().max().unwrap();
        ensure!(min >= 1, "attempt {attempt}: a retry with delay {min}");
        ensure!(
            max <= ceil,
            "attempt {attempt}: delay {max} above the ceiling {ceil}"
        );
        // Full jitter spans the range: with 10 000 draws the extremes are
        // reached (or nearly, for the wider ranges), and the mean sits near
        // the middle. A delay stuck at the ceiling or at 1 fails here.
        ensure!(
            min <= 1 + ceil / 100,
            "attempt {attempt}: smallest delay {min} of {ceil}"
        );
        ensure!(
            max >= ceil - ceil / 100,
            "attempt {attempt}: largest delay {max} of {ceil}"
        );
        let mean = bucket.iter().sum::<u64>() as f64 / bucket.len() as f64;
        let expected = (ceil + 1) as f64 / 2.0;
        ensure!(
            (mean - expected).abs() < expected * 0.05,
            "attempt {attempt}: mean {mean:.1}, expected about {expected:.1}"
        );
    }
    Ok(())
}

#[test]
fn test_jitter_with_ceiling_one_is_always_one() -> Result<()> {
    // The native full jitter draws from [0, ceiling]: with a ceiling of 1 half
    // its "retries" would carry 0 ms, which the gateway reads as "stop".
    let mut h = Harness::new()?;
    h.configure_ok(
        &json!({"max_retries": 10, "backoff_base_ms": 1, "max_backoff_ms": 1}).to_string(),
    )?;
    for i in 0..1_000 {
        let d = h.decide("t", &format!("r{i}"), Signals::ERROR)?;
        assert_retry(d, 1, 1)?;
    }
    Ok(())
}

#[test]
fn test_jitter_small_ceiling_hits_every_value() -> Result<()> {
    let mut h = Harness::new()?;
    h.configure_ok(
        &json!({"max_retries": 1, "backoff_base_ms": 3, "max_backoff_ms": 3}).to_string(),
    )?;
    let mut seen = [0usize; 5];
    for i in 0..3_000 {
        let d = h.decide("t", &format!("r{i}"), Signals::ERROR)?;
        ensure!(d.is_retry(), "{d:?}");
        seen[d.delay_ms.min(4) as usize] += 1;
    }
    ensure!(
        seen[0] == 0 && seen[4] == 0,
        "delays outside [1, 3]: {seen:?}"
    );
    ensure!(
        seen[1..4].iter().all(|&c| c > 800),
        "uneven draws over 1..=3: {seen:?}"
    );
    Ok(())
}

#[test]
fn test_jitter_saturated_delay_stays_in_field() -> Result<()> {
    let mut h = Harness::new()?;
    h.configure_ok(
        &json!({"max_retries": 3, "backoff_base_ms": 1u64 << 45, "max_backoff_ms": 1u64 << 50})
            .to_string(),
    )?;
    for i in 0..1_000 {
        let d = h.decide("t", &format!("r{i}"), Signals::ERROR)?;
        ensure!(
            d.is_retry() && d.delay_ms >= 1 && d.retry_count == 1 && d.reserved == 0,
            "{d:?}"
        );
    }
    Ok(())
}

#[test]
fn test_jitter_reproducible_with_fixed_seed() -> Result<()> {
    let sequence = |seed: u128| -> Result<Vec<u64>> {
        let mut h = jittered(seed)?;
        (0..2_000)
            .map(|i| {
                Ok(h.decide("t", &format!("r{}", i / 4), Signals::ERROR)?
                    .delay_ms)
            })
            .collect()
    };
    let a = sequence(7)?;
    ensure!(a == sequence(7)?, "same seed, different jitter");
    ensure!(a != sequence(8)?, "different seeds, identical jitter");
    Ok(())
}

#[test]
fn test_jitter_off_per_tool_override() -> Result<()> {
    let mut h = Harness::new()?;
    h.configure_ok(
        &json!({"backoff_base_ms": 100, "tool_overrides": {"exact": {"jitter": false}}})
            .to_string(),
    )?;
    for i in 0..100 {
        assert_retry(h.decide("exact", &format!("r{i}"), Signals::ERROR)?, 100, 1)?;
    }
    Ok(())
}
