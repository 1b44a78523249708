//! The wire protocol of the hot-path calls: every name and value of
//! `wit/wire.json`, under the same names as the Python host's `wire.py`.
//!
//! The layout itself (what each bit of `signals` and of the `decision` word
//! means, the flags, the handle rules) is described once, in the WIT doc of
//! `decide` (`wit/retry-engine.wit`); the bounds of `decide-text` in its own.
//! A test reads `wit/wire.json` and fails when this module disagrees. Flat
//! integers cost a fraction of records or variants to pass through
//! wasmtime-py, and the host reads them unambiguously.

use crate::policy::{Decision, Hints, Signals};

// --- signals (host -> engine) ---------------------------------------------

/// `signals` bit 0: `result["isError"]` is `True`.
pub const SIG_IS_ERROR: u64 = 1 << 0;
/// `signals` bit 1: structured content present and not `None`.
pub const SIG_STRUCTURED: u64 = 1 << 1;
/// `signals` bit 2: `structuredContent["isError"]` is `True`.
pub const SIG_STRUCTURED_IS_ERROR: u64 = 1 << 2;
/// `signals` bit 3: a status code is in bits 32..63.
pub const SIG_STATUS: u64 = 1 << 3;
/// `signals` bit 4: an MCP input-validation error (safe classification).
pub const SIG_VALIDATION_ERROR: u64 = 1 << 4;
/// `signals` bit 5: `resultType` is `"input_required"` (safe classification).
pub const SIG_INPUT_REQUIRED: u64 = 1 << 5;
/// `signals` bit 6: an explicit `retryable: false` (safe classification).
pub const SIG_NOT_RETRYABLE: u64 = 1 << 6;
/// `signals` bit 7: a server delay hint is in bits 8..29 (ms).
pub const SIG_RETRY_AFTER: u64 = 1 << 7;
/// `signals` bits 8..29: the delay hint in ms.
pub const RETRY_AFTER_SHIFT: u32 = 8;
/// The largest delay hint the wire carries (22 bits of ms); the host
/// saturates larger ones to it.
pub const RETRY_AFTER_MAX_MS: u32 = (1 << 22) - 1;
/// `signals` bit 30: the gateway marked the failure a timeout.
pub const SIG_TIMEOUT: u64 = 1 << 30;
/// `signals` bit 31: the tool's annotations say read-only or idempotent.
pub const SIG_IDEMPOTENT: u64 = 1 << 31;
/// `signals` bits 32..63: the status code (two's complement).
pub const STATUS_SHIFT: u32 = 32;

// --- decision (engine -> host) --------------------------------------------

/// Decision bits 0..39: the delay in ms.
pub const DELAY_MASK: u64 = (1 << 40) - 1;
/// Decision bits 40..47: the retry count (consecutive failures).
pub const RETRY_COUNT_SHIFT: u32 = 40;
/// Decision bits 48..55: the reason ordinal (an index of [`REASONS`]).
pub const REASON_SHIFT: u32 = 48;
/// Decision bit 60 (alone): `decide-held` was given a handle that names no key.
pub const UNKNOWN_HANDLE: u64 = 1 << 60;
/// Decision bit 61: no policy inspects text content or keeps a budget.
pub const TEXT_FREE: u64 = 1 << 61;
/// Decision bit 62: the engine is idle after this call.
pub const IDLE: u64 = 1 << 62;
/// Decision bit 63: the host must call `decide-text`; nothing changed.
pub const NEED_TEXT: u64 = 1 << 63;
/// `decision-reason` names by ordinal, in WIT declaration order (new reasons
/// are only ever appended).
pub const REASONS: [&str; 8] = [
    "success",
    "retry",
    "exhausted",
    "non-retryable",
    "budget",
    "deadline",
    "retry-after",
    "non-idempotent",
];

// --- handles and bounds ---------------------------------------------------

/// Handles run 1..=`HANDLE_MAX` (0 names nothing). The bound keeps the
/// handle map small and the one call that first reaches it within any
/// sensible fuel budget; the Python host names at most 100 001 keys.
pub const HANDLE_MAX: u32 = 1 << 17;
/// ... and name only keys of at most this many bytes of UTF-8.
pub const HANDLE_KEY_MAX_BYTES: usize = 256;
/// `decide-text` reads at most this many text items (the rest are ignored).
pub const TEXT_MAX_ITEMS: usize = 1024;
/// ... and at most this many characters (Unicode scalar values) of them in
/// all; the item that reaches the bound is read as cut there.
pub const TEXT_MAX_CHARS: usize = 1 << 18;

