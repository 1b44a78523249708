"""The lock-free success shortcut against a writer that changes the listed keys (issue 12 §5).

The shortcut answers a plain success itself when the key is not listed as holding retry
state; it reads one attribute, ``HeldKeys.shortcut``, without the lock.  Earlier, the writer's
overflow branch emptied the listed keys before it turned the shortcut off: in that gap a
success for a key that held state was answered without the component, its state was not
cleared, and its next failure got the second retry's delay.  Here the writer is paused inside
the one place that drops listed keys while the component still runs (``HeldKeys.drop``, at the
``max_state_entries`` bound), before and after the change, and a reader runs meanwhile.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import RetryEngine
from cpex_retry_with_backoff_wasm.handles import Key
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import VirtualClock, err, ok

#: How long the reader gets while the writer is paused: a shortcut answers in microseconds.
READER_WINDOW_S = 0.5


@pytest.mark.parametrize("pause", ["before", "after"])
def test_a_held_keys_success_reaches_the_component_while_the_writer_drops_keys(
    monkeypatch: pytest.MonkeyPatch, pause: str
) -> None:
    engine = RetryEngine({"jitter": False, "max_state_entries": 2}, clock=VirtualClock(), seed=(1, 2))
    assert engine.decide("t", "oldest", err()) & DELAY_MASK == 200
    assert engine.decide("t", "victim", err()) & DELAY_MASK == 200

    held = engine.held
    real_drop = held.drop
    paused, resume = threading.Event(), threading.Event()

    def pausing_drop(key: Key) -> None:
        if pause == "before":
            paused.set()
            resume.wait(10)
        real_drop(key)
        if pause == "after":
            paused.set()
            resume.wait(10)

    monkeypatch.setattr(held, "drop", pausing_drop)
    answers: dict[str, Any] = {}
    # A third key's first failure: the table is full, the oldest key is dropped.
    writer = threading.Thread(target=lambda: answers.setdefault("new", engine.decide("t", "new", err())))
    writer.start()
    assert paused.wait(10), "the writer never dropped a key"

    reader_done = threading.Event()

    def read() -> None:
        answers["victim"] = engine.decide("t", "victim", ok())
        reader_done.set()

    reader = threading.Thread(target=read)
    reader.start()
    answered_while_paused = reader_done.wait(READER_WINDOW_S)
    resume.set()
    writer.join(10)
    reader.join(10)

    assert not answered_while_paused, "the victim's success was answered without the component"
    assert answers["victim"] & DELAY_MASK == 0
    assert answers["new"] & DELAY_MASK == 200
    # The success reached the component and cleared the victim: its next failure is a first one.
    assert engine.decide("t", "victim", err()) & DELAY_MASK == 200
    assert list(held.entries) == [("t", "new"), ("t", "victim")]


def test_forget_replaces_the_listed_keys_rather_than_emptying_them() -> None:
    """A reader that took the listed keys before ``forget`` keeps a dict that was never
    emptied under it; the shortcut then reads the new one."""
    engine = RetryEngine({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    engine.decide("t", "a", err())
    held = engine.held
    taken = held.shortcut
    assert taken is not None
    assert ("t", "a") in taken
    held.forget()
    assert ("t", "a") in taken, "forget emptied a dict a reader may still hold"
    assert held.shortcut is not taken
    assert held.shortcut == {}
