"""Retry metrics in ``prometheus_client``'s default registry, through the real cpex PluginManager.

Every test names its plugin uniquely: the metric objects are process-wide, and the ``plugin``
label keeps one test's counts apart from every other's.  A scrape (``generate_latest``) flushes
the queued decisions first, as the gateway's ``/metrics/prometheus`` does in single-process
mode.  Multiprocess mode runs in subprocesses with their own ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpex.framework import GlobalContext, PluginConfig, ToolPostInvokePayload
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cpex_retry_with_backoff_wasm import ConfigurationError, RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm import metrics as m
from cpex_retry_with_backoff_wasm.keys import KEY_PART_MAX_CHARS, key_part

from .conftest import PLUGIN_KIND, err, ok

NO_JITTER: dict[str, Any] = {"jitter": False}
_names = itertools.count()
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def unique_name() -> str:
    return f"MetricsTest{next(_names)}"


def scrape(registry: CollectorRegistry = REGISTRY) -> Samples:
    """Every sample of a scrape: (sample name, labels) -> value."""
    text = generate_latest(registry).decode("utf-8")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((m.PREFIX + name, frozenset(labels.items())))


def of_plugin(samples: Samples, plugin: str) -> Samples:
    return {k: v for k, v in samples.items() if ("plugin", plugin) in k[1]}


def digest(name: str) -> str:
    """The label value of a tool name that is not its own (written out, not taken from the code)."""
    return "#sha256:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def tool_labels(samples: Samples) -> set[str]:
    return {dict(labels)["tool"] for (n, labels) in samples if n == m.PREFIX + "decisions_total"}


class StubEngine:
    """What the metrics read from an engine (``EngineCounters``), nothing else."""

    prometheus_metrics = True
    fault_count = rebuild_count = reload_count = 0

    def state_count(self) -> int:
        return 0


class Owner:
    """Stands for a plugin object: ``attach`` only watches it."""


def stanza(name: str, config: dict[str, Any]) -> str:
    doc = {
        "plugins": [
            {
                "name": name,
                "kind": PLUGIN_KIND,
                "hooks": ["tool_post_invoke"],
                "mode": "sequential",
                "priority": 170,
                "config": config,
            }
        ],
        "plugin_dirs": [],
        "plugin_settings": {"parallel_execution_within_band": False, "plugin_timeout": 30},
    }
    return yaml.safe_dump(doc, sort_keys=False)


Manager = Callable[..., Any]


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[Manager]:
    """A real cpex PluginManager loading one stanza named ``name``."""
    from cpex.framework import PluginManager

    made: list[Any] = []

    async def make(name: str, config: dict[str, Any], expect_plugins: int = 1) -> Any:
        PluginManager.reset()
        path = tmp_path / f"plugins-{len(made)}.yaml"
        path.write_text(stanza(name, config))
        mgr = PluginManager(str(path))
        await mgr.initialize()
        made.append(mgr)
        assert mgr.plugin_count == expect_plugins
        return mgr

    yield make
    for mgr in made:
        await mgr.shutdown()
    PluginManager.reset()


async def post(mgr: Any, tool: str, rid: str, result: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await mgr.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
    delay: int = res.retry_delay_ms
    return delay


# --------------------------------------------------------------------------- decisions
async def test_decisions_by_tool_and_reason_and_delays_in_seconds(manager: Manager) -> None:
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    assert [await post(mgr, "search", "r1", err(503)) for _ in range(3)] == [200, 400, 0]
    assert await post(mgr, "search", "r2", err(404)) == 0
    for i in range(5):  # successes of an idle engine: the host's shortcut, no Wasm call
        assert await post(mgr, "fetch", f"s{i}", ok()) == 0

    samples = of_plugin(scrape(), name)
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="retry") == 2
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="exhausted") == 1
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="non-retryable") == 1
    assert value(samples, "decisions_total", plugin=name, tool="fetch", reason="success") == 5
    assert value(samples, "retry_delay_seconds_count", plugin=name) == 2
    assert value(samples, "retry_delay_seconds_sum", plugin=name) == pytest.approx(0.6)
    assert value(samples, "retry_delay_seconds_bucket", plugin=name, le="0.1") == 0
    assert value(samples, "retry_delay_seconds_bucket", plugin=name, le="0.25") == 1
    assert value(samples, "retry_delay_seconds_bucket", plugin=name, le="0.5") == 2
    total = sum(v for (n, _), v in samples.items() if n == m.PREFIX + "decisions_total")
    assert total == 9, "every hook call is one decision"

    # A second scrape adds nothing: each decision is exported once.
    assert of_plugin(scrape(), name) == samples


async def test_tool_label_values_are_bounded(manager: Manager) -> None:
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    extra = 7
    for i in range(m.MAX_TOOL_LABELS + extra):
        await post(mgr, f"tool-{i}", "r", ok())
    await post(mgr, "tool-0", "r", ok())  # a labelled tool keeps its label
    await post(mgr, "tool-late", "r", ok())

    samples = of_plugin(scrape(), name)
    assert tool_labels(samples) == {f"tool-{i}" for i in range(m.MAX_TOOL_LABELS)} | {m.OTHER_TOOL}
    assert value(samples, "decisions_total", plugin=name, tool="tool-0", reason="success") == 2
    assert value(samples, "decisions_total", plugin=name, tool=m.OTHER_TOOL, reason="success") == extra + 1


async def test_budget_refusals_are_counted_by_tool(manager: Manager) -> None:
    name = unique_name()
    # The bucket starts with 10 tokens and, with no floor, refills only on successes.
    mgr = await manager(name, {**NO_JITTER, "retry_budget_percent": 10, "retry_budget_min_per_sec": 0})
    answers = [await post(mgr, "search", f"r{i}", err(503)) for i in range(12)]
    assert answers == [200] * 10 + [0, 0]

    samples = of_plugin(scrape(), name)
    assert value(samples, "budget_refusals_total", plugin=name, tool="search") == 2
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="budget") == 2
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="retry") == 10


async def test_live_retry_state_entries_gauge(manager: Manager) -> None:
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    assert await post(mgr, "search", "r1", err(503)) == 200
    assert await post(mgr, "search", "r2", err(503)) == 200
    assert value(scrape(), "retry_state_entries", plugin=name) == 2
    assert await post(mgr, "search", "r1", ok()) == 0  # a success clears its key
    assert value(scrape(), "retry_state_entries", plugin=name) == 1


async def test_a_tool_named_other_is_not_the_overflow_series(manager: Manager) -> None:
    """Issue 24 (3): the overflow label was ``other``, so a tool of that name shared its series."""
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    first = ["other", "#other", *(f"tool-{i}" for i in range(m.MAX_TOOL_LABELS - 2))]
    for tool in first:
        await post(mgr, tool, "r", ok())
    for i in range(3):
        await post(mgr, f"late-{i}", "r", ok())

    samples = of_plugin(scrape(), name)
    assert value(samples, "decisions_total", plugin=name, tool=m.OTHER_TOOL, reason="success") == 3
    assert value(samples, "decisions_total", plugin=name, tool="other", reason="success") == 1
    assert value(samples, "decisions_total", plugin=name, tool=digest("#other"), reason="success") == 1
    labels = {*first[2:], "other", digest("#other"), m.OTHER_TOOL}
    assert tool_labels(samples) == labels, "a name starting with # is digested, like a long one"


async def test_long_tool_names_are_digested_in_labels(manager: Manager) -> None:
    """Issue 24 (3): 20 tool names of 1 MB gave 40 MB of exposition.  A name over
    KEY_PART_MAX_CHARS is exported as the digest the engine's key part is."""
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    longest = "x" * KEY_PART_MAX_CHARS
    huge = ["y" * 1_000_000, "y" * 999_999 + "z"]  # differing only in the last character
    for tool in [longest, *huge]:
        assert await post(mgr, tool, "r", err(503)) == 200

    samples = of_plugin(scrape(), name)
    assert tool_labels(samples) == {longest, digest(huge[0]), digest(huge[1])}
    assert digest(huge[0]) == key_part(huge[0]), "the same digest as the engine's key part"
    assert value(samples, "decisions_total", plugin=name, tool=digest(huge[1]), reason="retry") == 1
    text = generate_latest(REGISTRY).decode()
    mine = [line for line in text.splitlines() if f'plugin="{name}"' in line]
    assert sum(map(len, mine)) < 10 * 1024, "a label value is at most KEY_PART_MAX_CHARS characters"


