"""In process, with the gateway's own ``TenantPluginManagerFactory`` (issue 16).

The gateway keeps a plugin manager per context and rebuilds it on its first use after
``cache_ttl`` (30 s; 1 s here), shutting the old one down; each manager constructs its own
plugin objects.  A key's retry count and a tool's retry budget must continue across that
rebuild (every plugin object of the process uses one instance, and objects of one
configuration one policy in it); another context's objects decide under the same policy, and
keep their own state when the gateway's context says it is another tenant.
No gateway server is started: only the factory, as the tool service uses it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import harness as h
import pytest
import yaml

# The gateway's settings are read at import and refuse placeholder secrets; its database is
# never opened here, but point it somewhere harmless.
for _name, _value in {
    **h.SECRETS,
    "DATABASE_URL": f"sqlite:///{tempfile.gettempdir()}/retry-e2e-factory-unused.db",
    "CACHE_TYPE": "memory",
}.items():
    os.environ.setdefault(_name, _value)

factory_module = pytest.importorskip("mcpgateway.plugins.gateway_plugin_manager")

from cpex.framework import GlobalContext, ToolPostInvokePayload  # noqa: E402 - after the skip

#: The factory's cache TTL here, in seconds (the gateway's default is 30).
CACHE_TTL_S = 1
#: "t" counts a key's failures; "b" has a budget that never refills on its own, so what one
#: manager's objects spent stays spent for the next manager's.
CONFIG = {
    "max_retries": 3,
    "backoff_base_ms": 100,
    "jitter": False,
    "tool_overrides": {"b": {"max_retries": 1, "retry_budget_percent": 50, "retry_budget_min_per_sec": 0}},
}


def write_config(path: Path) -> None:
    doc = {
        "plugins": [
            {
                "name": "RetryWithBackoffWasm",
                "kind": "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin",
                "hooks": ["tool_post_invoke"],
                "mode": "sequential",
                "priority": 170,
                "config": CONFIG,
            }
        ],
        "plugin_dirs": [],
        "plugin_settings": {"parallel_execution_within_band": False, "plugin_timeout": 30},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


async def delay(manager: Any, tool: str, request_id: str, tenant: str | None = None) -> int:
    payload = ToolPostInvokePayload(name=tool, result={"content": [], "isError": True})
    context = GlobalContext(request_id=request_id, tenant_id=tenant)
    result, _ = await manager.invoke_hook("tool_post_invoke", payload, context)
    return int(result.retry_delay_ms)


async def scenario(config: Path) -> None:
    factory = factory_module.TenantPluginManagerFactory(str(config), cache_ttl=CACHE_TTL_S)
    context = factory_module.make_context_id("team-a", "t")
    try:
        first = await factory.get_manager(context)
        assert await delay(first, "t", "r") == 100
        for i in range(10):  # the whole burst of "b"'s bucket
            assert await delay(first, "b", f"k{i}") == 100
        # Another manager context decides under the same policy: with the same global context
        # it spends the same bucket; the gateway's tenant (the tool's team) has a bucket of its own.
        other = await factory.get_manager(factory_module.make_context_id("team-b", "t"))
        assert other is not first
        assert await delay(other, "b", "k-other") == 0, "the same gateway context: one bucket"
        assert await delay(other, "b", "k-team-b", tenant="team-b") == 100, "team-b's own bucket"
        await asyncio.sleep(CACHE_TTL_S + 0.2)
        second = await factory.get_manager(context)
        assert second is not first, "the factory did not rebuild the manager"
        assert await delay(second, "t", "r") == 200, "the key's count restarted at the rebuild"
        assert await delay(second, "b", "k-late") == 0, "the budget refilled at the rebuild"
        assert await delay(second, "t", "r") == 400
    finally:
        await factory.shutdown()


def test_count_and_budget_continue_across_a_manager_rebuild(tmp_path: Path) -> None:
    config = tmp_path / "plugins.yaml"
    write_config(config)
    started = time.monotonic()
    asyncio.run(scenario(config))
    assert time.monotonic() - started < 30
