"""Smoke run: the gateway's plugin stanza with the Wasm ``kind``, through the real cpex
PluginManager, deciding on a short sequence of tool results.

Run by ``make install`` (and ``make smoke``). Prints one line per tool result: what the
tool answered, the delay the plugin asked for, and the failure count it reports.
"""

from __future__ import annotations

import asyncio
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from cpex.framework import GlobalContext, PluginManager, ToolPostInvokePayload
from cpex.framework.hooks.policies import HookPayloadPolicy

STANZA = textwrap.dedent(
    """
    plugins:
      - name: RetryWithBackoffPlugin
        kind: cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin
        hooks: [tool_post_invoke, resource_post_fetch]
        mode: sequential
        priority: 170
        config:
          max_retries: 2
          backoff_base_ms: 200
          max_backoff_ms: 5000
          retry_on_status: [429, 500, 502, 503, 504]
          jitter: false
    plugin_dirs: []
    plugin_settings: {plugin_timeout: 30}
    """
)

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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plugins.yaml"
        path.write_text(STANZA)
        PluginManager.reset()
        manager = PluginManager(
            str(path),
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
