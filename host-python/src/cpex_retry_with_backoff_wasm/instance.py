"""``Instance``: the process's instance of the retry-engine component, and the policies open in it.

One instance per process per component and host limits (issue 23): every configuration the
process sees — each stanza, each team's binding merged over it, every equal configuration of
the gateway's per-context plugin objects — is a policy the instance holds, so memory grows
with live retry state, not with the number of configurations.  ``INSTANCES`` finds a plugin
object's instance by what it was configured with (the component's path and pin, ``wasm_fuel``,
``wasm_max_memory_bytes``, ``wasm_compile_cache``, and the test substitutes); ``Instance.open``
gives it its policy (``OpenPolicy``), shared with every object of the same stanza,
configuration and ceiling.

The instance owns a lock (a Store is not thread-safe and the gateway may call hooks from several
threads), the ``Sandbox`` and the ``HeldKeys``.  It keeps no retry state: the engine owns all of
it, its TTL, bounds and eviction; the host keeps only the handles the engine gave (``handles``).
A policy's id is derived from its content, so it is the same in every instance of the contract:
when an instance answers ``unknown-policy`` (it released the policy, unused for its TTL, or it
is a fresh instance after a fault), the policy is opened again and the call made again.

A fault inside the sandbox (trap, fuel or memory exhausted) never reaches the tool call: the
call is answered "no retry" and the instance rebuilt; its live retry state is lost
(docs/reliability.md).  A reload or a new build dropped in at the configured path moves every
policy, entry and budget across, each keeping its id, handle and age: the instance keeps its
times on the process's monotonic clock (``init``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .ceiling import Ceiling
from .handles import HeldKeys, Key
from .keys import KEY_PART_MAX_CHARS, context_part, key_part, user_identity_part, wire_key
from .model import MESSAGE_PREFIX, ConfigError, ConfigurationError, Opened, Policy, RetryEngineLoadError
from .sandbox import Clock, Sandbox, Seed, describe_fault
from .settings import HostSettings, check_sha256
from .signals import collect_texts, read_call_facts, read_hints, read_signals
from .wire import HANDLE_MASK, HANDLE_SHIFT, NEED_TEXT, UNKNOWN_HANDLE, UNKNOWN_POLICY

log = logging.getLogger(__name__)

#: Decision words that are not decisions (WIT ``decide``): nothing changed.
NOT_A_DECISION = UNKNOWN_POLICY | UNKNOWN_HANDLE | NEED_TEXT


def config_json(config: Mapping[str, Any]) -> str:
    """The configuration as the engine gets it: one text per value (keys sorted, no spacing),
    so equal configurations open one policy.  A value JSON cannot carry crosses as its ``str``
    for the engine to refuse at its key path; text that is not valid Unicode is refused here."""
    try:
        text = json.dumps(
            config, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False, ensure_ascii=False
        )
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            (ConfigError("", f"contains a string that is not valid Unicode (lone surrogate): {exc}"),)
        ) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigurationError((ConfigError("", f"not representable as JSON: {exc}"),)) from exc
    return text


def _require_str(value: Any, what: str) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    raise TypeError(f"{MESSAGE_PREFIX}: {what} must be a str, got {type(value).__name__}")


def _context_of(global_context: Any) -> tuple[str, str]:
    """The gateway context's tenant and server as key parts; never raises."""
    try:
        tenant, server = global_context.tenant_id, global_context.server_id
    except Exception:
        tenant = _attribute(global_context, "tenant_id")
        server = _attribute(global_context, "server_id")
    return (
        "" if tenant is None else context_part(tenant),
        "" if server is None else context_part(server),
    )


