"""`make demo`: the real gateway retrying real MCP tool calls with the wasm plugin.

Starts the flaky MCP server and mcp-contextforge-gateway (sqlite in a temporary directory,
this plugin in its plugins config), registers the server, makes a few tool calls through
POST /rpc and prints every upstream attempt: what the server answered, the delay the plugin
chose (the gateway's own "retry requested ... delay_ms=N" log line) and the outcome. Stops
everything on the way out, also on errors or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness as h

PLUGIN = h.PluginSetup(variant="wasm", max_retries=2, backoff_base_ms=200, max_backoff_ms=5000, jitter=True)
CEILING = 3  # MAX_TOOL_RETRIES

CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("a healthy tool", "ok", {}),
    ("fails twice, then works", "flaky", {"fail_times": 2}),
    ("fails three times (one more than max_retries)", "flaky", {"fail_times": 3}),
    ("404 is not in retry_on_status", "not_found", {}),
    ("an HTTP-level 503 once (the gateway synthesizes the status)", "http_503", {"fail_times": 1}),
]


def main() -> int:
    h.stop_on_sigterm()
    root = Path(tempfile.mkdtemp(prefix="retry-demo-"))
    server = gateway = None
    try:
        v = h.versions()
        print(
            f"gateway  mcp-contextforge-gateway {v['gateway']} on Python {v['python']}"
            f" (cpex {v['cpex']}, mcp {v['mcp']}), MAX_TOOL_RETRIES={CEILING}"
        )
        print(
            f"plugin   {h.PLUGINS['wasm'][1]} {v['wasm']} as {h.PLUGINS['wasm'][0]}, hooks [tool_post_invoke]"
        )
        print(
            f"config   max_retries={PLUGIN.max_retries} backoff_base_ms={PLUGIN.backoff_base_ms}"
            f" max_backoff_ms={PLUGIN.max_backoff_ms} jitter={PLUGIN.jitter}"
            f" retry_on_status={PLUGIN.retry_on_status}"
        )
        server = h.start_flaky_server(root)
        print(f"started  flaky MCP server   pid {server.proc.pid}  {server.url}")
        t0 = time.monotonic()
        gateway = h.launch_gateway(root / "gateway", PLUGIN, max_tool_retries=CEILING)
        h.mint_token()  # while it starts
        gateway.wait_ready()
        up = time.monotonic() - t0
        print(
            f"started  gateway            pid {gateway.proc.pid}  {gateway.base}  (healthy after {up:.1f} s)"
        )
        gateway.register(server)
        print(f"         registered the server as '{h.SERVER_NAME}': {', '.join(gateway.tool_names())}")
        for i, (title, tool, args) in enumerate(CALLS, 1):
            trace(gateway, server, i, (title, tool, args))
        return 0
    finally:
        # Stop everything first: printing may fail (closed pipe) and must not leave processes.
        stopped = []
        for name, thing in (("gateway", gateway), ("flaky MCP server", server)):
            if thing is not None:
                thing.proc.stop()
                stopped.append(f"stopped  {name:18} pid {thing.proc.pid}")
        with contextlib.suppress(OSError):
            print("\n" + "\n".join(stopped))
        shutil.rmtree(root, ignore_errors=True)


def trace(gw: h.Gateway, server: h.FlakyServer, i: int, call: tuple[str, str, dict[str, Any]]) -> None:
    title, tool, args = call
    key = f"demo-{i}"
    name = f"{h.SERVER_NAME}-{tool.replace('_', '-')}"
    print(f"\n[{i}] {title}: tools/call {name} {json.dumps(args)}")
    resp, elapsed = gw.call(name, {**args, "key": key}, correlation_id=key)
    rows = server.attempts(key)
    delays = gw.retry_delays(key)
    for n, row in enumerate(rows, 1):
        answer = {
            "ok": "success",
            "503": "error result, status_code 503",
            "404": "error result, status_code 404",
            "http 503": "HTTP 503, no MCP result",
        }[row["answer"]]
        at = f"+{(row['t'] - rows[n - 2]['t']) * 1000:.0f} ms" if n > 1 else "t=0"
        if n <= len(delays):
            ceiling = min(PLUGIN.backoff_base_ms * 2 ** (n - 1), PLUGIN.max_backoff_ms)
            drawn = f" (drawn from [1, {ceiling}])" if PLUGIN.jitter else ""
            decision = f"retry after {delays[n - 1]} ms{drawn}"
        elif row["answer"] == "ok":
            decision = "no retry: success"
        elif row["answer"] == "404":
            decision = "no retry: 404 not retriable"
        else:
            decision = f"no retry: max_retries={PLUGIN.max_retries} spent"
        print(f"    attempt {n} {at:>8}  upstream: {answer:30} -> plugin: {decision}")
    result = resp.get("result", {})
    if "result" not in resp:
        outcome = f"JSON-RPC error {resp.get('error')}"
    elif result.get("isError"):
        outcome = f"error returned to the client: {result['content'][0]['text']!r}"
    else:
        outcome = f"success returned to the client: {result['content'][0]['text']!r}"
    print(f"    outcome: {outcome}; {len(rows)} upstream attempt(s), {elapsed * 1000:.0f} ms at the client")


if __name__ == "__main__":
    sys.exit(main())
