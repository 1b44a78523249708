"""A deliberately flaky MCP server (streamable HTTP, mcp SDK) for the end-to-end tests.

Usage: python flaky_server.py PORT ATTEMPT_LOG

Every tool takes a ``key``; the server counts calls per key and appends one JSON line per
call to ATTEMPT_LOG: ``{"t": <time.time()>, "tool", "key", "attempt", "answer"}``, so the
test and the demo can count upstream attempts and measure the gap between them.

Tools:
- ``flaky(fail_times, key)``: an MCP error result (``isError: true``, ``structuredContent:
  {"status_code": 503}``) for the first ``fail_times`` calls of ``key``, then success;
- ``always_fail(key)``: always the 503 error result;
- ``not_found(key)``: always an error result with ``status_code`` 404 (not retriable);
- ``ok(key)``: always success;
- ``attempts(key)``: how many calls ``key`` has had (any tool), not counted itself.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable

from mcp.server.fastmcp import FastMCP
from mcp.types import CallToolResult, TextContent

PORT = int(sys.argv[1])
LOG_PATH = sys.argv[2]

mcp = FastMCP("flaky", host="127.0.0.1", port=PORT, stateless_http=True, log_level="WARNING")
_lock = threading.Lock()
_counts: Counter[str] = Counter()


def _record(tool: str, key: str, answer: Callable[[int], str]) -> tuple[int, str]:
    """Count one call of key; answer(n) names the n-th call's answer ("ok", "503", "404")."""
    with _lock:
        _counts[key] += 1
        n = _counts[key]
        a = answer(n)
        line = {"t": time.time(), "tool": tool, "key": key, "attempt": n, "answer": a}
        with open(LOG_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        return n, a


def _error(status: int, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structuredContent={"status_code": status},
        isError=True,
    )


def _success(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], isError=False)


@mcp.tool()
def flaky(fail_times: int, key: str) -> CallToolResult:
    """Fail with 503 for the first fail_times calls of key, then succeed."""
    n, a = _record("flaky", key, lambda n: "503" if n <= fail_times else "ok")
    if a == "503":
        return _error(503, f"attempt {n}: upstream unavailable (503)")
    return _success(f"attempt {n}: ok after {fail_times} failures")


@mcp.tool()
def always_fail(key: str) -> CallToolResult:
    """Always fail with 503."""
    n, _ = _record("always_fail", key, lambda _n: "503")
    return _error(503, f"attempt {n}: upstream unavailable (503)")


@mcp.tool()
def not_found(key: str) -> CallToolResult:
    """Always fail with 404 (not retriable)."""
    n, _ = _record("not_found", key, lambda _n: "404")
    return _error(404, f"attempt {n}: not found (404)")


@mcp.tool()
def ok(key: str) -> CallToolResult:
    """Always succeed."""
    n, _ = _record("ok", key, lambda _n: "ok")
    return _success(f"attempt {n}: ok")


@mcp.tool()
def attempts(key: str) -> int:
    """How many calls key has had so far."""
    with _lock:
        return _counts[key]


if __name__ == "__main__":
    mcp.run(transport="streamable-http")
