//! The text classifier and the classification rules.
//!
//! Text items come from tools, so they are hostile input: arbitrary strings,
//! JSON nested far beyond any parser's comfort, huge numbers. The oracle for a
//! JSON object restates rule 3 of `policy::classify`: `"isError": true`, or an
//! integer `status_code` whose low 32 bits (as the native plugin's `as i32`)
//! are a retriable status.

use proptest::prelude::*;
use retry_engine::policy::classify::{classify, signals_from_json, Classification};
use retry_engine::policy::text_markers::{text_marks_failure, texts_mark_failure};
use retry_engine::policy::{Policy, Signals};
use serde_json::{Map, Value};

use super::{any_json, config_with};

const RETRY_ON: [i32; 5] = [429, 500, 502, 503, 504];

fn marks_failure_oracle(obj: &Map<String, Value>, codes: &[i32]) -> bool {
    obj.get("isError") == Some(&Value::Bool(true))
        || obj
            .get("status_code")
            .and_then(Value::as_i64)
            .is_some_and(|s| codes.contains(&(s as i32)))
}

fn status_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![200i64, 404, 429, 500, 503, 504, -1]).prop_map(Value::from),
        // 2^32 + 503 reads as 503 (truncation, as in the native plugin).
        Just(Value::from((1i64 << 32) + 503)),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(503.0)),
        Just(Value::from("503")),
        any_json(),
    ]
}

fn marker_object() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop::option::of(prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            Just(Value::from(1)),
            Just(Value::from("true")),
            any_json()
        ]),
        prop::option::of(status_value()),
        prop::collection::btree_map("[a-z_]{1,8}", any_json(), 0..3),
    )
        .prop_map(|(is_error, status, extra)| {
            let mut m: Map<String, Value> = extra.into_iter().collect();
            if let Some(v) = is_error {
                m.insert("isError".into(), v);
            }
            if let Some(v) = status {
                m.insert("status_code".into(), v);
            }
            m
        })
}

/// Rule 3 as it was stated before the bounded reader: parse the whole text
/// into a serde_json `Value`; a marker only if that is an object that marks.
fn value_oracle(text: &str, codes: &[i32]) -> bool {
    matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(o)) if marks_failure_oracle(&o, codes))
}

/// Object text with members written out one by one (so names repeat), then
/// perhaps damaged: cut short, a character put in, or something appended.
fn member_text() -> impl Strategy<Value = String> {
    let member = (
        prop_oneof![
            2 => Just("isError".to_string()),
            2 => Just("status_code".to_string()),
            1 => Just("is\\u0045rror".to_string()),
            2 => "[a-z_]{1,8}",
        ],
        prop_oneof![
            any::<bool>()
                .prop_map(Value::Bool)
                .prop_map(|v| v.to_string()),
            status_value().prop_map(|v| v.to_string()),
            Just("1e400".to_string()),
            Just("\"\\ud800\"".to_string()),
            Just("-0".to_string()),
            (0usize..140).prop_map(|d| "[".repeat(d) + &"]".repeat(d)),
        ],
    );
    (
        prop::collection::vec(member, 0..6),
        "[ \t\n\r]{0,2}",
        any::<bool>(),
        any::<bool>(),
        prop::option::of((
            any::<prop::sample::Index>(),
            0u8..3,
            "[\\[\\]{}\":,0-9a-z. ]",
        )),
    )
        .prop_map(|(members, ws, pretty, marked, damage)| {
            let sep = if pretty { ",\n  " } else { "," };
            // Often a marker first, so that what follows decides.
            let lead = marked.then(|| String::from("\"isError\": true"));
            let body: Vec<String> = lead
                .into_iter()
                .chain(members.iter().map(|(k, v)| format!("\"{k}\":{ws}{v}")))
                .collect();
            let mut text = format!("{ws}{{{}}}{ws}", body.join(sep));
            if let Some((at, how, c)) = damage {
                let mut at = at.index(text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match how {
                    0 => text.truncate(at),
                    1 => text.insert_str(at, &c),
                    _ => text.push_str(&c),
                }
            }
            text
        })
}

fn signals() -> impl Strategy<Value = Signals> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop_oneof![
            prop::sample::select(vec![200, 404, 429, 500, 503]),
            any::<i32>()
        ]),
    )
        .prop_map(
            |(is_error, structured, structured_is_error, status)| Signals {
                is_error,
                structured,
                structured_is_error,
                status,
            },
        )
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + inner.len() + 32);
    s.push_str("{\"isError\": true, \"x\": ");
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(close);
    }
    s.push('}');
    s
}

