//! Guest linear memory under retry state: 100 000 live entries, after they
//! expire, under 10^6 unique failing request ids with the default bound, and
//! with 1 000 policies of distinct configurations holding a few entries each.
//!
//! The instance is `init`-ed with a 64 MiB memory cap, as the Python host
//! does. Keys look like the gateway's: a `<server>-<tool>` name and a
//! 36-character request id (a UUID). Linear memory never shrinks (wasm has no
//! `memory.shrink`), so "after expiry" shows that a second wave of entries
//! reuses the freed memory instead of growing it.
//!
//! ```text
//! cargo run --profile bench-host -p retry-engine-wasm-harness --example memory
//! ```
//! Not a test: it prints figures; the target is <= 16 MiB with 100 000 entries.

use anyhow::{ensure, Result};
use harness::{Harness, Signals};

const MIB: f64 = 1024.0 * 1024.0;
/// The memory cap the Python host gives an instance by default.
const MEMORY_CAP: u64 = 64 << 20;

/// `count` new failing keys under the current policy.
fn fill(h: &mut Harness, wave: u64, count: u64) -> Result<()> {
    let err = Signals::status(true, 503).pack();
    for i in 0..count {
        let tool = format!("weather-server-get-forecast-{}", i % 20);
        let rid = format!("{:08x}-{:04x}-4000-8000-{:012x}", wave, i % 0xffff, i);
        let (key, parts) = harness::key(&tool, &rid);
        h.decide_raw(&key, parts, err)?;
    }
    Ok(())
}

fn peak(h: &Harness) -> f64 {
    h.store.data().memory.peak_bytes as f64 / MIB
}

fn main() -> Result<()> {
    let mut h = Harness::new()?;
    h.init(0, MEMORY_CAP)?;
    h.configure_ok(r#"{"max_retries": 5, "state_ttl_ms": 60000}"#)?;
    println!(
        "guest linear memory (peak), init with a {} MiB cap, default max_state_entries = 100000",
        MEMORY_CAP >> 20
    );
    println!("  fresh instance, one policy:      {:6.2} MiB", peak(&h));

    fill(&mut h, 1, 100_000)?;
    println!(
        "  100 000 live entries:            {:6.2} MiB ({} entries)",
        peak(&h),
        h.state_count()?
    );

    h.clock.advance_ms(60_001);
    let evicted = h.evict_expired()?;
    // Unused for its TTL, the policy went with its entries: open it again.
    h.configure_ok(r#"{"max_retries": 5, "state_ttl_ms": 60000}"#)?;
    fill(&mut h, 2, 100_000)?;
    println!(
        "  after expiry ({evicted} evicted) + 100 000 new: {:6.2} MiB",
        peak(&h)
    );

    fill(&mut h, 3, 1_000_000)?;
    println!(
        "  after 10^6 more unique ids:      {:6.2} MiB ({} entries, bound holds)",
        peak(&h),
        h.state_count()?
    );

    // Many configurations in one instance (teams' bindings, tool overrides):
    // 1 000 policies, each with a few live entries.
    let mut many = Harness::new()?;
    many.init(0, MEMORY_CAP)?;
    for p in 0..1_000 {
        let config = format!(
            r#"{{"max_retries": 3, "backoff_base_ms": {}, "tool_overrides": {{"weather-server-get-forecast-0": {{"max_retries": 1}}}}}}"#,
            100 + p
        );
        many.configure_ok(&config)?;
        fill(&mut many, p, 5)?;
    }
    ensure!(many.policy_count()? == 1_000);
    println!(
        "  1 000 policies, 5 entries each:  {:6.2} MiB ({} entries)",
        peak(&many),
        many.state_count()?
    );
    Ok(())
}
