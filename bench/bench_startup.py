"""Cold start: constructing the plugin with an empty compiled-component cache, and with it.

Each measurement runs in a fresh Python process (so the in-process Engine and component
caches are empty) and times only ``RetryWithBackoffPlugin(config)``.  cpex's settings object
is built first, as the gateway's PluginManager has built it before any plugin loads.  "empty cache" points
``XDG_CACHE_HOME`` at a new directory; "cached" reuses the directory the first run filled.

Usage: python bench/bench_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import logging, time
logging.disable(logging.CRITICAL)
from cpex.framework import PluginConfig
from cpex.framework.settings import get_settings
from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
get_settings()  # built by the gateway's PluginManager before any plugin loads
config = PluginConfig(name="RetryWithBackoffWasmPlugin", kind="x", hooks=["tool_post_invoke"], config={})
t0 = time.perf_counter()
RetryWithBackoffPlugin(config)
print((time.perf_counter() - t0) * 1000)
"""


def construct_ms(cache_home: str) -> float:
    env = {"XDG_CACHE_HOME": cache_home, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as home:
            cold.append(construct_ms(home))
            warm.append(construct_ms(home))
    print(f"plugin construction, median of {args.runs} fresh processes (ms)")
    print(f"  empty cache (compile):          {statistics.median(cold):8.2f}")
    print(f"  compiled-component cache (load): {statistics.median(warm):8.2f}")


if __name__ == "__main__":
    main()
