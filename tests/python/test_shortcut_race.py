"""The lock-free success shortcut against a writer that changes the listed keys (issue 12 §5).

The shortcut answers a plain success itself when the key is not listed as holding retry
state: it reads ``HeldKeys.handles`` (one attribute, one dict lookup) without the instance's
lock.  Earlier, a writer emptied the listed keys before it turned the shortcut off: in that
gap a success for a key that held state was answered without the component, its state was
not cleared, and its next failure got the second retry's delay.  Now the writers only add or
remove one key after the engine decided for it (``HeldKeys.note``), or replace the whole dict
(``HeldKeys.clear``, after a fault).  Here the writer is paused inside ``note`` while the
engine drops another key at the ``max_state_entries`` bound and gives its handle to the new
one, before and after the change, and what a lock-free reader would read is checked then.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm.handles import HeldKeys, Key
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, HANDLE_SHIFT

from .conftest import EngineCalls, VirtualClock, err, ok
from .test_instance import decide, open_policy

#: Bounds a wait on the other thread so that a deadlock fails the test instead of hanging it;
#: nothing is timed.
DEADLOCK_GUARD_S = 60


@pytest.mark.parametrize("pause", ["before", "after"])
def test_a_held_keys_success_reaches_the_component_while_the_writer_changes_the_keys(
    monkeypatch: pytest.MonkeyPatch, pause: str
) -> None:
    policy = open_policy({"jitter": False, "max_state_entries": 2}, clock=VirtualClock(), seed=(1, 2))
    instance = policy.instance
    assert decide(policy, "t", "oldest", err()) & DELAY_MASK == 200
    assert decide(policy, "t", "victim", err()) & DELAY_MASK == 200

    def key(rid: str) -> Key:
        return (policy.id, "", "", "", "t", rid)

    real_note = HeldKeys.note
    paused, resume = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def pausing_note(self: HeldKeys, noted: Key, decision: int) -> None:
        if noted != key("new"):
            real_note(self, noted, decision)
            return
        if pause == "after":
            real_note(self, noted, decision)
        # What a lock-free reader reads while the writer holds the lock mid-change.
        seen["listed"] = {k[5] for k in self.handles}
        paused.set()
        assert resume.wait(DEADLOCK_GUARD_S)
        if pause == "before":
            real_note(self, noted, decision)

    monkeypatch.setattr(HeldKeys, "note", pausing_note)
    answers: dict[str, int] = {}
    # A third key's first failure: the context is full, the engine drops the oldest key and
    # gives its handle to the new one.
    writer = threading.Thread(target=lambda: answers.setdefault("new", decide(policy, "t", "new", err())))
    writer.start()
    assert paused.wait(DEADLOCK_GUARD_S), "the writer never noted the new key"
    resume.set()
    writer.join(DEADLOCK_GUARD_S)
    assert not writer.is_alive()

    assert "victim" in seen["listed"], "the victim's success would have been answered without the engine"
    assert seen["listed"] == ({"oldest", "victim"} if pause == "before" else {"new", "victim"})
    assert answers["new"] & DELAY_MASK == 200
    assert instance.held_count == 2
    calls = EngineCalls(instance)
    assert decide(policy, "t", "victim", ok()) & DELAY_MASK == 0
    assert calls.count == 1, "the victim's success did not reach the engine"
    # The success cleared the victim: its next failure is a first one.
    assert decide(policy, "t", "victim", err()) & DELAY_MASK == 200


def test_clear_replaces_the_listed_keys_rather_than_emptying_them() -> None:
    """A reader that took the listed keys before ``clear`` (a fault) keeps a dict that was
    never emptied under it; the shortcut then reads the new one."""
    held = HeldKeys()
    listed: Key = (1, "", "", "", "t", "a")
    held.note(listed, 3 << HANDLE_SHIFT | 200)
    taken = held.handles
    assert listed in taken
    held.clear()
    assert listed in taken, "clear emptied a dict a reader may still hold"
    assert held.handles is not taken
    assert held.handles == {}
    assert len(held) == 0
