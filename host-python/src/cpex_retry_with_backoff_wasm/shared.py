"""The process's retry engines: plugin objects with an equal configuration share one.

The gateway does not keep one plugin object per stanza: it builds a plugin manager per
context (``<team_id>::<tool>``, a virtual server, or global), each constructing its own plugin
objects, and rebuilds a manager on its first use after 30 s, calling ``shutdown()`` on the
old one (issue 16).  Retry state kept per plugin object would restart mid-backoff at every
rebuild, and every context would hold its own instance.  So the engine — the adapter
(``RetryEngine``: its lock, ``Sandbox`` and ``HeldKeys``), hence the instance and its retry
state — belongs to the process:

* ``attach`` gives a plugin object the live engine of its **sharing key**: the plugin's name,
  the sha256 of the component's bytes, the effective configuration (every key, host-only
  ones included, as canonical JSON), the gateway's ``MAX_TOOL_RETRIES`` ceiling, and the test
  substitutes (clock, seed, wall clock) by identity.  Anything that could change a decision
  is in it, so objects that share an engine would all have decided alike anyway; the name
  keeps two stanzas apart (each would otherwise count a failure once per stanza).
* ``detach`` (the plugin's ``shutdown``) only counts the object out.  An engine nobody is
  attached to is **released** (dropped with its retry state, budgets included) once
  ``state_ttl_ms`` has passed on its clock since the last object detached — by then every
  key's state has expired anyway.  Releases happen lazily, at the next ``attach`` or
  ``detach`` of any engine; no thread.  An object attaching before that continues every
  count, budget and deadline.
* Hot reload (``reload``) re-keys the engine under the new build's sha256, so objects built
  after the ``.wasm`` was replaced and reloaded find it.

Thread safety: one lock for the table; an engine's own lock for its calls, as before.  A
new engine is constructed under the table's lock, so two objects of one configuration
never construct two.  The lock is re-entrant: a plugin object collected without
``shutdown`` detaches from a finalizer, which the garbage collector may run on a thread
that holds it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ceiling as _ceiling
from .loader import read_wasm_file
from .model import RetryEngineLoadError
from .retry_engine import RetryEngine
from .sandbox import Clock, Seed
from .settings import HostSettings

#: (plugin name, component sha256, canonical config, ceiling, clock, seed, wall clock).
SharingKey = tuple[Any, ...]

_NS_PER_MS = 1_000_000


#: (path, inode, size, mtime) -> sha256: the gateway constructs objects every 30 s per context,
#: and an unchanged file need not be read and hashed each time.
_digests: dict[tuple[str, int, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """The sha256 of the component file; "" when it cannot be read safely (missing, not a
    regular file, too large: the construction then reports it)."""
    try:
        info = path.stat()
        tag = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
        digest = _digests.get(tag)
        if digest is None:
            # The loader's bounded read: a FIFO or device must not hang construction here.
            digest = hashlib.sha256(read_wasm_file(path)).hexdigest()
            if len(_digests) > 64:  # a few builds per process; bounded anyway
                _digests.clear()
            _digests[tag] = digest
        return digest
    except (OSError, RetryEngineLoadError):
        return ""


def _canonical(config: Mapping[str, Any]) -> str:
    # `default=repr`: a value JSON cannot carry still keys by its value; the engine's own
    # validation refuses it at construction.
    return json.dumps(config, sort_keys=True, default=repr, ensure_ascii=False)


@dataclass
class _Slot:
    engine: RetryEngine
    key: SharingKey
    #: Plugin objects attached now.
    attached: int = 0
    #: Engine clock (ns) when the last object detached; None while attached.
    idle_since_ns: int | None = None
    ttl_ns: int = field(default=0)


class SharedEngines:
    """The table of live engines by sharing key (one per process: ``ENGINES``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[SharingKey, _Slot] = {}
        self._by_engine: dict[int, _Slot] = {}

    def attach(
        self,
        plugin: str,
        config: Mapping[str, Any],
        *,
        max_retries_ceiling: _ceiling.Ceiling | None = None,
        clock: Clock | None = None,
        seed: Seed | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> RetryEngine:
        """The engine of this configuration, constructing it if none is live.

        Raises what ``RetryEngine`` raises (``ConfigurationError``, ``RetryEngineLoadError``).
        """
        raw = dict(config)
        path = HostSettings.read(raw).wasm_path
        key: SharingKey = (
            plugin,
            _file_sha256(path),
            _canonical(raw),
            max_retries_ceiling,
            clock,
            seed,
            wall_clock,
        )
        with self._lock:
            self._release_idle()
            slot = self._slots.get(key)
            if slot is None:
                engine = RetryEngine(
                    raw,
                    max_retries_ceiling=max_retries_ceiling,
                    clock=clock,
                    seed=seed,
                    wall_clock=wall_clock,
                )
                slot = _Slot(engine, key, ttl_ns=engine.state_ttl_ms * _NS_PER_MS)
                self._slots[key] = slot
                self._by_engine[id(engine)] = slot
            slot.attached += 1
            slot.idle_since_ns = None
            return slot.engine

    def detach(self, engine: RetryEngine) -> None:
        """A plugin object no longer uses ``engine`` (its ``shutdown``)."""
        with self._lock:
            slot = self._by_engine.get(id(engine))
            if slot is not None and slot.engine is engine and slot.attached > 0:
                slot.attached -= 1
                if slot.attached == 0:
                    slot.idle_since_ns = engine.now_ns()
            self._release_idle()

    def reloaded(self, engine: RetryEngine) -> None:
        """``engine`` now runs another build: key it by that build's sha256 (unless another
        engine already holds that key)."""
        with self._lock:
            slot = self._by_engine.get(id(engine))
            if slot is None or slot.engine is not engine:
                return
            key = (slot.key[0], _file_sha256(engine.wasm_path), *slot.key[2:])
            if key == slot.key or key in self._slots:
                return
            del self._slots[slot.key]
            slot.key = key
            self._slots[key] = slot

    def _release_idle(self) -> None:
        """Drop every engine nobody has been attached to for its ``state_ttl_ms`` (lock held)."""
        for key, slot in list(self._slots.items()):
            since = slot.idle_since_ns
            if since is not None and slot.engine.now_ns() - since >= slot.ttl_ns:
                # `pop`: a finalizer re-entering here may have dropped it already.
                self._slots.pop(key, None)
                self._by_engine.pop(id(slot.engine), None)

    def attached(self, engine: RetryEngine) -> int:
        """How many plugin objects use ``engine`` now (0: idle, or released)."""
        with self._lock:
            slot = self._by_engine.get(id(engine))
            return slot.attached if slot is not None and slot.engine is engine else 0

    def is_live(self, engine: RetryEngine) -> bool:
        """Whether ``engine`` is still in the table (attached, or idle within its TTL).
        Releases what is due first."""
        with self._lock:
            self._release_idle()
            slot = self._by_engine.get(id(engine))
            return slot is not None and slot.engine is engine

    def __len__(self) -> int:
        with self._lock:
            return len(self._slots)

    def clear(self) -> None:
        """Forget every engine (objects attached keep theirs, unshared): for tests and for
        an embedder that wants a clean slate."""
        with self._lock:
            self._slots.clear()
            self._by_engine.clear()


#: The process's table.
ENGINES = SharedEngines()

__all__ = ["ENGINES", "SharedEngines", "SharingKey"]
