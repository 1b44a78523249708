//! Moving live retry state between instances (hot reload of the component).
//!
//! Format 2 is a JSON document:
//! `{"format": 2, "entries": [[tool, request_id, failures, age_ms, last_delay_ms, total_delay_ms], ...]}`,
//! oldest last failure first (`last_delay_ms`, the key's previous retry delay,
//! drives decorrelated jitter; `total_delay_ms`, its summed delays, the
//! deadline). Format 1 (the same without the last two fields, written by
//! earlier builds) is still read, with both at 0.
//! Export writes format 1 unless some policy reads the delay history
//! (decorrelated jitter or a deadline): the oldest format that carries what
//! the configuration needs, so a hot reload back to a build that reads only
//! format 1 keeps working for every other configuration. Ages rather than timestamps, so the document does
//! not depend on where either instance's monotonic clock started. JSON rather
//! than a WIT list of records: one string crosses the host boundary in
//! microseconds, while a list of 100 000 records is lifted value by value.

use alloc::string::String;

use super::engine::Engine;
use super::json::{self, Value};
use super::state::{expired, Entry};
use super::text::{push_json_str, push_u64};

/// The format this build writes (it also reads [`FORMAT_V1`]).
pub const FORMAT: u64 = 2;
/// The earlier format, still read.
pub const FORMAT_V1: u64 = 1;

/// Serialize the live (unexpired) entries of `engine` at `now_ms`.
pub fn export(engine: &Engine, now_ms: u64) -> String {
    let ttl = engine.config().state_ttl_ms();
    let v2 = engine.config().uses_delay_history();
    let mut out = String::from(if v2 {
        "{\"format\":2,\"entries\":["
    } else {
        "{\"format\":1,\"entries\":["
    });
    let mut first = true;
    for (tool, request_id, entry) in engine.state().iter() {
        if expired(entry.last_failure_ms, now_ms, ttl) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push('[');
        push_json_str(&mut out, tool);
        out.push(',');
        push_json_str(&mut out, request_id);
        let age = now_ms.saturating_sub(entry.last_failure_ms);
        let push_field = |out: &mut String, n: u64| {
            out.push(',');
            push_u64(out, n);
        };
        push_field(&mut out, u64::from(entry.failures));
        push_field(&mut out, age);
        if v2 {
            push_field(&mut out, u64::from(entry.last_delay_ms));
            push_field(&mut out, u64::from(entry.total_delay_ms));
        }
        out.push(']');
    }
    out.push_str("]}");
    out
}

/// Restore the entries of a format-2 (or format-1) document into `engine` at `now_ms`;
/// returns how many were imported. Nothing is imported unless the whole
/// document is readable.
pub fn import(engine: &mut Engine, text: &str, now_ms: u64) -> Result<u32, String> {
    let doc = json::parse(text).map_err(|e| {
        let mut message = String::from("state is not valid JSON: ");
        e.push_to(&mut message);
        message
    })?;
    let format = doc.get("format").and_then(Value::as_u64);
    if format != Some(FORMAT) && format != Some(FORMAT_V1) {
        // Not `Value`'s Display: float formatting would add KiBs to the component.
        let mut message = String::from("state format ");
        match (doc.get("format"), format) {
            (None, _) => message.push_str("(missing)"),
            (Some(_), Some(n)) => push_u64(&mut message, n),
            (Some(_), None) => message.push_str("(not an integer)"),
        }
        message.push_str(" is not supported (this engine reads formats ");
        push_u64(&mut message, FORMAT_V1);
        message.push_str(" and ");
        push_u64(&mut message, FORMAT);
        message.push(')');
        return Err(message);
    }
    let Some(Value::Array(entries)) = doc.get("entries") else {
        return Err(String::from("state has no \"entries\" list"));
    };
    // Validate everything first: a half-imported state would be worse than
    // none. (Two passes over the entries rather than a list of the parsed
    // ones: the component is smaller.)
    let width = if format == Some(FORMAT_V1) { 4 } else { 6 };
    for (i, item) in entries.iter().enumerate() {
        match item {
            Value::Array(fields) if fields.len() == width => {
                if read_entry(fields, now_ms).is_none() {
                    return Err(entry_error(i, " has a field of the wrong type"));
                }
            }
            _ if width == 4 => {
                return Err(entry_error(
                    i,
                    " is not [tool, request_id, failures, age_ms]",
                ))
            }
            _ => {
                return Err(entry_error(
                    i,
                    " is not [tool, request_id, failures, age_ms, last_delay_ms, total_delay_ms]",
                ))
            }
        }
    }
    let ttl = engine.config().state_ttl_ms();
    let mut imported = 0u32;
    for item in entries {
        // Every entry was read above; none is skipped here for its shape.
        let Value::Array(fields) = item else { continue };
        let Some((tool, request_id, age_ms, entry)) = read_entry(fields, now_ms) else {
            continue;
        };
        if entry.failures == 0 || age_ms > ttl {
            continue;
        }
        engine.restore_entry(tool, request_id, entry);
        imported += 1;
    }
    Ok(imported)
}