async def test_surrogate_tool_name_does_not_break_the_exposition(manager: Manager) -> None:
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    assert await post(mgr, "bad\udc80tool", "r", err(503)) == 200
    samples = of_plugin(scrape(), name)
    assert value(samples, "decisions_total", plugin=name, tool=digest("bad\udc80tool"), reason="retry") == 1


def test_the_tool_name_table_is_bounded_in_bytes() -> None:
    """Issue 24 (3): a plugin object kept up to MAX_TOOL_NAMES names of any size (2,000 names
    of 50 kB kept 93 MiB).  Now no name over KEY_PART_MAX_CHARS, and MAX_TOOL_NAME_BYTES in
    all; the names it has no room for are still counted, just found again on every call."""
    name = unique_name()
    owner = Owner()
    recorder = m.attach(owner, name, StubEngine())
    assert recorder is not None

    def record(tool: str) -> None:
        (recorder.queues.get(tool) or recorder.queue(tool))(0)  # the hook's line

    too_long = [f"{i:04d}".ljust(KEY_PART_MAX_CHARS + 1, "l") for i in range(20)]
    longest = [f"{i:05d}".ljust(KEY_PART_MAX_CHARS, "n") for i in range(m.MAX_TOOL_NAMES)]
    for tool in too_long + longest + too_long:
        record(tool)
    assert not recorder.queues.keys() & set(too_long)
    assert sum(map(sys.getsizeof, recorder.queues)) <= m.MAX_TOOL_NAME_BYTES
    assert len(recorder.queues) > m.MAX_TOOL_NAME_BYTES // (4 * KEY_PART_MAX_CHARS), "room for many"
    samples = of_plugin(scrape(), name)
    total = sum(v for (n, _), v in samples.items() if n == m.PREFIX + "decisions_total")
    assert total == 2 * len(too_long) + len(longest)


