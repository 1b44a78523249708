//! Every jitter mode and the exponential shape pinned by a golden sequence,
//! plus distribution checks where a formula's shape matters (issue 15 §3).
//!
//! Range and reproducibility checks let a wrong formula through: drawing
//! decorrelated jitter from `uniform(base, min(3 · prev, max))` instead of the
//! documented `min(max, uniform(base, 3 · prev))` stays in range and replays
//! exactly, yet it almost never lands on the cap. The goldens below fail on
//! any change of a formula (a range that moves by one changes the draws), and
//! the distribution checks say which shape went wrong.
//!
//! Only the pure core's public backoff API is used (`delay_ms`,
//! `ceiling_ms`, `Jitter`) with an `Rng` seeded here, so these tests do not
//! depend on how the engine seeds or stores anything. The component's own
//! goldens (through `simulate`) are in `tests/wasm-harness/tests/all/golden.rs`.

use fastrand::Rng;
use retry_engine::policy::backoff::{ceiling_ms, delay_ms, Jitter};

const SEED: u64 = 15;
/// Odd, so that `ceil(ceiling / 2)` and `floor(ceiling / 2)` differ on the
/// first attempt.
const BASE: u64 = 75;
/// Reached by the exponential ceiling from the fifth retry on.
const MAX: u64 = 1_000;
const KEYS: usize = 8;
const RETRIES: usize = 6;

type Table = [[u64; RETRIES]; KEYS];

/// Delays of `KEYS` keys failing `RETRIES` times each, `[key][attempt]`.
///
/// Drawn round-robin (every key's first retry, then every key's second, …)
/// from one generator, as the engine draws for interleaved requests, and each
/// key's decorrelated draw reads that key's own previous delay.
fn sequences(jitter: Jitter, seed: u64) -> Table {
    let mut rng = Rng::with_seed(seed);
    let mut table = [[0; RETRIES]; KEYS];
    for attempt in 0..RETRIES {
        for row in table.iter_mut() {
            let previous = if attempt == 0 { 0 } else { row[attempt - 1] };
            row[attempt] = delay_ms(attempt as u32, BASE, MAX, jitter, previous, &mut rng);
        }
    }
    table
}

/// Asserts `got == want`; on a mismatch the message carries `got` as Rust
/// source, ready to paste over the golden once the change is justified.
fn assert_golden(name: &str, got: &Table, want: &Table) {
    if got != want {
        let mut src = format!("const {name}: Table = [\n");
        for row in got {
            let cells: Vec<String> = row.iter().map(u64::to_string).collect();
            src.push_str(&format!("    [{}],\n", cells.join(", ")));
        }
        src.push_str("];\n");
        panic!("{name} differs from its golden sequence; the sequence now drawn is:\n{src}");
    }
}

// Golden sequences for `SEED`, `BASE`, `MAX`, `KEYS` × `RETRIES`.
//
// To regenerate: run `cargo test -p retry-engine-guest --test golden_backoff`;
// a failing golden prints the sequence now drawn as Rust source. Do not
// regenerate to make a test pass: every seeded replay (the CLI goldens, the
// component's `simulate`, an operator's reproduction of an incident) depends
// on these draws, so a change is a contract change and must be justified in
// its commit (and in the contract's changelog).

/// `none`: the capped exponential ceiling `min(base · 2^attempt, max)`.
const GOLDEN_NONE: Table = [[75, 150, 300, 600, 1000, 1000]; KEYS];

/// `full`: uniform in `[1, ceiling]`.
const GOLDEN_FULL: Table = [
    [26, 71, 10, 225, 595, 599],
    [30, 18, 47, 173, 163, 168],
    [62, 14, 238, 429, 825, 356],
    [32, 130, 93, 183, 538, 38],
    [10, 135, 42, 159, 913, 164],
    [65, 137, 265, 327, 886, 790],
    [29, 79, 271, 149, 51, 370],
    [10, 26, 90, 127, 507, 327],
];

