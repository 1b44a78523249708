"""Soak / load run through the real cpex PluginManager (issue 7, item 6).

Loads the plugin from the gateway's YAML stanza (``RetryWithBackoffWasmPlugin``, jitter off so
every decision is predictable) and drives ``tool_post_invoke`` through
``PluginManager.invoke_hook``, as the gateway does, in two phases:

1. **exhaustion**: ``--exhaust`` unique request ids failing once (default 10^6) against the
   state bound: the bound holds, the newest ids keep their budget, the oldest went first;
2. **mixed**: ``--tasks`` asyncio tasks for ``--seconds``, each owning its keys: plain
   successes, flaky keys failing up to past their budget and recovering, unique ids failing once,
   non-retriable and retriable structured status codes, text-content checks, trace metrics; plus
   a hot reload of the component every ``--reload-every`` seconds (state carried over).

Every decision is checked against a sequential model of the documented policy (per key), so
"nothing lost" is measured, not assumed: a lost or corrupted retry state shows up as a
mismatch.  Reports throughput, p50/p99/p99.9/max hook latency, guest state count, faults and
process RSS at start and end, all under a guest memory cap (``--memory-mib``; a fault would show
in the fault count).  Exit status 1 on any mismatch, fault, exception or bound violation.

    .venv/bin/python bench/soak.py                    # make soak: 120 s, 10^6 unique ids
    .venv/bin/python bench/soak.py --seconds 3 --exhaust 20000 --max-state-entries 5000   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cpex.framework import GlobalContext, PluginManager, ToolPostInvokePayload
from cpex.framework.extensions.extensions import Extensions
from cpex.framework.extensions.request import RequestExtension
from cpex.framework.hooks.policies import HookPayloadPolicy

from cpex_retry_with_backoff_wasm import RetryEngineLoadError

NAME = "RetryWithBackoffWasmPlugin"
KIND = "cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin"
BASE_MS, MAX_MS, MAX_RETRIES = 100, 2_000, 3
TEXT_TOOL, TEXT_RETRIES = "docs-search", 1
TOOLS = ("weather-get-forecast", "search-web", TEXT_TOOL)

FAIL: dict[str, Any] = {"content": [{"type": "text", "text": "upstream error"}], "isError": True}
OK: dict[str, Any] = {"content": [{"type": "text", "text": "fine"}], "isError": False}
HTTP_503: dict[str, Any] = {"isError": True, "structuredContent": {"status_code": 503}}
HTTP_404: dict[str, Any] = {"isError": True, "structuredContent": {"status_code": 404}}
TEXT_503: dict[str, Any] = {"content": [{"type": "text", "text": '{"status_code": 503}'}], "isError": False}
TEXT_OK: dict[str, Any] = {"content": [{"type": "text", "text": '{"status_code": 200}'}], "isError": False}


def rss_mib() -> float:
    """Resident set size of this process (includes the guest's touched linear memory)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def stanza(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "plugins": [
            {
                "name": NAME,
                "kind": KIND,
                "hooks": ["tool_post_invoke"],
                "mode": "sequential",
                "priority": 170,
                "config": {
                    "max_retries": MAX_RETRIES,
                    "backoff_base_ms": BASE_MS,
                    "max_backoff_ms": MAX_MS,
                    "jitter": False,
                    "max_state_entries": args.max_state_entries,
                    "wasm_max_memory_bytes": args.memory_mib * 1024 * 1024,
                    "tool_overrides": {TEXT_TOOL: {"check_text_content": True, "max_retries": TEXT_RETRIES}},
                },
            }
        ],
        "plugin_dirs": [],
        "plugin_settings": {"parallel_execution_within_band": False, "plugin_timeout": 30},
    }


def expected_delay(failures: int, budget: int) -> int:
    return min(BASE_MS * 2 ** (failures - 1), MAX_MS) if failures <= budget else 0


@dataclass
class Stats:
    calls: int = 0
    mismatches: int = 0
    errors: int = 0
    latencies_ns: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    first_problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.first_problems) < 10:
            self.first_problems.append(text)


class Soak:
    def __init__(self, manager: Any, stats: Stats) -> None:
        self.manager = manager
        self.stats = stats
        self.trace = Extensions(request=RequestExtension(request_id="soak", trace_id="trace-soak"))

    async def call(self, tool: str, rid: str, result: Any, want: int, traced: bool = False) -> None:
        payload = ToolPostInvokePayload(name=tool, result=result)
        start = time.perf_counter_ns()
        try:
            res, _ = await self.manager.invoke_hook(
                "tool_post_invoke",
                payload,
                GlobalContext(request_id=rid),
                extensions=self.trace if traced else None,
            )
        except Exception as exc:  # counted and reported: a hook must never raise here
            self.stats.errors += 1
            self.stats.problem(f"{tool}/{rid}: {type(exc).__name__}: {exc}")
            return
        self.stats.latencies_ns.append(time.perf_counter_ns() - start)
        self.stats.calls += 1
        got = res.retry_delay_ms
        if traced:
            meta = (res.metadata or {}).get("retry_with_backoff", {})
            if meta.get("retry_delay_ms") != got:
                self.stats.mismatches += 1
                self.stats.problem(f"{tool}/{rid}: trace metrics {meta} for delay {got}")
        if got != want:
            self.stats.mismatches += 1
            self.stats.problem(f"{tool}/{rid}: delay {got}, model says {want}")