# --------------------------------------------------------------------------- faults, rebuilds, reloads
async def test_sandbox_faults_and_rebuilds(manager: Manager, faulty_wasm: Path) -> None:
    name = unique_name()
    mgr = await manager(name, {**NO_JITTER, "wasm_path": str(faulty_wasm)})
    assert await post(mgr, "search", "r", err(503)) == 200
    assert await post(mgr, "__fault_trap__", "r", err(503)) == 0
    assert await post(mgr, "__fault_spin__", "r", err(503)) == 0
    samples = of_plugin(scrape(), name)
    assert value(samples, "sandbox_faults_total", plugin=name) == 2
    assert value(samples, "rebuilds_total", plugin=name) == 2
    # A fault loses the instance's live state (docs/reliability.md): "search" holds nothing.
    assert value(samples, "retry_state_entries", plugin=name) == 0


def test_reloads(wasm_path: Path) -> None:
    name = unique_name()
    plugin = RetryWithBackoffPlugin(PluginConfig(name=name, kind=PLUGIN_KIND, hooks=["tool_post_invoke"]))
    assert value(scrape(), "reloads_total", plugin=name) is None
    plugin.reload()
    plugin.reload(str(wasm_path))
    assert value(scrape(), "reloads_total", plugin=name) == 2
    assert value(scrape(), "sandbox_faults_total", plugin=name) is None


async def test_counts_of_a_dropped_plugin_are_still_exported(manager: Manager) -> None:
    """The gateway drops plugin objects (its per-context managers expire): what they queued
    reaches the registry at the next flush, and then they are let go."""
    name = unique_name()
    mgr = await manager(name, NO_JITTER)
    assert await post(mgr, "search", "r", err(503)) == 200
    assert value(scrape(), "retry_state_entries", plugin=name) == 1
    assert await post(mgr, "search", "r", err(503)) == 400  # queued, not yet scraped
    await mgr.shutdown()
    from cpex.framework import PluginManager

    PluginManager.reset()
    del mgr
    gc.collect()
    samples = of_plugin(scrape(), name)
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="retry") == 2
    assert value(samples, "retry_state_entries", plugin=name) == 0, "no object of the name reports"


async def test_plugins_of_one_name_share_the_series(manager: Manager) -> None:
    name = unique_name()
    plugins = [
        RetryWithBackoffPlugin(
            PluginConfig(name=name, kind=PLUGIN_KIND, hooks=["tool_post_invoke"], config=NO_JITTER)
        )
        for _ in range(2)
    ]
    from cpex.framework import PluginContext

    for i, plugin in enumerate(plugins):
        payload = ToolPostInvokePayload(name="search", result=err(503))
        context = PluginContext(global_context=GlobalContext(request_id=f"r{i}"))
        assert (await plugin.tool_post_invoke(payload, context)).retry_delay_ms == 200
    assert plugins[0].policy is plugins[1].policy, "one configuration, one policy (issue 23)"
    samples = of_plugin(scrape(), name)
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="retry") == 2
    # Two keys in one shared engine: counted once, not once per plugin object.
    assert value(samples, "retry_state_entries", plugin=name) == 2


