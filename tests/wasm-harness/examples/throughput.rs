//! Decisions per second through wasmtime on one core: the hot path a host
//! takes for every tool result (`decide` with a key string and packed
//! signals), against the built component.
//!
//! The workspace's `release` profile is tuned for the guest (fat LTO, one
//! codegen unit), which makes a host build of wasmtime slow to compile; the
//! `bench-host` profile builds the example at full speed:
//!
//! ```text
//! cargo run --profile bench-host -p retry-engine-wasm-harness --example throughput [-- CALLS]
//! ```
//!
//! Not a test: it prints figures; the target is >= 1,000,000 decisions/s.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use harness::{Harness, Signals};

fn main() -> Result<()> {
    let calls: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 5_000_000,
    };
    let mut h = Harness::new()?;
    h.configure_ok(r#"{"max_retries": 3, "jitter": true}"#)?;

    // Pre-built keys, as a host would pass them: 1 000 request ids over 10 tools.
    let keys: Vec<(String, u64)> = (0..1_000)
        .map(|i| harness::key(&format!("server-tool-{}", i % 10), &format!("req-{i:08}")))
        .collect();
    let ok = Signals::OK.pack();
    let err = Signals::ERROR.pack();
    let status = Signals::status(true, 503).pack();

    let mixes: [(&str, [u64; 4]); 3] = [
        ("success only", [ok, ok, ok, ok]),
        ("1 failure in 4", [err, ok, ok, ok]),
        ("failures until exhausted", [err, status, err, err]),
    ];
    println!("retry-engine decide() through wasmtime 48, one core, {calls} calls per mix");
    let mut slowest = f64::INFINITY;
    for (name, pattern) in mixes {
        // Warm up (first calls grow the guest's map and fault in pages).
        run(&mut h, &keys, &pattern, 100_000)?;
        let start = Instant::now();
        run(&mut h, &keys, &pattern, calls)?;
        let secs = start.elapsed().as_secs_f64();
        let rate = calls as f64 / secs;
        slowest = slowest.min(rate);
        println!(
            "{name:>26}: {:>12.0} decisions/s ({:.0} ns/decision)",
            rate,
            secs * 1e9 / calls as f64
        );
    }
    println!(
        "slowest mix: {slowest:.0} decisions/s ({})",
        if slowest >= 1_000_000.0 {
            "meets the 1,000,000/s target"
        } else {
            "BELOW the 1,000,000/s target"
        }
    );
    Ok(())
}

fn run(h: &mut Harness, keys: &[(String, u64)], pattern: &[u64; 4], calls: u64) -> Result<()> {
    for i in 0..calls as usize {
        let (key, parts) = &keys[(i / 4) % keys.len()];
        black_box(h.decide_raw(key, *parts, pattern[i % 4])?);
    }
    Ok(())
}