/// Unpack `signals`. Reserved bits are ignored.
pub fn unpack_signals(bits: u64) -> Signals {
    Signals {
        is_error: bits & SIG_IS_ERROR != 0,
        structured: bits & SIG_STRUCTURED != 0,
        structured_is_error: bits & SIG_STRUCTURED_IS_ERROR != 0,
        status: (bits & SIG_STATUS != 0).then_some((bits >> STATUS_SHIFT) as u32 as i32),
    }
}

/// Unpack the host's facts beyond the native plugin's (bits 4..31).
pub fn unpack_hints(bits: u64) -> Hints {
    Hints {
        validation_error: bits & SIG_VALIDATION_ERROR != 0,
        input_required: bits & SIG_INPUT_REQUIRED != 0,
        not_retryable: bits & SIG_NOT_RETRYABLE != 0,
        retry_after_ms: (bits & SIG_RETRY_AFTER != 0)
            .then_some((bits >> RETRY_AFTER_SHIFT) as u32 & RETRY_AFTER_MAX_MS),
        timeout: bits & SIG_TIMEOUT != 0,
        idempotent: bits & SIG_IDEMPOTENT != 0,
    }
}

/// Pack `signals` (the host's side).
#[cfg(test)]
pub fn pack_signals(s: Signals) -> u64 {
    let mut bits = 0;
    if s.is_error {
        bits |= SIG_IS_ERROR;
    }
    if s.structured {
        bits |= SIG_STRUCTURED;
    }
    if s.structured_is_error {
        bits |= SIG_STRUCTURED_IS_ERROR;
    }
    if let Some(code) = s.status {
        bits |= SIG_STATUS | (u64::from(code as u32) << STATUS_SHIFT);
    }
    bits
}

/// Pack a decision. The delay saturates at 2^40-1 ms (~35 years) and the count
/// at 255 (`max_retries` is at most 10).
pub fn pack_decision(d: &Decision) -> u64 {
    d.delay_ms.min(DELAY_MASK)
        | (u64::from(d.failures.min(255)) << RETRY_COUNT_SHIFT)
        | ((d.reason as u64) << REASON_SHIFT)
}