# --------------------------------------------------------------------------- the setting
async def test_off_switch_exports_nothing(manager: Manager) -> None:
    name = unique_name()
    mgr = await manager(name, {**NO_JITTER, "prometheus_metrics": False})
    assert await post(mgr, "search", "r", err(503)) == 200
    assert await post(mgr, "search", "r", ok()) == 0
    assert of_plugin(scrape(), name) == {}


@pytest.mark.parametrize("bad", ["yes", 1, None, [True]])
def test_setting_must_be_a_bool(bad: Any) -> None:
    config = PluginConfig(
        name=unique_name(),
        kind=PLUGIN_KIND,
        hooks=["tool_post_invoke"],
        config={"prometheus_metrics": bad, "max_retries": -1},
    )
    with pytest.raises(ConfigurationError) as info:
        RetryWithBackoffPlugin(config)
    text = str(info.value)
    assert f"prometheus_metrics: must be true or false, got {bad!r}" in text
    assert "max_retries" in text, "reported together with the engine's problems"


async def test_bad_setting_through_the_manager_loads_no_plugin(manager: Manager) -> None:
    await manager(unique_name(), {"prometheus_metrics": "off"}, expect_plugins=0)


# --------------------------------------------------------------------------- multiprocess mode
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from cpex.framework import GlobalContext, PluginManager, ToolPostInvokePayload
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.parser import text_string_to_metric_families

    PREFIX = "cpex_retry_wasm_"

    def exported(name, **labels):
        # What the gateway's /metrics/prometheus serves in multiprocess mode, read while alive.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry).decode()
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == PREFIX + name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    async def main(config_path, failures, total):
        manager = PluginManager(config_path)
        await manager.initialize()
        assert manager.plugin_count == 1
        delays = []
        for i in range(failures):
            payload = ToolPostInvokePayload(name="search", result={"isError": True})
            res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=f"r{i}"))
            delays.append(res.retry_delay_ms)
        def report():
            return {
                "retries": exported("decisions_total", reason="retry"),
                # Earlier workers exited with no plugin left: their files say 0.
                "entries": exported("retry_state_entries"),
            }

        deadline = time.monotonic() + 30
        while report() != {"retries": total, "entries": failures} and time.monotonic() < deadline:
            time.sleep(0.1)  # the flush thread's work
        print(json.dumps({"delays": delays, **report()}))
        sys.stdout.flush()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
)


def test_multiprocess_mode_sums_the_workers(tmp_path: Path) -> None:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    config_path = tmp_path / "plugins.yaml"
    name = "MultiprocessWorkers"
    config_path.write_text(stanza(name, NO_JITTER))
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    total = 0
    for failures in (3, 4):
        total += failures  # what the files hold once this worker's counts are written
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(config_path), str(failures), str(total)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, errs = proc.communicate(timeout=120)
        assert proc.returncode == 0, errs
        report = json.loads(out.strip().splitlines()[-1])
        assert report["delays"] == [200] * failures
        assert report["retries"] == total, "the flush thread did not write this worker's counts"
        assert report["entries"] == failures, "the flush thread did not sample this worker's state"

    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc))
    samples = scrape(registry)
    assert value(samples, "decisions_total", plugin=name, tool="search", reason="retry") == 7
    assert value(samples, "retry_delay_seconds_count", plugin=name) == 7
    assert value(samples, "retry_delay_seconds_sum", plugin=name) == pytest.approx(1.4)


FORK = textwrap.dedent(
    """
    import asyncio, os, sys
    from cpex.framework import GlobalContext, PluginConfig, PluginContext, ToolPostInvokePayload
    from prometheus_client import REGISTRY
    from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin

    def retries():
        return REGISTRY.get_sample_value(
            "cpex_retry_wasm_decisions_total", {"plugin": "Forked", "tool": "search", "reason": "retry"}
        ) or 0

    plugin = RetryWithBackoffPlugin(PluginConfig(name="Forked", kind="x", hooks=["tool_post_invoke"]))

    def fail(rid):
        payload = ToolPostInvokePayload(name="search", result={"isError": True})
        context = PluginContext(global_context=GlobalContext(request_id=rid))
        return asyncio.run(plugin.tool_post_invoke(payload, context)).retry_delay_ms

    assert all(fail(f"parent-{i}") > 0 for i in range(3))  # queued, not yet exported
    pid = os.fork()
    if pid == 0:
        before = retries()  # the parent's queue is the parent's to export
        fail("child")
        print("child", before, retries(), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    print("parent", retries(), flush=True)
    """
)


