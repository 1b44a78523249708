//! `decide-held` and the `handle` argument of `decide` (contract 0.2): a
//! handle is only a shortcut to a key, so deciding by handle must be exactly
//! deciding by key, and a handle must never reach the wrong key.

use crate::support::*;
use harness::key;

/// Decision bit 60, alone: `decide-held` was given a handle that names nothing.
use harness::wire::{HANDLE_MAX, UNKNOWN_HANDLE};
const FAIL: Signals = Signals::ERROR;

fn fail_named(h: &mut Harness, tool: &str, rid: &str, handle: u32) -> Result<Decision> {
    let (k, tool_len) = key(tool, rid);
    Ok(Decision::unpack(h.decide_named(
        &k,
        tool_len,
        FAIL.pack(),
        handle,
    )?))
}

#[test]
fn test_unknown_handle_is_bit_60_alone_and_changes_nothing() -> Result<()> {
    let mut h = no_jitter(json!({}))?;
    for handle in [0, 1, 7, HANDLE_MAX, HANDLE_MAX + 1, u32::MAX] {
        ensure!(h.decide_held_raw(handle, FAIL.pack())? == UNKNOWN_HANDLE);
    }
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_handle_decides_as_the_key_until_the_key_is_cleared() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 2}))?;
    assert_retry(fail_named(&mut h, "search", "r1", 9)?, 200, 1)?;
    assert_retry(Decision::unpack(h.decide_held_raw(9, FAIL.pack())?), 400, 2)?;
    let d = Decision::unpack(h.decide_held_raw(9, FAIL.pack())?);
    ensure!(d.is_exhausted(), "{d:?}");
    ensure!(h.decide_held_raw(9, FAIL.pack())? == UNKNOWN_HANDLE);
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_handle_moves_to_the_last_key_given_it_and_never_to_a_stranger() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 5}))?;
    fail_named(&mut h, "t", "a", 1)?;
    fail_named(&mut h, "t", "a", 1)?; // a: 2 failures
    fail_named(&mut h, "t", "b", 1)?; // handle 1 now names b (1 failure)
    assert_retry(Decision::unpack(h.decide_held_raw(1, FAIL.pack())?), 400, 2)?;
    // a kept its state, by key.
    assert_retry(h.decide("t", "a", FAIL)?, 800, 3)?;
    // Given to a result that clears its key, the handle names nothing.
    let (k, tool_len) = key("t", "c");
    h.decide_named(&k, tool_len, Signals::OK.pack(), 1)?;
    ensure!(h.decide_held_raw(1, FAIL.pack())? == UNKNOWN_HANDLE);
    // Given to a key too long to name (over 256 bytes), likewise.
    fail_named(&mut h, "t", "d", 2)?;
    fail_named(&mut h, "t", &"x".repeat(256), 2)?;
    ensure!(h.decide_held_raw(2, FAIL.pack())? == UNKNOWN_HANDLE);
    Ok(())
}

#[test]
fn test_handle_forgets_a_key_past_its_ttl_or_evicted() -> Result<()> {
    let mut h = no_jitter(json!({"state_ttl_ms": 1000, "max_state_entries": 2}))?;
    h.clock.set_ms(10_000);
    fail_named(&mut h, "t", "old", 1)?;
    fail_named(&mut h, "t", "mid", 2)?;
    fail_named(&mut h, "t", "new", 3)?; // full: "old" goes
    ensure!(h.decide_held_raw(1, FAIL.pack())? == UNKNOWN_HANDLE);
    assert_retry(Decision::unpack(h.decide_held_raw(2, FAIL.pack())?), 400, 2)?;
    // Past the TTL the entry reads as gone: by handle as by key, a first failure.
    h.clock.advance_ms(1001);
    assert_retry(Decision::unpack(h.decide_held_raw(3, FAIL.pack())?), 200, 1)?;
    h.clock.advance_ms(1001);
    h.evict_expired()?;
    ensure!(h.decide_held_raw(3, FAIL.pack())? == UNKNOWN_HANDLE);
    Ok(())
}

