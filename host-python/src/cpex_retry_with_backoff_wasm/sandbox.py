"""``Sandbox``: one instance of the retry-engine component, its Store, and its faults.

It links the component (the production linker, or clock/seed substitutes for tests), checks
its contract, starts the instance on the process's monotonic clock (``init``), meters every
call with fuel and caps linear memory, caches the exported ``Func`` objects and the lean
callers of the hot calls (``fastcall``), and rebuilds or reloads the instance.  It keeps no
retry state of its own and no lock: its owner (``instance.Instance``) holds one around every
call, as a Store is not thread-safe.

Faults: a trap, fuel exhaustion, memory exhaustion or any other error while calling into the
instance leaves it unusable; ``fault`` logs the cause once and marks the sandbox broken, and
``rebuild`` makes a fresh Store + instance (its policies are opened again as their plugin
objects next call; their retry state is lost: docs/reliability.md).  If rebuilding fails too,
the sandbox stays broken and the next call tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from wasmtime import Store, WasiConfig
from wasmtime.component import Func, Linker

from . import fastcall
from .fastcall import KEY_FUEL_PER_BYTE, HeldFuel, LeanDecide, LeanDecideHeld, lean_decide, lean_decide_held
from .loader import (
    CLOCK_INTERFACE_PREFIX,
    INTERFACE_FAMILY,
    SEED_INTERFACE_PREFIX,
    LoadedComponent,
    get_engine,
    load_component,
    production_linker,
)
from .model import (
    CONTRACT_MINOR,
    CONTRACT_WANTED,
    MESSAGE_PREFIX,
    ConfigError,
    Opened,
    Policy,
    RetryEngineLoadError,
)

log = logging.getLogger(__name__)

#: ``open-policy`` parses and validates the whole config: it gets this much more fuel per byte
#: of config JSON on top of the cold-call budget.
CONFIGURE_FUEL_PER_BYTE: Final = 1_000
#: Fuel a call may spend per byte of text on top of ``wasm_fuel`` (and per byte of key:
#: ``fastcall.KEY_FUEL_PER_BYTE``), so that a large input is bounded by its size rather than
#: failing at a fixed budget (parsing deeply nested JSON is the dear end).
TEXT_FUEL_PER_BYTE: Final = 1_000
#: Cold calls (opening a policy, which may release unused ones, policies, state counts,
#: ``evict-expired``'s full sweep, state export and import) may do work proportional to the
#: state table; they get this many times the per-call fuel.
COLD_FUEL_FACTOR: Final = 100

#: Moving state between instances is bounded by its size rather than a fixed budget: fuel per
#: entry written out, and per character of the document read back (both well above what a row
#: takes: a runaway guest is still stopped).
STATE_FUEL_PER_ENTRY: Final = 50_000
STATE_FUEL_PER_BYTE: Final = 500

Clock = Callable[[], int]
Seed = tuple[int, int]
#: The lean callers of ``decide`` and ``decide-held``.
Lean = tuple[LeanDecide, LeanDecideHeld]


def describe_fault(exc: BaseException) -> str:
    """``Type: cause`` on one line; wasmtime's multi-line backtrace is reduced to its cause."""
    text = str(exc)
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1]
    return f"{type(exc).__name__}: {' '.join(text.split())}"


class Build:
    """A loaded component and the linker for it: what an instance is made from."""

    __slots__ = ("linker", "loaded", "path")

    def __init__(self, path: Path, loaded: LoadedComponent, linker: Linker) -> None:
        self.path = path
        self.loaded = loaded
        self.linker = linker


