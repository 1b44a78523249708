"""``RetryEngine``: the adapter the plugin calls, between a tool result and the component.

Three things here could be called "engine"; they have distinct names:

* the **component** (``retry-engine``, the ``.wasm``): the policy, run in a ``Sandbox``;
* the **wasmtime engine** (``loader.get_engine``): compiles components, one per process;
* the **adapter** (``RetryEngine``, this module): one per configuration in a process, shared
  by the plugin objects built from it (``shared``).

The adapter owns a lock (a Store is not thread-safe and the gateway may call hooks from
several threads), the ``Sandbox`` and the ``HeldKeys``.  ``decide`` is the hot path, written
out; everything else is a cold call.

A fault inside the sandbox (trap, fuel or memory exhausted) never reaches the tool call: the
call is answered "no retry", the instance is rebuilt and given back the live retry state the
adapter mirrors (``handles``), so other keys keep their counts and delays.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import ceiling as _ceiling
from .handles import AT_NS, DECISION, HANDLE, TOTAL_MS, Held, HeldKeys, Key
from .keys import KEY_PART_MAX_CHARS, engine_key, key_part
from .model import MESSAGE_PREFIX, ConfigError, ConfigurationError, Policy, RetryEngineLoadError
from .sandbox import Clock, Sandbox, Seed, describe_fault
from .settings import HostSettings, check_sha256
from .signals import REASON_RETRY, collect_texts, read_call_facts, read_hints, read_signals
from .wire import DELAY_MASK, IDLE, NEED_TEXT, REASON_SHIFT, TEXT_FREE, UNKNOWN_HANDLE

log = logging.getLogger(__name__)


def wire_key(tool: str, request_id: str) -> tuple[bytes, int]:
    """The key as it crosses into the component: the UTF-8 bytes of the tool part + the
    request part, and the tool part's length in characters (WIT ``decide``'s ``key`` and
    ``tool-len``).  Each part crosses as itself or as its digest (``keys``); the host's own
    bookkeeping keeps the original key, which is what the success shortcut looks up.
    """
    joined = tool + request_id
    # Inline, the common case: short, ASCII, no "#": both parts cross as themselves.
    if len(joined) <= KEY_PART_MAX_CHARS and joined.isascii() and "#" not in joined:
        return joined.encode(), len(tool)
    return engine_key(tool, request_id)


def _never_raising(clock: Clock) -> Clock:
    """A substitute clock for the mirror: one that fails reads as time 0 (its entries then
    look expired), so a broken clock costs retry state, never a tool call."""

    def now_ns() -> int:
        try:
            return int(clock())
        except Exception:
            return 0

    return now_ns


def _require_str(value: Any, what: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"{MESSAGE_PREFIX}: {what} must be a str, got {type(value).__name__}")


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


class RetryEngine:
    """The retry-engine component configured from a plugin config mapping, for the plugin.

    Args:
        config: the plugin's ``config:`` mapping.  Host-only keys (``settings``):
            ``wasm_path`` (component to load instead of the bundled one), ``wasm_sha256``
            (pin it), ``wasm_fuel`` (the most fuel one call may burn, default 10 000 000;
            ``configure`` gets 1 000 more per byte of config; ``fastcall.HeldFuel`` says how
            ``decide-held`` calls share refills), ``wasm_max_memory_bytes`` (linear-memory
            cap, default 64 MiB).  Everything is passed to the component's ``configure`` as JSON.
        max_retries_ceiling: the gateway's retry ceiling; budgets above it are clamped.
        clock: monotonic nanoseconds; replaces ``wasi:clocks/monotonic-clock`` (tests).
        seed: replaces ``wasi:random/insecure-seed`` with this fixed pair (tests).
        wall_clock: epoch seconds (default ``time.time``), used only to turn a server's
            absolute delay hint (an HTTP-date, ``X-RateLimit-Reset`` epoch seconds) into ms
            from now; the component itself imports no wall clock.

    Raises:
        ConfigurationError: (a ``ValueError``) the component or a host key rejected the
            config; the message lists every problem as ``path: message``.
        RetryEngineLoadError: the component is missing, corrupt or not a retry engine.
    """

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
        settings = HostSettings.read(raw)
        self._settings = settings
        self._lock = threading.Lock()
        self._sandbox = Sandbox(
            settings.wasm_path,
            settings.wasm_sha256,
            fuel=settings.fuel,
            max_memory=settings.max_memory_bytes,
            compile_cache=settings.compile_cache,
            clock=clock,
            seed=seed,
        )
        # The mirror's times are on the clock the component reads: the substitute, else the
        # host's monotonic clock (which wasmtime's WASI clock also reads).
        now_ns = time.monotonic_ns if clock is None else _never_raising(clock)
        self._held = HeldKeys(settings.max_state_entries, settings.state_ttl_ms, now_ns)
        #: The component's last word that it is idle (see ``decide``); False whenever unsure.
        self._idle = False
        if max_retries_ceiling is not None:
            raw = _ceiling.clamp_explicit(raw, max_retries_ceiling)
        with self._lock:
            try:
                self._configure_initial(raw, settings.errors, max_retries_ceiling)
            except (ConfigurationError, RetryEngineLoadError):
                raise
            except Exception as exc:
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: configuring {settings.wasm_path} failed: {type(exc).__name__}: {exc}"
                ) from exc

    def _configure_initial(
        self,
        raw: dict[str, Any],
        host_errors: tuple[ConfigError, ...],
        max_retries_ceiling: _ceiling.Ceiling | None,
    ) -> None:
        """Check the contract, configure, clamp to the ceiling, cache the global policy (lock held)."""
        sandbox = self._sandbox
        sandbox.check_contract()
        errors = sandbox.configure(_to_json(raw))
        if errors or host_errors:
            raise ConfigurationError((*host_errors, *errors))
        overrides = raw.get("tool_overrides")
        tools = [t for t in overrides if isinstance(t, str)] if isinstance(overrides, dict) else []
        if max_retries_ceiling is not None:
            effective = {tool: sandbox.tool_policy(key_part(tool)).max_retries for tool in tools}
            global_max = sandbox.global_policy().max_retries
            if _ceiling.clamp_effective(raw, max_retries_ceiling, global_max, effective):
                errors = sandbox.configure(_to_json(raw))
                if errors:  # pragma: no cover - lowering a valid budget cannot invalidate it
                    raise ConfigurationError(errors)
        self._global_policy = sandbox.global_policy()
        # Reading the safe-classification and delay-hint facts costs on every failure: only
        # when some effective policy (the component's word) reads them. A delay hint also makes
        # a failure throttled, which matters where the throttle class has bounds of its own.
        policies = [self._global_policy, *(sandbox.tool_policy(key_part(t)) for t in tools)]
        # The call's timeout mark and the tool's annotations, likewise, only where some policy
        # retries non-idempotent tools selectively; its `throttled` reads delay hints (a 503
        # with one is a refusal).
        self._read_facts = any(p.reads_call_facts for p in policies)
        self._read_hints = self._read_facts or any(
            p.safe_classification or p.honor_retry_after or p.throttle_differs for p in policies
        )
        # The component validated it as a boolean (global key); the host only presents it.
        self._metrics_reason = raw.get("metrics_reason") is True
        # Validated by the component: "request" (default), "tenant" or "user".
        scope = raw.get("key_scope", "request")
        self._key_scope: str = scope if isinstance(scope, str) else "request"

    # ------------------------------------------------------------------ hot path
    def decide(self, tool: str, request_id: str, result: Any, context: Any = None) -> int:
        """One decision for ``result`` of ``tool`` within ``request_id``: the packed u64.

        Reads the result (``signals.read_signals``), calls ``decide`` or ``decide-held`` once
        and, only when the component asks for it (need-text), collects the text items and calls
        ``decide-text``.  ``context`` is the hook's plugin context, read for the call's facts
        (``signals.read_call_facts``) where a policy needs them.  Returns 0 ("no retry") when
        the instance faulted.
        """
        if type(tool) is not str:
            tool = _require_str(tool, "payload.name")
        if type(request_id) is not str:
            request_id = _require_str(request_id, "global_context.request_id")
        signals = read_signals(result)
        # A result with no failure signal, where the component said no policy checks text, is a
        # success; for a key that holds no retry state it would change nothing (WIT `idle` and
        # `text-free` bits), so it is answered here.  The idle test comes first: it needs no key.
        if signals:
            if self._read_hints:
                # Facts for safe classification, delay hints and idempotency; only a result
                # with a failure signal can need them.
                signals |= self._read_extras(result, context, tool)
            key = (tool, request_id)
        elif self._idle:
            return 0
        else:
            key = (tool, request_id)
            # One read of one attribute: the listed keys, or None (see `handles`).
            listed = self._held.shortcut
            if listed is not None and key not in listed:
                return 0
        # Hot path: one lean call (fastcall) under the lock.  A key the component knows by its
        # handle crosses as `decide-held`, no key bytes copied; its bookkeeping is written out
        # here, as every call costs on each tool result.
        with self._lock:
            lean = self._sandbox.lean
            if lean is not None:
                held = self._held
                entry = held.entries.get(key)
                if entry is None or not entry[HANDLE]:
                    decision = self._decide_by_key(lean[0], key, entry, signals)
                else:
                    handle = entry[HANDLE]
                    try:
                        decision = lean[1](handle, signals)
                    except Exception as exc:
                        return self._fault("decide-held", exc, key)
                    if not decision & (UNKNOWN_HANDLE | NEED_TEXT):
                        if (decision >> REASON_SHIFT) & 0xFF == REASON_RETRY:
                            self._idle = False  # still held, under the same handle
                            # `HeldKeys.retried`, written out (the most frequent update).
                            entry[DECISION] = decision
                            entry[TOTAL_MS] += decision & DELAY_MASK
                            entry[AT_NS] = held.now_ns()
                            held.entries.move_to_end(key)
                            return decision
                        # The decision cleared the key: its handle is free again.
                        del held.entries[key]
                        held.free.append(handle)
                        idle = self._idle = (decision & IDLE) != 0
                        if idle and held.entries:
                            held.forget()  # it dropped keys on its own (TTL, capacity)
                        return decision
                    if decision & UNKNOWN_HANDLE:
                        # Its key's state went (TTL, capacity): send the key, under this handle.
                        decision = self._decide_by_key(lean[0], key, entry, signals)
                if not decision & NEED_TEXT:
                    return decision
        if lean is None:  # no lean path (other wasmtime-py) or the instance needs a rebuild
            decision = self._decide_generic(key, signals, None)
        if decision & NEED_TEXT:
            # Text content may make it a failure: the hints can matter now.
            if self._read_hints:
                signals |= self._read_extras(result, context, tool)
            decision = self._decide_generic(key, signals, collect_texts(result))
        return decision

    def _read_extras(self, result: Any, context: Any, tool: str) -> int:
        """Signal bits 4..31: the result's hints, and the call's facts where a policy reads them."""
        bits = read_hints(result, self._wall_clock)
        if self._read_facts:
            bits |= read_call_facts(context, tool)
        return bits

    def _decide_by_key(
        self, decide: Callable[[bytes, int, int, int], int], key: Key, entry: Held | None, signals: int
    ) -> int:
        """``decide`` with the key's bytes, naming it by a handle from now on (lock held)."""
        held = self._held
        encoded, tool_len = wire_key(key[0], key[1])
        handle = entry[HANDLE] if entry is not None and entry[HANDLE] else held.take_handle(len(encoded))
        try:
            decision = decide(encoded, tool_len, signals, handle)
        except Exception as exc:
            return self._fault("decide", exc, key)  # every handle is unbound there
        if decision & NEED_TEXT:
            # Nothing changed: a handle taken for this call goes back (the text call names the
            # key by the handle it already has, if any).
            if entry is None or handle != entry[HANDLE]:
                held.give_back(handle)
            return decision
        self._idle = (decision & IDLE) != 0
        if entry is None and (decision >> REASON_SHIFT) & 0xFF == REASON_RETRY:
            # A key's first failure (the most frequent decision here): `HeldKeys.note`,
            # written out.
            entries = held.entries
            held.shortcut = entries if decision & TEXT_FREE else None
            at_ns = held.now_ns()
            if at_ns > held.sweep_ns or len(entries) >= held.max_entries:
                held.make_room(at_ns)
            entries[key] = [handle, decision, decision & DELAY_MASK, at_ns]
            return decision
        held.note(key, entry, handle, decision)
        return decision

    def _decide_generic(self, key: Key, signals: int, texts: list[str] | None) -> int:
        """The generic call path: ``decide-text``, and ``decide`` without a lean caller."""
        with self._lock:
            sandbox = self._sandbox
            if sandbox.broken and not self._rebuild():
                return 0
            entry = self._held.entries.get(key)
            handle = entry[HANDLE] if entry is not None else 0
            encoded, tool_len = wire_key(*key)
            wire = encoded.decode()
            # Every key part and text is valid Unicode (``keys``, ``collect_texts``): all cross.
            try:
                decision = sandbox.decide(wire, tool_len, signals, handle, texts)
            except Exception as exc:
                return self._fault("decide" if texts is None else "decide-text", exc, key)
            self._idle = (decision & IDLE) != 0
            self._held.note(key, entry, handle, decision)
            return decision

    # ------------------------------------------------------------------ faults
    def _fault(self, what: str, exc: BaseException, key: Key | None) -> int:
        """A call into the sandbox faulted (lock held): log it, rebuild the instance with the
        live retry state (``key``'s own is not carried over: its call is answered "no retry"),
        and answer 0."""
        self._sandbox.fault(what, exc)
        self._held.after_fault(key)
        self._rebuild()
        return 0

    def _rebuild(self) -> bool:
        """A new instance with the mirrored retry state (lock held); False if that failed."""
        self._idle = False
        held = self._held
        held.enable_shortcut(False)  # until the new instance says otherwise
        return self._sandbox.rebuild(held.export_state(wire_key))

    # ------------------------------------------------------------------ cold paths
    def reload(self, wasm_path: str | os.PathLike[str] | None = None, wasm_sha256: str | None = None) -> int:
        """Swap in another build of the component without losing live retry state.

        Loads ``wasm_path`` (default: the path in use, e.g. after replacing the file),
        instantiates it, checks its contract, configures it with the current config, and
        moves every live retry-state entry across (``export-state`` -> ``import-state``)
        while holding the lock, so no decision falls between the two instances.
        Returns the number of entries carried over.  With ``wasm_sha256`` pinned (in the
        config, or given here for the new build) the file must match it; a pin given here
        replaces the configured one once the reload succeeds.

        Raises:
            RetryEngineLoadError: the new build is missing, corrupt, for another contract,
                rejects the config or the state.  The previous instance keeps serving.
        """
        sandbox = self._sandbox
        path = Path(wasm_path) if wasm_path is not None else sandbox.path
        pin = check_sha256(wasm_sha256) if wasm_sha256 is not None else sandbox.pinned_sha256
        build = sandbox.load(path, pin)
        with self._lock:
            self._idle = False
            self._held.enable_shortcut(False)  # until the new instance says otherwise
            moved = sandbox.reload(build, pin)
            self._global_policy = sandbox.global_policy()
        return moved

    @property
    def global_policy(self) -> Policy:
        """The global policy (as configured; what ``resource_post_fetch`` reports)."""
        return self._global_policy

    def _cold_call(self, what: str, call: Callable[[Sandbox], Any]) -> Any:
        with self._lock:
            if self._sandbox.broken and not self._rebuild():
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
            try:
                return call(self._sandbox)
            except Exception as exc:
                self._fault(what, exc, None)
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: {what} failed: {exc}") from exc

    def tool_policy(self, tool: str) -> Policy:
        """The effective policy of ``tool`` (its override merged over the global config)."""
        policy: Policy = self._cold_call("tool-policy", lambda s: s.tool_policy(key_part(tool)))
        return policy

    def state_count(self) -> int:
        """Live retry-state entries (expired ones not yet swept may be counted)."""
        return int(self._cold_call("state-count", Sandbox.state_count))

    def evict_expired(self) -> int:
        """Sweep entries older than ``state_ttl_ms``; how many were removed."""
        return int(self._cold_call("evict-expired", Sandbox.evict_expired))

    def now_ns(self) -> int:
        """Now on the monotonic clock the component reads (the substitute, if any)."""
        return self._held.now_ns()

    @property
    def state_ttl_ms(self) -> int:
        """``state_ttl_ms`` as the component applies it."""
        return self._settings.state_ttl_ms

    @property
    def sandbox(self) -> Sandbox:
        """The component instance (its exported functions, faults, reloads)."""
        return self._sandbox

    @property
    def held(self) -> HeldKeys:
        """The keys holding retry state, their handles and mirrored state."""
        return self._held

    @property
    def reads_call_facts(self) -> bool:
        """Whether some policy's decisions depend on the call's timeout mark and the tool's
        annotations (``non_idempotent_retries`` other than ``all``)."""
        return self._read_facts

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
        return self._sandbox.fuel

    @fuel_per_call.setter
    def fuel_per_call(self, fuel: int) -> None:
        if not isinstance(fuel, int) or isinstance(fuel, bool) or fuel <= 0:
            raise ValueError(f"fuel must be a positive integer, got {fuel!r}")
        with self._lock:
            self._sandbox.set_call_fuel(fuel)

    @property
    def rebuild_count(self) -> int:
        """Number of instances rebuilt after a fault since construction."""
        return self._sandbox.rebuild_count

    @property
    def prometheus_metrics(self) -> bool:
        """``prometheus_metrics``: whether the plugin exports its metrics (``metrics``)."""
        return self._settings.prometheus_metrics

    @property
    def fault_count(self) -> int:
        """Number of faults (traps, failed rebuilds) since construction."""
        return self._sandbox.fault_count

    @property
    def reload_count(self) -> int:
        """Number of successful ``reload`` calls since construction."""
        return self._sandbox.reload_count

    @property
    def contract_version(self) -> str:
        """The contract version the loaded component implements."""
        return self._sandbox.contract_version

    @property
    def pinned_sha256(self) -> str | None:
        """The pinned sha256 of the component (``wasm_sha256``), or None."""
        return self._sandbox.pinned_sha256

    @property
    def wasm_path(self) -> Path:
        """The component file this adapter was loaded from."""
        return self._sandbox.path

    @property
    def imports(self) -> dict[str, frozenset[str]]:
        """The component's imports: interface name -> imported function names."""
        return self._sandbox.imports


#: The adapter's name before the host was split up (the package has exported it).
WasmRetryEngine = RetryEngine

__all__ = ["RetryEngine", "WasmRetryEngine", "describe_fault", "wire_key"]
