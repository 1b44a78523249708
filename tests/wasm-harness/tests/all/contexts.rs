//! Gateway contexts (contract 0.5, issue 23): retry state and
//! `max_state_entries` are kept per (policy, tenant, server), the identity is
//! a key part of its own, and the memory cap `init` gives is shared fairly,
//! so one context's traffic never costs another its state.

use crate::support::*;

const FAIL: Signals = Signals::ERROR;
const MIB: u64 = 1 << 20;

#[test]
fn test_contexts_never_share_a_keys_state() -> Result<()> {
    // Issue 23 §5: the same tool and request id (a client-chosen correlation
    // id) in another tenant, server or identity is another key.
    let mut h = no_jitter(json!({"max_retries": 2}))?;
    let base = Key::new("search", "corr-1");
    let keys = [
        base,
        base.context("team-a", ""),
        base.context("team-b", ""),
        base.context("team-a", "srv-1"),
        base.context("", "srv-1"),
        base.context("team-a", "srv-1").identity("ann@example.com"),
        base.identity("ann@example.com"),
        // Lengths, not separators, split the parts: "team-a" + "srv" is not
        // "team-as" + "rv".
        base.context("team-as", "rv"),
    ];
    for key in &keys {
        assert_retry(h.decide_key(key, FAIL)?, 200, 1)?;
    }
    for key in &keys {
        assert_retry(h.decide_key(key, FAIL)?, 400, 2)?;
    }
    // Team A exhausting its key leaves team B's with its own count.
    assert_exhausted(h.decide_key(&keys[1], FAIL)?)?;
    assert_exhausted(h.decide_key(&keys[2], FAIL)?)?;
    ensure!(h.state_count()? == keys.len() as u32 - 2);
    Ok(())
}

#[test]
fn test_one_contexts_flood_leaves_anothers_key_mid_backoff() -> Result<()> {
    // Issue 23 §1: two unbound teams (one configuration, so one policy) with
    // max_state_entries 1000; team A's 3,000 new failing keys leave team B's
    // key in mid-backoff: its next delay is 100, not a fresh 50.
    let mut h = Harness::new()?;
    h.init(0, 64 * MIB)?;
    h.configure_ok(r#"{"backoff_base_ms":50,"jitter":false,"max_state_entries":1000}"#)?;
    let victim = Key::new("t", "victim").context("team-b", "");
    assert_retry(h.decide_key(&victim, FAIL)?, 50, 1)?;
    for i in 0..3_000 {
        h.clock.advance_ms(1);
        let rid = i.to_string();
        assert_retry(
            h.decide_key(&Key::new("t", &rid).context("team-a", ""), FAIL)?,
            50,
            1,
        )?;
    }
    assert_retry(h.decide_key(&victim, FAIL)?, 100, 2)?;
    ensure!(h.state_count()? == 1_001, "{}", h.state_count()?);
    // Team A paid with its own oldest keys: its newest are kept.
    let team_a = |rid| Key::new("t", rid).context("team-a", "");
    assert_retry(h.decide_key(&team_a("2999"), FAIL)?, 100, 2)?;
    assert_retry(h.decide_key(&team_a("0"), FAIL)?, 50, 1)?;
    Ok(())
}

/// Fill context `tenant` with `count` new failing keys (200-character
/// request ids).
fn flood(h: &mut Harness, tenant: &str, count: u32) -> Result<()> {
    for i in 0..count {
        let rid = format!("{i:0200}");
        h.decide_key(&Key::new("t", &rid).context(tenant, ""), FAIL)?;
    }
    Ok(())
}

#[test]
fn test_memory_cap_gives_a_small_context_its_share() -> Result<()> {
    // `init` with 32 MiB leaves 7 MiB for retry state (a quarter of what the
    // instance's own 4 MiB leave): 30 000 keys with 200-character request ids
    // do not fit (though their context's `max_state_entries` allows them),
    // and at the bound the context holding the most entries pays, never one
    // below the average.
    let config = r#"{"jitter":false,"max_retries":5,"max_state_entries":30000}"#;
    let mut h = Harness::new()?;
    h.init(0, 32 * MIB)?;
    h.configure_ok(config)?;
    flood(&mut h, "small", 200)?;
    flood(&mut h, "big", 30_000)?;
    let held = h.state_count()?;
    ensure!(
        (5_000..30_000).contains(&held),
        "{held} entries held in 7 MiB"
    );
    for i in 0..200 {
        let rid = format!("{i:0200}");
        assert_retry(
            h.decide_key(&Key::new("t", &rid).context("small", ""), FAIL)?,
            400,
            2,
        )
        .map_err(|e| e.context(format!("small context key {i}")))?;
    }
    // Without a cap (`init` never called) the same traffic keeps everything.
    let mut unbounded = Harness::new()?;
    unbounded.configure_ok(config)?;
    flood(&mut unbounded, "small", 200)?;
    flood(&mut unbounded, "big", 30_000)?;
    ensure!(unbounded.state_count()? == 30_200);
    Ok(())
}

#[test]
fn test_memory_cap_refuses_what_it_could_never_hold() -> Result<()> {
    let mut h = Harness::new()?;
    h.init(0, 64 * MIB)?;
    let Err(errors) = h.configure(r#"{"max_state_entries": 1000000}"#)? else {
        bail!("a million entries opened under a 64 MiB cap");
    };
    ensure!(
        errors.len() == 1
            && errors[0].path == "max_state_entries"
            && errors[0].message.contains("wasm_max_memory_bytes"),
        "{errors:?}"
    );
    h.configure_ok(r#"{"max_state_entries": 10000}"#)?;
    // Uncapped, the same configuration opens.
    Harness::new()?.configure_ok(r#"{"max_state_entries": 1000000}"#)?;

    // Policies may take at most an eighth of what the cap leaves (here 512
    // KiB): large configurations are refused past it, at the document's path.
    let mut h = Harness::new()?;
    h.init(0, 8 * MIB)?;
    let pad = "x".repeat(10_000);
    let mut opened = 0;
    let errors = loop {
        let config = json!({"n": opened, "pad": pad, "max_state_entries": 100});
        match h.configure(&config.to_string())? {
            Ok(_) => opened += 1,
            Err(errors) => break errors,
        }
        ensure!(
            opened < 1_000,
            "a thousand 10 kB configurations fit in 512 KiB"
        );
    };
    ensure!(opened >= 1 && opened * 10_000 <= MIB, "{opened} opened");
    ensure!(
        errors.len() == 1
            && errors[0].path.is_empty()
            && errors[0].message.contains("leaves for them"),
        "{errors:?}"
    );
    ensure!(h.policy_count()? == opened as u32);
    Ok(())
}
