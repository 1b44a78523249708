"""Smoke run: the gateway's plugin stanza with the Wasm ``kind``, through the real cpex
PluginManager, deciding on a short sequence of tool results.

Run by ``make install`` (and ``make smoke``). Prints one line per tool result: what the
tool answered and the delay the plugin asked for (0 = no retry).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cpex.framework import GlobalContext, PluginManager, ToolPostInvokePayload
from cpex.framework.hooks.policies import HookPayloadPolicy

#: The gateway stanza with the Wasm ``kind`` (the file operators copy).
STANZA_FILE = Path(__file__).with_name("plugins.yaml")

FAIL_503: dict[str, Any] = {"isError": True, "structuredContent": {"status_code": 503}, "content": []}
FAIL_404: dict[str, Any] = {"isError": True, "structuredContent": {"status_code": 404}, "content": []}
OK: dict[str, Any] = {"isError": False, "content": [{"type": "text", "text": "done"}]}

SCRIPT = [
    ("flaky", "req-1", FAIL_503, "503"),
    ("flaky", "req-1", FAIL_503, "503"),
    ("flaky", "req-1", OK, "ok"),
    ("down", "req-2", FAIL_503, "503"),
    ("down", "req-2", FAIL_503, "503"),
    ("down", "req-2", FAIL_503, "503"),
    ("missing", "req-3", FAIL_404, "404"),
]


async def main() -> None:
    PluginManager.reset()
    manager = PluginManager(
        str(STANZA_FILE),
        hook_policies={"tool_post_invoke": HookPayloadPolicy(writable_fields=frozenset({"result"}))},
    )
    await manager.initialize()
    if manager.plugin_count != 1:
        raise SystemExit("smoke: the plugin did not load (see the log above)")
    print(f"{'tool':8} {'request':8} {'upstream':9} {'retry_delay_ms':>14}  decision")
    for tool, rid, result, label in SCRIPT:
        payload = ToolPostInvokePayload(name=tool, result=result)
        res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
        delay = res.retry_delay_ms
        verdict = f"retry after {delay} ms" if delay else "no retry"
        print(f"{tool:8} {rid:8} {label:9} {delay:>14}  {verdict}")
    await manager.shutdown()
    PluginManager.reset()


if __name__ == "__main__":
    asyncio.run(main())
