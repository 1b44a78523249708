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


def pytest_configure(config: pytest.Config) -> None:
    h.stop_on_sigterm()


def pytest_report_header(config: pytest.Config) -> str:
    return f"e2e: {h.describe(h.versions())}"


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


# name -> (plugin variant, plugin max_retries, MAX_TOOL_RETRIES, non_idempotent_retries)
GATEWAYS = {
    # The gateway's default ceiling (3) above max_retries 2: the plugin is the limit.
    "wasm": ("wasm", 2, 3, None),
    "native": ("native", 2, 3, None),
    # MAX_TOOL_RETRIES=1 while the plugin allows 3 retries: the gateway is the limit.
    "wasm-capped": ("wasm", 3, 1, None),
    "native-capped": ("native", 3, 1, None),
    # Non-idempotent tools retried only when throttled, one unannotated tool declared idempotent.
    # The native plugin ignores both keys; it keeps hooks [tool_post_invoke], as cpex refuses to
    # load a plugin for a hook it has no method for (its tool_pre_invoke).
    "wasm-throttled": ("wasm", 2, 3, "throttled"),
    "native-throttled": ("native", 2, 3, "throttled"),
}


@pytest.fixture(scope="session")
def database(workdir: Path) -> Path:
    """One sqlite database migrated by the gateway's own runner; each gateway starts on a copy."""
    return h.prepare_database(workdir / "database")


@pytest.fixture(scope="session")
def gateways(workdir: Path, database: Path, flaky_server: h.FlakyServer) -> Iterator[dict[str, h.Gateway]]:
    """All the GATEWAYS, launched at once (start-up dominates the run time) on copies of one
    migrated database, then registered.

    TOOL_TIMEOUT=1 (seconds) so that the timeout path is tested quickly."""
    started: dict[str, h.Gateway] = {}
    try:
        for name, (variant, max_retries, ceiling, non_idempotent) in GATEWAYS.items():
            plugin = h.PluginSetup(
                variant=variant,
                max_retries=max_retries,
                backoff_base_ms=100,
                jitter=False,
                tool_overrides=h.REBUILD_OVERRIDES,
            )
            if non_idempotent is not None:
                if variant == "wasm":
                    plugin.hooks = list(h.IDEMPOTENCY_HOOKS)
                plugin.non_idempotent_retries = non_idempotent
                plugin.tool_overrides = {**h.REBUILD_OVERRIDES, **h.IDEMPOTENT_OVERRIDES}
            started[name] = h.launch_gateway(
                workdir / f"gw-{name}",
                plugin,
                max_tool_retries=ceiling,
                extra_env={"TOOL_TIMEOUT": "1"},
                database=database,
            )
        h.mint_token()  # while they start
        for gw in started.values():
            gw.wait_ready()
            gw.register(flaky_server)
        yield started
    finally:
        for gw in started.values():
            gw.stop()


@pytest.fixture(params=["wasm", "native"])
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gateway(gateways: dict[str, h.Gateway], variant: str) -> h.Gateway:
    return gateways[variant]


@pytest.fixture
def capped_gateway(gateways: dict[str, h.Gateway], variant: str) -> h.Gateway:
    return gateways[f"{variant}-capped"]


@pytest.fixture
def throttled_gateway(gateways: dict[str, h.Gateway], variant: str) -> h.Gateway:
    return gateways[f"{variant}-throttled"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not h.RESULTS:
        return
    out = os.environ.get("E2E_RESULTS")
    versions = h.versions()
    if out:
        Path(out).write_text(json.dumps({"versions": versions, "results": h.RESULTS}, indent=2) + "\n")
    tr = terminalreporter
    tr.section("upstream attempts through the real gateway")
    tr.write_line(h.describe(versions))
    width = max(len(r["scenario"]) for r in h.RESULTS)
    tr.write_line(
        f"{'variant':7}  {'scenario':{width}}  attempts  {'delays asked (ms)':17}  "
        f"{'gaps at server (ms)':19}  client (ms)"
    )
    for r in sorted(h.RESULTS, key=lambda r: (r["scenario"], r["variant"])):
        delays = ",".join(map(str, r["delays_ms"])) or "-"
        gaps = ",".join(map(str, r["gaps_ms"])) or "-"
        tr.write_line(
            f"{r['variant']:7}  {r['scenario']:{width}}  {r['attempts']:>8}  {delays:17}  {gaps:19}  "
            f"{r['elapsed_ms']:>11}"
        )
