//! Failure classes and backoff shapes (issue 15 §2) through the built
//! component: a throttled failure (structured status 429, or any failure
//! carrying a server delay hint, signal bit 7) takes the throttle class's
//! bounds, every other retriable failure the transient ones; `backoff` picks
//! the shape; both per tool; the policy record reports the effective values.

use crate::support::*;
use harness::hint;

/// One failure of `tool`/`rid` with structured status `status` and, if
/// given, a server delay hint.
fn fail(h: &mut Harness, tool: &str, rid: &str, status: i32, hint_ms: Option<u32>) -> Result<u64> {
    let (key, len) = harness::key(tool, rid);
    let bits = Signals::status(true, status).pack() | hint_ms.map_or(0, hint::retry_after);
    let d = Decision::unpack(h.decide_raw(&key, len, bits)?);
    ensure!(d.is_retry(), "{d:?}");
    Ok(d.delay_ms)
}

#[test]
fn test_throttle_class_has_its_own_bounds() -> Result<()> {
    let mut h = no_jitter(json!({
        "max_retries": 4, "throttle_backoff_base_ms": 1000, "throttle_max_backoff_ms": 3000
    }))?;
    let throttled: Vec<u64> = (0..4)
        .map(|_| fail(&mut h, "t", "a", 429, None))
        .collect::<Result<_>>()?;
    ensure!(throttled == [1000, 2000, 3000, 3000], "{throttled:?}");
    let transient: Vec<u64> = (0..4)
        .map(|_| fail(&mut h, "t", "b", 503, None))
        .collect::<Result<_>>()?;
    ensure!(transient == [200, 400, 800, 1600], "{transient:?}");
    Ok(())
}

#[test]
fn test_a_delay_hint_makes_a_failure_throttled_even_when_not_honoured() -> Result<()> {
    let mut h =
        no_jitter(json!({"throttle_backoff_base_ms": 700, "throttle_max_backoff_ms": 700}))?;
    ensure!(fail(&mut h, "t", "a", 503, Some(50))? == 700);
    ensure!(fail(&mut h, "t", "b", 503, None)? == 200);
    // Honoured, the hint is the floor and the throttle class's spread is
    // added above it (none without jitter).
    let mut h = no_jitter(json!({
        "honor_retry_after": true, "throttle_backoff_base_ms": 700, "throttle_max_backoff_ms": 700
    }))?;
    ensure!(fail(&mut h, "t", "a", 503, Some(50))? == 50);
    Ok(())
}

#[test]
fn test_throttle_spread_above_an_honoured_hint_follows_the_throttle_ceiling() -> Result<()> {
    let mut h = configured(json!({
        "honor_retry_after": true, "backoff_base_ms": 1, "max_backoff_ms": 1,
        "throttle_backoff_base_ms": 1000, "throttle_max_backoff_ms": 1000
    }))?;
    let mut highest = 0;
    for i in 0..200 {
        let d = fail(&mut h, "t", &i.to_string(), 503, Some(100))?;
        ensure!((100..=1100).contains(&d), "{d}");
        highest = highest.max(d);
    }
    // The transient ceiling (1 ms) would keep every delay at 100 or 101.
    ensure!(highest > 600, "highest {highest}");
    Ok(())
}

#[test]
fn test_linear_and_constant_shapes_per_tool() -> Result<()> {
    let mut h = no_jitter(json!({
        "max_retries": 5, "backoff": "linear", "backoff_base_ms": 300, "max_backoff_ms": 1000,
        "tool_overrides": {"flat": {"backoff": "constant"}, "exp": {"backoff": "exponential"}}
    }))?;
    let run = |h: &mut Harness, tool: &str| -> Result<Vec<u64>> {
        (0..5).map(|_| fail(h, tool, "r", 503, None)).collect()
    };
    let linear = run(&mut h, "any")?;
    ensure!(linear == [300, 600, 900, 1000, 1000], "{linear:?}");
    let flat = run(&mut h, "flat")?;
    ensure!(flat == [300; 5], "{flat:?}");
    let exp = run(&mut h, "exp")?;
    ensure!(exp == [300, 600, 1000, 1000, 1000], "{exp:?}");
    ensure!(h.tool_policy("flat")?.backoff == BackoffShape::Constant);
    ensure!(h.global_policy()?.backoff == BackoffShape::Linear);
    Ok(())
}

#[test]
fn test_shaped_jittered_delays_stay_in_one_to_the_cap() -> Result<()> {
    for shape in ["linear", "constant"] {
        for jitter in ["full", "equal"] {
            let mut h = configured(json!({
                "max_retries": 10, "backoff": shape, "jitter": jitter,
                "backoff_base_ms": 40, "max_backoff_ms": 100,
                "throttle_backoff_base_ms": 500, "throttle_max_backoff_ms": 900
            }))?;
            for i in 0..100 {
                let rid = i.to_string();
                for _ in 0..10 {
                    let d = fail(&mut h, "t", &rid, 503, None)?;
                    ensure!((1..=100).contains(&d), "{shape}/{jitter}: {d}");
                    let d = fail(&mut h, "t", &format!("z{rid}"), 429, None)?;
                    ensure!((1..=900).contains(&d), "{shape}/{jitter} throttled: {d}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn test_policy_reports_effective_throttle_bounds() -> Result<()> {
    let mut h = configured(json!({
        "backoff_base_ms": 300, "throttle_max_backoff_ms": 20_000,
        "tool_overrides": {"t": {"backoff_base_ms": 50, "throttle_max_backoff_ms": null}}
    }))?;
    let g = h.global_policy()?;
    ensure!(
        (g.throttle_backoff_base_ms, g.throttle_max_backoff_ms) == (300, 20_000),
        "{g:?}"
    );
    let t = h.tool_policy("t")?;
    ensure!(
        (t.throttle_backoff_base_ms, t.throttle_max_backoff_ms) == (50, 5000),
        "{t:?}"
    );
    Ok(())
}

#[test]
fn test_shape_and_throttle_errors_carry_key_paths() -> Result<()> {
    let mut h = Harness::new()?;
    let errors = rejected(
        &mut h,
        &json!({
            "tool_overrides": {
                "a": {"backoff": "fib"},
                "b": {"throttle_backoff_base_ms": 9000},
                "c": {"backoff": "linear", "jitter": "decorrelated"}
            }
        })
        .to_string(),
    )?;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    ensure!(
        paths
            == [
                "tool_overrides.a.backoff",
                "tool_overrides.b.throttle_backoff_base_ms",
                "tool_overrides.c.backoff"
            ],
        "{errors:?}"
    );
    Ok(())
}
