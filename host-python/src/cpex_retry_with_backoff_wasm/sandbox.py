"""``Sandbox``: one instance of the retry-engine component, its Store, and its faults.

It links the component (the production linker, or clock/seed substitutes for tests), checks
its contract, meters every call with fuel and caps linear memory, caches the exported
``Func`` objects and the lean callers of the hot calls (``fastcall``), and rebuilds or
reloads the instance.  It keeps no retry state of its own and no lock: its owner
(``retry_engine.RetryEngine``) holds one around every call, as a Store is not thread-safe.

Faults: a trap, fuel exhaustion, memory exhaustion or any other error while calling into the
instance leaves it unusable; ``fault`` logs the cause once and marks the sandbox broken, and
``rebuild`` makes a fresh Store + instance, configures it, and imports the retry state its
owner hands over.  If rebuilding fails too, the sandbox stays broken and the next call tries
again.
"""

from __future__ import annotations

import json
import logging
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
    CONTRACT_MINORS,
    CONTRACT_WANTED,
    KEYS_SINCE,
    MESSAGE_PREFIX,
    NULL_MEANS_OLD_BEHAVIOUR,
    ConfigError,
    ConfigurationError,
    Policy,
    RetryEngineLoadError,
    override_path,
)

log = logging.getLogger(__name__)

