"""``WasmRetryEngine``: the one adapter between the plugin and the retry-engine component.

It owns a Store and an instance of the component (one per plugin instance, behind a lock:
a Store is not thread-safe and the gateway may call hooks from several threads), caches the
exported ``Func`` objects, meters every call with fuel and caps linear memory.

Faults: a trap, fuel exhaustion, memory exhaustion or any other error while calling into the
instance never reaches the tool call.  The call is answered with "no retry", the cause is
logged once, and a fresh Store + instance is built and configured again (in-guest retry state
is lost; it only ever delays a retry budget).  If rebuilding fails too, every call answers
"no retry" and the rebuild is retried on the next call.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

from wasmtime import Store, WasiConfig
from wasmtime.component import Func, Linker

from . import ceiling as _ceiling
from . import fastcall
from .fastcall import (
    KEY_FUEL_PER_BYTE,
    HeldFuel,
    LeanDecide,
    LeanDecideHeld,
    lean_decide,
    lean_decide_held,
)
from .loader import (
    CLOCK_INTERFACE_PREFIX,
    SEED_INTERFACE_PREFIX,
    LoadedComponent,
    get_engine,
    load_component,
    production_linker,
)
from .metrics import read_setting as read_metrics_setting
from .model import (
    CONTRACT_VERSION,
    MESSAGE_PREFIX,
    ConfigError,
    ConfigurationError,
    Policy,
    RetryEngineLoadError,
)
from .signals import (
    HANDLE_KEY_MAX_BYTES,
    HANDLE_MAX,
    IDLE,
    NEED_TEXT,
    REASON_SHIFT,
    TEXT_FREE,
    UNKNOWN_HANDLE,
    collect_texts,
    read_hints,
    read_signals,
)

log = logging.getLogger(__name__)

#: Host-only config keys (the engine ignores keys it does not know).
KEY_WASM_PATH: Final = "wasm_path"
KEY_WASM_SHA256: Final = "wasm_sha256"
KEY_FUEL: Final = "wasm_fuel"
KEY_MAX_MEMORY: Final = "wasm_max_memory_bytes"
#: The most fuel one call into the instance may burn (one unit ~ one Wasm instruction).  A
#: decision takes a few thousand; the budget only stops a runaway guest.
DEFAULT_FUEL: Final = 10_000_000
#: ``configure`` parses and validates the whole config: it gets this much more fuel per byte
#: of config JSON on top of the per-call budget (measured: ~230 per byte on large configs).
CONFIGURE_FUEL_PER_BYTE: Final = 1_000
#: Fuel a call may spend per byte of text on top of ``wasm_fuel`` (and per byte of key:
#: ``fastcall.KEY_FUEL_PER_BYTE``), so that a large input is bounded by its size rather than
#: failing at a fixed budget: parsing text as JSON costs 70-700 per byte (measured; deep
#: nesting is the dear end), hashing and copying a key ~16.
TEXT_FUEL_PER_BYTE: Final = 1_000
#: Cold calls (policies, state count, ``evict-expired``'s full sweep of up to 10^6 entries)
#: may do work proportional to the state table; they get this many times the per-call fuel.
COLD_FUEL_FACTOR: Final = 100
#: Keys the host remembers as holding retry state (see ``WasmRetryEngine.decide``); beyond
#: this the success shortcut is off until the engine reports itself idle.
HELD_KEYS_CAP: Final = 100_000
_REASON_RETRY: Final = 1
#: Linear-memory cap of the instance.
DEFAULT_MAX_MEMORY_BYTES: Final = 64 * 1024 * 1024
#: Guest memory a configuration needs: a fixed part plus, per `max_state_entries`, the slot,
#: index and handle tables (~70 bytes, allocated for the bound on the first failure) and a
#: gateway-sized key (tool name + UUID request id).  The memory bench measures ~135 bytes an
#: entry at 100 000 entries (`cargo run ... --example memory`).
GUEST_BASE_BYTES: Final = 2 * 1024 * 1024
GUEST_BYTES_PER_ENTRY: Final = 150
KEY_MAX_STATE_ENTRIES: Final = "max_state_entries"
#: The engine's range for `max_state_entries` (it reports values outside it itself).
MAX_STATE_ENTRIES: Final = 1_000_000
BUNDLED_WASM: Final = "retry_engine.wasm"

Clock = Callable[[], int]
Seed = tuple[int, int]


def bundled_wasm_path() -> Path:
    """Where the component shipped inside this package lives."""
    return Path(str(resources.files(__package__ or "cpex_retry_with_backoff_wasm").joinpath(BUNDLED_WASM)))


def _positive_int(config: Mapping[str, Any], key: str, default: int, errors: list[ConfigError]) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        errors.append(ConfigError(key, f"must be a positive integer, got {value!r}"))
        return default
    return value


def _host_limits(config: Mapping[str, Any], errors: list[ConfigError]) -> tuple[int, int]:
    """``wasm_fuel`` and ``wasm_max_memory_bytes``, checked; problems go to ``errors``.

    A ``max_state_entries`` whose tables cannot fit the memory cap is refused now, rather
    than failing every call once the table has grown.
    """
    fuel = _positive_int(config, KEY_FUEL, DEFAULT_FUEL, errors)
    max_memory = _positive_int(config, KEY_MAX_MEMORY, DEFAULT_MAX_MEMORY_BYTES, errors)
    entries = config.get(KEY_MAX_STATE_ENTRIES)
    if type(entries) is not int or not 0 < entries <= MAX_STATE_ENTRIES:
        return fuel, max_memory  # absent (the default fits), or invalid: the engine says why
    need = GUEST_BASE_BYTES + entries * GUEST_BYTES_PER_ENTRY
    if need > max_memory:
        mib = 1024 * 1024
        errors.append(
            ConfigError(
                KEY_MAX_STATE_ENTRIES,
                f"{entries} entries need about {-(-need // mib)} MiB of guest memory "
                f"(~{GUEST_BYTES_PER_ENTRY} bytes each), more than {KEY_MAX_MEMORY} allows "
                f"({max_memory // mib} MiB): lower {KEY_MAX_STATE_ENTRIES} or raise {KEY_MAX_MEMORY}",
            )
        )
    return fuel, max_memory


def _utf8_safe(text: str) -> str:
    """A deterministic stand-in for a str that cannot be encoded as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def describe_fault(exc: BaseException) -> str:
    """``Type: cause`` on one line; wasmtime's multi-line backtrace is reduced to its cause."""
    text = str(exc)
    if "Caused by:" in text:
        text = text.rsplit("Caused by:", 1)[1]
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def _require_str(value: Any, what: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"{MESSAGE_PREFIX}: {what} must be a str, got {type(value).__name__}")


