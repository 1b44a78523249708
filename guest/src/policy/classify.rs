//! Is a tool result a retriable failure?
//!
//! The rules are the native plugin's (0.3.11), in this order:
//! 1. `isError` is `True`: a failure, unless `structuredContent.status_code`
//!    is an integer that is not in `retry_on_status` (an explicit
//!    non-retriable status wins: "non-retryable", no retry).
//! 2. Otherwise, with structured content present: `structuredContent.isError`
//!    is `True`, or its `status_code` is in `retry_on_status`.
//! 3. Otherwise, only if the policy checks text content and there is no
//!    structured content: any text item whose text is a JSON object with
//!    `"isError": true` or an integer `status_code` in `retry_on_status`
//!    (read within bounds: see [`super::text_markers`]).
//!
//! With `safe_classification` on (opt-in; issue 6 §5), three hints the host
//! reads ([`Hints`]) refine that, before anything else: a result whose
//! `resultType` is `"input_required"` is not a failure; a failure that is an
//! MCP input-validation error, or that says `retryable: false`, is
//! non-retryable.
//!
//! The host reads the result into [`Signals`] (Python objects never cross the
//! boundary); [`signals_from_json`] does the same for a JSON document, for the
//! scenario replay.

use alloc::string::String;
use alloc::vec::Vec;

use serde_json::{Map, Value};

use super::config::{NonIdempotentRetries, Policy};
use super::text_markers::texts_mark_failure;
use crate::wire::RETRY_AFTER_MAX_MS;

/// What the host read from one tool result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    /// `result["isError"]` is the boolean `true`.
    pub is_error: bool,
    /// `result["structuredContent"]` exists and is not null.
    pub structured: bool,
    /// `structuredContent["isError"]` is the boolean `true`.
    pub structured_is_error: bool,
    /// `structuredContent["status_code"]`, when it is an integer that fits.
    pub status: Option<i32>,
}

/// Facts beyond the native plugin's that the host reads from a result and
/// its call (signal bits 4..31): the first three count only under
/// `safe_classification`, the last two only under `non_idempotent_retries`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hints {
    /// An MCP input-validation error: a JSON-RPC `-32602` code or an explicit
    /// validation marker in the structured content.
    pub validation_error: bool,
    /// `result["resultType"] == "input_required"`: the tool asks for input.
    pub input_required: bool,
    /// An explicit `retryable: false`.
    pub not_retryable: bool,
    /// A server delay hint in ms (`Retry-After` and friends, as the host
    /// read it, relative to now): the delay's floor under `honor_retry_after`,
    /// and in any case it makes the failure throttled ([`is_throttled`]).
    pub retry_after_ms: Option<u32>,
    /// The gateway marked the failure a timeout.
    pub timeout: bool,
    /// The tool's MCP annotations say it is read-only or idempotent.
    pub idempotent: bool,
}

impl Hints {
    /// No hint (what a host that predates them sends).
    pub const NONE: Self = Self {
        validation_error: false,
        input_required: false,
        not_retryable: false,
        retry_after_ms: None,
        timeout: false,
        idempotent: false,
    };
}

/// JSON-RPC "Invalid params", which MCP uses for tool input-validation errors.
pub const JSONRPC_INVALID_PARAMS: i64 = -32602;

/// The answer of [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// A retriable failure.
    Failure,
    /// Not a failure.
    NotFailure,
    /// A failure signal that is not retriable: `isError` with an integer
    /// status code outside `retry_on_status` (rule 1). Treated exactly like
    /// [`Classification::NotFailure`] except for the decision reason.
    NonRetryable,
    /// The answer depends on the text content, which was not supplied.
    NeedText,
}

/// [`classify`], refined by `hints` when the policy has `safe_classification`.
pub fn classify_with<T: AsRef<str>>(
    signals: Signals,
    hints: Hints,
    policy: &Policy,
    texts: Option<&[T]>,
) -> Classification {
    if !policy.safe_classification {
        return classify(signals, policy, texts);
    }
    if hints.input_required {
        return Classification::NotFailure;
    }
    match classify(signals, policy, texts) {
        Classification::Failure if hints.validation_error || hints.not_retryable => {
            Classification::NonRetryable
        }
        other => other,
    }
}

/// "Too Many Requests": the server refused the call for load.
pub const TOO_MANY_REQUESTS: i32 = 429;

/// Whether a failure is throttling rather than transient: status 429, or a
/// server delay hint (which the host reads only when some policy uses it).
/// A throttled failure takes the policy's throttle curve.
pub fn is_throttled(signals: Signals, hints: Hints) -> bool {
    signals.status == Some(TOO_MANY_REQUESTS) || hints.retry_after_ms.is_some()
}

