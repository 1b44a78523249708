"""Per-call cost of ``tool_post_invoke``: this plugin (Wasm engine) next to the native plugin.

Both plugins run in this process on identical prebuilt payloads, in interleaved rounds
(the order alternates each round), and the script prints the median per-call cost of each
and their ratio.  The hook coroutine is driven directly (``coro.send(None)``) so the figure is
the hook's own cost, not the event loop's.  Results are ``CopyOnWriteDict``s, as the gateway
passes them when ``tool_post_invoke`` may write ``result``.

Workloads:
  success      every call succeeds (1000 request ids, one tool)
  mixed-10pct  10% failures (HTTP 503) over 1000 request ids x 20 tools
  exhaustion   every call fails: each (tool, request id) runs its budget out and starts over

Usage: python bench/bench_hook.py [--rounds 15] [--calls 4000] [--config '{"jitter": false}']
The native plugin (cpex-retry-with-backoff==0.3.11) is optional; without it only this
plugin's figures are printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from cpex.framework import GlobalContext, PluginConfig, PluginContext, ToolPostInvokePayload
from cpex.framework.memory import CopyOnWriteDict

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin

Call = tuple[Any, Any]  # (payload, context)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never awaits anything pending, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the hook awaited something; cannot drive it synchronously")


def make_call(tool: str, rid: str, result: dict[str, Any]) -> Call:
    payload = ToolPostInvokePayload(name=tool, result=CopyOnWriteDict(result))
    return payload, PluginContext(global_context=GlobalContext(request_id=rid))


OK = {"content": [{"type": "text", "text": "fine"}], "isError": False}
FAIL = {
    "content": [{"type": "text", "text": "upstream 503"}],
    "isError": True,
    "structuredContent": {"status_code": 503},
}


def workload_success(n: int) -> list[Call]:
    return [make_call("search", f"req-{i % 1000}", OK) for i in range(n)]


def workload_mixed(n: int) -> list[Call]:
    rng = random.Random(10)
    return [
        make_call(
            f"tool-{rng.randrange(20)}", f"req-{rng.randrange(1000)}", FAIL if rng.random() < 0.10 else OK
        )
        for _ in range(n)
    ]


def workload_exhaustion(n: int, budget: int) -> list[Call]:
    calls: list[Call] = []
    key = 0
    while len(calls) < n:
        tool, rid = f"tool-{key % 20}", f"req-{key}"
        calls.extend(make_call(tool, rid, FAIL) for _ in range(budget + 1))
        key += 1
    return calls[:n]


def time_per_call(plugin: Any, calls: list[Call]) -> float:
    hook = plugin.tool_post_invoke
    start = time.perf_counter()
    for payload, context in calls:
        drive(hook(payload, context, None))
    return (time.perf_counter() - start) / len(calls) * 1e6


def plugin_config(kind: str, config: dict[str, Any]) -> PluginConfig:
    return PluginConfig(
        name="RetryWithBackoffPlugin",
        kind=kind,
        hooks=["tool_post_invoke"],
        priority=170,
        config=dict(config),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--config", default="{}", help="plugin config as JSON (default: the defaults)")
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    # The native plugin logs a warning on every exhausted budget; keep I/O out of the timings.
    logging.disable(logging.CRITICAL)

    plugins: dict[str, Callable[[], Any]] = {
        "wasm": lambda: RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", config)
        ),
    }
    try:
        import cpex_retry_with_backoff

        plugins["native"] = lambda: cpex_retry_with_backoff.RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff.RetryWithBackoffPlugin", config)
        )
    except ImportError:
        print("cpex-retry-with-backoff not installed: measuring this plugin only", file=sys.stderr)

    budget = int(config.get("max_retries", 2))
    workloads = {
        "success": workload_success(args.calls),
        "mixed-10pct": workload_mixed(args.calls),
        "exhaustion": workload_exhaustion(args.calls, budget),
    }

    names = sorted(plugins)
    rounds = f"median of {args.rounds} interleaved rounds x {args.calls} calls"
    print(f"tool_post_invoke per-call cost, {rounds} (us)")
    header = f"{'workload':<14}" + "".join(f"{n:>10}" for n in names)
    if "native" in plugins:
        header += f"{'wasm/native':>13}"
    print(header)
    for label, calls in workloads.items():
        instances = {name: make() for name, make in plugins.items()}
        for instance in instances.values():  # warm-up
            time_per_call(instance, calls[:200])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                samples[name].append(time_per_call(instances[name], calls))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        row = f"{label:<14}" + "".join(f"{medians[n]:>10.2f}" for n in names)
        if "native" in medians:
            row += f"{medians['wasm'] / medians['native']:>12.2f}x"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
