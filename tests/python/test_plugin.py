"""plugin.py through the real cpex PluginManager, loading the gateway's stanza from YAML."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpex.framework import (
    GlobalContext,
    PluginContext,
    ResourcePostFetchPayload,
    ToolPostInvokePayload,
)
from cpex.framework.extensions.extensions import Extensions
from cpex.framework.extensions.request import RequestExtension
from cpex.framework.memory import CopyOnWriteDict

from cpex_retry_with_backoff_wasm import Instance, RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.plugin import read_trace_id
from cpex_retry_with_backoff_wasm.settings import DEFAULT_FUEL

from .conftest import PLUGIN_KIND, PLUGIN_NAME, VirtualClock, direct_plugin, err, ok

NO_JITTER = {"jitter": False}


def extensions(trace_id: str | None) -> Extensions:
    return Extensions(request=RequestExtension(request_id="x", trace_id=trace_id))


async def post(manager: Any, tool: str, rid: str, result: Any, trace_id: str | None = None) -> Any:
    payload = ToolPostInvokePayload(name=tool, result=result)
    ext = extensions(trace_id) if trace_id is not None else None
    res, _ = await manager.invoke_hook(
        "tool_post_invoke", payload, GlobalContext(request_id=rid), extensions=ext
    )
    return res


async def delays(manager: Any, tool: str, rid: str, results: list[Any]) -> list[int]:
    return [(await post(manager, tool, rid, r)).retry_delay_ms for r in results]


async def call(
    plugin: RetryWithBackoffPlugin, tool: str, rid: str, result: Any, trace_id: str | None = None
) -> Any:
    payload = ToolPostInvokePayload(name=tool, result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid))
    return await plugin.tool_post_invoke(payload, context, extensions(trace_id) if trace_id else None)


# --------------------------------------------------------------------------- behaviour
async def test_success_never_retries(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    res = await post(manager, "search", "r1", ok())
    assert res.retry_delay_ms == 0
    assert "retry_with_backoff" not in (res.metadata or {})
    assert res.continue_processing


async def test_backoff_exhaustion_and_fresh_budget(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    assert await delays(manager, "search", "r1", [err()] * 7) == [200, 400, 0, 200, 400, 0, 200]


async def test_success_resets_the_budget(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    assert await delays(manager, "search", "r1", [err(), err(), ok(), err()]) == [200, 400, 0, 200]


async def test_overrides_apply_per_tool(manager_factory: Any) -> None:
    manager = await manager_factory(
        {
            "jitter": False,
            "max_retries": 3,
            "tool_overrides": {
                "slow-api": {"backoff_base_ms": 1000, "max_backoff_ms": 1500},
                "strict": {"max_retries": 1, "retry_on_status": [503]},
            },
        }
    )
    assert await delays(manager, "slow-api", "r", [err()] * 5) == [1000, 1500, 1500, 0, 1000]
    assert await delays(manager, "strict", "r", [err(503), err(503), err(500)]) == [200, 0, 0]
    assert await delays(manager, "other", "r", [err(500)] * 4) == [200, 400, 800, 0]


async def test_max_retries_zero(manager_factory: Any) -> None:
    manager = await manager_factory({"max_retries": 0})
    assert await delays(manager, "t", "r", [err(), err()]) == [0, 0]


async def test_independent_tools_and_requests(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    assert await delays(manager, "a", "r1", [err()]) == [200]
    assert await delays(manager, "b", "r1", [err()]) == [200]
    assert await delays(manager, "a", "r2", [err()]) == [200]
    assert await delays(manager, "a", "r1", [err()]) == [400]


async def test_jitter_on_by_default_stays_in_range(manager_factory: Any) -> None:
    manager = await manager_factory({"max_retries": 10, "max_backoff_ms": 100_000})
    got = await delays(manager, "t", "r", [err()] * 10)
    ceilings = [min(200 * 2**i, 100_000) for i in range(10)]
    assert all(1 <= d <= c for d, c in zip(got, ceilings, strict=True))


# --------------------------------------------------------------------------- metrics
async def test_trace_metrics_when_traced(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    seen = []
    for result in [err(), err(), err(), ok()]:
        res = await post(manager, "t", "r", result, trace_id="trace-1")
        seen.append(res.metadata["retry_with_backoff"])
    assert seen == [
        {"retry_count": 1, "retry_delay_ms": 200},
        {"retry_count": 2, "retry_delay_ms": 400},
        {"retry_count": 3, "retry_delay_ms": 0},
        {"retry_count": 0, "retry_delay_ms": 0},
    ]


@pytest.mark.parametrize("trace_id", [None, ""])
async def test_no_metrics_without_trace_id(manager_factory: Any, trace_id: str | None) -> None:
    manager = await manager_factory(NO_JITTER)
    res = await post(manager, "t", "r", err(), trace_id=trace_id)
    assert res.retry_delay_ms == 200
    assert "retry_with_backoff" not in (res.metadata or {})


class Boom:
    @property
    def request(self) -> Any:
        raise RuntimeError("no request slot")


class Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    ("ext", "expected"),
    [
        (None, None),
        (Obj(), None),
        (Obj(request=None), None),
        (Obj(request=Obj()), None),
        (Obj(request=Obj(trace_id=None)), None),
        (Obj(request=Obj(trace_id="")), None),
        (Obj(request=Obj(trace_id=123)), None),
        (Obj(request=Obj(trace_id="abc")), "abc"),
        (Boom(), None),
    ],
)
def test_read_trace_id_is_best_effort(ext: Any, expected: str | None) -> None:
    assert read_trace_id(ext) == expected


async def test_legacy_two_argument_call() -> None:
    plugin = direct_plugin(NO_JITTER)
    payload = ToolPostInvokePayload(name="t", result=err())
    context = PluginContext(global_context=GlobalContext(request_id="r"))
    res = await plugin.tool_post_invoke(payload, context)
    assert res.retry_delay_ms == 200
    assert res.metadata == {}


# --------------------------------------------------------------------------- resources
async def test_resource_post_fetch_reports_global_policy(manager_factory: Any) -> None:
    manager = await manager_factory(
        {
            "max_retries": 4,
            "backoff_base_ms": 50,
            "retry_on_status": [503, 429],
            "tool_overrides": {"t": {"max_retries": 1}},
        }
    )
    payload = ResourcePostFetchPayload(uri="file:///x", content={"text": "hi"})
    res, _ = await manager.invoke_hook("resource_post_fetch", payload, GlobalContext(request_id="r"))
    assert res.metadata["retry_policy"] == {
        "max_retries": 4,
        "backoff_base_ms": 50,
        "max_backoff_ms": 5000,
        "retry_on_status": [503, 429],
    }
    # callers get their own copy
    res.metadata["retry_policy"]["retry_on_status"].append(1)
    res2, _ = await manager.invoke_hook("resource_post_fetch", payload, GlobalContext(request_id="r"))
    assert res2.metadata["retry_policy"]["retry_on_status"] == [503, 429]


async def test_resource_hook_only_stanza(manager_factory: Any) -> None:
    manager = await manager_factory({}, hooks=("resource_post_fetch",))
    res = await post(manager, "t", "r", err())
    assert res.retry_delay_ms == 0  # no tool hook registered


# --------------------------------------------------------------------------- result shapes
TEXT_ERR = {"type": "text", "text": '{"isError": true}'}
TEXT_503 = {"type": "text", "text": '{"status_code": 503}'}
TEXT_404 = {"type": "text", "text": '{"status_code": 404}'}
CHECK = {"jitter": False, "check_text_content": True}

SHAPES: list[tuple[str, dict[str, Any], Any, bool]] = [
    ("isError True", NO_JITTER, {"isError": True}, True),
    ("isError True, status in list", NO_JITTER, err(503), True),
    ("isError True, status not in list", NO_JITTER, err(404), False),
    (
        "isError True, status str",
        NO_JITTER,
        {"isError": True, "structuredContent": {"status_code": "404"}},
        True,
    ),
    (
        "isError True, status float",
        NO_JITTER,
        {"isError": True, "structuredContent": {"status_code": 404.0}},
        True,
    ),
    (
        "isError True, status bool",
        NO_JITTER,
        {"isError": True, "structuredContent": {"status_code": True}},
        False,
    ),
    (
        "isError True, status huge",
        NO_JITTER,
        {"isError": True, "structuredContent": {"status_code": 2**40}},
        True,
    ),
    ("isError True, sc None", NO_JITTER, {"isError": True, "structuredContent": None}, True),
    ("isError 1", NO_JITTER, {"isError": 1}, False),
    ("isError 'true'", NO_JITTER, {"isError": "true"}, False),
    ("isError False", NO_JITTER, {"isError": False}, False),
    ("sc isError True", NO_JITTER, {"structuredContent": {"isError": True}}, True),
    (
        "sc isError True + ok status",
        NO_JITTER,
        {"structuredContent": {"isError": True, "status_code": 200}},
        True,
    ),
    ("sc isError 1", NO_JITTER, {"structuredContent": {"isError": 1}}, False),
    ("sc status in list", NO_JITTER, {"structuredContent": {"status_code": 502}}, True),
    ("sc status not in list", NO_JITTER, {"structuredContent": {"status_code": 200}}, False),
    ("sc status str", NO_JITTER, {"structuredContent": {"status_code": "502"}}, False),
    (
        "custom retry_on_status",
        {"jitter": False, "retry_on_status": [418]},
        {"structuredContent": {"status_code": 418}},
        True,
    ),
    ("custom list drops 503", {"jitter": False, "retry_on_status": [418]}, err(503), False),
    ("text unchecked by default", NO_JITTER, {"content": [TEXT_ERR]}, False),
    ("text isError", CHECK, {"content": [TEXT_ERR]}, True),
    ("text status", CHECK, {"content": [TEXT_503]}, True),
    ("text status not in list", CHECK, {"content": [TEXT_404]}, False),
    ("text second item", CHECK, {"content": [{"type": "text", "text": "plain"}, TEXT_ERR]}, True),
    ("text isError not bool", CHECK, {"content": [{"type": "text", "text": '{"isError": "true"}'}]}, False),
    ("text status as str", CHECK, {"content": [{"type": "text", "text": '{"status_code": "503"}'}]}, False),
    ("text not an object", CHECK, {"content": [{"type": "text", "text": "[503]"}]}, False),
    ("text invalid json", CHECK, {"content": [{"type": "text", "text": "{isError: true}"}]}, False),
    ("text other type", CHECK, {"content": [{"type": "resource", "text": '{"isError": true}'}]}, False),
    ("text with sc present", CHECK, {"content": [TEXT_ERR], "structuredContent": {}}, False),
    ("text with sc None", CHECK, {"content": [TEXT_ERR], "structuredContent": None}, True),
    ("content not a list", CHECK, {"content": TEXT_ERR}, False),
    ("empty result", NO_JITTER, {}, False),
]


@pytest.mark.parametrize(
    ("config", "result", "is_failure"), [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES]
)
async def test_result_shapes(
    manager_factory: Any, config: dict[str, Any], result: Any, is_failure: bool
) -> None:
    manager = await manager_factory(config)
    assert (await post(manager, "t", "r", result)).retry_delay_ms == (200 if is_failure else 0)


@pytest.mark.parametrize("result", [None, "isError", 42, [{"isError": True}], ("isError",)], ids=repr)
async def test_non_mapping_results_are_never_failures(result: Any) -> None:
    plugin = direct_plugin(NO_JITTER)
    assert (await call(plugin, "t", "r", result)).retry_delay_ms == 0


async def test_copy_on_write_results() -> None:
    plugin = direct_plugin(CHECK)
    assert (await call(plugin, "t", "r", CopyOnWriteDict({"isError": True}))).retry_delay_ms == 200
    rewritten = CopyOnWriteDict({"isError": False})
    rewritten["isError"] = True  # an earlier plugin's write lives in the overlay
    assert (await call(plugin, "t", "r", rewritten)).retry_delay_ms == 400
    nested = CopyOnWriteDict({"content": [TEXT_ERR]})
    assert (await call(plugin, "t", "r2", nested)).retry_delay_ms == 200


async def test_manager_hands_the_plugin_copy_on_write_results(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[type] = []
    original = Instance.decide

    def spy(self: Instance, policy: Any, tool: Any, global_context: Any, result: Any, *rest: Any) -> int:
        seen.append(type(result))
        return original(self, policy, tool, global_context, result, *rest)

    # Before the manager builds the plugin, which binds `instance.decide` once.
    monkeypatch.setattr(Instance, "decide", spy)
    manager = await manager_factory(NO_JITTER)
    assert (await post(manager, "t", "r", err())).retry_delay_ms == 200
    assert seen == [CopyOnWriteDict]


async def test_result_passes_through_unchanged(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    result = err(503)
    res = await post(manager, "t", "r", result)
    assert res.modified_payload is None
    assert result == err(503)


# --------------------------------------------------------------------------- ceiling
async def test_ceiling_from_env(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", "1")
    with caplog.at_level(logging.WARNING, logger="cpex_retry_with_backoff_wasm"):
        manager = await manager_factory(
            {"jitter": False, "max_retries": 5, "tool_overrides": {"t2": {"max_retries": 4}}}
        )
    assert await delays(manager, "t", "r", [err(), err(), err()]) == [200, 0, 200]
    assert await delays(manager, "t2", "r", [err(), err()]) == [200, 0]
    # The engine lowers every max_retries above the ceiling, with a warning at its key path;
    # the host logs each one naming where the ceiling came from.
    messages = [r.getMessage() for r in caplog.records]
    ceiling = "exceeds the gateway's retry ceiling (max_tool_retries = 1); lowered to 1"
    source = "(MAX_TOOL_RETRIES environment variable)"
    assert any(f"max_retries: 5 {ceiling}" in m and source in m for m in messages)
    assert any(f"tool_overrides.t2.max_retries: 4 {ceiling}" in m and source in m for m in messages)
    plugin = manager.get_plugin(PLUGIN_NAME)
    assert plugin.policy.global_policy.max_retries == 1
    assert plugin.policy.tool_policy("t2").max_retries == 1


async def test_ceiling_clamps_the_default_budget(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", "1")
    manager = await manager_factory(NO_JITTER)
    assert await delays(manager, "t", "r", [err(), err()]) == [200, 0]


async def test_no_ceiling_source_no_clamp(manager_factory: Any) -> None:
    manager = await manager_factory({"jitter": False, "max_retries": 5})
    assert await delays(manager, "t", "r", [err()] * 6) == [200, 400, 800, 1600, 3200, 0]


# --------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"max_retries": 11}, "max_retries"),
        ({"backoff_base_ms": 0}, "backoff_base_ms"),
        ({"tool_overrides": {"search": {"max_backoff_ms": 100}}}, "tool_overrides.search.max_backoff_ms"),
        ({"wasm_fuel": -1}, "wasm_fuel"),
    ],
)
async def test_config_errors_skip_the_plugin(
    manager_factory: Any, caplog: pytest.LogCaptureFixture, config: dict[str, Any], path: str
) -> None:
    with caplog.at_level(logging.ERROR):
        await manager_factory(config, expect_plugins=0)
    assert any(f"{path}: " in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match=f"invalid configuration: .*{path}: "):
        direct_plugin(config)


@pytest.mark.parametrize(
    "config",
    [
        {"wasm_fuel": -1, "max_retries": 3},
        {"prometheus_metrics": "yes", "max_retries": 4},
        {"tool_overrides": {"send": {"non_idempotent_retries": "none"}}},  # without tool_pre_invoke
    ],
    ids=["host-key", "metrics-key", "hooks"],
)
def test_a_refused_configuration_opens_no_policy(config: dict[str, Any]) -> None:
    plugin = direct_plugin(NO_JITTER)
    assert plugin.instance.policy_count() == 1
    with pytest.raises(ValueError, match="invalid configuration"):
        direct_plugin(config)
    assert plugin.instance.policy_count() == 1


async def test_corrupt_wasm_skips_the_plugin(
    manager_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\x00asm\x01\x00\x00\x00garbage")
    with caplog.at_level(logging.ERROR):
        await manager_factory({"wasm_path": str(corrupt)}, expect_plugins=0)
    assert any("corrupt.wasm is not a valid WebAssembly component" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- faults
async def test_trap_mid_sequence_answers_no_retry_and_recovers(
    manager_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = await manager_factory(NO_JITTER)
    plugin = manager.get_plugin(PLUGIN_NAME)
    assert await delays(manager, "t", "r", [err()]) == [200]
    plugin.instance.fuel_per_call = 50
    with caplog.at_level(logging.ERROR, logger="cpex_retry_with_backoff_wasm.sandbox"):
        res = await post(manager, "t", "r", err())
    assert res.retry_delay_ms == 0
    assert res.continue_processing
    assert res.modified_payload is None
    assert any("decide-held failed" in r.getMessage() for r in caplog.records)
    plugin.instance.fuel_per_call = DEFAULT_FUEL
    assert await delays(manager, "t", "r", [err(), err()]) == [200, 400]


async def test_tiny_fuel_from_config_fails_at_construction() -> None:
    with pytest.raises(RuntimeError, match=r"retry-engine@0\.5\.0: (cannot instantiate|cannot start)"):
        direct_plugin({"wasm_fuel": 1})


# --------------------------------------------------------------------------- TTL
@pytest.mark.parametrize(
    ("extra_ms", "expected"), [(-1, 400), (0, 400), (1, 200)], ids=["ttl-1", "ttl", "ttl+1"]
)
async def test_ttl_through_the_plugin(extra_ms: int, expected: int) -> None:
    clock = VirtualClock()
    plugin = direct_plugin({"jitter": False, "state_ttl_ms": 30_000}, clock=clock, seed=(3, 4))
    assert (await call(plugin, "t", "r", err())).retry_delay_ms == 200
    clock.advance_ms(30_000 + extra_ms)
    assert (await call(plugin, "t", "r", err())).retry_delay_ms == expected


async def test_default_ttl_through_the_plugin() -> None:
    clock = VirtualClock()
    plugin = direct_plugin(NO_JITTER, clock=clock, seed=(3, 4))
    await call(plugin, "t", "r", err())
    clock.advance_ms(300_001)
    assert (await call(plugin, "t", "r", err())).retry_delay_ms == 200


# --------------------------------------------------------------------------- concurrency
def scripted(worker: int) -> list[tuple[str, str, Any]]:
    """A deterministic per-worker script; each (tool, request id) key belongs to one worker."""
    script = []
    for i in range(60):
        tool = f"tool{(worker + i) % 3}"
        rid = f"w{worker}-r{i % 4}"
        result = ok() if (i * 7 + worker) % 5 == 0 else err(503 if i % 2 else None)
        script.append((tool, rid, result))
    return script


async def run_script(plugin: RetryWithBackoffPlugin, worker: int) -> list[tuple[str, str, int]]:
    out = []
    for tool, rid, result in scripted(worker):
        res = await call(plugin, tool, rid, result)
        out.append((tool, rid, res.retry_delay_ms))
        await asyncio.sleep(0)  # interleave with the other tasks
    return out


def per_key(rows: list[tuple[str, str, int]]) -> dict[tuple[str, str], list[int]]:
    keyed: dict[tuple[str, str], list[int]] = {}
    for tool, rid, delay in rows:
        keyed.setdefault((tool, rid), []).append(delay)
    return keyed


async def test_concurrent_tasks_and_threads_match_a_sequential_run() -> None:
    config = {"jitter": False, "max_retries": 3}
    task_workers, thread_workers = range(8), range(8, 12)

    # The same stanza name and configuration would share the policy and its state: the
    # reference run gets its own policy under another stanza name.
    sequential = direct_plugin(config, name="Reference")
    expected: dict[int, dict[tuple[str, str], list[int]]] = {}
    for w in [*task_workers, *thread_workers]:
        expected[w] = per_key(await run_script(sequential, w))

    shared = direct_plugin(config)
    got: dict[int, dict[tuple[str, str], list[int]]] = {}
    errors: list[BaseException] = []

    def thread_main(w: int) -> None:
        try:
            got[w] = per_key(asyncio.run(run_script(shared, w)))
        except BaseException as exc:  # pragma: no cover - asserted empty below
            errors.append(exc)

    threads = [threading.Thread(target=thread_main, args=(w,)) for w in thread_workers]
    for t in threads:
        t.start()
    results = await asyncio.gather(*(run_script(shared, w) for w in task_workers))
    for t in threads:
        t.join()
    assert not errors
    for w, rows in zip(task_workers, results, strict=True):
        got[w] = per_key(rows)
    assert got == expected
    assert sequential.policy.id != shared.policy.id
    assert shared.instance.fault_count == 0


# --------------------------------------------------------------------------- packaging
def test_entry_point_and_top_level_import() -> None:
    eps = importlib.metadata.entry_points(group="cpex.plugins")
    ours = [ep for ep in eps if ep.value.startswith("cpex_retry_with_backoff_wasm")]
    assert len(ours) == 1
    assert ours[0].load() is RetryWithBackoffPlugin
    import cpex_retry_with_backoff_wasm

    assert cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin is RetryWithBackoffPlugin


def test_manifest_matches_native_defaults() -> None:
    text = resources.files("cpex_retry_with_backoff_wasm").joinpath("plugin-manifest.yaml").read_text()
    manifest = yaml.safe_load(text)
    assert manifest["kind"] == PLUGIN_KIND
    # The native plugin's two only: cpex builds a stanza's hooks from this list, and the no-op
    # tool_pre_invoke should run only where non_idempotent_retries needs it.
    assert manifest["available_hooks"] == ["tool_post_invoke", "resource_post_fetch"]
    assert manifest["default_configs"] == {
        "max_retries": 2,
        "backoff_base_ms": 200,
        "max_backoff_ms": 5000,
        "retry_on_status": [429, 500, 502, 503, 504],
        "jitter": True,
        "check_text_content": False,
        "tool_overrides": {},
    }
    assert resources.files("cpex_retry_with_backoff_wasm").joinpath("py.typed").is_file()
    try:
        native = resources.files("cpex_retry_with_backoff").joinpath("plugin-manifest.yaml").read_text()
    except ModuleNotFoundError:
        return
    assert yaml.safe_load(native)["default_configs"] == manifest["default_configs"]


async def test_manifest_defaults_as_config_equal_empty_config() -> None:
    text = resources.files("cpex_retry_with_backoff_wasm").joinpath("plugin-manifest.yaml").read_text()
    from_manifest = direct_plugin(yaml.safe_load(text)["default_configs"])
    empty = direct_plugin({})
    assert from_manifest.policy.global_policy == empty.policy.global_policy
    assert from_manifest.policy.tool_policy("t") == empty.policy.tool_policy("t")
