"""Per-call cost of ``tool_post_invoke``: this plugin (Wasm engine) next to the native plugin.

Both plugins run in this process on identical prebuilt payloads, in interleaved rounds
(the order alternates each round), and the script prints the median per-call cost of each
and their ratio.  The hook coroutine is driven directly (``coro.send(None)``) so the figure is
the hook's own cost, not the event loop's.  Results are ``CopyOnWriteDict``s, as the gateway
passes them when ``tool_post_invoke`` may write ``result``.

Metrics: ``wasm`` is this plugin as configured (its Prometheus metrics on, the default),
``wasm-off`` the same with ``prometheus_metrics: false``, timed in the same interleaved rounds;
``metrics`` is their difference.  Then the metrics' own work is timed on its own: the hook's
``record`` call, and the flush that later exports each recorded decision (the daemon thread's
or a scrape's share per call).

``wasm-throttled`` is this plugin with ``non_idempotent_retries: "throttled"``, timed as the
gateway then calls it: ``tool_pre_invoke`` (a no-op) and ``tool_post_invoke`` per call, the
latter reading the tool's annotations on failures; the gateway's own dispatch of the extra hook
is not included.

Workloads:
  success      every call succeeds (1000 request ids, one tool)
  mixed-10pct  10% failures (HTTP 503) over 1000 request ids x 20 tools
  exhaustion   every call fails: each (tool, request id) runs its budget out and starts over

Usage: python bench/bench_hook.py [--rounds 15] [--calls 4000] [--config '{"jitter": false}']
                                  [--json results.json]
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

from cpex.framework import (
    GlobalContext,
    PluginConfig,
    PluginContext,
    ToolPostInvokePayload,
    ToolPreInvokePayload,
)
from cpex.framework.memory import CopyOnWriteDict

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm import metrics as retry_metrics
from cpex_retry_with_backoff_wasm.instance import INSTANCES

Call = tuple[Any, Any]  # (payload, context)
#: The variant timed with both hooks, as the gateway calls a plugin that has tool_pre_invoke.
THROTTLED = "wasm-throttled"


def fresh(config: Any) -> RetryWithBackoffPlugin:
    """A plugin object in an instance of its own: every object of a process shares one
    (``instance``), and each workload starts from an empty state, as the native plugin's does."""
    INSTANCES.clear()
    return RetryWithBackoffPlugin(config)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never awaits anything pending, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the hook awaited something; cannot drive it synchronously")


def make_call(tool: str, rid: str, result: dict[str, Any]) -> Call:
    payload = ToolPostInvokePayload(name=tool, result=CopyOnWriteDict(result))
    context = PluginContext(global_context=GlobalContext(request_id=rid))
    # The tool's record as the gateway puts it there before tool_pre_invoke (no annotations).
    context.global_context.metadata["tool"] = {"name": tool, "annotations": {}}
    return payload, context


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


def time_per_call_both_hooks(plugin: Any, calls: list[Call]) -> float:
    pre, post = plugin.tool_pre_invoke, plugin.tool_post_invoke
    pre_payloads = [ToolPreInvokePayload(name=payload.name, args={}) for payload, _ in calls]
    start = time.perf_counter()
    for (payload, context), pre_payload in zip(calls, pre_payloads, strict=True):
        drive(pre(pre_payload, context, None))
        drive(post(payload, context, None))
    return (time.perf_counter() - start) / len(calls) * 1e6


