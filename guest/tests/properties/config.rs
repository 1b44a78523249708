//! The configuration parser on arbitrary JSON.
//!
//! The oracle below restates the rules of `wit/retry-engine.wit` (`configure`)
//! independently of `policy::config`: a document is accepted exactly when
//! every key it sets is valid and every merged policy has
//! `max_backoff_ms >= backoff_base_ms`; an accepted document yields exactly
//! the merged policies, TTL and bound it describes.

use proptest::prelude::*;
use retry_engine::policy::{Config, Policy};
use serde_json::{Map, Value};

use super::{any_json, any_number, any_text, config_with};

pub const POLICY_KEYS: [&str; 6] = [
    "max_retries",
    "backoff_base_ms",
    "max_backoff_ms",
    "retry_on_status",
    "jitter",
    "check_text_content",
];

pub const KNOWN_KEYS: &[&str] = &[
    "max_retries",
    "backoff_base_ms",
    "max_backoff_ms",
    "retry_on_status",
    "jitter",
    "check_text_content",
    "tool_overrides",
    "state_ttl_ms",
    "max_state_entries",
];

/// What the oracle predicts for an accepted document.
#[derive(Debug)]
struct Expected {
    global: Policy,
    overrides: Vec<(String, Policy)>,
    ttl: u64,
    cap: u32,
}

/// The policy keys of one mapping, merged over `base`; `None` if any is invalid.
fn merge(map: &Map<String, Value>, base: &Policy) -> Option<Policy> {
    let mut p = base.clone();
    if let Some(v) = map.get("max_retries") {
        p.max_retries = v.as_u64().filter(|&n| n <= 10)? as u32;
    }
    if let Some(v) = map.get("backoff_base_ms") {
        p.backoff_base_ms = v.as_u64().filter(|&n| n > 0)?;
    }
    if let Some(v) = map.get("max_backoff_ms") {
        p.max_backoff_ms = v.as_u64()?;
    }
    if let Some(v) = map.get("retry_on_status") {
        let Value::Array(items) = v else { return None };
        p.retry_on_status = items
            .iter()
            .map(|i| i.as_i64().and_then(|n| i32::try_from(n).ok()))
            .collect::<Option<Vec<i32>>>()?;
    }
    if let Some(v) = map.get("jitter") {
        p.jitter = v.as_bool()?;
    }
    if let Some(v) = map.get("check_text_content") {
        p.check_text_content = v.as_bool()?;
    }
    (p.max_backoff_ms >= p.backoff_base_ms).then_some(p)
}

fn oracle(doc: &Value) -> Option<Expected> {
    let empty = Map::new();
    let root = match doc {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => return None,
    };
    let global = merge(root, &Policy::default())?;
    let ttl = match root.get("state_ttl_ms") {
        None => 300_000,
        Some(v) => v.as_u64().filter(|&n| n > 0)?,
    };
    let cap = match root.get("max_state_entries") {
        None => 100_000,
        Some(v) => v.as_u64().filter(|&n| (1..=1_000_000).contains(&n))? as u32,
    };
    let mut overrides = Vec::new();
    match root.get("tool_overrides") {
        None => {}
        Some(Value::Object(tools)) => {
            for (tool, entry) in tools {
                let Value::Object(fields) = entry else {
                    return None;
                };
                overrides.push((tool.clone(), merge(fields, &global)?));
            }
        }
        Some(_) => return None,
    }
    Some(Expected {
        global,
        overrides,
        ttl,
        cap,
    })
}

/// A value for a policy key: usually of the right type and near the limits.
fn policy_value(key: &'static str) -> BoxedStrategy<Value> {
    let right = match key {
        "max_retries" => (0u64..=12).prop_map(Value::from).boxed(),
        "backoff_base_ms" | "max_backoff_ms" => prop_oneof![
            (0u64..=3).prop_map(Value::from),
            (100u64..=6000).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
        ]
        .boxed(),
        "retry_on_status" => prop::collection::vec(
            prop_oneof![
                8 => (-5i64..600).prop_map(Value::from),
                1 => Just(Value::from(i64::from(i32::MAX) + 1)),
                1 => Just(Value::from(i64::from(i32::MIN))),
                1 => any_json(),
            ],
            0..5,
        )
        .prop_map(Value::Array)
        .boxed(),
        _ => any::<bool>().prop_map(Value::Bool).boxed(),
    };
    prop_oneof![6 => right, 1 => any_number(), 1 => any_json()].boxed()
}

