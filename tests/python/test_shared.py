"""One engine per configuration per process, shared by plugin objects (issue 16, ``shared``).

The gateway builds a plugin manager per context and rebuilds it on first use after 30 s,
calling ``shutdown()`` on the old one; every object it builds from an equal configuration must
continue the same counts, budgets and deadlines.  Time is the ``VirtualClock``'s.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.shared import ENGINES

from .conftest import PLUGIN_NAME, VirtualClock, err, ok
from .conftest import direct_plugin as plugin
from .test_reload import contract_variant

NO_JITTER = {"jitter": False, "max_retries": 3}
#: A budget that never refills on its own: what is spent stays spent in one engine.
BUDGET = {**NO_JITTER, "max_retries": 1, "retry_budget_percent": 50, "retry_budget_min_per_sec": 0}


async def delay(
    p: RetryWithBackoffPlugin, tool: str, rid: str, result: Any, tenant: str | None = None
) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid, tenant_id=tenant))
    return int((await p.tool_post_invoke(payload, context)).retry_delay_ms)


def copy(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes())


async def spend_budget(p: RetryWithBackoffPlugin, tenant: str | None = None) -> None:
    """Take all ten tokens of the tool's bucket (one retry each of ten keys)."""
    for i in range(10):
        assert await delay(p, "t", f"spend{i}", err(), tenant) == 200


async def test_equal_configs_share_counts_and_budgets(clock: VirtualClock) -> None:
    a, b = plugin(BUDGET, clock=clock), plugin(BUDGET, clock=clock)
    assert a.engine is b.engine
    assert ENGINES.attached(a.engine) == 2
    await spend_budget(a)
    assert await delay(b, "t", "x", err()) == 0, "b sees the budget a spent"
    counts = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(counts[0], "t", "r", err()) == 200
    assert await delay(counts[1], "t", "r", err()) == 400, "the count continues in the other object"


async def test_different_configs_or_names_get_different_engines(clock: VirtualClock) -> None:
    a = plugin(NO_JITTER, clock=clock)
    others = [
        plugin({**NO_JITTER, "max_retries": 2}, clock=clock),
        plugin({**NO_JITTER, "wasm_fuel": 20_000_000}, clock=clock),  # a host-only setting
        plugin(NO_JITTER, name="Other", clock=clock),
        plugin(NO_JITTER, clock=VirtualClock()),
    ]
    assert await delay(a, "t", "r", err()) == 200
    for other in others:
        assert other.engine is not a.engine
        assert await delay(other, "t", "r", err()) == 200
    assert len(ENGINES) == 5


async def test_manager_rebuild_continues_the_count(manager_factory: Any) -> None:
    """The gateway's churn through the real PluginManager: shutdown, then an equal stanza."""
    from .test_plugin import delays

    first = await manager_factory(NO_JITTER)
    assert await delays(first, "t", "r", [err()]) == [200]
    engine = first.get_plugin(PLUGIN_NAME).engine
    await first.shutdown()
    assert ENGINES.attached(engine) == 0
    assert ENGINES.is_live(engine)
    second = await manager_factory(NO_JITTER)
    assert second.get_plugin(PLUGIN_NAME).engine is engine
    assert await delays(second, "t", "r", [err(), err(), err()]) == [400, 800, 0]


async def test_shutdown_of_one_keeps_state_for_the_other_and_the_next(clock: VirtualClock) -> None:
    a, b = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    await a.shutdown()
    await a.shutdown()  # twice counts once
    assert ENGINES.attached(b.engine) == 1
    assert await delay(b, "t", "r", err()) == 400
    await b.shutdown()
    c = plugin(NO_JITTER, clock=clock)
    assert c.engine is b.engine
    assert await delay(c, "t", "r", err()) == 800


async def test_engine_released_after_state_ttl_with_nobody_attached(clock: VirtualClock) -> None:
    config = {**BUDGET, "state_ttl_ms": 10_000}
    a = plugin(config, clock=clock)
    await spend_budget(a)
    engine = a.engine
    await a.shutdown()
    clock.advance_ms(9_999)
    b = plugin(config, clock=clock)
    assert b.engine is engine, "within the TTL: the same engine"
    assert await delay(b, "t", "x", err()) == 0, "its budget is still spent"
    await b.shutdown()
    clock.advance_ms(9_999)
    assert ENGINES.is_live(engine), "the TTL counts from the last detach"
    clock.advance_ms(1)
    assert not ENGINES.is_live(engine)
    c = plugin(config, clock=clock)
    assert c.engine is not engine
    assert await delay(c, "t", "x", err()) == 200, "a released engine's budgets start full"