#: ``configure`` parses and validates the whole config: it gets this much more fuel per byte
#: of config JSON on top of the per-call budget.
CONFIGURE_FUEL_PER_BYTE: Final = 1_000
#: Fuel a call may spend per byte of text on top of ``wasm_fuel`` (and per byte of key:
#: ``fastcall.KEY_FUEL_PER_BYTE``), so that a large input is bounded by its size rather than
#: failing at a fixed budget (parsing deeply nested JSON is the dear end).
TEXT_FUEL_PER_BYTE: Final = 1_000
#: Cold calls (policies, state count, ``evict-expired``'s full sweep, state export and import)
#: may do work proportional to the state table; they get this many times the per-call fuel.
COLD_FUEL_FACTOR: Final = 100

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
    """One configured instance of the component.

    Args:
        path: the ``.wasm`` to load; ``pin``: its required sha256 (or None).
        fuel: the most fuel one call may burn; ``max_memory``: the linear-memory cap.
        config_json: what ``configure`` gets, now and after every rebuild or reload.
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
        self.config_json = ""
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
    def imports(self) -> dict[str, frozenset[str]]:
        """The component's imports: interface name -> imported function names."""
        return dict(self.build.loaded.imports)

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
        if minor not in CONTRACT_MINORS:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self.path} implements contract {version!r}, "
                f"this host needs {CONTRACT_WANTED}"
            )
        # The export name and the version must agree: which keys the component knows is read
        # from its minor.
        interface = self.build.loaded.interface
        if not interface.startswith(f"{INTERFACE_FAMILY}@{minor}."):
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self.path} implements contract {version!r} but exports {interface}"
            )
        self.contract_version = version
        return version

    def configure(self, config_json: str) -> tuple[ConfigError, ...]:
        """``configure`` the instance; the problems it found (none: it is configured)."""
        minor = ".".join(self.contract_version.split(".")[:2])
        unknown = _keys_unknown_to(minor, config_json, f"{self.path} implements {self.contract_version}")
        self.set_fuel(self.fuel + CONFIGURE_FUEL_PER_BYTE * len(config_json.encode("utf-8", "replace")))
        errors = self.funcs["configure"](self.live_store(), config_json)
        if errors is None and not unknown:
            self.config_json = config_json
            return ()
        # Refused keys join the component's own problems (all reported at once); the instance
        # may now hold the refused configuration, but the caller then discards it or restores
        # the previous instance.
        return tuple(ConfigError.from_record(e) for e in errors or ()) + unknown

    def global_policy(self) -> Policy:
        self.cold_fuel()
        return Policy.from_record(self.funcs["global-policy"](self.live_store()))

    def tool_policy(self, tool: str) -> Policy:
        self.cold_fuel()
        return Policy.from_record(self.funcs["tool-policy"](self.live_store(), tool))

    def state_count(self) -> int:
        self.cold_fuel()
        return int(self.funcs["state-count"](self.live_store()))

    def evict_expired(self) -> int:
        self.cold_fuel()
        return int(self.funcs["evict-expired"](self.live_store()))

    def export_state(self) -> str:
        self.cold_fuel()
        return str(self.funcs["export-state"](self.live_store()))

    def import_state(self, state_json: str) -> int:
        """Import an ``export-state`` document; how many entries it took.  Raises
        ``RetryEngineLoadError`` when the instance refuses it."""
        self.cold_fuel()
        imported = self.funcs["import-state"](self.live_store(), state_json)
        if not isinstance(imported, int):
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance refused the state: {imported}")
        return imported

    def decide(self, key: str, tool_len: int, signals: int, handle: int, texts: list[str] | None) -> int:
        """The generic call: ``decide-text`` with ``texts``, else ``decide`` (no lean path).

        Fuel: the base budget plus a bound on the work the input can legitimately need
        (hashing the key, parsing each text as JSON); characters count as their worst-case
        four UTF-8 bytes, so nothing is encoded just to size the budget.
        """
        fuel = self.fuel + KEY_FUEL_PER_BYTE * 4 * len(key)
        if texts is None:
            self.set_fuel(fuel)
            decision: int = self.funcs["decide"](self.live_store(), key, tool_len, signals, handle)
            return decision
        self.set_fuel(fuel + TEXT_FUEL_PER_BYTE * 4 * sum(len(t) for t in texts))
        decision = self.funcs["decide-text"](self.live_store(), key, tool_len, signals, texts, handle)
        return decision

    # ------------------------------------------------------------------ faults
    def fault(self, what: str, exc: BaseException) -> None:
        """Log a fault of call ``what`` once and drop the unusable instance."""
        self.fault_count += 1
        log.error(
            "%s: %s failed (%s); answering no-retry and rebuilding the instance",
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

    def rebuild(self, state_json: str | None) -> bool:
        """Instantiate and configure again, then import ``state_json`` (the live retry state,
        or None); False if that failed (the sandbox stays broken)."""
        try:
            self._instantiate()
            errors = self.configure(self.config_json)
            if errors:  # pragma: no cover - the same config was accepted before
                raise ConfigurationError(errors)
        except Exception as exc:
            self.fault_count += 1
            self._drop_instance()
            log.error("%s: rebuilding the instance failed (%s)", MESSAGE_PREFIX, describe_fault(exc))
            return False
        self.rebuild_count += 1
        if state_json is None:
            return True
        try:
            moved = self.import_state(state_json)
        except Exception as exc:
            # One ERROR per fault: the fault itself was logged.  Typically the state that ran
            # the memory out does not fit the new instance either.
            log.warning(
                "%s: the rebuilt instance did not take the live retry state (%s); it starts empty",
                MESSAGE_PREFIX,
                describe_fault(exc),
            )
            return self.rebuild(None)
        log.warning("%s: %d retry-state entries restored after the fault", MESSAGE_PREFIX, moved)
        return True

    # ------------------------------------------------------------------ hot reload
    def reload(self, build: Build, pin: str | None) -> int:
        """Swap in ``build`` (from ``load``), configured as now, with every live retry-state
        entry moved across (``export-state`` -> ``import-state``); the number moved.

        Raises:
            RetryEngineLoadError: the new build is for another contract, rejects the config
                or the state.  The previous instance keeps serving.
        """
        previous = (self.build, self.store, self.funcs, self.lean, self.held_fuel, self.broken)
        previous_version = self.contract_version
        state = "" if self.broken or self.store is None else self.export_state()
        try:
            self.build = build
            self._instantiate()
            version = self.check_contract()
            errors = self.configure(self.config_json)
            if errors:
                raise ConfigurationError(errors)
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
            version,
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


def _minor_key(minor: str) -> tuple[int, ...]:
    """``"0.3"`` as ``(0, 3)``, for ordering (a minor the host loads, so digits only)."""
    return tuple(int(part) for part in minor.split(".") if part.isdigit())


def _keys_unknown_to(minor: str, config_json: str, why: str) -> tuple[ConfigError, ...]:
    """The keys of ``config_json`` that a component of contract ``minor`` would silently ignore,
    as errors."""
    newer = [
        (since, key)
        for since, keys in KEYS_SINCE.items()
        if _minor_key(since) > _minor_key(minor)
        for key in keys
    ]
    identity_budgets = minor == "0.2"
    if not newer and not identity_budgets:
        return ()
    try:
        raw = json.loads(config_json)
    except ValueError:
        return ()  # the component names that problem itself
    if not isinstance(raw, dict):
        return ()
    mappings: list[tuple[str, Any]] = [("", raw)]
    overrides = raw.get("tool_overrides")
    if isinstance(overrides, dict):
        mappings += [(f"{override_path(tool)}.", entry) for tool, entry in overrides.items()]
    unknown = [
        ConfigError(f"{prefix}{key}", f"needs a contract {since} component; {why}")
        for prefix, mapping in mappings
        if isinstance(mapping, dict)
        for since, key in newer
        if key in mapping and (mapping[key] is not None or key not in NULL_MEANS_OLD_BEHAVIOUR)
    ]
    # A 0.2 component keeps one budget per tool name, which every tenant of a shared engine
    # would spend: a budget under an identity scope needs 0.3.
    if identity_budgets and raw.get("key_scope") in ("tenant", "user"):
        unknown += [
            ConfigError(
                f"{prefix}retry_budget_percent",
                f"a budget per identity (key_scope {raw['key_scope']}) needs a contract 0.3 component; {why}",
            )
            for prefix, mapping in mappings
            if isinstance(mapping, dict) and mapping.get("retry_budget_percent") is not None
        ]
    return tuple(unknown)