/// "Service Unavailable": with a delay hint, the server refused the call
/// before running it.
pub const SERVICE_UNAVAILABLE: i32 = 503;

/// Whether the policy allows a retry of this retriable failure as far as
/// idempotency goes: always for an idempotent tool (the policy's
/// `idempotent`, else the call's annotations) and under `All`; under
/// `Throttled` only for a failure that says the call was refused before it
/// ran (429, or a 503 with a delay hint) and did not time out; never under
/// `None`.
pub fn may_repeat(signals: Signals, hints: Hints, policy: &Policy) -> bool {
    if policy.idempotent.unwrap_or(hints.idempotent) {
        return true;
    }
    match policy.non_idempotent_retries {
        NonIdempotentRetries::All => true,
        NonIdempotentRetries::Throttled => {
            !hints.timeout
                && match signals.status {
                    Some(TOO_MANY_REQUESTS) => true,
                    Some(SERVICE_UNAVAILABLE) => hints.retry_after_ms.is_some(),
                    _ => false,
                }
        }
        NonIdempotentRetries::None => false,
    }
}

/// Classify one result. `texts` are the result's text items (`None` = not read
/// yet); they are only consulted under rule 3.
pub fn classify<T: AsRef<str>>(
    signals: Signals,
    policy: &Policy,
    texts: Option<&[T]>,
) -> Classification {
    use Classification::*;
    if signals.is_error {
        return match signals.status {
            Some(code) if !policy.retries_status(code) => NonRetryable,
            _ => Failure,
        };
    }
    if signals.structured {
        let status_retriable = signals.status.is_some_and(|c| policy.retries_status(c));
        return if signals.structured_is_error || status_retriable {
            Failure
        } else {
            NotFailure
        };
    }
    if !policy.check_text_content {
        return NotFailure;
    }
    match texts {
        None => NeedText,
        Some(texts) => {
            if texts_mark_failure(texts, &policy.retry_on_status) {
                Failure
            } else {
                NotFailure
            }
        }
    }
}

/// Read [`Signals`] and the text items from a result given as JSON, with the
/// host's reading rules applied to the Python objects the gateway would parse
/// that JSON into: a `status_code` of `true`/`false` is a Python bool, which
/// the native plugin reads as the int 1/0.
pub fn signals_from_json(result: &Value) -> (Signals, Vec<&str>) {
    let Value::Object(map) = result else {
        // Not a mapping: never a failure.
        return (Signals::default(), Vec::new());
    };
    let sc = map.get("structuredContent").filter(|v| !v.is_null());
    let sc_map = sc.and_then(Value::as_object);
    let signals = Signals {
        is_error: is_true(map.get("isError")),
        structured: sc.is_some(),
        structured_is_error: is_true(sc_map.and_then(|m| m.get("isError"))),
        status: sc_map
            .and_then(|m| m.get("status_code"))
            .and_then(|v| match v {
                Value::Bool(b) => Some(i64::from(*b)),
                other => other.as_i64(),
            })
            .and_then(|n| i32::try_from(n).ok()),
    };
    let mut texts = Vec::new();
    if let Some(Value::Array(items)) = map.get("content") {
        for item in items {
            if item.get("type").and_then(Value::as_str) == Some("text") {
                if let Some(text) = item.get("text").and_then(Value::as_str) {
                    texts.push(text);
                }
            }
        }
    }
    (signals, texts)
}

/// Read [`Hints`] from a result given as JSON, as the host reads them from the
/// Python objects (see `wit/retry-engine.wit`, signal bits 4..6).
pub fn hints_from_json(result: &Value) -> Hints {
    let Value::Object(map) = result else {
        return Hints::NONE;
    };
    let sc = map.get("structuredContent").and_then(Value::as_object);
    let field = |key: &str| sc.and_then(|m| m.get(key));
    // A float (`-32602.0`) is not the code: `as_i64` reads integers only.
    let invalid_params =
        |v: Option<&Value>| v.and_then(Value::as_i64) == Some(JSONRPC_INVALID_PARAMS);
    Hints {
        validation_error: invalid_params(field("code"))
            || invalid_params(field("error").and_then(|e| e.get("code")))
            || is_true(field("validation_error"))
            || field("error_type").and_then(Value::as_str) == Some("validation_error"),
        input_required: map.get("resultType").and_then(Value::as_str) == Some("input_required"),
        not_retryable: is_false(field("retryable")) || is_false(map.get("retryable")),
        retry_after_ms: sc.and_then(retry_after_from_json),
        // Facts of the call, not of its result: the replay's steps carry them.
        timeout: false,
        idempotent: false,
    }
}

