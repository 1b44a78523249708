//! `max_total_delay_ms` (issue 6 §3): a retry whose delay would push the
//! key's summed delays past the deadline is refused with reason `deadline`,
//! the key is cleared; per tool, with `null` turning a global deadline off;
//! the summed delays survive a hot reload (export-state format 2).

use crate::support::*;

#[test]
fn test_deadline_refuses_the_crossing_retry_and_clears() -> Result<()> {
    let mut h = no_jitter(json!({"max_retries": 6, "max_total_delay_ms": 1500}))?;
    let got: Vec<(u64, u8, u8)> = (0..5)
        .map(|_| {
            h.decide("t", "r", Signals::ERROR)
                .map(|d| (d.delay_ms, d.retry_count, d.reason))
        })
        .collect::<Result<_>>()?;
    // 200 + 400 + 800 = 1400 fits 1500; 1600 more would not.
    ensure!(
        got == [
            (200, 1, reason::RETRY),
            (400, 2, reason::RETRY),
            (800, 3, reason::RETRY),
            (0, 4, reason::DEADLINE),
            (200, 1, reason::RETRY),
        ],
        "{got:?}"
    );
    Ok(())
}

#[test]
fn test_deadline_per_tool_and_in_the_policy() -> Result<()> {
    let mut h = no_jitter(json!({
        "max_total_delay_ms": 100, "max_retries": 5,
        "tool_overrides": {"off": {"max_total_delay_ms": null}, "long": {"max_total_delay_ms": 600}}
    }))?;
    ensure!(h.global_policy()?.max_total_delay_ms == Some(100));
    ensure!(h.tool_policy("off")?.max_total_delay_ms.is_none());
    let d = h.decide("any", "r", Signals::ERROR)?;
    ensure!(d.reason == reason::DEADLINE && d.delay_ms == 0 && d.retry_count == 1);
    ensure!(h.state_count()? == 0);
    ensure!(h.decide("off", "r", Signals::ERROR)?.is_retry());
    ensure!(h.decide("long", "r", Signals::ERROR)?.delay_ms == 200);
    ensure!(h.decide("long", "r", Signals::ERROR)?.delay_ms == 400);
    ensure!(h.decide("long", "r", Signals::ERROR)?.reason == reason::DEADLINE);
    let errors = rejected(&mut h, r#"{"max_total_delay_ms": 0}"#)?;
    ensure!(
        errors.len() == 1 && errors[0].path == "max_total_delay_ms",
        "{errors:?}"
    );
    Ok(())
}

#[test]
fn test_deadline_with_jitter_never_exceeded() -> Result<()> {
    let mut h =
        configured(json!({"max_retries": 10, "max_total_delay_ms": 3000, "jitter": "full"}))?;
    for k in 0..500 {
        let rid = k.to_string();
        let mut total = 0;
        loop {
            let d = h.decide("t", &rid, Signals::ERROR)?;
            if !d.is_retry() {
                ensure!(
                    d.reason == reason::DEADLINE || d.reason == reason::EXHAUSTED,
                    "{d:?}"
                );
                break;
            }
            total += d.delay_ms;
            ensure!(total <= 3000, "key {rid}: summed delays {total}");
        }
    }
    Ok(())
}

#[test]
fn test_deadline_sum_survives_export_import() -> Result<()> {
    let config = json!({"max_retries": 6, "max_total_delay_ms": 1500, "jitter": false});
    let mut old = configured(config.clone())?;
    old.decide("t", "r", Signals::ERROR)?;
    old.decide("t", "r", Signals::ERROR)?;
    let doc = old.export_state()?;
    // failures, last failure (ms), last delay, summed delays.
    let rows = exported_entries(&doc)?;
    let tail = rows[0].as_array().map(|r| r[7..].to_vec());
    ensure!(
        rows.len() == 1 && tail == Some(vec![json!(2), json!(0), json!(400), json!(600)]),
        "{doc}"
    );
    let mut new = Harness::new()?;
    ensure!(new.import_state(&doc)? == Ok(1));
    new.configure_ok(&config.to_string())?;
    ensure!(new.policy() == old.policy());
    ensure!(new.decide("t", "r", Signals::ERROR)?.delay_ms == 800);
    ensure!(new.decide("t", "r", Signals::ERROR)?.reason == reason::DEADLINE);
    Ok(())
}
