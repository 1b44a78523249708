//! What one `decide-text` call costs through wasmtime for text content of a
//! few shapes: a small JSON text, a 256 KiB one, 1024 small items, and
//! inputs past the bounds (as a host that does not cut would send them).
//!
//! ```text
//! cargo run --profile bench-host -p retry-engine-wasm-harness --example text_cost [-- ROUNDS]
//! ```
//!
//! Not a test: it prints the median time per call of each shape.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use harness::{Harness, Signals};

fn main() -> Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 30,
    };
    let mut h = Harness::new()?;
    h.configure_ok(r#"{"check_text_content": true}"#)?;
    let pad = |n: usize| "x".repeat(n);
    let shapes: Vec<(&str, Vec<String>)> = vec![
        (
            "small JSON text",
            vec![r#"{"status_code": 200, "message": "ok"}"#.to_string()],
        ),
        (
            "256 KiB JSON text",
            vec![format!(
                r#"{{"status_code": 200, "pad": "{}"}}"#,
                pad(256 * 1024 - 32)
            )],
        ),
        (
            "1024 items of 100 B",
            vec![format!(r#"{{"status_code": 200, "pad": "{}"}}"#, pad(70)); 1024],
        ),
        (
            "4 MiB text (past the bound)",
            vec![format!(
                r#"{{"status_code": 200, "pad": "{}"}}"#,
                pad(4 << 20)
            )],
        ),
        (
            "100000 items (past the bound)",
            vec![format!(r#"{{"status_code": 200, "pad": "{}"}}"#, pad(70)); 100_000],
        ),
    ];
    let (key, parts) = harness::key("server-tool", "req-1");
    let ok = Signals::OK.pack();
    println!("retry-engine decide-text() through wasmtime 48, median of {rounds} calls");
    for (name, texts) in &shapes {
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds + 2 {
            let start = Instant::now();
            black_box(h.decide_text_raw(&key, parts, ok, texts)?);
            times.push(start.elapsed().as_secs_f64());
        }
        // The first two calls warm up (memory growth, page faults).
        let mut times = times.split_off(2);
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!("{name:>30}: {:>10.1} µs/call", median * 1e6);
    }
    Ok(())
}
