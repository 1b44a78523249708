"""A deliberately flaky MCP server (streamable HTTP, mcp SDK 1.x or 2.x) for the end-to-end tests.

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
- ``slow(slow_times, seconds, key)``: sleeps ``seconds`` on the first ``slow_times`` calls;
- ``slow_read_only``, ``slow_unannotated``, ``slow_overridden`` (same arguments): ``slow`` again,
  the first declaring the MCP annotation ``readOnlyHint: true``, the other two none (the e2e
  stanzas call ``slow_overridden`` idempotent in ``tool_overrides``);
- ``throttled(fail_times, key, status=429, retry_after_ms=None)``: no annotations; an error result
  with ``structuredContent: {"status_code": status}`` (plus ``retry_after_ms`` when given) for the
  first ``fail_times`` calls of ``key``, then success;
- ``http_503(fail_times, key)``: the first ``fail_times`` calls get an HTTP 503 response instead
  of an MCP result (logged with answer "http 503"), then success;
- ``attempts(key)``: how many calls ``key`` has had (any tool), not counted itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvicorn
from mcp.types import CallToolResult, TextContent, ToolAnnotations

try:  # mcp 2.x (gateway 1.1): FastMCP is renamed MCPServer, the HTTP options move to the app.
    from mcp.server.mcpserver import MCPServer
except ImportError:  # mcp 1.x (gateway 1.0.7)
    MCPServer = None

PORT = int(sys.argv[1])
LOG_PATH = sys.argv[2]

if MCPServer is not None:
    mcp = MCPServer("flaky", log_level="WARNING")

    def _http_app() -> Any:
        return mcp.streamable_http_app(stateless_http=True, host="127.0.0.1")

else:
    from mcp.server.fastmcp import FastMCP

    mcp = FastMCP("flaky", host="127.0.0.1", port=PORT, stateless_http=True, log_level="WARNING")

    def _http_app() -> Any:
        return mcp.streamable_http_app()


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


def _error(status: int, text: str, **structured: Any) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structuredContent={"status_code": status, **structured},
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
def fail_across_rebuild(key: str) -> CallToolResult:
    """Always fail with 503 (its own name: the e2e stanzas give it long delays, so that one
    call's attempts straddle the gateway's 30 s plugin-manager rebuild)."""
    n, _ = _record("fail_across_rebuild", key, lambda _n: "503")
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


async def _slow(tool: str, slow_times: int, seconds: float, key: str) -> CallToolResult:
    n, a = _record(tool, key, lambda n: "slow" if n <= slow_times else "ok")
    if a == "slow":
        await asyncio.sleep(seconds)
    return _success(f"attempt {n}: ok ({a})")


@mcp.tool()
async def slow(slow_times: int, seconds: float, key: str) -> CallToolResult:
    """Take `seconds` for the first slow_times calls of key (past the gateway's tool timeout), then
    answer at once."""
    return await _slow("slow", slow_times, seconds, key)


# Written with the camelCase field names: mcp 2.x accepts them as aliases, and mcp 1.x would
# keep a snake_case name as an extra field, which the gateway then stores under that name.
@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
async def slow_read_only(slow_times: int, seconds: float, key: str) -> CallToolResult:
    """`slow`, declared read-only (readOnlyHint: true): idempotent by its annotations."""
    return await _slow("slow_read_only", slow_times, seconds, key)


@mcp.tool()
async def slow_unannotated(slow_times: int, seconds: float, key: str) -> CallToolResult:
    """`slow` without annotations: not idempotent (the MCP defaults)."""
    return await _slow("slow_unannotated", slow_times, seconds, key)


@mcp.tool()
async def slow_overridden(slow_times: int, seconds: float, key: str) -> CallToolResult:
    """`slow` without annotations; the e2e stanzas configure it `idempotent: true`."""
    return await _slow("slow_overridden", slow_times, seconds, key)


@mcp.tool()
def throttled(
    fail_times: int, key: str, status: int = 429, retry_after_ms: int | None = None
) -> CallToolResult:
    """No annotations. Fail with `status` (429: the server refused the call) for the first
    fail_times calls of key, with the delay hint `retry_after_ms` when given, then succeed."""
    n, a = _record("throttled", key, lambda n: str(status) if n <= fail_times else "ok")
    if a != "ok":
        hint = {} if retry_after_ms is None else {"retry_after_ms": retry_after_ms}
        return _error(status, f"attempt {n}: refused ({status})", **hint)
    return _success(f"attempt {n}: ok after {fail_times} refusals")


@mcp.tool()
def http_503(fail_times: int, key: str) -> CallToolResult:
    """Success; but the first fail_times HTTP requests calling it for key get an HTTP 503 response
    (no MCP result at all) from the middleware below."""
    n, _ = _record("http_503", key, lambda _n: "ok")
    return _success(f"attempt {n}: ok")


class Http503:
    """ASGI middleware: answer HTTP 503 to a tools/call of http_503 while its key has failures left."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if self._fail(body):
            await send(
                {"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": b"upstream unavailable"})
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _fail(body: bytes) -> bool:
        try:
            msg = json.loads(body)
            params = msg["params"]
            if msg.get("method") != "tools/call" or params["name"] != "http_503":
                return False
            args = params["arguments"]
            key, fail_times = str(args["key"]), int(args["fail_times"])
        except (ValueError, KeyError, TypeError):
            return False
        with _lock:
            if _http_failures[key] >= fail_times:
                return False
            _http_failures[key] += 1
        _record("http_503", key, lambda _n: "http 503")
        return True


_http_failures: Counter[str] = Counter()


@mcp.tool()
def attempts(key: str) -> int:
    """How many calls key has had so far."""
    with _lock:
        return _counts[key]


if __name__ == "__main__":
    uvicorn.run(Http503(_http_app()), host="127.0.0.1", port=PORT, log_level="warning")
