//! `open-policy` (through `Harness::configure`) and `tool-policy`: defaults,
//! validation with exact key paths, a new configuration as a new policy, and
//! override merging (issue 2 §2–§3).

use crate::support::*;

#[test]
fn test_config_fresh_instance_holds_no_policy_and_defaults_open() -> Result<()> {
    // Since 0.5 a fresh instance has no configuration of its own: a decision
    // needs a policy opened first.
    let mut h = Harness::new()?;
    ensure!(h.policy_count()? == 0);
    ensure!(h.decide("t", "r", Signals::ERROR)?.raw == Decision::UNKNOWN_POLICY);
    for doc in ["null", "{}"] {
        let opened = h.configure_ok(doc)?;
        ensure!(opened.global == default_policy(), "{doc}: {opened:?}");
        ensure!(opened.warnings.is_empty() && opened.key_scope == KeyScope::Request);
        ensure!(h.tool_policy("any-tool")? == default_policy());
    }
    Ok(())
}

#[test]
fn test_config_a_new_configuration_is_a_new_policy() -> Result<()> {
    // Opening `{}` after a custom configuration gives a policy with the
    // defaults; the custom one is still held, unchanged, under its own id.
    let mut h = configured(json!({
        "max_retries": 7, "backoff_base_ms": 10, "max_backoff_ms": 20,
        "retry_on_status": [418], "jitter": false, "check_text_content": true,
        "tool_overrides": {"search": {"max_retries": 1}}
    }))?;
    let custom = h.policy();
    h.configure_ok("{}")?;
    ensure!(h.policy() != custom);
    ensure!(h.global_policy()? == default_policy());
    ensure!(h.tool_policy("search")? == default_policy());
    ensure!(h.policy_count()? == 2);
    let search = h.tool_policy_in(custom, "search")?;
    ensure!(
        search.as_ref().map(|p| (p.max_retries, p.backoff_base_ms)) == Some((1, 10)),
        "{search:?}"
    );
    Ok(())
}

#[test]
fn test_config_all_keys_are_read() -> Result<()> {
    let h = configured(json!({
        "max_retries": 10, "backoff_base_ms": 1, "max_backoff_ms": 1,
        "retry_on_status": [418, -1, 0], "jitter": false, "check_text_content": true,
        "state_ttl_ms": 1, "max_state_entries": 1, "tool_overrides": {}
    }))?;
    let expected = Policy {
        max_retries: 10,
        backoff_base_ms: 1,
        max_backoff_ms: 1,
        throttle_backoff_base_ms: 1,
        throttle_max_backoff_ms: 1,
        retry_on_status: vec![418, -1, 0],
        jitter: false,
        jitter_mode: JitterMode::None,
        check_text_content: true,
        // Keys this config does not set keep their defaults.
        ..default_policy()
    };
    ensure!(h.global_policy()? == expected, "{:?}", h.global_policy()?);
    Ok(())
}

#[test]
fn test_config_unknown_keys_ignored() -> Result<()> {
    let mut h = configured(json!({
        "max_retries": 3,
        "no_such_key": {"deep": [1, 2, 3]},
        "MAX_RETRIES": "wrong case is just another unknown key",
        "tool_overrides": {"search": {"backoff_base_ms": 50, "what": null}}
    }))?;
    ensure!(h.global_policy()?.max_retries == 3);
    ensure!(h.tool_policy("search")?.backoff_base_ms == 50);
    Ok(())
}

#[test]
fn test_config_boundary_values_accepted() -> Result<()> {
    for config in [
        json!({"max_retries": 0}),
        json!({"max_retries": 10}),
        json!({"backoff_base_ms": 1, "max_backoff_ms": 1}),
        json!({"backoff_base_ms": 5000, "max_backoff_ms": 5000}),
        json!({"retry_on_status": []}),
        json!({"state_ttl_ms": 1}),
        json!({"max_state_entries": 1}),
        json!({"tool_overrides": {"": {}}}),
        json!({"tool_overrides": {"t": {"max_retries": 0, "backoff_base_ms": 1, "max_backoff_ms": 1}}}),
    ] {
        let mut h = Harness::new()?;
        let result = h.configure(&config.to_string())?;
        ensure!(result.is_ok(), "{config} rejected: {result:?}");
    }
    Ok(())
}