async def exhaust(soak: Soak, count: int, bound: int) -> dict[str, Any]:
    """``count`` unique request ids failing once; then check survivors and victims."""
    tool = TOOLS[0]
    rid = "{:08x}-0000-4000-8000-{:012x}".format
    start = time.perf_counter()
    for i in range(count):
        await soak.call(tool, rid(0xE, i), FAIL, BASE_MS)
    elapsed = time.perf_counter() - start
    survivors = min(count, bound)
    # Oldest first: the oldest survivor and the newest keep their count, the newest victim
    # (if any) starts a fresh budget.
    await soak.call(tool, rid(0xE, count - survivors), FAIL, 2 * BASE_MS)
    await soak.call(tool, rid(0xE, count - 1), FAIL, 2 * BASE_MS)
    if count > bound:
        await soak.call(tool, rid(0xE, count - bound - 1), FAIL, BASE_MS)
    return {"unique_ids": count, "seconds": round(elapsed, 1), "calls_per_s": round(count / elapsed)}


async def worker(soak: Soak, wid: int, deadline: float, seed: int) -> None:
    rng = random.Random(seed * 1_000 + wid)
    flaky: dict[tuple[str, str], int] = {}  # key -> consecutive failures the model expects
    keys = [(TOOLS[k % 2], f"w{wid}-flaky-{k}") for k in range(64)]
    text_keys = [(TEXT_TOOL, f"w{wid}-text-{k}") for k in range(16)]
    unique = 0
    while time.perf_counter() < deadline:
        for _ in range(200):  # check the clock every 200 calls
            roll = rng.random()
            if roll < 0.40:  # a plain success on a key that never failed
                await soak.call(TOOLS[unique % 2], f"w{wid}-ok-{rng.randrange(1_000)}", OK, 0)
            elif roll < 0.75:  # a flaky key: fail (503 or bare) or recover
                tool, rid = key = rng.choice(keys)
                step = rng.random()
                if step < 0.65:
                    n = flaky.get(key, 0) + 1
                    want = expected_delay(n, MAX_RETRIES)
                    flaky[key] = n if want else 0
                    await soak.call(tool, rid, HTTP_503 if step < 0.3 else FAIL, want, traced=step < 0.05)
                elif step < 0.75:  # non-retriable: clears the key
                    flaky[key] = 0
                    await soak.call(tool, rid, HTTP_404, 0)
                else:
                    flaky[key] = 0
                    await soak.call(tool, rid, OK, 0)
            elif roll < 0.85:  # text content checked on one tool
                key = rng.choice(text_keys)
                if rng.random() < 0.6:
                    n = flaky.get(key, 0) + 1
                    want = expected_delay(n, TEXT_RETRIES)
                    flaky[key] = n if want else 0
                    await soak.call(key[0], key[1], TEXT_503, want)
                else:
                    flaky[key] = 0
                    await soak.call(key[0], key[1], TEXT_OK, 0)
            else:  # a unique request id failing once (state growth against the bound)
                unique += 1
                await soak.call(TOOLS[1], f"w{wid}-u-{seed}-{unique}", FAIL, BASE_MS)
        await asyncio.sleep(0)


def percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1_000


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # One WARNING per exhausted budget (native parity) would flood the run; faults log at ERROR.
    logging.getLogger("cpex_retry_with_backoff_wasm.plugin").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "plugins.yaml"
        config.write_text(yaml.safe_dump(stanza(args), sort_keys=False))
        PluginManager.reset()
        manager = PluginManager(
            str(config),
            hook_policies={"tool_post_invoke": HookPayloadPolicy(writable_fields=frozenset({"result"}))},
        )
        await manager.initialize()
        if manager.plugin_count != 1:
            print("the plugin did not load (see the log above)", file=sys.stderr)
            return 1
        plugin = manager.get_plugin(NAME)
        engine = plugin.policy  # its state count and the instance's fault count
        stats = Stats()
        soak = Soak(manager, stats)
        start_state, start_rss = engine.state_count(), rss_mib()

        report: dict[str, Any] = {"config": stanza(args)["plugins"][0]["config"]}
        report["exhaustion"] = (
            await exhaust(soak, args.exhaust, args.max_state_entries) if args.exhaust else None
        )
        after_exhaust_state = engine.state_count()
        report["exhaustion_state_count"] = after_exhaust_state

        stats.latencies_ns = array("q")  # latency of the mixed phase only
        mixed_calls_before = stats.calls
        started = time.perf_counter()
        deadline = started + args.seconds
        reloads = 0
        tasks = [asyncio.create_task(worker(soak, w, deadline, args.seed)) for w in range(args.tasks)]
        while not all(t.done() for t in tasks):
            await asyncio.wait(tasks, timeout=args.reload_every)
            if (
                args.reload_every
                and time.perf_counter() < deadline - 0.5
                and not all(t.done() for t in tasks)
            ):
                try:
                    plugin.reload()  # hot swap of the same build: live state carried over
                    reloads += 1
                except RetryEngineLoadError as exc:  # refused: the old instance keeps serving
                    stats.errors += 1
                    stats.problem(f"reload refused: {exc}")
        for t in tasks:
            t.result()
        elapsed = time.perf_counter() - started
        mixed_calls = stats.calls - mixed_calls_before

        end_state, end_rss = engine.state_count(), rss_mib()
        lat = sorted(stats.latencies_ns)
        bound_ok = max(after_exhaust_state, end_state) <= args.max_state_entries
        report.update(
            {
                "mixed": {
                    "seconds": round(elapsed, 1),
                    "tasks": args.tasks,
                    "calls": mixed_calls,
                    "calls_per_s": round(mixed_calls / elapsed),
                    "hook_latency_us": {
                        "p50": round(percentile(lat, 0.50), 1),
                        "p99": round(percentile(lat, 0.99), 1),
                        "p99.9": round(percentile(lat, 0.999), 1),
                        "max": round(lat[-1] / 1_000, 1) if lat else None,
                    },
                    "reloads": reloads,
                },
                "total_calls": stats.calls,
                "mismatches": stats.mismatches,
                "hook_exceptions": stats.errors,
                "faults": engine.fault_count,
                "guest_state_count": {
                    "start": start_state,
                    "end": end_state,
                    "bound": args.max_state_entries,
                },
                "guest_memory_cap_mib": args.memory_mib,
                "process_rss_mib": {"start": round(start_rss, 1), "end": round(end_rss, 1)},
                "problems": stats.first_problems,
            }
        )
        await manager.shutdown()
        PluginManager.reset()

    failed = bool(stats.mismatches or stats.errors or engine.fault_count or not bound_ok)
    report["ok"] = not failed
    if args.json:
        write_json(args.json, report)
    print_report(report)
    return 1 if failed else 0


def write_json(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def print_report(r: dict[str, Any]) -> None:
    m = r["mixed"]
    lat = m["hook_latency_us"]
    ex = r["exhaustion"]
    print("soak through cpex PluginManager.invoke_hook('tool_post_invoke'); every decision model-checked")
    if ex:
        print(
            f"  exhaustion: {ex['unique_ids']:,} unique ids failing once in {ex['seconds']} s "
            f"({ex['calls_per_s']:,}/s); state after: {r['exhaustion_state_count']:,} "
            f"(bound {r['guest_state_count']['bound']:,})"
        )
    print(
        f"  mixed:      {m['calls']:,} calls in {m['seconds']} s by {m['tasks']} tasks = "
        f"{m['calls_per_s']:,} calls/s; {m['reloads']} hot reloads"
    )
    print(
        f"  invoke_hook wall time (incl. time yielded to the other tasks): p50 {lat['p50']} us, "
        f"p99 {lat['p99']} us, p99.9 {lat['p99.9']} us, max {lat['max']} us"
    )
    s = r["guest_state_count"]
    print(f"  guest state entries: start {s['start']:,}, end {s['end']:,} (bound {s['bound']:,})")
    rss = r["process_rss_mib"]
    print(
        f"  guest memory cap {r['guest_memory_cap_mib']} MiB: never hit ({r['faults']} faults); "
        f"process RSS {rss['start']} -> {rss['end']} MiB"
    )
    print(
        f"  total calls {r['total_calls']:,}; model mismatches {r['mismatches']}; hook exceptions "
        f"{r['hook_exceptions']}; faults {r['faults']} -> {'OK' if r['ok'] else 'FAILED'}"
    )
    for p in r["problems"]:
        print(f"    {p}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="length of the mixed phase (default 120)")
    p.add_argument("--exhaust", type=int, default=1_000_000, help="unique failing request ids first (10^6)")
    p.add_argument("--tasks", type=int, default=4, help="concurrent asyncio tasks in the mixed phase")
    p.add_argument("--max-state-entries", type=int, default=100_000, help="the plugin's state bound")
    p.add_argument(
        "--memory-mib",
        type=int,
        default=64,
        help="guest linear-memory cap (MiB; a hot reload of 10^5 entries needs ~48)",
    )
    p.add_argument("--reload-every", type=float, default=30.0, help="hot reload period in seconds (0: never)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", help="also write the report as JSON to this file")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
