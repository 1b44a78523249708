"""Plugin objects of one configuration share its policy (issue 16, issue 23).

The gateway builds a plugin manager per context and rebuilds it on first use after 30 s,
calling ``shutdown()`` on the old one; every object it builds from an equal configuration
(stanza name, configuration, gateway ceiling) is under the same policy of the process's one
instance, so it continues the same counts, budgets and deadlines.  Retry state and budgets are
kept per (policy, tenant, server) context.  Time is the ``VirtualClock``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import INSTANCES, RetryWithBackoffPlugin

from .conftest import PLUGIN_NAME, VirtualClock, err, ok
from .conftest import direct_plugin as plugin
from .test_reload import contract_variant

NO_JITTER = {"jitter": False, "max_retries": 3}
#: A budget that never refills on its own: what is spent stays spent in one policy.
BUDGET = {**NO_JITTER, "max_retries": 1, "retry_budget_percent": 50, "retry_budget_min_per_sec": 0}


async def delay(
    p: RetryWithBackoffPlugin, tool: str, rid: str, result: Any, tenant: str | None = None
) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid, tenant_id=tenant))
    return int((await p.tool_post_invoke(payload, context)).retry_delay_ms)


async def manager_delays(manager: Any, tool: str, rid: str, results: list[Any]) -> list[int]:
    out = []
    for result in results:
        payload = ToolPostInvokePayload(name=tool, result=result)
        res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
        out.append(int(res.retry_delay_ms))
    return out


def copy(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes())


async def spend_budget(p: RetryWithBackoffPlugin, tenant: str | None = None) -> None:
    """Take all ten tokens of the tool's bucket (one retry each of ten keys)."""
    for i in range(10):
        assert await delay(p, "t", f"spend{i}", err(), tenant) == 200


async def test_equal_configs_share_counts_and_budgets(clock: VirtualClock) -> None:
    a, b = plugin(BUDGET, clock=clock), plugin(BUDGET, clock=clock)
    assert a.policy is b.policy
    await spend_budget(a)
    assert await delay(b, "t", "x", err()) == 0, "b sees the budget a spent"
    counts = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(counts[0], "t", "r", err()) == 200
    assert await delay(counts[1], "t", "r", err()) == 400, "the count continues in the other object"


async def test_different_configs_or_names_get_different_policies(clock: VirtualClock) -> None:
    """Another configuration or stanza name is another policy of the same instance; other host
    limits or another clock, another instance.  Each counts its own failures."""
    a = plugin(NO_JITTER, clock=clock)
    same_instance = [
        plugin({**NO_JITTER, "max_retries": 2}, clock=clock),
        plugin(NO_JITTER, name="Other", clock=clock),
    ]
    other_instance = [
        plugin({**NO_JITTER, "wasm_fuel": 20_000_000}, clock=clock),  # a host-only setting
        plugin(NO_JITTER, clock=VirtualClock()),
    ]
    assert await delay(a, "t", "r", err()) == 200
    for other in same_instance + other_instance:
        assert other.policy is not a.policy
        assert other.policy.id != a.policy.id or other.instance is not a.instance
        assert await delay(other, "t", "r", err()) == 200
    assert all(other.instance is a.instance for other in same_instance)
    assert all(other.instance is not a.instance for other in other_instance)
    assert a.instance.policy_count() == 3
    assert len(INSTANCES) == 3


async def test_manager_rebuild_continues_the_count(manager_factory: Any) -> None:
    """The gateway's churn through the real PluginManager: shutdown, then an equal stanza."""
    first = await manager_factory(NO_JITTER)
    assert await manager_delays(first, "t", "r", [err()]) == [200]
    policy = first.get_plugin(PLUGIN_NAME).policy
    await first.shutdown()
    second = await manager_factory(NO_JITTER)
    assert second.get_plugin(PLUGIN_NAME).policy.id == policy.id
    assert second.get_plugin(PLUGIN_NAME).instance is policy.instance
    assert await manager_delays(second, "t", "r", [err(), err(), err()]) == [400, 800, 0]