class Sandbox:
    """One instance of the component, started on the process's clock.

    Args:
        path: the ``.wasm`` to load; ``pin``: its required sha256 (or None).
        fuel: the most fuel one call may burn; ``max_memory``: the linear-memory cap.
        clock: monotonic nanoseconds; replaces ``wasi:clocks/monotonic-clock`` (tests).
        seed: replaces ``wasi:random/insecure-seed`` with this fixed pair (tests).

    Raises:
        RetryEngineLoadError: the component is missing, corrupt or not a retry engine.
    """

    #: Whether the missing lean call path was logged (once per process).
    _warned_slow_path: bool = False

    def __init__(
        self,
        path: Path,
        pin: str | None,
        *,
        fuel: int,
        max_memory: int,
        compile_cache: bool = True,
        clock: Clock | None = None,
        seed: Seed | None = None,
    ) -> None:
        self._clock = clock
        self._seed = seed
        self.fuel = fuel
        self.max_memory = max_memory
        #: ``wasm_compile_cache``: whether loads may use the on-disk compile cache.
        self.compile_cache = compile_cache
        #: The pinned sha256 of the component (``wasm_sha256``), or None.
        self.pinned_sha256 = pin
        self.build = self.load(path, pin)
        #: The Store and the exported functions by WIT name; None / empty while broken.
        self.store: Store | None = None
        self.funcs: dict[str, Func] = {}
        #: The lean callers of ``decide`` and ``decide-held``, or None (no lean path here, or
        #: broken): the owner's hot path reads this.
        self.lean: Lean | None = None
        #: When ``decide-held`` refuels (``fastcall.HeldFuel``).
        self.held_fuel = HeldFuel(fuel)
        self.broken = False
        #: Number of faults (traps, failed rebuilds) since construction.
        self.fault_count = 0
        #: Number of successful reloads since construction.
        self.reload_count = 0
        #: Number of instances rebuilt after a fault since construction.
        self.rebuild_count = 0
        self.contract_version = ""
        self._instantiate()
        self._start()

    # ------------------------------------------------------------------ building
    def load(self, path: Path, pin: str | None) -> Build:
        """Compile (or fetch from the caches) ``path`` and link it; no lock needed."""
        loaded = load_component(path, pin, compile_cache=self.compile_cache)
        return Build(path, loaded, self._make_linker(loaded))

    @property
    def path(self) -> Path:
        """The component file in use."""
        return self.build.path

    @property
    def sha256(self) -> str:
        """The sha256 of the component in use."""
        return self.build.loaded.sha256

    @property
    def imports(self) -> dict[str, frozenset[str]]:
        """The component's imports: interface name -> imported function names."""
        return dict(self.build.loaded.imports)

    def now_ns(self) -> int:
        """The process's monotonic clock (the substitute, if any), which the instance keeps
        its times on (``init``)."""
        return int(self._clock()) if self._clock is not None else time.monotonic_ns()

    def _make_linker(self, loaded: LoadedComponent) -> Linker:
        clock, seed = self._clock, self._seed
        if clock is None and seed is None:
            return production_linker()
        linker = Linker(get_engine())
        linker.allow_shadowing = True
        linker.add_wasip2()
        with linker.root() as root:
            for name, funcs in loaded.imports.items():
                if clock is not None and name.startswith(CLOCK_INTERFACE_PREFIX):
                    with root.add_instance(name) as iface:
                        _define_clock(iface, funcs, clock)
                elif seed is not None and name.startswith(SEED_INTERFACE_PREFIX):
                    with root.add_instance(name) as iface:
                        _define_seed(iface, funcs, seed)
        return linker

    def _instantiate(self) -> None:
        """A fresh Store + instance of ``build``.  Raises RetryEngineLoadError."""
        store = Store(get_engine())
        store.set_wasi(WasiConfig())
        store.set_limits(memory_size=self.max_memory)
        store.set_fuel(self.fuel)
        build = self.build
        try:
            instance = build.linker.instantiate(store, build.loaded.component)
            funcs: dict[str, Func] = {}
            for name, index in build.loaded.func_indices.items():
                func = instance.get_func(store, index)
                if func is None:  # pragma: no cover - checked when the component was loaded
                    raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: export {name!r} is not a function")
                funcs[name] = func
            # Inside the try: a `decide` of another signature is a load error naming the path.
            held_fuel = HeldFuel(self.fuel)
            lean = _lean_callers(funcs, store, self.fuel, held_fuel)
        except RetryEngineLoadError:
            raise
        except Exception as exc:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot instantiate {build.path}: {type(exc).__name__}: {exc}"
            ) from exc
        self.store = store
        self.funcs = funcs
        self.held_fuel = held_fuel
        if lean is None and not Sandbox._warned_slow_path:
            Sandbox._warned_slow_path = True
            log.warning(
                "%s: the lean decide call is unavailable (%s); using wasmtime-py's generic call, "
                "several times slower",
                MESSAGE_PREFIX,
                fastcall.UNAVAILABLE,
            )
        self.lean = lean
        self.broken = False

    def _start(self) -> None:
        """Check the new instance's contract and start it on the process's clock (``init``).
        Raises RetryEngineLoadError."""
        try:
            self.check_contract()
            self.cold_fuel()
            self.funcs["init"](self.live_store(), self.now_ns(), self.max_memory)
        except RetryEngineLoadError:
            raise
        except Exception as exc:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot start {self.path}: {describe_fault(exc)}"
            ) from exc

    def set_call_fuel(self, fuel: int) -> None:
        """Change ``wasm_fuel`` (the lean callers are rebuilt around it)."""
        self.fuel = fuel
        if self.store is not None and self.lean is not None:
            self.held_fuel = HeldFuel(fuel)
            self.lean = _lean_callers(self.funcs, self.store, fuel, self.held_fuel)

    # ------------------------------------------------------------------ calls (lock held)
    def live_store(self) -> Store:
        store = self.store
        if store is None:  # pragma: no cover - callers rebuild first
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
        return store

    def set_fuel(self, fuel: int) -> None:
        """Set the fuel of the next call; every call other than a lean one sets it through
        here, so that ``decide-held`` refuels after it."""
        self.live_store().set_fuel(fuel)
        self.held_fuel.invalidate()

    def cold_fuel(self) -> None:
        self.set_fuel(self.fuel * COLD_FUEL_FACTOR)

    def check_contract(self) -> str:
        """The instance's ``contract-version``, if this host speaks it."""
        self.cold_fuel()
        version = self.funcs["contract-version"](self.live_store())
        if not isinstance(version, str):
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self.path} answers contract-version with {version!r}"
            )
        minor = ".".join(version.split(".")[:2])
        if minor != CONTRACT_MINOR:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self.path} implements contract {version!r}, "
                f"this host needs {CONTRACT_WANTED}"
            )
        # The export name and the version must agree.
        interface = self.build.loaded.interface
        if not interface.startswith(f"{INTERFACE_FAMILY}@{minor}."):
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self.path} implements contract {version!r} but exports {interface}"
            )
        self.contract_version = version
        return version

    def open_policy(
        self, scope: str, config_json: str, ceiling: int | None
    ) -> Opened | tuple[ConfigError, ...]:
        """``open-policy``: what it opened, or the problems it found (nothing opened)."""
        size = len(config_json.encode("utf-8", "replace"))
        self.set_fuel(self.fuel * COLD_FUEL_FACTOR + CONFIGURE_FUEL_PER_BYTE * size)
        answer = self.funcs["open-policy"](self.live_store(), scope, config_json, ceiling)
        if isinstance(answer, list):  # result<opened-policy, list<config-error>>: the error side
            return tuple(ConfigError.from_record(e) for e in answer)
        return Opened.from_record(answer)

    def close_policy(self, policy: int) -> None:
        self.cold_fuel()
        self.funcs["close-policy"](self.live_store(), policy)

    def tool_policy(self, policy: int, tool: str) -> Policy | None:
        self.cold_fuel()
        record = self.funcs["tool-policy"](self.live_store(), policy, tool)
        return None if record is None else Policy.from_record(record)

    def state_count(self, policy: int | None = None) -> int:
        self.cold_fuel()
        return int(self.funcs["state-count"](self.live_store(), policy))

    def policy_count(self) -> int:
        self.cold_fuel()
        return int(self.funcs["policy-count"](self.live_store()))

    def evict_expired(self) -> int:
        self.cold_fuel()
        return int(self.funcs["evict-expired"](self.live_store()))

    def export_state(self) -> str:
        """``export-state``, with fuel for the state it writes out (a cold call's, and more per
        entry: the state may be the instance's whole table)."""
        entries = self.state_count(None)
        self.set_fuel(self.fuel * COLD_FUEL_FACTOR + STATE_FUEL_PER_ENTRY * entries)
        return str(self.funcs["export-state"](self.live_store()))

    def import_state(self, state_json: str) -> int:
        """Import an ``export-state`` document; how many entries it took.  Raises
        ``RetryEngineLoadError`` when the instance refuses it.  Fuel grows with the document."""
        self.set_fuel(self.fuel * COLD_FUEL_FACTOR + STATE_FUEL_PER_BYTE * len(state_json))
        imported = self.funcs["import-state"](self.live_store(), state_json)
        if not isinstance(imported, int):
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance refused the state: {imported}")
        return imported

    def decide(self, policy: int, key: str, parts: int, signals: int, texts: list[str] | None) -> int:
        """The generic call: ``decide-text`` with ``texts``, else ``decide`` (no lean path).

        Fuel: the base budget plus a bound on the work the input can legitimately need
        (hashing the key, parsing each text as JSON); characters count as their worst-case
        four UTF-8 bytes, so nothing is encoded just to size the budget.
        """
        fuel = self.fuel + KEY_FUEL_PER_BYTE * 4 * len(key)
        if texts is None:
            self.set_fuel(fuel)
            decision: int = self.funcs["decide"](self.live_store(), policy, key, parts, signals)
            return decision
        self.set_fuel(fuel + TEXT_FUEL_PER_BYTE * 4 * sum(len(t) for t in texts))
        decision = self.funcs["decide-text"](self.live_store(), policy, key, parts, signals, texts)
        return decision

    # ------------------------------------------------------------------ faults
    def fault(self, what: str, exc: BaseException) -> None:
        """Log a fault of call ``what`` once and drop the unusable instance."""
        self.fault_count += 1
        log.error(
            "%s: %s failed (%s); answering no-retry and rebuilding the instance, which loses its "
            "live retry state",
            MESSAGE_PREFIX,
            what,
            describe_fault(exc),
        )
        log.debug("%s: %s fault detail: %s", MESSAGE_PREFIX, what, exc)
        self._drop_instance()

    def _drop_instance(self) -> None:
        self.store = None
        self.funcs = {}
        self.lean = None
        self.broken = True

    def rebuild(self) -> bool:
        """A fresh instance of the same build, started (``init``); False if that failed (the
        sandbox stays broken).  It holds no policy: each is opened again by its plugin objects
        on their next call (``unknown-policy``)."""
        try:
            self._instantiate()
            self._start()
        except Exception as exc:
            self.fault_count += 1
            self._drop_instance()
            log.error("%s: rebuilding the instance failed (%s)", MESSAGE_PREFIX, describe_fault(exc))
            return False
        self.rebuild_count += 1
        return True

    # ------------------------------------------------------------------ hot reload
    def reload(self, build: Build, pin: str | None) -> int:
        """Swap in ``build`` (from ``load``), started on the same clock, with every policy,
        live retry-state entry and budget moved across (``export-state`` -> ``import-state``):
        each keeps its id, handle and age.  Returns the number of entries moved.

        Raises:
            RetryEngineLoadError: the new build is for another contract or refuses the state.
                The previous instance keeps serving.
        """
        previous = (self.build, self.store, self.funcs, self.lean, self.held_fuel, self.broken)
        previous_version = self.contract_version
        try:
            state = "" if self.broken or self.store is None else self.export_state()
        except Exception as exc:
            # A trap while writing the state out leaves the running instance unusable: a fault.
            self.fault("export-state", exc)
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: reloading {build.path} refused: the running instance could not "
                f"write its state out ({describe_fault(exc)})"
            ) from exc
        try:
            self.build = build
            self._instantiate()
            self._start()
            moved = self.import_state(state) if state else 0
        except Exception as exc:
            self.build, self.store, self.funcs, self.lean, self.held_fuel, self.broken = previous
            self.contract_version = previous_version
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: reloading {build.path} refused ({describe_fault(exc)}); "
                f"the previous instance ({previous[0].path}) keeps serving"
            ) from exc
        self.reload_count += 1
        self.pinned_sha256 = pin
        log.warning(
            "%s: reloaded %s (contract %s); %d retry-state entries carried over",
            MESSAGE_PREFIX,
            build.path,
            self.contract_version,
            moved,
        )
        return moved


def _lean_callers(funcs: dict[str, Func], store: Store, fuel: int, held_fuel: HeldFuel) -> Lean | None:
    decide = lean_decide(funcs["decide"], store, fuel, held_fuel)
    held = lean_decide_held(funcs["decide-held"], store, fuel, held_fuel)
    return None if decide is None or held is None else (decide, held)


def _define_clock(iface: Any, funcs: frozenset[str], clock: Clock) -> None:
    unsupported = funcs - {"now", "resolution"}
    if unsupported:
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: cannot substitute the clock: the component also imports "
            f"{', '.join(sorted(unsupported))}"
        )
    iface.add_func("now", lambda _store: clock())
    iface.add_func("resolution", lambda _store: 1)


def _define_seed(iface: Any, funcs: frozenset[str], seed: Seed) -> None:
    unsupported = funcs - {"insecure-seed"}
    if unsupported:
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: cannot substitute the seed: the component also imports "
            f"{', '.join(sorted(unsupported))}"
        )
    pair = (int(seed[0]), int(seed[1]))
    iface.add_func("insecure-seed", lambda _store: pair)


__all__ = ["COLD_FUEL_FACTOR", "Build", "Clock", "Sandbox", "Seed", "describe_fault"]