/// Two instances with the same seed, one always told the key, one naming keys
/// by handles the way the Python host does (a free list, a handle per held key,
/// `decide` again when the handle is unknown): identical decisions at every
/// step, across TTL expiry, the entry cap, successes and long keys.
#[test]
fn test_deciding_by_handle_equals_deciding_by_key() -> Result<()> {
    let config = json!({"max_retries": 3, "backoff_base_ms": 10, "max_backoff_ms": 300,
                        "state_ttl_ms": 500, "max_state_entries": 40});
    let mut by_key = configured(config.clone())?;
    let mut by_handle = configured(config)?;
    let mut rng = fastrand::Rng::with_seed(0x4a4e_444c_4553);
    let mut held: std::collections::HashMap<(String, String), u32> = Default::default();
    let mut free: Vec<u32> = Vec::new();
    let mut next = 1u32;
    let mut by_handle_calls = 0;
    for step in 0..20_000 {
        let tool = ["a", "search", "é✓"][rng.usize(..3)].to_string();
        let rid = if rng.u8(..50) == 0 {
            "L".repeat(300)
        } else {
            rng.u32(..60).to_string()
        };
        let signals = match rng.u8(..10) {
            0..=1 => Signals::OK,
            2 => Signals::status(true, 404),
            _ => FAIL,
        };
        if rng.u8(..20) == 0 {
            let ms = rng.u64(..400);
            by_key.clock.advance_ms(ms);
            by_handle.clock.advance_ms(ms);
        }
        let (k, tool_len) = key(&tool, &rid);
        let want = by_key.decide_raw(&k, tool_len, signals.pack())?;
        let entry = (tool, rid);
        let old = held.get(&entry).copied();
        let mut got = match old {
            Some(handle) => by_handle.decide_held_raw(handle, signals.pack())?,
            None => UNKNOWN_HANDLE,
        };
        let mut handle = old.unwrap_or(0);
        if got == UNKNOWN_HANDLE {
            if handle == 0 && k.len() <= 256 {
                handle = free.pop().unwrap_or_else(|| {
                    next += 1;
                    next - 1
                });
            }
            got = by_handle.decide_named(&k, tool_len, signals.pack(), handle)?;
        } else {
            by_handle_calls += 1;
        }
        ensure!(
            got == want,
            "step {step}: {entry:?} by handle {got:#x}, by key {want:#x}"
        );
        if Decision::unpack(got).is_retry() {
            held.insert(entry, handle);
        } else {
            held.remove(&entry);
            if handle != 0 {
                free.push(handle);
            }
        }
    }
    ensure!(
        by_handle_calls > 2_000,
        "only {by_handle_calls} calls went by handle"
    );
    Ok(())
}

#[test]
fn test_the_largest_handle_fits_a_calls_fuel_even_first() -> Result<()> {
    // Naming a key with the largest valid handle fills the handle map up to it:
    // the dearest naming there is, and it fits the host's default 10 M budget.
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    let (engine, component) = harness::compile(&config)?;
    let mut h = Harness::instantiate(&engine, &component, harness::DEFAULT_SEED, |store| {
        store.set_fuel(u64::MAX / 2)?;
        Ok(())
    })?;
    fail_named(&mut h, "t", "first", 0)?; // allocates the state tables
    let before = h.store.get_fuel()?;
    fail_named(&mut h, "t", "named", HANDLE_MAX)?;
    let used = before - h.store.get_fuel()?;
    ensure!(
        used < 10_000_000,
        "naming with handle 2^17 took {used} fuel"
    );
    ensure!(h.decide_held_raw(HANDLE_MAX, FAIL.pack())? != UNKNOWN_HANDLE);
    ensure!(h.decide_held_raw(HANDLE_MAX + 1, FAIL.pack())? == UNKNOWN_HANDLE);
    Ok(())
}
