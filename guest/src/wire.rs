//! The wire protocol of the hot-path calls: every name and value of
//! `wit/wire.json`, under the same names as the Python host's `wire.py`.
//!
//! The layout itself (what each bit of `signals` and of the `decision` word
//! means, the flags, the handle rules) is described once, in the WIT doc of
//! `decide` (`wit/retry-engine.wit`); the bounds of `decide-text` in its own.
//! A test reads `wit/wire.json` and fails when this module disagrees. Flat
//! integers cost a fraction of records or variants to pass through
//! wasmtime-py, and the host reads them unambiguously.

use crate::policy::{Decision, Hints, KeyParts, Signals};

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

// --- key parts (host -> engine) ------------------------------------------

/// `parts` of `decide`: four lengths in Unicode scalar values, each in a
/// field of this many bits: the tenant, the server, the identity and the tool
/// name, in that order at the front of `key`; the request id is the rest.
pub const PART_LEN_BITS: u32 = 16;
/// `parts` bits 0..15: the tenant's length.
pub const TENANT_LEN_SHIFT: u32 = 0;
/// `parts` bits 16..31: the server's length.
pub const SERVER_LEN_SHIFT: u32 = 16;
/// `parts` bits 32..47: the identity's length.
pub const IDENTITY_LEN_SHIFT: u32 = 32;
/// `parts` bits 48..63: the tool name's length.
pub const TOOL_LEN_SHIFT: u32 = 48;

// --- decision (engine -> host) --------------------------------------------

/// Decision bits 0..31: the delay in ms (saturated).
pub const DELAY_MASK: u64 = (1 << 32) - 1;
/// Decision bits 32..35: the retry count (consecutive failures, saturated).
pub const RETRY_COUNT_SHIFT: u32 = 32;
/// ... a field of this width.
pub const RETRY_COUNT_MASK: u64 = 0xF;
/// Decision bits 36..39: the reason ordinal (an index of [`REASONS`]).
pub const REASON_SHIFT: u32 = 36;
/// ... a field of this width.
pub const REASON_MASK: u64 = 0xF;
/// Decision bits 40..59: the handle naming the key while it holds state
/// (0: none).
pub const HANDLE_SHIFT: u32 = 40;
/// ... a field of this width; also the largest handle.
pub const HANDLE_MASK: u64 = (1 << 20) - 1;
/// Decision bit 61 (alone): `decide` or `decide-text` named a policy this
/// instance does not hold (never opened, or released); nothing changed.
pub const UNKNOWN_POLICY: u64 = 1 << 61;
/// Decision bit 62 (alone): `decide-held` was given a handle that names no
/// key; nothing changed.
pub const UNKNOWN_HANDLE: u64 = 1 << 62;
/// Decision bit 63 (alone): the host must call `decide-text`; nothing
/// changed.
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

// --- bounds ---------------------------------------------------------------

/// The most keys holding state at once in one instance: a handle names one of
/// them, and handles run 1..=`HANDLE_MASK`.
pub const MAX_ENTRIES: u32 = HANDLE_MASK as u32;
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

/// Pack a decision and the handle naming its key (0: none). The delay
/// saturates at 2^32-1 ms (~49.7 days) and the count at 15 (`max_retries` is
/// at most 10).
pub fn pack_decision(d: &Decision, handle: u32) -> u64 {
    d.delay_ms.min(DELAY_MASK)
        | (u64::from(d.failures).min(RETRY_COUNT_MASK) << RETRY_COUNT_SHIFT)
        | ((d.reason as u64) << REASON_SHIFT)
        | ((u64::from(handle) & HANDLE_MASK) << HANDLE_SHIFT)
}

/// Split `key` into its five parts after the four lengths `parts` packs
/// (Unicode scalar values). A length that runs past the key takes what is
/// left, and the parts after it are empty.
pub fn split_key(key: &str, parts: u64) -> KeyParts<'_> {
    let len = |shift: u32| ((parts >> shift) & ((1 << PART_LEN_BITS) - 1)) as usize;
    let (tenant, rest) = split_chars(key, len(TENANT_LEN_SHIFT));
    let (server, rest) = split_chars(rest, len(SERVER_LEN_SHIFT));
    let (identity, rest) = split_chars(rest, len(IDENTITY_LEN_SHIFT));
    let (tool, request_id) = split_chars(rest, len(TOOL_LEN_SHIFT));
    KeyParts {
        tenant,
        server,
        identity,
        tool,
        request_id,
    }
}