proptest! {
    #![proptest_config(config_with(512))]

    #[test]
    fn test_classify_arbitrary_text_never_panics(
        text in prop_oneof![any::<String>(), "[ \t\n\r]{0,2}\\{[\\[\\]{}\":,0-9a-zE.+\\- \\\\]{0,80}"],
        codes in prop::collection::vec(any::<i32>(), 0..4),
    ) {
        let _ = text_marks_failure(&text, &codes);
        let _ = text_marks_failure(&text, &RETRY_ON);
    }

    #[test]
    fn test_classify_json_objects_match_the_rule(
        obj in marker_object(),
        ws in "[ \t\n\r]{0,3}",
        pretty in any::<bool>(),
    ) {
        let body = if pretty {
            serde_json::to_string_pretty(&Value::Object(obj.clone())).unwrap()
        } else {
            serde_json::to_string(&Value::Object(obj.clone())).unwrap()
        };
        let text = format!("{ws}{body}");
        prop_assert_eq!(text_marks_failure(&text, &RETRY_ON), marks_failure_oracle(&obj, &RETRY_ON));
        // Trailing garbage makes it not JSON, so never a marker.
        let garbage = format!("{text} x");
        prop_assert!(!text_marks_failure(&garbage, &RETRY_ON));
    }

    #[test]
    fn test_text_markers_under_the_bounds_agree_with_parsing_a_value(
        text in prop_oneof![
            3 => member_text(),
            1 => "[ \t\n\r]{0,2}\\{[\\[\\]{}\":,0-9a-zE.+\\- \\\\]{0,80}",
        ],
        codes in prop_oneof![Just(RETRY_ON.to_vec()), prop::collection::vec(any::<i32>(), 0..3)],
    ) {
        let want = value_oracle(&text, &codes);
        prop_assert_eq!(text_marks_failure(&text, &codes), want, "{}", text);
        prop_assert_eq!(texts_mark_failure(&["plain", text.as_str()], &codes), want, "{}", text);
    }

    #[test]
    fn test_classify_deep_nesting_is_stack_safe(
        depth in 0usize..100_000,
        kind in 0usize..4,
    ) {
        let (open, close, inner) = [
            ("[", "]", "1"),
            ("{\"a\":", "}", "1"),
            ("[{\"k\":", "}]", "null"),
            ("[", "", ""), // unterminated
        ][kind];
        let text = nested(depth, open, close, inner);
        let got = text_marks_failure(&text, &RETRY_ON);
        // serde_json refuses nesting beyond 128 levels: the marker is then not JSON.
        let levels = depth * if kind == 2 { 2 } else { 1 };
        if kind == 3 {
            prop_assert!(!got);
        } else if levels < 100 {
            prop_assert!(got, "depth {}", depth);
        } else if levels > 200 {
            prop_assert!(!got, "depth {}", depth);
        }
    }

    #[test]
    fn test_classify_rules(
        s in signals(),
        check_text in any::<bool>(),
        codes in prop::collection::vec(prop::sample::select(vec![404, 429, 500, 503]), 0..4),
        texts in prop::option::of(prop::collection::vec(prop_oneof![
            Just("{\"isError\": true}".to_string()),
            Just("{\"status_code\": 503}".to_string()),
            Just("{\"status_code\": 404}".to_string()),
            Just("plain words".to_string()),
            any::<String>(),
        ], 0..4)),
    ) {
        let policy = Policy { retry_on_status: codes.clone(), check_text_content: check_text, ..Policy::default() };
        let want = if s.is_error {
            match s.status {
                Some(c) if !codes.contains(&c) => Classification::NonRetryable,
                _ => Classification::Failure,
            }
        } else if s.structured {
            if s.structured_is_error || s.status.is_some_and(|c| codes.contains(&c)) {
                Classification::Failure
            } else {
                Classification::NotFailure
            }
        } else if !check_text {
            Classification::NotFailure
        } else {
            match &texts {
                None => Classification::NeedText,
                Some(ts) => {
                    let hit = ts.iter().any(|t| {
                        matches!(serde_json::from_str::<Value>(t), Ok(Value::Object(o)) if marks_failure_oracle(&o, &codes))
                    });
                    if hit { Classification::Failure } else { Classification::NotFailure }
                }
            }
        };
        prop_assert_eq!(classify(s, &policy, texts.as_deref()), want);
    }

    #[test]
    fn test_classify_signals_from_arbitrary_json(doc in any_json(), wrap in any::<bool>()) {
        // Either the document itself or the document as a result's structuredContent.
        let doc = if wrap {
            serde_json::json!({"isError": true, "structuredContent": doc, "content": [{"type": "text", "text": "x"}]})
        } else {
            doc
        };
        let (s, texts) = signals_from_json(&doc);
        prop_assert_eq!(s.is_error, doc.get("isError") == Some(&Value::Bool(true)));
        let sc = doc.get("structuredContent").filter(|v| !v.is_null());
        prop_assert_eq!(s.structured, sc.is_some());
        if !doc.is_object() {
            prop_assert_eq!(s, Signals::default());
            prop_assert!(texts.is_empty());
        }
    }
}
