"""wire.py: the host's wire names and values are exactly those of ``wit/wire.json``, and the layouts
``wit/retry-engine.wit`` documents (the reasons' enum, the decision word, the key parts, the signal
bits).

The guest's ``wire`` tests check ``guest/src/wire.rs`` against the same file, so a change on either
side that the other does not make fails one of them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cpex_retry_with_backoff_wasm import signals, wire
from cpex_retry_with_backoff_wasm.signals import decision_reason

WIRE_JSON = Path(__file__).resolve().parents[2] / "wit" / "wire.json"
WIT = WIRE_JSON.with_name("retry-engine.wit")


def _as_json(value: object) -> object:
    """A wire value as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_the_module_declares_exactly_the_names_and_values_of_wire_json() -> None:
    spec = json.loads(WIRE_JSON.read_text(encoding="utf-8"))
    declared = {name: _as_json(value) for name, value in wire.as_dict().items()}
    assert sorted(declared) == sorted(spec), "names differ between wire.py and wit/wire.json"
    assert declared == spec


def test_as_dict_lists_every_public_constant_of_the_module() -> None:
    """Nothing in ``wire`` escapes the comparison above (e.g. a lower-case constant)."""
    public = {
        name
        for name, value in vars(wire).items()
        if not name.startswith("_") and isinstance(value, int | tuple) and not isinstance(value, bool)
    }
    assert public == set(wire.as_dict())


def test_signals_uses_the_wire_values_rather_than_copies() -> None:
    for name, value in wire.as_dict().items():
        if hasattr(signals, name):
            assert getattr(signals, name) is value, f"signals.{name} is a copy, not wire.{name}"
    assert wire.REASONS.index("retry") == signals.REASON_RETRY
    assert wire.REASONS.index("exhausted") == signals.REASON_EXHAUSTED


# --------------------------------------------------------------------------- against the WIT itself
def wit_text() -> str:
    return WIT.read_text(encoding="utf-8")


def wit_prose() -> str:
    """The WIT's doc comments as one line of prose (a sentence may wrap anywhere)."""
    lines = [line.strip().removeprefix("///").strip() for line in wit_text().splitlines()]
    return " ".join(line for line in lines if line)


def documented(pattern: str) -> tuple[int, ...]:
    found = re.findall(pattern, wit_prose())
    assert len(found) == 1, f"wit/retry-engine.wit documents {pattern!r} {len(found)} times"
    groups = found[0] if isinstance(found[0], tuple) else (found[0],)
    return tuple(int(g) for g in groups)


def field(lo: int, hi: int) -> tuple[int, int]:
    """A bit field ``lo..hi`` as (shift, mask)."""
    return lo, (1 << (hi - lo + 1)) - 1


def test_reason_ordinals_follow_the_wit_enum() -> None:
    # The contract itself, not wire.json: the enum's cases in order.
    body = re.search(r"enum decision-reason \{(.*?)\n    \}", wit_text(), re.S)
    assert body, "wit/retry-engine.wit has no enum decision-reason"
    cases = re.findall(r"^\s*([a-z][a-z-]*),\s*$", body.group(1), re.M)
    assert tuple(cases) == wire.REASONS
    assert decision_reason(3 << wire.REASON_SHIFT) == "non-retryable"
    assert decision_reason((len(wire.REASONS) - 1) << wire.REASON_SHIFT) == wire.REASONS[-1]
    with pytest.raises(ValueError, match=f"unknown decision-reason ordinal {len(wire.REASONS)}"):
        decision_reason(len(wire.REASONS) << wire.REASON_SHIFT)


def test_the_wit_numbers_each_reason_as_its_ordinal() -> None:
    body = re.search(r"enum decision-reason \{(.*?)\n    \}", wit_text(), re.S)
    assert body
    numbered = re.findall(r"/// (\d+)\. .*?\n\s*([a-z][a-z-]*),", body.group(1), re.S)
    assert [(int(n), case) for n, case in numbered] == list(enumerate(wire.REASONS))


