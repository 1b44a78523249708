"""signals.py: reading results like the native plugin and the decide bit layouts (no Wasm)."""

from __future__ import annotations

from collections import UserDict
from typing import Any

import pytest
from cpex.framework.memory import CopyOnWriteDict, CopyOnWriteList

from cpex_retry_with_backoff_wasm.signals import (
    collect_texts,
    decision_delay_ms,
    decision_needs_text,
    decision_reason,
    decision_retry_count,
    extract_bool,
    extract_s32,
    pack_signals,
    read_signals,
)
from cpex_retry_with_backoff_wasm.wire import (
    NEED_TEXT,
    SIG_IS_ERROR,
    SIG_STATUS,
    SIG_STRUCTURED,
    SIG_STRUCTURED_IS_ERROR,
    UNKNOWN_HANDLE,
    UNKNOWN_POLICY,
)


class Indexable:
    """An object with ``__index__`` (PyO3 extracts it as an int)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


class Exploding(dict[str, Any]):
    """A mapping whose reads fail with something other than KeyError/TypeError."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError(f"cannot read {key}")


def st(code: int) -> int:
    return SIG_STATUS | ((code & 0xFFFFFFFF) << 32)


S = SIG_STRUCTURED

READ_CASES: list[tuple[str, Any, int]] = [
    # --- not a mapping: never a failure
    ("none", None, 0),
    ("list", [{"isError": True}], 0),
    ("string", "isError", 0),
    ("int", 42, 0),
    ("empty", {}, 0),
    # --- isError must be the bool True
    ("isError True", {"isError": True}, SIG_IS_ERROR),
    ("isError False", {"isError": False}, 0),
    ("isError 1", {"isError": 1}, 0),
    ("isError 'true'", {"isError": "true"}, 0),
    ("isError None", {"isError": None}, 0),
    # --- isError with structured status: only the status is read
    (
        "isError + 503",
        {"isError": True, "structuredContent": {"status_code": 503}},
        SIG_IS_ERROR | S | st(503),
    ),
    (
        "isError + 404",
        {"isError": True, "structuredContent": {"status_code": 404}},
        SIG_IS_ERROR | S | st(404),
    ),
    ("isError + '503'", {"isError": True, "structuredContent": {"status_code": "503"}}, SIG_IS_ERROR | S),
    ("isError + 503.0", {"isError": True, "structuredContent": {"status_code": 503.0}}, SIG_IS_ERROR | S),
    (
        "isError + True",
        {"isError": True, "structuredContent": {"status_code": True}},
        SIG_IS_ERROR | S | st(1),
    ),
    (
        "isError + False",
        {"isError": True, "structuredContent": {"status_code": False}},
        SIG_IS_ERROR | S | st(0),
    ),
    ("isError + 2**31", {"isError": True, "structuredContent": {"status_code": 2**31}}, SIG_IS_ERROR | S),
    (
        "isError + -2**31",
        {"isError": True, "structuredContent": {"status_code": -(2**31)}},
        SIG_IS_ERROR | S | st(-(2**31)),
    ),
    ("isError + -1", {"isError": True, "structuredContent": {"status_code": -1}}, SIG_IS_ERROR | S | st(-1)),
    (
        "isError + __index__",
        {"isError": True, "structuredContent": {"status_code": Indexable(502)}},
        SIG_IS_ERROR | S | st(502),
    ),
    ("isError + sc None", {"isError": True, "structuredContent": None}, SIG_IS_ERROR),
    ("isError + sc list", {"isError": True, "structuredContent": [503]}, SIG_IS_ERROR | S),
    ("isError + sc str", {"isError": True, "structuredContent": "503"}, SIG_IS_ERROR | S),
    # the structured isError is not read on this path (native does not read it)
    ("isError + sc isError", {"isError": True, "structuredContent": {"isError": True}}, SIG_IS_ERROR | S),
    # --- structured content without top-level isError
    ("sc isError True", {"structuredContent": {"isError": True}}, S | SIG_STRUCTURED_IS_ERROR),
    ("sc isError 1", {"structuredContent": {"isError": 1}}, S),
    (
        "sc isError + status",
        {"structuredContent": {"isError": True, "status_code": 200}},
        S | SIG_STRUCTURED_IS_ERROR,
    ),
    ("sc status 503", {"isError": False, "structuredContent": {"status_code": 503}}, S | st(503)),
    ("sc status 200", {"structuredContent": {"status_code": 200}}, S | st(200)),
    ("sc status str", {"structuredContent": {"status_code": "503"}}, S),
    ("sc empty", {"structuredContent": {}}, S),
    ("sc None", {"structuredContent": None}, 0),
    ("sc not mapping", {"structuredContent": 7}, S),
    # --- mapping protocol: dict subclasses and non-dict mappings
    ("CopyOnWriteDict", CopyOnWriteDict({"isError": True}), SIG_IS_ERROR),
    (
        "CopyOnWriteDict nested",
        CopyOnWriteDict({"structuredContent": CopyOnWriteDict({"status_code": 502})}),
        S | st(502),
    ),
    ("UserDict", UserDict({"isError": True}), SIG_IS_ERROR),
]


@pytest.mark.parametrize(("result", "expected"), [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES])
def test_read_signals(result: Any, expected: int) -> None:
    assert read_signals(result) == expected


def test_read_signals_after_copy_on_write_mutation() -> None:
    """A plugin earlier in the chain rewrote the result: the overlay is what counts."""
    result = CopyOnWriteDict({"isError": False})
    result["isError"] = True
    assert read_signals(result) == SIG_IS_ERROR


