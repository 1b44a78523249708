//! Moving an instance's policies and live retry state to another instance
//! (hot reload of the component, a new build dropped in).
//!
//! Format 3 is a JSON document:
//!
//! ```text
//! {"format": 3,
//!  "policies": [{"id": u64, "scope": str, "ceiling": u32 | null, "config": str,
//!                "last_used_ms": u64}, ...],
//!  "entries": [[policy_id, handle, tenant, server, identity, tool, request_id,
//!               failures, last_failure_ms, last_delay_ms, total_delay_ms], ...],
//!  "budgets": [[policy_id, tenant, server, tool, identity, milli_tokens, last_ms], ...]}
//! ```
//!
//! Entries come context by context, oldest last failure first; expired ones
//! are left out. Times are on the instance's clock, which the host sets to
//! its process-wide clock (`init`), so an entry keeps its exact age across
//! instances: it expires when it would have without the move. Each entry
//! keeps its handle, and each policy its id, so the host's names for them
//! stay valid. JSON rather than a WIT list of records: one string crosses the
//! host boundary in microseconds, while a list of 100 000 records is lifted
//! value by value. (Formats 1 and 2, of contracts before 0.5, carried one
//! configuration's entries with ages; a 0.5 host loads only 0.5 builds.)

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::de;
use serde::Serialize;
use serde_json::Value;

use super::budget::RetryBudget;
use super::config::{parse_json, Config};
use super::engine::Engine;
use super::key::KeyParts;
use super::registry::{policy_id, PolicyId, Registered, MAX_POLICIES};
use super::state::{expired, Entry, Limits};

/// The format this build writes and reads.
pub const FORMAT: u64 = 3;

/// Serialize the policies, live (unexpired) entries and budgets of `engine`
/// at `now_ms`.
///
/// Written row by row into a buffer reserved for about the document's size: serde_json
/// writing the whole document would grow its buffer by doubling, which takes up to three
/// times the document's size at its last step, on top of the state it describes.
pub fn export(engine: &Engine, now_ms: u64) -> String {
    let policies = engine.policies();
    let state = engine.state();
    let mut out = String::with_capacity(estimated_len(engine));
    out.push_str("{\"format\":");
    out.push_str(&serde_json::to_string(&FORMAT).expect("a number"));
    out.push_str(",\"policies\":");
    push_rows(
        &mut out,
        policies.iter().map(|(_, p)| PolicyRow {
            id: p.id,
            scope: &p.scope,
            ceiling: p.ceiling,
            config: &p.canonical,
            last_used_ms: p.last_used_ms,
        }),
    );
    out.push_str(",\"entries\":");
    // Policy by policy in id order, so that the document depends only on the content, not on
    // the order policies were opened in.
    let live = policies
        .iter()
        .flat_map(|(_, p)| state.iter_policy(p.id))
        .filter(|&(handle, _, _, entry)| {
            let ttl_ms = state.limits_of(handle - 1).ttl_ms;
            !expired(entry.last_failure_ms, now_ms, ttl_ms)
        })
        .map(|(handle, id, k, e)| {
            let key = (k.tenant, k.server, k.identity, k.tool, k.request_id);
            let entry = (
                e.failures,
                e.last_failure_ms,
                e.last_delay_ms,
                e.total_delay_ms,
            );
            (id, handle, key, entry)
        })
        .map(|(id, handle, (t, s, i, tool, r), (f, at, last, total))| {
            (id, handle, t, s, i, tool, r, f, at, last, total)
        });
    push_rows(&mut out, live);
    out.push_str(",\"budgets\":");
    // In id order, as the entries: the buckets' own order.
    push_rows(
        &mut out,
        engine.budgets().iter().map(|(id, k, milli, last_ms)| {
            (id, k.tenant, k.server, k.tool, k.identity, milli, last_ms)
        }),
    );
    out.push('}');
    out
}

/// `rows` as a JSON list, appended to `out`.
fn push_rows<T: Serialize>(out: &mut String, rows: impl Iterator<Item = T>) {
    out.push('[');
    for (i, row) in rows.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(
            &serde_json::to_string(&row).expect("a snapshot row holds strings and numbers"),
        );
    }
    out.push(']');
}

