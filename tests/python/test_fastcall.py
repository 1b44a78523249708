"""The lean call paths (``fastcall.lean_decide``, ``lean_decide_held``) against the generic
``Func`` call."""

from __future__ import annotations

import random

import pytest
from wasmtime import WasmtimeError

from cpex_retry_with_backoff_wasm import WasmRetryEngine, fastcall
from cpex_retry_with_backoff_wasm.fastcall import HeldFuel, lean_decide, lean_decide_held
from cpex_retry_with_backoff_wasm.signals import pack_signals
from cpex_retry_with_backoff_wasm.wire import UNKNOWN_HANDLE


def test_lean_path_is_active_on_the_tested_wasmtime() -> None:
    """A silent fallback to the generic path would cost ~4x per call: fail loudly instead."""
    assert fastcall.UNAVAILABLE is None
    engine = WasmRetryEngine({})
    assert engine.sandbox.lean is not None
    assert all(callable(call) for call in engine.sandbox.lean)


def test_lean_and_generic_calls_agree_step_by_step() -> None:
    """Two instances with the same seed, one driven lean and one generic, stay identical:
    ``decide`` with and without handles, and ``decide-held`` for keys that have one."""
    config = {"max_retries": 4, "backoff_base_ms": 7, "max_backoff_ms": 90, "retry_on_status": [500, 503]}
    lean = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    generic = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    assert lean.sandbox.lean is not None
    decide, decide_held = lean.sandbox.lean
    rng = random.Random(20261128)
    statuses = [None, 200, 404, 500, 503, -1, 2**31 - 1]
    handles: dict[tuple[str, str], int] = {}
    held_calls = 0
    for _ in range(3000):
        tool = rng.choice(["a", "ab", "é✓", ""])
        rid = rng.choice(["", "b", "1", "x" * 300])
        signals = pack_signals(
            is_error=rng.random() < 0.5,
            has_structured=rng.random() < 0.5,
            structured_is_error=rng.random() < 0.2,
            status_code=rng.choice(statuses),
        )
        store = generic.sandbox.live_store()
        store.set_fuel(generic.fuel_per_call)
        want = generic.sandbox.funcs["decide"](store, tool + rid, len(tool), signals, 0)
        handle = handles.get((tool, rid), 0)
        got = decide_held(handle, signals) if handle else UNKNOWN_HANDLE
        if got == UNKNOWN_HANDLE:
            # Handle 1..4 per tool: a handle given to another key moves to it.
            handle = ["a", "ab", "é✓", ""].index(tool) + 1
            got = decide((tool + rid).encode(), len(tool), signals, handle)
            handles = {k: h for k, h in handles.items() if h != handle}
            handles[(tool, rid)] = handle
        else:
            held_calls += 1
        assert got == want, (tool, rid, signals)
    assert held_calls > 100, "the walk should exercise decide-held"


def test_decide_held_of_an_unknown_handle_changes_nothing() -> None:
    engine = WasmRetryEngine({"jitter": False})
    assert engine.sandbox.lean is not None
    decide, decide_held = engine.sandbox.lean
    fail = pack_signals(is_error=True)
    assert decide_held(1, fail) == UNKNOWN_HANDLE
    assert decide_held(0, fail) == UNKNOWN_HANDLE
    assert engine.state_count() == 0
    first = decide(b"toolrequest", 4, fail, 1)
    assert first & ((1 << 40) - 1) == 200
    second = decide_held(1, fail)
    assert second & ((1 << 40) - 1) == 400
    assert decide_held(2, fail) == UNKNOWN_HANDLE
    assert engine.state_count() == 1


def test_lean_call_raises_on_a_trap() -> None:
    engine = WasmRetryEngine({})
    assert engine.sandbox.store is not None
    starved = lean_decide(engine.sandbox.funcs["decide"], engine.sandbox.store, 1, HeldFuel(1))
    starved_held = lean_decide_held(engine.sandbox.funcs["decide-held"], engine.sandbox.store, 1, HeldFuel(1))
    assert starved is not None
    assert starved_held is not None
    with pytest.raises(WasmtimeError):
        starved(b"toolrequest", 4, 1, 0)
    with pytest.raises(WasmtimeError):
        starved_held(1, 1)


def test_lean_build_refuses_another_signature() -> None:
    engine = WasmRetryEngine({})
    assert engine.sandbox.store is not None
    with pytest.raises(TypeError, match=r"is not \(string, u32, u64, u32\) -> u64"):
        lean_decide(engine.sandbox.funcs["state-count"], engine.sandbox.store, 1000, HeldFuel(1000))
    with pytest.raises(TypeError, match=r"is not \(u32, u64\) -> u64"):
        lean_decide_held(engine.sandbox.funcs["decide"], engine.sandbox.store, 1000, HeldFuel(1000))
