//! State TTL on the virtual monotonic clock: exact at `ttl-1` / `ttl` /
//! `ttl+1` ms, explicit and amortized eviction (issue 2 §2).

use crate::support::*;

const TTL: u64 = 1_000;
/// A start time away from 0, so "never failed" and "failed at 0" differ.
const T0: u64 = 50_000;

fn with_ttl(ttl: u64) -> Result<Harness> {
    let h = no_jitter(json!({"max_retries": 5, "backoff_base_ms": 100, "state_ttl_ms": ttl}))?;
    h.clock.set_ms(T0);
    Ok(h)
}

#[test]
fn test_ttl_boundary_continues_at_ttl_and_expires_after() -> Result<()> {
    for (age, continues) in [(TTL - 1, true), (TTL, true), (TTL + 1, false)] {
        let mut h = with_ttl(TTL)?;
        assert_retry(h.decide("t", "r", Signals::ERROR)?, 100, 1)?;
        h.clock.advance_ms(age);
        let d = h.decide("t", "r", Signals::ERROR)?;
        if continues {
            assert_retry(d, 200, 2).map_err(|e| e.context(format!("age {age} ms")))?;
        } else {
            assert_retry(d, 100, 1).map_err(|e| e.context(format!("age {age} ms")))?;
        }
    }
    Ok(())
}

#[test]
fn test_ttl_counts_from_the_last_failure() -> Result<()> {
    let mut h = with_ttl(TTL)?;
    for n in 1..=5u8 {
        assert_retry(h.decide("t", "r", Signals::ERROR)?, 100 << (n - 1), n)?;
        h.clock.advance_ms(TTL);
    }
    ensure!(h.evict_expired()? == 0);
    h.clock.advance_ms(1);
    ensure!(h.evict_expired()? == 1);
    Ok(())
}

#[test]
fn test_ttl_evict_expired_exact_at_boundary() -> Result<()> {
    let mut h = with_ttl(TTL)?;
    h.decide("t", "old", Signals::ERROR)?;
    h.clock.advance_ms(10);
    h.decide("t", "young", Signals::ERROR)?;

    h.clock.set_ms(T0 + TTL);
    ensure!(h.evict_expired()? == 0, "nothing is older than the TTL yet");
    ensure!(h.state_count()? == 2);

    h.clock.set_ms(T0 + TTL + 1);
    ensure!(
        h.evict_expired()? == 1,
        "only the old entry is past the TTL"
    );
    ensure!(h.state_count()? == 1);
    ensure!(h.evict_expired()? == 0, "a second sweep finds nothing");

    h.clock.set_ms(T0 + 10 + TTL);
    ensure!(h.evict_expired()? == 0);
    h.clock.set_ms(T0 + 10 + TTL + 1);
    ensure!(h.evict_expired()? == 1);
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_ttl_sub_millisecond_clock_does_not_expire_early() -> Result<()> {
    // The clock is in nanoseconds: an age of TTL ms minus 1 ns is within the
    // TTL however the engine rounds to milliseconds.
    let mut h = with_ttl(TTL)?;
    h.decide("t", "r", Signals::ERROR)?;
    h.clock.advance_ns(TTL * 1_000_000 - 1);
    ensure!(h.evict_expired()? == 0);
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 200, 2)
}

#[test]
fn test_ttl_default_is_300_000_ms() -> Result<()> {
    for (age, continues) in [(300_000, true), (300_001, false)] {
        let mut h = no_jitter(json!({"max_retries": 5, "backoff_base_ms": 100}))?;
        h.clock.set_ms(T0);
        h.decide("t", "r", Signals::ERROR)?;
        h.clock.advance_ms(age);
        let d = h.decide("t", "r", Signals::ERROR)?;
        ensure!(
            d.retry_count == if continues { 2 } else { 1 },
            "age {age}: {d:?}"
        );
    }
    Ok(())
}

#[test]
fn test_ttl_expired_entry_counts_as_fresh_without_a_sweep() -> Result<()> {
    // The exhausting budget of an expired entry must not carry over either.
    let mut h = no_jitter(json!({"max_retries": 2, "backoff_base_ms": 100, "state_ttl_ms": TTL}))?;
    h.clock.set_ms(T0);
    fail_n(&mut h, "t", "r", 2)?;
    h.clock.advance_ms(TTL + 1);
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 100, 1)?;
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 200, 2)
}

/// Fill `count` entries at T0, move past the TTL, then feed `signals` on
/// other keys until the state count drops to `floor`; return the calls made.
fn calls_until_swept(signals: Signals, count: usize, floor: u32) -> Result<usize> {
    let mut h = with_ttl(TTL)?;
    for i in 0..count {
        h.decide("t", &format!("stale-{i}"), Signals::ERROR)?;
    }
    ensure!(h.state_count()? == count as u32);
    h.clock.advance_ms(TTL + 1);
    let limit = 64 * count;
    for call in 1..=limit {
        h.decide("other", "live", signals)?;
        if h.state_count()? <= floor {
            return Ok(call);
        }
    }
    bail!(
        "{count} expired entries still counted ({}) after {limit} {signals:?} calls",
        h.state_count()?
    )
}

#[test]
fn test_ttl_eviction_happens_on_success_path() -> Result<()> {
    calls_until_swept(Signals::OK, 200, 0)?;
    Ok(())
}

#[test]
fn test_ttl_eviction_happens_on_failure_path() -> Result<()> {
    // The one live entry is the key being failed.
    calls_until_swept(Signals::ERROR, 200, 1)?;
    Ok(())
}

#[test]
fn test_ttl_short_ttl_of_one_ms() -> Result<()> {
    let mut h = with_ttl(1)?;
    h.decide("t", "r", Signals::ERROR)?;
    h.clock.advance_ms(1);
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 200, 2)?;
    h.clock.advance_ms(2);
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 100, 1)
}

#[test]
fn test_ttl_opening_the_policy_again_does_not_revive_expired_entries() -> Result<()> {
    // More expired entries than one call sweeps (8 off each of two contexts),
    // so some are still held when the host opens the same configuration again
    // (as a rebuilt plugin object does): the same policy, and none of them may
    // count again. (Before 0.5 a reconfigure could raise the TTL under them;
    // a policy's TTL no longer changes.)
    let mut h = with_ttl(TTL)?;
    let config =
        json!({"jitter": false, "max_retries": 5, "backoff_base_ms": 100, "state_ttl_ms": TTL});
    for i in 0..40 {
        assert_retry(h.decide("t", &format!("r{i}"), Signals::ERROR)?, 100, 1)?;
    }
    h.clock.advance_ms(TTL + 1);
    h.decide("t", "other", Signals::OK)?; // sweeps some, not all
    ensure!(
        h.state_count()? > 0,
        "the sweep must leave some expired entries"
    );
    let id = h.policy();
    ensure!(h.configure_ok(&config.to_string())?.id == id);
    for i in 0..40 {
        assert_retry(h.decide("t", &format!("r{i}"), Signals::ERROR)?, 100, 1)
            .map_err(|e| e.context(format!("r{i} came back after the TTL")))?;
    }
    Ok(())
}
