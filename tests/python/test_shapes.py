"""Backoff shapes and failure classes (issue 15 §2) through the real cpex PluginManager and the
policy the engine reports (``tool-policy``); builds of another contract are refused (since 0.5,
§4's loading of older builds is gone: one instance holds every policy, which they cannot).

The decisions are the component's; these tests check that the host carries what it needs to
the component (a delay hint where the throttle class differs) and reports the effective values.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryEngineLoadError, RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.model import CONTRACT_VERSION, ConfigurationError

from .conftest import WASM_0_2, direct_plugin, err, ok

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


def test_the_policy_reports_shape_and_effective_throttle_bounds() -> None:
    policy = direct_plugin(
        {
            "backoff": "constant",
            "throttle_max_backoff_ms": 9000,
            "tool_overrides": {"t": {"backoff_base_ms": 50}},
        }
    ).policy
    g = policy.global_policy
    assert (g.backoff, g.throttle_backoff_base_ms, g.throttle_max_backoff_ms) == ("constant", 200, 9000)
    assert (g.backoff_base_ms, g.max_backoff_ms) == (200, 5000)
    t = policy.tool_policy("t")
    assert (t.backoff, t.throttle_backoff_base_ms, t.throttle_max_backoff_ms) == ("constant", 50, 9000)
    # Unconfigured, the throttle class has the transient bounds.
    default = direct_plugin({}).policy.global_policy
    assert (default.backoff, default.throttle_backoff_base_ms, default.throttle_max_backoff_ms) == (
        "exponential",
        200,
        5000,
    )


def test_shape_errors_name_their_key_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        direct_plugin({"backoff": "fib", "tool_overrides": {"t": {"throttle_max_backoff_ms": 1}}})
    paths = [e.path for e in info.value.errors]
    assert paths == ["backoff", "tool_overrides.t.throttle_max_backoff_ms"]


def test_host_key_problems_join_the_components_own_with_their_paths() -> None:
    with pytest.raises(ConfigurationError) as info:
        direct_plugin(
            {
                "max_retries": 99,
                "wasm_fuel": -1,
                "throttle_max_backoff_ms": None,  # null: the transient max, valid
                "tool_overrides": {"a.b": {"backoff": "fib"}},
            }
        )
    paths = [e.path for e in info.value.errors]
    assert paths == ["wasm_fuel", "max_retries", 'tool_overrides["a.b"].backoff']


# --------------------------------------------------------------------------- other contracts
#: What a refusal of a build of another contract names: the host's.
WANTED = re.escape("0.5.x")


def test_a_0_2_build_is_refused_naming_both_versions() -> None:
    with pytest.raises(RetryEngineLoadError) as info:
        direct_plugin({"jitter": False, "wasm_path": str(WASM_0_2)})
    message = str(info.value)
    assert str(WASM_0_2) in message
    assert "@0.2.1" in message, "the version the build has"
    assert "0.5.x" in message, "the version the host needs"


async def test_a_0_2_build_skips_the_plugin_in_the_manager(
    manager_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        await manager_factory({"wasm_path": str(WASM_0_2)}, expect_plugins=0)
    assert any("@0.2.1" in r.getMessage() and "0.5.x" in r.getMessage() for r in caplog.records)


def patched_version(tmp_path: Path, wasm_path: Path, version: str) -> Path:
    """The current build answering ``version`` from ``contract-version`` while it still exports
    the interface at its own version."""
    data = wasm_path.read_bytes()
    literal = re.compile(rb"(?<![\d.@])" + re.escape(CONTRACT_VERSION.encode()) + rb"(?![\d])")
    assert len(literal.findall(data)) == 1, "the rename no longer finds the version literal"
    assert len(version) == len(CONTRACT_VERSION)
    patched = tmp_path / f"retry_engine-{version}.wasm"
    patched.write_bytes(literal.sub(version.encode(), data))
    return patched


@pytest.mark.parametrize("version", ["0.4.9", "0.6.0", "1.5.0"])
def test_a_component_answering_another_contract_is_refused(
    tmp_path: Path, wasm_path: Path, version: str
) -> None:
    lying = patched_version(tmp_path, wasm_path, version)
    with pytest.raises(
        RetryEngineLoadError, match=rf"implements contract '{re.escape(version)}', this host needs {WANTED}"
    ):
        direct_plugin({"wasm_path": str(lying)})


def test_a_newer_patch_of_the_contract_loads(tmp_path: Path, wasm_path: Path) -> None:
    patch = patched_version(tmp_path, wasm_path, "0.5.7")
    plugin = direct_plugin({"jitter": False, "wasm_path": str(patch)})
    assert plugin.instance.contract_version == "0.5.7"


async def call(plugin: RetryWithBackoffPlugin, rid: str, result: Any) -> int:
    payload = ToolPostInvokePayload(name="t", result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid))
    return int((await plugin.tool_post_invoke(payload, context)).retry_delay_ms)


async def test_reload_to_a_0_2_build_is_refused_and_the_instance_keeps_serving() -> None:
    plugin = direct_plugin({"jitter": False, "max_retries": 3})
    assert await call(plugin, "r", err()) == 200
    with pytest.raises(RetryEngineLoadError) as info:
        plugin.reload(str(WASM_0_2))
    assert "@0.2.1" in str(info.value)
    assert "0.5.x" in str(info.value)
    assert plugin.instance.contract_version == CONTRACT_VERSION
    assert plugin.instance.reload_count == 0
    # Nothing was lost: the key continues its count.
    assert await call(plugin, "r", err()) == 400
    assert plugin.policy.state_count() == 1
