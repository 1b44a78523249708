"""Hostile inputs through the real plugin (issue 7, items 2 and 3).

Everything a tool, a client or an operator can put in front of ``tool_post_invoke``: megabyte
texts, JSON nested far past any parser's comfort, ten thousand content items, strings Python
allows but UTF-8 does not (lone surrogates), megabyte tool names and request ids, results that
are not mappings at all, and mappings that raise.  Each gets a defined answer (a retry with the
policy's delay, or no retry) within the default fuel budget and memory cap, and no fault:
``instance.fault_count`` stays 0 wherever no fault is expected.  A ``__getitem__`` that raises
anything but ``KeyError``/``TypeError`` propagates, as in the native plugin (``mapping_get`` in
cpex-retry-with-backoff 0.3.11's ``plugin.rs``).

State exhaustion: unique request ids failing once never hold more than ``max_state_entries``
entries, the oldest go first, and the memory cap is never hit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.settings import DEFAULT_FUEL

from .conftest import direct_plugin as plugin
from .conftest import err, ok

MIB = 1024 * 1024
NO_JITTER = {"jitter": False}
CHECK_TEXT = {"jitter": False, "check_text_content": True}


async def delay(p: RetryWithBackoffPlugin, tool: str, rid: str, result: Any, **context_fields: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid, **context_fields))
    res = await p.tool_post_invoke(payload, context)
    assert res.continue_processing
    assert res.modified_payload is None
    value: int = res.retry_delay_ms
    return value


def texts(*items: str, is_error: bool = False) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t} for t in items], "isError": is_error}


def padded(marker: dict[str, Any], size: int) -> str:
    """A JSON object of about ``size`` bytes carrying ``marker``."""
    return json.dumps({**marker, "pad": "x" * size})


def nested(depth: int, inner: str = "1") -> str:
    return '{"isError": true, "x": ' + "[" * depth + inner + "]" * depth + "}"


# --------------------------------------------------------------------------- big texts
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (padded({"isError": True}, MIB), 200),
        (padded({"status_code": 503}, MIB), 200),
        (padded({"status_code": 404}, MIB), 0),
        ("x" * MIB, 0),
        pytest.param("{" + " " * MIB, 0),  # starts like an object, never ends
        # The engine reads TEXT_MAX_CHARS characters of text: a marker past them is not read.
        pytest.param(" " * MIB + '{"isError": true}', 0),
        pytest.param('{"isError": true, "s": "' + "\\u00e9" * (MIB // 6) + '"}', 200),
        ("é✓😀" * (MIB // 9), 0),
        ("{" + " " * 64 * 1024, 0),
        (" " * 64 * 1024 + '{"isError": true}', 200),
    ],
    ids=[
        "1MiB-isError",
        "1MiB-503",
        "1MiB-404",
        "1MiB-prose",
        "1MiB-open-brace",
        "1MiB-ws-then-marker",
        "1MiB-escapes",
        "1MiB-multibyte",
        "64KiB-open-brace",
        "64KiB-ws-then-marker",
    ],
)
async def test_megabyte_text_items(text: str, expected: int) -> None:
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", texts(text)) == expected
    assert p.instance.fault_count == 0


async def test_many_megabyte_text_items_in_one_result() -> None:
    p = plugin(CHECK_TEXT)
    items = [padded({"isError": True}, MIB)] + ["y" * MIB] * 7
    assert await delay(p, "t", "r", texts(*items)) == 200
    assert await delay(p, "t", "r", texts(*items)) == 400
    # Past TEXT_MAX_CHARS nothing is read: a marker behind a megabyte of prose is not seen.
    assert await delay(p, "t", "r2", texts(*items[1:], items[0])) == 0
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- deep nesting
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (nested(100), 200),  # within serde_json's 128 levels: still a marker
        (nested(1_000), 0),  # beyond: not JSON, so not a marker -- and no stack overflow
        (nested(1_000_000), 0),
        (nested(200_000, '{"a": 1}'), 0),
        ('{"isError": true, "x": ' + "[" * 1_000_000, 0),  # unterminated
        ("[" * MIB, 0),
        ('{"a":' * 200_000 + "1" + "}" * 200_000, 0),
    ],
    ids=[
        "depth-100",
        "depth-1000",
        "depth-1e6",
        "depth-2e5-objects",
        "unterminated-1e6",
        "1MiB-brackets",
        "objects-2e5",
    ],
)
async def test_deeply_nested_json_in_text_is_stack_safe(text: str, expected: int) -> None:
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", texts(text)) == expected
    assert p.instance.fault_count == 0


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_structured_content_is_never_walked(depth: int) -> None:
    """The host reads two keys of structuredContent; nesting below them is never visited."""
    deep: Any = 503
    for _ in range(depth):
        deep = {"x": deep}
    p = plugin(NO_JITTER)
    result = {"isError": True, "structuredContent": {"status_code": 503, "nested": deep}}
    assert await delay(p, "t", "r", result) == 200
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- many items
@pytest.mark.parametrize(
    ("count", "json_items", "last", "expected"),
    [
        # The engine reads TEXT_MAX_ITEMS (1024) text items: a marker past them is not read.
        pytest.param(10_000, True, '{"status_code": 502}', 0),
        pytest.param(10_000, True, "plain", 0),
        (10_000, False, '{"status_code": 502}', 0),
        (10_000, False, "plain", 0),
        (1_000, True, '{"status_code": 502}', 200),
        (1_024, True, '{"status_code": 502}', 200),
        (1_025, False, '{"status_code": 502}', 0),
    ],
    ids=[
        "10k-json-marker-last",
        "10k-json-no-marker",
        "10k-prose-marker-last",
        "10k-prose-no-marker",
        "1k-json-marker-last",
        "marker-is-the-1024th",
        "marker-is-the-1025th",
    ],
)
async def test_ten_thousand_content_items(count: int, json_items: bool, last: str, expected: int) -> None:
    p = plugin(CHECK_TEXT)
    items: list[Any] = [
        {"type": "text", "text": f'{{"status_code": {200 + i % 3}}}' if json_items else f"line {i}"}
        for i in range(count - 1)
    ]
    items.append({"type": "text", "text": last})
    assert await delay(p, "t", "r", {"content": items, "isError": False}) == expected
    assert p.instance.fault_count == 0


async def test_ten_thousand_non_text_and_malformed_items() -> None:
    odd: list[Any] = [None, 1, "text", [], {"type": "image"}, {"type": "text"}, {"type": "text", "text": 5}]
    items = [odd[i % len(odd)] for i in range(10_000)]
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", {"content": items}) == 0
    items.append({"type": "text", "text": '{"isError": true}'})
    assert await delay(p, "t", "r", {"content": items}) == 200
    assert p.instance.fault_count == 0


async def test_ten_thousand_items_without_text_checks_are_not_read() -> None:
    p = plugin(NO_JITTER)
    result = {"content": [{"type": "text", "text": '{"isError": true}'}] * 10_000, "isError": False}
    assert await delay(p, "t", "r", result) == 0
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- lone surrogates
@pytest.mark.parametrize(
    ("tool", "rid"),
    [("\ud800", "r"), ("t", "\udfff"), ("\udc80tool\ud83d", "req\ud800-1"), ("é\ud800✓", "😀\udbff")],
    ids=["tool", "rid", "both", "mixed-with-valid-non-ascii"],
)
async def test_lone_surrogates_in_keys_keep_their_budget(tool: str, rid: str) -> None:
    p = plugin(NO_JITTER)
    assert [await delay(p, tool, rid, err()) for _ in range(3)] == [200, 400, 0]
    assert await delay(p, tool, rid, err()) == 200
    assert await delay(p, tool, rid, err(404)) == 0  # a non-retriable failure reaches the engine
    assert await delay(p, tool, rid, err()) == 200
    assert await delay(p, "t", "r", err()) == 200, "a surrogate key shared state with a plain one"
    assert p.instance.fault_count == 0


@pytest.mark.parametrize(("tool", "rid"), [("\ud800", "r"), ("t", "\udfff")], ids=["tool", "rid"])
async def test_plain_success_clears_a_lone_surrogate_key(tool: str, rid: str) -> None:
    p = plugin(NO_JITTER)
    assert await delay(p, tool, rid, err()) == 200
    assert await delay(p, tool, rid, ok()) == 0
    assert await delay(p, tool, rid, err()) == 200, "the success did not clear the key"


async def test_lone_surrogate_keys_stay_apart() -> None:
    p = plugin(NO_JITTER)
    assert await delay(p, "t", "\ud800", err()) == 200
    assert await delay(p, "t", "\ud801", err()) == 200
    assert await delay(p, "\ud800", "", err()) == 200
    assert await delay(p, "t", "\ud800", err()) == 400
    assert p.instance.fault_count == 0


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (['{"isError": true, "s": "\ud800"}'], 0),  # cannot cross as UTF-8: skipped, as natively
        (["\udfff", '{"isError": true}'], 200),  # the other items still count
        (['{"status_code": 503}', "x\ud800" * 1000], 200),
    ],
    ids=["marker-with-surrogate", "surrogate-then-marker", "marker-then-surrogates"],
)
async def test_lone_surrogates_in_texts(items: list[str], expected: int) -> None:
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", texts(*items)) == expected
    assert await delay(p, "t\ud800", "r\udfff", texts(*items)) == expected
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- huge keys
@pytest.mark.parametrize(
    ("tool", "rid"),
    [
        pytest.param("t" * MIB, "r"),
        pytest.param("t", "r" * MIB),
        pytest.param("é" * MIB, "✓" * MIB),
        pytest.param("t" * MIB, "\ud800" * MIB),
        pytest.param("t", "r" * 256 * 1024),
        ("t" * 64 * 1024, "r"),
        ("t", "r" * 64 * 1024),
        ("é" * 16 * 1024, "✓" * 16 * 1024),
        ("t", "\ud800" * 8 * 1024),
    ],
    ids=[
        "1MiB-tool",
        "1MiB-rid",
        "1M-chars-each",
        "1M-surrogates-rid",
        "256KiB-rid",
        "64KiB-tool",
        "64KiB-rid",
        "16K-chars-each",
        "8K-surrogates-rid",
    ],
)
async def test_megabyte_tool_names_and_request_ids(tool: str, rid: str) -> None:
    p = plugin(NO_JITTER)
    assert [await delay(p, tool, rid, err(503)) for _ in range(3)] == [200, 400, 0]
    assert await delay(p, tool, rid, err()) == 200
    assert await delay(p, tool, rid, err(404)) == 0
    assert await delay(p, tool, rid + "x", err()) == 200, "a longer request id is another key"
    assert await delay(p, "t", "r", err()) == 200
    assert p.instance.fault_count == 0
    assert p.policy.state_count() == 2


@pytest.mark.parametrize("field", ["tenant_id", "server_id", "user"])
@pytest.mark.parametrize(
    "value",
    ["x" * MIB, "é" * 64 * 1024, "\ud800" * 8 * 1024, "#sha256:" + "0" * 64],
    ids=["1MiB", "64K-chars", "8K-surrogates", "digest-lookalike"],
)
async def test_huge_context_parts_keep_their_own_state(field: str, value: str) -> None:
    """The gateway context's tenant and server, and the user under ``key_scope: user``, are key
    parts too: any length or content crosses, and each keeps its own state."""
    p = plugin({**NO_JITTER, "key_scope": "user"})
    assert [await delay(p, "t", "r", err(503), **{field: value}) for _ in range(3)] == [200, 400, 0]
    assert await delay(p, "t", "r", err(), **{field: value}) == 200
    assert await delay(p, "t", "r", err(), **{field: value + "x"}) == 200, "a longer part is another key"
    assert await delay(p, "t", "r", err(), **{field: value[:-1]}) == 200, "a shorter part is another key"
    assert await delay(p, "t", "r", err()) == 200
    assert await delay(p, "t", "r", err(), **{field: value}) == 400
    assert p.instance.fault_count == 0
    assert p.policy.state_count() == 4


# --------------------------------------------------------------------------- odd results
class Attrs:
    """Has the right attributes but is not subscriptable."""

    isError = True
    structuredContent = {"status_code": 503}  # noqa: RUF012


class Indexable:
    """Subscriptable by anything, answering like a failed result."""

    def __getitem__(self, key: Any) -> Any:
        return {"isError": True, "structuredContent": None}.get(key, True)


class Seq(list[Any]):
    """A list whose str indexing raises TypeError like any list."""


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, 0),
        ([{"isError": True}], 0),
        (Seq([True]), 0),
        ("isError", 0),
        (b"isError", 0),
        (42, 0),
        (3.5, 0),
        (True, 0),
        ({"isError"}, 0),
        (object(), 0),
        (Attrs(), 0),
        (Indexable(), 200),
        ({"isError": "true"}, 0),
        ({"isError": 1}, 0),
        ({"isError": True, "structuredContent": "503"}, 200),
        ({"isError": True, "structuredContent": [503]}, 200),
        ({"isError": True, "structuredContent": {"status_code": 2**40}}, 200),
        ({"isError": True, "structuredContent": {"status_code": 404.0}}, 200),
        ({"structuredContent": {"status_code": True}}, 0),
        ({"content": "not a list", "isError": False}, 0),
    ],
    ids=repr,
)
async def test_results_of_any_shape_get_a_defined_answer(result: Any, expected: int) -> None:
    p = plugin(NO_JITTER)
    assert await delay(p, "t", "r", result) == expected
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- raising mappings
class Raising(Mapping[str, Any]):
    """A mapping whose ``__getitem__`` raises ``exc`` for ``key`` and reads ``data`` otherwise."""

    def __init__(self, data: dict[str, Any], key: str, exc: BaseException) -> None:
        self._data, self._key, self._exc = data, key, exc
        self.reads: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.reads.append(key)
        if key == self._key:
            raise self._exc
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class MissingKey(KeyError):
    pass


@pytest.mark.parametrize(
    "exc",
    [KeyError("isError"), MissingKey("x"), TypeError("unhashable")],
    ids=["KeyError", "subclass", "TypeError"],
)
@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"isError": True}, "isError", 0),  # isError unreadable: absent
        ({"isError": True}, "structuredContent", 200),  # no structured content: a failure
        ({"structuredContent": {"isError": True}}, "structuredContent", 0),
        ({"isError": False, "content": [{"type": "text", "text": '{"isError": true}'}]}, "content", 0),
    ],
    ids=["isError", "structuredContent-after-isError", "structuredContent", "content"],
)
async def test_getitem_key_and_type_errors_read_as_absent(
    exc: BaseException, data: dict[str, Any], key: str, expected: int
) -> None:
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", Raising(data, key, exc)) == expected
    assert p.instance.fault_count == 0


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("broken"),
        RuntimeError("broken"),
        IndexError("broken"),
        LookupError("broken"),
        ZeroDivisionError(),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"isError": True}, "isError"),
        ({"isError": True}, "structuredContent"),
        ({"structuredContent": {}}, "structuredContent"),
        ({"isError": False, "content": [{"type": "text", "text": "x"}]}, "content"),
    ],
    ids=["isError", "structuredContent-after-isError", "structuredContent", "content"],
)
async def test_getitem_other_exceptions_propagate(exc: BaseException, data: dict[str, Any], key: str) -> None:
    p = plugin(CHECK_TEXT)
    assert await delay(p, "t", "r", err()) == 200
    with pytest.raises(type(exc)) as raised:
        await delay(p, "t", "r", Raising(data, key, exc))
    assert raised.value is exc
    assert p.instance.fault_count == 0
    assert await delay(p, "t", "r", err()) == 400, "the raising read changed the key's state"


async def test_nested_mapping_that_raises_propagates() -> None:
    inner = Raising({"isError": True}, "status_code", RuntimeError("nested"))
    p = plugin(NO_JITTER)
    with pytest.raises(RuntimeError, match="nested"):
        await delay(p, "t", "r", {"isError": True, "structuredContent": inner})
    absent = Raising({}, "status_code", KeyError("status_code"))
    assert await delay(p, "t", "r", {"isError": True, "structuredContent": absent}) == 200
    assert inner.reads == ["status_code"]
    assert p.instance.fault_count == 0


# --------------------------------------------------------------------------- state exhaustion
async def test_unique_request_ids_stay_within_the_bound_oldest_first() -> None:
    """10^5 unique request ids failing once against a bound of 10^4, under a memory cap far
    below the default: the bound holds, the newest ids keep their budget, the oldest went first,
    and the cap is never hit.  (10^6 ids: ``make soak``; natively, guest/tests/properties.)"""
    cap, total = 10_000, 100_000
    p = plugin(
        {
            "jitter": False,
            "max_state_entries": cap,
            "wasm_max_memory_bytes": 16 * MIB,
            "wasm_fuel": DEFAULT_FUEL,
        }
    )
    rid = "{:08x}-0000-4000-8000-{:012x}".format
    for i in range(total):
        assert await delay(p, "weather-get-forecast", rid(1, i), err(503)) == 200
        if i % 25_000 == 0:
            assert p.policy.state_count() <= cap
    assert p.policy.state_count() == cap
    # Survivors keep their count (a failure moves a key to the newest end, evicting nothing).
    assert await delay(p, "weather-get-forecast", rid(1, total - cap), err(503)) == 400
    assert await delay(p, "weather-get-forecast", rid(1, total - 1), err(503)) == 400
    # Gone: it starts a fresh budget.
    assert await delay(p, "weather-get-forecast", rid(1, total - cap - 1), err(503)) == 200
    assert p.policy.state_count() == cap
    assert p.instance.fault_count == 0