/// About the length of `engine`'s document: each row's numbers and punctuation, and its text.
fn estimated_len(engine: &Engine) -> usize {
    let text = |parts: &[&str]| parts.iter().map(|s| s.len()).sum::<usize>();
    let policies: usize = engine
        .policies()
        .iter()
        .map(|(_, p)| 160 + text(&[&p.scope, &p.canonical, &p.canonical]))
        .sum();
    let entries: usize = engine
        .state()
        .iter()
        .map(|(_, _, k, _)| 128 + text(&[k.tenant, k.server, k.identity, k.tool, k.request_id]))
        .sum();
    64 + policies + entries + engine.budgets().len() * 1200
}

#[derive(serde::Serialize)]
struct PolicyRow<'a> {
    id: PolicyId,
    scope: &'a str,
    ceiling: Option<u32>,
    config: &'a str,
    last_used_ms: u64,
}

/// One entry row, read.
struct EntryRow<'a> {
    policy: PolicyId,
    handle: u32,
    key: KeyParts<'a>,
    entry: Entry,
}

/// One budget row, read.
struct BudgetRow<'a> {
    policy: PolicyId,
    key: KeyParts<'a>,
    milli: u64,
    last_ms: u64,
}

/// Restore a format-3 document into `engine`, which must hold no policy, at
/// `now_ms`; returns how many entries were imported (expired ones are left
/// out). All or nothing: on any error the engine is left empty.
///
/// Read as it is parsed, row by row, never as one JSON tree: a tree of the
/// whole state would take several times the document's size, and the document
/// is as large as the state itself. So `"format"` must come before the lists,
/// and `"policies"` before `"entries"` and `"budgets"` (as `export` writes them).
pub fn import(engine: &mut Engine, text: &str, now_ms: u64) -> Result<u32, String> {
    if engine.policy_count() > 0 || engine.state_count() > 0 {
        return Err(String::from(
            "state can only be imported into an instance that holds no policy",
        ));
    }
    let mut reader = Reader {
        engine,
        now_ms,
        format: None,
        lists: [false; 3],
        imported: 0,
        problem: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de::Deserializer::deserialize_map(&mut de, &mut reader).and_then(|()| de.end());
    let result = match (parsed, reader.problem.take()) {
        (_, Some(problem)) => Err(problem),
        (Err(e), None) => Err(format!("state is not valid JSON: {e}")),
        (Ok(()), None) => match reader.lists.iter().position(|&seen| !seen) {
            Some(missing) => Err(format!("state has no \"{}\" list", LISTS[missing])),
            None => {
                reader.engine.parts_mut().1.finish_restore();
                Ok(reader.imported)
            }
        },
    };
    if result.is_err() {
        reader.engine.clear();
    }
    result
}

/// The lists of a document, in the order they must come.
const LISTS: [&str; 3] = ["policies", "entries", "budgets"];

/// Restores a document as serde reads it. A problem of the content (not of the JSON) is
/// kept in `problem`, which the error serde then reports only carries.
struct Reader<'e> {
    engine: &'e mut Engine,
    now_ms: u64,
    format: Option<u64>,
    lists: [bool; 3],
    imported: u32,
    problem: Option<String>,
}

