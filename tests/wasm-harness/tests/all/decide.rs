//! `decide` with jitter off: the capped exponential backoff sequence, the
//! budget, exhaustion, success, key identity and the decision bit layout
//! (issue 2 §3).

use crate::support::*;

#[test]
fn test_backoff_sequence_then_exhausted() -> Result<()> {
    let mut h =
        no_jitter(json!({"max_retries": 3, "backoff_base_ms": 100, "max_backoff_ms": 1000}))?;
    let d = fail_n(&mut h, "tool", "req", 4)?;
    assert_retry(d[0], 100, 1)?;
    assert_retry(d[1], 200, 2)?;
    assert_retry(d[2], 400, 3)?;
    assert_exhausted(d[3])?;
    Ok(())
}

#[test]
fn test_backoff_defaults_with_jitter_off() -> Result<()> {
    // max_retries 2, base 200: 200, 400, then give up.
    let mut h = no_jitter(json!({}))?;
    let d = fail_n(&mut h, "tool", "req", 3)?;
    assert_retry(d[0], 200, 1)?;
    assert_retry(d[1], 400, 2)?;
    assert_exhausted(d[2])
}

#[test]
fn test_backoff_capped_at_max() -> Result<()> {
    let mut h =
        no_jitter(json!({"max_retries": 10, "backoff_base_ms": 1000, "max_backoff_ms": 3000}))?;
    let d = fail_n(&mut h, "tool", "req", 11)?;
    ensure!(
        delays(&d) == [1000, 2000, 3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000, 0],
        "{:?}",
        delays(&d)
    );
    for (i, d) in d[..10].iter().enumerate() {
        assert_retry(*d, d.delay_ms, i as u8 + 1)?;
    }
    assert_exhausted(d[10])
}

#[test]
fn test_backoff_exact_powers_of_two_up_to_ten_retries() -> Result<()> {
    let mut h =
        no_jitter(json!({"max_retries": 10, "backoff_base_ms": 3, "max_backoff_ms": 1_000_000}))?;
    let d = fail_n(&mut h, "tool", "req", 10)?;
    let expected: Vec<u64> = (0..10).map(|n| 3 << n).collect();
    ensure!(delays(&d) == expected, "{:?}", delays(&d));
    Ok(())
}

#[test]
fn test_backoff_huge_values_saturate_not_wrap() -> Result<()> {
    // base · 2^9 overflows nothing in u64 but exceeds the 32-bit delay field:
    // the delay saturates at 2^32-1 and must not spill into the count bits.
    let base: u64 = 1 << 41;
    let max: u64 = u64::MAX / 2;
    let mut h =
        no_jitter(json!({"max_retries": 10, "backoff_base_ms": base, "max_backoff_ms": max}))?;
    let d = fail_n(&mut h, "tool", "req", 10)?;
    for (i, d) in d.iter().enumerate() {
        assert_retry(*d, Decision::DELAY_MASK, i as u8 + 1)?;
    }
    // A base near u64::MAX: base · 2^(n-1) overflows u64 and must cap.
    let mut h = no_jitter(
        json!({"max_retries": 10, "backoff_base_ms": u64::MAX - 1, "max_backoff_ms": u64::MAX}),
    )?;
    for (i, d) in fail_n(&mut h, "tool", "req", 10)?.into_iter().enumerate() {
        assert_retry(d, Decision::DELAY_MASK, i as u8 + 1)?;
    }
    Ok(())
}

#[test]
fn test_backoff_delay_below_saturation_is_exact() -> Result<()> {
    let max = Decision::DELAY_MASK - 1;
    let mut h =
        no_jitter(json!({"max_retries": 2, "backoff_base_ms": max, "max_backoff_ms": max}))?;
    assert_retry(h.decide("t", "r", Signals::ERROR)?, max, 1)
}

#[test]
fn test_exhaustion_clears_and_next_failure_starts_fresh() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 2, "backoff_base_ms": 100}))?;
    for round in 0..3 {
        let d = fail_n(&mut h, "tool", "req", 3)?;
        assert_retry(d[0], 100, 1)?;
        assert_retry(d[1], 200, 2)?;
        assert_exhausted(d[2])?;
        ensure!(
            h.state_count()? == 0,
            "round {round}: exhaustion must clear the entry"
        );
    }
    Ok(())
}

#[test]
fn test_exhausted_decision_reports_count_past_budget() -> Result<()> {
    // The decision's count is "the failure count after this result": the
    // exhausting failure is failure max_retries + 1.
    let mut h = no_jitter(json!({"max_retries": 2}))?;
    let d = fail_n(&mut h, "tool", "req", 3)?;
    ensure!(d[2].is_exhausted());
    ensure!(
        d[2].retry_count == 3,
        "exhausted decision count {}",
        d[2].retry_count
    );
    Ok(())
}

