"""Where the microseconds of one failing ``tool_post_invoke`` go (the exhaustion workload).

Each line times one layer of the hook on its own, in this process, on the same prebuilt
calls as ``bench_hook.py``'s exhaustion workload (every call a failure; each (tool, request
id) runs its budget out and starts over).  Lines are the minimum over rounds, so they are
comparable with each other but not a sum: the hook's own line is the figure that counts.

  hook                  this plugin's whole ``tool_post_invoke`` (as in bench_hook.py)
  native hook           cpex-retry-with-backoff's, when installed
  coroutine             driving an empty ``async def`` with the same arguments
  result object         ``ToolPostInvokeResult(retry_delay_ms=...)`` (both plugins pay it)
  read_signals          reading the result mapping into the signals word
  instance.decide       the instance: signals, lock, key, the Wasm call, bookkeeping
  wasm calls            the Wasm calls alone (fuel, arguments, the component call): a
                        round makes one ``decide`` with the key per (tool, request id)
                        and ``decide-held`` by handle for its later results
  wasm empty call       a component call that takes nothing and does nothing
                        (``policy-count``): the boundary's floor

Usage: python bench/bench_breakdown.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpex.framework import ToolPostInvokeResult

from bench_hook import drive, plugin_config, workload_exhaustion
from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.instance import INSTANCES
from cpex_retry_with_backoff_wasm.signals import read_signals

CALLS = 4000


def best_us(body: Callable[[], None], rounds: int, calls: int) -> float:
    """Per-call microseconds of ``body`` (which makes ``calls`` calls): the best of ``rounds``."""
    body()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        body()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)

    calls = workload_exhaustion(CALLS, 2)
    plugin = RetryWithBackoffPlugin(plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", {}))
    engine = plugin.instance
    # The Wasm calls one round of hooks makes (decide with the key, or decide-held), recorded
    # from a real round so that replaying them leaves the engine as the round does.
    assert engine.sandbox.lean is not None
    decide, decide_held = engine.sandbox.lean
    wasm_calls: list[tuple[Callable[..., int], tuple[Any, ...]]] = []

    def recording(call: Callable[..., int]) -> Callable[..., int]:
        def record(*args: Any) -> int:
            wasm_calls.append((call, args))
            return call(*args)

        return record

    engine.sandbox.lean = (recording(decide), recording(decide_held))
    for payload, context in calls:
        drive(plugin.tool_post_invoke(payload, context, None))
    engine.sandbox.lean = (decide, decide_held)
    INSTANCES.clear()  # an instance of its own: every object of a process shares one (``instance``)
    empty = RetryWithBackoffPlugin(plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", {}))

    def hook_of(instance: Any) -> Callable[[], None]:
        def run() -> None:
            hook = instance.tool_post_invoke
            for payload, context in calls:
                drive(hook(payload, context, None))

        return run

    async def nothing(payload: Any, context: Any, extensions: Any = None) -> None:
        return None

    def coroutine() -> None:
        for payload, context in calls:
            drive(nothing(payload, context, None))

    def result_object() -> None:
        for i in range(CALLS):
            ToolPostInvokeResult(retry_delay_ms=i)

    def signals() -> None:
        for payload, _context in calls:
            read_signals(payload.result)

    def adapter() -> None:
        decide, policy = engine.decide, plugin.policy
        for payload, context in calls:
            decide(policy, payload.name, context.global_context, payload.result, context)

    def wasm_call() -> None:
        for call, args in wasm_calls:
            call(*args)

    floor = empty_call(empty)

    def wasm_empty_call() -> None:
        for _ in range(CALLS):
            floor()

    rows: list[tuple[str, Callable[[], None]]] = [("hook", hook_of(plugin))]
    try:
        import cpex_retry_with_backoff

        native = cpex_retry_with_backoff.RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff.RetryWithBackoffPlugin", {})
        )
        rows.append(("native hook", hook_of(native)))
    except ImportError:
        print("cpex-retry-with-backoff not installed: no native line", file=sys.stderr)
    rows += [
        ("coroutine", coroutine),
        ("result object", result_object),
        ("read_signals", signals),
        ("instance.decide", adapter),
        ("wasm calls", wasm_call),
        ("wasm empty call", wasm_empty_call),
    ]
    print(f"one failing tool_post_invoke, layer by layer (us per call, best of {args.rounds} x {CALLS})")
    for label, body in rows:
        print(f"  {label:<18} {best_us(body, args.rounds, CALLS):6.2f}")
    return 0


def empty_call(plugin: RetryWithBackoffPlugin) -> Callable[[], None]:
    """``policy-count`` (no arguments, a u32 back) called the way the lean ``decide`` is:
    refuel, then ``wasmtime_component_func_call`` through cffi."""
    import ctypes

    from cpex_retry_with_backoff_wasm import fastcall

    engine = plugin.instance
    store = engine.sandbox.store
    assert store is not None
    ffi = fastcall._ffi_cffi
    out = ffi.new(fastcall._RESULT_TYPE)
    func_raw = engine.sandbox.funcs["policy-count"]._func
    c_func = ffi.cast(fastcall._VOID_PTR, ctypes.addressof(func_raw))
    c_ctx = ffi.cast(fastcall._VOID_PTR, ctypes.cast(store._context(), ctypes.c_void_p).value)
    set_fuel, func_call, fuel = fastcall._set_fuel, fastcall._func_call, engine.fuel_per_call

    def call() -> None:
        if set_fuel(c_ctx, fuel) or func_call(c_func, c_ctx, ffi.NULL, 0, out, 1):
            raise RuntimeError("policy-count failed")

    call.keepalive = (func_raw, store, out)  # type: ignore[attr-defined]
    return call


if __name__ == "__main__":
    raise SystemExit(main())
