"""Issue 12 §1 and §2: what crosses into the guest is bounded, and no single input wipes
another key's retry state.

``collect_texts`` reads at most ``wire.TEXT_MAX_ITEMS`` text items and ``wire.TEXT_MAX_CHARS``
characters of them (the item reaching the bound is cut there); each key part crosses as itself
or as a fixed-size digest (``keys``).  Through the real cpex PluginManager and the real .wasm: a
victim key with two failures keeps its count across each hostile result on another key (on
17a8224 each of them faulted the instance and the victim's next failure started over).

cpex's PluginManager refuses a result whose ``str`` exceeds 1 MB before any plugin sees it
(``PayloadSizeError``): the bigger results are handed to the same plugin object's hook
directly, as a framework without that check would; the keys and a result under the limit go
through the manager.  The big inputs are built once per module and shared (lists repeat one
item object).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.keys import KEY_PART_MAX_CHARS, context_part, user_identity_part, wire_key
from cpex_retry_with_backoff_wasm.signals import collect_texts
from cpex_retry_with_backoff_wasm.wire import (
    IDENTITY_LEN_SHIFT,
    PART_LEN_BITS,
    SERVER_LEN_SHIFT,
    TENANT_LEN_SHIFT,
    TEXT_MAX_CHARS,
    TEXT_MAX_ITEMS,
    TOOL_LEN_SHIFT,
)

from .conftest import PLUGIN_NAME, err

MIB = 1024 * 1024
CONFIG = {"jitter": False, "check_text_content": True, "max_retries": 5}


class Exploding:
    """A content item that must never be read."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("read past the bound")


def item(text: Any) -> dict[str, Any]:
    return {"type": "text", "text": text}


def result(*items: Any, is_error: bool = False) -> dict[str, Any]:
    return {"content": list(items), "isError": is_error}


# --------------------------------------------------------------------------- collect_texts
def test_items_after_the_item_bound_are_not_read() -> None:
    items = [item(f"{i}") for i in range(TEXT_MAX_ITEMS)]
    texts = collect_texts(result(*items, Exploding()))
    assert texts == [f"{i}" for i in range(TEXT_MAX_ITEMS)]


def test_non_text_items_do_not_count() -> None:
    odd = [{"type": "image", "text": "x"}, {"type": "text", "text": 5}, None, {"type": "text"}]
    items = [item("a")] * (TEXT_MAX_ITEMS - 1) + odd + [item("b"), Exploding()]
    assert collect_texts(result(*items)) == ["a"] * (TEXT_MAX_ITEMS - 1) + ["b"]


def test_the_item_reaching_the_char_bound_is_cut_and_nothing_after_is_read() -> None:
    head = "h" * 1000
    tail = "t" * TEXT_MAX_CHARS
    texts = collect_texts(result(item(head), item(tail), Exploding()))
    assert texts == [head, "t" * (TEXT_MAX_CHARS - len(head))]
    assert sum(map(len, texts)) == TEXT_MAX_CHARS


def test_an_item_ending_exactly_at_the_bound_is_whole_and_last() -> None:
    exact = "e" * TEXT_MAX_CHARS
    texts = collect_texts(result(item(exact), Exploding()))
    assert texts == [exact]
    assert texts[0] is exact


def test_characters_not_bytes_are_counted() -> None:
    wide = "😀" * (TEXT_MAX_CHARS + 5)
    assert collect_texts(result(item(wide))) == ["😀" * TEXT_MAX_CHARS]


def test_texts_with_lone_surrogates_are_skipped_and_take_nothing_of_the_bounds() -> None:
    bad = item("\ud800" + "b" * (TEXT_MAX_CHARS - 10))
    good = "g" * TEXT_MAX_CHARS
    assert collect_texts(result(bad, item(good))) == [good]
    items = [item("\udfff")] * 5000 + [item("ok")]
    assert collect_texts(result(*items)) == ["ok"]


def test_only_what_crosses_is_checked_for_surrogates() -> None:
    # The cut item is judged on what crosses: a lone surrogate after the cut is never read.
    text = "x" * TEXT_MAX_CHARS + "\ud800"
    assert collect_texts(result(item(text))) == ["x" * TEXT_MAX_CHARS]


def test_a_huge_str_subclass_is_cut_without_its_overrides() -> None:
    class Hostile(str):
        def __len__(self) -> int:
            raise RuntimeError("__len__")

        def __getitem__(self, key: Any) -> Any:
            raise RuntimeError("__getitem__")

        def __str__(self) -> str:
            raise RuntimeError("__str__")

    texts = collect_texts(result(item(Hostile("s" * (TEXT_MAX_CHARS + 1)))))
    assert texts == ["s" * TEXT_MAX_CHARS]
    assert type(texts[0]) is str