#[test]
fn test_success_clears_state() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 3, "backoff_base_ms": 100}))?;
    fail_n(&mut h, "tool", "req", 2)?;
    ensure!(h.state_count()? == 1);
    assert_success(h.decide("tool", "req", Signals::OK)?)?;
    ensure!(h.state_count()? == 0);
    assert_retry(h.decide("tool", "req", Signals::ERROR)?, 100, 1)
}

#[test]
fn test_success_on_unknown_key_changes_nothing() -> Result<()> {
    let mut h = no_jitter(json!({}))?;
    h.decide("other", "r", Signals::ERROR)?;
    assert_success(h.decide("tool", "req", Signals::OK)?)?;
    ensure!(h.state_count()? == 1);
    Ok(())
}

#[test]
fn test_max_retries_zero_never_retries() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 0}))?;
    for _ in 0..3 {
        assert_exhausted(h.decide("tool", "req", Signals::ERROR)?)?;
        ensure!(h.state_count()? == 0);
    }
    Ok(())
}

#[test]
fn test_max_retries_zero_per_tool_override() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"fragile": {"max_retries": 0}}}))?;
    assert_exhausted(h.decide("fragile", "r", Signals::ERROR)?)?;
    assert_retry(h.decide("sturdy", "r", Signals::ERROR)?, 200, 1)
}

#[test]
fn test_keys_independent_per_tool_and_request() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 5, "backoff_base_ms": 10}))?;
    fail_n(&mut h, "a", "r1", 3)?;
    assert_retry(h.decide("a", "r2", Signals::ERROR)?, 10, 1)?;
    assert_retry(h.decide("b", "r1", Signals::ERROR)?, 10, 1)?;
    assert_retry(h.decide("a", "r1", Signals::ERROR)?, 80, 4)?;
    // A success on one key leaves the others alone.
    assert_success(h.decide("a", "r2", Signals::OK)?)?;
    assert_retry(h.decide("b", "r1", Signals::ERROR)?, 20, 2)?;
    ensure!(h.state_count()? == 2);
    Ok(())
}

#[test]
fn test_key_split_by_tool_len_does_not_collide() -> Result<()> {
    // ("a", "bc") and ("ab", "c") concatenate to the same "abc".
    let mut h = no_jitter(json!({"max_retries": 5, "backoff_base_ms": 10}))?;
    fail_n(&mut h, "a", "bc", 3)?;
    assert_retry(h.decide("ab", "c", Signals::ERROR)?, 10, 1)?;
    assert_retry(h.decide("", "abc", Signals::ERROR)?, 10, 1)?;
    assert_retry(h.decide("abc", "", Signals::ERROR)?, 10, 1)?;
    assert_retry(h.decide("a", "bc", Signals::ERROR)?, 80, 4)?;
    ensure!(h.state_count()? == 4);
    Ok(())
}

#[test]
fn test_key_split_selects_the_tools_policy() -> Result<()> {
    let mut h = no_jitter(json!({
        "backoff_base_ms": 10,
        "tool_overrides": {"ab": {"backoff_base_ms": 700}, "a": {"backoff_base_ms": 30}}
    }))?;
    assert_retry(h.decide("ab", "c", Signals::ERROR)?, 700, 1)?;
    assert_retry(h.decide("a", "bc", Signals::ERROR)?, 30, 1)?;
    assert_retry(h.decide("abc", "", Signals::ERROR)?, 10, 1)
}

#[test]
fn test_tool_len_counts_unicode_scalars_not_bytes() -> Result<()> {
    // "é" is one scalar (two UTF-8 bytes); "🦀" one scalar (four bytes).
    let mut h = no_jitter(json!({
        "backoff_base_ms": 10,
        "tool_overrides": {"é": {"backoff_base_ms": 20}, "🦀x": {"backoff_base_ms": 40}}
    }))?;
    let (key, len) = harness::key("é", "r");
    ensure!(len == 1 << 48 && key.len() == 3);
    assert_retry(
        Decision::unpack(h.decide_raw(&key, len, Signals::ERROR.pack())?),
        20,
        1,
    )?;
    assert_retry(h.decide("🦀x", "r", Signals::ERROR)?, 40, 1)?;
    assert_retry(h.decide("🦀", "xr", Signals::ERROR)?, 10, 1)?;
    // Where the tool length as a byte offset lands on a char boundary too: "éa" is two
    // scalars but "é" is two bytes, so a byte split would give ("é", "abc").
    let mut h = no_jitter(json!({
        "backoff_base_ms": 10,
        "tool_overrides": {"éa": {"backoff_base_ms": 70}, "é": {"backoff_base_ms": 30}}
    }))?;
    assert_retry(h.decide("éa", "bc", Signals::ERROR)?, 70, 1)?;
    assert_retry(h.decide("é", "abc", Signals::ERROR)?, 30, 1)?;
    assert_retry(h.decide("éa", "bc", Signals::ERROR)?, 140, 2)?;
    assert_retry(h.decide("é", "abc", Signals::ERROR)?, 60, 2)
}

