"""Retry metrics on the gateway's Prometheus endpoint (``prometheus_client``'s default registry).

The gateway serves ``/metrics/prometheus`` from ``prometheus_client.REGISTRY``, or, when
``PROMETHEUS_MULTIPROC_DIR`` is set (several workers, as under gunicorn), from a
``MultiProcessCollector`` over the files every worker's metric objects write.  This module
exports, under the prefix ``cpex_retry_wasm_``:

==========================================================  =======================================
``cpex_retry_wasm_decisions_total{plugin,tool,reason}``     every ``tool_post_invoke`` decision
``cpex_retry_wasm_retry_delay_seconds{plugin}``             histogram of the retry delays asked for
``cpex_retry_wasm_budget_refusals_total{plugin,tool}``      retries refused by ``retry_budget_percent``
``cpex_retry_wasm_retry_state_entries{plugin}``             live retry-state entries (gauge)
``cpex_retry_wasm_sandbox_faults_total{plugin}``            traps, exhausted fuel or memory, failed
                                                            rebuilds
``cpex_retry_wasm_rebuilds_total{plugin}``                  fresh instances after a fault
``cpex_retry_wasm_reloads_total{plugin}``                   hot reloads that succeeded
``cpex_retry_wasm_dropped_decisions_total{plugin}``         decisions that could not be exported
==========================================================  =======================================

``plugin`` is the plugin's name in the gateway's YAML; ``reason`` a ``wire.REASONS`` name (a
decision answered "no retry" because the sandbox faulted counts as ``success``; the fault is in
``sandbox_faults``).  ``tool`` is bounded, since tool names are chosen by whoever registers
servers:

- in bytes: a tool's label value is its name when that is at most ``KEY_PART_MAX_CHARS``
  characters of valid Unicode and does not start with ``#``; otherwise ``KEY_DIGEST_PREFIX`` +
  the hex SHA-256 of the name, the same digest as the engine's key part (``keys.key_part``);
- in number: per plugin name the first ``MAX_TOOL_LABELS`` distinct label values are given out
  and every later tool shares ``OTHER_TOOL`` (``#other``).  Every label value starting with ``#``
  is a digest or ``#other``, so no tool's series is the overflow series.

Each plugin object remembers, for the hot path, the queue of at most ``MAX_TOOL_NAMES`` tool
names and ``MAX_TOOL_NAME_BYTES`` bytes of them, none longer than ``KEY_PART_MAX_CHARS``.

The hook only appends the decision to its plugin object's queue for the tool's label value,
found by one dict lookup by tool name (``deque.append`` is atomic, so no lock is taken on the
hot path, and the host's lock-free success shortcut is counted the same way).  The queues are
flushed into the real metric objects, which are process-wide (one registration per name; every
plugin object of the process shares them):

- at scrape, by a collector registered in ``REGISTRY`` ahead of the metric objects, so a
  single-process scrape is exact; it also samples the retry-state gauge then;
- every ``FLUSH_INTERVAL_S`` by a daemon thread (per process; restarted after a fork), which
  bounds the queues and, in multiprocess mode, is what writes each worker's files (it samples
  the gauge there too, as ``livesum``);
- at interpreter exit.

Fault, rebuild and reload counts are read from the engine's public counters at each flush.
The ``prometheus_metrics`` setting (default true) turns all of it off for a plugin.

A flush never raises and one failing export never stops the others.  The usual cause is a
broken ``PROMETHEUS_MULTIPROC_DIR`` (missing, not a directory, not writable): each process
opens one file per metric type (counter, histogram, gauge) at the first series of that type
and keeps it open, so a directory broken from the start fails every export, and one broken
later only the types not opened yet.  A batch of
decisions whose ``decisions_total`` increment fails is dropped and its size added to
``dropped_decisions_total`` (exported as soon as that works again); unexported engine events
stay counted and are retried; a failing gauge sample waits for the next.  The queues are
therefore drained at every flush whatever happens, recorders of plugin objects that are gone
are released, and one warning per process and problem names the directory and what is wrong
with it.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any, Final, Protocol

from prometheus_client import REGISTRY
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.registry import Collector

from .keys import KEY_DIGEST_PREFIX, KEY_PART_MAX_CHARS, is_unicode
from .model import ConfigError
from .wire import DELAY_MASK, REASON_MASK, REASON_SHIFT, REASONS

log = logging.getLogger(__name__)

#: Host-only config key: ``true`` (default) exports the metrics, ``false`` turns them off.
KEY_PROMETHEUS_METRICS: Final = "prometheus_metrics"
#: The one prefix of every metric name.
PREFIX: Final = "cpex_retry_wasm_"
#: Distinct tool label values per plugin name; later tools share ``OTHER_TOOL``.
MAX_TOOL_LABELS: Final = 50
#: What every ``tool`` label value that is not a tool name itself starts with: digests
#: (``KEY_DIGEST_PREFIX`` starts with it) and ``OTHER_TOOL``.  A name starting with it is digested.
RESERVED_LABEL_PREFIX: Final = KEY_DIGEST_PREFIX[:1]
#: The ``tool`` label of the tools past ``MAX_TOOL_LABELS``: no tool's own label value.
OTHER_TOOL: Final = RESERVED_LABEL_PREFIX + "other"
#: Tool names a plugin object remembers the queue of, and their size in bytes (``sys.getsizeof``);
#: names beyond either bound, and longer ones than ``KEY_PART_MAX_CHARS``, find their label again
#: on every call.  Bounds its memory whatever names arrive.
MAX_TOOL_NAMES: Final = 10_000
MAX_TOOL_NAME_BYTES: Final = 1 << 20
#: The environment variable naming the directory of multiprocess mode's files.
MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
#: How often the daemon thread flushes the queues (seconds).
FLUSH_INTERVAL_S: Final = 1.0
#: Upper bounds of the retry-delay histogram (seconds): the default backoff range, then the
#: long delays a server's ``Retry-After`` hint can ask for.
DELAY_BUCKETS_S: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

_RETRY: Final = REASONS.index("retry")
_BUDGET: Final = REASONS.index("budget")

#: A queue's ``append``: what the hot path calls with the decision.
Append = Callable[[int], None]


class EngineCounters(Protocol):
    """What the metrics read from a ``RetryEngine``."""

    @property
    def prometheus_metrics(self) -> bool: ...
    @property
    def fault_count(self) -> int: ...
    @property
    def rebuild_count(self) -> int: ...
    @property
    def reload_count(self) -> int: ...

    def state_count(self) -> int: ...


def read_setting(config: Mapping[str, Any], errors: list[ConfigError]) -> bool:
    """``prometheus_metrics`` (default true); a value that is not a bool goes to ``errors``."""
    value = config.get(KEY_PROMETHEUS_METRICS, True)
    if type(value) is not bool:
        errors.append(ConfigError(KEY_PROMETHEUS_METRICS, f"must be true or false, got {value!r}"))
        return True
    return value


def multiprocess_mode() -> bool:
    """Whether ``prometheus_client`` writes per-process files (the gateway's own test)."""
    return MULTIPROC_DIR in os.environ


class _ToolLabels:
    """Per plugin name: the tool label values given out, the first ``MAX_TOOL_LABELS`` first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._labels: set[str] = set()

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    def label(self, tool: str) -> str:
        label = tool_label(tool)
        with self._lock:
            if label in self._labels:
                return label
            if len(self._labels) >= MAX_TOOL_LABELS:
                return OTHER_TOOL
            self._labels.add(label)
            return label


class PluginMetrics:
    """One plugin object's share of the metrics: its decision queues and engine counters.

    The hook calls ``(queues.get(tool) or queue(tool))(decision)``.
    """

    def __init__(
        self, plugin: str, engine: EngineCounters, labels: _ToolLabels, exported: list[int] | None = None
    ) -> None:
        self.plugin = plugin
        self.engine = engine
        self._labels = labels
        #: Tool name -> its label's queue ``append`` (the hot path's lookup).
        self.queues: dict[str, Append] = {}
        #: Label value -> queue of decisions not yet exported.
        self.pending: dict[str, deque[int]] = {}
        #: Label value -> its queue's ``append`` (one bound method per label, not per name).
        self._appends: dict[str, Append] = {}
        #: Bytes of the tool names in ``queues``.
        self._name_bytes = 0
        #: Engine counters already exported: faults, rebuilds, reloads.  One list per engine,
        #: shared by the recorders of the plugin objects attached to it, so that an engine's
        #: event is exported once however many objects share it.
        self.exported = exported if exported is not None else _counters(engine)
        #: Set once the plugin object is gone; the next flush exports the rest and drops this.
        self.retired = False

    def queue(self, tool: str) -> Append:
        """The queue ``append`` of a tool not in ``queues`` (first sight of the tool, or one
        the table has no room for)."""
        label = self._labels.label(tool)
        append = self._appends.get(label)
        if append is None:
            # setdefault: two threads seeing a label first share one queue.
            pending = self.pending.setdefault(label, deque())
            append = self._appends.setdefault(label, pending.append)
        size = sys.getsizeof(tool)
        if (
            len(tool) <= KEY_PART_MAX_CHARS
            and len(self.queues) < MAX_TOOL_NAMES
            and self._name_bytes + size <= MAX_TOOL_NAME_BYTES
        ):
            self.queues[tool] = append
            self._name_bytes += size
        return append

    def retire(self) -> None:
        # Runs from a finalizer (any thread, at any point): only a flag, no lock.
        self.retired = True

    def discard_pending(self) -> None:
        """Forget queued decisions and count the engine's events from now (after a fork)."""
        for pending in list(self.pending.values()):
            pending.clear()
        self.exported[:] = _counters(self.engine)


class _Metrics:
    """The process-wide metric objects, registered once in the default registry."""

    def __init__(self) -> None:
        # Registered before the metric objects: a scrape flushes first, then collects them.
        REGISTRY.register(_FlushOnScrape())
        self.decisions = PromCounter(
            PREFIX + "decisions",
            "Retry decisions of tool_post_invoke, by plugin, tool (bounded) and reason",
            ("plugin", "tool", "reason"),
        )
        self.delays = PromHistogram(
            PREFIX + "retry_delay_seconds",
            "Delays of the retries asked for",
            ("plugin",),
            buckets=DELAY_BUCKETS_S,
        )
        self.budget_refusals = PromCounter(
            PREFIX + "budget_refusals",
            "Retries refused because the tool's retry budget was empty",
            ("plugin", "tool"),
        )
        self.state_entries = PromGauge(
            PREFIX + "retry_state_entries",
            "Live retry-state entries in the plugin's engines",
            ("plugin",),
            multiprocess_mode="livesum",
        )
        self.faults = PromCounter(
            PREFIX + "sandbox_faults",
            "Faults of the Wasm sandbox (trap, fuel or memory exhausted, failed rebuild)",
            ("plugin",),
        )
        self.rebuilds = PromCounter(
            PREFIX + "rebuilds", "Instances rebuilt after a sandbox fault", ("plugin",)
        )
        self.reloads = PromCounter(PREFIX + "reloads", "Hot reloads of the component", ("plugin",))
        self.dropped = PromCounter(
            PREFIX + "dropped_decisions",
            "Decisions that could not be exported (e.g. a broken PROMETHEUS_MULTIPROC_DIR)",
            ("plugin",),
        )


class _FlushOnScrape(Collector):
    """Flushes every queue when the default registry is collected; exports nothing itself."""

    def describe(self) -> Iterable[Any]:
        return ()

    def collect(self) -> Iterable[Any]:
        _EXPORTER.flush(sample_state=True)
        return ()


class _Exporter:
    """The queues of this process and the thread that flushes them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: _Metrics | None = None
        self._recorders: set[PluginMetrics] = set()
        self._tool_labels: dict[str, _ToolLabels] = {}
        #: Plugin names whose gauge was set (set to 0 when their last engine goes).
        self._gauged: set[str] = set()
        #: Engine -> its counters already exported (shared by its recorders).
        self._exported: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
        #: Plugin name -> decisions dropped because their export failed, not yet exported.
        self._dropped: Counter[str] = Counter()
        #: Problems already warned about in this process (one warning each).
        self._warned: set[str] = set()
        #: Whether an export of the running flush failed (the problem is diagnosed once a flush).
        self._failing = False
        self._thread_pid: int | None = None

    def attach(self, owner: object, plugin: str, engine: EngineCounters) -> PluginMetrics | None:
        if not engine.prometheus_metrics:
            return None
        with self._lock:
            if self._metrics is None:
                self._metrics = _Metrics()
                atexit.register(self.flush, sample_state=multiprocess_mode())
            labels = self._tool_labels.setdefault(plugin, _ToolLabels())
            exported = self._exported.get(engine)
            if exported is None:
                exported = self._exported[engine] = _counters(engine)
            recorder = PluginMetrics(plugin, engine, labels, exported)
            self._recorders.add(recorder)
        weakref.finalize(owner, recorder.retire)
        self._ensure_thread()
        return recorder

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._thread_pid == pid:
            return
        self._thread_pid = pid
        threading.Thread(target=self._run, name="cpex-retry-wasm-metrics", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush(sample_state=multiprocess_mode())
            except Exception:  # pragma: no cover - never let a metrics bug end the thread
                log.exception("retry metrics: flushing failed")

    def after_fork(self) -> None:
        """In a forked child: the parent's queued decisions are the parent's to export."""
        # A lock held by another thread at the fork stays held in the child: new ones.
        self._lock = threading.Lock()
        for labels in self._tool_labels.values():
            labels.after_fork()
        for recorder in self._recorders:
            recorder.discard_pending()
        self._dropped.clear()
        self._warned.clear()  # each worker says once what it cannot write
        self._thread_pid = None
        if self._recorders:
            self._ensure_thread()

    def flush(self, *, sample_state: bool = False) -> None:
        """Export every queued decision and engine event; with ``sample_state``, set the gauge.

        Never raises: a failing export is warned about once, and what it could not export is
        dropped and counted (decisions) or kept for the next flush (engine events, gauge).
        """
        metrics = self._metrics
        if metrics is None:
            return
        with self._lock:
            self._failing = False
            for recorder in list(self._recorders):
                try:
                    self._flush_one(metrics, recorder)
                except Exception as exc:  # a bug or a broken engine: never stop the others
                    self._failed(exc)
                if recorder.retired:
                    self._recorders.discard(recorder)
            for plugin, count in list(self._dropped.items()):
                if self._inc(metrics.dropped, (plugin,), count):
                    del self._dropped[plugin]
            if sample_state:
                live = self._live_entries()
                for plugin in self._gauged - live.keys():
                    self._set(metrics.state_entries, plugin, 0)
                for plugin, entries in live.items():
                    self._set(metrics.state_entries, plugin, entries)
                self._gauged |= live.keys()

    def _live_entries(self) -> dict[str, int]:
        """Live retry-state entries by plugin name, each engine counted once (plugin objects
        of one configuration share an engine: ``shared``)."""
        live: dict[str, int] = {}
        seen: set[int] = set()
        for recorder in self._recorders:
            engine = recorder.engine
            if id(engine) not in seen:
                seen.add(id(engine))
                live[recorder.plugin] = live.get(recorder.plugin, 0) + _state_count(engine)
        return live

    def _flush_one(self, metrics: _Metrics, recorder: PluginMetrics) -> None:
        plugin = recorder.plugin
        delays: list[float] = []
        # A copy: the hot path may add a label's queue meanwhile.
        for label, pending in list(recorder.pending.items()):
            # Exactly the decisions queued so far; later appends wait for the next flush.
            # Taken out of the queue whether or not their export succeeds: the queue stays
            # bounded by what arrives between two flushes.
            batch = Counter(islice(iter(pending.popleft, None), len(pending)))
            if not batch:
                continue
            reasons: Counter[int] = Counter()
            retries: list[float] = []
            for decision, count in batch.items():
                reason = (decision >> REASON_SHIFT) & REASON_MASK
                reasons[reason] += count
                if reason == _RETRY:
                    retries += [(decision & DELAY_MASK) / 1000] * count
            for reason, count in reasons.items():
                name = REASONS[reason] if reason < len(REASONS) else str(reason)
                if not self._inc(metrics.decisions, (plugin, label, name), count):
                    self._dropped[plugin] += count
                elif reason == _BUDGET:
                    self._inc(metrics.budget_refusals, (plugin, label), count)
                elif reason == _RETRY:
                    delays += retries
        if delays:
            try:
                observe = metrics.delays.labels(plugin).observe
                for seconds in delays:
                    observe(seconds)
            except Exception as exc:
                self._failed(exc)
        exported = recorder.exported
        now = _counters(recorder.engine)
        counters = (metrics.faults, metrics.rebuilds, metrics.reloads)
        for i, (counter, count, before) in enumerate(zip(counters, now, exported, strict=True)):
            # An event not exported stays pending in ``exported`` until its export works.
            if count <= before or self._inc(counter, (plugin,), count - before):
                exported[i] = count

    def _inc(self, counter: PromCounter, labels: tuple[str, ...], amount: int) -> bool:
        """Add ``amount`` to ``counter``'s series; False when that fails (warned about)."""
        try:
            counter.labels(*labels).inc(amount)
        except Exception as exc:
            self._failed(exc)
            return False
        return True

    def _set(self, gauge: PromGauge, plugin: str, value: int) -> None:
        try:
            gauge.labels(plugin).set(value)
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """Warn, once per process and problem, that exports fail: a clear line naming the
        cause, not a traceback every flush."""
        if self._failing:
            return  # diagnosed already in this flush
        self._failing = True
        path = os.environ.get(MULTIPROC_DIR)
        problem = None if path is None else _directory_problem(path)
        key = problem or type(exc).__name__
        if key in self._warned:
            return
        self._warned.add(key)
        if problem is not None:
            log.warning(
                "retry metrics: %s=%r %s, so this process cannot write its metric files (%s); "
                "decisions it cannot export are dropped and counted in %sdropped_decisions_total",
                MULTIPROC_DIR,
                path,
                problem,
                _describe(exc),
                PREFIX,
            )
        else:
            log.warning(
                "retry metrics: exporting failed (%s); decisions that cannot be exported are "
                "dropped and counted in %sdropped_decisions_total",
                _describe(exc),
                PREFIX,
            )


def _counters(engine: EngineCounters) -> list[int]:
    return [engine.fault_count, engine.rebuild_count, engine.reload_count]


def tool_label(tool: str) -> str:
    """The ``tool`` label value of a tool name (before the ``MAX_TOOL_LABELS`` bound).

    The name itself when it is at most ``KEY_PART_MAX_CHARS`` characters of valid Unicode and
    does not start with ``RESERVED_LABEL_PREFIX``; otherwise its digest as ``keys.key_part``
    makes it (``KEY_DIGEST_PREFIX`` + hex SHA-256 of its ``surrogatepass`` UTF-8), so a label
    value is at most ``KEY_PART_MAX_CHARS`` characters, always encodable (one bad name must not
    break the whole exposition), and two names share one only in a SHA-256 collision.
    """
    if len(tool) <= KEY_PART_MAX_CHARS and not tool.startswith(RESERVED_LABEL_PREFIX) and is_unicode(tool):
        return tool
    return KEY_DIGEST_PREFIX + hashlib.sha256(tool.encode("utf-8", "surrogatepass")).hexdigest()


def _directory_problem(path: str) -> str | None:
    """What is wrong with ``PROMETHEUS_MULTIPROC_DIR`` for writing files in it, if anything."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return "is not writable"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _state_count(engine: EngineCounters) -> int:
    try:
        return engine.state_count()
    except Exception:  # an unavailable instance holds no state
        return 0


_EXPORTER: Final = _Exporter()
os.register_at_fork(after_in_child=_EXPORTER.after_fork)


def attach(owner: object, plugin: str, engine: EngineCounters) -> PluginMetrics | None:
    """Count ``owner``'s decisions under ``plugin`` (None when ``engine.prometheus_metrics``
    is off): the hook calls ``(m.queues.get(tool) or m.queue(tool))(decision)``.

    ``owner`` (the plugin object) is only watched: once it is garbage, the next flush exports
    what is left of its counts and lets ``engine`` go.
    """
    return _EXPORTER.attach(owner, plugin, engine)


def flush(*, sample_state: bool = True) -> None:
    """Export every queued decision now and, with ``sample_state``, sample the retry-state gauge."""
    _EXPORTER.flush(sample_state=sample_state)


__all__ = [
    "DELAY_BUCKETS_S",
    "KEY_PROMETHEUS_METRICS",
    "MAX_TOOL_LABELS",
    "MAX_TOOL_NAMES",
    "MAX_TOOL_NAME_BYTES",
    "MULTIPROC_DIR",
    "OTHER_TOOL",
    "PREFIX",
    "RESERVED_LABEL_PREFIX",
    "EngineCounters",
    "PluginMetrics",
    "attach",
    "flush",
    "multiprocess_mode",
    "read_setting",
    "tool_label",
]
