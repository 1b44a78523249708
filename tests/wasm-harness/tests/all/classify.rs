//! Failure classification from `signals` and from text content (issue 2 §3),
//! and the `need-text` hand-off between `decide` and `decide-text`.

use crate::support::*;

/// Signals as the host packs them for a result with structured content.
fn structured(is_error: bool, sc_is_error: bool, status: Option<i32>) -> Signals {
    Signals {
        is_error,
        structured: true,
        structured_is_error: sc_is_error,
        status,
    }
}

/// Whether `signals` counts as a failure under the default retry_on_status.
fn is_failure(h: &mut Harness, signals: Signals) -> Result<bool> {
    let d = h.decide("tool", "req", signals)?;
    ensure!(
        !d.need_text,
        "{signals:?}: need-text without text checking: {d:?}"
    );
    ensure!(d.reserved == 0, "{d:?}");
    // Clear the key so every case starts fresh.
    h.decide("tool", "req", Signals::OK)?;
    match d.reason {
        reason::RETRY => {
            ensure!(
                d.delay_ms == 200 && d.retry_count == 1,
                "{signals:?}: {d:?}"
            );
            Ok(true)
        }
        reason::SUCCESS | reason::NON_RETRYABLE => {
            ensure!(d.delay_ms == 0 && d.retry_count == 0, "{signals:?}: {d:?}");
            // Not a retry: non-retryable exactly when `isError` carries a
            // status (necessarily outside retry_on_status here; issue 6 §7).
            let want = if signals.is_error && signals.status.is_some() {
                reason::NON_RETRYABLE
            } else {
                reason::SUCCESS
            };
            ensure!(d.reason == want, "{signals:?}: reason {d:?}");
            Ok(false)
        }
        _ => bail!("{signals:?}: unexpected first decision {d:?}"),
    }
}

#[test]
fn test_classify_signal_table() -> Result<()> {
    let mut h = no_jitter(json!({}))?;
    let cases: Vec<(&str, Signals, bool)> = vec![
        ("nothing set", Signals::OK, false),
        ("isError, no structured content", Signals::ERROR, true),
        (
            "isError, status 503",
            structured(true, false, Some(503)),
            true,
        ),
        (
            "isError, status 429",
            structured(true, false, Some(429)),
            true,
        ),
        (
            "isError, status 404 not retriable",
            structured(true, false, Some(404)),
            false,
        ),
        (
            "isError, status 200 not retriable",
            structured(true, false, Some(200)),
            false,
        ),
        (
            "isError, status -503",
            structured(true, false, Some(-503)),
            false,
        ),
        (
            "isError, status 0 (Python False)",
            structured(true, false, Some(0)),
            false,
        ),
        (
            "isError, status 1 (Python True)",
            structured(true, false, Some(1)),
            false,
        ),
        (
            "isError, structured without status",
            structured(true, false, None),
            true,
        ),
        (
            "isError, sc.isError, status 404",
            structured(true, true, Some(404)),
            false,
        ),
        (
            "isError, sc.isError, no status",
            structured(true, true, None),
            true,
        ),
        ("sc.isError only", structured(false, true, None), true),
        (
            "sc.isError with status 404",
            structured(false, true, Some(404)),
            true,
        ),
        (
            "status 503 alone",
            structured(false, false, Some(503)),
            true,
        ),
        (
            "status 504 alone",
            structured(false, false, Some(504)),
            true,
        ),
        (
            "status 404 alone",
            structured(false, false, Some(404)),
            false,
        ),
        (
            "status i32::MIN",
            structured(false, false, Some(i32::MIN)),
            false,
        ),
        (
            "status i32::MAX",
            structured(false, false, Some(i32::MAX)),
            false,
        ),
        (
            "structured content, nothing in it",
            structured(false, false, None),
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, signals, expected) in cases {
        let got = is_failure(&mut h, signals)?;
        if got != expected {
            wrong.push(format!(
                "{name} ({signals:?} = {:#x}): failure={got}, expected {expected}",
                signals.pack()
            ));
        }
    }
    ensure!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    Ok(())
}

#[test]
fn test_classify_status_uses_the_tools_retry_on_status() -> Result<()> {
    let mut h = no_jitter(json!({
        "retry_on_status": [500],
        "tool_overrides": {"x": {"retry_on_status": [404]}, "none": {"retry_on_status": []}}
    }))?;
    let s404 = structured(false, false, Some(404));
    let s500 = structured(false, false, Some(500));
    ensure!(h.decide("x", "r", s404)?.is_retry());
    ensure!(h.decide("x", "q", s500)?.is_success());
    ensure!(h.decide("y", "r", s404)?.is_success());
    ensure!(h.decide("y", "q", s500)?.is_retry());
    // An empty list: isError still fails unless a status says otherwise.
    ensure!(h.decide("none", "a", s500)?.is_success());
    assert_non_retryable(h.decide("none", "b", structured(true, false, Some(500)))?)?;
    ensure!(h.decide("none", "c", Signals::ERROR)?.is_retry());
    Ok(())
}

#[test]
fn test_classify_negative_status_round_trips() -> Result<()> {
    // Bits 32..63 are an s32: -1 must not read as 4294967295 or similar.
    let mut h = no_jitter(json!({"retry_on_status": [-1, -2147483648]}))?;
    ensure!(h
        .decide("t", "a", structured(false, false, Some(-1)))?
        .is_retry());
    ensure!(h
        .decide("t", "b", structured(false, false, Some(i32::MIN)))?
        .is_retry());
    ensure!(h
        .decide("t", "c", structured(false, false, Some(1)))?
        .is_success());
    Ok(())
}

#[test]
fn test_classify_status_bits_ignored_without_flag() -> Result<()> {
    // Bits 32..63 mean nothing unless bit 3 says a status code is present.
    let mut h = no_jitter(json!({}))?;
    let raw = Signals::ERROR.pack() | 1 << 1 | u64::from(404u32) << 32;
    let (key, parts) = harness::key("t", "r");
    ensure!(Decision::unpack(h.decide_raw(&key, parts, raw)?).is_retry());
    let raw = 1 << 1 | u64::from(503u32) << 32;
    let (key, parts) = harness::key("t", "q");
    ensure!(Decision::unpack(h.decide_raw(&key, parts, raw)?).is_success());
    Ok(())
}

#[test]
fn test_need_text_when_tool_checks_text_and_no_structured_content() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    fail_n(&mut h, "txt", "r", 1)?;
    let d = h.decide("txt", "r", Signals::OK)?;
    ensure!(
        d.raw == Decision::NEED_TEXT,
        "expected need-text alone, got {d:?}"
    );
    // Nothing changed: the entry is still there and the next failure continues it.
    ensure!(h.state_count()? == 1);
    assert_retry(h.decide("txt", "r", Signals::ERROR)?, 400, 2)?;
    // A need-text on a fresh key creates nothing either.
    ensure!(h.decide("txt", "fresh", Signals::OK)?.need_text);
    ensure!(h.state_count()? == 1);
    Ok(())
}