def plugin_config(
    kind: str, config: dict[str, Any], hooks: tuple[str, ...] = ("tool_post_invoke",)
) -> PluginConfig:
    return PluginConfig(
        name="RetryWithBackoffPlugin",
        kind=kind,
        hooks=list(hooks),
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
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    # The native plugin logs a warning on every exhausted budget; keep I/O out of the timings.
    logging.disable(logging.CRITICAL)

    wasm_kind = "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"
    plugins: dict[str, Callable[[], Any]] = {
        "wasm": lambda: fresh(plugin_config(wasm_kind, config)),
        "wasm-off": lambda: fresh(
            plugin_config(wasm_kind, {**config, retry_metrics.KEY_PROMETHEUS_METRICS: False})
        ),
        THROTTLED: lambda: fresh(
            plugin_config(
                wasm_kind,
                {**config, "non_idempotent_retries": "throttled"},
                hooks=("tool_pre_invoke", "tool_post_invoke"),
            )
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
    header = f"{'workload':<14}" + "".join(f"{n:>10}" for n in names) + f"{'metrics':>10}"
    if "native" in plugins:
        header += f"{'wasm/native':>13}"
    print(header)
    results: dict[str, Any] = {"rounds": args.rounds, "calls": args.calls, "config": config, "workloads": {}}
    for label, calls in workloads.items():
        instances = {name: make() for name, make in plugins.items()}
        timers = {name: time_per_call_both_hooks if name == THROTTLED else time_per_call for name in names}
        for name, instance in instances.items():  # warm-up
            timers[name](instance, calls[:200])
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else list(reversed(names))
            for name in order:
                samples[name].append(timers[name](instances[name], calls))
        medians = {name: statistics.median(values) for name, values in samples.items()}
        row = f"{label:<14}" + "".join(f"{medians[n]:>10.2f}" for n in names)
        row += f"{medians['wasm'] - medians['wasm-off']:>+10.2f}"
        if "native" in medians:
            row += f"{medians['wasm'] / medians['native']:>12.2f}x"
        print(row)
        results["workloads"][label] = medians
    results["metrics_alone"] = metrics_alone(workloads, args.rounds)
    alone = results["metrics_alone"]
    print(f"metrics alone, median of {args.rounds} rounds (us of CPU time per call)")
    for label, figures in alone.items():
        print(
            f"  {label:<12} record {figures['record']:5.3f}  flush {figures['flush']:5.3f}"
            f"  total {figures['record'] + figures['flush']:5.3f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    return 0


class _HookLines:
    """The metrics' lines of ``tool_post_invoke``, as written there, over recorded decisions."""

    def __init__(self, recorder: retry_metrics.PluginMetrics | None) -> None:
        self._metrics = recorder

    def run(self, decisions: list[tuple[str, int]]) -> None:
        for tool, decision in decisions:
            if self._metrics is not None:
                (self._metrics.queues.get(tool) or self._metrics.queue(tool))(decision)


def metrics_alone(workloads: dict[str, list[Call]], rounds: int) -> dict[str, dict[str, float]]:
    """The metrics' own per-call cost on each workload's decisions, apart from the hook.

    ``record``: the hook's lines (a None test, the tool's queue, ``append``), less the same
    loop with metrics off (the None test alone).  ``flush``: exporting the recorded decisions
    into the ``prometheus_client`` objects, per decision.  Timed in this thread's CPU time:
    on a shared machine, wall time would add whatever else ran meanwhile.
    """
    kind = "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"
    owner = RetryWithBackoffPlugin(plugin_config(kind, {}))
    out: dict[str, dict[str, float]] = {}
    for label, calls in workloads.items():
        # The decisions the hook makes on this workload, from a fresh plugin.
        plugin = fresh(plugin_config(kind, {"prometheus_metrics": False}))
        decide, policy = plugin.instance.decide, plugin.policy
        decisions = [(p.name, decide(policy, p.name, c.global_context, p.result, c)) for p, c in calls]
        on = _HookLines(retry_metrics.attach(owner, f"bench-{label}", owner.policy))
        off = _HookLines(None)
        record_us, flush_us = [], []
        for _ in range(rounds):
            retry_metrics.flush(sample_state=False)
            start = time.thread_time()
            off.run(decisions)
            middle = time.thread_time()
            on.run(decisions)
            end = time.thread_time()
            retry_metrics.flush(sample_state=False)
            flushed = time.thread_time()
            record_us.append(((end - middle) - (middle - start)) / len(decisions) * 1e6)
            flush_us.append((flushed - end) / len(decisions) * 1e6)
        out[label] = {"record": statistics.median(record_us), "flush": statistics.median(flush_us)}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