/// Pack the four lengths of `key`'s first parts (the host's side; tests).
pub fn pack_parts(key: &KeyParts<'_>) -> u64 {
    let n = |s: &str| (s.chars().count() as u64).min((1 << PART_LEN_BITS) - 1);
    n(key.tenant) << TENANT_LEN_SHIFT
        | n(key.server) << SERVER_LEN_SHIFT
        | n(key.identity) << IDENTITY_LEN_SHIFT
        | n(key.tool) << TOOL_LEN_SHIFT
}

/// `s` split after `n` Unicode scalar values (all of it when shorter).
fn split_chars(s: &str, n: usize) -> (&str, &str) {
    let at = if s.is_ascii() {
        // The norm: one byte per character.
        n.min(s.len())
    } else {
        s.char_indices().nth(n).map_or(s.len(), |(at, _)| at)
    };
    s.split_at(at)
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
        assert_eq!(
            pack_decision(&d, 7),
            400 | (2 << 32) | (1 << 36) | (7 << 40)
        );
        let huge = Decision {
            delay_ms: u64::MAX,
            failures: 99,
            reason: Reason::NonIdempotent,
        };
        let packed = pack_decision(&huge, u32::MAX);
        assert_eq!(packed & DELAY_MASK, DELAY_MASK);
        assert_eq!(packed >> RETRY_COUNT_SHIFT & RETRY_COUNT_MASK, 15);
        assert_eq!(packed >> REASON_SHIFT & REASON_MASK, 7);
        assert_eq!(packed >> HANDLE_SHIFT & HANDLE_MASK, HANDLE_MASK);
        assert_eq!(
            packed & (UNKNOWN_POLICY | UNKNOWN_HANDLE | NEED_TEXT),
            0,
            "no field reaches the flags"
        );
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
            ("PART_LEN_BITS", PART_LEN_BITS.into()),
            ("TENANT_LEN_SHIFT", TENANT_LEN_SHIFT.into()),
            ("SERVER_LEN_SHIFT", SERVER_LEN_SHIFT.into()),
            ("IDENTITY_LEN_SHIFT", IDENTITY_LEN_SHIFT.into()),
            ("TOOL_LEN_SHIFT", TOOL_LEN_SHIFT.into()),
            ("DELAY_MASK", DELAY_MASK.into()),
            ("RETRY_COUNT_SHIFT", RETRY_COUNT_SHIFT.into()),
            ("RETRY_COUNT_MASK", RETRY_COUNT_MASK.into()),
            ("REASON_SHIFT", REASON_SHIFT.into()),
            ("REASON_MASK", REASON_MASK.into()),
            ("HANDLE_SHIFT", HANDLE_SHIFT.into()),
            ("HANDLE_MASK", HANDLE_MASK.into()),
            ("UNKNOWN_POLICY", UNKNOWN_POLICY.into()),
            ("UNKNOWN_HANDLE", UNKNOWN_HANDLE.into()),
            ("NEED_TEXT", NEED_TEXT.into()),
            ("REASONS", REASONS.to_vec().into()),
            ("MAX_ENTRIES", MAX_ENTRIES.into()),
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
        let key = |tenant, server, identity, tool, request_id| KeyParts {
            tenant,
            server,
            identity,
            tool,
            request_id,
        };
        for parts in [
            key("", "", "", "search", "req-1"),
            key("team-a", "srv", "ann@x", "search", "req-1"),
            key("é✓", "", "😀", "x", ""),
            key("", "", "", "", ""),
            key("t", "s", "i", "aé✓😀b", "r😀"),
        ] {
            let joined = [
                parts.tenant,
                parts.server,
                parts.identity,
                parts.tool,
                parts.request_id,
            ]
            .concat();
            assert_eq!(split_key(&joined, pack_parts(&parts)), parts);
        }
        // Lengths past the key: each part takes what is left.
        let tool_only = 9u64 << TOOL_LEN_SHIFT;
        assert_eq!(split_key("ab", tool_only), key("", "", "", "ab", ""));
        assert_eq!(split_key("abc", u64::MAX), key("abc", "", "", "", ""));
        // The byte counting agrees with char_indices on mixed widths.
        for s in ["aé✓😀b", "😀😀", "é", "xyz✓"] {
            for n in 0..7 {
                let at = s.char_indices().nth(n).map_or(s.len(), |(at, _)| at);
                assert_eq!(split_chars(s, n), s.split_at(at), "{s} {n}");
            }
        }
    }
}