/// A mapping that sets a random subset of the policy keys (plus unknown keys).
fn policy_map() -> BoxedStrategy<Map<String, Value>> {
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = POLICY_KEYS
        .iter()
        .map(|&k| {
            prop::option::weighted(0.4, policy_value(k).prop_map(move |v| (k.to_string(), v)))
                .boxed()
        })
        .collect();
    (
        fields,
        prop::option::weighted(0.2, (any_text(), any_json())),
    )
        .prop_map(|(fields, unknown)| {
            let mut m = Map::new();
            if let Some((k, v)) = unknown {
                m.insert(k, v);
            }
            // Known keys last: an unknown key that happens to be a known name is overwritten.
            for (k, v) in fields.into_iter().flatten() {
                m.insert(k, v);
            }
            m
        })
        .boxed()
}

fn tool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["search", "fetch", "a.b", "", "x\"y", "[0]", "é✓"])
            .prop_map(str::to_string),
        any_text(),
    ]
}

/// Documents shaped like a plugin config, with every key sometimes wrong.
fn config_doc() -> impl Strategy<Value = Value> {
    let overrides = prop_oneof![
        4 => prop::collection::btree_map(
            tool_name(),
            prop_oneof![6 => policy_map().prop_map(Value::Object), 1 => any_json()],
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => any_json(),
    ];
    let ttl = prop_oneof![
        (0u64..3).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any_json()
    ];
    let cap = prop_oneof![
        (0u64..3).prop_map(Value::from),
        (999_990u64..=1_000_010).prop_map(Value::from),
        any_json()
    ];
    let object = (
        policy_map(),
        prop::option::weighted(0.5, overrides),
        prop::option::weighted(0.3, ttl),
        prop::option::weighted(0.3, cap),
    )
        .prop_map(|(mut m, overrides, ttl, cap)| {
            for (k, v) in [
                ("tool_overrides", overrides),
                ("state_ttl_ms", ttl),
                ("max_state_entries", cap),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_string(), v);
                }
            }
            Value::Object(m)
        });
    prop_oneof![8 => object, 1 => Just(Value::Null), 1 => any_json()]
}

fn check_against_oracle(doc: &Value) -> Result<(), TestCaseError> {
    let got = Config::from_value(doc);
    let want = oracle(doc);
    match (&got, &want) {
        (Ok(config), Some(want)) => {
            prop_assert_eq!(config.global(), &want.global);
            prop_assert_eq!(config.state_ttl_ms(), want.ttl);
            prop_assert_eq!(config.max_state_entries(), want.cap);
            for (tool, policy) in &want.overrides {
                prop_assert_eq!(config.policy_for(tool), policy, "override of {:?}", tool);
            }
            let mut names: Vec<&str> = config.overridden_tools().collect();
            names.sort_unstable();
            let mut want_names: Vec<&str> =
                want.overrides.iter().map(|(t, _)| t.as_str()).collect();
            want_names.sort_unstable();
            prop_assert_eq!(names, want_names);
            prop_assert_eq!(config.policy_for("\u{0}no-such-tool"), &want.global);
            let text = want.global.check_text_content
                || want.overrides.iter().any(|(_, p)| p.check_text_content);
            prop_assert_eq!(config.any_text_check(), text);
        }
        (Err(errors), None) => {
            prop_assert!(!errors.is_empty());
            for e in errors {
                prop_assert!(!e.message.is_empty(), "{:?}", e);
                prop_assert!(!e.to_string().is_empty());
            }
        }
        (Ok(_), None) => prop_assert!(false, "accepted an invalid config: {}", doc),
        (Err(errors), Some(_)) => {
            prop_assert!(false, "rejected a valid config {}: {:?}", doc, errors)
        }
    }
    // The text form parses to the same verdict.
    let text = serde_json::to_string(doc).expect("a Value always serializes");
    prop_assert_eq!(Config::from_json(&text).is_ok(), got.is_ok());
    Ok(())
}

proptest! {
    #![proptest_config(config_with(512))]

    #[test]
    fn test_config_shaped_documents_accepted_iff_valid(doc in config_doc()) {
        check_against_oracle(&doc)?;
    }

    #[test]
    fn test_config_arbitrary_json_accepted_iff_valid(doc in any_json()) {
        check_against_oracle(&doc)?;
    }

    #[test]
    fn test_config_arbitrary_text_never_panics(text in prop_oneof![any::<String>(), "[\\[\\]{}\":,0-9a-z \\\\]{0,64}"]) {
        let _ = Config::from_json(&text);
    }

    #[test]
    fn test_config_deep_nesting_is_an_error_not_a_stack_overflow(
        depth in 1usize..200_000,
        open in prop::sample::select(vec!["[", "{\"tool_overrides\":", "{\"a\":["]),
    ) {
        let text = open.repeat(depth);
        prop_assert!(Config::from_json(&text).is_err());
    }
}
