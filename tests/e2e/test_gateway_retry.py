"""The real ContextForge gateway retries real MCP tool calls with this plugin (and the native one).

Attempts are counted on the flaky server; delays are read three ways: the delay the gateway
says it was asked for (its DEBUG "retry requested ... delay_ms=N"), the gap between upstream
attempts (server clock) and the client's wall time for the whole call.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import harness as h
import pytest

BASE_MS = 100
# Upper slack on a gap: the gateway opens a new MCP session per attempt (tens of ms here).
SLACK_MS = 3000


def _assert_backoff(out: dict[str, Any], expected: list[int]) -> None:
    assert out["delays_ms"] == expected, out
    for gap, delay in zip(out["gaps_ms"], expected, strict=True):
        assert delay <= gap < delay + SLACK_MS, out
    assert out["elapsed_ms"] >= sum(expected), out


def test_flaky_twice_succeeds_on_third_attempt(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    out = h.record_call(gateway, flaky_server, "flaky(2), max_retries 2", "flaky", fail_times=2)
    assert out["answers"] == ["503", "503", "ok"], out
    _assert_backoff(out, [BASE_MS, 2 * BASE_MS])
    res = h.result_of(out)
    assert res.get("isError") is False, res
    assert "ok after 2 failures" in res["content"][0]["text"]


def test_flaky_three_times_returns_upstream_error(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    out = h.record_call(gateway, flaky_server, "flaky(3), max_retries 2", "flaky", fail_times=3)
    assert out["answers"] == ["503", "503", "503"], out
    _assert_backoff(out, [BASE_MS, 2 * BASE_MS])
    res = h.result_of(out)
    assert res["isError"] is True, res
    assert res["structuredContent"] == {"status_code": 503}
    assert res["content"][0]["text"].startswith("attempt 3:")


def test_ok_runs_once(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    out = h.record_call(gateway, flaky_server, "ok", "ok")
    assert out["answers"] == ["ok"], out
    assert out["delays_ms"] == []
    assert h.result_of(out).get("isError") is False


def test_non_retryable_status_runs_once(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    out = h.record_call(gateway, flaky_server, "not_found (404)", "not_found")
    assert out["answers"] == ["404"], out
    assert out["delays_ms"] == []
    res = h.result_of(out)
    assert res["isError"] is True
    assert res["structuredContent"] == {"status_code": 404}


def test_fresh_budget_per_call(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    """Two calls in a row: the second starts from the first backoff again (new request id)."""
    first = h.record_call(gateway, flaky_server, "always_fail, twice (1st call)", "always_fail")
    second = h.record_call(gateway, flaky_server, "always_fail, twice (2nd call)", "always_fail")
    for out in (first, second):
        assert out["attempts"] == 3, out
        _assert_backoff(out, [BASE_MS, 2 * BASE_MS])


def test_timeout_is_retried(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    """An attempt past TOOL_TIMEOUT (1 s): the gateway hands the plugin a synthesized
    {"isError": true} without status_code, and the plugin asks for a retry."""
    out = h.record_call(
        gateway, flaky_server, "slow(1) past TOOL_TIMEOUT=1s", "slow", slow_times=1, seconds=3
    )
    assert out["answers"] == ["slow", "ok"], out
    assert out["delays_ms"] == [BASE_MS], out
    assert 1000 + BASE_MS <= out["gaps_ms"][0] < 1000 + BASE_MS + SLACK_MS, out
    assert h.result_of(out).get("isError") is False


def test_http_503_is_retried(gateway: h.Gateway, flaky_server: h.FlakyServer) -> None:
    """HTTP 503 instead of an MCP result: the gateway synthesizes structuredContent.status_code."""
    out = h.record_call(gateway, flaky_server, "http_503(2): HTTP-level 503 twice", "http_503", fail_times=2)
    assert out["answers"] == ["http 503", "http 503", "ok"], out
    _assert_backoff(out, [BASE_MS, 2 * BASE_MS])
    assert h.result_of(out).get("isError") is False


def test_http_503_exhausted_is_an_error_to_the_client(
    gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """Retries of an HTTP-level failure run out: gateway 1.0 answers JSON-RPC error -32603; 1.1
    answers an MCP error result that names the upstream's 503."""
    out = h.record_call(gateway, flaky_server, "http_503(5): HTTP-level 503 always", "http_503", fail_times=5)
    assert out["answers"] == ["http 503"] * 3, out
    _assert_backoff(out, [BASE_MS, 2 * BASE_MS])
    if h.gateway_release() < (1, 1):
        assert out["resp"].get("error", {}).get("code") == -32603, out["resp"]
    else:
        res = h.result_of(out)
        assert res["isError"] is True, res
        assert "503 Service Unavailable" in res["content"][0]["text"], res


@pytest.mark.parametrize(
    "tool_args", [{"tool": "always_fail"}, {"tool": "flaky", "fail_times": 2}], ids=["always_fail", "flaky2"]
)
def test_gateway_ceiling_caps_attempts(
    capped_gateway: h.Gateway, flaky_server: h.FlakyServer, tool_args: dict[str, Any]
) -> None:
    """MAX_TOOL_RETRIES=1: two attempts at most, although the plugin allows max_retries 3."""
    args = dict(tool_args)
    tool = args.pop("tool")
    label = f"flaky({args['fail_times']})" if "fail_times" in args else tool
    out = h.record_call(
        capped_gateway, flaky_server, f"{label}, max_retries 3, MAX_TOOL_RETRIES=1", tool, **args
    )
    assert out["answers"] == ["503", "503"], out
    _assert_backoff(out, [BASE_MS])
    res = h.result_of(out)
    assert res["isError"] is True
    assert res["content"][0]["text"].startswith("attempt 2:")


def test_retries_span_a_plugin_manager_rebuild(
    gateways: dict[str, h.Gateway], flaky_server: h.FlakyServer
) -> None:
    """Issue 16: the gateway rebuilds its plugin manager (new plugin objects) on first use after
    30 s.  An always-failing tool with delays of 11 s and 22 s spans 33 s, so a rebuild lands
    between two of one call's decisions.  This plugin's objects share one instance and policy:
    exactly the planned 3 attempts.  The native plugin's state is per object: it is recorded beside
    (expected 4 — its count restarts, and only MAX_TOOL_RETRIES=3 stops it)."""
    scenario = "spans a manager rebuild (11 s, 22 s)"
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            name: pool.submit(
                h.record_call, gateways[name], flaky_server, scenario, "fail_across_rebuild", timeout=120
            )
            for name in ("wasm", "native")
        }
        wasm, native = runs["wasm"].result(), runs["native"].result()
    assert wasm["answers"] == ["503"] * 3, wasm
    assert wasm["delays_ms"] == [h.REBUILD_BASE_MS, 2 * h.REBUILD_BASE_MS], wasm
    # Recorded in the summary table; not asserted beyond what any plugin must do.
    assert native["attempts"] >= 3, native