def test_a_forked_worker_exports_only_its_own_decisions(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", FORK], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0", "1.0", "parent", "3.0"]


BROKEN_DIR = textwrap.dedent(
    """
    import gc, json, logging, os, weakref
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.parser import text_string_to_metric_families
    from cpex_retry_with_backoff_wasm import metrics
    from cpex_retry_with_backoff_wasm.wire import REASON_SHIFT, REASONS

    class Engine:  # what the metrics read from an engine (EngineCounters), nothing else
        prometheus_metrics = True
        fault_count = rebuild_count = reload_count = 0

        def state_count(self):
            return 0

    class Owner:  # stands for a plugin object
        pass

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger(metrics.__name__).addHandler(handler)

    def flush():
        try:
            metrics.flush()
        except Exception as exc:
            return type(exc).__name__
        return None

    def record(recorder, tool, decision):
        (recorder.queues.get(tool) or recorder.queue(tool))(decision)  # the hook's line

    RETRY = (REASONS.index("retry") << REASON_SHIFT) | 200
    owners = [Owner() for _ in range(10)]
    engines = [Engine() for _ in range(10)]
    recorders = [metrics.attach(o, "BrokenDir", e) for o, e in zip(owners, engines)]
    for recorder in recorders:
        for tool in ("a", "b", "c"):
            for decision in [0] * 60 + [RETRY] * 40:
                record(recorder, tool, decision)
    raised = [flush(), flush()]
    queued = sum(len(q) for r in recorders for q in r.pending.values())

    # The plugin objects go (the gateway drops its managers every 30 s).
    refs = [weakref.ref(e) for e in engines]
    del owners, engines, recorders, recorder
    gc.collect()
    raised.append(flush())
    gc.collect()
    kept = sum(ref() is not None for ref in refs)

    # The directory is repaired: new decisions are exported, and so is the count of the dropped.
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.path.isfile(path):
        os.remove(path)
    os.makedirs(path, exist_ok=True)
    owner = Owner()
    record(metrics.attach(owner, "BrokenDir", Engine()), "a", 0)
    raised.append(flush())
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()

    def total(name):
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "cpex_retry_wasm_" + name and s.labels.get("plugin") == "BrokenDir"
        )

    print(json.dumps({
        "raised": raised,
        "queued": queued,
        "kept": kept,
        "warnings": [r.getMessage() for r in records if r.levelno >= logging.WARNING],
        "tracebacks": sum(r.exc_info is not None for r in records),
        "decisions": total("decisions_total"),
        "dropped": total("dropped_decisions_total"),
    }))
    """
)


@pytest.mark.parametrize(
    ("broken", "problem"), [("missing", "does not exist"), ("file", "is not a directory")]
)
def test_a_broken_multiprocess_dir_drops_and_counts_and_warns_once(
    tmp_path: Path, broken: str, problem: str
) -> None:
    """Issue 24 (2): with PROMETHEUS_MULTIPROC_DIR missing or a regular file, the first label
    whose file could not be opened made every flush raise: later queues were never drained,
    recorders of plugin objects already gone kept their engines, and the flush thread logged a
    traceback a second.  The flushes here are driven explicitly (the thread only adds more)."""
    multiproc = tmp_path / "prometheus"
    if broken == "file":
        multiproc.write_text("not a directory")
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [sys.executable, "-c", BROKEN_DIR], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["raised"] == [None] * 4, "a flush never raises"
    assert report["queued"] == 0, "every queue is drained, exported or not"
    assert report["kept"] == 0, "recorders of plugin objects that are gone are released"
    assert report["tracebacks"] == 0
    [warning] = report["warnings"]
    assert f"PROMETHEUS_MULTIPROC_DIR={str(multiproc)!r} {problem}" in warning
    assert "dropped_decisions_total" in warning
    assert report["decisions"] == 1, "exports resume once the directory works"
    assert report["dropped"] == 10 * 3 * 100, "every decision not exported is counted"
