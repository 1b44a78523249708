"""Backoff shapes and failure classes (issue 15 §2) through the real cpex PluginManager, the
policy the host mirrors, and loading a real 0.2 build beside the 0.3 contract (§4).

The decisions are the component's; these tests check that the host carries what it needs to
the component (a delay hint where the throttle class differs) and reports the effective values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryEngineLoadError, WasmRetryEngine
from cpex_retry_with_backoff_wasm.model import ConfigurationError
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import WASM_0_2, VirtualClock, err, ok

THROTTLE = {
    "jitter": False,
    "max_retries": 4,
    "throttle_backoff_base_ms": 1000,
    "throttle_max_backoff_ms": 3000,
}


async def delays(manager: Any, tool: str, rid: str, results: list[Any]) -> list[int]:
    out = []
    for result in results:
        payload = ToolPostInvokePayload(name=tool, result=result)
        res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
        out.append(res.retry_delay_ms)
    return out


async def test_a_429_takes_the_throttle_bounds_and_a_503_the_transient_ones(manager_factory: Any) -> None:
    manager = await manager_factory(THROTTLE)
    assert await delays(manager, "api", "a", [err(429)] * 5) == [1000, 2000, 3000, 3000, 0]
    assert await delays(manager, "api", "b", [err(503)] * 5) == [200, 400, 800, 1600, 0]


async def test_a_delay_hint_makes_a_failure_throttled_without_honoring_it(manager_factory: Any) -> None:
    # honor_retry_after is off: the host must still read the hint, because the throttle class
    # has bounds of its own.
    manager = await manager_factory(THROTTLE)
    hinted = err(503, structuredContent={"status_code": 503, "retry_after_ms": 10})
    assert await delays(manager, "api", "a", [hinted, hinted]) == [1000, 2000]
    assert await delays(manager, "api", "b", [err(503)]) == [200]


async def test_shapes_per_tool(manager_factory: Any) -> None:
    manager = await manager_factory(
        {
            "jitter": False,
            "max_retries": 4,
            "backoff": "linear",
            "backoff_base_ms": 300,
            "max_backoff_ms": 1000,
            "tool_overrides": {"flat": {"backoff": "constant"}},
        }
    )
    assert await delays(manager, "any", "r", [err()] * 5) == [300, 600, 900, 1000, 0]
    assert await delays(manager, "flat", "r", [err()] * 3 + [ok()]) == [300, 300, 300, 0]


def test_policy_mirror_reports_shape_and_effective_throttle_bounds() -> None:
    engine = WasmRetryEngine(
        {
            "backoff": "constant",
            "throttle_max_backoff_ms": 9000,
            "tool_overrides": {"t": {"backoff_base_ms": 50}},
        }
    )
    g = engine.global_policy
    assert (g.backoff, g.throttle_backoff_base_ms, g.throttle_max_backoff_ms) == ("constant", 200, 9000)
    assert g.throttle_differs
    t = engine.tool_policy("t")
    assert (t.throttle_backoff_base_ms, t.throttle_max_backoff_ms) == (50, 9000)
    assert not WasmRetryEngine({}).global_policy.throttle_differs


def test_shape_errors_name_their_key_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine({"backoff": "fib", "tool_overrides": {"t": {"throttle_max_backoff_ms": 1}}})
    paths = [e.path for e in info.value.errors]
    assert paths == ["backoff", "tool_overrides.t.throttle_max_backoff_ms"]


# --------------------------------------------------------------------------- contract 0.2 builds
def decide_all(engine: WasmRetryEngine, tool: str, rid: str, results: list[Any]) -> list[int]:
    return [engine.decide(tool, rid, r) & DELAY_MASK for r in results]


def test_a_0_2_build_loads_and_decides_as_before() -> None:
    engine = WasmRetryEngine({"jitter": False, "wasm_path": str(WASM_0_2)})
    assert engine.contract_version == "0.2.1"
    policy = engine.global_policy
    assert (policy.backoff, policy.throttle_differs) == ("exponential", False)
    assert decide_all(engine, "t", "r", [err(429), err(503), err()]) == [200, 400, 0]


def test_keys_a_0_2_build_would_ignore_are_refused_naming_the_build() -> None:
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine(
            {
                "backoff": "linear",
                "tool_overrides": {"t": {"throttle_backoff_base_ms": 9}},
                "wasm_path": str(WASM_0_2),
            }
        )
    messages = [str(e) for e in info.value.errors]
    assert [e.path for e in info.value.errors] == ["backoff", "tool_overrides.t.throttle_backoff_base_ms"]
    assert all("needs a contract 0.3 component" in m and "0.2.1" in m for m in messages), messages


def test_refused_keys_join_the_components_own_problems_with_its_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine(
            {
                "max_retries": 99,
                "throttle_max_backoff_ms": None,  # null: what a 0.2 component does anyway
                "tool_overrides": {"a.b": {"backoff": "constant"}},
                "wasm_path": str(WASM_0_2),
            }
        )
    paths = [e.path for e in info.value.errors]
    assert paths == ["max_retries", 'tool_overrides["a.b"].backoff']


def test_a_0_2_build_refuses_a_budget_under_an_identity_scope() -> None:
    # Its budgets are per tool name: tenants sharing the engine would spend each other's.
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine({"key_scope": "tenant", "retry_budget_percent": 10, "wasm_path": str(WASM_0_2)})
    assert [e.path for e in info.value.errors] == ["retry_budget_percent"]
    WasmRetryEngine({"key_scope": "request", "retry_budget_percent": 10, "wasm_path": str(WASM_0_2)})


def test_a_component_whose_export_and_version_disagree_is_refused(tmp_path: Path) -> None:
    # The 0.2.1 build answering contract-version "0.3.1" while it exports @0.2.1: the host
    # would take it for a component that knows the 0.3 keys.
    data = WASM_0_2.read_bytes()
    literal = re.compile(rb"(?<![\d.@])0\.2\.1(?!\d)")
    assert len(literal.findall(data)) == 1, "the fixture rename no longer finds the version literal"
    lying = tmp_path / "lying.wasm"
    lying.write_bytes(literal.sub(b"0.3.1", data))
    with pytest.raises(RetryEngineLoadError, match=r"implements contract '0\.3\.1' but exports .*@0\.2\.1"):
        WasmRetryEngine({"wasm_path": str(lying)})


def test_hot_reload_from_a_0_2_build_carries_live_state_into_the_current_one(wasm_path: Path) -> None:
    clock = VirtualClock()
    config = {"jitter": "decorrelated", "max_retries": 5, "wasm_path": str(WASM_0_2)}
    engine = WasmRetryEngine(config, clock=clock, seed=(1, 2))
    for i in range(20):
        assert all(d > 0 for d in decide_all(engine, "t", f"r{i}", [err(), err()]))
    assert engine.reload(wasm_path) == 20
    assert engine.contract_version.startswith("0.4.")
    # Every key continues its count: three more retries, then exhaustion (5 in all).
    for i in range(20):
        tail = decide_all(engine, "t", f"r{i}", [err()] * 4)
        assert all(d > 0 for d in tail[:3]), (i, tail)
        assert tail[3] == 0, (i, tail)
    # And back: a 0.4 instance's state moves into the 0.2 build too.
    for i in range(5):
        decide_all(engine, "t", f"back{i}", [err()])
    assert engine.reload(WASM_0_2) == 5
    assert engine.contract_version == "0.2.1"
    assert decide_all(engine, "t", "back0", [err()] * 5)[-1] == 0


@pytest.mark.parametrize(
    ("config", "refused"),
    [
        ({"backoff": "linear"}, r"backoff: needs a contract 0\.3 component"),
        (
            {"tool_overrides": {"send": {"non_idempotent_retries": "none"}}},
            r"tool_overrides\.send\.non_idempotent_retries: needs a contract 0\.4 component",
        ),
        ({"idempotent": True}, r"idempotent: needs a contract 0\.4 component"),
    ],
)
def test_reload_to_a_0_2_build_is_refused_while_the_config_uses_newer_keys(
    wasm_path: Path, config: dict[str, Any], refused: str
) -> None:
    engine = WasmRetryEngine({"jitter": False, **config})
    assert decide_all(engine, "t", "r", [err()]) == [200]
    with pytest.raises(RetryEngineLoadError, match=refused):
        engine.reload(WASM_0_2)
    assert engine.contract_version.startswith("0.4.")
    assert decide_all(engine, "t", "r", [err()]) == [400]
