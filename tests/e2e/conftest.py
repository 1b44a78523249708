"""Fixtures: one flaky MCP server per session, one real gateway per (plugin, MAX_TOOL_RETRIES).

Every process is stopped by its PID in a finalizer, also when a test or a later set-up step
fails. Set E2E_KEEP=1 to keep the temporary directories (logs, sqlite, plugins.yaml).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness as h
import pytest


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="retry-e2e-"))
    yield d
    if os.environ.get("E2E_KEEP"):
        print(f"\nkept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def flaky_server(workdir: Path) -> Iterator[h.FlakyServer]:
    server = h.start_flaky_server(workdir)
    try:
        yield server
    finally:
        server.proc.stop()


def _gateway(
    workdir: Path, server: h.FlakyServer, name: str, plugin: h.PluginSetup, ceiling: int
) -> Iterator[h.Gateway]:
    gw = h.start_gateway(workdir / name, plugin, max_tool_retries=ceiling)
    try:
        plugin_name = h.PLUGINS[plugin.variant][0]
        h.wait_until(
            f"the gateway to register {plugin_name}",
            lambda: f"Registered plugin: {plugin_name}" in gw.proc.log_path.read_text(errors="replace"),
            30,
            gw.proc,
        )
        gw.register(server)
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module", params=["wasm", "native"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def gateway(workdir: Path, flaky_server: h.FlakyServer, variant: str) -> Iterator[h.Gateway]:
    """MAX_TOOL_RETRIES=3 (the gateway's default) and max_retries 2: the plugin is the limit."""
    plugin = h.PluginSetup(variant=variant, max_retries=2, backoff_base_ms=100, jitter=False)
    yield from _gateway(workdir, flaky_server, f"gw-{variant}", plugin, ceiling=3)


@pytest.fixture(scope="module")
def capped_gateway(workdir: Path, flaky_server: h.FlakyServer, variant: str) -> Iterator[h.Gateway]:
    """MAX_TOOL_RETRIES=1 while the plugin allows 3 retries: the gateway is the limit."""
    plugin = h.PluginSetup(variant=variant, max_retries=3, backoff_base_ms=100, jitter=False)
    yield from _gateway(workdir, flaky_server, f"gw-{variant}-capped", plugin, ceiling=1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not h.RESULTS:
        return
    out = os.environ.get("E2E_RESULTS")
    if out:
        Path(out).write_text(json.dumps(h.RESULTS, indent=2) + "\n")
    tr = terminalreporter
    tr.section("upstream attempts through the real gateway")
    tr.write_line(f"{'variant':7} {'scenario':44} {'attempts':>8}  {'delays asked (ms)':18} gaps seen (ms)")
    for r in sorted(h.RESULTS, key=lambda r: (r["scenario"], r["variant"])):
        tr.write_line(
            f"{r['variant']:7} {r['scenario']:44} {r['attempts']:>8}  "
            f"{','.join(map(str, r['delays_ms'])) or '-':18} {','.join(map(str, r['gaps_ms'])) or '-'}"
        )
