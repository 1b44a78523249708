//! Handles (engine-given since contract 0.5): a `retry` gives the key's
//! handle, every other decision 0; `decide-held` decides exactly as `decide`
//! with the key would, and a handle is given to another key only in a
//! decision, so a host that follows the documented rules always knows which
//! keys hold state.

use std::collections::HashMap;

use crate::support::*;
use harness::wire::{HANDLE_MASK, UNKNOWN_HANDLE};

const FAIL: Signals = Signals::ERROR;

#[test]
fn test_unknown_handle_is_bit_62_alone_and_changes_nothing() -> Result<()> {
    let mut h = no_jitter(json!({}))?;
    ensure!(
        h.decide_held_raw(1, FAIL.pack())? == UNKNOWN_HANDLE,
        "no key yet"
    );
    let held = h.decide("t", "r", FAIL)?.handle;
    ensure!(held != 0);
    for handle in [0, 7, HANDLE_MASK as u32, HANDLE_MASK as u32 + 1, u32::MAX] {
        if handle == held {
            continue;
        }
        ensure!(
            h.decide_held_raw(handle, FAIL.pack())? == UNKNOWN_HANDLE,
            "handle {handle}"
        );
    }
    ensure!(h.state_count()? == 1);
    // The key's count is untouched by all of that.
    assert_retry(h.decide("t", "r", FAIL)?, 400, 2)
}

#[test]
fn test_handle_decides_as_the_key_until_the_key_is_cleared() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 2}))?;
    let first = h.decide("search", "r1", FAIL)?;
    assert_retry(first, 200, 1)?;
    let second = h.decide_held(first.handle, FAIL)?;
    assert_retry(second, 400, 2)?;
    ensure!(second.handle == first.handle, "the key keeps its handle");
    assert_exhausted(h.decide_held(first.handle, FAIL)?)?;
    ensure!(h.decide_held_raw(first.handle, FAIL.pack())? == UNKNOWN_HANDLE);
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_only_a_retry_gives_a_handle() -> Result<()> {
    // Every decision that leaves no state for the key gives 0, whatever the
    // reason; the steps before the last build up state (and get handles).
    let fail = FAIL.pack();
    let not_found = Signals::status(true, 404).pack();
    let hinted = fail | harness::hint::retry_after(5_000);
    let cases: [(serde_json::Value, Vec<u64>, u8); 7] = [
        (json!({}), vec![fail, 0], reason::SUCCESS),
        (
            json!({"max_retries": 1}),
            vec![fail, fail],
            reason::EXHAUSTED,
        ),
        (json!({}), vec![fail, not_found], reason::NON_RETRYABLE),
        (
            json!({"retry_budget_percent": 1, "retry_budget_min_per_sec": 0}),
            vec![fail; 11],
            reason::BUDGET,
        ),
        (
            json!({"max_retries": 5, "max_total_delay_ms": 700}),
            vec![fail; 3],
            reason::DEADLINE,
        ),
        (
            json!({"honor_retry_after": true, "max_total_delay_ms": 1000}),
            vec![fail, hinted],
            reason::RETRY_AFTER,
        ),
        (
            json!({"non_idempotent_retries": "none"}),
            vec![fail],
            reason::NON_IDEMPOTENT,
        ),
    ];
    for (config, steps, want) in cases {
        let mut h = no_jitter(config.clone())?;
        let budget = want == reason::BUDGET;
        let mut last = None;
        for (i, &signals) in steps.iter().enumerate() {
            // The budget case spends its ten tokens on ten keys, then fails an
            // eleventh; the others fail one key again and again.
            let rid = if budget { i.to_string() } else { "r".into() };
            let (key, parts) = harness::key("t", &rid);
            let d = Decision::unpack(h.decide_raw(&key, parts, signals)?);
            ensure!(d.is_retry() == (d.handle != 0), "{config} step {i}: {d:?}");
            last = Some(d);
        }
        let d = last.expect("a step");
        ensure!(
            d.is_decision() && d.reason == want && d.handle == 0 && d.delay_ms == 0,
            "{config}: expected reason {want} without a handle, got {d:?}"
        );
        ensure!(h.state_count()? == u32::from(budget) * 10, "{config}");
    }
    Ok(())
}

#[test]
fn test_live_keys_never_share_a_handle_across_policies_and_contexts() -> Result<()> {
    // Handles are the instance's: each policy and context of it gets its own,
    // and `decide-held` decides under the key's own policy, whatever the
    // host's current one.
    let mut h = Harness::new()?;
    let fast = h.open_policy_ok("p", r#"{"jitter": false, "backoff_base_ms": 10}"#, None)?;
    let slow = h.open_policy_ok("p", r#"{"jitter": false, "backoff_base_ms": 1000}"#, None)?;
    let mut handles = HashMap::new();
    for (policy, base) in [(fast.id, 10), (slow.id, 1000)] {
        for tenant in ["", "acme"] {
            for rid in ["a", "b"] {
                let key = Key::new("t", rid).context(tenant, "srv");
                let d = h.decide_key_in(policy, &key, FAIL)?;
                assert_retry(d, base, 1)?;
                ensure!(
                    handles.insert(d.handle, (policy, base)).is_none(),
                    "handle {} given twice",
                    d.handle
                );
            }
        }
    }
    h.select(&fast);
    for (&handle, &(_, base)) in &handles {
        assert_retry(h.decide_held(handle, FAIL)?, 2 * base, 2)?;
    }
    Ok(())
}

#[test]
fn test_a_freed_handle_is_given_again_only_in_a_decision() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 5}))?;
    let x = h.decide("t", "x", FAIL)?.handle;
    assert_success(h.decide("t", "x", Signals::OK)?)?;
    // Freed, and not yet given again: it names nothing.
    ensure!(h.decide_held_raw(x, FAIL.pack())? == UNKNOWN_HANDLE);
    ensure!(h.state_count()? == 0);
    // Y's retry gives it (or another): from then on it names Y, which the
    // host learnt from that decision.
    let y = h.decide("t", "y", FAIL)?;
    assert_retry(h.decide_held(y.handle, FAIL)?, 400, 2)?;
    // X, by key, starts afresh: no decision by handle ever reached it.
    assert_retry(h.decide("t", "x", FAIL)?, 200, 1)?;
    Ok(())
}