/// `equal`: uniform in `[ceil(ceiling / 2), ceiling]`.
const GOLDEN_EQUAL: Table = [
    [50, 110, 154, 412, 797, 799],
    [52, 83, 173, 386, 581, 583],
    [69, 82, 269, 514, 913, 678],
    [53, 140, 196, 391, 769, 518],
    [42, 143, 171, 379, 957, 581],
    [70, 144, 282, 463, 943, 895],
    [52, 114, 286, 374, 525, 685],
    [42, 87, 195, 363, 753, 663],
];

/// `decorrelated`: `min(max, uniform [base, 3 · previous])`, previous = base
/// before the first retry.
const GOLDEN_DECORRELATED: Table = [
    [126, 217, 93, 151, 300, 568],
    [134, 112, 116, 153, 137, 131],
    [199, 123, 308, 681, 1000, 1000],
    [138, 369, 394, 411, 697, 151],
    [94, 261, 174, 193, 535, 325],
    [205, 568, 1000, 1000, 1000, 1000],
    [131, 242, 663, 548, 153, 217],
    [93, 109, 150, 154, 271, 316],
];

#[test]
fn test_golden_exponential_shape_without_jitter() {
    assert_golden("GOLDEN_NONE", &sequences(Jitter::None, SEED), &GOLDEN_NONE);
    // The shape itself, independent of the table: doubling from base, capped.
    for attempt in 0..RETRIES as u32 {
        assert_eq!(
            ceiling_ms(attempt, BASE, MAX),
            (BASE * (1 << attempt)).min(MAX)
        );
    }
}

#[test]
fn test_golden_full_jitter() {
    assert_golden("GOLDEN_FULL", &sequences(Jitter::Full, SEED), &GOLDEN_FULL);
}

#[test]
fn test_golden_equal_jitter() {
    assert_golden(
        "GOLDEN_EQUAL",
        &sequences(Jitter::Equal, SEED),
        &GOLDEN_EQUAL,
    );
}

#[test]
fn test_golden_decorrelated_jitter() {
    assert_golden(
        "GOLDEN_DECORRELATED",
        &sequences(Jitter::Decorrelated, SEED),
        &GOLDEN_DECORRELATED,
    );
}

#[test]
fn test_golden_sequences_are_not_degenerate() {
    // A golden that a seed change would not alter pins nothing about the
    // draws: every jittered mode must depend on the seed and vary by key.
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        let table = sequences(jitter, SEED);
        assert_ne!(table, sequences(jitter, SEED + 1), "{jitter:?}");
        assert!(
            table.iter().any(|row| row != &table[0]),
            "{jitter:?}: every key drew the same delays"
        );
    }
    // The decorrelated golden reaches the cap, so it pins the clamp too.
    assert!(GOLDEN_DECORRELATED.iter().flatten().any(|&d| d == MAX));
}

const DRAWS: usize = 20_000;

/// `DRAWS` delays of one mode for one attempt and previous delay.
fn draws(attempt: u32, jitter: Jitter, previous: u64, seed: u64) -> Vec<u64> {
    let mut rng = Rng::with_seed(seed);
    (0..DRAWS)
        .map(|_| delay_ms(attempt, BASE, MAX, jitter, previous, &mut rng))
        .collect()
}

fn mean(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len() as f64
}

