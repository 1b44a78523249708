"""Time of one hostile tool result, this plugin next to the native plugin (issue 12 §1, §2).

For each input: a fresh plugin (``check_text_content: true``, ``max_retries: 5``), a victim key
failing twice, then the hostile result on another key, timed on its own (the hook driven
directly, as in ``bench_hook.py``; payload and context are built before the clock starts),
then the victim's next failure.  Prints the best and worst of ``--rounds`` timings of the
hostile call, its decision, and the victim's retry count after it (3: the victim kept its
state).  The inputs are built once and shared.

  32MiB-isError-text   one text item {"isError": true, "pad": "x" * 32 MiB}
  1e6-text-items       10^6 text items of ~100 B of JSON without a failure marker
  16MiB-request-id     a failure whose request id is 16 MiB
  16MiB-tool-name      a failure whose tool name is 16 MiB

Usage: python bench/bench_hostile.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from bench_hook import drive, plugin_config
from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.instance import INSTANCES

MIB = 1024 * 1024
CONFIG = {"jitter": False, "check_text_content": True, "max_retries": 5}
FAIL = {"content": [{"type": "text", "text": "upstream 503"}], "isError": True}

Input = tuple[str, str, Any]  # (tool, request id, result)


def fresh(config: Any) -> RetryWithBackoffPlugin:
    """A plugin object with an instance of its own, so each round's victim starts from no state
    (objects of one configuration otherwise share one: ``shared``)."""
    INSTANCES.clear()
    return RetryWithBackoffPlugin(config)


def inputs() -> dict[str, Input]:
    marker = {"type": "text", "text": json.dumps({"isError": True, "pad": "x" * (32 * MIB)})}
    small = {"type": "text", "text": json.dumps({"ok": True, "pad": "p" * 80})}
    big = "k" * (16 * MIB)
    return {
        "32MiB-isError-text": ("t", "hostile", {"content": [marker], "isError": False}),
        "1e6-text-items": ("t", "hostile", {"content": [small] * 10**6, "isError": False}),
        "16MiB-request-id": ("t", big, FAIL),
        "16MiB-tool-name": (big, "hostile", FAIL),
    }


def prepared(tool: str, rid: str, result: Any) -> tuple[Any, Any]:
    """The hook's arguments, built before any timing (pydantic validates them)."""
    payload = ToolPostInvokePayload(name=tool, result=result)
    return payload, PluginContext(global_context=GlobalContext(request_id=rid))


def call(plugin: Any, tool: str, rid: str, result: Any) -> Any:
    return drive(plugin.tool_post_invoke(*prepared(tool, rid, result), None))


def victim_count(plugin: Any) -> int:
    """The victim's retry count after its next failure, read back from its delay (no jitter)."""
    delay = int(call(plugin, "t", "victim", FAIL).retry_delay_ms)
    return {0: 0, 200: 1, 400: 2, 800: 3}.get(delay, -1)


def measure(make: Callable[[], Any], hostile: Input, rounds: int) -> tuple[float, float, int, int]:
    """Best and worst ms of the hostile call over ``rounds``, its delay, the victim's count."""
    times: list[float] = []
    delay = count = -1
    for _ in range(rounds):
        plugin = make()
        for _ in range(2):
            call(plugin, "t", "victim", FAIL)
        payload, context = prepared(*hostile)
        start = time.perf_counter()
        res = drive(plugin.tool_post_invoke(payload, context, None))
        times.append((time.perf_counter() - start) * 1e3)
        delay = int(res.retry_delay_ms)
        count = victim_count(plugin)
    return min(times), max(times), delay, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    plugins: dict[str, Callable[[], Any]] = {
        "wasm": lambda: fresh(plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", CONFIG)),
    }
    try:
        import cpex_retry_with_backoff

        plugins["native"] = lambda: cpex_retry_with_backoff.RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff.RetryWithBackoffPlugin", CONFIG)
        )
    except ImportError:
        print("cpex-retry-with-backoff not installed: measuring this plugin only", file=sys.stderr)

    print(f"one hostile result after a victim's 2 failures (ms, best/worst of {args.rounds})")
    print(f"{'input':<20}{'plugin':>8}{'best':>10}{'worst':>10}{'delay':>8}{'victim count':>14}")
    for label, hostile in inputs().items():
        for name, make in plugins.items():
            best, worst, delay, count = measure(make, hostile, args.rounds)
            print(f"{label:<20}{name:>8}{best:>10.2f}{worst:>10.2f}{delay:>8}{count:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
