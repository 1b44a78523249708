"""Memory the engine's byte budget must see, and hot reload of a full state (issue 23; found
by an adversarial review).

The engine bounds retry state by ``init``'s memory cap: of what the instance's own 4 MiB leave,
a quarter for live state (each entry and context counted with its allocation and the growth of
the lists that hold it), an eighth for policies, a sixteenth for retry budgets; the rest is
headroom for what is not counted live: slots freed but kept (the slab never shrinks) and the
snapshot a reload writes out and reads back row by row.  The inputs are request ids, gateway
context values, user identities and tool names; an out-of-memory trap would rebuild the
instance and lose every tenant's retry state, and a reload that cannot be carried out would
keep a new build from ever being picked up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from cpex.framework import GlobalContext

from cpex_retry_with_backoff_wasm import OpenPolicy
from cpex_retry_with_backoff_wasm.model import RetryEngineLoadError
from cpex_retry_with_backoff_wasm.wire import HANDLE_MASK, HANDLE_SHIFT

from .conftest import VirtualClock, direct_plugin, err, ok
from .test_instance import open_policy
from .test_one_instance import rebuilt

MIB = 1024 * 1024


def fail(policy: OpenPolicy, rid: str, *, tool: str = "tool", **context: Any) -> int:
    return policy.instance.decide(policy, tool, GlobalContext(request_id=rid, **context), err())


def capped(memory_mib: int, max_state_entries: int) -> OpenPolicy:
    """A policy under a memory cap of ``memory_mib`` whose entries never expire, so only the
    bounds drop them."""
    return open_policy(
        {
            "jitter": False,
            "wasm_max_memory_bytes": memory_mib * MIB,
            "max_state_entries": max_state_entries,
            "state_ttl_ms": 10**9,
        },
        clock=VirtualClock(),
        seed=(1, 2),
    )


def fill_to_the_instance_bound(policy: OpenPolicy, *, tenants: int = 32, step: int = 5000) -> int:
    """Unique request ids in ``tenants`` contexts until the instance's byte bound starts dropping
    entries; returns the entries held then."""
    n = 0
    while True:
        for _ in range(step):
            fail(policy, f"00000000-0000-4000-8000-{n:012d}", tenant_id=f"team-{n % tenants}")
            n += 1
        held = policy.instance.state_count()
        if held < n:
            return held


def test_reload_of_a_state_at_the_bound_keeps_the_previous_instance_serving() -> None:
    policy = capped(8, 5_000)
    instance = policy.instance
    held = fill_to_the_instance_bound(policy)
    assert instance.fault_count == 0
    # The documented contract: a reload the new build cannot take raises RetryEngineLoadError
    # and the previous instance keeps serving, with its state.
    with contextlib.suppress(RetryEngineLoadError):
        instance.reload()
    assert instance.state_count() == held
    assert instance.fault_count == 0


def test_a_build_dropped_in_with_a_full_state_never_fails_a_plugin_construction(
    wasm_path: Path, tmp_path: Path
) -> None:
    live = tmp_path / "retry_engine.wasm"
    shutil.copyfile(wasm_path, live)
    clock = VirtualClock()
    config = {
        "jitter": False,
        "wasm_path": str(live),
        "wasm_max_memory_bytes": 8 * MIB,
        "max_state_entries": 5_000,
        "state_ttl_ms": 10**9,
    }
    first = direct_plugin(config, clock=clock)
    fill_to_the_instance_bound(first.policy)
    os.replace(rebuilt(wasm_path, tmp_path / "staged.wasm", "3"), live)
    later = direct_plugin(config, clock=clock)  # the gateway's next plugin object for the stanza
    assert later.instance is first.instance


def test_reload_moves_one_full_context_under_the_default_cap() -> None:
    policy = open_policy({"jitter": False, "state_ttl_ms": 10**9}, clock=VirtualClock(), seed=(1, 2))
    for i in range(100_000):
        fail(policy, f"{i:08x}-0000-4000-8000-{i:012x}", tool="weather-server-get-forecast")
    assert policy.state_count() == 100_000
    assert policy.instance.reload() == 100_000


def test_many_contexts_never_exhaust_memory_below_the_byte_bound() -> None:
    policy = capped(16, 10)
    for n in range(70_000):
        fail(policy, "r", tenant_id=f"tenant-{n:07d}")
        if policy.instance.fault_count:
            break
    assert policy.instance.fault_count == 0, f"out of memory after {n} contexts"


def test_longer_keys_after_a_flood_never_exhaust_memory() -> None:
    policy = capped(16, 10_000)
    fill_to_the_instance_bound(policy, step=20_000)
    assert policy.instance.fault_count == 0
    long_rid = "\u00e9" * 249
    for m in range(20_000):
        fail(policy, f"{long_rid}{m:06d}", tenant_id=f"team-{m % 32}")
        if policy.instance.fault_count:
            break
    assert policy.instance.fault_count == 0, f"out of memory after {m} long keys"


def test_the_host_keeps_held_keys_in_bounded_size() -> None:
    """The host's table keeps the gateway's own strings of the keys the engine said hold state:
    a key with a part over 256 characters is never listed (its results always reach the engine,
    by key), so 2000 failing keys with 64 KiB request ids keep nothing of them in the host."""
    import tracemalloc

    policy = open_policy({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(2000):
            fail(policy, f"{i:06d}" + "x" * 65536)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert policy.state_count() == 2000
    assert policy.instance.held_count == 0
    assert after - before < 16 * MIB, f"{(after - before) // MIB} MiB kept for 2000 held keys"
    # Not listed, yet a success reaches the engine and clears the key's count.
    rid = f"{0:06d}" + "x" * 65536
    ok_context = GlobalContext(request_id=rid)
    assert policy.instance.decide(policy, "tool", ok_context, ok()) == 0
    assert policy.state_count() == 1999


def test_reload_of_one_entry_at_a_high_handle_succeeds() -> None:
    policy = open_policy({"jitter": False, "wasm_fuel": 400_000}, clock=VirtualClock(), seed=(1, 2))
    flood = 130_000
    for i in range(flood):
        fail(policy, f"flood-{i}", tenant_id=f"team-{i % 2}")
    # The flood clears in the order it came: the slab keeps its 130 000 slots, and the last
    # slot freed, the highest, is the next one given.
    for i in range(flood):
        policy.instance.decide(
            policy, "tool", GlobalContext(request_id=f"flood-{i}", tenant_id=f"team-{i % 2}"), ok()
        )
    assert policy.state_count() == 0
    survivor = fail(policy, "survivor")
    assert (survivor >> HANDLE_SHIFT) & HANDLE_MASK == flood
    assert policy.instance.fault_count == 0
    assert policy.instance.reload() == 1


def test_retry_budget_buckets_never_exhaust_memory_below_the_byte_bound() -> None:
    policy = open_policy(
        {"jitter": False, "retry_budget_percent": 10, "retry_budget_min_per_sec": 0, "key_scope": "user"},
        clock=VirtualClock(),
        seed=(1, 2),
    )
    wide = "\U0001f600" * 256  # 256 characters (a key part crossing as itself), 1 KiB of UTF-8
    for i in range(25_000):
        user = wide[:251] + f"{i:05d}"
        fail(policy, user, tool=wide, tenant_id=wide, server_id=wide, user=user)
        if policy.instance.fault_count:
            break
    assert policy.instance.fault_count == 0, f"out of memory after {i + 1} failures"
