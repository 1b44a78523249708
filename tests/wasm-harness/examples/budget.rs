//! Retry budgets (issue 6 §2): load amplification and success rate with and
//! without `retry_budget_percent`, against the built component (see
//! `harness::budget_sim`). Run by `make bench`.

use anyhow::Result;
use harness::budget_sim::run;

const REQUESTS: u64 = 20_000;
/// 100 requests a second of one tool.
const GAP_MS: u64 = 10;

fn main() -> Result<()> {
    let without = r#"{"max_retries": 4, "jitter": false}"#;
    let with = r#"{"max_retries": 4, "jitter": false, "retry_budget_percent": 34, "retry_budget_min_per_sec": 1}"#;
    println!("retry budget simulation: {REQUESTS} requests of one tool at 100/s, max_retries 4");
    println!(
        "{:<50} {:>14} {:>14}",
        "", "attempts/first", "ended in success"
    );
    for (label, fail) in [("100 % failure", 1000), ("20 % independent failure", 200)] {
        for (name, config) in [("no budget", without), ("budget 34 %, floor 1/s", with)] {
            let o = run(config, REQUESTS, GAP_MS, fail, 7)?;
            println!(
                "{:<50} {:>14.3} {:>14.4}",
                format!("{label}, {name}"),
                o.amplification(),
                o.success_rate()
            );
        }
    }
    Ok(())
}
