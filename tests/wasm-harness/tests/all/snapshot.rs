//! `export-state` / `import-state` (format 3) and `init`: moving policies,
//! live retry state and budgets between two instances of the built component
//! (hot reload, issue 4), on the host's process clock.

use crate::support::*;

const NS_PER_MS: u64 = 1_000_000;
const CONFIG: &str =
    r#"{"backoff_base_ms":100,"jitter":false,"max_retries":4,"state_ttl_ms":1000}"#;
/// The host's process clock (ms) when the old instance starts.
const PROCESS_MS: u64 = 7_000_000;

/// An instance whose own (virtual) clock reads `own_ms`, `init`-ed with the
/// process time `process_ms`.
fn started(own_ms: u64, process_ms: u64) -> Result<Harness> {
    let mut h = Harness::new()?;
    h.clock.set_ms(own_ms);
    h.init(process_ms * NS_PER_MS, 0)?;
    Ok(h)
}

#[test]
fn test_snapshot_keeps_each_keys_age_across_instances_on_the_process_clock() -> Result<()> {
    // The two instances' own clocks started at unrelated points (5 s, 90 s);
    // both are `init`-ed with the process time, so the instance's clock is
    // its own plus an offset, and a key's age carries over exactly.
    let mut old = started(5_000, PROCESS_MS)?;
    let id = old.configure_ok(CONFIG)?.id;
    let ctx = |rid| Key::new("fetch", rid).context("acme", "srv");
    let a = old.decide("search", "req-1", Signals::ERROR)?;
    assert_retry(a, 100, 1)?;
    assert_retry(old.decide("search", "req-1", Signals::ERROR)?, 200, 2)?;
    let b = old.decide_key(&ctx("req-2"), Signals::ERROR)?;
    let c = old.decide_key(&ctx("req-3"), Signals::ERROR)?;
    assert_retry(b, 100, 1)?;
    old.clock.advance_ms(300);
    let doc = old.export_state()?;
    let config = serde_json::to_string(CONFIG)?;
    let (ha, hb, hc) = (a.handle, b.handle, c.handle);
    let want = format!(
        r#"{{"format":3,"policies":[{{"id":{id},"scope":"harness","ceiling":null,"config":{config},"last_used_ms":{PROCESS_MS}}}],"entries":[[{id},{ha},"","","","search","req-1",2,{PROCESS_MS},200,300],[{id},{hb},"acme","srv","","fetch","req-2",1,{PROCESS_MS},100,100],[{id},{hc},"acme","srv","","fetch","req-3",1,{PROCESS_MS},100,100]],"budgets":[]}}"#
    );
    ensure!(doc == want, "unexpected export:\n{doc}\nwant\n{want}");

    // The new instance starts 300 ms of process time later, its own clock at
    // 90 s.
    let mut new = started(90_000, PROCESS_MS + 300)?;
    ensure!(new.import_state(&doc)? == Ok(3));
    ensure!(new.policy_count()? == 1 && new.state_count()? == 3);
    // Each entry keeps its handle, the policy its id.
    assert_retry(new.decide_held(ha, Signals::ERROR)?, 400, 3)?;
    ensure!(
        new.configure_ok(CONFIG)?.id == id,
        "the same content, the same policy"
    );
    // req-2 and req-3 failed 300 ms before the export: at 700 ms after it
    // they are exactly the TTL old (kept), 1 ms later past it (forgotten).
    new.clock.advance_ms(700);
    assert_retry(new.decide_key(&ctx("req-2"), Signals::ERROR)?, 200, 2)?;
    new.clock.advance_ms(1);
    assert_retry(new.decide_key(&ctx("req-3"), Signals::ERROR)?, 100, 1)?;

    // Started later still, every entry is past its TTL: none is imported.
    let mut late = started(0, PROCESS_MS + 300 + 701)?;
    ensure!(late.import_state(&doc)? == Ok(0));
    Ok(())
}

#[test]
fn test_snapshot_without_init_is_on_the_instances_own_clock() -> Result<()> {
    // A host that never calls `init` gets the imported clock as it is: the
    // document's times are that clock's.
    let mut old = Harness::new()?;
    old.clock.set_ms(1_234);
    old.configure_ok(CONFIG)?;
    old.decide("t", "r", Signals::ERROR)?;
    let rows = exported_entries(&old.export_state()?)?;
    ensure!(rows.len() == 1 && rows[0][8] == json!(1_234), "{rows:?}");
    Ok(())
}