@pytest.mark.parametrize(
    "result",
    [
        Exploding(),
        {"isError": True, "structuredContent": Exploding()},
        {"structuredContent": Exploding()},
    ],
    ids=["top", "structured-after-isError", "structured"],
)
def test_read_signals_propagates_broken_mapping(result: Any) -> None:
    with pytest.raises(RuntimeError, match="cannot read"):
        read_signals(result)


def test_read_signals_does_not_read_status_after_structured_is_error() -> None:
    class OnlyIsError(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            if key == "isError":
                return True
            raise RuntimeError("status_code must not be read")

    assert read_signals({"structuredContent": OnlyIsError()}) == S | SIG_STRUCTURED_IS_ERROR


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, False), (0, False), ("true", False), (None, False), ([True], False)],
)
def test_extract_bool(value: Any, expected: bool) -> None:
    assert extract_bool(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (503, 503),
        (True, 1),
        (False, 0),
        (-(2**31), -(2**31)),
        (2**31 - 1, 2**31 - 1),
        (2**31, None),
        (-(2**31) - 1, None),
        (10**30, None),
        (503.0, None),
        ("503", None),
        (None, None),
        (Indexable(429), 429),
        (Indexable(2**40), None),
    ],
)
def test_extract_s32(value: Any, expected: int | None) -> None:
    assert extract_s32(value) == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, 0),
        ({"is_error": True}, 1),
        ({"has_structured": True}, 2),
        ({"structured_is_error": True}, 4),
        ({"status_code": 0}, 8),
        ({"status_code": 503}, 8 | (503 << 32)),
        ({"status_code": -1}, 8 | (0xFFFFFFFF << 32)),
        ({"is_error": True, "has_structured": True, "status_code": 2**31 - 1}, 11 | ((2**31 - 1) << 32)),
    ],
)
def test_pack_signals(kwargs: dict[str, Any], expected: int) -> None:
    assert pack_signals(**kwargs) == expected
    assert 0 <= expected < 2**64


@pytest.mark.parametrize("status", [2**31, -(2**31) - 1])
def test_pack_signals_rejects_status_outside_s32(status: int) -> None:
    with pytest.raises(ValueError, match="s32"):
        pack_signals(status_code=status)


TEXT_CASES: list[tuple[str, Any, list[str]]] = [
    ("no content", {}, []),
    ("not a mapping", None, []),
    ("content not a list", {"content": ({"type": "text", "text": "a"},)}, []),
    ("content str", {"content": "text"}, []),
    ("in order", {"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, ["a", "b"]),
    (
        "other types skipped",
        {"content": [{"type": "image", "text": "x"}, {"type": "text", "text": "y"}]},
        ["y"],
    ),
    ("type must be str text", {"content": [{"type": "TEXT", "text": "x"}, {"type": None, "text": "y"}]}, []),
    ("text must be str", {"content": [{"type": "text", "text": 5}, {"type": "text"}]}, []),
    ("non-mapping items", {"content": ["text", 3, None, {"type": "text", "text": "ok"}]}, ["ok"]),
    ("CopyOnWriteList", {"content": CopyOnWriteList([{"type": "text", "text": "z"}])}, ["z"]),
]


@pytest.mark.parametrize(("result", "expected"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES])
def test_collect_texts(result: Any, expected: list[str]) -> None:
    assert collect_texts(result) == expected


def test_collect_texts_copies_str_subclasses() -> None:
    class Tagged(str):
        pass

    texts = collect_texts({"content": [{"type": Tagged("text"), "text": Tagged('{"isError": true}')}]})
    assert texts == ['{"isError": true}']
    assert type(texts[0]) is str


def test_collect_texts_propagates_broken_item() -> None:
    with pytest.raises(RuntimeError, match="cannot read"):
        collect_texts({"content": [Exploding()]})


#: Bits 40..59: the key's handle (WIT ``decide``); it never reads as any other field.
HANDLES = 0xFFFFF << 40


@pytest.mark.parametrize(
    ("decision", "delay", "count", "reason", "need_text"),
    [
        (0, 0, 0, "success", False),
        (400 | (2 << 32) | (1 << 36) | (7 << 40), 400, 2, "retry", False),
        ((3 << 32) | (2 << 36), 0, 3, "exhausted", False),
        (((1 << 32) - 1) | (1 << 32) | (1 << 36) | HANDLES, (1 << 32) - 1, 1, "retry", False),
        ((15 << 32) | (7 << 36), 0, 15, "non-idempotent", False),
        ((4 << 36) | HANDLES, 0, 0, "budget", False),
        (NEED_TEXT, 0, 0, "success", True),
        (UNKNOWN_POLICY, 0, 0, "success", False),
        (UNKNOWN_HANDLE, 0, 0, "success", False),
    ],
)
def test_decision_unpack(decision: int, delay: int, count: int, reason: str, need_text: bool) -> None:
    assert decision_delay_ms(decision) == delay
    assert decision_retry_count(decision) == count
    assert decision_reason(decision) == reason
    assert decision_needs_text(decision) is need_text


@pytest.mark.parametrize("ordinal", [8, 15])
def test_decision_reason_rejects_unknown_ordinal(ordinal: int) -> None:
    with pytest.raises(ValueError, match=f"ordinal {ordinal}"):
        decision_reason(ordinal << 36)
