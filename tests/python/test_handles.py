"""Handles (WIT ``decide-held``, ``handles.HeldKeys``): a key the engine said holds state is
decided by the handle the engine gave it instead of its bytes.  The host keeps only what the
decisions said: a handle from the decision that left the key holding state, forgotten when a
decision for the key gives none or gives its handle to another key; it never ages, bounds or
allocates handles itself."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import OpenPolicy
from cpex_retry_with_backoff_wasm.fastcall import HELD_CALL_FUEL_BOUND
from cpex_retry_with_backoff_wasm.handles import HeldKeys
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, HANDLE_SHIFT

from .conftest import VirtualClock, err, ok
from .test_instance import decide, handle_of, open_policy

NO_JITTER = {"jitter": False}


class CallLog:
    """Wraps the instance's lean callers, counting calls by key and by handle."""

    def __init__(self, policy: OpenPolicy) -> None:
        sandbox = policy.instance.sandbox
        assert sandbox.lean is not None
        self.by_key = self.by_handle = 0
        decide, decide_held = sandbox.lean

        def by_key(*args: Any) -> int:
            self.by_key += 1
            return decide(*args)

        def by_handle(*args: Any) -> int:
            self.by_handle += 1
            return decide_held(*args)

        sandbox.lean = (by_key, by_handle)


def delays(policy: OpenPolicy, tool: str, rid: str, results: list[dict[str, Any]]) -> list[int]:
    return [decide(policy, tool, rid, r) & DELAY_MASK for r in results]


def test_a_key_with_state_is_decided_by_its_handle() -> None:
    policy = open_policy({**NO_JITTER, "max_retries": 3})
    calls = CallLog(policy)
    assert delays(policy, "t", "r", [err(), err(), err(), err()]) == [200, 400, 800, 0]
    assert (calls.by_key, calls.by_handle) == (1, 3)
    # Exhausted: the key is cleared, its next failure starts over by key.
    assert delays(policy, "t", "r", [err()]) == [200]
    assert (calls.by_key, calls.by_handle) == (2, 3)


def test_the_host_holds_only_the_keys_whose_last_decision_gave_a_handle() -> None:
    """A retry gives the key a handle, kept across its retries; any other decision gives 0 and
    the host forgets the key.  Live keys never share a handle."""
    policy = open_policy({**NO_JITTER, "max_retries": 1})
    instance = policy.instance
    for i in range(5_000):
        first, last = (decide(policy, "t", f"r{i}", e) for e in (err(), err()))
        assert (first & DELAY_MASK, last & DELAY_MASK) == (200, 0)
        assert handle_of(first) != 0
        assert handle_of(last) == 0
    assert instance.held_count == 0
    handles = {i: handle_of(decide(policy, "t", f"k{i}", err())) for i in range(100)}
    assert len(set(handles.values())) == 100
    assert 0 not in handles.values()
    assert instance.held_count == 100
    for i in range(0, 100, 2):
        assert handle_of(decide(policy, "t", f"k{i}", ok())) == 0
    assert instance.held_count == 50
    for i in range(100, 150):
        handles[i] = handle_of(decide(policy, "t", f"k{i}", err()))
    live = [handles[i] for i in [*range(1, 100, 2), *range(100, 150)]]
    assert len(set(live)) == 100, "two live keys share a handle"
    assert instance.held_count == policy.state_count() == 100


def test_a_key_whose_state_expired_is_told_again_by_key() -> None:
    clock = VirtualClock()
    policy = open_policy({**NO_JITTER, "state_ttl_ms": 1_000}, clock=clock)
    calls = CallLog(policy)
    assert delays(policy, "t", "r", [err()]) == [200]
    clock.advance_ms(1_001)
    assert policy.instance.evict_expired() == 1
    # The handle names nothing now: the engine says so, and the key goes again.  The policy,
    # unused for its TTL, was released with it: it is opened again and the call made again.
    assert delays(policy, "t", "r", [err(), err()]) == [200, 400]
    assert (calls.by_key, calls.by_handle) == (3, 2)


def test_keys_whose_state_expired_in_the_engine_are_decided_right() -> None:
    """The engine alone ages keys (its TTL counts from a key's last failure): the host never
    drops a key on its own, and a key the engine expired starts over whether the host still
    lists it or not."""
    clock = VirtualClock()
    policy = open_policy({**NO_JITTER, "max_retries": 5, "state_ttl_ms": 1_000}, clock=clock)

    assert delays(policy, "t", "a", [err()]) == [200]
    clock.advance_ms(500)
    assert delays(policy, "t", "b", [err()]) == [200]
    clock.advance_ms(400)
    assert delays(policy, "t", "a", [err()]) == [400]  # a is the newest now
    clock.advance_ms(102)  # a's first failure is past the TTL, its last is not
    assert delays(policy, "t", "c", [err()]) == [200]
    clock.advance_ms(500)  # b's last failure is past the TTL (by more than a millisecond)
    assert delays(policy, "t", "d", [err()]) == [200]
    assert delays(policy, "t", "a", [err()]) == [800], "a kept its state"
    assert delays(policy, "t", "b", [ok(), err()]) == [0, 200], "b's state expired"
    clock.advance_ms(2_000)  # everything expired
    assert delays(policy, "t", "e", [err()]) == [200]
    assert delays(policy, "t", "a", [ok(), err()]) == [0, 200]
    assert delays(policy, "t", "c", [err()]) == [200]
    assert delays(policy, "t", "e", [err()]) == [400]


