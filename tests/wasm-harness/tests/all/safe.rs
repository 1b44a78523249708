//! Safe classification (issue 6 §5) through the built component: signal bits
//! 4..6 only count under `safe_classification`; `input_required` is not a
//! failure; input-validation errors and `retryable: false` are non-retryable;
//! per tool; and the replay reads the same facts from JSON.

use crate::support::*;
use harness::{hint, SimDecision, SimStep};

fn decide_bits(h: &mut Harness, tool: &str, rid: &str, bits: u64) -> Result<Decision> {
    let (key, len) = harness::key(tool, rid);
    Ok(Decision::unpack(h.decide_raw(&key, len, bits)?))
}

#[test]
fn test_safe_hints_ignored_unless_enabled() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"safe": {"safe_classification": true}}}))?;
    let fail = Signals::status(true, 503).pack();
    for bit in [
        hint::VALIDATION_ERROR,
        hint::INPUT_REQUIRED,
        hint::NOT_RETRYABLE,
    ] {
        let d = decide_bits(&mut h, "plain", &format!("{bit}"), fail | bit)?;
        ensure!(d.is_retry() && d.delay_ms == 200, "bit {bit}: {d:?}");
    }
    // The same facts on the tool that opted in.
    assert_non_retryable(decide_bits(
        &mut h,
        "safe",
        "a",
        fail | hint::VALIDATION_ERROR,
    )?)?;
    assert_non_retryable(decide_bits(
        &mut h,
        "safe",
        "b",
        fail | hint::NOT_RETRYABLE,
    )?)?;
    assert_success(decide_bits(
        &mut h,
        "safe",
        "c",
        fail | hint::INPUT_REQUIRED,
    )?)?;
    ensure!(decide_bits(&mut h, "safe", "d", fail)?.is_retry());
    ensure!(h.tool_policy("safe")?.safe_classification);
    ensure!(!h.global_policy()?.safe_classification);
    Ok(())
}

#[test]
fn test_safe_hints_clear_state_like_their_reasons() -> Result<()> {
    let mut h = no_jitter(json!({"safe_classification": true}))?;
    ensure!(h.decide("t", "r", Signals::ERROR)?.is_retry());
    assert_non_retryable(decide_bits(
        &mut h,
        "t",
        "r",
        Signals::ERROR.pack() | hint::NOT_RETRYABLE,
    )?)?;
    ensure!(h.state_count()? == 0);
    // A hint on a success changes nothing.
    assert_success(decide_bits(&mut h, "t", "r", hint::NOT_RETRYABLE)?)?;
    Ok(())
}

#[test]
fn test_safe_classification_in_the_replay() -> Result<()> {
    let steps = [
        (
            r#"{"isError": true, "structuredContent": {"code": -32602}}"#,
            reason::NON_RETRYABLE,
        ),
        (
            r#"{"isError": true, "structuredContent": {"error": {"code": -32602, "message": "bad"}}}"#,
            reason::NON_RETRYABLE,
        ),
        (
            r#"{"isError": true, "structuredContent": {"validation_error": true}}"#,
            reason::NON_RETRYABLE,
        ),
        (
            r#"{"isError": true, "structuredContent": {"retryable": false, "status_code": 503}}"#,
            reason::NON_RETRYABLE,
        ),
        (
            r#"{"isError": true, "retryable": false}"#,
            reason::NON_RETRYABLE,
        ),
        (
            r#"{"isError": true, "resultType": "input_required"}"#,
            reason::SUCCESS,
        ),
        (
            r#"{"isError": true, "structuredContent": {"retryable": true}}"#,
            reason::RETRY,
        ),
        (
            r#"{"isError": true, "structuredContent": {"code": -32603}}"#,
            reason::RETRY,
        ),
    ];
    for (i, (result, want)) in steps.iter().enumerate() {
        let sim = |safe: bool| -> Result<SimDecision> {
            let step = SimStep {
                tool: "t".into(),
                request_id: format!("r{i}"),
                result_json: (*result).into(),
                advance_ms: 0,
                call: None,
            };
            let config = json!({"jitter": false, "safe_classification": safe}).to_string();
            match h_simulate(&config, step)? {
                Ok(mut d) => Ok(d.remove(0)),
                Err(e) => bail!("{e:?}"),
            }
        };
        let on = sim(true)?;
        ensure!(reason_ordinal(on.reason) == *want, "{result}: {on:?}");
        let off = sim(false)?;
        ensure!(
            off.reason == DecisionReason::Retry,
            "{result} without opt-in: {off:?}"
        );
    }
    Ok(())
}

fn h_simulate(config: &str, step: SimStep) -> Result<Result<Vec<SimDecision>, Vec<ConfigError>>> {
    Harness::new()?.simulate(config, 1, &[step])
}

fn reason_ordinal(r: DecisionReason) -> u8 {
    match r {
        DecisionReason::Success => reason::SUCCESS,
        DecisionReason::Retry => reason::RETRY,
        DecisionReason::Exhausted => reason::EXHAUSTED,
        DecisionReason::NonRetryable => reason::NON_RETRYABLE,
        DecisionReason::Budget => reason::BUDGET,
        DecisionReason::Deadline => reason::DEADLINE,
        DecisionReason::RetryAfter => reason::RETRY_AFTER,
        DecisionReason::NonIdempotent => reason::NON_IDEMPOTENT,
    }
}
