"""The wire protocol of ``retry-engine``: the packed ``signals`` and ``decision`` u64s, the flags
and the bounds, under the names the guest's ``guest/src/wire.rs`` uses.

The layout is described once, in ``wit/retry-engine.wit`` (``decide``); ``wit/wire.json`` lists
every value here, and a test on each side (``tests/python/test_wire.py`` and the guest's
``wire`` tests) fails when its language disagrees with that file.
"""

from __future__ import annotations

from typing import Final

# --- signals (host -> engine) -------------------------------------------------------------
#: bit 0: ``result["isError"]`` is the bool True.
SIG_IS_ERROR: Final = 1 << 0
#: bit 1: ``result["structuredContent"]`` exists and is not None.
SIG_STRUCTURED: Final = 1 << 1
#: bit 2: ``structuredContent["isError"]`` is the bool True.
SIG_STRUCTURED_IS_ERROR: Final = 1 << 2
#: bit 3: ``structuredContent["status_code"]`` is an int that fits an s32 (bits 32..63).
SIG_STATUS: Final = 1 << 3
#: bit 4: an MCP input-validation error (``safe_classification``).
SIG_VALIDATION_ERROR: Final = 1 << 4
#: bit 5: ``result["resultType"] == "input_required"``.
SIG_INPUT_REQUIRED: Final = 1 << 5
#: bit 6: an explicit ``retryable: False``.
SIG_NOT_RETRYABLE: Final = 1 << 6
#: bit 7: a server delay hint (``honor_retry_after``; it also makes a failure throttled) is in
#: bits 8..29, in ms from now.
SIG_RETRY_AFTER: Final = 1 << 7
RETRY_AFTER_SHIFT: Final = 8
#: The largest hint the wire carries (22 bits of ms); larger ones saturate.
RETRY_AFTER_MAX_MS: Final = (1 << 22) - 1
#: bit 30: the gateway marked the failure a timeout (``non_idempotent_retries``).
SIG_TIMEOUT: Final = 1 << 30
#: bit 31: the tool's annotations say ``readOnlyHint`` or ``idempotentHint`` is True.
SIG_IDEMPOTENT: Final = 1 << 31
STATUS_SHIFT: Final = 32

# --- key parts (host -> engine) ----------------------------------------------------------
#: ``decide``'s ``parts``: the lengths (code points) of the key's first four parts, each in a
#: field of PART_LEN_BITS: tenant, server, identity, tool name; the request id is the rest.
PART_LEN_BITS: Final = 16
TENANT_LEN_SHIFT: Final = 0
SERVER_LEN_SHIFT: Final = 16
IDENTITY_LEN_SHIFT: Final = 32
TOOL_LEN_SHIFT: Final = 48

# --- decision (engine -> host) -----------------------------------------------------------
#: bits 0..31: the delay in ms (0: no retry).
DELAY_MASK: Final = (1 << 32) - 1
#: bits 32..35: the failure count after this result.
RETRY_COUNT_SHIFT: Final = 32
RETRY_COUNT_MASK: Final = 0xF
#: bits 36..39: the ``decision-reason`` ordinal.
REASON_SHIFT: Final = 36
REASON_MASK: Final = 0xF
#: bits 40..59: the handle naming the key while it holds state (0: none).
HANDLE_SHIFT: Final = 40
HANDLE_MASK: Final = (1 << 20) - 1
#: bit 61, alone: the instance holds no such policy (released, or a new instance): open it
#: again and call again; nothing changed.
UNKNOWN_POLICY: Final = 1 << 61
#: bit 62, alone: ``decide-held`` got a handle that names no key (any more): call ``decide``.
UNKNOWN_HANDLE: Final = 1 << 62
#: bit 63, alone: the decision needs the result's text items (``decide-text``); nothing changed.
NEED_TEXT: Final = 1 << 63
#: ``decision-reason`` names by ordinal, in WIT declaration order (new reasons are only appended).
REASONS: Final = (
    "success",
    "retry",
    "exhausted",
    "non-retryable",
    "budget",
    "deadline",
    "retry-after",
    "non-idempotent",
)

# --- bounds -------------------------------------------------------------------------------
#: The most keys an instance holds state for (handles run 1..MAX_ENTRIES).
MAX_ENTRIES: Final = HANDLE_MASK
#: ``decide-text`` reads at most this many text items ...
TEXT_MAX_ITEMS: Final = 1024
#: ... and at most this many characters (code points) of them in all; the item that reaches the
#: bound is cut there and judged on the members complete before the cut.
TEXT_MAX_CHARS: Final = 1 << 18


def as_dict() -> dict[str, object]:
    """Every wire value by name, as ``wit/wire.json`` lists them."""
    return {name: value for name, value in globals().items() if name.isupper()}