/// Split `key` into (tool, request id) after `tool_len` Unicode scalar values.
/// A `tool_len` beyond the key makes the whole key the tool name.
pub fn split_key(key: &str, tool_len: u32) -> (&str, &str) {
    let n = tool_len as usize;
    let at = if key.is_ascii() {
        // The norm: one byte per character.
        n.min(key.len())
    } else {
        key.char_indices().nth(n).map_or(key.len(), |(at, _)| at)
    };
    key.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    #[test]
    fn test_wire_signals_roundtrip() {
        for status in [
            None,
            Some(0),
            Some(503),
            Some(-1),
            Some(i32::MIN),
            Some(i32::MAX),
        ] {
            for flags in 0..8u8 {
                let s = Signals {
                    is_error: flags & 1 != 0,
                    structured: flags & 2 != 0,
                    structured_is_error: flags & 4 != 0,
                    status,
                };
                assert_eq!(unpack_signals(pack_signals(s)), s);
            }
        }
    }

    #[test]
    fn test_wire_hints() {
        assert_eq!(unpack_hints(0), Hints::NONE);
        assert!(unpack_hints(0b111 << 4).validation_error);
        let h = unpack_hints(SIG_INPUT_REQUIRED | SIG_IS_ERROR);
        assert!(h.input_required && !h.validation_error && !h.not_retryable);
        assert!(unpack_hints(SIG_NOT_RETRYABLE).not_retryable);
        assert_eq!(unpack_hints(5000 << 8).retry_after_ms, None, "no flag");
        assert_eq!(
            unpack_hints(SIG_RETRY_AFTER | 5000 << 8 | 503 << 32).retry_after_ms,
            Some(5000)
        );
        // The hint's field ends below the call facts, whatever the host sent.
        let all = unpack_hints(SIG_RETRY_AFTER | u64::MAX >> 32 << 8);
        assert_eq!(all.retry_after_ms, Some(RETRY_AFTER_MAX_MS));
        assert!(all.timeout && all.idempotent);
        let h = unpack_hints(SIG_TIMEOUT | SIG_IS_ERROR);
        assert!(h.timeout && !h.idempotent && h.retry_after_ms.is_none());
        let h = unpack_hints(SIG_IDEMPOTENT | SIG_RETRY_AFTER | RETRY_AFTER_MAX_MS_BITS);
        assert!(!h.timeout && h.idempotent);
        assert_eq!(h.retry_after_ms, Some(RETRY_AFTER_MAX_MS));
    }

    /// The largest hint, in place.
    const RETRY_AFTER_MAX_MS_BITS: u64 = (RETRY_AFTER_MAX_MS as u64) << RETRY_AFTER_SHIFT;

    #[test]
    fn test_wire_decision_layout() {
        let d = Decision {
            delay_ms: 400,
            failures: 2,
            reason: Reason::Retry,
        };
        assert_eq!(pack_decision(&d), 400 | (2 << 40) | (1 << 48));
        let huge = Decision {
            delay_ms: u64::MAX,
            failures: 1,
            reason: Reason::Retry,
        };
        assert_eq!(pack_decision(&huge) & DELAY_MASK, DELAY_MASK);
        assert_eq!(pack_decision(&huge) & NEED_TEXT, 0);
    }

    /// `wit/wire.json` is the one list of wire names and values; this module
    /// must declare every one of them, with the same value.
    #[test]
    fn test_wire_matches_wire_json() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/wire.json"))
                .expect("wit/wire.json");
        let doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).expect("wit/wire.json is a JSON object");
        let ours: Vec<(&str, serde_json::Value)> = vec![
            ("SIG_IS_ERROR", SIG_IS_ERROR.into()),
            ("SIG_STRUCTURED", SIG_STRUCTURED.into()),
            ("SIG_STRUCTURED_IS_ERROR", SIG_STRUCTURED_IS_ERROR.into()),
            ("SIG_STATUS", SIG_STATUS.into()),
            ("SIG_VALIDATION_ERROR", SIG_VALIDATION_ERROR.into()),
            ("SIG_INPUT_REQUIRED", SIG_INPUT_REQUIRED.into()),
            ("SIG_NOT_RETRYABLE", SIG_NOT_RETRYABLE.into()),
            ("SIG_RETRY_AFTER", SIG_RETRY_AFTER.into()),
            ("RETRY_AFTER_SHIFT", RETRY_AFTER_SHIFT.into()),
            ("RETRY_AFTER_MAX_MS", RETRY_AFTER_MAX_MS.into()),
            ("SIG_TIMEOUT", SIG_TIMEOUT.into()),
            ("SIG_IDEMPOTENT", SIG_IDEMPOTENT.into()),
            ("STATUS_SHIFT", STATUS_SHIFT.into()),
            ("DELAY_MASK", DELAY_MASK.into()),
            ("RETRY_COUNT_SHIFT", RETRY_COUNT_SHIFT.into()),
            ("REASON_SHIFT", REASON_SHIFT.into()),
            ("UNKNOWN_HANDLE", UNKNOWN_HANDLE.into()),
            ("TEXT_FREE", TEXT_FREE.into()),
            ("IDLE", IDLE.into()),
            ("NEED_TEXT", NEED_TEXT.into()),
            ("REASONS", REASONS.to_vec().into()),
            ("HANDLE_MAX", HANDLE_MAX.into()),
            ("HANDLE_KEY_MAX_BYTES", HANDLE_KEY_MAX_BYTES.into()),
            ("TEXT_MAX_ITEMS", TEXT_MAX_ITEMS.into()),
            ("TEXT_MAX_CHARS", TEXT_MAX_CHARS.into()),
        ];
        let ours_names: Vec<&str> = ours.iter().map(|(name, _)| *name).collect();
        let mut theirs: Vec<&str> = doc.keys().map(String::as_str).collect();
        theirs.sort_unstable();
        let mut sorted = ours_names.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted, theirs,
            "wire.rs and wit/wire.json declare different names"
        );
        for (name, value) in ours {
            assert_eq!(doc[name], value, "{name}");
        }
        // The reason ordinals are the policy core's too.
        for (i, name) in REASONS.iter().enumerate() {
            let reason = [
                Reason::Success,
                Reason::Retry,
                Reason::Exhausted,
                Reason::NonRetryable,
                Reason::Budget,
                Reason::Deadline,
                Reason::RetryAfter,
                Reason::NonIdempotent,
            ][i];
            assert_eq!(reason as usize, i, "{name}");
        }
    }

    #[test]
    fn test_wire_split_key() {
        assert_eq!(split_key("searchreq-1", 6), ("search", "req-1"));
        assert_eq!(split_key("ab", 9), ("ab", ""));
        assert_eq!(split_key("é✓x", 2), ("é✓", "x"));
        assert_eq!(split_key("é✓", 5), ("é✓", ""));
        assert_eq!(split_key("", 0), ("", ""));
        // The byte counting agrees with char_indices on mixed widths.
        for key in ["aé✓😀b", "😀😀", "é", "xyz✓"] {
            for n in 0..7 {
                let at = key.char_indices().nth(n).map_or(key.len(), |(at, _)| at);
                assert_eq!(split_key(key, n as u32), key.split_at(at), "{key} {n}");
            }
        }
    }
}