def test_the_decision_word_is_laid_out_as_the_wit_documents() -> None:
    assert field(*documented(r"bits (\d+)\.\.(\d+) the delay in milliseconds")) == (0, wire.DELAY_MASK)
    assert field(*documented(r"bits (\d+)\.\.(\d+) the failure count after this result")) == (
        wire.RETRY_COUNT_SHIFT,
        wire.RETRY_COUNT_MASK,
    )
    assert field(*documented(r"bits (\d+)\.\.(\d+) the `decision-reason` ordinal")) == (
        wire.REASON_SHIFT,
        wire.REASON_MASK,
    )
    assert field(*documented(r"bits (\d+)\.\.(\d+) the key's \*handle\*")) == (
        wire.HANDLE_SHIFT,
        wire.HANDLE_MASK,
    )
    (low, high) = documented(r"The handle \((\d+)\.\.=(\d+); 0: none\)")
    assert (low, high) == (1, wire.HANDLE_MASK) == (1, wire.MAX_ENTRIES)
    for name, value in (
        ("need-text", wire.NEED_TEXT),
        ("unknown-handle", wire.UNKNOWN_HANDLE),
        ("unknown-policy", wire.UNKNOWN_POLICY),
    ):
        (bit,) = documented(rf"bit (\d+) alone, `{name}`")
        assert value == 1 << bit, name


def test_the_reason_enum_doc_names_the_reason_bits() -> None:
    lo, hi = documented(r"Ordinals \(bits (\d+)\.\.(\d+) of a `decide` result\)")
    assert field(lo, hi) == (wire.REASON_SHIFT, wire.REASON_MASK)


def test_the_key_parts_are_laid_out_as_the_wit_documents() -> None:
    shifts = documented(
        r"bits (\d+)\.\.(\d+) the tenant's, (\d+)\.\.(\d+) the server's, (\d+)\.\.(\d+) the "
        r"identity's, (\d+)\.\.(\d+) the tool name's"
    )
    fields = [field(shifts[i], shifts[i + 1]) for i in range(0, 8, 2)]
    mask = (1 << wire.PART_LEN_BITS) - 1
    assert fields == [
        (wire.TENANT_LEN_SHIFT, mask),
        (wire.SERVER_LEN_SHIFT, mask),
        (wire.IDENTITY_LEN_SHIFT, mask),
        (wire.TOOL_LEN_SHIFT, mask),
    ]


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("SIG_IS_ERROR", r"bit (\d+): `result\[\"isError\"\]` is the bool"),
        ("SIG_STRUCTURED", r"bit (\d+): `result\[\"structuredContent\"\]` exists"),
        ("SIG_STRUCTURED_IS_ERROR", r"bit (\d+): `structuredContent\[\"isError\"\]` is the bool"),
        ("SIG_STATUS", r"bit (\d+): `structuredContent\[\"status_code\"\]` is an int"),
        ("SIG_VALIDATION_ERROR", r"bit (\d+): an MCP input-validation error"),
        ("SIG_INPUT_REQUIRED", r"bit (\d+): `result\[\"resultType\"\]` is the str"),
        ("SIG_NOT_RETRYABLE", r"bit (\d+): `structuredContent\[\"retryable\"\]` or"),
        ("SIG_RETRY_AFTER", r"bit (\d+): a server delay hint is in bits"),
        ("SIG_TIMEOUT", r"bit (\d+): the gateway marked this failure a timeout"),
        ("SIG_IDEMPOTENT", r"bit (\d+): the tool's MCP annotations"),
    ],
)
def test_each_signal_bit_is_the_one_the_wit_documents(name: str, pattern: str) -> None:
    (bit,) = documented(pattern)
    assert getattr(wire, name) == 1 << bit


def test_the_hint_and_status_fields_are_the_ones_the_wit_documents() -> None:
    lo, hi = documented(r"a server delay hint is in bits (\d+)\.\.(\d+)")
    assert field(lo, hi) == (wire.RETRY_AFTER_SHIFT, wire.RETRY_AFTER_MAX_MS)
    (lo,) = documented(r"bits (\d+)\.\.63: that status code as an s32")
    assert lo == wire.STATUS_SHIFT
