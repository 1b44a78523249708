//! `max_state_entries`: the state map is bounded and the oldest entry goes
//! first (issue 2 §2).

use crate::support::*;

fn capped(n: u64) -> Result<Harness> {
    no_jitter(json!({"max_retries": 5, "backoff_base_ms": 100, "max_state_entries": n}))
}

#[test]
fn test_capacity_never_exceeds_max_state_entries() -> Result<()> {
    const N: u32 = 8;
    let mut h = capped(N.into())?;
    for i in 0..N + 5 {
        h.clock.advance_ms(1);
        h.decide("t", &format!("k{i}"), Signals::ERROR)?;
        let count = h.state_count()?;
        ensure!(
            count == (i + 1).min(N),
            "after {} unique keys: state-count {count}",
            i + 1
        );
    }
    Ok(())
}

#[test]
fn test_capacity_evicts_oldest_first() -> Result<()> {
    const N: u32 = 4;
    const K: u32 = 2;
    let mut h = capped(N.into())?;
    for i in 0..N + K {
        h.clock.advance_ms(1);
        assert_retry(h.decide("t", &format!("k{i}"), Signals::ERROR)?, 100, 1)?;
    }
    // The newest keys kept their budget...
    h.clock.advance_ms(1);
    assert_retry(
        h.decide("t", &format!("k{}", N + K - 1), Signals::ERROR)?,
        200,
        2,
    )?;
    assert_retry(h.decide("t", &format!("k{}", K), Signals::ERROR)?, 200, 2)?;
    // ...and the K oldest were evicted: their next failure starts fresh.
    assert_retry(h.decide("t", "k0", Signals::ERROR)?, 100, 1)?;
    ensure!(h.state_count()? <= N);
    Ok(())
}

#[test]
fn test_capacity_evicts_oldest_even_on_the_same_millisecond() -> Result<()> {
    // Insertion order breaks ties when the clock has not moved.
    let mut h = capped(3)?;
    for k in ["a", "b", "c", "d"] {
        h.decide("t", k, Signals::ERROR)?;
    }
    assert_retry(h.decide("t", "d", Signals::ERROR)?, 200, 2)?;
    assert_retry(h.decide("t", "b", Signals::ERROR)?, 200, 2)?;
    assert_retry(h.decide("t", "a", Signals::ERROR)?, 100, 1)?;
    Ok(())
}

#[test]
fn test_capacity_one_entry() -> Result<()> {
    let mut h = capped(1)?;
    h.decide("t", "a", Signals::ERROR)?;
    assert_retry(h.decide("t", "a", Signals::ERROR)?, 200, 2)?;
    h.decide("t", "b", Signals::ERROR)?;
    ensure!(h.state_count()? == 1);
    assert_retry(h.decide("t", "b", Signals::ERROR)?, 200, 2)?;
    assert_retry(h.decide("t", "a", Signals::ERROR)?, 100, 1)
}

#[test]
fn test_capacity_unique_request_flood_stays_bounded() -> Result<()> {
    const N: u32 = 100;
    let mut h = capped(N.into())?;
    for i in 0..20_000u32 {
        if i % 1000 == 0 {
            h.clock.advance_ms(1);
        }
        h.decide("flood", &i.to_string(), Signals::ERROR)?;
    }
    ensure!(h.state_count()? == N);
    // The last N keys are the live ones.
    assert_retry(h.decide("flood", "19999", Signals::ERROR)?, 200, 2)?;
    assert_retry(
        h.decide("flood", &(20_000 - N).to_string(), Signals::ERROR)?,
        200,
        2,
    )?;
    assert_retry(h.decide("flood", "0", Signals::ERROR)?, 100, 1)
}

#[test]
fn test_capacity_default_is_100_000() -> Result<()> {
    let mut h = no_jitter(json!({}))?;
    for i in 0..100_001u32 {
        h.decide("t", &i.to_string(), Signals::ERROR)?;
    }
    ensure!(h.state_count()? == 100_000);
    assert_retry(h.decide("t", "0", Signals::ERROR)?, 200, 1)?;
    Ok(())
}
