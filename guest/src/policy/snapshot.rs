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

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::ser::{Serialize, Serializer};
use serde_json::Value;

use super::engine::Engine;
use super::state::{expired, Entry};

/// The format this build writes (it also reads [`FORMAT_V1`]).
pub const FORMAT: u64 = 2;
/// The earlier format, still read.
pub const FORMAT_V1: u64 = 1;

/// Serialize the live (unexpired) entries of `engine` at `now_ms`.
pub fn export(engine: &Engine, now_ms: u64) -> String {
    let delay_history = engine.config().uses_delay_history();
    let document = Document {
        format: if delay_history { FORMAT } else { FORMAT_V1 },
        entries: LiveEntries {
            engine,
            now_ms,
            delay_history,
        },
    };
    serde_json::to_string(&document).expect("a snapshot holds only strings and integers")
}

#[derive(serde::Serialize)]
struct Document<'a> {
    format: u64,
    entries: LiveEntries<'a>,
}

/// The live entries as rows, written as they are read (no list of rows is
/// built: a snapshot of a full state would double its memory).
struct LiveEntries<'a> {
    engine: &'a Engine,
    now_ms: u64,
    /// Format 2: each row also carries the key's delay history.
    delay_history: bool,
}

impl Serialize for LiveEntries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let ttl = self.engine.config().state_ttl_ms();
        let rows = self
            .engine
            .state()
            .iter()
            .filter(|(_, _, entry)| !expired(entry.last_failure_ms, self.now_ms, ttl))
            .map(|(tool, request_id, entry)| Row {
                tool,
                request_id,
                age_ms: self.now_ms.saturating_sub(entry.last_failure_ms),
                entry,
                delay_history: self.delay_history,
            });
        serializer.collect_seq(rows)
    }
}

/// `[tool, request_id, failures, age_ms]`, then `last_delay_ms,
/// total_delay_ms` in format 2.
struct Row<'a> {
    tool: &'a str,
    request_id: &'a str,
    age_ms: u64,
    entry: Entry,
    delay_history: bool,
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = &self.entry;
        let (tool, request_id, age_ms) = (self.tool, self.request_id, self.age_ms);
        if self.delay_history {
            (
                tool,
                request_id,
                e.failures,
                age_ms,
                e.last_delay_ms,
                e.total_delay_ms,
            )
                .serialize(serializer)
        } else {
            (tool, request_id, e.failures, age_ms).serialize(serializer)
        }
    }
}

/// Restore the entries of a format-2 (or format-1) document into `engine` at `now_ms`;
/// returns how many were imported. Nothing is imported unless the whole
/// document is readable.
pub fn import(engine: &mut Engine, text: &str, now_ms: u64) -> Result<u32, String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("state is not valid JSON: {e}"))?;
    let format = doc.get("format").and_then(Value::as_u64);
    if format != Some(FORMAT) && format != Some(FORMAT_V1) {
        let found = match (doc.get("format"), format) {
            (None, _) => String::from("(missing)"),
            (Some(_), Some(n)) => format!("{n}"),
            (Some(_), None) => String::from("(not an integer)"),
        };
        return Err(format!(
            "state format {found} is not supported (this engine reads formats {FORMAT_V1} and {FORMAT})"
        ));
    }
    let Some(Value::Array(entries)) = doc.get("entries") else {
        return Err(String::from("state has no \"entries\" list"));
    };
    let (width, shape) = if format == Some(FORMAT_V1) {
        (4, "[tool, request_id, failures, age_ms]")
    } else {
        (
            6,
            "[tool, request_id, failures, age_ms, last_delay_ms, total_delay_ms]",
        )
    };
    // Read every entry before importing any: a half-imported state would be
    // worse than none.
    let rows = entries
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Array(fields) if fields.len() == width => read_entry(fields, now_ms)
                .ok_or_else(|| format!("entries[{i}] has a field of the wrong type")),
            _ => Err(format!("entries[{i}] is not {shape}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = engine.config().state_ttl_ms();
    let mut imported = 0u32;
    for (tool, request_id, age_ms, entry) in rows {
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
            r#"{"format":2,"entries":[["t\"\\\n","é✓",1,850,200,200],["t","a",2,750,400,600]]}"#
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
