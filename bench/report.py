"""``make bench``: run every benchmark and write ``docs/performance.md`` from their outputs.

Each benchmark runs as its own process, one after the other; what it prints goes into the
document verbatim under what it measures and the command that produced it, after a summary
of the hook figures (``bench_hook.py --json``) and a description of the machine.  The document
is never edited by hand: change a benchmark or its description here, then run ``make bench``.

A benchmark that fails is reported in the document with its exit status and error output, the
others still run, and this script exits non-zero.

Usage: python bench/report.py [--out docs/performance.md] [--quick] [--without-rust]
  --quick: fewer rounds and runs (checks the pipeline; the figures are not comparable)
  --without-rust: leave out the benchmarks run through cargo (the document says so)
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timing import cpu_model  # bench/ is on the path: the scripts run as bench/<name>.py

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
#: The Python of the gateway's venv (1.1.0), which the bindings benchmark needs: `make bench` sets
#: it up with tests/e2e/setup-venv.sh, as `make test-e2e` does.
GATEWAY_PY = "target/e2e-venv-1.1/bin/python"
HARNESS = ["cargo", "run", "-q", "--profile", "bench-host", "-p", "retry-engine-wasm-harness", "--example"]
#: The hot-path cost the metrics may add to a hook call (issue 14).
METRICS_TARGET_US = 0.2


@dataclass
class Bench:
    title: str
    measures: str
    argv: list[str]
    quick: list[str]


def benches(hook_json: Path) -> list[Bench]:
    return [
        Bench(
            "Hook cost against the native plugin, metrics on and off",
            "The whole `tool_post_invoke` of this plugin (`wasm`: as configured, Prometheus metrics "
            "on; `wasm-off`: `prometheus_metrics: false`) and of the native plugin "
            "cpex-retry-with-backoff 0.3.11, on prebuilt payloads in interleaved rounds (median "
            "µs per call); `metrics` is wasm - wasm-off, `wasm/native` the ratio. Then the metrics' "
            "own work timed apart from the hook on each workload's decisions: `record`, the lines "
            "the hook runs (target ≤ 0.2 µs a call), and `flush`, exporting each recorded decision "
            "into the `prometheus_client` objects (done off the hook, by the daemon thread or a "
            "scrape; a retry's histogram observation dominates it). Targets of the ratios: all "
            "successes ≤ 1.0; all failures ≤ 1.5.",
            [PY, "bench/bench_hook.py", "--json", str(hook_json)],
            ["--rounds", "3", "--calls", "1000"],
        ),
        Bench(
            "Where a failing call's time goes",
            "Each layer of one failing `tool_post_invoke` (the exhaustion workload) timed on its "
            "own, best of the rounds: comparable with each other, not a sum.",
            [PY, "bench/bench_breakdown.py"],
            ["--rounds", "3"],
        ),
        Bench(
            "One hostile result",
            "Time to decide one hostile result (a 32 MiB `isError` text, 10⁶ text items, a 16 MiB "
            "request id, a 16 MiB tool name) next to the native plugin, best and worst of the "
            "rounds, and a victim key's failure count after it (it must go on from 2 to 3). "
            "Target: any single result decided in ≤ 50 ms, text scanning no dearer than native.",
            [PY, "bench/bench_hostile.py"],
            ["--rounds", "1"],
        ),
        Bench(
            "Cold start",
            "Constructing the plugin in a fresh process, with an empty compiled-component cache "
            "(compiling the component) and with the cache (loading it); median of fresh processes "
            "(target with the cache: ≤ 5 ms).",
            [PY, "bench/bench_startup.py"],
            ["--runs", "2"],
        ),
        Bench(
            "Plugin objects per gateway context",
            "The gateway builds a plugin object per context and rebuilds it every 30 s (issue 16): "
            "constructing one whose policy is open already against the first one (a new "
            "instance), in a warm process; and the process's RSS with 1 and with 50 team-scoped "
            "contexts, each deciding failing results, when the objects use the process's one "
            "instance (`shared`) and when each has its own (the host before issue 16).",
            [PY, "bench/bench_contexts.py"],
            ["--runs", "20", "--contexts", "50"],
        ),
        Bench(
            "Memory per team bound through tool plugin bindings",
            "The gateway builds a plugin manager per team and tool, merging the team's tool plugin "
            "binding over the stanza (issue 23 §7). In process, with the gateway's own "
            "`TenantPluginManagerFactory` over `ToolPluginBinding` rows in sqlite: 1000 teams "
            "each bind one tool, each team's manager is built and its plugin decides 3 failing "
            "results (each delay checked against the bound `backoff_base_ms`); the process's RSS "
            "per further team when every team binds its own `max_retries`/`backoff_base_ms` "
            "(`distinct`) and when all bind the same config (`same`), for this plugin and the "
            "native one. `distinct - same` is the cost of one more distinct configuration (target "
            "after contract 0.5: ≤ 16 KiB). Runs in the gateway 1.1.0 venv (Python 3.12).",
            [GATEWAY_PY, "bench/bench_bindings.py"],
            ["--teams", "100"],
        ),
        Bench(
            "Guest memory",
            "Peak guest linear memory (Rust host, wasmtime) with 100 000 live retry-state entries "
            "named by handles, after they expire and new ones arrive, and after 10⁶ more unique ids "
            "(target ≤ 16 MiB, bounded).",
            [*HARNESS, "memory"],
            [],
        ),
        Bench(
            "Engine throughput",
            "Decisions per second of the component on one core through wasmtime from Rust (no "
            "Python), per mix of outcomes (target ≥ 1 M/s).",
            [*HARNESS, "throughput"],
            [],
        ),
        Bench(
            "Retry budget",
            "Load amplification (attempts per request) against an upstream failing at a given "
            "rate, with and without `retry_budget_percent` (simulated time, Rust host).",
            [*HARNESS, "budget"],
            [],
        ),
        Bench(
            "Backoff and jitter picture",
            "Draws `bench/backoff-jitter.png` from this engine's delays (virtual clock, fixed seed): "
            "calls and time until 100 contending clients succeed per jitter mode, and load "
            "amplification with and without a retry budget.",
            [PY, "bench/picture.py"],
            [],
        ),
        Bench(
            "Component size",
            "Size of the release `.wasm` (`make size` fails on accidental bloat).",
            ["make", "--no-print-directory", "size"],
            [],
        ),
    ]


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _lock_version(package: str) -> str:
    """The version of ``package`` in Cargo.lock (what the Rust harness links)."""
    lines = (REPO / "Cargo.lock").read_text().splitlines()
    for name, version in itertools.pairwise(lines):
        if name == f'name = "{package}"' and version.startswith("version = "):
            return version.split('"')[1]
    return "unknown"


def machine(started: str, load_before: str) -> list[str]:
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return [
        "| | |",
        "|---|---|",
        f"| date (UTC) | {started} |",
        f"| commit | `{commit}`{' with uncommitted changes' if dirty not in ('', 'unknown') else ''} |",
        f"| CPU | {cpu_model()}, {os.cpu_count()} cores visible |",
        f"| load average (1/5/15 min) before / after | {load_before} — {_load()} |",
        f"| OS | {platform.system()} {platform.release()} |",
        f"| Python | {platform.python_implementation()} {platform.python_version()} |",
        f"| wasmtime-py | {_version('wasmtime')} |",
        f"| cpex | {_version('cpex')} |",
        f"| native plugin | cpex-retry-with-backoff {_version('cpex-retry-with-backoff')} |",
        f"| prometheus_client | {_version('prometheus_client')} |",
        f"| rustc | {_run(['rustc', '--version'])} |",
        f"| wasmtime (Rust harness) | {_lock_version('wasmtime')} |",
    ]


def summary(hook: dict[str, Any]) -> list[str]:
    workloads: dict[str, dict[str, float]] = hook["workloads"]
    alone: dict[str, dict[str, float]] = hook["metrics_alone"]
    native = all("native" in w for w in workloads.values())
    lines = [
        f"`tool_post_invoke`, µs per call, median of {hook['rounds']} interleaved rounds x "
        f"{hook['calls']} calls (`bench/bench_hook.py`):",
        "",
        "| workload | this plugin | metrics off | native 0.3.11 | this / native | metrics: on - off "
        "| metrics alone: record (hot path) | flush (per decision, off the hook) "
        "| `non_idempotent_retries: throttled`, both hooks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, w in workloads.items():
        ratio = f"**{w['wasm'] / w['native']:.2f}x**" if native else "—"
        base = f"{w['native']:.2f}" if native else "—"
        a = alone[label]
        throttled = f"{w['wasm-throttled']:.2f}" if "wasm-throttled" in w else "—"
        lines.append(
            f"| {label} | {w['wasm']:.2f} | {w['wasm-off']:.2f} | {base} | {ratio} "
            f"| {w['wasm'] - w['wasm-off']:+.2f} | {a['record']:.3f} | {a['flush']:.3f} | {throttled} |"
        )
    worst = max(a["record"] for a in alone.values())
    verdict = "within" if worst <= METRICS_TARGET_US else "above"
    lines += [
        "",
        f"The metrics' hot-path work is at most {worst:.3f} µs a call here, {verdict} the "
        f"{METRICS_TARGET_US} µs target. `metrics: on - off` is the same cost seen through the "
        "whole hook, so it also carries the noise between rounds. The last column is the opt-in "
        "`non_idempotent_retries` as the gateway then calls the plugin: its no-op "
        "`tool_pre_invoke` and `tool_post_invoke` per call (the gateway's own dispatch of the "
        "extra hook not included).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "performance.md")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--without-rust", action="store_true")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")
    load_before = _load()
    sections: list[str] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        hook_json = Path(tmp) / "hook.json"
        for bench in benches(hook_json):
            argv_run = bench.argv + (bench.quick if args.quick else [])
            shown = shlex.join(str(a) if a != PY else "python" for a in bench.argv)
            shown = shown.replace(str(hook_json), "hook.json")
            print(f"== {bench.title}: {shown}", flush=True)
            if args.without_rust and bench.argv[0] == "cargo":
                skipped = f"Not run (`--without-rust`): `{shown}`"
                sections += [f"### {bench.title}", "", bench.measures, "", skipped, ""]
                continue
            if bench.argv[0] == GATEWAY_PY and not (REPO / GATEWAY_PY).is_file():
                skipped = (
                    f"Not run: no gateway venv at `{GATEWAY_PY}` (`make bench` sets it up: "
                    f"`tests/e2e/setup-venv.sh 1.1 target/e2e-venv-1.1 dist`): `{shown}`"
                )
                print(skipped, file=sys.stderr)
                sections += [f"### {bench.title}", "", bench.measures, "", skipped, ""]
                continue
            t0 = time.monotonic()
            proc = subprocess.run(argv_run, cwd=REPO, capture_output=True, text=True, check=False)
            seconds = time.monotonic() - t0
            print(proc.stdout, end="", flush=True)
            body = proc.stdout.rstrip()
            if proc.returncode != 0:
                failed += 1
                print(proc.stderr, file=sys.stderr, end="")
                body += f"\n[failed: exit status {proc.returncode}]\n{proc.stderr.rstrip()}"
            sections += [
                f"### {bench.title}",
                "",
                bench.measures,
                "",
                f"Command (from the repository root, {seconds:.0f} s): `{shown}`",
                "",
                "```",
                body,
                "```",
                "",
            ]
        hook = json.loads(hook_json.read_text()) if hook_json.is_file() else None

    doc = [
        "# Performance",
        "",
        "<!-- Generated by `make bench` (bench/report.py). Do not edit by hand: run `make bench`. -->",
        "",
        "Written by `make bench` (`bench/report.py`) from the benchmarks' own output; never edited "
        "by hand. Absolute figures move between runs and machines (the machines these ran on are "
        "shared: see the load average); ratios taken within one process in interleaved rounds are "
        "the figures to compare."
        + (" **Quick run (`--quick`): too few rounds to compare.**" if args.quick else ""),
        "",
        "## Machine",
        "",
        *machine(started, load_before),
        "",
        "## Summary",
        "",
        *(summary(hook) if hook else ["(bench_hook.py failed: no summary)"]),
        "",
        "## Every benchmark",
        "",
        *sections,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