async def test_shutdown_of_one_keeps_state_for_the_other_and_the_next(clock: VirtualClock) -> None:
    a, b = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    await a.shutdown()
    await a.shutdown()  # twice is harmless
    assert await delay(b, "t", "r", err()) == 400
    await b.shutdown()
    c = plugin(NO_JITTER, clock=clock)
    assert c.policy is b.policy
    assert await delay(c, "t", "r", err()) == 800


async def test_policy_released_after_state_ttl_unused(clock: VirtualClock) -> None:
    """The engine releases a policy nobody opened or decided with for its ``state_ttl_ms``,
    budgets with it; an object built later, or one still holding the policy, opens it again."""
    config = {**BUDGET, "state_ttl_ms": 10_000}
    a = plugin(config, clock=clock)
    await spend_budget(a)
    await a.shutdown()
    clock.advance_ms(9_999)
    b = plugin(config, clock=clock)
    assert b.policy is a.policy, "within the TTL: the same policy"
    assert await delay(b, "t", "x", err()) == 0, "its budget is still spent"
    await b.shutdown()
    clock.advance_ms(10_000)
    b.instance.evict_expired()
    assert b.instance.policy_count() == 1, "the TTL counts from the last use; unused for it exactly: kept"
    clock.advance_ms(1)
    b.instance.evict_expired()
    assert b.instance.policy_count() == 0
    c = plugin(config, clock=clock)
    assert c.policy.id == a.policy.id, "the same content: the same id"
    assert await delay(c, "t", "x", err()) == 200, "a released policy's budgets start full"


async def test_reload_is_seen_by_every_object(wasm_path: Path, tmp_path: Path, clock: VirtualClock) -> None:
    a, b = plugin(NO_JITTER, clock=clock), plugin(NO_JITTER, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    patch = contract_variant(wasm_path, tmp_path, "0.5.7")
    assert a.reload(patch) == 1
    assert b.instance.contract_version == "0.5.7"
    assert await delay(b, "t", "r", err()) == 400, "state carried across, seen by b"


async def test_reload_is_found_by_the_next_object(
    tmp_path: Path, wasm_path: Path, clock: VirtualClock
) -> None:
    """The operator replaces the file and reloads: the next object (built from the same
    config, reading the new file) finds the reloaded instance."""
    path = tmp_path / "engine.wasm"
    copy(wasm_path, path)
    config = {**NO_JITTER, "wasm_path": str(path)}
    a = plugin(config, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    copy(contract_variant(wasm_path, tmp_path, "0.5.7"), path)
    a.reload()
    b = plugin(config, clock=clock)
    assert b.instance is a.instance
    assert b.instance.contract_version == "0.5.7"
    assert await delay(b, "t", "r", err()) == 400


async def test_fault_rebuild_is_seen_by_every_object(faulty_wasm: Path, clock: VirtualClock) -> None:
    """A fault loses the instance's live state for every object; the policy opens again."""
    config = {**NO_JITTER, "wasm_path": str(faulty_wasm)}
    a, b = plugin(config, clock=clock), plugin(config, clock=clock)
    assert await delay(a, "t", "r", err()) == 200
    assert await delay(a, "__fault_trap__", "r", err()) == 0
    assert b.instance.rebuild_count == 1
    assert b.instance.fault_count == 1
    assert await delay(b, "t", "r", err()) == 200, "the rebuilt instance starts empty"
    assert await delay(a, "t", "r", err()) == 400


async def test_tenant_budgets_are_separate_under_tenant_scope(clock: VirtualClock) -> None:
    """One policy serves every context: a tenant that spends its retry budget leaves the
    others theirs."""
    a, b = (
        plugin({**BUDGET, "key_scope": "tenant"}, clock=clock),
        plugin({**BUDGET, "key_scope": "tenant"}, clock=clock),
    )
    assert a.policy is b.policy
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
    assert await delay(a, "t", "y" * 250, err(), tenant=None) == 200, "the tenant-less bucket is not"


async def test_request_scope_budgets_are_per_tenant_too(clock: VirtualClock) -> None:
    """The tenant is in every key's context (since 0.5.0): under the default scope too, one
    tenant spending the tool's budget leaves another tenant's."""
    a = plugin(BUDGET, clock=clock)
    await spend_budget(a, tenant="acme")
    assert await delay(a, "t", "x", err(), tenant="acme") == 0
    assert await delay(a, "t", "x", err(), tenant="globex") == 200
