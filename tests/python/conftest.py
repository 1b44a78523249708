"""Shared fixtures for the host plugin tests.

Every test runs against the real built component: the copy bundled into the package by the
Makefile (``host-python/src/cpex_retry_with_backoff_wasm/retry_engine.wasm``), which must match
``target/wasm/retry_engine.wasm`` when both exist.  Nothing here sleeps or reads real time: the
TTL tests drive a ``VirtualClock``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TARGET_WASM = REPO / "target" / "wasm" / "retry_engine.wasm"

PLUGIN_KIND = "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"
PLUGIN_NAME = "RetryWithBackoffPlugin"
#: The real release build of contract 0.2.1 (commit ec1e2f1), kept to test that a build of an
#: older contract is refused with an error naming both versions.
WASM_0_2 = REPO / "tests" / "fixtures" / "retry_engine-0.2.1.wasm"


def _bundled() -> Path:
    from cpex_retry_with_backoff_wasm.settings import bundled_wasm_path

    return bundled_wasm_path()


@pytest.fixture(scope="session")
def wasm_path() -> Path:
    """The bundled component (what the plugin loads when ``wasm_path`` is not set)."""
    bundled = _bundled()
    if not bundled.is_file():
        pytest.fail(
            f"{bundled} is missing: run `make wasm` and copy target/wasm/retry_engine.wasm there "
            "(the Makefile's python targets do)",
            pytrace=False,
        )
    if TARGET_WASM.is_file():
        same = (
            hashlib.sha256(bundled.read_bytes()).digest() == hashlib.sha256(TARGET_WASM.read_bytes()).digest()
        )
        if not same:
            pytest.fail(f"{bundled} is stale: it differs from {TARGET_WASM}", pytrace=False)
    return bundled


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep the compiled-component cache out of the user's home."""
    home = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def _no_gateway_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ceiling source unless a test installs one (mcpgateway made unimportable)."""
    monkeypatch.delenv("MAX_TOOL_RETRIES", raising=False)
    monkeypatch.setitem(sys.modules, "mcpgateway", None)
    monkeypatch.setitem(sys.modules, "mcpgateway.config", None)


@pytest.fixture(autouse=True)
def _fresh_instances() -> Iterator[None]:
    """Each test starts with no instance: every plugin object of a process uses one instance per
    component and host limits (``instance.INSTANCES``), which would carry state from test to
    test."""
    from cpex_retry_with_backoff_wasm.instance import INSTANCES

    INSTANCES.clear()
    yield
    INSTANCES.clear()


class VirtualClock:
    """A monotonic clock in nanoseconds that only moves when a test advances it."""

    def __init__(self, start_ms: int = 1_000) -> None:
        self.ns = start_ms * 1_000_000
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.ns

    def advance_ms(self, ms: int) -> None:
        self.ns += ms * 1_000_000


class EngineCalls:
    """Counts the calls into an instance's component on the hot path (its lean callers)."""

    def __init__(self, instance: Any) -> None:
        lean = instance.sandbox.lean
        assert lean is not None
        decide, decide_held = lean
        self.count = 0

        def by_key(*args: Any) -> int:
            self.count += 1
            return int(decide(*args))

        def by_handle(*args: Any) -> int:
            self.count += 1
            return int(decide_held(*args))

        instance.sandbox.lean = (by_key, by_handle)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def direct_plugin(config: dict[str, Any], name: str = PLUGIN_NAME, **kw: Any) -> Any:
    """A plugin object built as the gateway's manager builds it, without a manager."""
    from cpex.framework import PluginConfig

    from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin

    return RetryWithBackoffPlugin(
        PluginConfig(name=name, kind=PLUGIN_KIND, hooks=["tool_post_invoke"], config=config), **kw
    )


def err(status: int | None = None, **extra: Any) -> dict[str, Any]:
    """A gateway-style failed tool result."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": "boom"}], "isError": True}
    if status is not None:
        result["structuredContent"] = {"status_code": status}
    result.update(extra)
    return result


def ok(**extra: Any) -> dict[str, Any]:
    """A successful tool result."""
    result: dict[str, Any] = {"content": [{"type": "text", "text": "fine"}], "isError": False}
    result.update(extra)
    return result


def plugin_yaml(
    config: dict[str, Any] | None, hooks: tuple[str, ...] = ("tool_post_invoke", "resource_post_fetch")
) -> str:
    """The gateway's stanza for this plugin, with the new ``kind``."""
    doc = {
        "plugins": [
            {
                "name": PLUGIN_NAME,
                "kind": PLUGIN_KIND,
                "description": "Retry with exponential backoff (Wasm engine)",
                "version": "0.1.0",
                "author": "ContextForge Contributors",
                "hooks": list(hooks),
                "tags": ["reliability", "retry"],
                "mode": "sequential",
                "priority": 170,
                "config": config or {},
            }
        ],
        "plugin_dirs": [],
        "plugin_settings": {"parallel_execution_within_band": False, "plugin_timeout": 30},
    }
    return textwrap.dedent(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
async def manager_factory(tmp_path: Path) -> AsyncIterator[Any]:
    """Load a config through the real cpex PluginManager with the gateway's hook policy."""
    from cpex.framework import PluginManager
    from cpex.framework.hooks.policies import HookPayloadPolicy

    managers: list[Any] = []

    async def make(config: dict[str, Any] | None, *, expect_plugins: int = 1, **kw: Any) -> Any:
        PluginManager.reset()
        path = tmp_path / f"plugins-{len(managers)}.yaml"
        path.write_text(plugin_yaml(config, **kw))
        manager = PluginManager(
            str(path),
            hook_policies={"tool_post_invoke": HookPayloadPolicy(writable_fields=frozenset({"result"}))},
        )
        await manager.initialize()
        managers.append(manager)
        assert manager.plugin_count == expect_plugins
        return manager

    yield make
    for manager in managers:
        await manager.shutdown()
    PluginManager.reset()


#: The fault-injection build (``make wasm-faulty``): magic tool names trap, spin or leak.
FAULTY_WASM = REPO / "target" / "wasm" / "retry_engine_faulty.wasm"


@pytest.fixture(scope="session")
def faulty_wasm() -> Path:
    if not FAULTY_WASM.is_file():
        pytest.fail(f"{FAULTY_WASM} is missing: run `make wasm-faulty`", pytrace=False)
    return FAULTY_WASM