def test_keys_sharing_a_freed_handle_never_see_each_others_state() -> None:
    policy = open_policy({**NO_JITTER, "max_retries": 5})
    assert delays(policy, "t", "a", [err(), err()]) == [200, 400]
    assert delays(policy, "t", "a", [ok()]) == [0]  # a's handle is free again
    assert delays(policy, "t", "b", [err()]) == [200]  # b may take it
    assert delays(policy, "t", "a", [err()]) == [200]  # a starts over
    b, a = decide(policy, "t", "b", err()), decide(policy, "t", "a", err())
    assert (b & DELAY_MASK, a & DELAY_MASK) == (400, 400)
    assert delays(policy, "t", "b", [err()]) == [800]
    assert handle_of(a) != handle_of(b)
    assert policy.instance.held_count == 2


def test_a_handle_given_to_a_key_the_host_does_not_list_is_forgotten_for_the_key_it_named() -> None:
    # A part over KEY_PART_MAX_CHARS: the host never lists the key, but the handle its decision
    # names is one the evicted key held.  Deciding the evicted key by that handle would give it
    # the long key's state (and change the long key's).
    policy = open_policy({**NO_JITTER, "max_state_entries": 1})
    long_rid = "r" * 300
    assert delays(policy, "t", "a", [err()]) == [200]
    assert delays(policy, "t", long_rid, [err()]) == [200]  # evicts a (the cap), takes its slot
    assert policy.instance.held_count == 0
    assert delays(policy, "t", "a", [err()]) == [200], "a was evicted: a first failure again"
    assert delays(policy, "t", long_rid, [err()]) == [200], "a evicted the long key in turn"


def test_a_long_key_is_decided_by_its_handle_too() -> None:
    policy = open_policy(NO_JITTER)
    calls = CallLog(policy)
    rid = "é" * 200  # each part crosses as itself, hundreds of bytes in all
    assert delays(policy, "t", rid, [err(), err(), err()]) == [200, 400, 0]
    assert (calls.by_key, calls.by_handle) == (1, 2)


def test_text_checks_with_a_held_key() -> None:
    """A key held by handle whose next result needs its text: the text call decides it."""
    policy = open_policy({**NO_JITTER, "check_text_content": True})
    text_error = {"content": [{"type": "text", "text": '{"status_code": 503}'}]}
    assert delays(policy, "t", "r", [err(), text_error, text_error]) == [200, 400, 0]
    assert delays(policy, "t", "r", [text_error, ok(), err()]) == [200, 0, 200]
    assert policy.instance.held_count == policy.state_count() == 1


def test_decide_held_refuels_every_few_calls_and_after_any_other_call() -> None:
    """Each decide-held starts with at least HELD_CALL_FUEL_BOUND and at most the per-call
    budget: the store's fuel falls call by call, and is topped up every `refills + 1` calls
    and after any call that set its own fuel."""
    policy = open_policy({**NO_JITTER, "max_retries": 10})
    instance = policy.instance
    sandbox = instance.sandbox
    store = sandbox.live_store()
    budget = instance.fuel_per_call
    assert sandbox.held_fuel.refills == budget // HELD_CALL_FUEL_BOUND - 1 > 0
    decide(policy, "t", "r", err())  # by key: sets its own fuel
    remaining = []
    for _ in range(sandbox.held_fuel.refills + 2):
        decide(policy, "t", "r", err())  # by handle
        remaining.append(store.get_fuel())
    assert all(budget - HELD_CALL_FUEL_BOUND < left < budget for left in remaining)
    # Falling while the pool lasts, topped up on the call after it ran out.
    falls = [a > b for a, b in itertools.pairwise(remaining)]
    assert falls == [True] * sandbox.held_fuel.refills + [False]
    # Another call into the store (a cold one, with its own fuel) makes the next refuel.
    instance.state_count()
    decide(policy, "t", "r", err())
    assert store.get_fuel() > remaining[-1]


def test_a_runaway_decide_held_is_stopped_answered_and_rebuilt(
    faulty_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = open_policy({**NO_JITTER, "wasm_path": str(faulty_wasm)})
    assert delays(policy, "__fault_spin_held__", "r", [err()]) == [200]
    with caplog.at_level(logging.ERROR, logger="cpex_retry_with_backoff_wasm.sandbox"):
        assert delays(policy, "__fault_spin_held__", "r", [err()]) == [0]
    (record,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert "decide-held failed" in record
    assert "all fuel consumed" in record
    assert policy.instance.fault_count == 1
    assert policy.instance.held_count == 0
    assert delays(policy, "t", "r", [err(), err()]) == [200, 400]


# --------------------------------------------------------------------------- HeldKeys itself
def given(handle: int) -> int:
    """A decision word that gives ``handle`` (a retry of 200 ms)."""
    return handle << HANDLE_SHIFT | 200


def test_held_keys_follow_the_decisions() -> None:
    held = HeldKeys()
    a, b = (1, "", "", "", "t", "a"), (1, "", "", "", "t", "b")
    held.note(a, given(7))
    held.note(b, given(8))
    assert held.handles == {a: 7, b: 8}
    held.note(a, given(7))  # a retry keeps the handle
    assert held.handles == {a: 7, b: 8}
    held.note(b, 200)  # a decision giving no handle: b holds nothing now
    assert held.handles == {a: 7}
    assert held.keys == {7: a}
    held.note(b, given(7))  # a's handle went to b: a's state is gone
    assert held.handles == {b: 7}
    assert held.keys == {7: b}
    held.note(a, 0)  # a decision for a key no longer listed changes nothing else
    assert held.handles == {b: 7}
    assert len(held) == 1
    held.note(None, given(7))  # b's handle went to a key the host does not list
    assert (held.handles, held.keys) == ({}, {})
    held.note(None, 0)  # that key's own decisions change nothing here
    assert len(held) == 0