impl Reader<'_> {
    /// Stop reading with `problem`.
    fn fail<E: de::Error>(&mut self, problem: String) -> E {
        let error = E::custom(&problem);
        self.problem = Some(problem);
        error
    }

    /// Restore the `i`-th row of list `list` (one JSON value: a row is small).
    fn row(&mut self, list: usize, i: usize, row: &Value) -> Result<(), String> {
        let (registry, state, buckets) = self.engine.parts_mut();
        match list {
            0 => {
                if i >= MAX_POLICIES {
                    return Err(format!("state holds more than {MAX_POLICIES} policies"));
                }
                let policy = read_policy(row).map_err(|why| format!("policies[{i}] {why}"))?;
                if registry.find(policy.id).is_some() {
                    return Err(format!("policy {} is listed twice", policy.id));
                }
                registry.insert(policy);
            }
            1 => {
                let row = read_entry(row).ok_or_else(|| {
                    format!(
                        "entries[{i}] is not [policy, handle, tenant, server, identity, tool, \
                         request_id, failures, last_failure_ms, last_delay_ms, total_delay_ms]"
                    )
                })?;
                let ix = registry.find(row.policy).ok_or_else(|| {
                    format!("entries[{i}] names policy {}, not listed", row.policy)
                })?;
                let config = &registry.get(ix).config;
                let limits = Limits {
                    ttl_ms: config.state_ttl_ms(),
                    max_entries: config.max_state_entries(),
                };
                let stale = expired(row.entry.last_failure_ms, self.now_ms, limits.ttl_ms);
                if row.entry.failures == 0 || stale {
                    return Ok(());
                }
                if !state.restore(row.handle, row.policy, &row.key, row.entry, limits) {
                    return Err(format!(
                        "entries[{i}]: handle {} is out of range or taken, or its key is listed twice",
                        row.handle
                    ));
                }
                self.imported += 1;
            }
            _ => {
                let row = read_budget(row).ok_or_else(|| {
                    format!(
                        "budgets[{i}] is not [policy, tenant, server, tool, identity, \
                         milli_tokens, last_ms]"
                    )
                })?;
                let ix = registry.find(row.policy).ok_or_else(|| {
                    format!("budgets[{i}] names policy {}, not listed", row.policy)
                })?;
                let budget: Option<RetryBudget> = registry
                    .get(ix)
                    .config
                    .policy_for(row.key.tool)
                    .retry_budget();
                if let Some(b) = budget {
                    buckets.restore(row.policy, &row.key, b, row.milli, row.last_ms);
                }
            }
        }
        Ok(())
    }
}

impl<'de> de::Visitor<'de> for &mut Reader<'_> {
    type Value = ();

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a state document (a JSON object)")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<alloc::borrow::Cow<'de, str>>()? {
            if name == "format" {
                let format: Value = map.next_value()?;
                self.format = format.as_u64();
                if self.format != Some(FORMAT) {
                    let found = match format.as_u64() {
                        Some(n) => format!("{n}"),
                        None => String::from("(not an integer)"),
                    };
                    return Err(self.fail(format!(
                        "state format {found} is not supported (this engine reads format {FORMAT})"
                    )));
                }
                continue;
            }
            let Some(list) = LISTS.iter().position(|l| *l == name) else {
                map.next_value::<de::IgnoredAny>()?;
                continue;
            };
            if self.format.is_none() {
                return Err(self.fail(format!(
                    "state format (missing) is not supported (this engine reads format {FORMAT}; \
                     \"format\" comes first)"
                )));
            }
            if list > 0 && !self.lists[0] {
                return Err(self.fail(format!(
                    "state has no \"policies\" list before \"{name}\" (it comes first)"
                )));
            }
            if self.lists[list] {
                return Err(self.fail(format!("\"{name}\" is listed twice")));
            }
            self.lists[list] = true;
            map.next_value_seed(Rows { reader: self, list })?;
        }
        if self.format.is_none() {
            return Err(self.fail(format!(
                "state format (missing) is not supported (this engine reads format {FORMAT})"
            )));
        }
        Ok(())
    }
}

/// One list of a document, restored row by row.
struct Rows<'r, 'e> {
    reader: &'r mut Reader<'e>,
    list: usize,
}

impl<'de> de::DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> de::Visitor<'de> for Rows<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "the \"{}\" list", LISTS[self.list])
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(row) = seq.next_element::<Value>()? {
            if let Err(problem) = self.reader.row(self.list, i, &row) {
                return Err(self.reader.fail(problem));
            }
            i += 1;
        }
        Ok(())
    }
}