/// The relative delay hints of a structured content given as JSON, in the
/// host's order of precedence: `retry_after_ms`, `retry_after` (seconds),
/// then `headers` `retry-after-ms`, `Retry-After` (seconds), and
/// `X-RateLimit-Reset` (seconds; header names in any case). The replay has no
/// wall clock, so the absolute forms (HTTP-dates, epoch seconds) the host
/// converts are not read here.
fn retry_after_from_json(sc: &Map<String, Value>) -> Option<u32> {
    let ms = Value::as_u64;
    let secs = |v: &Value| {
        match v {
            Value::Number(_) => v.as_u64(),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().ok()
            }
            _ => None,
        }
        .map(|s| s.saturating_mul(1000))
    };
    // Of names equal but for case, the first in key order (the map is sorted).
    let header = |name: &str| {
        sc.get("headers")
            .and_then(Value::as_object)
            .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v)
    };
    let header_ms = |v: &Value| match v {
        Value::String(s) => s.parse::<u64>().ok(),
        other => ms(other),
    };
    sc.get("retry_after_ms")
        .and_then(ms)
        .or_else(|| sc.get("retry_after").and_then(secs))
        .or_else(|| header("retry-after-ms").and_then(header_ms))
        .or_else(|| header("retry-after").and_then(secs))
        .or_else(|| {
            header("x-ratelimit-reset")
                .and_then(secs)
                .filter(|&ms| ms < EPOCH_MS_FROM)
        })
        .map(|ms| {
            u32::try_from(ms)
                .unwrap_or(u32::MAX)
                .min(RETRY_AFTER_MAX_MS)
        })
}

/// Whether `v` is the boolean `true`.
fn is_true(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(true)
}

/// Whether `v` is the boolean `false`.
fn is_false(v: Option<&Value>) -> bool {
    v.and_then(Value::as_bool) == Some(false)
}