#[test]
fn test_distribution_decorrelated_sits_on_the_cap_when_three_times_previous_exceeds_it() {
    // min(max, uniform [base, 3p]) puts every draw above max on max: the
    // chance of exactly max is (3p - max + 1) / (3p - base + 1), large once
    // 3p passes max. Clamping the range first (uniform [base, min(3p, max)])
    // makes max one value among hundreds.
    for previous in [400, 700, 1_000, 5_000] {
        let ds = draws(0, Jitter::Decorrelated, previous, SEED);
        let high = 3 * previous;
        let expected = (high - MAX + 1) as f64 / (high - BASE + 1) as f64;
        let at_cap = ds.iter().filter(|&&d| d == MAX).count() as f64 / DRAWS as f64;
        assert!(
            (at_cap - expected).abs() < 0.02,
            "previous {previous}: {at_cap:.3} of the delays at the cap, expected {expected:.3}"
        );
        // Below the cap the draw is uniform over [base, max): its mean is the
        // middle of that range.
        let below: Vec<u64> = ds.iter().copied().filter(|&d| d < MAX).collect();
        assert!(below.iter().all(|&d| d >= BASE), "previous {previous}");
        let middle = (BASE + MAX - 1) as f64 / 2.0;
        assert!(
            (mean(&below) - middle).abs() < middle * 0.05,
            "previous {previous}: mean below the cap {:.1}, expected about {middle:.1}",
            mean(&below)
        );
    }
}

#[test]
fn test_distribution_decorrelated_below_the_cap_spans_base_to_three_times_previous() {
    // 3p under max: never the cap, and the whole [base, 3p] is drawn, not the
    // attempt's exponential ceiling (decorrelated ignores the attempt).
    for (attempt, previous) in [(0, 200), (5, 200), (0, 300)] {
        let ds = draws(attempt, Jitter::Decorrelated, previous, SEED);
        let (lo, hi) = (*ds.iter().min().unwrap(), *ds.iter().max().unwrap());
        assert_eq!((lo, hi), (BASE, 3 * previous), "attempt {attempt}");
        let middle = (BASE + 3 * previous) as f64 / 2.0;
        assert!(
            (mean(&ds) - middle).abs() < middle * 0.03,
            "attempt {attempt}, previous {previous}: mean {:.1}, expected about {middle:.1}",
            mean(&ds)
        );
    }
    // The first retry (no previous delay) draws from [base, 3 · base].
    let ds = draws(0, Jitter::Decorrelated, 0, SEED);
    let (lo, hi) = (*ds.iter().min().unwrap(), *ds.iter().max().unwrap());
    assert_eq!((lo, hi), (BASE, 3 * BASE));
}

#[test]
fn test_distribution_equal_never_reaches_the_lower_half() {
    for attempt in 0..RETRIES as u32 {
        let ceiling = ceiling_ms(attempt, BASE, MAX);
        let floor = ceiling.div_ceil(2);
        let ds = draws(attempt, Jitter::Equal, 0, SEED);
        let (lo, hi) = (*ds.iter().min().unwrap(), *ds.iter().max().unwrap());
        // Exactly the bounds: a floor rounded down (37 of 75) or a range one
        // short at either end fails here.
        assert_eq!((lo, hi), (floor, ceiling), "attempt {attempt}");
        let middle = (floor + ceiling) as f64 / 2.0;
        assert!(
            (mean(&ds) - middle).abs() < middle * 0.02,
            "attempt {attempt}: mean {:.1}, expected about {middle:.1}",
            mean(&ds)
        );
    }
}

#[test]
fn test_distribution_full_spans_one_to_the_ceiling_with_mean_near_half() {
    for attempt in 0..RETRIES as u32 {
        let ceiling = ceiling_ms(attempt, BASE, MAX);
        let ds = draws(attempt, Jitter::Full, 0, SEED);
        let (lo, hi) = (*ds.iter().min().unwrap(), *ds.iter().max().unwrap());
        // Never 0 (the gateway reads 0 as "do not retry"), and 1 is reached.
        assert_eq!((lo, hi), (1, ceiling), "attempt {attempt}");
        let middle = (1 + ceiling) as f64 / 2.0;
        assert!(
            (mean(&ds) - middle).abs() < middle * 0.03,
            "attempt {attempt}: mean {:.1}, expected about {middle:.1}",
            mean(&ds)
        );
    }
}
