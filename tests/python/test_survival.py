"""Live retry state survives a fault of the instance (issue 12 §1, defence in depth).

The host mirrors each key's retry state from the decisions (``handles.HeldKeys``); when a call
faults (trap, fuel, memory), the rebuilt instance imports it before it answers anything else.
Faults come from the fault-injection build (``make wasm-faulty``): magic tool names trap, spin
until the fuel runs out, or leak until the memory cap refuses to grow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryEngine
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, RETRY_COUNT_SHIFT

from .conftest import PLUGIN_NAME, VirtualClock, err, ok

MAGIC = ("__fault_trap__", "__fault_spin__", "__fault_oom__")
CONFIG: dict[str, Any] = {"jitter": False, "max_retries": 3}


async def delay(manager: Any, tool: str, rid: str, result: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
    value: int = res.retry_delay_ms
    return value


@pytest.mark.parametrize("magic", MAGIC)
async def test_a_victim_mid_backoff_keeps_its_count_across_a_fault_of_another_key(
    manager_factory: Any, faulty_wasm: Path, magic: str
) -> None:
    manager = await manager_factory({**CONFIG, "wasm_path": str(faulty_wasm)})
    engine = manager.get_plugin(PLUGIN_NAME).engine
    assert [await delay(manager, "search", "victim", err()) for _ in range(2)] == [200, 400]
    assert await delay(manager, "fetch", "other", err(503)) == 200
    assert await delay(manager, magic, "r", err()) == 0
    assert engine.fault_count == 1
    # The third failure gets the third retry's delay, then the budget runs out.
    assert [await delay(manager, "search", "victim", err()) for _ in range(2)] == [800, 0]
    assert await delay(manager, "fetch", "other", err(503)) == 400
    assert await delay(manager, "fetch", "other", ok()) == 0
    assert engine.fault_count == 1
    assert engine.state_count() == 0


def test_count_summed_delays_and_age_survive_a_fault(faulty_wasm: Path) -> None:
    """Every mirrored field crosses: the count (the delay doubles on), the summed delays (the
    deadline counts them) and the age (the TTL runs on from the last failure)."""
    clock = VirtualClock()
    config = {
        **CONFIG,
        "state_ttl_ms": 10_000,
        "tool_overrides": {"d": {"max_total_delay_ms": 1_000}},
        "wasm_path": str(faulty_wasm),
    }
    engine = RetryEngine(config, clock=clock, seed=(1, 2))
    step = engine.decide
    assert [step("d", "deadline", err()) & DELAY_MASK for _ in range(2)] == [200, 400]
    assert step("t", "aging", err()) & DELAY_MASK == 200
    assert step("t", "counted", err()) & DELAY_MASK == 200
    clock.advance_ms(6_000)
    assert step("t", "counted", err()) & DELAY_MASK == 400
    assert step("__fault_trap__", "r", err()) == 0
    assert engine.fault_count == 1
    assert engine.state_count() == 3
    # 600 ms spent: the next retry (800) would end past the 1 000 ms deadline.
    assert step("d", "deadline", err()) & DELAY_MASK == 0
    decision = step("t", "counted", err())
    assert (decision & DELAY_MASK, (decision >> RETRY_COUNT_SHIFT) & 0xFF) == (800, 3)
    clock.advance_ms(4_001)  # "aging" failed 10 001 ms ago: past the TTL, a fresh start
    assert step("t", "aging", err()) & DELAY_MASK == 200


def test_the_key_whose_call_faulted_starts_over(faulty_wasm: Path) -> None:
    """The faulting call is answered "no retry"; its key's state is not carried over."""
    engine = RetryEngine({**CONFIG, "wasm_path": str(faulty_wasm)}, seed=(1, 2))
    assert engine.decide("__fault_spin_held__", "r", err()) & DELAY_MASK == 200
    assert engine.decide("t", "victim", err()) & DELAY_MASK == 200
    assert engine.decide("__fault_spin_held__", "r", err()) == 0  # decide-held spins
    assert engine.fault_count == 1
    assert list(engine.held.entries) == [("t", "victim")]
    assert engine.decide("t", "victim", err()) & DELAY_MASK == 400


def test_the_mirror_is_what_the_component_exports() -> None:
    """The document the host would import after a fault lists what the component itself
    exports: same keys, counts, ages and delays, oldest first."""
    clock = VirtualClock()
    engine = RetryEngine({"max_retries": 5, "jitter": "decorrelated"}, clock=clock, seed=(5, 6))
    for i, rid in enumerate(["a", "b", "a", "c\u00e9", "b", "a"]):
        engine.decide(f"tool{i % 2}" if rid != "a" else "t", rid, err())
        clock.advance_ms(7)
    engine.decide("tool1", "b", ok())
    mirrored = engine.held.export_state(lambda tool, rid: ((tool + rid).encode(), len(tool)))
    assert mirrored is not None
    exported = engine.sandbox.export_state()
    assert json.loads(mirrored) == json.loads(exported)