/// `X-RateLimit-Reset` values from this many ms on are epoch seconds, not a
/// delta (10^9 s is September 2001).
const EPOCH_MS_FROM: u64 = 1_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    fn sig(is_error: bool, structured: bool, sc_err: bool, status: Option<i32>) -> Signals {
        Signals {
            is_error,
            structured,
            structured_is_error: sc_err,
            status,
        }
    }

    const NO_TEXT: Option<&[&str]> = None;

    #[test]
    fn test_classify_table() {
        let p = Policy::default();
        let cases = [
            (sig(false, false, false, None), NotFailure),
            (sig(true, false, false, None), Failure),
            (sig(true, true, false, Some(503)), Failure),
            (sig(true, true, false, Some(404)), NonRetryable),
            (sig(true, true, true, Some(404)), NonRetryable),
            (sig(false, true, true, None), Failure),
            (sig(false, true, false, Some(429)), Failure),
            (sig(false, true, false, Some(200)), NotFailure),
            (sig(false, true, false, None), NotFailure),
        ];
        for (s, want) in cases {
            assert_eq!(classify(s, &p, NO_TEXT), want, "{s:?}");
        }
    }

    #[test]
    fn test_classify_text_only_without_structured_content() {
        let p = Policy {
            check_text_content: true,
            ..Policy::default()
        };
        assert_eq!(classify(Signals::default(), &p, NO_TEXT), NeedText);
        assert_eq!(
            classify(sig(false, true, false, None), &p, NO_TEXT),
            NotFailure
        );
        let failing: &[&str] = &["hello", r#" {"status_code": 503}"#];
        assert_eq!(classify(Signals::default(), &p, Some(failing)), Failure);
        let fine: &[&str] = &[r#"{"status_code": 404}"#, "[1]", r#"{"isError": 1}"#];
        assert_eq!(classify(Signals::default(), &p, Some(fine)), NotFailure);
    }

    #[test]
    fn test_classify_safe_hints_only_when_enabled() {
        let safe = Policy {
            safe_classification: true,
            ..Policy::default()
        };
        let fail = sig(true, true, false, Some(503));
        let validation = Hints {
            validation_error: true,
            ..Hints::NONE
        };
        let no_retry = Hints {
            not_retryable: true,
            ..Hints::NONE
        };
        let input = Hints {
            input_required: true,
            ..Hints::NONE
        };
        let p = Policy::default();
        for h in [validation, no_retry, input] {
            assert_eq!(classify_with(fail, h, &p, NO_TEXT), Failure, "{h:?} off");
        }
        assert_eq!(
            classify_with(fail, validation, &safe, NO_TEXT),
            NonRetryable
        );
        assert_eq!(classify_with(fail, no_retry, &safe, NO_TEXT), NonRetryable);
        assert_eq!(classify_with(fail, input, &safe, NO_TEXT), NotFailure);
        assert_eq!(classify_with(fail, Hints::NONE, &safe, NO_TEXT), Failure);
        // A hint on a result that is no failure changes nothing.
        let fine = sig(false, true, false, Some(200));
        assert_eq!(classify_with(fine, no_retry, &safe, NO_TEXT), NotFailure);
        // Text checks: input_required needs no text; the others wait for it.
        let texty = Policy {
            check_text_content: true,
            ..safe
        };
        let none = Signals::default();
        assert_eq!(classify_with(none, input, &texty, NO_TEXT), NotFailure);
        assert_eq!(classify_with(none, no_retry, &texty, NO_TEXT), NeedText);
        let failing: &[&str] = &[r#"{"isError": true}"#];
        assert_eq!(
            classify_with(none, no_retry, &texty, Some(failing)),
            NonRetryable
        );
    }

    #[test]
    fn test_classify_hints_from_json() {
        let h = |v: serde_json::Value| hints_from_json(&v);
        assert_eq!(h(serde_json::json!({"isError": true})), Hints::NONE);
        for v in [
            serde_json::json!({"structuredContent": {"code": -32602}}),
            serde_json::json!({"structuredContent": {"error": {"code": -32602, "message": "x"}}}),
            serde_json::json!({"structuredContent": {"validation_error": true}}),
            serde_json::json!({"structuredContent": {"error_type": "validation_error"}}),
        ] {
            assert!(h(v.clone()).validation_error, "{v}");
        }
        for v in [
            serde_json::json!({"structuredContent": {"code": -32602.0}}),
            serde_json::json!({"structuredContent": {"code": "-32602"}}),
            serde_json::json!({"structuredContent": {"validation_error": 1}}),
            serde_json::json!({"code": -32602}),
        ] {
            assert!(!h(v.clone()).validation_error, "{v}");
        }
        assert!(h(serde_json::json!({"resultType": "input_required"})).input_required);
        assert!(!h(serde_json::json!({"resultType": "complete"})).input_required);
        assert!(h(serde_json::json!({"structuredContent": {"retryable": false}})).not_retryable);
        assert!(h(serde_json::json!({"retryable": false})).not_retryable);
        assert!(!h(serde_json::json!({"retryable": 0})).not_retryable);
    }

    #[test]
    fn test_classify_retry_after_from_json() {
        let h = |sc: serde_json::Value| {
            hints_from_json(&serde_json::json!({"isError": true, "structuredContent": sc}))
                .retry_after_ms
        };
        assert_eq!(h(serde_json::json!({})), None);
        assert_eq!(
            h(serde_json::json!({"retry_after_ms": 1500, "retry_after": 9})),
            Some(1500)
        );
        assert_eq!(h(serde_json::json!({"retry_after": 2})), Some(2000));
        assert_eq!(h(serde_json::json!({"retry_after": "3"})), Some(3000));
        assert_eq!(h(serde_json::json!({"retry_after": "-3"})), None);
        assert_eq!(
            h(serde_json::json!({"headers": {"Retry-After": "4"}})),
            Some(4000)
        );
        assert_eq!(
            h(serde_json::json!({"headers": {"RETRY-AFTER-MS": "250"}})),
            Some(250)
        );
        assert_eq!(
            h(serde_json::json!({"headers": {"x-ratelimit-reset": 7}})),
            Some(7000)
        );
        assert_eq!(
            h(serde_json::json!({"headers": {"X-RateLimit-Reset": 1_700_000_000}})),
            None,
            "epoch seconds need a wall clock"
        );
        assert_eq!(
            h(serde_json::json!({"retry_after": 1_000_000})),
            Some(RETRY_AFTER_MAX_MS)
        );
    }

    #[test]
    fn test_classify_signals_from_json() {
        let v: Value = serde_json::from_str(
            r#"{"isError": true, "structuredContent": {"status_code": 503, "isError": 1},
                "content": [{"type": "text", "text": "a"}, {"type": "image", "text": "b"},
                            {"type": "text", "text": 5}]}"#,
        )
        .unwrap();
        let (s, texts) = signals_from_json(&v);
        assert_eq!(s, sig(true, true, false, Some(503)));
        assert_eq!(texts, vec!["a"]);
        let (s, _) =
            signals_from_json(&serde_json::json!({"structuredContent": {"status_code": true}}));
        assert_eq!(s.status, Some(1), "a Python bool reads as an int");
        let (s, _) = signals_from_json(&serde_json::json!({"structuredContent": null}));
        assert_eq!(s, Signals::default());
        let (s, _) = signals_from_json(&serde_json::json!([1, 2]));
        assert_eq!(s, Signals::default());
    }
}
