"""Handles and the success shortcut against an instance that uses neither.

Two instances of the real component on two virtual clocks take the same random walk: three
policies in one instance (one with stateless successes, one checking text content, one with a
retry budget), small per-context caps and short TTLs so entries are evicted, expire and their
slots go to other keys, tenants, and tool names and request ids over the 256 characters the host
lists.  One decides as the plugin does (``decide-held`` by the handle the engine gave, successes
of unlisted keys answered without calling in); the other lists every key and holds no handle, so
every result crosses by key.  Their decisions must be the same but for the handle: any
difference is state read through a handle that names another key now, or a success skipped that
the engine would have counted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from cpex.framework import GlobalContext

from cpex_retry_with_backoff_wasm import INSTANCES, Instance, OpenPolicy
from cpex_retry_with_backoff_wasm.settings import HostSettings
from cpex_retry_with_backoff_wasm.wire import HANDLE_MASK, HANDLE_SHIFT

from .conftest import VirtualClock, err, ok

CONFIGS: list[dict[str, Any]] = [
    {"jitter": False, "max_retries": 4, "max_state_entries": 3, "state_ttl_ms": 1000},
    {
        "jitter": False,
        "max_retries": 2,
        "max_state_entries": 2,
        "state_ttl_ms": 700,
        "check_text_content": True,
    },
    {
        "jitter": False,
        "max_retries": 3,
        "max_state_entries": 2,
        "state_ttl_ms": 500,
        "retry_budget_percent": 20,
        "retry_budget_min_per_sec": 1,
    },
]
RESULTS: list[Callable[[], dict[str, Any]]] = [
    err,
    err,
    ok,
    lambda: {"content": [{"type": "text", "text": '{"isError": true}'}]},
    lambda: err(503),
    lambda: err(400),
]
NOT_THE_HANDLE = ~(HANDLE_MASK << HANDLE_SHIFT)


class EveryKeyNoHandle(dict[Any, int]):
    """A handle table listing every key (no success is answered without the engine) under no
    handle (every result crosses by key)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __bool__(self) -> bool:
        return True

    def get(self, key: Any, default: Any = None) -> int:  # type: ignore[override]
        return 0


class ByKeyOnly:
    """``HeldKeys`` for the instance that decides every result by key."""

    def __init__(self) -> None:
        self.handles = EveryKeyNoHandle()
        self.keys: dict[int, Any] = {}

    def note(self, key: Any, decision: int) -> None:
        pass

    def clear(self) -> None:
        pass

    def __len__(self) -> int:
        return 0


def instance(clock: VirtualClock, *, by_key_only: bool) -> tuple[Instance, list[OpenPolicy]]:
    policies = []
    for i, config in enumerate(CONFIGS):
        settings = HostSettings.read(config)
        held = INSTANCES.attach(settings, clock=clock, seed=(1, 2))
        policies.append(held.open(f"p{i}", config, None, settings.errors))
    if by_key_only:
        held._held = ByKeyOnly()  # type: ignore[assignment]
    return held, policies


@pytest.mark.parametrize("seed", range(12))
def test_handles_and_the_shortcut_decide_as_the_key_would(seed: int) -> None:
    rnd = random.Random(seed)
    clocks = VirtualClock(), VirtualClock()
    (fast, fast_policies), (slow, slow_policies) = (
        instance(clocks[0], by_key_only=False),
        instance(clocks[1], by_key_only=True),
    )
    assert fast is not slow
    tools = ["t", "u", "x" * 300]
    request_ids = ["r1", "r2", "r3", "R" * 300]
    tenants = [None, "a", "b"]
    for step in range(400):
        roll = rnd.random()
        if roll < 0.05:
            ms = rnd.choice([100, 300, 600, 1100])
            for clock in clocks:
                clock.advance_ms(ms)
            continue
        if roll < 0.07:
            fast.evict_expired()
            slow.evict_expired()
            continue
        p = rnd.randrange(len(CONFIGS))
        tool, rid, tenant = rnd.choice(tools), rnd.choice(request_ids), rnd.choice(tenants)
        result = rnd.choice(RESULTS)()
        got = fast.decide(fast_policies[p], tool, GlobalContext(request_id=rid, tenant_id=tenant), result)
        want = slow.decide(slow_policies[p], tool, GlobalContext(request_id=rid, tenant_id=tenant), result)
        assert got & NOT_THE_HANDLE == want & NOT_THE_HANDLE, (step, p, tool[:5], rid[:5], tenant, result)