async def test_attached_engine_is_never_released(clock: VirtualClock) -> None:
    a = plugin({**NO_JITTER, "state_ttl_ms": 10}, clock=clock)
    clock.advance_ms(1_000)
    other = plugin(NO_JITTER, clock=clock)
    await other.shutdown()  # a detach elsewhere runs the lazy release
    assert ENGINES.is_live(a.engine)


async def test_object_collected_without_shutdown_detaches(clock: VirtualClock) -> None:
    a = plugin(NO_JITTER, clock=clock)
    engine = a.engine
    del a
    gc.collect()
    assert ENGINES.attached(engine) == 0


async def test_reload_is_seen_by_every_attached_object(
    wasm_path: Path, tmp_path: Path, clock: VirtualClock
) -> None:
    a, b = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    patch = contract_variant(wasm_path, tmp_path, "0.3.7")
    assert a.reload(patch) == 1
    assert b.engine.contract_version == "0.3.7"
    assert await delay(b, "t", "r", err()) == 400, "state carried across, seen by b"


async def test_reload_rekeys_the_engine_for_the_next_object(
    tmp_path: Path, wasm_path: Path, clock: VirtualClock
) -> None:
    """The operator replaces the file and reloads: the next object (built from the same
    config, reading the new file) finds the reloaded engine."""
    path = tmp_path / "engine.wasm"
    copy(wasm_path, path)
    config = {**NO_JITTER, "wasm_path": str(path)}
    a = plugin(config, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    copy(contract_variant(wasm_path, tmp_path, "0.3.7"), path)
    a.reload()
    b = plugin(config, clock=clock)
    assert b.engine is a.engine
    assert await delay(b, "t", "r", err()) == 400


async def test_fault_rebuild_is_seen_by_every_attached_object(faulty_wasm: Path, clock: VirtualClock) -> None:
    config = {**NO_JITTER, "wasm_path": str(faulty_wasm)}
    a, b = plugin(config, clock=clock), plugin(config, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    assert await delay(a, "__fault_trap__", "r", err()) == 0
    assert b.engine.rebuild_count == 1
    assert b.engine.fault_count == 1
    assert await delay(b, "t", "r", err()) == 400, "the rebuilt instance has the live state"


async def test_tenant_budgets_are_separate_under_tenant_scope(clock: VirtualClock) -> None:
    """One engine serves every context: a tenant that spends its retry budget leaves the
    others theirs (contract 0.3.0)."""
    a, b = (
        plugin({**BUDGET, "key_scope": "tenant"}, clock=clock),
        plugin({**BUDGET, "key_scope": "tenant"}, clock=clock),
    )
    assert a.engine is b.engine
    await spend_budget(a, tenant="acme")
    assert await delay(a, "t", "x", err(), tenant="acme") == 0
    assert await delay(b, "t", "x", err(), tenant="globex") == 200
    assert await delay(b, "t", "y", err(), tenant=None) == 200, "no tenant: the tool's own bucket"
    # Successes of acme refill acme's bucket.
    for i in range(2):
        assert await delay(b, "t", f"ok{i}", ok(), tenant="acme") == 0
    assert await delay(a, "t", "z", err(), tenant="acme") == 200


async def test_long_request_ids_spend_their_own_tenant_budget(clock: VirtualClock) -> None:
    """A client choosing long request ids must not escape its tenant's bucket into another."""
    a = plugin({**BUDGET, "key_scope": "tenant"}, clock=clock)
    for i in range(10):
        assert await delay(a, "t", "x" * 250 + str(i), err(), tenant="acme") == 200
    assert await delay(a, "t", "short", err(), tenant="acme") == 0, "acme's own budget is spent"
    assert await delay(a, "t", "y" * 250, err(), tenant=None) == 200, "the identity-less bucket is not"


async def test_request_scope_budgets_stay_per_tool(clock: VirtualClock) -> None:
    """Under the default scope the tenant is not part of the key: the native per-tool budget."""
    a = plugin(BUDGET, clock=clock)
    await spend_budget(a, tenant="acme")
    assert await delay(a, "t", "x", err(), tenant="globex") == 0
