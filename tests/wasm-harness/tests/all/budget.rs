//! Retry budgets (issue 6 §2) through the built component: the bucket drains
//! and refuses with reason `budget`, successes refill it, per tool; and the
//! issue's targets on the simulation of `harness::budget_sim`.

use crate::support::*;
use harness::budget_sim::run;

const BUDGET: &str = r#"{"max_retries": 4, "jitter": false, "retry_budget_percent": 34, "retry_budget_min_per_sec": 1}"#;

#[test]
fn test_budget_refuses_when_spent_and_clears_the_key() -> Result<()> {
    let mut h = no_jitter(json!({"retry_budget_percent": 50, "max_retries": 1}))?;
    for k in 0..10 {
        ensure!(h.decide("t", &k.to_string(), Signals::ERROR)?.is_retry());
    }
    let d = h.decide("t", "x", Signals::ERROR)?;
    ensure!(
        d.reason == reason::BUDGET && d.delay_ms == 0 && d.retry_count == 1,
        "{d:?}"
    );
    ensure!(
        !h.opened()
            .is_some_and(|p| p.reads.contains(PolicyReads::STATELESS_SUCCESSES)),
        "budgets count successes"
    );
    // Two successes buy a retry; the floor refills one token a second.
    h.decide("t", "s1", Signals::OK)?;
    h.decide("t", "s2", Signals::OK)?;
    ensure!(h.decide("t", "y", Signals::ERROR)?.is_retry());
    ensure!(h.decide("t", "z", Signals::ERROR)?.reason == reason::BUDGET);
    h.clock.advance_ms(1000);
    ensure!(h.decide("t", "w", Signals::ERROR)?.is_retry());
    // Another tool has its own bucket.
    ensure!(h.decide("u", "x", Signals::ERROR)?.is_retry());
    ensure!(h.global_policy()?.retry_budget_percent == Some(50));
    Ok(())
}

#[test]
fn test_budget_per_tool_and_off_by_default() -> Result<()> {
    let mut h = no_jitter(
        json!({"max_retries": 1, "tool_overrides": {"b": {"retry_budget_percent": 10}}}),
    )?;
    for k in 0..20 {
        ensure!(h.decide("free", &k.to_string(), Signals::ERROR)?.is_retry());
    }
    let refused = (0..20)
        .filter_map(|k| h.decide("b", &k.to_string(), Signals::ERROR).ok())
        .filter(|d| d.reason == reason::BUDGET)
        .count();
    ensure!(refused == 10, "{refused}");
    ensure!(h.tool_policy("free")?.retry_budget_percent.is_none());
    Ok(())
}

#[test]
fn test_budget_targets_at_full_outage() -> Result<()> {
    // Issue 6 §2: at 100 % upstream failure, total attempts <= 1.1 x first.
    let o = run(BUDGET, 5_000, 10, 1000, 7)?;
    ensure!(o.amplification() <= 1.1, "{o:?}: {}", o.amplification());
    let without = run(r#"{"max_retries": 4, "jitter": false}"#, 1_000, 10, 1000, 7)?;
    ensure!(without.amplification() == 5.0, "{without:?}");
    Ok(())
}

#[test]
fn test_budget_targets_at_twenty_percent_failure() -> Result<()> {
    // ... and at 20 % independent failure, >= 0.998 of calls end in success.
    let o = run(BUDGET, 5_000, 10, 200, 7)?;
    ensure!(o.success_rate() >= 0.998, "{o:?}: {}", o.success_rate());
    Ok(())
}

#[test]
fn test_budget_per_context_and_identity() -> Result<()> {
    // Issues 16 and 23: one instance serves every gateway context of the
    // process; a tenant, server or user that spends its budget leaves the
    // others theirs, and its floor refills it on the virtual clock. Since 0.5
    // the identity (`key_scope` `user`) is its own key part.
    let mut h = no_jitter(json!({"retry_budget_percent": 50, "max_retries": 1,
        "key_scope": "user"}))?;
    ensure!(h.opened().map(|p| p.key_scope) == Some(KeyScope::User));
    fn key<'a>(tenant: &'a str, user: &'a str, rid: &'a str) -> Key<'a> {
        Key::new("t", rid).context(tenant, "srv").identity(user)
    }
    for k in 0..10 {
        let rid = k.to_string();
        ensure!(h
            .decide_key(&key("acme", "ann", &rid), Signals::ERROR)?
            .is_retry());
    }
    let spent = h.decide_key(&key("acme", "ann", "x"), Signals::ERROR)?;
    ensure!(spent.reason == reason::BUDGET, "{spent:?}");
    ensure!(h
        .decide_key(&key("globex", "ann", "x"), Signals::ERROR)?
        .is_retry());
    ensure!(h
        .decide_key(&key("acme", "bob", "x"), Signals::ERROR)?
        .is_retry());
    ensure!(h
        .decide_key(&key("acme", "", "x"), Signals::ERROR)?
        .is_retry());
    let other_server = Key::new("t", "x").context("acme", "srv2").identity("ann");
    ensure!(h.decide_key(&other_server, Signals::ERROR)?.is_retry());
    // Parts are counted in characters, as the host's `len` does: "ünï" is
    // three, and its key does not run into the tool name.
    ensure!(h
        .decide_key(&key("acme", "ünï", "x"), Signals::ERROR)?
        .is_retry());
    h.clock.advance_ms(999);
    ensure!(
        h.decide_key(&key("acme", "ann", "y"), Signals::ERROR)?
            .reason
            == reason::BUDGET
    );
    h.clock.advance_ms(1);
    ensure!(h
        .decide_key(&key("acme", "ann", "z"), Signals::ERROR)?
        .is_retry());
    Ok(())
}

#[test]
fn test_budget_per_tool_whatever_the_request_ids() -> Result<()> {
    // The native key: request ids are opaque and never split a budget, even
    // ones that look like another tenant's.
    let mut h = no_jitter(json!({"retry_budget_percent": 50, "max_retries": 1}))?;
    for k in 0..10 {
        ensure!(h
            .decide("t", &format!("4:acme{k}"), Signals::ERROR)?
            .is_retry());
    }
    let d = h.decide("t", "6:globexx", Signals::ERROR)?;
    ensure!(d.reason == reason::BUDGET, "{d:?}");
    Ok(())
}
