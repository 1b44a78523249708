"""The adapter's handles (WIT ``decide-held``): a key that holds state is decided by its
handle instead of its bytes; the handle bookkeeping must never point a decision at the
wrong key, and must not grow without bound."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import WasmRetryEngine
from cpex_retry_with_backoff_wasm.fastcall import HELD_CALL_FUEL_BOUND
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import VirtualClock, err, ok

NO_JITTER = {"jitter": False}


class CallLog:
    """Wraps the engine's lean callers, counting calls by key and by handle."""

    def __init__(self, engine: WasmRetryEngine) -> None:
        assert engine.sandbox.lean is not None
        self.by_key = self.by_handle = 0
        decide, decide_held = engine.sandbox.lean

        def by_key(*args: Any) -> int:
            self.by_key += 1
            return decide(*args)

        def by_handle(*args: Any) -> int:
            self.by_handle += 1
            return decide_held(*args)

        engine.sandbox.lean = (by_key, by_handle)


def assert_handles_accounted(engine: WasmRetryEngine) -> None:
    """Every handle ever given out is either one held key's or free, never both or twice."""
    owned = engine.held.owned_handles()
    free = engine.held.free
    assert len(set(owned)) == len(owned), "two keys share a handle"
    assert len(set(free)) == len(free), "a handle is free twice"
    assert not set(owned) & set(free), "a held key's handle is free"
    assert set(owned) | set(free) == set(range(1, engine.held.next_handle))


def delays(engine: WasmRetryEngine, tool: str, rid: str, results: list[dict[str, Any]]) -> list[int]:
    return [engine.decide(tool, rid, r) & DELAY_MASK for r in results]


def test_a_key_with_state_is_decided_by_its_handle() -> None:
    engine = WasmRetryEngine({**NO_JITTER, "max_retries": 3})
    calls = CallLog(engine)
    assert delays(engine, "t", "r", [err(), err(), err(), err()]) == [200, 400, 800, 0]
    assert (calls.by_key, calls.by_handle) == (1, 3)
    # Exhausted: the key is cleared, its next failure starts over by key.
    assert delays(engine, "t", "r", [err()]) == [200]
    assert (calls.by_key, calls.by_handle) == (2, 3)


def test_handles_are_reused_not_grown() -> None:
    engine = WasmRetryEngine({**NO_JITTER, "max_retries": 1})
    for i in range(5_000):
        assert delays(engine, "t", f"r{i}", [err(), err()]) == [200, 0]
    assert engine.held.next_handle <= 2, "one key at a time holds state: one handle serves them all"
    for i in range(100):
        engine.decide("t", f"k{i}", err())
    assert sorted(engine.held.owned_handles()) == list(range(1, 101))
    for i in range(0, 100, 2):
        engine.decide("t", f"k{i}", ok())
    for i in range(100, 150):
        engine.decide("t", f"k{i}", err())
    assert engine.held.next_handle == 101, "freed handles are taken before new ones"
    assert_handles_accounted(engine)


def test_a_key_whose_state_expired_is_told_again_by_key() -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine({**NO_JITTER, "state_ttl_ms": 1_000}, clock=clock)
    calls = CallLog(engine)
    assert delays(engine, "t", "r", [err()]) == [200]
    clock.advance_ms(1_001)
    engine.evict_expired()
    # The handle names nothing now: the engine says so, and the key goes again.
    assert delays(engine, "t", "r", [err(), err()]) == [200, 400]
    assert (calls.by_key, calls.by_handle) == (2, 2)


def test_the_held_keys_drop_a_key_past_the_ttl_at_the_next_new_key_never_a_live_one() -> None:
    """The mirror is bounded by the TTL as the component's table is: the key whose last
    failure is oldest goes once it outlived the TTL (a retry makes a key young again), and a
    key still live in the component stays listed (the success shortcut relies on that)."""
    clock = VirtualClock()
    engine = WasmRetryEngine({**NO_JITTER, "max_retries": 5, "state_ttl_ms": 1_000}, clock=clock)

    def listed() -> set[str]:
        return {request_id for _, request_id in engine.held.entries}

    assert delays(engine, "t", "a", [err()]) == [200]
    clock.advance_ms(500)
    assert delays(engine, "t", "b", [err()]) == [200]
    clock.advance_ms(400)
    assert delays(engine, "t", "a", [err()]) == [400]  # a is the newest now
    clock.advance_ms(102)  # a's first failure is past the TTL, its last is not
    assert delays(engine, "t", "c", [err()]) == [200]
    assert listed() == {"a", "b", "c"}
    clock.advance_ms(500)  # b's last failure is past the TTL (by more than a millisecond)
    assert delays(engine, "t", "d", [err()]) == [200]
    assert listed() == {"a", "c", "d"}
    assert delays(engine, "t", "a", [err()]) == [800], "a kept its state"
    clock.advance_ms(2_000)  # everything expired: swept two per new key
    assert delays(engine, "t", "e", [err()]) == [200]
    assert delays(engine, "t", "f", [err()]) == [200]
    assert listed() == {"e", "f"}
    assert_handles_accounted(engine)


