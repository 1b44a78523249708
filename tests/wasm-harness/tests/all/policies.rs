//! Policies (contract 0.5, issue 23): one instance holds every configuration
//! of the process as a policy named by a content-derived id; the same stanza,
//! configuration and ceiling is the same policy and state, anything else is
//! apart; an id the instance does not hold is answered and changes nothing; a
//! policy unused for its `state_ttl_ms` is released, and `close-policy`
//! releases one at once; at most 4096 are held; the gateway's ceiling lowers
//! `max_retries` with warnings.

use crate::support::*;

const FAIL: Signals = Signals::ERROR;
const CONFIG: &str = r#"{"jitter":false,"max_retries":3}"#;

#[test]
fn test_policies_one_content_is_one_policy_and_one_state() -> Result<()> {
    let mut h = Harness::new()?;
    let a = h.open_policy_ok("p", CONFIG, Some(5))?;
    let b = h.open_policy_ok("p", CONFIG, Some(5))?;
    ensure!(a == b, "{a:?} / {b:?}");
    ensure!(h.policy_count()? == 1);
    let key = Key::new("t", "r");
    assert_retry(h.decide_key_in(a.id, &key, FAIL)?, 200, 1)?;
    assert_retry(h.decide_key_in(b.id, &key, FAIL)?, 400, 2)?;
    // The id is the content's in every instance (another seed, another
    // clock), so a host keeps it across instances.
    let mut other = Harness::with_seed(7)?;
    other.clock.set_ms(123_456);
    ensure!(other.open_policy_ok("p", CONFIG, Some(5))?.id == a.id);
    // Pinned: SipHash-1-3 with the key (0, 0), as the contract derives it.
    let native = h.open_policy_ok("RetryWithBackoffPlugin", "{}", None)?;
    ensure!(native.id == 0x8301_8cda_4a6f_1067, "{:#x}", native.id);
    Ok(())
}

