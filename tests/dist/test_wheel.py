"""The wheel from ``make dist``, installed into a fresh venv with no Rust toolchain, loaded
through the real cpex ``PluginManager`` from the gateway's YAML stanza.

Run by ``make test-dist`` with that venv's python (never the repo's ``.venv``): the package and
its ``.wasm`` must come from the installed wheel, not from ``host-python/`` or ``target/``.
``DIST_DIR`` names the directory holding the wheel and the standalone ``retry_engine.wasm``.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import sysconfig
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DIST = Path(os.environ.get("DIST_DIR", REPO / "dist"))
WHEEL_MEMBER = "cpex_retry_with_backoff_wasm/retry_engine.wasm"
PLUGIN_NAME = "RetryWithBackoffWasmPlugin"

#: The stanza operators copy (examples/plugins.yaml): the plugin loads from it unchanged.
STANZA_FILE = REPO / "examples" / "plugins.yaml"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def the_wheel() -> Path:
    wheels = sorted(DIST.glob("cpex_retry_with_backoff_wasm-*.whl"))
    assert len(wheels) == 1, f"expected exactly one wheel in {DIST}, found {wheels}"
    return wheels[0]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the compiled-component cache out of the user's home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Any]:
    from cpex.framework import PluginManager
    from cpex.framework.hooks.policies import HookPayloadPolicy

    PluginManager.reset()
    mgr = PluginManager(
        str(STANZA_FILE),
        hook_policies={"tool_post_invoke": HookPayloadPolicy(writable_fields=frozenset({"result"}))},
    )
    await mgr.initialize()
    yield mgr
    await mgr.shutdown()
    PluginManager.reset()


async def post(manager: Any, tool: str, rid: str, result: dict[str, Any]) -> Any:
    from cpex.framework import GlobalContext, ToolPostInvokePayload

    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
    return res


def test_running_in_a_fresh_venv_without_the_repo_package() -> None:
    assert sys.prefix != sys.base_prefix, "run this with the fresh venv's python"
    assert not Path(sys.prefix).resolve().samefile(REPO / ".venv")
    import cpex_retry_with_backoff_wasm as pkg

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(pkg.__file__).resolve().is_relative_to(site), pkg.__file__


def test_the_wheel_bundles_the_published_wasm() -> None:
    standalone = (DIST / "retry_engine.wasm").read_bytes()
    with zipfile.ZipFile(the_wheel()) as zf:
        assert sha256(zf.read(WHEEL_MEMBER)) == sha256(standalone)
    recorded = (DIST / "retry_engine.wasm.sha256").read_text().split()
    assert recorded == [sha256(standalone), "retry_engine.wasm"]


async def test_plugin_loads_from_the_stanza_and_decides(manager: Any) -> None:
    assert manager.plugin_count == 1
    fail = {"isError": True, "structuredContent": {"status_code": 503}, "content": []}
    ok = {"isError": False, "content": [{"type": "text", "text": "done"}]}
    assert (await post(manager, "flaky", "req-1", fail)).retry_delay_ms == 200
    assert (await post(manager, "flaky", "req-1", fail)).retry_delay_ms == 400
    assert (await post(manager, "flaky", "req-1", ok)).retry_delay_ms == 0
    assert (await post(manager, "other", "req-2", ok)).retry_delay_ms == 0


def assert_inside_the_installed_wheel(wasm_path: Path) -> None:
    loaded = wasm_path.resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert loaded == site / WHEEL_MEMBER
    assert not loaded.is_relative_to(REPO.resolve())
    with zipfile.ZipFile(the_wheel()) as zf:
        assert sha256(loaded.read_bytes()) == sha256(zf.read(WHEEL_MEMBER))


async def test_the_loaded_wasm_is_the_one_inside_the_installed_wheel(manager: Any) -> None:
    plugin = manager.get_plugin(PLUGIN_NAME)
    assert_inside_the_installed_wheel(plugin.instance.wasm_path)
    package = re.search(r"package contextforge:retry@([^;]+);", (REPO / "wit" / "world.wit").read_text())
    assert plugin.instance.contract_version == package[1]
