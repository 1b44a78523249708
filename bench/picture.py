"""The picture of issue 6 §8: ``bench/backoff-jitter.png``, drawn from this engine's delays.

Left and middle: the AWS Architecture Blog experiment ("Exponential Backoff and Jitter", Marc
Brooker, 2015) with the delays this engine hands out.  100 clients start together and contend
for one resource with optimistic concurrency: time runs in slots of ``SLOT_MS``; of the calls
landing in one slot the first wins and the others fail and back off by the engine's delay.
Per jitter mode it plots the total calls until every client succeeded and the time that took.

Right: load amplification (total attempts / first attempts) against the upstream's independent
failure rate, with and without a retry budget (``retry_budget_percent``), from the same
simulation as ``tests/wasm-harness/examples/budget.rs``.

Everything runs through the plugin's ``Instance`` (the built component) on a virtual clock with a
fixed seed, so the picture is reproducible.  Needs matplotlib (bench only:
``pip install 'host-python[bench]'``).

Usage: python bench/picture.py [--out bench/backoff-jitter.png]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from cpex_retry_with_backoff_wasm.instance import Instance
from cpex_retry_with_backoff_wasm.settings import HostSettings
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

CLIENTS = 100
SLOT_MS = 10
MODES = ("none", "full", "equal", "decorrelated")
FAIL = {"isError": True, "structuredContent": {"status_code": 503}}
OK = {"isError": False}


class Engine:
    """One policy of a fresh instance: the plugin's decision for a tool and a request id."""

    def __init__(self, config: dict[str, Any], clock: Callable[[], int], seed: tuple[int, int]) -> None:
        self.instance = Instance(HostSettings.read(config), clock=clock, seed=seed)
        self.policy = self.instance.open("picture", config)

    def decide(self, tool: str, request_id: str, result: dict[str, Any]) -> int:
        context = SimpleNamespace(request_id=request_id, tenant_id=None, server_id=None, user=None)
        return self.instance.decide(self.policy, tool, context, result)


class Clock:
    """Virtual monotonic nanoseconds."""

    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms * 1_000_000


def contention(mode: str, seed: int) -> tuple[int, int]:
    """(total calls, completion ms) of ``CLIENTS`` clients contending with ``mode`` jitter."""
    clock = Clock()
    engine = Engine(
        {"jitter": mode, "max_retries": 10, "backoff_base_ms": SLOT_MS, "max_backoff_ms": 60_000},
        clock=clock,
        seed=(seed, seed + 1),
    )
    # (time of the call, client): every client calls at t = 0.
    queue = [(0, c) for c in range(CLIENTS)]
    heapq.heapify(queue)
    calls = 0
    done_at = 0
    while queue:
        slot_start, _ = queue[0]
        slot = slot_start // SLOT_MS
        batch = []
        while queue and queue[0][0] // SLOT_MS == slot:
            batch.append(heapq.heappop(queue))
        for i, (at, client) in enumerate(batch):
            calls += 1
            clock.ms = at
            if i == 0:
                engine.decide("write", f"c{client}", OK)
                done_at = max(done_at, at)
                continue
            delay = engine.decide("write", f"c{client}", FAIL) & DELAY_MASK
            # Exhausted (delay 0): the engine cleared the key; the client tries again next slot.
            heapq.heappush(queue, (at + max(delay, SLOT_MS if delay == 0 else 0), client))
    return calls, done_at


def amplification(fail_rate: float, budget: bool, requests: int, seed: int) -> float:
    """Total attempts / first attempts at an independent upstream failure rate."""
    clock = Clock()
    config = {"jitter": False, "max_retries": 4}
    if budget:
        config |= {"retry_budget_percent": 34, "retry_budget_min_per_sec": 1}
    engine = Engine(config, clock=clock, seed=(seed, seed))
    rng = random.Random(seed)
    attempts = 0
    for r in range(requests):
        clock.ms += 10  # 100 requests a second
        while True:
            attempts += 1
            if rng.random() >= fail_rate:
                engine.decide("tool", f"r{r}", OK)
                break
            if not engine.decide("tool", f"r{r}", FAIL) & DELAY_MASK:
                break
    return attempts / requests


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", default=str(Path(__file__).with_name("backoff-jitter.png")))
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()

    results = {mode: contention(mode, seed=7) for mode in MODES}
    rates = [i / 10 for i in range(11)]
    without = [amplification(p, False, args.requests, 7) for p in rates]
    with_budget = [amplification(p, True, args.requests, 7) for p in rates]

    fig, (calls_ax, time_ax, amp_ax) = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = ["#888888", "#1f77b4", "#2ca02c", "#d62728"]
    calls_ax.bar(MODES, [results[m][0] for m in MODES], color=colors)
    calls_ax.set_title(f"{CLIENTS} contending clients: total calls")
    calls_ax.set_ylabel("calls until every client succeeded")
    time_ax.bar(MODES, [results[m][1] / 1000 for m in MODES], color=colors)
    time_ax.set_title("completion time")
    time_ax.set_ylabel("seconds (virtual clock)")
    for ax in (calls_ax, time_ax):
        ax.set_xlabel("jitter mode")
    amp_ax.plot(rates, without, "o-", label="no budget (max_retries 4)")
    amp_ax.plot(rates, with_budget, "s-", label="retry_budget_percent 34, floor 1/s")
    amp_ax.axhline(1.1, color="#999999", linestyle=":", label="1.1x")
    amp_ax.set_title("load amplification vs failure rate")
    amp_ax.set_xlabel("upstream failure rate (independent)")
    amp_ax.set_ylabel("total attempts / first attempts")
    amp_ax.legend()
    fig.suptitle("retry engine: exponential backoff, jitter modes and retry budget (backoff_base_ms 10)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)

    for mode in MODES:
        print(f"{mode:>13}: {results[mode][0]:5d} calls, {results[mode][1] / 1000:7.2f} s")
    for p, a, b in zip(rates, without, with_budget, strict=True):
        print(f"failure {p:.1f}: amplification {a:.3f} without budget, {b:.3f} with")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
