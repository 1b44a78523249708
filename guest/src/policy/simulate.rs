//! Deterministic scenario replay: a fresh engine, a virtual clock starting at
//! 0, jitter from a given seed. Lets the wasmtime CLI (one fresh instance per
//! invocation) test multi-step behaviour in a single call.

use alloc::format;
use alloc::vec::Vec;

use super::classify::{hints_from_json, signals_from_json, Hints};
use super::config::ConfigError;
use super::engine::{Decision, Engine, Outcome};
use super::key::KeyParts;

/// One step: a tool result for `(tool, request_id)`, `advance_ms` after the
/// previous step.
#[derive(Debug, Clone)]
pub struct Step<'a> {
    /// Tool name.
    pub tool: &'a str,
    /// Request id.
    pub request_id: &'a str,
    /// The MCP tool result as JSON.
    pub result_json: &'a str,
    /// Virtual milliseconds elapsed since the previous step.
    pub advance_ms: u64,
    /// The gateway marked the call a timeout (signal bit 30).
    pub timeout: bool,
    /// The tool's annotations say it is read-only or idempotent (bit 31).
    pub idempotent: bool,
}

/// The stanza name a replay's policy is opened under.
const SCOPE: &str = "simulate";

/// Replay `steps` under the configuration `config_json`; a configuration
/// error, or a step whose `result_json` is not JSON (an error naming the
/// step), replays nothing.
pub fn simulate(
    config_json: &str,
    seed: u64,
    steps: &[Step<'_>],
) -> Result<Vec<Decision>, Vec<ConfigError>> {
    let mut engine = Engine::new((seed, !seed));
    let policy = engine.open_json(SCOPE, config_json, None, 0)?.id;
    let mut results = Vec::with_capacity(steps.len());
    let mut errors = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(step.result_json) {
            Ok(v) => results.push(v),
            Err(e) => errors.push(ConfigError {
                path: format!("steps[{i}].result-json"),
                message: format!("is not valid JSON: {e}"),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut now_ms = 0u64;
    let mut out = Vec::with_capacity(steps.len());
    for (step, result) in steps.iter().zip(&results) {
        now_ms = now_ms.saturating_add(step.advance_ms);
        let (signals, texts) = signals_from_json(result);
        match engine.decide(
            policy,
            &KeyParts::new(step.tool, step.request_id),
            signals,
            Hints {
                timeout: step.timeout,
                idempotent: step.idempotent,
                ..hints_from_json(result)
            },
            Some(&texts[..]),
            now_ms,
        ) {
            Outcome::Decided(d, _) => out.push(d),
            // Texts were supplied, so classification cannot ask for them; the
            // policy was opened above.
            Outcome::NeedText | Outcome::UnknownPolicy => unreachable_need_text(),
        }
    }
    Ok(out)
}

#[cold]
fn unreachable_need_text() -> ! {
    unreachable!("classify asked for texts that were supplied, or the policy went")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<&str, Vec<ConfigError>> {
        Ok(json)
    }

    /// Decisions compactly: `delay/failures/reason` per step.
    fn render(decisions: &[Decision]) -> String {
        let steps: Vec<String> = decisions
            .iter()
            .map(|d| format!("{}/{}/{:?}", d.delay_ms, d.failures, d.reason))
            .collect();
        steps.join(" ")
    }

    fn step<'a>(rid: &'a str, result_json: &'a str, advance_ms: u64) -> Step<'a> {
        Step {
            tool: "t",
            request_id: rid,
            result_json,
            advance_ms,
            timeout: false,
            idempotent: false,
        }
    }

    #[test]
    fn test_simulate_reads_the_call_facts_of_each_step() {
        let cfg = config(r#"{"jitter": false, "non_idempotent_retries": "throttled"}"#).unwrap();
        let fail = r#"{"isError": true}"#;
        let throttled = r#"{"isError": true, "structuredContent": {"status_code": 429}}"#;
        let steps = [
            step("a", fail, 0),
            Step {
                idempotent: true,
                ..step("b", fail, 0)
            },
            step("c", throttled, 0),
            Step {
                timeout: true,
                ..step("c", throttled, 0)
            },
        ];
        let got = simulate(cfg, 1, &steps).unwrap();
        assert_eq!(
            render(&got),
            "0/1/NonIdempotent 200/1/Retry 200/1/Retry 0/2/NonIdempotent"
        );
    }

    #[test]
    fn test_simulate_backoff_ttl_and_text() {
        let cfg = config(r#"{"jitter": false, "state_ttl_ms": 1000, "check_text_content": true}"#)
            .unwrap();
        let fail = r#"{"isError": true}"#;
        let text_fail = r#"{"content": [{"type": "text", "text": "{\"status_code\": 503}"}]}"#;
        let steps = [
            step("r", fail, 0),
            step("r", text_fail, 1000),
            step("r", fail, 1001),
            step("r", r#"{"content": []}"#, 0),
        ];
        let got = simulate(cfg, 1, &steps).unwrap();
        assert_eq!(
            render(&got),
            "200/1/Retry 400/2/Retry 200/1/Retry 0/0/Success"
        );
    }

    #[test]
    fn test_simulate_config_errors_replay_nothing() {
        let errs = simulate(r#"{"max_retries": -1}"#, 1, &[step("r", "{}", 0)]).unwrap_err();
        assert_eq!(errs[0].path, "max_retries");
        let errs = simulate("{", 1, &[]).unwrap_err();
        assert_eq!(errs[0].path, "");
    }

    #[test]
    fn test_simulate_bad_result_json_names_step() {
        let cfg = config("{}").unwrap();
        let errs = simulate(cfg, 1, &[step("r", "{}", 0), step("r", "nope", 0)]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "steps[1].result-json");
    }
}