def _attribute(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


class OpenPolicy:
    """A policy open in an ``Instance``: what the plugin objects of one stanza, configuration and
    gateway ceiling share.  The fields the hot path reads are plain attributes."""

    __slots__ = (
        "__weakref__",
        "ceiling",
        "config_json",
        "global_policy",
        "id",
        "instance",
        "key_scope",
        "metrics_reason",
        "prometheus_metrics",
        "reads_call_facts",
        "reads_hints",
        "scope",
        "stateless",
        "user_scope",
    )

    def __init__(
        self, instance: Instance, scope: str, text: str, ceiling: int | None, opened: Opened, *, metrics: bool
    ) -> None:
        self.instance = instance
        self.scope = scope
        self.config_json = text
        self.ceiling = ceiling
        #: ``prometheus_metrics``: the host's setting for this configuration.
        self.prometheus_metrics = metrics
        self.refresh(opened)

    def refresh(self, opened: Opened) -> None:
        """Take what ``open-policy`` answered (again, after the instance lost the policy)."""
        self.id = opened.id
        self.stateless = opened.stateless_successes
        self.reads_hints = opened.reads_result_hints
        self.reads_call_facts = opened.reads_call_facts
        self.metrics_reason = opened.metrics_reason
        self.key_scope = opened.key_scope
        self.user_scope = opened.key_scope == "user"
        self.global_policy = opened.global_policy

    # The counters ``metrics`` reads.
    @property
    def fault_count(self) -> int:
        """Faults of the instance (traps, failed rebuilds)."""
        return self.instance.fault_count

    @property
    def rebuild_count(self) -> int:
        """Instances rebuilt after a fault."""
        return self.instance.rebuild_count

    @property
    def reload_count(self) -> int:
        """Successful reloads of the instance."""
        return self.instance.reload_count

    def state_count(self) -> int:
        """Live retry-state entries of this policy."""
        return self.instance.state_count(self)

    def tool_policy(self, tool: str) -> Policy:
        """The effective policy of ``tool`` under this configuration."""
        return self.instance.tool_policy(self, tool)


class Instance:
    """The process's instance of the component for one build location and set of host limits.

    Args:
        settings: the host settings it was configured with (``wasm_path`` and its pin,
            ``wasm_fuel``, ``wasm_max_memory_bytes``, ``wasm_compile_cache``).
        clock: monotonic nanoseconds; replaces ``wasi:clocks/monotonic-clock`` (tests).
        seed: replaces ``wasi:random/insecure-seed`` with this fixed pair (tests).
        wall_clock: epoch seconds (default ``time.time``), used only to turn a server's
            absolute delay hint (an HTTP-date, ``X-RateLimit-Reset`` epoch seconds) into ms
            from now; the component itself imports no wall clock.

    Raises:
        RetryEngineLoadError: the component is missing, corrupt or not a retry engine.
    """

    def __init__(
        self,
        settings: HostSettings,
        *,
        clock: Clock | None = None,
        seed: Seed | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        self._wall_clock: Callable[[], float] = wall_clock or time.time
        self._lock = threading.Lock()
        self._source = settings.wasm_path
        self._source_tag = _file_tag(settings.wasm_path)
        self._sandbox = Sandbox(
            settings.wasm_path,
            settings.wasm_sha256,
            fuel=settings.fuel,
            max_memory=settings.max_memory_bytes,
            compile_cache=settings.compile_cache,
            clock=clock,
            seed=seed,
        )
        self._held = HeldKeys()
        #: The policies open here, by id, while some plugin object holds them.
        self._policies: weakref.WeakValueDictionary[int, OpenPolicy] = weakref.WeakValueDictionary()

    # ------------------------------------------------------------------ policies
    def open(
        self,
        scope: str,
        config: Mapping[str, Any],
        ceiling: Ceiling | None = None,
        host_errors: tuple[ConfigError, ...] = (),
        *,
        prometheus_metrics: bool = True,
        refuse: Callable[[Opened], tuple[ConfigError, ...]] | None = None,
    ) -> OpenPolicy:
        """The policy of ``config`` for the stanza ``scope`` under the gateway's ``ceiling``.

        ``host_errors`` are the problems the host found in the host keys, and ``refuse``
        those it finds in what the engine opened (e.g. a policy that needs a hook the stanza
        lacks): with either, the configuration is refused and the policy the engine opened
        for it closed again, so that a refused configuration holds no policy.

        Raises:
            ConfigurationError: the component or the host refused the configuration; every
                problem at once, with its key path.
            RetryEngineLoadError: the instance is unavailable.
        """
        text = config_json(config)
        limit = None if ceiling is None else ceiling.value
        with self._lock:
            if self._sandbox.broken and not self._rebuild():
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
            try:
                answer = self._sandbox.open_policy(scope, text, limit)
            except Exception as exc:
                self._fault("open-policy", exc)
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: open-policy failed: {describe_fault(exc)}"
                ) from exc
            if not isinstance(answer, Opened):
                raise ConfigurationError((*host_errors, *answer))
            refused = (*host_errors, *(refuse(answer) if refuse is not None else ()))
            if refused:
                if answer.id not in self._policies:  # no plugin object uses it
                    self._sandbox.close_policy(answer.id)
                raise ConfigurationError(refused)
            policy = self._policies.get(answer.id)
            if policy is None:
                policy = OpenPolicy(self, scope, text, limit, answer, metrics=prometheus_metrics)
                self._policies[answer.id] = policy
                for warning in answer.warnings:
                    source = f" ({ceiling.source})" if ceiling is not None else ""
                    log.warning("retry_with_backoff_wasm: %s: %s%s", scope, warning, source)
            return policy

    def _reopen(self, policy: OpenPolicy) -> bool:
        """Open ``policy`` again in this instance, which answered ``unknown-policy`` (lock held);
        False when that failed."""
        try:
            answer = self._sandbox.open_policy(policy.scope, policy.config_json, policy.ceiling)
        except Exception as exc:
            self._fault("open-policy", exc)
            return False
        if not isinstance(answer, Opened):  # pragma: no cover - it was accepted before
            log.error("%s: opening %s again was refused: %s", MESSAGE_PREFIX, policy.scope, answer)
            return False
        if answer.id != policy.id:  # pragma: no cover - a build deriving ids otherwise
            self._policies.pop(policy.id, None)
            self._policies[answer.id] = policy
        policy.refresh(answer)
        return True

    # ------------------------------------------------------------------ hot path
    def decide(  # noqa: PLR0915 - the hot path, written out: every call saved shows per result
        self, policy: OpenPolicy, tool: Any, global_context: Any, result: Any, context: Any = None
    ) -> int:
        """One decision for ``result`` of ``tool`` in ``global_context``, under ``policy``: the
        packed u64 (WIT ``decide``), 0 ("no retry") when the instance faulted.

        Reads the result (``signals.read_signals``), calls ``decide-held`` or ``decide`` once
        and, only when the engine asks for it (need-text), collects the text items and calls
        ``decide-text``.  ``context`` is the hook's plugin context, read for the call's facts
        where the policy reads them.
        """
        if type(tool) is not str:
            tool = _require_str(tool, "payload.name")
        request_id = global_context.request_id
        if type(request_id) is not str:
            request_id = _require_str(request_id, "global_context.request_id")
        signals = read_signals(result)
        # A key with a part over the bound of a key part is never listed (the table keeps the
        # gateway's own strings, which must not grow it without bound): its results always
        # reach the engine, by key.
        listed = len(tool) <= KEY_PART_MAX_CHARS and len(request_id) <= KEY_PART_MAX_CHARS
        # A plain success, where the engine said it changes nothing for a key without state
        # (WIT `stateless-successes`), of a key the engine did not say holds state, is answered
        # here: at once when the engine said no key holds state (the table is empty).
        handles = self._held.handles
        if not signals and policy.stateless and listed and not handles:
            return 0
        # The key, written out: the gateway context's tenant and server as key parts (None is no
        # context; a short ASCII str crosses as itself).  The check repeats ``context_part``'s
        # first test inline on purpose: it runs twice per result, and is cheaper than the call.
        try:
            tenant, server = global_context.tenant_id, global_context.server_id
        except Exception:
            tenant, server = _context_of(global_context)
        if tenant is None:
            tenant = ""
        elif (
            type(tenant) is not str
            or len(tenant) > KEY_PART_MAX_CHARS
            or not tenant.isascii()
            or tenant[:1] == "#"
        ):
            tenant = context_part(tenant)
        if server is None:
            server = ""
        elif (
            type(server) is not str
            or len(server) > KEY_PART_MAX_CHARS
            or not server.isascii()
            or server[:1] == "#"
        ):
            server = context_part(server)
        identity = user_identity_part(_attribute(global_context, "user")) if policy.user_scope else ""
        key: Key = (policy.id, tenant, server, identity, tool, request_id)
        if not signals:
            if policy.stateless and listed and key not in handles:
                return 0
        elif policy.reads_hints:
            signals |= self._read_extras(policy, result, context, tool)
        # Hot path: one lean call (fastcall) under the lock.  A key the engine named by a handle
        # crosses as `decide-held`, no key bytes copied.
        with self._lock:
            lean = self._sandbox.lean
            if lean is not None:
                held = self._held
                handle = held.handles.get(key, 0) if listed else 0
                decision = UNKNOWN_HANDLE
                if handle:
                    if not policy.stateless:
                        # It may keep a retry budget: a full budget of fuel (``HeldFuel``).
                        self._sandbox.held_fuel.left = 0
                    try:
                        decision = lean[1](handle, signals)
                    except Exception as exc:
                        return self._fault("decide-held", exc)
                    if not decision & NOT_A_DECISION:
                        if (decision >> HANDLE_SHIFT) & HANDLE_MASK == handle:
                            return decision  # still held, under the same handle
                        # The decision cleared the key (`HeldKeys.note`, written out: the most
                        # frequent change).
                        del held.handles[key]
                        if held.keys.get(handle) == key:
                            del held.keys[handle]
                        return decision
                if decision & UNKNOWN_HANDLE:
                    decision = self._decide_by_key(lean[0], policy, key, signals)
                if not decision & NOT_A_DECISION:
                    held.note(key if listed else None, decision)
                    return decision
        if lean is None:  # no lean path (other wasmtime-py) or the instance needs a rebuild
            decision = self._decide_generic(policy, key, signals, None)
        if decision & NEED_TEXT:
            # Text content may make it a failure: the hints can matter now.
            if not signals and policy.reads_hints:
                signals |= self._read_extras(policy, result, context, tool)
            decision = self._decide_generic(policy, key, signals, collect_texts(result))
        # An instance that still does not hold the policy after opening it again: no retry.
        return decision & ~UNKNOWN_POLICY

    def _read_extras(self, policy: OpenPolicy, result: Any, context: Any, tool: str) -> int:
        """Signal bits 4..31: the result's hints, and the call's facts where the policy reads them."""
        bits = read_hints(result, self._wall_clock)
        if policy.reads_call_facts:
            bits |= read_call_facts(context, tool)
        return bits

    def _decide_by_key(
        self, decide: Callable[[int, bytes, int, int], int], policy: OpenPolicy, key: Key, signals: int
    ) -> int:
        """``decide`` with the key's bytes (lock held); the policy opened again if the
        instance no longer holds it."""
        encoded, parts = wire_key(key[1], key[2], key[3], key[4], key[5])
        try:
            decision = decide(policy.id, encoded, parts, signals)
            if decision == UNKNOWN_POLICY:
                if not self._reopen(policy):
                    return 0
                decision = decide(policy.id, encoded, parts, signals)
        except Exception as exc:
            return self._fault("decide", exc)
        return decision

    def _decide_generic(self, policy: OpenPolicy, key: Key, signals: int, texts: list[str] | None) -> int:
        """The generic call path: ``decide-text``, and ``decide`` without a lean caller."""
        with self._lock:
            sandbox = self._sandbox
            if sandbox.broken and not self._rebuild():
                return 0
            encoded, parts = wire_key(key[1], key[2], key[3], key[4], key[5])
            wire = encoded.decode()
            listed = len(key[4]) <= KEY_PART_MAX_CHARS and len(key[5]) <= KEY_PART_MAX_CHARS
            # Every key part and text is valid Unicode (``keys``, ``collect_texts``): all cross.
            what = "decide" if texts is None else "decide-text"
            try:
                decision = sandbox.decide(policy.id, wire, parts, signals, texts)
                if decision == UNKNOWN_POLICY:
                    if not self._reopen(policy):
                        return 0
                    decision = sandbox.decide(policy.id, wire, parts, signals, texts)
            except Exception as exc:
                return self._fault(what, exc)
            if not decision & NOT_A_DECISION:
                self._held.note(key if listed else None, decision)
            return decision

    # ------------------------------------------------------------------ faults
    def _fault(self, what: str, exc: BaseException) -> int:
        """A call into the sandbox faulted (lock held): log it, start a new instance (which holds
        no state: every handle goes) and answer 0."""
        self._sandbox.fault(what, exc)
        self._held.clear()
        self._rebuild()
        return 0

    def _rebuild(self) -> bool:
        """A new instance (lock held); False if that failed."""
        self._held.clear()
        return self._sandbox.rebuild()

    # ------------------------------------------------------------------ builds
    def reload(self, wasm_path: str | os.PathLike[str] | None = None, wasm_sha256: str | None = None) -> int:
        """Swap in another build of the component without losing live retry state.

        Loads ``wasm_path`` (default: the configured path, e.g. after replacing the file),
        instantiates it, checks its contract, and moves every policy, live retry-state entry
        and budget across (``export-state`` -> ``import-state``) while holding the lock, so no
        decision falls between the two instances; each keeps its id, handle and age.  Returns
        the number of entries carried over.  With ``wasm_sha256`` pinned (in the config, or
        given here for the new build) the file must match it; a pin given here replaces the
        configured one once the reload succeeds.  Plugin objects built later from the same
        stanza attach to this instance, on the new build.

        Raises:
            RetryEngineLoadError: the new build is missing, corrupt, for another contract, or
                refuses the state.  The previous instance keeps serving.
        """
        sandbox = self._sandbox
        path = Path(wasm_path) if wasm_path is not None else self._source
        pin = check_sha256(wasm_sha256) if wasm_sha256 is not None else sandbox.pinned_sha256
        tag = _file_tag(path)
        build = sandbox.load(path, pin)
        with self._lock:
            try:
                moved = sandbox.reload(build, pin)
            finally:
                self._after_failed_export()
        if path == self._source:
            self._source_tag = tag
        return moved

    def _after_failed_export(self) -> None:
        """If the running instance faulted while it wrote its state out for a reload (lock
        held), it is gone with its state: start a new one, as after any fault."""
        if self._sandbox.broken:
            self._rebuild()

    def check_source(self) -> None:
        """Pick up a new build written to the configured path (an atomic rename, as a Kubernetes
        ConfigMap update does), live state carried over; one warning, and the running build
        stays, when the new file cannot be loaded or does not match ``wasm_sha256``.  Called
        whenever the gateway builds a plugin object (every 30 s per context); a stat when
        nothing changed."""
        tag = _file_tag(self._source)
        if tag == self._source_tag:
            return
        self._source_tag = tag
        sandbox = self._sandbox
        try:
            build = sandbox.load(self._source, sandbox.pinned_sha256)
        except RetryEngineLoadError as exc:
            log.warning(
                "%s: %s changed but is not loaded (%s); the running build stays",
                MESSAGE_PREFIX,
                self._source,
                exc,
            )
            return
        if build.loaded.sha256 == sandbox.sha256:
            return
        try:
            with self._lock:
                try:
                    sandbox.reload(build, sandbox.pinned_sha256)
                finally:
                    self._after_failed_export()
        except RetryEngineLoadError as exc:
            log.warning("%s: %s", MESSAGE_PREFIX, describe_fault(exc))

    # ------------------------------------------------------------------ cold paths
    def _cold_call(self, what: str, call: Callable[[Sandbox], Any]) -> Any:
        with self._lock:
            if self._sandbox.broken and not self._rebuild():
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance is unavailable")
            try:
                return call(self._sandbox)
            except Exception as exc:
                self._fault(what, exc)
                raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: {what} failed: {describe_fault(exc)}") from exc

    def tool_policy(self, policy: OpenPolicy, tool: str) -> Policy:
        """The effective policy of ``tool`` under ``policy`` (its override merged over the
        global configuration)."""

        def call(sandbox: Sandbox) -> Policy | None:
            found = sandbox.tool_policy(policy.id, key_part(tool))
            if found is None and self._reopen(policy):
                found = sandbox.tool_policy(policy.id, key_part(tool))
            return found

        found: Policy | None = self._cold_call("tool-policy", call)
        if found is None:  # pragma: no cover - opened just before
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: the instance does not hold the policy")
        return found

    def state_count(self, policy: OpenPolicy | None = None) -> int:
        """Live retry-state entries of ``policy`` (None: of every policy); expired ones not yet
        swept may be counted."""
        ident = None if policy is None else policy.id
        return int(self._cold_call("state-count", lambda s: s.state_count(ident)))

    def policy_count(self) -> int:
        """Policies the instance holds (open, or released once unused for their TTL)."""
        return int(self._cold_call("policy-count", Sandbox.policy_count))

    def evict_expired(self) -> int:
        """Sweep expired entries and release unused policies; how many entries went."""
        return int(self._cold_call("evict-expired", Sandbox.evict_expired))

    @property
    def held_count(self) -> int:
        """Keys the host knows by a handle (those the engine said hold state, and some that
        no longer do)."""
        return len(self._held)

    @property
    def sandbox(self) -> Sandbox:
        """The component instance (its exported functions, faults, reloads)."""
        return self._sandbox

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
    def fault_count(self) -> int:
        """Number of faults (traps, failed rebuilds) since construction."""
        return self._sandbox.fault_count

    @property
    def reload_count(self) -> int:
        """Number of successful reloads since construction."""
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
        """The component file in use."""
        return self._sandbox.path

    @property
    def imports(self) -> dict[str, frozenset[str]]:
        """The component's imports: interface name -> imported function names."""
        return self._sandbox.imports


def _file_tag(path: Path) -> tuple[int, int, int, int] | None:
    """What tells a file replaced (inode, size, mtime, ctime), or None when it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


#: What picks a plugin object's instance.
InstanceKey = tuple[Any, ...]


#: The most instances a process keeps: each configuration's host keys pick one, and a flood of
#: distinct host limits (e.g. from team bindings) must not start an instance each.
MAX_INSTANCES = 8


class Instances:
    """The process's instances, by what picks one (one table per process: ``INSTANCES``)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._instances: dict[InstanceKey, Instance] = {}

    def attach(
        self,
        settings: HostSettings,
        *,
        clock: Clock | None = None,
        seed: Seed | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> Instance:
        """The instance for ``settings``, started if none is; a build written to its path since
        is picked up (``Instance.check_source``)."""
        key: InstanceKey = (
            os.path.abspath(settings.wasm_path),
            settings.wasm_sha256,
            settings.fuel,
            settings.max_memory_bytes,
            settings.compile_cache,
            clock,
            seed,
            wall_clock,
        )
        with self._lock:
            instance = self._instances.get(key)
            if instance is None:
                if len(self._instances) >= MAX_INSTANCES:
                    raise ConfigurationError(
                        (
                            ConfigError(
                                "",
                                f"this process runs {MAX_INSTANCES} instances of the component, its "
                                "bound: one per distinct wasm_path, wasm_sha256, wasm_fuel, "
                                "wasm_max_memory_bytes and wasm_compile_cache; use fewer distinct values",
                            ),
                        )
                    )
                instance = Instance(settings, clock=clock, seed=seed, wall_clock=wall_clock)
                self._instances[key] = instance
            else:
                instance.check_source()
            return instance

    def __len__(self) -> int:
        with self._lock:
            return len(self._instances)

    def clear(self) -> None:
        """Forget every instance (objects attached keep theirs): for tests and for an embedder
        that wants a clean slate."""
        with self._lock:
            self._instances.clear()


#: The process's instances.
INSTANCES = Instances()

__all__ = [
    "INSTANCES",
    "MAX_INSTANCES",
    "NOT_A_DECISION",
    "Instance",
    "Instances",
    "OpenPolicy",
    "config_json",
]
