"""``HeldKeys``: the keys the engine told the host hold retry state, and their handles.

Only what the engine said, nothing it did not: the engine gives a key's handle in the
decision that leaves it holding state (a ``retry``) and 0 in every other (WIT ``decide``).  So
this table keeps, for each handle, the key of the last decision that gave it, and forgets a
key when a decision for it gives 0 or when its handle is given to another key (the engine
does so only once the key's state has gone: its TTL, a bound, its policy released).  It never
ages, counts or evicts anything itself.

That makes it a superset of the keys holding state, by construction, and no larger than the
engine's table: a key the engine dropped on its own stays listed until its handle goes to
another key or its next result is decided (``decide-held`` answers ``unknown-handle``, the key
is sent again, and the decision says 0).  Two uses:

* **handles**: a listed key's next result crosses as ``decide-held(handle, signals)``, no key
  bytes copied;
* **the success shortcut**: under a policy whose ``stateless-successes`` the engine reported, a
  result with no failure signal for a key not listed changes nothing, and is answered without
  calling in.

The shortcut reads ``handles`` (one attribute, one dict lookup) without the instance's lock.
Writers hold the lock and change it only by adding or removing one key after the engine
decided for it, or by replacing the whole dict (``clear``), never by clearing a dict a reader
may still be looking at.
"""

from __future__ import annotations

from typing import Any

from .wire import HANDLE_MASK, HANDLE_SHIFT

#: A key as the host names it: (policy id, tenant, server, identity, tool, request id), the
#: gateway's own values (the key parts cross as ``keys.wire_key`` encodes them).
Key = tuple[Any, ...]


class HeldKeys:
    """The keys holding retry state in one instance, as its decisions said, by handle."""

    __slots__ = ("handles", "keys")

    def __init__(self) -> None:
        #: key -> its handle.
        self.handles: dict[Key, int] = {}
        #: handle -> the key of the last decision that gave it.
        self.keys: dict[int, Key] = {}

    def note(self, key: Key | None, decision: int) -> None:
        """Record what the decision for ``key`` (not a special word) says of it.  ``None``: a
        key the host does not list (a part too long to keep); what its decision says of the
        handle still counts, or a listed key would keep a handle now naming another key."""
        handle = (decision >> HANDLE_SHIFT) & HANDLE_MASK
        if handle:
            previous = self.keys.get(handle)
            if previous is not None and previous != key and self.handles.get(previous) == handle:
                # The engine gave the handle to another key: the previous one's state is gone.
                del self.handles[previous]
            if key is None:
                self.keys.pop(handle, None)
                return
            self.keys[handle] = key
            self.handles[key] = handle
            return
        if key is None:
            return
        handle = self.handles.pop(key, 0)
        if handle and self.keys.get(handle) == key:
            del self.keys[handle]

    def clear(self) -> None:
        """The instance holds nothing (a new one after a fault).  The dicts are replaced, not
        cleared, so a lock-free reader never sees one emptied under it."""
        self.handles = {}
        self.keys = {}

    def __len__(self) -> int:
        return len(self.handles)


__all__ = ["HeldKeys", "Key"]