/// A policy row: its id must be its content's.
fn read_policy(row: &Value) -> Result<Registered, String> {
    let field = |name: &str| row.get(name);
    let id = field("id")
        .and_then(Value::as_u64)
        .ok_or("has no integer \"id\"")?;
    let scope = field("scope")
        .and_then(Value::as_str)
        .ok_or("has no string \"scope\"")?;
    let ceiling = match field("ceiling") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or("has a \"ceiling\" that is not null or a u32")?,
        ),
    };
    let config = field("config")
        .and_then(Value::as_str)
        .ok_or("has no string \"config\"")?;
    let last_used_ms = field("last_used_ms")
        .and_then(Value::as_u64)
        .ok_or("has no integer \"last_used_ms\"")?;
    if policy_id(scope, config, ceiling) != id {
        return Err(format!("has the id {id}, which is not its content's"));
    }
    let value =
        parse_json(config).map_err(|_| String::from("has a \"config\" that is not JSON"))?;
    let (parsed, warnings) = Config::from_value_capped(&value, ceiling).map_err(|errors| {
        let joined: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!(
            "has a configuration this build refuses: {}",
            joined.join("; ")
        )
    })?;
    Ok(Registered {
        id,
        scope: scope.into(),
        canonical: config.into(),
        ceiling,
        config: parsed,
        warnings,
        last_used_ms,
    })
}

fn read_entry(row: &Value) -> Option<EntryRow<'_>> {
    let fields = row.as_array().filter(|f| f.len() == 11)?;
    let u32_at = |at: usize| fields[at].as_u64().and_then(|n| u32::try_from(n).ok());
    let str_at = |at: usize| fields[at].as_str();
    Some(EntryRow {
        policy: fields[0].as_u64()?,
        handle: u32_at(1)?,
        key: KeyParts {
            tenant: str_at(2)?,
            server: str_at(3)?,
            identity: str_at(4)?,
            tool: str_at(5)?,
            request_id: str_at(6)?,
        },
        entry: Entry {
            failures: u32_at(7)?,
            last_failure_ms: fields[8].as_u64()?,
            last_delay_ms: u32_at(9)?,
            total_delay_ms: u32_at(10)?,
        },
    })
}

