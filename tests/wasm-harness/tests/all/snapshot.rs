//! `export-state` / `import-state`: moving live retry state between two
//! instances of the built component (hot reload, issue 4).

use crate::support::*;

fn engine() -> Result<Harness> {
    no_jitter(json!({"max_retries": 4, "backoff_base_ms": 100, "state_ttl_ms": 1000}))
}

#[test]
fn test_snapshot_moves_budgets_between_instances() -> Result<()> {
    let mut old = engine()?;
    old.clock.set_ms(5_000);
    assert_retry(old.decide("search", "req-1", Signals::ERROR)?, 100, 1)?;
    assert_retry(old.decide("search", "req-1", Signals::ERROR)?, 200, 2)?;
    assert_retry(old.decide("fetch", "req-2", Signals::ERROR)?, 100, 1)?;
    old.clock.advance_ms(300);
    let doc = old.export_state()?;
    ensure!(
        doc == r#"{"format":1,"entries":[["search","req-1",2,300],["fetch","req-2",1,300]]}"#,
        "unexpected export: {doc}"
    );

    // The new instance's clock reads something else entirely: ages carry over.
    let mut new = engine()?;
    new.clock.set_ms(90_000);
    ensure!(new.import_state(&doc)? == Ok(2));
    ensure!(new.state_count()? == 2);
    assert_retry(new.decide("search", "req-1", Signals::ERROR)?, 400, 3)?;
    // req-2 failed 300 ms before the export; 701 ms later it is past the TTL.
    new.clock.advance_ms(701);
    assert_retry(new.decide("fetch", "req-2", Signals::ERROR)?, 100, 1)?;
    Ok(())
}

#[test]
fn test_snapshot_import_refuses_unknown_format_and_changes_nothing() -> Result<()> {
    let mut h = engine()?;
    for doc in [
        r#"{"format": 2, "entries": [["t", "r", 1, 0]]}"#,
        r#"{"format": 1, "entries": [["t", "r", 1, 0], "junk"]}"#,
        "not json",
    ] {
        let refused = h.import_state(doc)?;
        ensure!(refused.is_err(), "{doc} was accepted: {refused:?}");
    }
    ensure!(h.state_count()? == 0);
    ensure!(h.export_state()? == r#"{"format":1,"entries":[]}"#);
    Ok(())
}
