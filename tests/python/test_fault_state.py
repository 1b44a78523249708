"""What a fault of the instance keeps: the configuration, and no retry state (issue 23).

A trap, fuel or memory exhaustion leaves the instance unusable; the host answers the call
"no retry" and starts a new instance, which holds no policy, entry or budget.  The host keeps
no copy of the engine's state to restore (docs/reliability.md): every key starts over, which
the gateway's own retry counter still bounds, and each policy is opened again, from the
configuration its plugin objects hold, on its next call (``unknown-policy``).  Faults come
from the fault-injection build (``make wasm-faulty``): magic tool names trap, spin until the
fuel runs out, or leak until the memory cap refuses to grow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, RETRY_COUNT_MASK, RETRY_COUNT_SHIFT

from .conftest import PLUGIN_NAME, VirtualClock, err, ok
from .test_instance import decide, open_policy

MAGIC = ("__fault_trap__", "__fault_spin__", "__fault_oom__")
CONFIG: dict[str, Any] = {"jitter": False, "max_retries": 3}


async def delay(manager: Any, tool: str, rid: str, result: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
    value: int = res.retry_delay_ms
    return value


@pytest.mark.parametrize("magic", MAGIC)
async def test_a_fault_of_another_key_starts_every_key_over_under_the_same_policy(
    manager_factory: Any, faulty_wasm: Path, magic: str
) -> None:
    manager = await manager_factory({**CONFIG, "wasm_path": str(faulty_wasm)})
    plugin = manager.get_plugin(PLUGIN_NAME)
    instance = plugin.instance
    assert [await delay(manager, "search", "victim", err()) for _ in range(2)] == [200, 400]
    assert await delay(manager, "fetch", "other", err(503)) == 200
    assert await delay(manager, magic, "r", err()) == 0
    assert instance.fault_count == 1
    # The new instance starts empty: no policy, no entry, no handle.
    assert (instance.policy_count(), instance.state_count(), instance.held_count) == (0, 0, 0)
    # The victim starts over under the same policy (opened again: jitter off, max_retries 3).
    assert [await delay(manager, "search", "victim", err()) for _ in range(4)] == [200, 400, 800, 0]
    assert instance.policy_count() == 1
    assert await delay(manager, "fetch", "other", err(503)) == 200
    assert await delay(manager, "fetch", "other", ok()) == 0
    assert instance.fault_count == 1
    assert plugin.policy.state_count() == 0


def test_nothing_of_a_key_survives_a_fault(faulty_wasm: Path) -> None:
    """Neither the count (the delay doubles on), the summed delays (the deadline counts them)
    nor the age (the TTL runs from the last failure) crosses to the new instance."""
    clock = VirtualClock()
    config = {
        **CONFIG,
        "state_ttl_ms": 10_000,
        "tool_overrides": {"d": {"max_total_delay_ms": 1_000}},
        "wasm_path": str(faulty_wasm),
    }
    policy = open_policy(config, clock=clock, seed=(1, 2))
    assert [decide(policy, "d", "deadline", err()) & DELAY_MASK for _ in range(2)] == [200, 400]
    assert decide(policy, "t", "counted", err()) & DELAY_MASK == 200
    clock.advance_ms(6_000)
    assert decide(policy, "t", "counted", err()) & DELAY_MASK == 400
    assert decide(policy, "__fault_trap__", "r", err()) == 0
    assert policy.instance.fault_count == 1
    assert policy.instance.state_count() == 0
    # With its 600 ms spent, the next retry (800) would end past the deadline: it starts over.
    assert decide(policy, "d", "deadline", err()) & DELAY_MASK == 200
    decision = decide(policy, "t", "counted", err())
    assert (decision & DELAY_MASK, (decision >> RETRY_COUNT_SHIFT) & RETRY_COUNT_MASK) == (200, 1)
    clock.advance_ms(9_999)  # the new entry's age counts from its failure after the fault
    assert decide(policy, "t", "counted", err()) & DELAY_MASK == 400


def test_the_key_whose_call_faulted_starts_over(faulty_wasm: Path) -> None:
    """The faulting call is answered "no retry"; no key's state is carried over, its own
    included, and the host forgets every handle."""
    policy = open_policy({**CONFIG, "wasm_path": str(faulty_wasm)}, seed=(1, 2))
    instance = policy.instance
    assert decide(policy, "__fault_spin_held__", "r", err()) & DELAY_MASK == 200
    assert decide(policy, "t", "victim", err()) & DELAY_MASK == 200
    assert instance.held_count == 2
    assert decide(policy, "__fault_spin_held__", "r", err()) == 0  # decide-held spins
    assert instance.fault_count == 1
    assert instance.held_count == 0
    assert decide(policy, "t", "victim", err()) & DELAY_MASK == 200
    assert decide(policy, "__fault_spin_held__", "r", err()) & DELAY_MASK == 200