def test_keys_sharing_a_freed_handle_never_see_each_others_state() -> None:
    engine = WasmRetryEngine({**NO_JITTER, "max_retries": 5})
    assert delays(engine, "t", "a", [err(), err()]) == [200, 400]
    assert delays(engine, "t", "a", [ok()]) == [0]  # a's handle is free again
    assert delays(engine, "t", "b", [err()]) == [200]  # b takes it
    assert delays(engine, "t", "a", [err()]) == [200]  # a starts over, under another
    assert delays(engine, "t", "b", [err(), err()]) == [400, 800]
    assert delays(engine, "t", "a", [err()]) == [400]
    assert len(set(engine.held.owned_handles())) == 2
    assert_handles_accounted(engine)


def test_a_long_key_has_no_handle_and_still_decides() -> None:
    engine = WasmRetryEngine(NO_JITTER)
    calls = CallLog(engine)
    rid = "é" * 200  # each part crosses as itself; together more than HANDLE_KEY_MAX_BYTES
    assert delays(engine, "t", rid, [err(), err(), err()]) == [200, 400, 0]
    assert (calls.by_key, calls.by_handle) == (3, 0)


def test_text_checks_with_a_held_key() -> None:
    """A key held by handle whose next result needs its text: the text call decides it."""
    engine = WasmRetryEngine({**NO_JITTER, "check_text_content": True})
    text_error = {"content": [{"type": "text", "text": '{"status_code": 503}'}]}
    assert delays(engine, "t", "r", [err(), text_error, text_error]) == [200, 400, 0]
    assert delays(engine, "t", "r", [text_error, ok(), err()]) == [200, 0, 200]
    assert_handles_accounted(engine)


def test_decide_held_refuels_every_few_calls_and_after_any_other_call() -> None:
    """Each decide-held starts with at least HELD_CALL_FUEL_BOUND and at most the per-call
    budget: the store's fuel falls call by call, and is topped up every `refills + 1` calls
    and after any call that set its own fuel."""
    engine = WasmRetryEngine({**NO_JITTER, "max_retries": 10})
    store = engine.sandbox.live_store()
    budget = engine.fuel_per_call
    assert engine.sandbox.held_fuel.refills == budget // HELD_CALL_FUEL_BOUND - 1 > 0
    engine.decide("t", "r", err())  # by key: sets its own fuel
    remaining = []
    for _ in range(engine.sandbox.held_fuel.refills + 2):
        engine.decide("t", "r", err())  # by handle
        remaining.append(store.get_fuel())
    assert all(budget - HELD_CALL_FUEL_BOUND < left < budget for left in remaining)
    # Falling while the pool lasts, topped up on the call after it ran out.
    falls = [a > b for a, b in itertools.pairwise(remaining)]
    assert falls == [True] * engine.sandbox.held_fuel.refills + [False]
    # Another call into the store (a cold one, with its own fuel) makes the next refuel.
    engine.state_count()
    engine.decide("t", "r", err())
    assert store.get_fuel() > remaining[-1]


def test_a_runaway_decide_held_is_stopped_answered_and_rebuilt(
    faulty_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = WasmRetryEngine({**NO_JITTER, "wasm_path": str(faulty_wasm)})
    assert delays(engine, "__fault_spin_held__", "r", [err()]) == [200]
    with caplog.at_level(logging.ERROR, logger="cpex_retry_with_backoff_wasm.sandbox"):
        assert delays(engine, "__fault_spin_held__", "r", [err()]) == [0]
    (record,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert "decide-held failed" in record
    assert "all fuel consumed" in record
    assert engine.fault_count == 1
    assert delays(engine, "t", "r", [err(), err()]) == [200, 400]