/// Each invalid config and the exact key path its error must name.
fn invalid_cases() -> Vec<(serde_json::Value, &'static str)> {
    vec![
        // ranges
        (json!({"max_retries": 11}), "max_retries"),
        (json!({"max_retries": -1}), "max_retries"),
        (json!({"max_retries": 1e20}), "max_retries"),
        (json!({"backoff_base_ms": 0}), "backoff_base_ms"),
        (json!({"backoff_base_ms": -200}), "backoff_base_ms"),
        (json!({"max_backoff_ms": 199}), "max_backoff_ms"),
        // The cross-field rule blames the key the config sets.
        (json!({"backoff_base_ms": 6000}), "backoff_base_ms"),
        (
            json!({"backoff_base_ms": 6000, "max_backoff_ms": 5999}),
            "max_backoff_ms",
        ),
        (json!({"state_ttl_ms": 0}), "state_ttl_ms"),
        (json!({"state_ttl_ms": -1}), "state_ttl_ms"),
        (json!({"max_state_entries": 0}), "max_state_entries"),
        (json!({"max_state_entries": -5}), "max_state_entries"),
        // wrong types
        (json!({"max_retries": "three"}), "max_retries"),
        (json!({"max_retries": [2]}), "max_retries"),
        (json!({"backoff_base_ms": {"ms": 1}}), "backoff_base_ms"),
        (json!({"max_backoff_ms": "lots"}), "max_backoff_ms"),
        (json!({"retry_on_status": "500"}), "retry_on_status"),
        (json!({"retry_on_status": {"500": true}}), "retry_on_status"),
        (json!({"jitter": []}), "jitter"),
        (json!({"jitter": {}}), "jitter"),
        (json!({"check_text_content": [true]}), "check_text_content"),
        (json!({"state_ttl_ms": "1s"}), "state_ttl_ms"),
        (json!({"max_state_entries": [1]}), "max_state_entries"),
        // null values
        (json!({"max_retries": null}), "max_retries"),
        (json!({"backoff_base_ms": null}), "backoff_base_ms"),
        (json!({"max_backoff_ms": null}), "max_backoff_ms"),
        (json!({"retry_on_status": null}), "retry_on_status"),
        (json!({"jitter": null}), "jitter"),
        (json!({"check_text_content": null}), "check_text_content"),
        (json!({"tool_overrides": null}), "tool_overrides"),
        (json!({"state_ttl_ms": null}), "state_ttl_ms"),
        (json!({"max_state_entries": null}), "max_state_entries"),
        // tool_overrides shape
        (json!({"tool_overrides": []}), "tool_overrides"),
        (json!({"tool_overrides": "search"}), "tool_overrides"),
        (
            json!({"tool_overrides": {"search": 5}}),
            "tool_overrides.search",
        ),
        (
            json!({"tool_overrides": {"search": null}}),
            "tool_overrides.search",
        ),
        (
            json!({"tool_overrides": {"search": [1]}}),
            "tool_overrides.search",
        ),
        // override values
        (
            json!({"tool_overrides": {"search": {"max_retries": 11}}}),
            "tool_overrides.search.max_retries",
        ),
        (
            json!({"tool_overrides": {"search": {"max_retries": "2"}}}),
            "tool_overrides.search.max_retries",
        ),
        (
            json!({"tool_overrides": {"search": {"backoff_base_ms": 0}}}),
            "tool_overrides.search.backoff_base_ms",
        ),
        (
            json!({"tool_overrides": {"search": {"max_backoff_ms": 100}}}),
            "tool_overrides.search.max_backoff_ms",
        ),
        (
            json!({"tool_overrides": {"search": {"max_backoff_ms": []}}}),
            "tool_overrides.search.max_backoff_ms",
        ),
        (
            json!({"tool_overrides": {"search": {"jitter": "no"}}}),
            "tool_overrides.search.jitter",
        ),
        (
            json!({"tool_overrides": {"search": {"check_text_content": {}}}}),
            "tool_overrides.search.check_text_content",
        ),
        (
            json!({"tool_overrides": {"search": {"retry_on_status": 503}}}),
            "tool_overrides.search.retry_on_status",
        ),
        // Tool names that would make a dotted path ambiguous are quoted.
        (
            json!({"tool_overrides": {"a.b": {"max_retries": 11}}}),
            r#"tool_overrides["a.b"].max_retries"#,
        ),
        (
            json!({"tool_overrides": {"": {"max_retries": 11}}}),
            r#"tool_overrides[""].max_retries"#,
        ),
        (
            json!({"tool_overrides": {"x[0]": 1}}),
            r#"tool_overrides["x[0]"]"#,
        ),
    ]
}