#[test]
fn test_snapshot_moves_budgets() -> Result<()> {
    let config =
        r#"{"jitter":false,"max_retries":1,"retry_budget_min_per_sec":0,"retry_budget_percent":1}"#;
    let mut old = Harness::new()?;
    let id = old.configure_ok(config)?.id;
    for k in 0..10 {
        ensure!(old.decide("t", &k.to_string(), Signals::ERROR)?.is_retry());
    }
    let doc = old.export_state()?;
    let budgets = serde_json::from_str::<serde_json::Value>(&doc)?["budgets"].clone();
    ensure!(budgets == json!([[id, "", "", "t", "", 0, 0]]), "{budgets}");
    let mut new = Harness::new()?;
    ensure!(new.import_state(&doc)? == Ok(10));
    new.select_id(id);
    let d = new.decide("t", "another", Signals::ERROR)?;
    ensure!(
        d.reason == reason::BUDGET,
        "the bucket came over spent: {d:?}"
    );
    // Without the snapshot the bucket starts full.
    let mut fresh = configured(serde_json::from_str(config)?)?;
    ensure!(fresh.decide("t", "another", Signals::ERROR)?.is_retry());
    Ok(())
}

#[test]
fn test_snapshot_imports_only_into_an_instance_holding_no_policy() -> Result<()> {
    let mut old = configured(serde_json::from_str(CONFIG)?)?;
    old.decide("t", "r", Signals::ERROR)?;
    let doc = old.export_state()?;
    let mut busy = no_jitter(json!({"max_retries": 7}))?;
    busy.decide("u", "r", Signals::ERROR)?;
    let refused = busy.import_state(&doc)?;
    ensure!(refused.is_err(), "{refused:?}");
    ensure!(busy.policy_count()? == 1 && busy.state_count()? == 1);
    assert_retry(busy.decide("u", "r", Signals::ERROR)?, 400, 2)?;
    Ok(())
}

#[test]
fn test_snapshot_import_is_all_or_nothing() -> Result<()> {
    let mut old = configured(serde_json::from_str(CONFIG)?)?;
    let id = old.policy();
    old.decide("t", "a", Signals::ERROR)?;
    old.decide("t", "b", Signals::ERROR)?;
    let good = old.export_state()?;
    let doc: serde_json::Value = serde_json::from_str(&good)?;
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut d = doc.clone();
        edit(&mut d);
        d.to_string()
    };
    let bad = [
        // Another format (0.4 wrote 1 and 2).
        r#"{"format": 2, "entries": [["t", "r", 1, 0, 0, 0]]}"#.to_string(),
        "not json".to_string(),
        with(&|d| d["format"] = json!(4)),
        // An id that is not its content's.
        with(&|d| d["policies"][0]["id"] = json!(id ^ 1)),
        // A configuration this build refuses (under its content's id or not).
        with(&|d| d["policies"][0]["config"] = json!(r#"{"max_retries": 11}"#)),
        // One good entry, then one naming a policy not listed.
        with(&|d| d["entries"][1][0] = json!(id ^ 1)),
        // A handle taken twice.
        with(&|d| d["entries"][1][1] = d["entries"][0][1].clone()),
        // A handle out of range.
        with(&|d| d["entries"][1][1] = json!(harness::wire::HANDLE_MASK + 1)),
        // A malformed row.
        with(&|d| d["entries"][1] = json!(["junk"])),
        with(&|d| d["budgets"] = json!([[id, "", "", "t"]])),
        with(&|d| {
            d.as_object_mut().map(|o| o.remove("policies"));
        }),
    ];
    let mut h = Harness::new()?;
    for doc in &bad {
        let refused = h.import_state(doc)?;
        ensure!(refused.is_err(), "{doc} was accepted: {refused:?}");
        ensure!(
            h.policy_count()? == 0 && h.state_count()? == 0,
            "{doc} left something behind"
        );
    }
    ensure!(h.export_state()? == r#"{"format":3,"policies":[],"entries":[],"budgets":[]}"#);
    // Still empty, so the good document imports.
    ensure!(h.import_state(&good)? == Ok(2));
    Ok(())
}
