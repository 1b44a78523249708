//! Server delay hints (issue 6 §1) through the built component. Signal bit 7
//! and bits 8..31 count only under `honor_retry_after`; the hint is a floor
//! with the jitter spread above it, clamped to `max_retry_after_ms`; a hint
//! that would end past the deadline gives up with reason `retry-after`; the
//! replay reads relative hints from the result JSON.

use crate::support::*;
use harness::{hint, SimStep};

fn failure_with_hint(h: &mut Harness, tool: &str, rid: &str, ms: u32) -> Result<Decision> {
    let (key, len) = harness::key(tool, rid);
    let bits = Signals::status(true, 429).pack() | hint::retry_after(ms);
    Ok(Decision::unpack(h.decide_raw(&key, len, bits)?))
}

#[test]
fn test_retry_after_only_when_honoured() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"api": {"honor_retry_after": true}}}))?;
    ensure!(failure_with_hint(&mut h, "other", "r", 3000)?.delay_ms == 200);
    let d = failure_with_hint(&mut h, "api", "r", 3000)?;
    ensure!(
        d.is_retry() && d.delay_ms == 3000 && d.retry_count == 1,
        "{d:?}"
    );
    ensure!(h.tool_policy("api")?.honor_retry_after);
    ensure!(!h.global_policy()?.honor_retry_after);
    Ok(())
}

#[test]
fn test_retry_after_clamp_floor_and_never_zero() -> Result<()> {
    let mut h = no_jitter(json!({
        "honor_retry_after": true, "max_retry_after_ms": 10_000, "max_retries": 5
    }))?;
    ensure!(failure_with_hint(&mut h, "t", "a", 60_000)?.delay_ms == 10_000);
    ensure!(failure_with_hint(&mut h, "t", "b", 0)?.delay_ms == 1);
    // The wire's largest hint, clamped like any other.
    ensure!(
        failure_with_hint(&mut h, "t", "c", harness::wire::RETRY_AFTER_MAX_MS)?.delay_ms == 10_000
    );
    // Jitter goes above the floor: [floor, floor + ceiling].
    let mut j = configured(json!({"honor_retry_after": true, "max_retries": 1}))?;
    let mut seen = Vec::new();
    for i in 0..500 {
        seen.push(failure_with_hint(&mut j, "t", &i.to_string(), 2000)?.delay_ms);
    }
    let (lo, hi) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
    ensure!(lo >= 2000 && hi <= 2200 && hi - lo > 150, "[{lo}, {hi}]");
    Ok(())
}

#[test]
fn test_retry_after_past_the_deadline_gives_up() -> Result<()> {
    let mut h = no_jitter(json!({
        "honor_retry_after": true, "max_total_delay_ms": 5000, "max_retries": 5
    }))?;
    ensure!(failure_with_hint(&mut h, "t", "r", 3000)?.delay_ms == 3000);
    let d = failure_with_hint(&mut h, "t", "r", 2500)?;
    ensure!(
        d.reason == reason::RETRY_AFTER && d.delay_ms == 0 && d.retry_count == 2,
        "{d:?}"
    );
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_retry_after_in_the_replay() -> Result<()> {
    let config = json!({"jitter": false, "honor_retry_after": true}).to_string();
    let results = [
        (
            r#"{"isError": true, "structuredContent": {"retry_after": 2}}"#,
            2000,
        ),
        (
            r#"{"isError": true, "structuredContent": {"retry_after_ms": 750}}"#,
            750,
        ),
        (
            r#"{"isError": true, "structuredContent": {"headers": {"Retry-After": "3"}}}"#,
            3000,
        ),
        (
            r#"{"isError": true, "structuredContent": {"headers": {"x-ratelimit-reset": "4"}}}"#,
            4000,
        ),
        (r#"{"isError": true}"#, 200),
    ];
    for (i, (result, want)) in results.iter().enumerate() {
        let step = SimStep {
            tool: "t".into(),
            request_id: format!("r{i}"),
            result_json: (*result).into(),
            advance_ms: 0,
            call: None,
        };
        let got = match Harness::new()?.simulate(&config, 1, &[step])? {
            Ok(d) => d[0].delay_ms,
            Err(e) => bail!("{e:?}"),
        };
        ensure!(got == *want, "{result}: {got}");
    }
    Ok(())
}
