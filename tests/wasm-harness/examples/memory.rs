//! Guest linear memory under retry state: 100 000 live entries, after they
//! expire, and under 10^6 unique failing request ids with the default bound.
//!
//! Keys look like the gateway's: a `<server>-<tool>` name and a 36-character
//! request id (a UUID), each named by a handle as the Python host names the
//! keys it holds (at most 100 000 of them at a time). Linear memory never shrinks (wasm has no
//! `memory.shrink`), so "after expiry" shows that a second wave of entries
//! reuses the freed memory instead of growing it.
//!
//! ```text
//! cargo run --profile bench-host -p retry-engine-wasm-harness --example memory
//! ```
//! Not a test: it prints figures; the target is <= 16 MiB with 100 000 entries.

use anyhow::Result;
use harness::{Harness, Signals};

const MIB: f64 = 1024.0 * 1024.0;

fn fill(h: &mut Harness, wave: u64, count: u64) -> Result<()> {
    let err = Signals::status(true, 503).pack();
    for i in 0..count {
        let tool = format!("weather-server-get-forecast-{}", i % 20);
        let rid = format!("{:08x}-{:04x}-4000-8000-{:012x}", wave, i % 0xffff, i);
        let (key, tool_len) = harness::key(&tool, &rid);
        let handle = (i % 100_000 + 1) as u32;
        h.decide_named(&key, tool_len, err, handle)?;
    }
    Ok(())
}

fn peak(h: &Harness) -> f64 {
    h.store.data().memory.peak_bytes as f64 / MIB
}

fn main() -> Result<()> {
    let mut h = Harness::new()?;
    h.configure_ok(r#"{"max_retries": 5, "state_ttl_ms": 60000}"#)?;
    println!("guest linear memory (peak), default max_state_entries = 100000");
    println!("  fresh instance, configured:      {:6.2} MiB", peak(&h));

    fill(&mut h, 1, 100_000)?;
    println!(
        "  100 000 live entries:            {:6.2} MiB ({} entries)",
        peak(&h),
        h.state_count()?
    );

    h.clock.advance_ms(60_001);
    let evicted = h.evict_expired()?;
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
    Ok(())
}
