"""Plugin objects per gateway context: construction time and memory, one instance vs one each.

The gateway builds one plugin manager, hence one plugin object, per context (``<team>::<tool>``
for team-scoped tools) and rebuilds each every 30 s (issue 16).  Every plugin object of the
process uses one instance (``instance``), and objects of one configuration share its policy;
the baseline is one instance per plugin object (the registry is cleared after each
construction, so each object keeps its own).

* construction: the first object of a configuration in a warm process (compiled component
  already loaded: it starts an instance and opens its policy) against an object whose policy
  is open already; median of ``--runs`` constructions each;
* memory: the resident set size (VmRSS) of a fresh process after building N contexts' plugin
  objects and deciding ``--keys`` failing results in each (so every instance has allocated its
  state tables), for N = 1 and N = ``--contexts``, one instance and one per object.

Usage: python bench/bench_contexts.py [--contexts 200] [--keys 20] [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, json, logging, sys
logging.disable(logging.CRITICAL)
from cpex.framework import GlobalContext, PluginConfig, PluginContext, ToolPostInvokePayload
from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.instance import INSTANCES

contexts, keys, shared = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "shared"

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

async def main():
    before = rss_kib()
    plugins = []
    for c in range(contexts):
        config = PluginConfig(name="RetryWithBackoffWasmPlugin", kind="x", hooks=["tool_post_invoke"],
                              config={"key_scope": "tenant"})
        plugins.append(RetryWithBackoffPlugin(config))
        if not shared:
            INSTANCES.clear()  # the baseline: this object keeps an instance of its own
        plugin = plugins[-1]
        for k in range(keys):
            payload = ToolPostInvokePayload(name=f"tool{c % 7}", result={"content": [], "isError": True})
            context = PluginContext(global_context=GlobalContext(request_id=f"{c}-{k}", tenant_id=f"team{c}"))
            await plugin.tool_post_invoke(payload, context)
    print(json.dumps({"before_kib": before, "after_kib": rss_kib(),
                      "instances": len({id(p.instance) for p in plugins})}))

asyncio.run(main())
"""

TIMING = r"""
import json, logging, sys, time
logging.disable(logging.CRITICAL)
from cpex.framework import PluginConfig
from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.instance import INSTANCES

runs = int(sys.argv[1])
config = PluginConfig(name="RetryWithBackoffWasmPlugin", kind="x", hooks=["tool_post_invoke"], config={})
RetryWithBackoffPlugin(config)  # loads the compiled component into the process
INSTANCES.clear()
first, attach = [], []
for _ in range(runs):
    t0 = time.perf_counter()
    RetryWithBackoffPlugin(config)
    t1 = time.perf_counter()
    RetryWithBackoffPlugin(config)
    t2 = time.perf_counter()
    first.append((t1 - t0) * 1000)
    attach.append((t2 - t1) * 1000)
    INSTANCES.clear()
print(json.dumps({"first": first, "attach": attach}))
"""


def child(script: str, *args: object) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--contexts", type=int, default=200)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    timing = child(TIMING, args.runs)
    first = statistics.median(timing["first"])  # type: ignore[arg-type]
    attach = statistics.median(timing["attach"])  # type: ignore[arg-type]
    print(f"plugin construction in a warm process, median of {args.runs} (ms)")
    print(f"  first object of a configuration (new instance): {first:8.3f}")
    print(f"  attaching to an open policy:                    {attach:8.3f}")
    print()
    print(f"process RSS after N team-scoped contexts, {args.keys} failing keys each (MiB)")
    print(f"  {'contexts':>8}  {'instances':>9}  {'shared':>9}  {'instances':>9}  {'one per object':>14}")
    for n in (1, args.contexts):
        shared = child(CHILD, n, args.keys, "shared")
        alone = child(CHILD, n, args.keys, "alone")
        print(
            f"  {n:>8}  {shared['instances']:>9}  {int(shared['after_kib']) / 1024:9.1f}  "  # type: ignore[call-overload]
            f"{alone['instances']:>9}  {int(alone['after_kib']) / 1024:14.1f}"  # type: ignore[call-overload]
        )


if __name__ == "__main__":
    main()