class WasmRetryEngine:
    """A retry-engine component instance configured from a plugin config mapping.

    Args:
        config: the plugin's ``config:`` mapping.  Host-only keys: ``wasm_path`` (component
            to load instead of the bundled one), ``wasm_fuel`` (the most fuel one call
            may burn, default 10 000 000; ``configure`` gets 1 000 more per byte of config;
            ``fastcall.HeldFuel`` says how ``decide-held`` calls share refills),
            ``wasm_max_memory_bytes`` (linear-memory cap, default 64 MiB).
            Everything is passed to the engine's ``configure`` as JSON.
        max_retries_ceiling: the gateway's retry ceiling; budgets above it are clamped.
        clock: monotonic nanoseconds; replaces ``wasi:clocks/monotonic-clock`` (tests).
        seed: replaces ``wasi:random/insecure-seed`` with this fixed pair (tests).
        wall_clock: epoch seconds (default ``time.time``), used only to turn a server's
            absolute delay hint (an HTTP-date, ``X-RateLimit-Reset`` epoch seconds) into ms
            from now; the component itself imports no wall clock.

    Raises:
        ConfigurationError: (a ``ValueError``) the engine or a host key rejected the config;
            the message lists every problem as ``path: message``.
        RetryEngineLoadError: the component is missing, corrupt or not a retry engine.
    """

    #: Number of instances rebuilt after a fault since construction.
    rebuild_count: int = 0
    #: Whether the missing lean call path was logged (once per process).
    _warned_slow_path: bool = False
    # Set by `_forget_held`: whether `_held` lists every key with state, and the next handle.
    _held_complete: bool
    _next_handle: int
    # Set with the lean callers (`_lean_callers`): when `decide-held` refuels.
    _held_fuel: HeldFuel

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        max_retries_ceiling: _ceiling.Ceiling | None = None,
        clock: Clock | None = None,
        seed: Seed | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        raw: dict[str, Any] = dict(config or {})
        self._wall_clock: Callable[[], float] = wall_clock or time.time
        # Host keys are checked first; their problems are reported together with the engine's.
        self._host_errors: list[ConfigError] = []
        self._fuel, self._max_memory = _host_limits(raw, self._host_errors)
        wasm_path = raw.get(KEY_WASM_PATH)
        if wasm_path is None:
            path = bundled_wasm_path()
            if not path.is_file():
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: the bundled component {path} is missing "
                    f"(build it with `make wasm`, or set {KEY_WASM_PATH})"
                )
        elif isinstance(wasm_path, str | Path):
            path = Path(wasm_path)
        else:
            self._host_errors.append(ConfigError(KEY_WASM_PATH, f"must be a path string, got {wasm_path!r}"))
            raise ConfigurationError(tuple(self._host_errors))

        pin = raw.get(KEY_WASM_SHA256)
        if pin is not None and not (isinstance(pin, str) and _is_sha256_hex(pin)):
            self._host_errors.append(
                ConfigError(KEY_WASM_SHA256, f"must be 64 hexadecimal digits, got {pin!r}")
            )
            raise ConfigurationError(tuple(self._host_errors))
        #: The pinned sha256 of the component (``wasm_sha256``), or None.
        self.pinned_sha256: str | None = pin.lower() if pin is not None else None

        self._lock = threading.Lock()
        self._clock = clock
        self._seed = seed
        self._path = path
        self._loaded: LoadedComponent = load_component(path, self.pinned_sha256)
        self._linker = self._make_linker(self._loaded)
        self._store: Store | None = None
        self._funcs: dict[str, Func] = {}
        #: The lean callers of ``decide`` and ``decide-held`` (``fastcall``), or None.
        self._lean: tuple[LeanDecide, LeanDecideHeld] | None = None
        #: The engine's last word that it is idle (see ``decide``); False whenever unsure.
        self._idle = False
        #: Keys whose last decision was a retry, each with the handle the engine knows it by
        #: (0: none; WIT ``decide-held``): a superset of the keys holding state in the engine
        #: (the engine may drop more on its own: TTL, capacity).  Valid for the success
        #: shortcut only while ``_text_free`` (the engine's word) and not overflowed.
        self._held: dict[tuple[str, str], int] = {}
        #: Handles free for reuse (and ``_next_handle``, the next never used); a handle
        #: belongs to one key of ``_held`` at a time, or to the one call in flight.
        self._free_handles: list[int] = []
        #: Counts ``_forget_held`` calls: a handle taken before one is not free to give back.
        self._handles_epoch = 0
        self._forget_held()  # sets _held_complete and _next_handle
        self._text_free = False
        self._broken = False
        #: Number of faults (traps, failed rebuilds) since construction.
        self.fault_count = 0
        #: Number of successful ``reload`` calls since construction.
        self.reload_count = 0

        if max_retries_ceiling is not None:
            raw = _ceiling.clamp_explicit(raw, max_retries_ceiling)
        self._config_json = self._to_json(raw)
        with self._lock:
            self._instantiate()
            try:
                self._configure_initial(raw, max_retries_ceiling)
            except (ConfigurationError, RetryEngineLoadError):
                raise
            except Exception as exc:
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: configuring {self._path} failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _configure_initial(self, raw: dict[str, Any], max_retries_ceiling: _ceiling.Ceiling | None) -> None:
        """Check the contract, configure, clamp to the ceiling, cache the global policy (lock held)."""
        self.contract_version: str = self._check_contract()
        #: ``prometheus_metrics``: the plugin exports its metrics (``metrics.py``).
        self.prometheus_metrics = read_metrics_setting(raw, self._host_errors)
        errors = self._configure_locked(self._config_json)
        if errors or self._host_errors:
            raise ConfigurationError((*self._host_errors, *errors))
        if max_retries_ceiling is not None:
            overrides = raw.get("tool_overrides")
            effective = {
                tool: self._tool_policy_locked(tool).max_retries
                for tool in (overrides if isinstance(overrides, dict) else {})
                if isinstance(tool, str)
            }
            global_max = self._global_policy_locked().max_retries
            if _ceiling.clamp_effective(raw, max_retries_ceiling, global_max, effective):
                self._config_json = self._to_json(raw)
                errors = self._configure_locked(self._config_json)
                if errors:  # pragma: no cover - lowering a valid budget cannot invalidate it
                    raise ConfigurationError(errors)
        self._global_policy = self._global_policy_locked()
        # Reading the safe-classification and delay-hint facts costs ~2 us per failure: only
        # when some effective policy (the engine's word) reads them.
        overrides = raw.get("tool_overrides")
        tools = [t for t in overrides if isinstance(t, str)] if isinstance(overrides, dict) else []
        policies = [self._global_policy, *(self._tool_policy_locked(t) for t in tools)]
        self._read_hints = any(p.safe_classification or p.honor_retry_after for p in policies)
        # The engine validated it as a boolean (global key); the host only presents it.
        self._metrics_reason = raw.get("metrics_reason") is True
        # Validated by the engine: "request" (default), "tenant" or "user".
        scope = raw.get("key_scope", "request")
        self._key_scope: str = scope if isinstance(scope, str) else "request"

    def _check_contract(self) -> str:
        """The instance's ``contract-version``, if this host speaks it (lock held)."""
        self._store_fuel()
        version = self._funcs["contract-version"](self._live_store())
        if not isinstance(version, str) or version.split(".")[:2] != CONTRACT_VERSION.split(".")[:2]:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {self._path} implements contract {version!r}, "
                f"this host needs {CONTRACT_VERSION.rsplit('.', 1)[0]}.x"
            )
        return version

    # ------------------------------------------------------------------ hot reload
    def reload(self, wasm_path: str | os.PathLike[str] | None = None, wasm_sha256: str | None = None) -> int:
        """Swap in another build of the component without losing live retry state.

        Loads ``wasm_path`` (default: the path in use, e.g. after replacing the file),
        instantiates it, checks its contract, configures it with the current config, and
        moves every live retry-state entry across (``export-state`` -> ``import-state``)
        while holding the instance lock, so no decision falls between the two instances.
        Returns the number of entries carried over.  With ``wasm_sha256`` pinned (in the
        config, or given here for the new build) the file must match it; a pin given here
        replaces the configured one once the reload succeeds.

        Raises:
            RetryEngineLoadError: the new build is missing, corrupt, for another contract,
                rejects the config or the state.  The previous instance keeps serving.
        """
        path = Path(wasm_path) if wasm_path is not None else self._path
        if wasm_sha256 is not None and not _is_sha256_hex(wasm_sha256):
            raise ConfigurationError(
                (ConfigError(KEY_WASM_SHA256, f"must be 64 hexadecimal digits, got {wasm_sha256!r}"),)
            )
        pin = wasm_sha256.lower() if wasm_sha256 is not None else self.pinned_sha256
        loaded = load_component(path, pin)
        linker = self._make_linker(loaded)
        with self._lock:
            previous = self._instance_parts()
            was_broken = self._broken
            state = ""
            if not was_broken and self._store is not None:
                self._store_fuel()
                state = self._funcs["export-state"](self._store)
            try:
                self._path, self._loaded, self._linker = path, loaded, linker
                self._instantiate()
                version = self._check_contract()
                errors = self._configure_locked(self._config_json)
                if errors:
                    raise ConfigurationError(errors)
                moved = 0
                if state:
                    self._store_fuel()
                    imported = self._funcs["import-state"](self._live_store(), state)
                    if not isinstance(imported, int):
                        raise RetryEngineLoadError(f"it cannot take the live state: {imported}")
                    moved = imported
                global_policy = self._global_policy_locked()
            except Exception as exc:
                self._restore_instance_parts(previous)
                self._broken = was_broken
                self._idle = False
                self._text_free = False
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: reloading {path} refused ({describe_fault(exc)}); "
                    f"the previous instance ({previous[0]}) keeps serving"
                ) from exc
            self.contract_version = version
            self._global_policy = global_policy
            self.reload_count += 1
            self.pinned_sha256 = pin
        log.warning(
            "%s: reloaded %s (contract %s); %d retry-state entries carried over",
            MESSAGE_PREFIX,
            path,
            version,
            moved,
        )
        return moved

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _to_json(config: Mapping[str, Any]) -> str:
        try:
            text = json.dumps(config, default=str, allow_nan=False, ensure_ascii=False)
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ConfigurationError(
                (ConfigError("", f"contains a string that is not valid Unicode (lone surrogate): {exc}"),)
            ) from exc
        except (TypeError, ValueError) as exc:
            raise ConfigurationError((ConfigError("", f"not representable as JSON: {exc}"),)) from exc
        return text

    def _make_linker(self, loaded: LoadedComponent) -> Linker:
        clock, seed = self._clock, self._seed
        if clock is None and seed is None:
            return production_linker()
        imports = loaded.imports
        linker = Linker(get_engine())
        linker.allow_shadowing = True
        linker.add_wasip2()
        with linker.root() as root:
            for name, funcs in imports.items():
                if clock is not None and name.startswith(CLOCK_INTERFACE_PREFIX):
                    with root.add_instance(name) as iface:
                        self._define_clock(iface, funcs, clock)
                elif seed is not None and name.startswith(SEED_INTERFACE_PREFIX):
                    with root.add_instance(name) as iface:
                        self._define_seed(iface, funcs, seed)
        return linker

    @staticmethod
    def _define_clock(iface: Any, funcs: frozenset[str], clock: Clock) -> None:
        unsupported = funcs - {"now", "resolution"}
        if unsupported:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot substitute the clock: the component also imports "
                f"{', '.join(sorted(unsupported))}"
            )
        iface.add_func("now", lambda _store: clock())
        iface.add_func("resolution", lambda _store: 1)

    @staticmethod
    def _define_seed(iface: Any, funcs: frozenset[str], seed: Seed) -> None:
        unsupported = funcs - {"insecure-seed"}
        if unsupported:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot substitute the seed: the component also imports "
                f"{', '.join(sorted(unsupported))}"
            )
        pair = (int(seed[0]), int(seed[1]))
        iface.add_func("insecure-seed", lambda _store: pair)

    def _instantiate(self) -> None:
        """A fresh Store + instance (lock held).  Raises RetryEngineLoadError."""
        store = Store(get_engine())
        store.set_wasi(WasiConfig())
        store.set_limits(memory_size=self._max_memory)
        store.set_fuel(self._fuel)
        try:
            instance = self._linker.instantiate(store, self._loaded.component)
            funcs: dict[str, Func] = {}
            for name, index in self._loaded.func_indices.items():
                func = instance.get_func(store, index)
                if func is None:  # pragma: no cover - checked when the component was loaded
                    raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: export {name!r} is not a function")
                funcs[name] = func
            # Inside the try: a `decide` of another signature is a load error naming the path.
            lean = self._lean_callers(funcs, store, self._fuel)
        except RetryEngineLoadError:
            raise
        except Exception as exc:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot instantiate {self._path}: {type(exc).__name__}: {exc}"
            ) from exc
        self._store = store
        self._funcs = funcs
        if lean is None and not WasmRetryEngine._warned_slow_path:
            WasmRetryEngine._warned_slow_path = True
            log.warning(
                "%s: the lean decide call is unavailable (%s); using wasmtime-py's generic call, "
                "several times slower",
                MESSAGE_PREFIX,
                fastcall.UNAVAILABLE,
            )
        self._lean = lean
        self._idle = False
        self._text_free = False
        self._broken = False

    #: What a reload replaces, to be put back if the new instance is refused.
    _INSTANCE_PARTS: Final = ("_path", "_loaded", "_linker", "_store", "_funcs", "_lean", "_held_fuel")

    def _instance_parts(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._INSTANCE_PARTS)

    def _restore_instance_parts(self, parts: tuple[Any, ...]) -> None:
        for name, value in zip(self._INSTANCE_PARTS, parts, strict=True):
            setattr(self, name, value)

    def _lean_callers(
        self, funcs: dict[str, Func], store: Store, fuel: int
    ) -> tuple[LeanDecide, LeanDecideHeld] | None:
        self._held_fuel = held_fuel = HeldFuel(fuel)
        decide = lean_decide(funcs["decide"], store, fuel, held_fuel)
        held = lean_decide_held(funcs["decide-held"], store, fuel, held_fuel)
        return None if decide is None or held is None else (decide, held)

    def _set_fuel(self, store: Store, fuel: int) -> None:
        """Set the fuel of the next call into ``store`` (lock held); every call other than a
        lean one sets it through here, so that ``decide-held`` refuels after it."""
        store.set_fuel(fuel)
        self._held_fuel.invalidate()

    def _configure_locked(self, config_json: str) -> tuple[ConfigError, ...]:
        self._idle = False
        self._text_free = False
        store = self._live_store()
        self._set_fuel(
            store, self._fuel + CONFIGURE_FUEL_PER_BYTE * len(config_json.encode("utf-8", "replace"))
        )
        errors = self._funcs["configure"](store, config_json)
        if errors is None:
            return ()
        return tuple(ConfigError.from_record(e) for e in errors)

    def _global_policy_locked(self) -> Policy:
        self._store_fuel()
        return Policy.from_record(self._funcs["global-policy"](self._live_store()))

    def _tool_policy_locked(self, tool: str) -> Policy:
        self._store_fuel()
        return Policy.from_record(self._funcs["tool-policy"](self._live_store(), _utf8_safe(tool)))

    def _live_store(self) -> Store:
        store = self._store
        if store is None:  # pragma: no cover - callers rebuild first
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
        return store

    def _store_fuel(self) -> None:
        self._set_fuel(self._live_store(), self._fuel * COLD_FUEL_FACTOR)

    # ------------------------------------------------------------------ faults
    def _fault(self, what: str, exc: BaseException) -> None:
        """Log the fault once and rebuild the instance (lock held)."""
        self.fault_count += 1
        log.error(
            "%s: %s failed (%s); answering no-retry and rebuilding the instance "
            "(in-flight retry state is lost)",
            MESSAGE_PREFIX,
            what,
            describe_fault(exc),
        )
        log.debug("%s: %s fault detail: %s", MESSAGE_PREFIX, what, exc)
        self._store = None
        self._funcs = {}
        self._lean = None
        self._broken = True
        self._rebuild()

    def _rebuild(self) -> bool:
        """Instantiate and configure again (lock held); False if that failed too."""
        # The new instance starts empty: no key holds state any more.
        self._forget_held()
        try:
            self._instantiate()
            errors = self._configure_locked(self._config_json)
            if errors:  # pragma: no cover - the same config was accepted before
                raise ConfigurationError(errors)
        except Exception as exc:
            self.fault_count += 1
            self._store = None
            self._funcs = {}
            self._lean = None
            self._broken = True
            log.error("%s: rebuilding the instance failed (%s)", MESSAGE_PREFIX, describe_fault(exc))
            return False
        self.rebuild_count += 1
        return True

    # ------------------------------------------------------------------ hot path
    def decide(self, tool: str, request_id: str, result: Any) -> int:  # noqa: PLR0915 - see below
        """One decision for ``result`` of ``tool`` within ``request_id``: the packed u64.

        Reads the result (``signals.read_signals``), calls ``decide`` once and, only when the
        engine asks for it (need-text), collects the text items and calls ``decide-text``.
        Returns 0 ("no retry") when the instance faulted.
        """
        if type(tool) is not str:
            tool = _require_str(tool, "payload.name")
        if type(request_id) is not str:
            request_id = _require_str(request_id, "global_context.request_id")
        signals = read_signals(result)
        # A result with no failure signal, and the engine said no policy checks text, is a
        # success; for a key that holds no retry state it would change nothing (WIT `idle` and
        # `text-free` bits), so it is answered here.  ``_held`` is a superset of the keys with
        # state.  The idle test comes first: it needs no key.
        if signals:
            if self._read_hints:
                # Facts for safe classification and delay hints; only a result with a failure
                # signal can need them.
                signals |= read_hints(result, self._wall_clock)
            key = (tool, request_id)
        elif self._idle:
            return 0
        else:
            key = (tool, request_id)
            if self._text_free and self._held_complete and key not in self._held:
                return 0
        # Hot path: one lean call (fastcall) under the store's lock.  Written out in one
        # function, bookkeeping included: every call and tuple here costs on each tool result.
        with self._lock:
            lean = self._lean
            if lean is not None:
                held = self._held
                old = held.get(key)
                if old:
                    # The engine knows the key by its handle: decide-held, no key crosses.
                    try:
                        decision: int = lean[1](old, signals)
                    except Exception as exc:
                        self._idle = False
                        self._fault("decide-held", exc)
                        return 0
                    if not decision & (UNKNOWN_HANDLE | NEED_TEXT):
                        self._text_free = (decision & TEXT_FREE) != 0
                        if (decision >> REASON_SHIFT) & 0xFF == _REASON_RETRY:
                            self._idle = False  # still held, under the same handle
                            return decision
                        # The decision cleared the key: its handle is free again.
                        del held[key]
                        self._free_handles.append(old)
                        idle = self._idle = (decision & IDLE) != 0
                        if idle and (held or not self._held_complete):
                            self._forget_held()  # see `_note`
                        return decision
                    if decision & NEED_TEXT:
                        fresh = None  # decided below with the text, under the key's handle
                if not old or decision & UNKNOWN_HANDLE:
                    # No handle, or its key's state went (TTL, capacity): send the key, and
                    # name it by a handle from now on.
                    try:
                        encoded = (tool + request_id).encode()
                        tool_len = len(tool)
                    except UnicodeEncodeError:
                        # Lone surrogates cannot cross as UTF-8: a deterministic stand-in for
                        # the engine.  The host's own bookkeeping keeps the original key, which
                        # is what the success shortcut looks up.
                        safe_tool = _utf8_safe(tool)
                        tool_len = len(safe_tool)
                        encoded = (safe_tool + _utf8_safe(request_id)).encode()
                    handle = old or 0
                    if not handle and self._held_complete and len(encoded) <= HANDLE_KEY_MAX_BYTES:
                        free = self._free_handles
                        if free:
                            handle = free.pop()
                        elif self._next_handle <= HANDLE_MAX:
                            handle = self._next_handle
                            self._next_handle = handle + 1
                    try:
                        decision = lean[0](encoded, tool_len, signals, handle)
                    except Exception as exc:
                        self._idle = False
                        self._fault("decide", exc)
                        return 0
                    if not decision & NEED_TEXT:
                        self._note(key, old, handle, decision)
                        return decision
                    # Nothing changed; a handle taken for this call goes back with the text call.
                    fresh = (handle, self._handles_epoch) if handle != old else None
        if lean is None:  # no lean path (other wasmtime-py) or the instance needs a rebuild
            decision = self._call_decide(tool, request_id, signals, None)
            fresh = None
        if decision & NEED_TEXT:
            # Text content may make it a failure: the hints can matter now.
            if self._read_hints:
                signals |= read_hints(result, self._wall_clock)
            decision = self._call_decide(tool, request_id, signals, collect_texts(result), fresh)
        return decision

    def _call_fuel(self, tool: str, request_id: str, texts: list[str] | None) -> int:
        """Fuel for one generic call: the base budget plus a bound on the work its input can
        legitimately need (hashing the key, parsing each text as JSON).  Characters count as
        their worst-case four UTF-8 bytes, so nothing is encoded just to size the budget."""
        fuel = self._fuel + KEY_FUEL_PER_BYTE * 4 * (len(tool) + len(request_id))
        if texts:
            fuel += TEXT_FUEL_PER_BYTE * 4 * sum(len(t) for t in texts)
        return fuel

    def _call_decide(
        self,
        tool: str,
        request_id: str,
        signals: int,
        texts: list[str] | None,
        fresh: tuple[int, int] | None = None,
    ) -> int:
        """The generic call path: ``decide-text``, and ``decide`` without a lean caller.

        ``fresh``: a handle the lean path took for this key and did not use, with the
        ``_handles_epoch`` it was taken in; it goes back to the free list unless every handle
        was freed since.  The call names the key by the handle it already has, if any.
        """
        key = (tool, request_id)
        with self._lock:
            if fresh is not None and fresh[1] == self._handles_epoch:
                self._free_handles.append(fresh[0])
            if self._broken and not self._rebuild():
                return 0
            old = self._held.get(key)
            handle = old or 0
            store = self._store
            assert store is not None
            self._set_fuel(store, self._call_fuel(tool, request_id, texts))
            try:
                try:
                    if texts is None:
                        decision: int = self._funcs["decide"](
                            store, tool + request_id, len(tool), signals, handle
                        )
                    else:
                        decision = self._funcs["decide-text"](
                            store, tool + request_id, len(tool), signals, texts, handle
                        )
                except UnicodeEncodeError:
                    # Lone surrogates cannot cross as UTF-8 (raised while lowering, before the
                    # guest runs).  The key parts get a deterministic stand-in; texts that
                    # cannot be encoded are skipped, as the native plugin skips them.
                    safe_tool, safe_request_id = _utf8_safe(tool), _utf8_safe(request_id)
                    self._set_fuel(store, self._call_fuel(safe_tool, safe_request_id, texts))
                    if texts is None:
                        decision = self._funcs["decide"](
                            store, safe_tool + safe_request_id, len(safe_tool), signals, handle
                        )
                    else:
                        texts = [t for t in texts if _utf8_encodable(t)]
                        decision = self._funcs["decide-text"](
                            store, safe_tool + safe_request_id, len(safe_tool), signals, texts, handle
                        )
            except Exception as exc:
                self._idle = False
                self._fault("decide" if texts is None else "decide-text", exc)
                return 0
            self._note(key, old, handle, decision)
            return decision

    def _note(self, key: tuple[str, str], old: int | None, handle: int, decision: int) -> None:
        """Remember what a decision for ``key`` says about the engine's state (lock held).

        ``old`` is the key's entry in ``_held`` before the call (None: not held), ``handle``
        the handle the call named it by (0: none).  A handle not kept for the key is freed.
        """
        idle = (decision & IDLE) != 0
        self._idle = idle
        self._text_free = (decision & TEXT_FREE) != 0
        held = self._held
        if (decision >> REASON_SHIFT) & 0xFF == _REASON_RETRY:
            if old is None:
                if not self._held_complete:
                    return
                if len(held) < HELD_KEYS_CAP:
                    held[key] = handle
                else:
                    # Too many to track: no shortcut for unknown keys until the engine is idle.
                    self._forget_held()
                    self._held_complete = False
            elif old != handle:
                held[key] = handle
                if old:
                    self._free_handles.append(old)
        else:
            # The decision cleared the key's state: its handle, and one taken for this call,
            # are free again.
            if old is not None:
                del held[key]
                if old:
                    self._free_handles.append(old)
            if handle and handle != old:
                self._free_handles.append(handle)
            if idle and (held or not self._held_complete):
                # The engine holds nothing, yet keys are listed (it dropped them on its own: TTL,
                # capacity) or the list overflowed: start over, every handle free.
                self._forget_held()

    def _forget_held(self) -> None:
        """No key is known to hold state: every handle is free (lock held)."""
        self._held.clear()
        self._held_complete = True
        self._free_handles.clear()
        self._next_handle = 1
        self._handles_epoch += 1

    # ------------------------------------------------------------------ cold paths
    @property
    def global_policy(self) -> Policy:
        """The global policy (as configured; what ``resource_post_fetch`` reports)."""
        return self._global_policy

    def _cold_call(self, what: str, call: Callable[[], Any]) -> Any:
        with self._lock:
            if self._broken and not self._rebuild():
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
            try:
                self._store_fuel()
                return call()
            except Exception as exc:
                self._fault(what, exc)
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: {what} failed: {exc}") from exc

    def tool_policy(self, tool: str) -> Policy:
        """The effective policy of ``tool`` (its override merged over the global config)."""
        policy: Policy = self._cold_call("tool-policy", lambda: self._tool_policy_locked(tool))
        return policy

    def state_count(self) -> int:
        """Live retry-state entries (expired ones not yet swept may be counted)."""
        return int(self._cold_call("state-count", lambda: self._funcs["state-count"](self._live_store())))

    def evict_expired(self) -> int:
        """Sweep entries older than ``state_ttl_ms``; how many were removed."""
        return int(self._cold_call("evict-expired", lambda: self._funcs["evict-expired"](self._live_store())))

    @property
    def key_scope(self) -> str:
        """``key_scope``: ``request`` (native key), ``tenant`` or ``user``."""
        return self._key_scope

    @property
    def metrics_reason(self) -> bool:
        """``metrics_reason``: the trace metrics carry the decision reason (off: native parity)."""
        return self._metrics_reason

    @property
    def fuel_per_call(self) -> int:
        """The most fuel one call into the instance may burn (``wasm_fuel``)."""
        return self._fuel

    @fuel_per_call.setter
    def fuel_per_call(self, fuel: int) -> None:
        if not isinstance(fuel, int) or isinstance(fuel, bool) or fuel <= 0:
            raise ValueError(f"fuel must be a positive integer, got {fuel!r}")
        with self._lock:
            self._fuel = fuel
            if self._store is not None and self._lean is not None:
                self._lean = self._lean_callers(self._funcs, self._store, fuel)

    @property
    def wasm_path(self) -> Path:
        """The component file this engine was loaded from."""
        return self._path

    @property
    def imports(self) -> dict[str, frozenset[str]]:
        """The component's imports: interface name -> imported function names."""
        return dict(self._loaded.imports)
