//! `simulate`: a deterministic scenario replay on its own engine and virtual
//! clock, independent of the instance's live state.

use crate::support::*;
use harness::{SimDecision, SimStep};

const FAIL: &str = r#"{"isError": true}"#;
const OK: &str = r#"{"content": [{"type": "text", "text": "fine"}], "isError": false}"#;

fn step(rid: &str, result_json: &str, advance_ms: u64) -> SimStep {
    SimStep {
        tool: "t".into(),
        request_id: rid.into(),
        result_json: result_json.into(),
        advance_ms,
        call: None,
    }
}

fn retry(delay_ms: u64, retry_count: u32) -> SimDecision {
    SimDecision {
        delay_ms,
        retry_count,
        reason: DecisionReason::Retry,
    }
}

fn success() -> SimDecision {
    SimDecision {
        delay_ms: 0,
        retry_count: 0,
        reason: DecisionReason::Success,
    }
}

fn non_retryable() -> SimDecision {
    SimDecision {
        delay_ms: 0,
        retry_count: 0,
        reason: DecisionReason::NonRetryable,
    }
}

fn exhausted(retry_count: u32) -> SimDecision {
    SimDecision {
        delay_ms: 0,
        retry_count,
        reason: DecisionReason::Exhausted,
    }
}

fn replay(config: serde_json::Value, seed: u64, steps: &[SimStep]) -> Result<Vec<SimDecision>> {
    let mut h = Harness::new()?;
    match h.simulate(&config.to_string(), seed, steps)? {
        Ok(decisions) => {
            ensure!(
                decisions.len() == steps.len(),
                "{} steps, {} decisions",
                steps.len(),
                decisions.len()
            );
            Ok(decisions)
        }
        Err(errors) => bail!("simulate rejected {config}: {errors:?}"),
    }
}

#[test]
fn test_simulate_backoff_exhaustion_and_fresh_budget() -> Result<()> {
    let config = json!({"jitter": false, "max_retries": 2, "backoff_base_ms": 100});
    let steps = [
        step("r", FAIL, 0),
        step("r", FAIL, 0),
        step("r", FAIL, 0),
        step("r", FAIL, 0),
        step("r", OK, 0),
        step("r", FAIL, 0),
        step("q", FAIL, 0),
    ];
    let got = replay(config, 1, &steps)?;
    let expected = vec![
        retry(100, 1),
        retry(200, 2),
        exhausted(3),
        retry(100, 1),
        success(),
        retry(100, 1),
        retry(100, 1),
    ];
    ensure!(got == expected, "got {got:?}");
    Ok(())
}

#[test]
fn test_simulate_advance_ms_drives_ttl() -> Result<()> {
    let config =
        json!({"jitter": false, "backoff_base_ms": 100, "max_retries": 5, "state_ttl_ms": 1000});
    let steps = [
        step("r", FAIL, 5),
        step("r", FAIL, 999),
        step("r", FAIL, 1000),
        step("r", FAIL, 1001),
        step("r", FAIL, 0),
    ];
    let got = replay(config, 1, &steps)?;
    let expected = vec![
        retry(100, 1),
        retry(200, 2),
        retry(400, 3),
        retry(100, 1),
        retry(200, 2),
    ];
    ensure!(got == expected, "got {got:?}");
    Ok(())
}