#[test]
fn test_policies_apart_by_stanza_configuration_and_ceiling() -> Result<()> {
    let mut h = Harness::new()?;
    let ids = [
        h.open_policy_ok("p", CONFIG, None)?.id,
        h.open_policy_ok("q", CONFIG, None)?.id,
        h.open_policy_ok("p", r#"{"jitter":false,"max_retries":4}"#, None)?
            .id,
        h.open_policy_ok("p", CONFIG, Some(3))?.id,
        h.open_policy_ok("p", CONFIG, Some(4))?.id,
        h.open_policy_ok("p", CONFIG, Some(0))?.id,
    ];
    let distinct: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    ensure!(distinct.len() == ids.len(), "{ids:?}");
    ensure!(h.policy_count()? == ids.len() as u32);
    // Each counts its own failures of the same key: two stanzas never share.
    let key = Key::new("t", "r");
    for &id in &ids[..5] {
        assert_retry(h.decide_key_in(id, &key, FAIL)?, 200, 1)?;
    }
    assert_exhausted(h.decide_key_in(ids[5], &key, FAIL)?)?;
    for &id in &ids[..5] {
        ensure!(h.state_count_of(id)? == 1);
    }
    ensure!(h.state_count()? == 5);
    Ok(())
}

#[test]
fn test_policies_canonical_text_is_one_policy() -> Result<()> {
    // The canonical text (keys sorted, no whitespace) of one configuration,
    // however the host came by it, is one policy.
    let mut h = Harness::new()?;
    let mut ids = std::collections::BTreeSet::new();
    for text in [
        r#"{"max_retries":3,"jitter":false}"#,
        r#"{ "jitter": false, "max_retries": 3 }"#,
        "{\n  \"max_retries\": 3,\n  \"jitter\": false\n}",
    ] {
        let value: serde_json::Value = serde_json::from_str(text)?;
        ids.insert(h.open_policy_ok("p", &value.to_string(), None)?.id);
    }
    ensure!(ids.len() == 1 && h.policy_count()? == 1, "{ids:?}");
    Ok(())
}

/// The configuration's text, not its value, names a policy (the WIT of
/// `open-policy`): the host sends one configuration as one text, and the
/// engine never writes JSON back.
#[test]
fn test_policies_are_named_by_the_configuration_text() -> Result<()> {
    let mut h = Harness::new()?;
    let compact = h.open_policy_ok("p", r#"{"jitter":false,"max_retries":3}"#, None)?;
    let again = h.open_policy_ok("p", r#"{"jitter":false,"max_retries":3}"#, None)?;
    ensure!(again.id == compact.id, "the same text: the same policy");
    let reordered = h.open_policy_ok("p", r#"{"max_retries":3,"jitter":false}"#, None)?;
    ensure!(reordered.id != compact.id, "another text: another policy");
    ensure!(h.policy_count()? == 2);
    Ok(())
}

#[test]
fn test_unknown_policy_is_answered_and_changes_nothing() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    let held = h.policy();
    assert_retry(h.decide("t", "r", FAIL)?, 200, 1)?;
    let before = h.export_state()?;
    let texts = [r#"{"isError": true}"#.to_string()];
    for id in [0, 1, held ^ 1, u64::MAX] {
        for signals in [0, FAIL.pack(), u64::MAX] {
            let (key, parts) = harness::key("t", "r");
            ensure!(h.decide_raw_in(id, &key, parts, signals)? == Decision::UNKNOWN_POLICY);
            let (key, parts) = harness::key("txt", "r");
            ensure!(h.decide_raw_in(id, &key, parts, signals)? == Decision::UNKNOWN_POLICY);
            ensure!(
                h.decide_text_raw_in(id, &key, parts, signals, &texts)? == Decision::UNKNOWN_POLICY
            );
        }
        ensure!(h.tool_policy_in(id, "t")?.is_none());
        ensure!(h.state_count_of(id)? == 0);
    }
    ensure!(
        h.export_state()? == before,
        "an unknown policy changed the state"
    );
    ensure!(h.policy_count()? == 1);
    assert_retry(h.decide("t", "r", FAIL)?, 400, 2)
}

#[test]
fn test_policy_released_after_its_ttl_unused_and_reopened_under_its_id() -> Result<()> {
    let config = r#"{"jitter":false,"state_ttl_ms":1000}"#;
    let mut h = Harness::new()?;
    let id = h.configure_ok(config)?.id;
    h.clock.set_ms(500);
    assert_retry(h.decide("t", "r", FAIL)?, 200, 1)?; // used at 500
    h.clock.set_ms(1_500);
    ensure!(h.evict_expired()? == 0);
    ensure!(h.policy_count()? == 1, "unused for exactly its TTL: held");
    h.clock.set_ms(1_501);
    ensure!(h.evict_expired()? == 1, "released with its entry");
    ensure!(h.policy_count()? == 0);
    ensure!(h.decide("t", "r", FAIL)?.raw == Decision::UNKNOWN_POLICY);
    ensure!(h.tool_policy_in(id, "t")?.is_none());
    // Opened again: the same id, fresh state.
    ensure!(h.configure_ok(config)?.id == id);
    assert_retry(h.decide("t", "r", FAIL)?, 200, 1)?;
    Ok(())
}

#[test]
fn test_close_policy_releases_it_with_its_state_and_budgets() -> Result<()> {
    // For a configuration the host refuses after opening it: gone at once,
    // whatever its TTL; other policies untouched; an id not held: nothing.
    let config =
        r#"{"jitter":false,"max_retries":1,"retry_budget_min_per_sec":0,"retry_budget_percent":1}"#;
    let mut h = Harness::new()?;
    let other = h.open_policy_ok("other", CONFIG, None)?.id;
    let other_handle = h.decide_key_in(other, &Key::new("t", "r"), FAIL)?.handle;
    let id = h.configure_ok(config)?.id;
    let mut handle = 0;
    for k in 0..10 {
        handle = h.decide("t", &k.to_string(), FAIL)?.handle;
    }
    ensure!(h.decide("t", "spent", FAIL)?.reason == reason::BUDGET);
    h.close_policy(id)?;
    ensure!(h.policy_count()? == 1 && h.state_count()? == 1);
    ensure!(h.decide("t", "0", FAIL)?.raw == Decision::UNKNOWN_POLICY);
    ensure!(h.decide_held_raw(handle, FAIL.pack())? == Decision::UNKNOWN_HANDLE);
    ensure!(h.tool_policy_in(id, "t")?.is_none());
    // Opened again: a fresh policy, its bucket full again.
    ensure!(h.configure_ok(config)?.id == id);
    assert_retry(h.decide("t", "0", FAIL)?, 200, 1)?;
    for id in [id ^ 1, 0] {
        h.close_policy(id)?;
    }
    ensure!(h.policy_count()? == 2);
    assert_retry(h.decide_held(other_handle, FAIL)?, 400, 2)
}

#[test]
fn test_policy_opening_counts_as_use_and_opening_releases_the_unused() -> Result<()> {
    let mut h = Harness::new()?;
    let kept = h.open_policy_ok("p", r#"{"state_ttl_ms":1000}"#, None)?.id;
    let idle = h.open_policy_ok("q", r#"{"state_ttl_ms":1000}"#, None)?.id;
    h.clock.set_ms(900);
    ensure!(h.open_policy_ok("p", r#"{"state_ttl_ms":1000}"#, None)?.id == kept);
    // Past idle's TTL, opening another policy releases it (no eviction call).
    h.clock.set_ms(1_001);
    let third = h.open_policy_ok("r", "{}", None)?.id;
    ensure!(h.policy_count()? == 2);
    ensure!(h.tool_policy_in(idle, "t")?.is_none());
    ensure!(h.tool_policy_in(kept, "t")?.is_some() && h.tool_policy_in(third, "t")?.is_some());
    h.clock.set_ms(1_901);
    h.evict_expired()?;
    ensure!(h.tool_policy_in(kept, "t")?.is_none(), "used last at 900");
    ensure!(h.policy_count()? == 1);
    Ok(())
}

#[test]
fn test_at_most_4096_policies_and_only_unused_ones_make_room() -> Result<()> {
    let mut h = Harness::new()?;
    let mut ids = Vec::new();
    for i in 0..4096 {
        ids.push(h.open_policy_ok("p", &format!(r#"{{"n":{i}}}"#), None)?.id);
    }
    ensure!(h.policy_count()? == 4096);
    let Err(errors) = h.open_policy("p", r#"{"n":-1}"#, None)? else {
        bail!("the 4097th policy opened");
    };
    ensure!(
        errors.len() == 1 && errors[0].path.is_empty() && errors[0].message.contains("4096"),
        "{errors:?}"
    );
    ensure!(
        h.policy_count()? == 4096,
        "a refusal releases nothing in use"
    );
    // Ten of them used later: when the rest have gone unused for their TTL
    // (the default 300 s), opening another releases those and only those.
    h.clock.set_ms(200_000);
    for &id in &ids[..10] {
        let d = h.decide_key_in(id, &Key::new("t", "r"), FAIL)?;
        ensure!(d.is_retry() && d.retry_count == 1, "{d:?}");
    }
    h.clock.set_ms(300_001);
    h.open_policy_ok("p", r#"{"n":-1}"#, None)?;
    // Opening releases a few in turn (all of them only at the bound);
    // `evict-expired` every one.
    ensure!(h.policy_count()? <= 4096);
    h.evict_expired()?;
    ensure!(h.policy_count()? == 11, "{}", h.policy_count()?);
    ensure!(h.state_count()? == 10);
    for &id in &ids[..10] {
        ensure!(h.state_count_of(id)? == 1);
    }
    Ok(())
}

#[test]
fn test_ceiling_lowers_max_retries_with_warnings() -> Result<()> {
    let mut h = Harness::new()?;
    let config = json!({"jitter": false, "max_retries": 5,
        "tool_overrides": {"a": {"max_retries": 8}, "b": {"backoff_base_ms": 5}, "c": {"max_retries": 1}}})
    .to_string();
    let opened = h.open_policy_ok("p", &config, Some(3))?;
    ensure!(opened.global.max_retries == 3);
    let warnings: Vec<(&str, &str)> = opened
        .warnings
        .iter()
        .map(|w| (w.path.as_str(), w.message.as_str()))
        .collect();
    ensure!(
        warnings
            == [
                (
                    "max_retries",
                    "5 exceeds the gateway's retry ceiling (max_tool_retries = 3); lowered to 3"
                ),
                (
                    "tool_overrides.a.max_retries",
                    "8 exceeds the gateway's retry ceiling (max_tool_retries = 3); lowered to 3"
                ),
            ],
        "{warnings:?}"
    );
    h.select(&opened);
    for (tool, max) in [("a", 3), ("b", 3), ("c", 1), ("other", 3)] {
        ensure!(h.tool_policy(tool)?.max_retries == max, "{tool}");
    }
    let d = fail_n(&mut h, "a", "r", 4)?;
    ensure!(delays(&d) == [200, 400, 800, 0], "{d:?}");
    assert_exhausted(d[3])?;
    // The same text opened again answers the same warnings.
    ensure!(h.open_policy_ok("p", &config, Some(3))?.warnings == opened.warnings);
    // Past the limit of 10, lowered before it is validated: not an error.
    let opened = h.open_policy_ok("p", r#"{"max_retries": 20}"#, Some(3))?;
    ensure!(opened.global.max_retries == 3 && opened.warnings.len() == 1);
    ensure!(h.open_policy("p", r#"{"max_retries": 20}"#, None)?.is_err());
    // The default's 2 is lowered too, and says so.
    let opened = h.open_policy_ok("p", "{}", Some(1))?;
    ensure!(
        opened.global.max_retries == 1
            && opened.warnings.len() == 1
            && opened.warnings[0].path == "max_retries"
            && opened.warnings[0]
                .message
                .starts_with("2 (the default) exceeds"),
        "{opened:?}"
    );
    // At or under the ceiling: nothing lowered.
    let opened = h.open_policy_ok("p", r#"{"max_retries": 3}"#, Some(3))?;
    ensure!(opened.global.max_retries == 3 && opened.warnings.is_empty());
    // A ceiling of 0: no retry at all.
    let opened = h.open_policy_ok("p", "{}", Some(0))?;
    h.select(&opened);
    assert_exhausted(h.decide("t", "r", FAIL)?)?;
    Ok(())
}
