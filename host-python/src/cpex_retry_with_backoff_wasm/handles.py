"""``HeldKeys``: what the host knows of the keys that hold retry state in the component.

One ordered dict, ``entries``, serves three purposes:

* **handles**: each key is named by a small integer once the component knows it (WIT
  ``decide``'s ``handle``), so its next results cross as ``decide-held(handle, signals)`` and
  no key bytes are copied;
* **the success shortcut**: ``entries`` lists every key that may hold state (a superset: the
  component may have dropped more on its own, by TTL or capacity), so a plain success for a
  key not in it changes nothing and is answered without calling in;
* **the state mirror**: each entry keeps what the component keeps for its key (failure count
  and previous delay, from the last decision; summed delays; time of the last failure on the
  monotonic clock the component reads), so that after a fault the new instance is given the
  live retry state back (``export_state`` -> ``import-state``).

Entries are ordered by last failure, oldest first, and bounded as the component's table is:
beyond ``max_state_entries`` the oldest goes, and an entry older than ``state_ttl_ms`` goes at
a new key (at most two a time; not looked for until the oldest can have expired).  Both sides
see the same decisions in the same order, so whatever the component drops is the oldest here
too, and the mirror stays a superset (an expired key listed a while longer is harmless).

The shortcut reads ONE attribute, ``shortcut`` (the live ``entries`` dict, or None when the
shortcut is off), without the adapter's lock.  Writers hold the lock and change the set of
keys only in two ways the reader can interleave with: adding or removing one key after the
component decided for it, or replacing the whole attribute (``forget``), never clearing a dict
a reader may still be looking at.  Everything else here runs under the adapter's lock.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from .signals import REASON_RETRY
from .wire import (
    DELAY_MASK,
    HANDLE_KEY_MAX_BYTES,
    HANDLE_MAX,
    IDLE,
    REASON_SHIFT,
    RETRY_COUNT_SHIFT,
    TEXT_FREE,
)

#: A key as the adapter names it: (tool name, request part of the key).
Key = tuple[str, str]
#: ``(tool, request id)`` as they cross into the component (see ``retry_engine.wire_key``).
WireKey = Callable[[str, str], tuple[bytes, int]]

#: The component's totals are u32 milliseconds and saturate there.
_U32_MAX: Final = (1 << 32) - 1
_NS_PER_MS: Final = 1_000_000
#: ``import-state`` format that carries previous and summed delays.
STATE_FORMAT: Final = 2


#: An entry is a list (cheaper to make than an object, as one is made per first failure):
#: ``[handle, decision, total_ms, at_ns]``.  ``handle``: the key's handle (0: none);
#: ``decision``: its last decision, a retry (it carries the failure count and the delay);
#: ``total_ms``: its summed delays; ``at_ns``: monotonic nanoseconds of its last failure.
Held = list[int]
HANDLE: Final = 0
DECISION: Final = 1
TOTAL_MS: Final = 2
AT_NS: Final = 3


class HeldKeys:
    """The keys holding retry state in one component instance, their handles and state.

    Args:
        max_entries: the component's ``max_state_entries``.
        ttl_ms: the component's ``state_ttl_ms``.
        now_ns: the monotonic clock the component reads, in nanoseconds.
    """

    def __init__(self, max_entries: int, ttl_ms: int, now_ns: Callable[[], int]) -> None:
        self.max_entries = max_entries
        self.ttl_ns = ttl_ms * _NS_PER_MS
        self.now_ns = now_ns
        #: Every key that may hold state, oldest last failure first (an OrderedDict: finding
        #: and dropping the oldest is O(1), where a dict's first item is found by skipping
        #: every slot deleted before it).
        self.entries: OrderedDict[Key, Held] = OrderedDict()
        #: What the lock-free success shortcut reads: ``entries``, or None (shortcut off).
        self.shortcut: OrderedDict[Key, Held] | None = None
        #: Handles free for reuse; ``next_handle`` is the next never used.
        self.free: list[int] = []
        self.next_handle = 1
        #: No entry has outlived the TTL before this time (``make_room`` need not look until
        #: then): the oldest entry's expiry when last computed; entries only get newer since.
        self.sweep_ns = 0

    # ------------------------------------------------------------------ handles
    def take_handle(self, key_bytes: int) -> int:
        """A handle for a key of ``key_bytes`` bytes of UTF-8, or 0 (too long, none left)."""
        if key_bytes > HANDLE_KEY_MAX_BYTES:
            return 0
        if self.free:
            return self.free.pop()
        handle = self.next_handle
        if handle > HANDLE_MAX:
            return 0
        self.next_handle = handle + 1
        return handle

    def give_back(self, handle: int) -> None:
        """A handle taken for a call that did not bind it."""
        if handle:
            self.free.append(handle)

    def owned_handles(self) -> list[int]:
        """Handles bound to a key (for checks: with ``free`` they are 1..next_handle-1)."""
        return [entry[HANDLE] for entry in self.entries.values() if entry[HANDLE]]

    # ------------------------------------------------------------------ decisions
    def note(self, key: Key, entry: Held | None, handle: int, decision: int) -> None:
        """Record the component's decision for ``key`` (named by ``handle`` in the call;
        ``entry``: the key's entry before it): a retry keeps state for the key, any other
        reason cleared it.  Its ``text-free`` bit turns the shortcut on or off.
        (``RetryEngine`` writes out the first retry of an unlisted key decided by its bytes.)"""
        entries = self.entries
        self.shortcut = entries if decision & TEXT_FREE else None
        if (decision >> REASON_SHIFT) & 0xFF == REASON_RETRY:
            if entry is None:
                at_ns = self.now_ns()
                if at_ns > self.sweep_ns or len(entries) >= self.max_entries:
                    self.make_room(at_ns)
                entries[key] = [handle, decision, decision & DELAY_MASK, at_ns]
                return
            if entry[HANDLE] != handle:
                self.give_back(entry[HANDLE])
                entry[HANDLE] = handle
            self.retried(key, entry, decision)
            return
        # The decision cleared the key: its handle, and one taken for this call, are free.
        if entry is not None:
            del entries[key]
            self.give_back(entry[HANDLE])
            if handle != entry[HANDLE]:
                self.give_back(handle)
        else:
            self.give_back(handle)
        if decision & IDLE and entries:
            # The component holds nothing, yet keys are listed (it dropped them on its own).
            self.forget()

    def retried(self, key: Key, entry: Held, decision: int) -> None:
        """Another retry for a listed key: its state moves on and it becomes the newest.
        (``RetryEngine.decide`` writes this out for a key decided by its handle.)"""
        entry[DECISION] = decision
        entry[TOTAL_MS] += decision & DELAY_MASK
        entry[AT_NS] = self.now_ns()
        self.entries.move_to_end(key)

    def make_room(self, now_ns: int) -> None:
        """Before a new key, drop what the component drops when it records one: entries older
        than the TTL, then the oldest when full.  Needed only once ``now_ns`` passes
        ``sweep_ns`` or the entries are full (the caller tests that, a call saved per key)."""
        entries = self.entries
        # Conservative by a millisecond: the component compares whole milliseconds.
        ttl_ns = self.ttl_ns + _NS_PER_MS
        # Amortized: each entry is added once, so two drops per addition keep up.
        for _ in range(2):
            if not entries:
                break
            oldest = next(iter(entries))
            if entries[oldest][AT_NS] + ttl_ns >= now_ns:
                break
            self.drop(oldest)
        while len(entries) >= self.max_entries:
            self.drop(next(iter(entries)))
        # The entry about to be added is at ``now_ns``, every later one newer: a late sweep
        # only keeps an expired key listed a while longer, which the shortcut allows.
        self.sweep_ns = (entries[next(iter(entries))][AT_NS] if entries else now_ns) + ttl_ns

    def drop(self, key: Key) -> None:
        """Unlist ``key`` (the component dropped it too) and free its handle: one change the
        shortcut's reader sees whole."""
        self.give_back(self.entries.pop(key)[HANDLE])

    def forget(self) -> None:
        """No key holds state: every handle is free.  The shortcut's dict is replaced, not
        cleared, so a reader never sees an emptied dict it took before this call."""
        entries: OrderedDict[Key, Held] = OrderedDict()
        self.entries = entries
        if self.shortcut is not None:
            self.shortcut = entries
        self.free = []
        self.next_handle = 1

    def enable_shortcut(self, on: bool) -> None:
        """The component's word on whether plain successes of unlisted keys change nothing."""
        self.shortcut = self.entries if on else None

    # ------------------------------------------------------------------ faults
    def after_fault(self, key: Key | None) -> None:
        """A fresh instance knows no handles: unbind them all.  ``key``'s own call faulted (it
        was answered "no retry"): its state is not carried over."""
        if key is not None and key in self.entries:
            del self.entries[key]
        for entry in self.entries.values():
            entry[HANDLE] = 0
        self.free = []
        self.next_handle = 1

    def export_state(self, wire_key: WireKey) -> str | None:
        """The live entries as an ``import-state`` document (format 2, oldest first, expired
        ones left out), or None when there are none."""
        now = self.now_ns()
        rows: list[list[object]] = []
        for (tool, request_id), entry in self.entries.items():
            age_ns = now - entry[AT_NS]
            if age_ns > self.ttl_ns + _NS_PER_MS:
                continue  # gone in the component too (which also skips what it finds expired)
            encoded, tool_len = wire_key(tool, request_id)
            text = encoded.decode()
            rows.append(
                [
                    text[:tool_len],
                    text[tool_len:],
                    (entry[DECISION] >> RETRY_COUNT_SHIFT) & 0xFF,
                    max(0, age_ns) // _NS_PER_MS,
                    min(entry[DECISION] & DELAY_MASK, _U32_MAX),
                    min(entry[TOTAL_MS], _U32_MAX),
                ]
            )
        if not rows:
            return None
        return json.dumps({"format": STATE_FORMAT, "entries": rows}, ensure_ascii=False)


__all__ = ["HANDLE", "STATE_FORMAT", "Held", "HeldKeys", "Key"]