#[test]
fn test_no_need_text_with_structured_content_or_without_checking() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    assert_success(h.decide("txt", "r", structured(false, false, None))?)?;
    assert_success(h.decide("txt", "r", structured(false, false, Some(404)))?)?;
    assert_success(h.decide("plain", "r", Signals::OK)?)?;
    let mut h = no_jitter(json!({"check_text_content": true}))?;
    ensure!(h.decide("anything", "r", Signals::OK)?.need_text);
    assert_success(h.decide("anything", "r", structured(false, false, None))?)?;
    Ok(())
}

#[test]
fn test_no_need_text_when_is_error_already_decides() -> Result<()> {
    // isError True decides the result without looking at text content.
    let mut h = no_jitter(json!({"check_text_content": true}))?;
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 200, 1)
}

/// `decide-text` on a text-checking tool: is `texts` a failure?
fn text_failure(h: &mut Harness, rid: &str, texts: &[&str]) -> Result<bool> {
    let d = h.decide_text("txt", rid, Signals::OK, texts)?;
    ensure!(!d.need_text && d.reserved == 0, "{texts:?}: {d:?}");
    match d.reason {
        reason::RETRY => Ok(true),
        reason::SUCCESS => Ok(false),
        _ => bail!("{texts:?}: {d:?}"),
    }
}

