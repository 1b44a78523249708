//! Non-idempotent tools (issue 15 §1) through the built component: under
//! `non_idempotent_retries` `throttled` a tool that is not idempotent (signal
//! bit 31 clear, no `idempotent` key) is retried only after a 429 or a 503
//! with a delay hint, never after a timeout (bit 30); under `none` never;
//! `idempotent` per tool overrides the annotations; a refusal clears the key
//! and reports `non-idempotent`, on the virtual clock as everything else.

use crate::support::*;
use harness::{hint, SimStep};

/// One result of `tool`/`rid` with `signals` bits.
fn decide(h: &mut Harness, tool: &str, rid: &str, bits: u64) -> Result<Decision> {
    let (key, len) = harness::key(tool, rid);
    Ok(Decision::unpack(h.decide_raw(&key, len, bits)?))
}

fn error() -> u64 {
    Signals::ERROR.pack()
}

fn status(code: i32) -> u64 {
    Signals::status(true, code).pack()
}

#[test]
fn test_throttled_retries_only_refusals_of_a_non_idempotent_tool() -> Result<()> {
    let mut h = no_jitter(json!({"non_idempotent_retries": "throttled"}))?;
    // (signals, retried)
    let cases = [
        (error(), false),
        (error() | hint::TIMEOUT, false),
        (status(500), false),
        (status(503), false),
        (status(503) | hint::retry_after(1000), true),
        (status(429), true),
        (status(429) | hint::TIMEOUT, false),
        (error() | hint::TIMEOUT | hint::IDEMPOTENT, true),
        (status(500) | hint::IDEMPOTENT, true),
    ];
    for (i, (bits, retried)) in cases.into_iter().enumerate() {
        let rid = format!("r{i}");
        let d = decide(&mut h, "t", &rid, bits)?;
        if retried {
            ensure!(d.is_retry() && d.delay_ms == 200, "case {i}: {d:?}");
        } else {
            ensure!(
                d.reason == reason::NON_IDEMPOTENT && d.delay_ms == 0 && d.retry_count == 1,
                "case {i}: {d:?}"
            );
        }
    }
    // Refusals hold no state; the four retries do.
    ensure!(h.state_count()? == 4);
    Ok(())
}

#[test]
fn test_none_never_retries_a_non_idempotent_tool_and_all_always_does() -> Result<()> {
    let mut none = no_jitter(json!({"non_idempotent_retries": "none"}))?;
    let mut all = no_jitter(json!({}))?;
    for (i, bits) in [
        error(),
        status(429),
        status(503) | hint::retry_after(5),
        error() | hint::TIMEOUT,
    ]
    .into_iter()
    .enumerate()
    {
        let rid = i.to_string();
        let d = decide(&mut none, "t", &rid, bits)?;
        ensure!(d.reason == reason::NON_IDEMPOTENT, "none, case {i}: {d:?}");
        ensure!(decide(&mut none, "t", &rid, bits | hint::IDEMPOTENT)?.is_retry());
        // The default ignores both facts, as the native plugin knows neither.
        ensure!(
            decide(&mut all, "t", &rid, bits)?.is_retry(),
            "all, case {i}"
        );
    }
    Ok(())
}

#[test]
fn test_configured_idempotent_overrides_the_annotations_per_tool() -> Result<()> {
    let mut h = no_jitter(json!({
        "non_idempotent_retries": "none",
        "tool_overrides": {"get": {"idempotent": true}, "send": {"idempotent": false}}
    }))?;
    ensure!(decide(&mut h, "get", "r", error() | hint::TIMEOUT)?.is_retry());
    let d = decide(&mut h, "send", "r", error() | hint::IDEMPOTENT)?;
    ensure!(d.reason == reason::NON_IDEMPOTENT, "{d:?}");
    ensure!(decide(&mut h, "other", "r", error() | hint::IDEMPOTENT)?.is_retry());
    let policy = h.tool_policy("send")?;
    ensure!(policy.non_idempotent_retries == NonIdempotentRetries::None);
    ensure!(policy.idempotent == Some(false));
    ensure!(h.tool_policy("other")?.idempotent.is_none());
    Ok(())
}

#[test]
fn test_a_refusal_mid_sequence_clears_the_key_and_the_next_failure_starts_afresh() -> Result<()> {
    let mut h = no_jitter(json!({"non_idempotent_retries": "throttled", "max_retries": 3}))?;
    ensure!(decide(&mut h, "t", "r", status(429))?.delay_ms == 200);
    h.clock.advance_ms(200);
    ensure!(decide(&mut h, "t", "r", status(429))?.delay_ms == 400);
    h.clock.advance_ms(400);
    let d = decide(&mut h, "t", "r", error() | hint::TIMEOUT)?;
    ensure!(
        (d.delay_ms, d.retry_count, d.reason) == (0, 3, reason::NON_IDEMPOTENT),
        "{d:?}"
    );
    ensure!(h.state_count()? == 0);
    h.clock.advance_ms(1);
    ensure!(decide(&mut h, "t", "r", status(429))?.delay_ms == 200);
    Ok(())
}

#[test]
fn test_the_replay_reads_call_facts_from_each_step() -> Result<()> {
    let step = |rid: &str, call| SimStep {
        tool: "t".into(),
        request_id: rid.into(),
        result_json: r#"{"isError": true}"#.into(),
        advance_ms: 0,
        call,
    };
    let out = Harness::new()?.simulate(
        r#"{"jitter": false, "non_idempotent_retries": "throttled"}"#,
        1,
        &[
            step("a", None),
            step("b", Some(CallFacts::IDEMPOTENT | CallFacts::TIMEOUT)),
            step("c", Some(CallFacts::TIMEOUT)),
        ],
    )?;
    let Ok(out) = out else { bail!("{out:?}") };
    let reasons: Vec<DecisionReason> = out.iter().map(|d| d.reason).collect();
    ensure!(
        reasons
            == [
                DecisionReason::NonIdempotent,
                DecisionReason::Retry,
                DecisionReason::NonIdempotent
            ],
        "{reasons:?}"
    );
    Ok(())
}
