"""Model-based concurrency test (issue 7, item 5).

Many asyncio tasks, on the test's event loop and on event loops in several threads, drive random
sequences of tool results through one plugin at the same time (jitter off).  Two checks:

* every key owned by one driver sees exactly the decisions a sequential model of the documented
  policy gives for that key's own sequence, whatever the interleaving with other keys;
* keys shared by every driver receive only failures, so their decisions do not depend on the
  order in which the drivers win the lock: the multiset of delays must equal the model's run of
  as many failures.  A lost or doubled update under contention shows up as a different multiset.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginConfig, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin

from .conftest import PLUGIN_KIND, PLUGIN_NAME

CONFIG: dict[str, Any] = {
    "jitter": False,
    "max_retries": 2,
    "backoff_base_ms": 100,
    "max_backoff_ms": 1_000,
    "tool_overrides": {
        "b": {"max_retries": 4, "backoff_base_ms": 50, "max_backoff_ms": 300},
        "txt": {"check_text_content": True, "max_retries": 1},
    },
}
#: tool -> (max_retries, base, max)
POLICY = {"a": (2, 100, 1_000), "b": (4, 50, 300), "txt": (1, 100, 1_000)}
RETRY_ON = {429, 500, 502, 503, 504}

TASKS_ON_MAIN_LOOP = 12
THREADS, TASKS_PER_THREAD = 4, 4
STEPS = 150
SHARED_KEYS = [("a", "shared-0"), ("b", "shared-1")]
SHARED_STEPS = 40  # failures per driver per shared key


def text(body: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": body}], "isError": False}


#: (result, kind) where kind is "fail", "clear" (success or non-retriable), per tool family.
RESULTS: list[tuple[Any, str]] = [
    ({"isError": True}, "fail"),
    ({"isError": True, "structuredContent": {"status_code": 503}}, "fail"),
    ({"isError": True, "structuredContent": {"status_code": 404}}, "clear"),  # non-retriable
    ({"structuredContent": {"status_code": 429}}, "fail"),
    ({"structuredContent": {"isError": True}}, "fail"),
    ({"structuredContent": {"status_code": 200}}, "clear"),
    ({"isError": False, "content": []}, "clear"),
]
TEXT_RESULTS: list[tuple[Any, str]] = [
    (text('{"status_code": 502}'), "fail"),
    (text('{"isError": true}'), "fail"),
    (text("all good"), "clear"),
    (text('{"status_code": 404}'), "clear"),
]


class Model:
    """The documented policy, sequentially, per key."""

    def __init__(self) -> None:
        self.failures: dict[tuple[str, str], int] = {}

    @classmethod
    def replay(cls, steps: list[tuple[str, str, Any, str]]) -> Model:
        model = cls()
        for tool, rid, _result, kind in steps:
            model.step(tool, rid, kind)
        return model

    def step(self, tool: str, rid: str, kind: str) -> int:
        key = (tool, rid)
        if kind == "clear":
            self.failures.pop(key, None)
            return 0
        budget, base, cap = POLICY[tool]
        n = self.failures.get(key, 0) + 1
        if n > budget:
            self.failures.pop(key, None)
            return 0
        self.failures[key] = n
        return int(min(base * 2 ** (n - 1), cap))


def script(driver: int, seed: int) -> list[tuple[str, str, Any, str]]:
    """A random sequence of (tool, request id, result, kind) on keys only this driver uses."""
    rng = random.Random(seed * 10_007 + driver)
    steps = []
    for _ in range(STEPS):
        tool = rng.choice(("a", "b", "txt"))
        rid = f"d{driver}-r{rng.randrange(4)}"
        result, kind = rng.choice(TEXT_RESULTS if tool == "txt" else RESULTS)
        steps.append((tool, rid, result, kind))
    return steps


async def hook(plugin: RetryWithBackoffPlugin, tool: str, rid: str, result: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res = await plugin.tool_post_invoke(payload, PluginContext(global_context=GlobalContext(request_id=rid)))
    delay: int = res.retry_delay_ms
    return delay


async def drive(plugin: RetryWithBackoffPlugin, driver: int, seed: int) -> tuple[list[int], list[int]]:
    """Run this driver's script interleaved with failures on the shared keys."""
    own: list[int] = []
    shared: list[int] = []
    steps = script(driver, seed)
    rng = random.Random(seed + driver)
    shared_left = [SHARED_STEPS] * len(SHARED_KEYS)
    for tool, rid, result, _kind in steps:
        own.append(await hook(plugin, tool, rid, result))
        k = rng.randrange(len(SHARED_KEYS))
        if shared_left[k] and rng.random() < 0.5:
            shared_left[k] -= 1
            shared.append(await hook(plugin, *SHARED_KEYS[k], {"isError": True}))
        await asyncio.sleep(0)
    for k, left in enumerate(shared_left):
        for _ in range(left):
            shared.append(await hook(plugin, *SHARED_KEYS[k], {"isError": True}))
    return own, shared


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_drivers_match_the_sequential_model(seed: int) -> None:
    plugin = RetryWithBackoffPlugin(
        PluginConfig(name=PLUGIN_NAME, kind=PLUGIN_KIND, hooks=["tool_post_invoke"], config=CONFIG)
    )
    drivers_in_threads = [
        list(
            range(TASKS_ON_MAIN_LOOP + t * TASKS_PER_THREAD, TASKS_ON_MAIN_LOOP + (t + 1) * TASKS_PER_THREAD)
        )
        for t in range(THREADS)
    ]
    got: dict[int, tuple[list[int], list[int]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)

    def thread_main(drivers: list[int]) -> None:
        async def run() -> None:
            results = await asyncio.gather(*(drive(plugin, d, seed) for d in drivers))
            got.update(zip(drivers, results, strict=True))

        try:
            start.wait()
            asyncio.run(run())
        except BaseException as exc:  # pragma: no cover - asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(ds,)) for ds in drivers_in_threads]
    for t in threads:
        t.start()
    start.wait()
    main = range(TASKS_ON_MAIN_LOOP)
    results = await asyncio.gather(*(drive(plugin, d, seed) for d in main))
    got.update(zip(main, results, strict=True))
    for t in threads:
        t.join()
    assert not errors

    drivers = TASKS_ON_MAIN_LOOP + THREADS * TASKS_PER_THREAD
    assert sorted(got) == list(range(drivers))
    for d in range(drivers):
        model = Model()
        want = [model.step(tool, rid, kind) for tool, rid, _result, kind in script(d, seed)]
        assert got[d][0] == want, f"driver {d}"

    # Shared keys: the decisions as a multiset are order-independent.
    failures_per_key = drivers * SHARED_STEPS
    model = Model()
    want_shared: Counter[int] = Counter()
    for tool, rid in SHARED_KEYS:
        want_shared.update(model.step(tool, rid, "fail") for _ in range(failures_per_key))
    got_shared: Counter[int] = Counter()
    for _own, shared in got.values():
        got_shared.update(shared)
    assert got_shared == want_shared
    assert plugin.instance.fault_count == 0
    # The engine expired and bounded nothing here: the keys the host lists by handle are
    # exactly those holding state, as the models say.
    holding = sum(len(Model.replay(script(d, seed)).failures) for d in range(drivers))
    holding += len(model.failures)
    assert plugin.policy.state_count() == holding
    assert plugin.instance.held_count == holding