#[test]
fn test_decide_text_json_table() -> Result<()> {
    let mut h = no_jitter(json!({
        "retry_on_status": [429, 503, 1],
        "tool_overrides": {"txt": {"check_text_content": true}}
    }))?;
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let nested_error = format!(
        "{{\"isError\": true, \"x\": {}{}}}",
        "[".repeat(100),
        "]".repeat(100)
    );
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        ("isError true", vec![r#"{"isError": true}"#], true),
        ("status 503", vec![r#"{"status_code": 503}"#], true),
        (
            "status 429 with other keys",
            vec![r#"{"ok": 1, "status_code": 429, "detail": "slow down"}"#],
            true,
        ),
        (
            "isError with a non-retriable status",
            vec![r#"{"isError": true, "status_code": 404}"#],
            true,
        ),
        (
            "whitespace around the object",
            vec!["  \n{\"isError\": true}\t "],
            true,
        ),
        ("status 404", vec![r#"{"status_code": 404}"#], false),
        ("status as float", vec![r#"{"status_code": 503.0}"#], false),
        (
            "status as exponent",
            vec![r#"{"status_code": 5.03e2}"#],
            false,
        ),
        ("status as string", vec![r#"{"status_code": "503"}"#], false),
        // The native plugin compares `as_i64() as i32`: 2^32 + 503 matches 503.
        (
            "status past s32 truncates like the native plugin",
            vec![r#"{"status_code": 4294967799}"#],
            true,
        ),
        (
            "status past u64",
            vec![r#"{"status_code": 18446744073709552119}"#],
            false,
        ),
        // Text is parsed by serde_json in the native plugin: a JSON bool is
        // no integer there (unlike a Python bool in structuredContent).
        (
            "status true in text is no status",
            vec![r#"{"status_code": true}"#],
            false,
        ),
        (
            "status false in text is no status",
            vec![r#"{"status_code": false}"#],
            false,
        ),
        (
            "NaN is not JSON to serde_json",
            vec![r#"{"isError": true, "ratio": NaN}"#],
            false,
        ),
        ("isError 1", vec![r#"{"isError": 1}"#], false),
        ("isError string", vec![r#"{"isError": "true"}"#], false),
        ("isError false", vec![r#"{"isError": false}"#], false),
        ("isError null", vec![r#"{"isError": null}"#], false),
        (
            "key case matters",
            vec![r#"{"iserror": true, "Status_Code": 503}"#],
            false,
        ),
        (
            "duplicate key, last wins",
            vec![r#"{"isError": true, "isError": false}"#],
            false,
        ),
        (
            "duplicate key, last wins (error)",
            vec![r#"{"isError": false, "isError": true}"#],
            true,
        ),
        ("not JSON", vec!["upstream said 503"], false),
        ("truncated JSON", vec![r#"{"isError": true"#], false),
        ("trailing garbage", vec![r#"{"isError": true} x"#], false),
        (
            "JSON array of errors",
            vec![r#"[{"isError": true}]"#],
            false,
        ),
        ("JSON string", vec![r#""{\"isError\": true}""#], false),
        ("JSON number", vec!["503"], false),
        (
            "nested isError",
            vec![r#"{"error": {"isError": true, "status_code": 503}}"#],
            false,
        ),
        ("deep array", vec![&deep_array], false),
        ("deep object", vec![&deep_object], false),
        ("isError beside a nested array", vec![&nested_error], true),
        ("empty text", vec![""], false),
        ("no texts", vec![], false),
        (
            "second text decides",
            vec!["hello", r#"{"status_code": 503}"#],
            true,
        ),
        (
            "errors anywhere in the list",
            vec![r#"{"a": 1}"#, "x", r#"{"isError": true}"#, "y"],
            true,
        ),
        (
            "unicode escapes in keys",
            vec![r#"{"\u0069sError": true}"#],
            true,
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (name, texts, expected)) in cases.into_iter().enumerate() {
        let got = text_failure(&mut h, &format!("r{i}"), &texts)?;
        if got != expected {
            wrong.push(format!("{name}: failure={got}, expected {expected}"));
        }
    }
    ensure!(
        wrong.is_empty(),
        "misclassified texts:\n{}",
        wrong.join("\n")
    );
    Ok(())
}

#[test]
fn test_decide_text_counts_consecutive_failures() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    let err = [r#"{"isError": true}"#];
    assert_retry(h.decide_text("txt", "r", Signals::OK, &err)?, 200, 1)?;
    assert_retry(h.decide_text("txt", "r", Signals::OK, &err)?, 400, 2)?;
    assert_exhausted(h.decide_text("txt", "r", Signals::OK, &err)?)?;
    assert_retry(h.decide_text("txt", "r", Signals::OK, &err)?, 200, 1)?;
    assert_success(h.decide_text("txt", "r", Signals::OK, &["fine"])?)?;
    ensure!(h.state_count()? == 0);
    Ok(())
}

#[test]
fn test_decide_text_ignores_texts_when_not_applicable() -> Result<()> {
    let mut h = no_jitter(json!({"tool_overrides": {"txt": {"check_text_content": true}}}))?;
    let err = [r#"{"isError": true}"#];
    // Structured content present: text is not consulted.
    assert_success(h.decide_text("txt", "a", structured(false, false, None), &err)?)?;
    assert_success(h.decide_text("txt", "b", structured(false, false, Some(404)), &err)?)?;
    // The tool does not check text content.
    assert_success(h.decide_text("plain", "c", Signals::OK, &err)?)?;
    // isError decides on its own.
    assert_retry(
        h.decide_text("txt", "d", Signals::ERROR, &["fine"])?,
        200,
        1,
    )?;
    assert_non_retryable(h.decide_text("txt", "e", structured(true, false, Some(404)), &err)?)?;
    Ok(())
}
