//! Every jitter mode and every backoff shape pinned by a golden sequence,
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
//! `Curve`, `Jitter`) with an `Rng` seeded here, so these tests do not
//! depend on how the engine seeds or stores anything. The component's own
//! goldens (through `simulate`) are in `tests/wasm-harness/tests/all/golden.rs`.

use fastrand::Rng;
use retry_engine::policy::backoff::{delay_ms, Curve, Jitter, Shape};

const SEED: u64 = 15;
/// Odd, so that `ceil(ceiling / 2)` and `floor(ceiling / 2)` differ on the
/// first attempt.
const BASE: u64 = 75;
/// Reached by the exponential ceiling from the fifth retry on.
const MAX: u64 = 1_000;
const CURVE: Curve = Curve {
    shape: Shape::Exponential,
    base_ms: BASE,
    max_ms: MAX,
};
const KEYS: usize = 8;
const RETRIES: usize = 6;

type Table = [[u64; RETRIES]; KEYS];

/// Delays of `KEYS` keys failing `RETRIES` times each, `[key][attempt]`.
///
/// Drawn round-robin (every key's first retry, then every key's second, …)
/// from one generator, as the engine draws for interleaved requests, and each
/// key's decorrelated draw reads that key's own previous delay.
fn sequences(jitter: Jitter, seed: u64) -> Table {
    sequences_on(CURVE, jitter, seed)
}

/// [`sequences`] on another curve.
fn sequences_on(curve: Curve, jitter: Jitter, seed: u64) -> Table {
    let mut rng = Rng::with_seed(seed);
    let mut table = [[0; RETRIES]; KEYS];
    for attempt in 0..RETRIES {
        for row in table.iter_mut() {
            let previous = if attempt == 0 { 0 } else { row[attempt - 1] };
            row[attempt] = delay_ms(curve, attempt as u32, jitter, previous, &mut rng);
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

/// Linear reaches a lower cap within `RETRIES`, so its goldens pin the cap too.
const LINEAR: Curve = Curve {
    shape: Shape::Linear,
    max_ms: 300,
    ..CURVE
};
const CONSTANT: Curve = Curve {
    shape: Shape::Constant,
    ..CURVE
};

/// `linear` without jitter: `min(base · (attempt + 1), max)`.
const GOLDEN_LINEAR_NONE: Table = [[75, 150, 225, 300, 300, 300]; KEYS];
/// `linear` with `full` jitter: uniform in `[1, ceiling]`.
const GOLDEN_LINEAR_FULL: Table = [
    [26, 71, 8, 113, 179, 180],
    [30, 18, 36, 87, 49, 51],
    [62, 14, 179, 215, 248, 107],
    [32, 130, 70, 92, 162, 12],
    [10, 135, 32, 80, 274, 50],
    [65, 137, 199, 164, 266, 237],
    [29, 79, 204, 75, 16, 111],
    [10, 26, 68, 64, 153, 98],
];
/// `linear` with `equal` jitter: uniform in `[ceil(ceiling / 2), ceiling]`.
const GOLDEN_LINEAR_EQUAL: Table = [
    [50, 110, 116, 206, 239, 240],
    [52, 83, 130, 193, 174, 175],
    [69, 82, 202, 257, 274, 203],
    [53, 140, 147, 195, 231, 155],
    [42, 143, 128, 189, 287, 174],
    [70, 144, 212, 232, 283, 269],
    [52, 114, 215, 187, 157, 205],
    [42, 87, 146, 181, 226, 199],
];
/// `constant` without jitter: `base`.
const GOLDEN_CONSTANT_NONE: Table = [[75; RETRIES]; KEYS];
/// `constant` with `full` jitter: uniform in `[1, ceiling]`.
const GOLDEN_CONSTANT_FULL: Table = [
    [26, 36, 3, 29, 45, 45],
    [30, 9, 12, 22, 13, 13],
    [62, 7, 60, 54, 62, 27],
    [32, 65, 24, 23, 41, 3],
    [10, 68, 11, 20, 69, 13],
    [65, 69, 67, 41, 67, 60],
    [29, 40, 68, 19, 4, 28],
    [10, 13, 23, 16, 39, 25],
];
/// `constant` with `equal` jitter: uniform in `[ceil(ceiling / 2), ceiling]`.
const GOLDEN_CONSTANT_EQUAL: Table = [
    [50, 55, 39, 52, 60, 60],
    [52, 42, 43, 48, 44, 44],
    [69, 41, 68, 65, 69, 51],
    [53, 70, 49, 49, 58, 39],
    [42, 72, 43, 48, 72, 44],
    [70, 72, 71, 58, 71, 67],
    [52, 57, 72, 47, 39, 52],
    [42, 44, 49, 45, 57, 50],
];

#[test]
fn test_golden_linear_and_constant_shapes() {
    let cases = [
        (
            "GOLDEN_LINEAR_NONE",
            LINEAR,
            Jitter::None,
            &GOLDEN_LINEAR_NONE,
        ),
        (
            "GOLDEN_LINEAR_FULL",
            LINEAR,
            Jitter::Full,
            &GOLDEN_LINEAR_FULL,
        ),
        (
            "GOLDEN_LINEAR_EQUAL",
            LINEAR,
            Jitter::Equal,
            &GOLDEN_LINEAR_EQUAL,
        ),
        (
            "GOLDEN_CONSTANT_NONE",
            CONSTANT,
            Jitter::None,
            &GOLDEN_CONSTANT_NONE,
        ),
        (
            "GOLDEN_CONSTANT_FULL",
            CONSTANT,
            Jitter::Full,
            &GOLDEN_CONSTANT_FULL,
        ),
        (
            "GOLDEN_CONSTANT_EQUAL",
            CONSTANT,
            Jitter::Equal,
            &GOLDEN_CONSTANT_EQUAL,
        ),
    ];
    for (name, curve, jitter, golden) in cases {
        assert_golden(name, &sequences_on(curve, jitter, SEED), golden);
    }
}

#[test]
fn test_golden_exponential_shape_without_jitter() {
    assert_golden("GOLDEN_NONE", &sequences(Jitter::None, SEED), &GOLDEN_NONE);
    // The shape itself, independent of the table: doubling from base, capped.
    for attempt in 0..RETRIES as u32 {
        assert_eq!(CURVE.ceiling_ms(attempt), (BASE * (1 << attempt)).min(MAX));
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
        .map(|_| delay_ms(CURVE, attempt, jitter, previous, &mut rng))
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
        let ceiling = CURVE.ceiling_ms(attempt);
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
        let ceiling = CURVE.ceiling_ms(attempt);
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