#[test]
fn test_config_each_rule_names_its_exact_key_path() -> Result<()> {
    let mut failures = Vec::new();
    for (config, path) in invalid_cases() {
        let mut h = Harness::new()?;
        match h.configure(&config.to_string())? {
            Ok(_) => failures.push(format!("{config}: accepted, expected an error at {path:?}")),
            Err(errors) => {
                let got = paths(&errors);
                if got != [path] {
                    failures.push(format!(
                        "{config}: error paths {got:?}, expected [{path:?}]"
                    ));
                }
                if let Some(e) = errors.iter().find(|e| e.message.trim().is_empty()) {
                    failures.push(format!("{config}: empty message for {:?}", e.path));
                }
            }
        }
    }
    ensure!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn test_config_out_of_range_integers_name_their_key() -> Result<()> {
    // Integers past u64/i64: the JSON parser must not wrap them into range.
    for (doc, path) in [
        (r#"{"max_retries": 18446744073709551618}"#, "max_retries"),
        (r#"{"max_retries": 4294967298}"#, "max_retries"),
        (
            r#"{"backoff_base_ms": -18446744073709551616}"#,
            "backoff_base_ms",
        ),
        (
            r#"{"max_state_entries": 18446744073709551616}"#,
            "max_state_entries",
        ),
    ] {
        let mut h = Harness::new()?;
        let got = paths(&rejected(&mut h, doc)?);
        ensure!(
            got == [path],
            "{doc}: error paths {got:?}, expected [{path:?}]"
        );
    }
    Ok(())
}

#[test]
fn test_config_retry_on_status_elements_are_validated() -> Result<()> {
    for config in [
        json!({"retry_on_status": [500, "503"]}),
        json!({"retry_on_status": [500, null]}),
        json!({"retry_on_status": [500, 503.5]}),
        json!({"retry_on_status": [500, 4294967799u64]}),
        json!({"retry_on_status": [[503]]}),
    ] {
        let mut h = Harness::new()?;
        let errors = rejected(&mut h, &config.to_string())?;
        ensure!(
            errors.iter().all(|e| e.path.starts_with("retry_on_status")),
            "{config}: error paths {:?} should name retry_on_status",
            paths(&errors)
        );
    }
    Ok(())
}

#[test]
fn test_config_document_errors_name_the_root() -> Result<()> {
    for doc in [
        "",
        "not json",
        "[]",
        "42",
        "true",
        "\"{}\"",
        "{\"max_retries\": 2",
        "{} {}",
    ] {
        let mut h = Harness::new()?;
        let errors = rejected(&mut h, doc)?;
        ensure!(
            paths(&errors) == [""],
            "{doc:?}: error paths {:?}",
            paths(&errors)
        );
    }
    Ok(())
}

#[test]
fn test_config_null_document_gives_defaults() -> Result<()> {
    // A plugin stanza with `config:` left empty reaches the engine as null.
    let mut h = configured(json!({"max_retries": 7}))?;
    h.configure_ok("null")?;
    ensure!(h.global_policy()? == default_policy());
    Ok(())
}

#[test]
fn test_config_all_problems_reported_together() -> Result<()> {
    let mut h = Harness::new()?;
    let config = json!({
        "max_retries": 11,
        "backoff_base_ms": 0,
        "jitter": [],
        "state_ttl_ms": 0,
        "max_state_entries": 0,
        "tool_overrides": {
            "a": {"max_retries": 99},
            "b": 3,
            "c": {"max_backoff_ms": "x", "check_text_content": 5}
        }
    });
    let got = paths(&rejected(&mut h, &config.to_string())?);
    for path in [
        "max_retries",
        "backoff_base_ms",
        "jitter",
        "state_ttl_ms",
        "max_state_entries",
        "tool_overrides.a.max_retries",
        "tool_overrides.b",
        "tool_overrides.c.max_backoff_ms",
        "tool_overrides.c.check_text_content",
    ] {
        ensure!(got.iter().any(|p| p == path), "missing {path:?} in {got:?}");
    }
    Ok(())
}

#[test]
fn test_config_override_invalid_after_merge_rejected_at_configure() -> Result<()> {
    // Each override is fine on its own but not merged over the global config.
    let mut h = Harness::new()?;
    let errors = rejected(
        &mut h,
        &json!({"tool_overrides": {"search": {"max_backoff_ms": 100}}}).to_string(),
    )?;
    ensure!(
        paths(&errors) == ["tool_overrides.search.max_backoff_ms"],
        "{errors:?}"
    );

    let errors = rejected(
        &mut h,
        &json!({"max_backoff_ms": 300, "tool_overrides": {"search": {"backoff_base_ms": 400}}})
            .to_string(),
    )?;
    let got = paths(&errors);
    ensure!(
        got.len() == 1 && got[0].starts_with("tool_overrides.search."),
        "a base above the merged maximum must be blamed on the override, got {got:?}"
    );
    Ok(())
}

#[test]
fn test_config_override_valid_after_merge_accepted() -> Result<()> {
    let mut h = configured(json!({
        "backoff_base_ms": 10, "max_backoff_ms": 20,
        "tool_overrides": {
            "big": {"backoff_base_ms": 500, "max_backoff_ms": 1000},
            "low": {"max_backoff_ms": 10}
        }
    }))?;
    ensure!(h.tool_policy("big")?.backoff_base_ms == 500);
    ensure!(h.tool_policy("low")?.max_backoff_ms == 10);
    Ok(())
}

#[test]
fn test_config_failed_configure_keeps_previous() -> Result<()> {
    let mut h = configured(json!({
        "max_retries": 5, "backoff_base_ms": 100, "jitter": false,
        "tool_overrides": {"search": {"max_retries": 1}}
    }))?;
    let before_global = h.global_policy()?;
    let before_search = h.tool_policy("search")?;
    rejected(
        &mut h,
        &json!({"max_retries": 1, "backoff_base_ms": 0, "tool_overrides": {}}).to_string(),
    )?;
    rejected(&mut h, "not json")?;
    // A refused configuration opens nothing.
    ensure!(h.policy_count()? == 1);
    ensure!(h.global_policy()? == before_global);
    ensure!(h.tool_policy("search")? == before_search);
    // And the engine still decides with the old config.
    let d = fail_n(&mut h, "other", "r", 5)?;
    ensure!(delays(&d) == [100, 200, 400, 800, 1600], "{d:?}");
    Ok(())
}

#[test]
fn test_config_new_configuration_starts_with_fresh_state() -> Result<()> {
    // Since 0.5 a configuration is never changed under live state: a new one
    // is a new policy with state of its own, and the old one keeps its own.
    let mut h = no_jitter(json!({"max_retries": 5, "backoff_base_ms": 100}))?;
    let old = h.policy();
    fail_n(&mut h, "t", "r", 2)?;
    h.configure_ok(&json!({"max_retries": 5, "backoff_base_ms": 10, "jitter": false}).to_string())?;
    assert_retry(h.decide("t", "r", Signals::ERROR)?, 10, 1)?;
    assert_retry(
        h.decide_key_in(old, &Key::new("t", "r"), Signals::ERROR)?,
        400,
        3,
    )?;
    ensure!(h.state_count_of(old)? == 1 && h.state_count_of(h.policy())? == 1);
    Ok(())
}

#[test]
fn test_config_tool_policy_merges_overrides() -> Result<()> {
    let mut h = configured(json!({
        "max_retries": 4, "jitter": false, "retry_on_status": [500],
        "tool_overrides": {
            "search": {"backoff_base_ms": 50, "retry_on_status": [418]},
            "fetch": {"jitter": true, "check_text_content": true, "max_retries": 0},
            "all": {"max_retries": 1, "backoff_base_ms": 7, "max_backoff_ms": 9,
                     "retry_on_status": [], "jitter": true, "check_text_content": true}
        }
    }))?;
    let global = Policy {
        max_retries: 4,
        retry_on_status: vec![500],
        jitter: false,
        jitter_mode: JitterMode::None,
        ..default_policy()
    };
    ensure!(h.global_policy()? == global);
    ensure!(h.tool_policy("unlisted")? == global);
    ensure!(
        h.tool_policy("search")?
            == Policy {
                backoff_base_ms: 50,
                // The throttle class follows the transient bounds it is not given.
                throttle_backoff_base_ms: 50,
                retry_on_status: vec![418],
                ..global.clone()
            }
    );
    ensure!(
        h.tool_policy("fetch")?
            == Policy {
                max_retries: 0,
                jitter: true,
                jitter_mode: JitterMode::Full,
                check_text_content: true,
                ..global.clone()
            }
    );
    ensure!(
        h.tool_policy("all")?
            == Policy {
                max_retries: 1,
                backoff_base_ms: 7,
                max_backoff_ms: 9,
                backoff: BackoffShape::Exponential,
                throttle_backoff_base_ms: 7,
                throttle_max_backoff_ms: 9,
                retry_on_status: vec![],
                jitter: true,
                jitter_mode: JitterMode::Full,
                check_text_content: true,
                max_total_delay_ms: None,
                safe_classification: false,
                honor_retry_after: false,
                max_retry_after_ms: 60_000,
                retry_budget_percent: None,
                retry_budget_min_per_sec: 1,
                non_idempotent_retries: NonIdempotentRetries::All,
                idempotent: None,
            }
    );
    // Tool names match exactly: no prefix, case or trimming games.
    ensure!(h.tool_policy("Search")? == global);
    ensure!(h.tool_policy("searc")? == global);
    ensure!(h.tool_policy("search ")? == global);
    Ok(())
}

#[test]
fn test_config_key_scope_is_validated() -> Result<()> {
    let mut h = Harness::new()?;
    for (scope, want) in [
        ("request", KeyScope::Request),
        ("tenant", KeyScope::Tenant),
        ("user", KeyScope::User),
    ] {
        let opened = h.configure_ok(&json!({"key_scope": scope}).to_string())?;
        ensure!(opened.key_scope == want, "{scope}: {opened:?}");
    }
    let errors = rejected(&mut h, r#"{"key_scope": "session", "tool_overrides": {}}"#)?;
    ensure!(
        errors.len() == 1
            && errors[0].path == "key_scope"
            && errors[0].message == r#"must be one of "request", "tenant", "user", got "session""#,
        "{errors:?}"
    );
    Ok(())
}