#[test]
fn test_handle_forgets_a_key_past_its_ttl_or_evicted() -> Result<()> {
    let mut h = no_jitter(json!({"state_ttl_ms": 1000, "max_state_entries": 2}))?;
    h.clock.set_ms(10_000);
    h.decide("t", "old", FAIL)?;
    let old = h.decide("t", "old", FAIL)?.handle; // two failures
    let mid = h.decide("t", "mid", FAIL)?.handle;
    let new = h.decide("t", "new", FAIL)?.handle; // full: "old" goes
    ensure!(mid != new && old != mid);
    // "old"'s handle names "old" no more (its third failure would be 800):
    // it names nothing, or the key whose decision gave it again ("new").
    let d = h.decide_held(old, FAIL)?;
    if new == old {
        assert_retry(d, 400, 2)?;
    } else {
        ensure!(d.raw == UNKNOWN_HANDLE, "{d:?}");
    }
    assert_retry(h.decide_held(mid, FAIL)?, 400, 2)?;
    // Past the TTL the entry reads as gone: by handle as by key, a first failure.
    h.clock.advance_ms(1001);
    let again = h.decide_held(new, FAIL)?;
    assert_retry(again, 200, 1)?;
    ensure!(again.handle == new);
    h.clock.advance_ms(1001);
    h.evict_expired()?;
    ensure!(h.decide_held_raw(new, FAIL.pack())? == UNKNOWN_HANDLE);
    ensure!(h.decide_held_raw(mid, FAIL.pack())? == UNKNOWN_HANDLE);
    Ok(())
}

#[test]
fn test_handles_of_a_released_policy_name_nothing() -> Result<()> {
    let mut h = no_jitter(json!({"state_ttl_ms": 100}))?;
    let handle = h.decide("t", "r", FAIL)?.handle;
    h.clock.advance_ms(101);
    h.evict_expired()?;
    ensure!(h.policy_count()? == 0, "unused for its TTL: released");
    ensure!(h.decide_held_raw(handle, FAIL.pack())? == UNKNOWN_HANDLE);
    Ok(())
}

/// What a host knows by following `decide`'s rules: for each handle the key
/// of the last decision that gave it; a key is forgotten when a decision for
/// it gives 0 or its handle is given to another key.
#[derive(Default)]
struct HostView {
    handle_of: HashMap<(String, String), u32>,
    key_of: HashMap<u32, (String, String)>,
}

impl HostView {
    fn learn(&mut self, key: &(String, String), d: Decision) {
        if let Some(old) = self.handle_of.remove(key) {
            self.key_of.remove(&old);
        }
        if d.handle != 0 {
            if let Some(other) = self.key_of.insert(d.handle, key.clone()) {
                self.handle_of.remove(&other);
            }
            self.handle_of.insert(key.clone(), d.handle);
        }
    }
}

/// Two instances with the same seed, one always told the key, one deciding
/// by handle wherever its host view has one (and by key when the handle is
/// unknown): identical decision words at every step, across TTL expiry, the
/// entry bound, successes and long keys; and every key the instance holds
/// state for is one the host view names, under the same handle.
#[test]
fn test_deciding_by_handle_equals_deciding_by_key() -> Result<()> {
    let config = json!({"max_retries": 3, "backoff_base_ms": 10, "max_backoff_ms": 300,
                        "state_ttl_ms": 500, "max_state_entries": 40});
    let mut by_key = configured(config.clone())?;
    let mut by_handle = configured(config)?;
    let mut rng = fastrand::Rng::with_seed(0x4a4e_444c_4553);
    let mut view = HostView::default();
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
        let want = by_key.decide(&tool, &rid, signals)?;
        let entry = (tool, rid);
        let mut got = match view.handle_of.get(&entry) {
            Some(&handle) => by_handle.decide_held_raw(handle, signals.pack())?,
            None => UNKNOWN_HANDLE,
        };
        if got == UNKNOWN_HANDLE {
            got = by_handle.decide(&entry.0, &entry.1, signals)?.raw;
        } else {
            by_handle_calls += 1;
        }
        ensure!(
            got == want.raw,
            "step {step}: {entry:?} by handle {got:#x}, by key {:#x}",
            want.raw
        );
        view.learn(&entry, Decision::unpack(got));
        if step % 1000 == 999 {
            for row in exported_entries(&by_handle.export_state()?)? {
                let key = (
                    row[5].as_str().unwrap_or_default().to_string(),
                    row[6].as_str().unwrap_or_default().to_string(),
                );
                let handle = row[1].as_u64().unwrap_or_default() as u32;
                ensure!(
                    view.handle_of.get(&key) == Some(&handle),
                    "step {step}: {key:?} holds state under handle {handle}, the host view has {:?}",
                    view.handle_of.get(&key)
                );
            }
        }
    }
    ensure!(
        by_handle_calls > 2_000,
        "only {by_handle_calls} calls went by handle"
    );
    Ok(())
}