/// An entry's fields `[tool, request_id, failures, age_ms, last_delay_ms,
/// total_delay_ms]` (the last two 0 when absent, as in format 1): the key,
/// the age and the entry at `now_ms`; `None` if a field has the wrong type.
fn read_entry(fields: &[Value], now_ms: u64) -> Option<(&str, &str, u64, Entry)> {
    let u32_at = |at: usize| match fields.get(at) {
        None => Some(0),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()),
    };
    let field = |at: usize| fields.get(at);
    let tool = field(0)?.as_str()?;
    let request_id = field(1)?.as_str()?;
    let failures = u32_at(2)?;
    let age_ms = field(3)?.as_u64()?;
    let entry = Entry {
        failures,
        last_delay_ms: u32_at(4)?,
        total_delay_ms: u32_at(5)?,
        last_failure_ms: now_ms.saturating_sub(age_ms),
    };
    Some((tool, request_id, age_ms, entry))
}

/// `entries[<i>]<what>`.
fn entry_error(i: usize, what: &str) -> String {
    let mut message = String::from("entries[");
    push_u64(&mut message, i as u64);
    message.push(']');
    message.push_str(what);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{engine, FAIL, NO_TEXT};
    use crate::policy::{Config, Outcome};

    fn fail(e: &mut Engine, tool: &str, rid: &str, now: u64) -> u32 {
        match e.decide(tool, rid, FAIL, NO_TEXT, now) {
            Outcome::Decided(d) => d.failures,
            Outcome::NeedText => panic!("need text"),
        }
    }

    #[test]
    fn test_snapshot_roundtrip_keeps_counts_ages_and_order() {
        let config = r#"{"max_retries": 5, "state_ttl_ms": 1000, "jitter": false,
                        "tool_overrides": {"d": {"jitter": "decorrelated"}}}"#;
        let mut old = engine(config);
        fail(&mut old, "t", "a", 100);
        fail(&mut old, "t\"\\\n", "é✓", 200);
        fail(&mut old, "t", "a", 300);
        fail(&mut old, "t", "gone", 0);
        let doc = export(&old, 1050);
        assert_eq!(
            doc,
            r#"{"format":2,"entries":[["t\"\\\u000a","é✓",1,850,200,200],["t","a",2,750,400,600]]}"#
        );

        // The new instance's clock started elsewhere: ages carry over.
        let mut new = engine(config);
        assert_eq!(import(&mut new, &doc, 50_000), Ok(2));
        assert_eq!(fail(&mut new, "t", "a", 50_000), 3);
        // "a" had 750 ms of age; 251 ms later its age is 1001 > TTL.
        assert_eq!(fail(&mut new, "t\"\\\n", "é✓", 50_151), 1);
        let order: alloc::vec::Vec<&str> = new.state().iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, ["a", "é✓"]);
    }

    #[test]
    fn test_snapshot_import_is_all_or_nothing() {
        let mut e = engine("{}");
        for (doc, why) in [
            ("nope", "not valid JSON"),
            (
                r#"{"format": 3, "entries": []}"#,
                "state format 3 is not supported (this engine reads formats 1 and 2)",
            ),
            (
                r#"{"format": 2, "entries": [["t","r",1,0,5]]}"#,
                "entries[0] is not [tool, request_id, failures, age_ms, last_delay_ms, total_delay_ms]",
            ),
            (
                r#"{"format": 2, "entries": [["t","r",1,0,5,-5]]}"#,
                "entries[0] has a field",
            ),
            (r#"{"entries": []}"#, "state format (missing)"),
            (r#"{"format": 1}"#, "no \"entries\""),
            (
                r#"{"format": 1, "entries": [["t","r",1,0], ["t"]]}"#,
                "entries[1] is not",
            ),
            (
                r#"{"format": 1, "entries": [["t","r",-1,0]]}"#,
                "entries[0] has a field",
            ),
        ] {
            let err = import(&mut e, doc, 0).unwrap_err();
            assert!(err.contains(why), "{doc}: {err}");
        }
        assert!(e.state().is_empty());
    }

    #[test]
    fn test_snapshot_reads_format_1_and_keeps_last_delay_of_format_2() {
        let mut e = engine(r#"{"jitter": "decorrelated", "max_retries": 5}"#);
        let doc = r#"{"format":1,"entries":[["t","v1",1,0]]}"#;
        assert_eq!(import(&mut e, doc, 10), Ok(1));
        let doc = r#"{"format":2,"entries":[["t","v2",1,0,4000,4000]]}"#;
        assert_eq!(import(&mut e, doc, 10), Ok(1));
        let entries: alloc::vec::Vec<(&str, Entry)> =
            e.state().iter().map(|(_, r, en)| (r, en)).collect();
        assert_eq!(entries[0].1.last_delay_ms, 0);
        assert_eq!(entries[1].1.last_delay_ms, 4000);
        assert!(export(&e, 10).contains(r#"["t","v2",1,0,4000,4000]"#));
        // Without decorrelated jitter or a deadline nothing reads the delay
        // history: format 1.
        e.configure(Config::from_json("{}").unwrap());
        assert_eq!(
            export(&e, 10),
            r#"{"format":1,"entries":[["t","v1",1,0],["t","v2",1,0]]}"#
        );
    }

    #[test]
    fn test_snapshot_import_respects_ttl_and_capacity() {
        let mut e = engine(r#"{"state_ttl_ms": 100, "max_state_entries": 2}"#);
        let doc = r#"{"format":1,"entries":[["t","old",1,101],["t","a",1,5],["t","b",2,4],["t","c",1,3],["t","z",0,1]]}"#;
        assert_eq!(import(&mut e, doc, 1000), Ok(3));
        let order: alloc::vec::Vec<&str> = e.state().iter().map(|(_, r, _)| r).collect();
        assert_eq!(order, ["b", "c"]);
    }
}
