"""``non_idempotent_retries: "throttled"`` through the real gateway (since contract 0.4).

Both plugins run with ``non_idempotent_retries: "throttled"`` and
``tool_overrides.flaky-slow-overridden.idempotent: true``; this plugin with ``hooks:
[tool_pre_invoke, tool_post_invoke]``, the native one with ``[tool_post_invoke]`` (it has no
``tool_pre_invoke``, and cpex refuses to load a plugin for a hook it lacks). This plugin reads
the tool's annotations from the record the gateway puts in ``global_context.metadata["tool"]``
before ``tool_pre_invoke``; a tool that is not idempotent keeps its retries only after a
structured 429 or a 503 carrying a delay hint. The native plugin ignores both keys and retries
every retriable failure: its attempts are asserted too, and both are printed side by side in
the summary table.

A timeout (an attempt past ``TOOL_TIMEOUT=1`` s) reaches ``tool_post_invoke`` on both gateway
releases, on the per-call session path ``POST /rpc`` takes to a streamable-HTTP upstream, as an
error result without a status code and without the ``cb_timeout_failure`` mark (the gateway's
timeout handler does not see the timeout, which arrives wrapped in an exception group): for the
plugin it is "any other failure", refused for a tool that is not idempotent either way.
"""

from __future__ import annotations

from typing import Any

import harness as h

BASE_MS = 100


def _record(gw: h.Gateway, server: h.FlakyServer, scenario: str, tool: str, **args: Any) -> dict[str, Any]:
    return h.record_call(gw, server, f"throttled: {scenario}", tool, **args)


def _succeeded(out: dict[str, Any]) -> None:
    assert h.result_of(out).get("isError") is False, out["resp"]


def test_read_only_tool_is_retried_after_a_timeout(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """readOnlyHint: true makes the tool idempotent: retried as under "all"."""
    out = _record(
        throttled_gateway,
        flaky_server,
        "readOnlyHint, past TOOL_TIMEOUT once",
        "slow_read_only",
        slow_times=1,
        seconds=3,
    )
    assert out["answers"] == ["slow", "ok"], out
    assert out["delays_ms"] == [BASE_MS], out
    _succeeded(out)


def test_unannotated_tool_is_not_retried_after_a_timeout(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """No annotations: not idempotent, and a timeout is not a refusal: this plugin gives up after
    the first attempt (reason non-idempotent); the native plugin retries."""
    variant = throttled_gateway.plugin.variant
    out = _record(
        throttled_gateway,
        flaky_server,
        "no annotations, past TOOL_TIMEOUT once",
        "slow_unannotated",
        slow_times=1,
        seconds=3,
    )
    if variant == "wasm":
        assert out["answers"] == ["slow"], out
        assert out["delays_ms"] == [], out
        resp = out["resp"]
        # 1.0.7 answers a JSON-RPC error; 1.1.0 an MCP error result.
        assert "error" in resp or resp["result"]["isError"] is True, resp
    else:
        assert out["answers"] == ["slow", "ok"], out
        assert out["delays_ms"] == [BASE_MS], out
        _succeeded(out)


def test_tool_configured_idempotent_is_retried_after_a_timeout(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """No annotations, but tool_overrides says idempotent: true: retried."""
    out = _record(
        throttled_gateway,
        flaky_server,
        "idempotent: true override, past TOOL_TIMEOUT once",
        "slow_overridden",
        slow_times=1,
        seconds=3,
    )
    assert out["answers"] == ["slow", "ok"], out
    assert out["delays_ms"] == [BASE_MS], out
    _succeeded(out)


def test_unannotated_tool_is_retried_after_429(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """A structured 429 says the server refused the call: retried, max_retries 2 (3 attempts)."""
    out = _record(throttled_gateway, flaky_server, "no annotations, 429 twice", "throttled", fail_times=2)
    assert out["answers"] == ["429", "429", "ok"], out
    assert out["delays_ms"] == [BASE_MS, 2 * BASE_MS], out
    _succeeded(out)


def test_unannotated_tool_is_retried_after_503_with_a_delay_hint(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """A 503 carrying a server delay hint (structuredContent.retry_after_ms) is a refusal too.
    honor_retry_after is off: the hint marks the failure throttled, the delays stay the backoff."""
    out = _record(
        throttled_gateway,
        flaky_server,
        "no annotations, 503 + retry_after_ms twice",
        "throttled",
        fail_times=2,
        status=503,
        retry_after_ms=50,
    )
    assert out["answers"] == ["503", "503", "ok"], out
    assert out["delays_ms"] == [BASE_MS, 2 * BASE_MS], out
    _succeeded(out)


def test_unannotated_tool_is_not_retried_after_503_without_a_hint(
    throttled_gateway: h.Gateway, flaky_server: h.FlakyServer
) -> None:
    """A plain 503 may have run the tool: this plugin returns the first error; the native plugin
    retries."""
    variant = throttled_gateway.plugin.variant
    out = _record(throttled_gateway, flaky_server, "no annotations, 503 twice", "flaky", fail_times=2)
    if variant == "wasm":
        assert out["answers"] == ["503"], out
        assert out["delays_ms"] == [], out
        res = h.result_of(out)
        assert res["isError"] is True, res
        assert res["structuredContent"] == {"status_code": 503}, res
    else:
        assert out["answers"] == ["503", "503", "ok"], out
        assert out["delays_ms"] == [BASE_MS, 2 * BASE_MS], out
        _succeeded(out)