fn read_budget(row: &Value) -> Option<BudgetRow<'_>> {
    let fields = row.as_array().filter(|f| f.len() == 7)?;
    let str_at = |at: usize| fields[at].as_str();
    Some(BudgetRow {
        policy: fields[0].as_u64()?,
        key: KeyParts {
            tenant: str_at(1)?,
            server: str_at(2)?,
            tool: str_at(3)?,
            identity: str_at(4)?,
            request_id: "",
        },
        milli: fields[5].as_u64()?,
        last_ms: fields[6].as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_support::{FAIL, NO_TEXT};
    use crate::policy::{Hints, Outcome};

    fn fail(e: &mut Engine, policy: PolicyId, key: KeyParts<'_>, now: u64) -> (u32, u32) {
        match e.decide(policy, &key, FAIL, Hints::NONE, NO_TEXT, now) {
            Outcome::Decided(d, handle) => (d.failures, handle),
            other => panic!("{other:?}"),
        }
    }

    fn open(e: &mut Engine, config: &str) -> PolicyId {
        e.open_json("p", config, None, 0).unwrap().id
    }

    #[test]
    fn test_snapshot_roundtrip_keeps_policies_handles_times_and_order() {
        let config = r#"{"max_retries": 5, "state_ttl_ms": 1000, "jitter": false}"#;
        let mut old = Engine::new((1, 2));
        let a = open(&mut old, config);
        let b = old.open_json("q", "{}", Some(1), 0).unwrap().id;
        let team = KeyParts {
            tenant: "team\"\\\n",
            server: "srv",
            identity: "é✓",
            ..KeyParts::new("t", "r")
        };
        fail(&mut old, a, KeyParts::new("t", "x"), 100);
        let (_, h_team) = fail(&mut old, a, team, 200);
        fail(&mut old, a, KeyParts::new("t", "x"), 300);
        fail(&mut old, a, KeyParts::new("t", "gone"), 0);
        fail(&mut old, b, KeyParts::new("t", "x"), 300);
        let doc = export(&old, 1050);
        let value: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(value["format"], 3);
        assert_eq!(value["policies"].as_array().unwrap().len(), 2);
        assert_eq!(
            value["entries"].as_array().unwrap().len(),
            3,
            "the expired one left out"
        );

        let mut new = Engine::new((9, 9));
        assert_eq!(import(&mut new, &doc, 1050), Ok(3));
        // The same ids, handles and counts; ages exact: "x" failed at 300.
        assert_eq!(new.open_json("p", config, None, 1050).unwrap().id, a);
        assert_eq!(new.state().key_of(h_team).map(|(_, _, k)| k), Some(team));
        assert_eq!(fail(&mut new, a, KeyParts::new("t", "x"), 1300).0, 3);
        assert_eq!(
            fail(&mut new, a, team, 1201).0,
            1,
            "1001 ms after 200: expired"
        );
        assert_eq!(new.policy_state_count(b), Some(1));
        assert_eq!(export(&old, 1050), doc, "exporting changes nothing");
    }

    #[test]
    fn test_snapshot_carries_budgets() {
        let config = r#"{"retry_budget_percent": 10, "retry_budget_min_per_sec": 0}"#;
        let mut old = Engine::new((1, 2));
        let p = open(&mut old, config);
        for i in 0..10 {
            fail(&mut old, p, KeyParts::new("t", &format!("{i}")), 0);
        }
        let mut new = Engine::new((1, 2));
        import(&mut new, &export(&old, 0), 0).unwrap();
        match new.decide(p, &KeyParts::new("t", "z"), FAIL, Hints::NONE, NO_TEXT, 0) {
            Outcome::Decided(d, _) => assert_eq!(d.reason, crate::policy::Reason::Budget),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_snapshot_import_is_all_or_nothing() {
        let mut e = Engine::new((1, 2));
        let id = crate::policy::registry::policy_id("p", "{}", None);
        let policy = format!(
            r#"{{"id": {id}, "scope": "p", "ceiling": null, "config": "{{}}", "last_used_ms": 0}}"#
        );
        for (doc, why) in [
            (String::from("nope"), "not valid JSON"),
            (
                String::from(r#"{"format": 2, "entries": []}"#),
                "state format 2 is not supported (this engine reads format 3)",
            ),
            (String::from(r#"{"entries": []}"#), "state format (missing)"),
            (
                String::from(r#"{"format": 3, "entries": [], "budgets": []}"#),
                "no \"policies\"",
            ),
            (
                String::from(
                    r#"{"format": 3, "policies": [{"id": 5, "scope": "p", "config": "{}", "last_used_ms": 0}], "entries": [], "budgets": []}"#,
                ),
                "policies[0] has the id 5, which is not its content's",
            ),
            (
                format!(
                    r#"{{"format": 3, "policies": [{policy}], "entries": [[1]], "budgets": []}}"#
                ),
                "entries[0] is not",
            ),
            (
                format!(
                    r#"{{"format": 3, "policies": [{policy}], "entries": [[7, 1, "", "", "", "t", "r", 1, 0, 0, 0]], "budgets": []}}"#
                ),
                "names policy 7",
            ),
            (
                format!(
                    r#"{{"format": 3, "policies": [{policy}], "entries": [[{id}, 1, "", "", "", "t", "r", 1, 0, 0, 0], [{id}, 1, "", "", "", "t", "s", 1, 0, 0, 0]], "budgets": []}}"#
                ),
                "handle 1 is out of range or taken",
            ),
        ] {
            let err = import(&mut e, &doc, 0).unwrap_err();
            assert!(err.contains(why), "{doc}: {err}");
            assert_eq!((e.policy_count(), e.state_count()), (0, 0), "{doc}");
        }
        // A config this build refuses names itself.
        let bad_id = crate::policy::registry::policy_id("p", r#"{"max_retries":-1}"#, None);
        let doc = format!(
            r#"{{"format": 3, "policies": [{{"id": {bad_id}, "scope": "p", "config": "{{\"max_retries\":-1}}", "last_used_ms": 0}}], "entries": [], "budgets": []}}"#
        );
        let err = import(&mut e, &doc, 0).unwrap_err();
        assert!(
            err.contains("configuration this build refuses: max_retries"),
            "{err}"
        );
        // Only into an empty instance.
        open(&mut e, "{}");
        let doc = export(&e, 0);
        let err = import(&mut e, &doc, 0).unwrap_err();
        assert!(err.contains("holds no policy"), "{err}");
    }
}