# --------------------------------------------------------------------------- key parts
@pytest.mark.parametrize(
    "parts",
    [
        ("", "", "", "t" * 16 * MIB, "r"),
        ("", "", "", "t", "r" * 16 * MIB),
        ("", "", "", "é" * MIB, "\ud800" * MIB),
        # As the instance reads them: the context's parts and the identity already key parts.
        (
            context_part("a" * 16 * MIB),
            context_part("s" * 16 * MIB),
            user_identity_part("u" * 16 * MIB),
            "t",
            "r",
        ),
    ],
    ids=["16MiB-tool", "16MiB-rid", "1M-chars-each", "16MiB-context-and-identity"],
)
def test_a_key_crosses_in_bounded_size(parts: tuple[str, str, str, str, str]) -> None:
    key, packed = wire_key(*parts)
    shifts = (TENANT_LEN_SHIFT, SERVER_LEN_SHIFT, IDENTITY_LEN_SHIFT, TOOL_LEN_SHIFT)
    lengths = [(packed >> shift) & ((1 << PART_LEN_BITS) - 1) for shift in shifts]
    assert all(n <= KEY_PART_MAX_CHARS for n in lengths)
    assert len(key.decode()) - sum(lengths) <= KEY_PART_MAX_CHARS
    assert len(key) <= 5 * 4 * KEY_PART_MAX_CHARS


# --------------------------------------------------------------------------- a victim's state
#: One hostile input: the calls it makes, each as (tool, request id, result, its decision).
Steps = Callable[[], Iterator[tuple[str, str, Any, int]]]


@pytest.fixture(scope="module")
def hostile() -> dict[str, Steps]:
    """Each hostile input by name; big strings are built once and keys derived one at a time."""
    pad = "x" * (32 * MIB)
    marker_text = json.dumps({"isError": True, "pad": pad})
    small = json.dumps({"ok": True, "pad": "p" * 80})  # ~100 B, no failure marker
    assert 90 <= len(small) <= 110
    many = [item(small)] * 10**6
    big = "k" * (16 * MIB)

    def once(tool: str, rid: str, res: Any, decision: int) -> Steps:
        return lambda: iter([(tool, rid, res, decision)])

    def keys(make: Callable[[int], tuple[str, str]]) -> Steps:
        # Four distinct 16 MiB keys, each failing once (on 17a8224 the guest kept each key in
        # full and ran out of memory at the third).
        return lambda: ((*make(i), err(), 200) for i in range(4))

    return {
        # The native plugin retries these: the marker is complete before the cut.
        "32MiB-isError-text": once("t", "hostile", result(item(marker_text)), 200),
        "900kB-isError-text": once("t", "hostile", result(item(marker_text[: 900 * 1000] + '"}')), 200),
        "1e6-text-items": once("t", "hostile", {"content": many, "isError": False}, 0),
        "1e6-text-items-marker-first": once(
            "t", "hostile", {"content": [item('{"isError": true}'), *many], "isError": False}, 200
        ),
        "16MiB-request-ids": keys(lambda i: ("t", f"{i}:{big}")),
        "16MiB-tool-names": keys(lambda i: (f"{i}:{big}", "hostile")),
    }


HOSTILE = [
    "32MiB-isError-text",
    "900kB-isError-text",
    "1e6-text-items",
    "1e6-text-items-marker-first",
    "16MiB-request-ids",
    "16MiB-tool-names",
]
#: Results cpex's manager would refuse (over its 1 MB limit): given to the plugin's hook.
PAST_THE_MANAGER = {"32MiB-isError-text", "1e6-text-items", "1e6-text-items-marker-first"}


async def post(manager: Any, tool: str, rid: str, res: Any, *, direct: bool = False) -> int:
    payload = ToolPostInvokePayload(name=tool, result=res)
    context = GlobalContext(request_id=rid)
    if direct:
        out = await manager.get_plugin(PLUGIN_NAME).tool_post_invoke(
            payload, PluginContext(global_context=context)
        )
    else:
        out, _ = await manager.invoke_hook("tool_post_invoke", payload, context)
    assert out.continue_processing
    return int(out.retry_delay_ms)


def instance_of(manager: Any) -> Any:
    plugin = manager.get_plugin(PLUGIN_NAME)
    assert isinstance(plugin, RetryWithBackoffPlugin)
    return plugin.instance


@pytest.mark.parametrize("name", HOSTILE)
async def test_a_hostile_input_gets_its_answer_and_the_victim_keeps_its_count(
    manager_factory: Any, hostile: dict[str, Steps], name: str
) -> None:
    manager = await manager_factory(CONFIG)
    assert [await post(manager, "t", "victim", err()) for _ in range(2)] == [200, 400]
    for tool, rid, res, decision in hostile[name]():
        assert await post(manager, tool, rid, res, direct=name in PAST_THE_MANAGER) == decision
    assert await post(manager, "t", "victim", err()) == 800, "the victim's retry state was lost"
    assert instance_of(manager).fault_count == 0


async def test_a_huge_key_keeps_its_own_budget(manager_factory: Any) -> None:
    manager = await manager_factory(CONFIG)
    big = "k" * (16 * MIB)
    for tool, rid in ((big, "r"), ("t", big)):
        assert [await post(manager, tool, rid, err()) for _ in range(3)] == [200, 400, 800]
        assert await post(manager, tool, rid + "x", err()) == 200, "a longer request id is another key"
    assert instance_of(manager).fault_count == 0
