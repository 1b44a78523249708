"""The lean ``decide`` call path (``fastcall.lean_decide``) against the generic ``Func`` call."""

from __future__ import annotations

import random

import pytest
from wasmtime import WasmtimeError

from cpex_retry_with_backoff_wasm import fastcall
from cpex_retry_with_backoff_wasm.engine import WasmRetryEngine
from cpex_retry_with_backoff_wasm.fastcall import lean_decide
from cpex_retry_with_backoff_wasm.signals import pack_signals


def test_lean_path_is_active_on_the_tested_wasmtime() -> None:
    """A silent fallback to the generic path would cost ~4x per call: fail loudly instead."""
    assert fastcall.UNAVAILABLE is None
    engine = WasmRetryEngine({})
    assert callable(engine._lean)


def test_lean_and_generic_calls_agree_step_by_step() -> None:
    """Two instances with the same seed, one driven lean and one generic, stay identical."""
    config = {"max_retries": 4, "backoff_base_ms": 7, "max_backoff_ms": 90, "retry_on_status": [500, 503]}
    lean = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    generic = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    rng = random.Random(20261128)
    statuses = [None, 200, 404, 500, 503, -1, 2**31 - 1]
    for _ in range(3000):
        tool = rng.choice(["a", "ab", "é✓", ""])
        rid = rng.choice(["", "b", "1", "x" * 300])
        signals = pack_signals(
            is_error=rng.random() < 0.5,
            has_structured=rng.random() < 0.5,
            structured_is_error=rng.random() < 0.2,
            status_code=rng.choice(statuses),
        )
        store = generic._live_store()
        store.set_fuel(generic.fuel_per_call)
        want = generic._funcs["decide"](store, tool + rid, len(tool), signals)
        assert lean._lean is not None
        got = lean._lean((tool + rid).encode(), len(tool), signals)
        assert got == want, (tool, rid, signals)


def test_lean_call_raises_on_a_trap() -> None:
    engine = WasmRetryEngine({})
    assert engine._lean is not None
    assert engine._store is not None
    starved = lean_decide(engine._funcs["decide"], engine._store, 1)
    assert starved is not None
    with pytest.raises(WasmtimeError):
        starved(b"toolrequest", 4, 1)


def test_lean_build_refuses_another_signature() -> None:
    engine = WasmRetryEngine({})
    assert engine._store is not None
    with pytest.raises(TypeError, match="not \\(string, u32, u64\\) -> u64"):
        lean_decide(engine._funcs["state-count"], engine._store, 1000)