#[test]
fn test_simulate_classifies_result_json() -> Result<()> {
    let config = json!({
        "jitter": false, "retry_on_status": [503, 1],
        "tool_overrides": {"txt": {"check_text_content": true}}
    });
    let cases: Vec<(&str, &str, bool)> = vec![
        ("t", r#"{"isError": true}"#, true),
        ("t", r#"{"isError": 1}"#, false),
        ("t", r#"{"isError": "true"}"#, false),
        (
            "t",
            r#"{"isError": true, "structuredContent": {"status_code": 404}}"#,
            false,
        ),
        (
            "t",
            r#"{"isError": true, "structuredContent": {"status_code": "404"}}"#,
            true,
        ),
        ("t", r#"{"isError": true, "structuredContent": null}"#, true),
        ("t", r#"{"structuredContent": {"status_code": 503}}"#, true),
        (
            "t",
            r#"{"structuredContent": {"status_code": 503.0}}"#,
            false,
        ),
        (
            "t",
            r#"{"structuredContent": {"status_code": 4294967799}}"#,
            false,
        ),
        ("t", r#"{"structuredContent": {"isError": true}}"#, true),
        ("t", r#"{"structuredContent": "not a mapping"}"#, false),
        ("t", r#"[{"isError": true}]"#, false),
        ("t", r#""isError""#, false),
        ("t", "null", false),
        (
            "t",
            r#"{"content": [{"type": "text", "text": "{\"isError\": true}"}]}"#,
            false,
        ),
        (
            "txt",
            r#"{"content": [{"type": "text", "text": "{\"isError\": true}"}]}"#,
            true,
        ),
        (
            "txt",
            r#"{"content": [{"type": "text", "text": "{\"status_code\": 503}"}]}"#,
            true,
        ),
        (
            "txt",
            r#"{"content": [{"type": "image", "text": "{\"isError\": true}"}]}"#,
            false,
        ),
        (
            "txt",
            r#"{"content": [{"type": "text", "text": "{\"isError\": true}"}], "structuredContent": {}}"#,
            false,
        ),
        (
            "txt",
            r#"{"content": [{"type": "text", "text": "{\"isError\": true}"}], "structuredContent": null}"#,
            true,
        ),
        ("txt", r#"{"content": "{\"isError\": true}"}"#, false),
        (
            "txt",
            r#"{"content": [{"type": "text"}, {"type": "text", "text": 5}, {"type": "text", "text": "{\"isError\": true}"}]}"#,
            true,
        ),
    ];
    let steps: Vec<SimStep> = cases
        .iter()
        .enumerate()
        .map(|(i, (tool, json, _))| SimStep {
            tool: tool.to_string(),
            request_id: format!("r{i}"),
            result_json: json.to_string(),
            advance_ms: 0,
            call: None,
        })
        .collect();
    let got = replay(config, 1, &steps)?;
    let mut wrong = Vec::new();
    for ((tool, json, failure), d) in cases.iter().zip(&got) {
        let is_failure = d.reason == DecisionReason::Retry;
        if is_failure != *failure {
            wrong.push(format!("{tool} {json}: {d:?}, expected failure={failure}"));
        }
    }
    ensure!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn test_simulate_status_code_bool_reads_as_int() -> Result<()> {
    // A result's JSON reaches the native plugin as Python objects: `true`
    // becomes `True`, which `extract::<i32>()` reads as 1 (issue 2 §3: "Python's
    // bool is an int subclass and reads as 0/1"). The replay must read the same
    // JSON the same way, or it disagrees with the production host's signals.
    let config = json!({"jitter": false, "retry_on_status": [1, 503]});
    let steps = [
        step("a", r#"{"structuredContent": {"status_code": true}}"#, 0),
        step("b", r#"{"structuredContent": {"status_code": false}}"#, 0),
        step(
            "c",
            r#"{"isError": true, "structuredContent": {"status_code": false}}"#,
            0,
        ),
    ];
    let got = replay(config, 1, &steps)?;
    ensure!(
        got == [retry(200, 1), success(), non_retryable()],
        "status_code true/false must read as 1/0: {got:?}"
    );
    Ok(())
}

#[test]
fn test_simulate_bad_config_returns_the_errors() -> Result<()> {
    let mut h = Harness::new()?;
    let config = json!({"max_retries": 11, "tool_overrides": {"search": {"max_backoff_ms": 1}}});
    let Err(errors) = h.simulate(&config.to_string(), 1, &[step("r", FAIL, 0)])? else {
        bail!("simulate accepted an invalid config");
    };
    ensure!(
        paths(&errors) == ["max_retries", "tool_overrides.search.max_backoff_ms"],
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn test_simulate_bad_result_json_names_the_step() -> Result<()> {
    let mut h = Harness::new()?;
    let Err(errors) = h.simulate("{}", 1, &[step("r", FAIL, 0), step("r", "nope", 0)])? else {
        bail!("simulate accepted a step whose result is not JSON");
    };
    ensure!(paths(&errors) == ["steps[1].result-json"], "{errors:?}");
    Ok(())
}

#[test]
fn test_simulate_empty_scenario() -> Result<()> {
    ensure!(replay(json!({}), 0, &[])?.is_empty());
    Ok(())
}

#[test]
fn test_simulate_independent_of_live_state() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 3, "backoff_base_ms": 100}))?;
    fail_n(&mut h, "t", "r", 2)?;
    let policy = h.global_policy()?;
    let config = json!({"jitter": false, "backoff_base_ms": 7, "max_retries": 9});
    let got = h.simulate(
        &config.to_string(),
        1,
        &[step("r", FAIL, 0), step("x", FAIL, 0)],
    )?;
    ensure!(got == Ok(vec![retry(7, 1), retry(7, 1)]), "{got:?}");
    // The live instance: same config, same state, same clock.
    ensure!(h.global_policy()? == policy);
    ensure!(h.state_count()? == 1);
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 400, 3)?;
    // A failing simulate changes nothing either.
    h.simulate("[]", 1, &[])?
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted []"))?;
    ensure!(h.global_policy()? == policy);
    Ok(())
}

#[test]
fn test_simulate_jitter_reproducible_per_seed() -> Result<()> {
    let config = json!({"max_retries": 10, "backoff_base_ms": 1000, "max_backoff_ms": 100000});
    let steps: Vec<SimStep> = (0..200)
        .map(|i| step(&format!("r{}", i / 10), FAIL, 1))
        .collect();
    let a = replay(config.clone(), 42, &steps)?;
    ensure!(
        a == replay(config.clone(), 42, &steps)?,
        "same seed, different replay"
    );
    ensure!(
        a != replay(config.clone(), 43, &steps)?,
        "different seed, same replay"
    );
    for (i, d) in a.iter().enumerate() {
        let n = (i % 10) as u32 + 1;
        let ceiling = (1000u64 << (n - 1)).min(100_000);
        ensure!(
            d.reason == DecisionReason::Retry
                && d.retry_count == n
                && (1..=ceiling).contains(&d.delay_ms),
            "step {i}: {d:?}"
        );
    }
    Ok(())
}