#[test]
fn test_decision_bit_layout() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 3, "backoff_base_ms": 100}))?;
    let (key, parts) = harness::key("t", "r");
    ensure!(parts == 1 << 48, "the tool's length sits in bits 48..63");
    let raw = h.decide_raw(&key, parts, Signals::ERROR.pack())?;
    let handle = raw >> 40;
    ensure!(
        (1..=harness::wire::HANDLE_MASK).contains(&handle),
        "first retry packs as {raw:#x}"
    );
    ensure!(
        raw == 100 | 1 << 32 | 1 << 36 | handle << 40,
        "first retry packs as {raw:#x}"
    );
    let raw = h.decide_raw(&key, parts, Signals::ERROR.pack())?;
    ensure!(
        raw == 200 | 2 << 32 | 1 << 36 | handle << 40,
        "second retry packs as {raw:#x} (the key keeps its handle)"
    );
    // The success clears the key: no handle, the word is all zeros.
    let raw = h.decide_raw(&key, parts, Signals::OK.pack())?;
    ensure!(raw == 0, "success packs as {raw:#x}");
    Ok(())
}

#[test]
fn test_retry_count_tracks_consecutive_failures() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 10, "backoff_base_ms": 1, "max_backoff_ms": 1}))?;
    for n in 1..=10u8 {
        assert_retry(h.decide("t", "r", Signals::ERROR)?, 1, n)?;
    }
    Ok(())
}

#[test]
fn test_state_count_follows_failures_and_successes() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 5}))?;
    for i in 0..20 {
        h.decide("t", &format!("r{i}"), Signals::ERROR)?;
    }
    ensure!(h.state_count()? == 20);
    for i in 0..20 {
        h.decide("t", &format!("r{i}"), Signals::ERROR)?;
    }
    ensure!(
        h.state_count()? == 20,
        "a second failure must not add an entry"
    );
    for i in 0..10 {
        h.decide("t", &format!("r{i}"), Signals::OK)?;
    }
    ensure!(h.state_count()? == 10);
    Ok(())
}

#[test]
fn test_stateless_successes_follows_the_configuration() -> Result<()> {
    // The flag of `opened-policy` (what the `text-free` bit told before 0.5):
    // set unless some tool checks text content or keeps a retry budget.
    let mut h = Harness::new()?;
    for (config, stateless) in [
        (json!({}), true),
        (
            json!({"max_retries": 0, "tool_overrides": {"t": {"jitter": false}}}),
            true,
        ),
        (json!({"check_text_content": true}), false),
        (
            json!({"tool_overrides": {"txt": {"check_text_content": true}}}),
            false,
        ),
        (json!({"retry_budget_percent": 10}), false),
        (
            json!({"tool_overrides": {"b": {"retry_budget_percent": 10}}}),
            false,
        ),
    ] {
        let opened = h.configure_ok(&config.to_string())?;
        let got = opened.reads.contains(PolicyReads::STATELESS_SUCCESSES);
        ensure!(got == stateless, "{config}: {:?}", opened.reads);
    }
    Ok(())
}

#[test]
fn test_a_text_checking_policy_asks_for_text_on_zero_signals() -> Result<()> {
    // A result with signals 0 may still fail on its text for such a tool:
    // `need-text` alone, and nothing changes; other tools decide at once.
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    assert_success(h.decide("plain", "r", Signals::OK)?)?;
    assert_retry(
        h.decide_text("txt", "r", Signals::OK, &[r#"{"isError": true}"#])?,
        200,
        1,
    )?;
    let d = h.decide("txt", "r", Signals::OK)?;
    ensure!(
        d.raw == Decision::NEED_TEXT,
        "need-text carries no other bit: {d:?}"
    );
    ensure!(h.state_count()? == 1);
    assert_success(h.decide_text("txt", "r", Signals::OK, &["fine"])?)?;
    ensure!(h.state_count()? == 0);
    Ok(())
}
