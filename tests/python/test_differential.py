"""Differential test: this plugin against the native cpex-retry-with-backoff 0.3.11.

Both plugins get identical randomized sequences of tool results (jitter off, several tools and
request ids, random valid configs) and must return identical ``retry_delay_ms`` and metadata at
every step.  Skipped where the native plugin is not installed (it needs cpex >= 0.1.4).

Gateway contexts: the gateway builds one plugin object per context (team and tool, virtual
server, global), so the native plugin keeps each context's state apart by object; here every
object of one stanza and configuration shares one policy, which keeps state per context (tenant,
server) instead.  Both must decide alike.

Constraints of the native plugin the generators respect:
* it validates ``tool_overrides`` lazily (on first use of the tool) - only configs valid for
  both are generated;
* its state key is ``f"{tool}:{request_id}"`` - tool names never contain ``:``, or two keys
  could collide in the native plugin only.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from cpex.framework import (
    GlobalContext,
    PluginConfig,
    PluginContext,
    ResourcePostFetchPayload,
    ToolPostInvokePayload,
)
from cpex.framework.extensions.extensions import Extensions
from cpex.framework.extensions.request import RequestExtension
from cpex.framework.memory import CopyOnWriteDict

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin

native_module = pytest.importorskip(
    "cpex_retry_with_backoff", reason="cpex-retry-with-backoff==0.3.11 not installed"
)

pytestmark = pytest.mark.native

TOOLS = ["search", "fetch_url", "slow-api", "δelta✓", "x", ""]
REQUEST_IDS = ["r1", "r2", "req:with:colons", "✓-unicode", ""]
STATUS_POOL = [0, 1, -1, 200, 404, 408, 418, 429, 500, 502, 503, 504, 2**31 - 1, -(2**31)]


def text(body: Any, kind: Any = "text") -> dict[str, Any]:
    return {"type": kind, "text": body if isinstance(body, str) else json.dumps(body)}


RESULTS: list[Any] = [
    {"content": [text("ok")], "isError": False},
    {"content": [text("ok")], "isError": False, "structuredContent": {"value": 1}},
    {"isError": True},
    {"content": [text("upstream failed")], "isError": True},
    {"isError": True, "structuredContent": {"status_code": 503}},
    {"isError": True, "structuredContent": {"status_code": 404}},
    {"isError": True, "structuredContent": {"status_code": 429}},
    {"isError": True, "structuredContent": {"status_code": "503"}},
    {"isError": True, "structuredContent": {"status_code": 503.0}},
    {"isError": True, "structuredContent": {"status_code": True}},
    {"isError": True, "structuredContent": {"status_code": False}},
    {"isError": True, "structuredContent": {"status_code": 2**31}},
    {"isError": True, "structuredContent": {"status_code": -1}},
    {"isError": True, "structuredContent": None},
    {"isError": True, "structuredContent": [503]},
    {"isError": 1},
    {"isError": "true"},
    {"isError": None},
    {"structuredContent": {"isError": True}},
    {"structuredContent": {"isError": True, "status_code": 200}},
    {"structuredContent": {"isError": 1}},
    {"structuredContent": {"status_code": 500}},
    {"structuredContent": {"status_code": 502}},
    {"structuredContent": {"status_code": 418}},
    {"structuredContent": {"status_code": 0}},
    {"structuredContent": {"status_code": "500"}},
    {"structuredContent": {}},
    {"structuredContent": None, "content": [text({"isError": True})]},
    {"content": [text({"isError": True})]},
    {"content": [text({"isError": "true"})]},
    {"content": [text({"status_code": 503})]},
    {"content": [text({"status_code": 404})]},
    {"content": [text({"status_code": 418})]},
    {"content": [text({"status_code": 2**33 + 503})]},
    {"content": [text({"status_code": 503.0})]},
    {"content": [text({"status_code": "503"})]},
    {"content": [text("plain words"), text({"isError": True})]},
    {"content": [text({"isError": True}, kind="image")]},
    {"content": [text("[1, 2]")]},
    {"content": [text("{not json")]},
    {"content": [{"type": "text", "text": 5}]},
    {"content": [{"type": "text"}]},
    {"content": text({"isError": True})},
    {"content": [text({"isError": True})], "structuredContent": {}},
    {},
    None,
    "isError",
    42,
    [{"isError": True}],
]


def policy_fields(rng: random.Random, *, partial: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}

    def maybe(key: str, value: Any) -> None:
        if not partial or rng.random() < 0.4:
            fields[key] = value

    maybe("max_retries", rng.randint(0, 10))
    maybe("backoff_base_ms", rng.choice([1, 3, 50, 100, 200, 250, 1000, 5000]))
    maybe("max_backoff_ms", rng.choice([1, 100, 500, 1000, 5000, 7777, 60_000, 1_000_000]))
    statuses = rng.sample(STATUS_POOL, rng.randint(0, 6))
    if statuses and rng.random() < 0.2:
        statuses.append(statuses[0])  # duplicates are allowed
    maybe("retry_on_status", statuses)
    maybe("check_text_content", rng.random() < 0.5)
    if rng.random() < 0.3:
        fields["jitter"] = False
    return fields


def merged_valid(base: dict[str, Any], override: dict[str, Any]) -> bool:
    merged = {"backoff_base_ms": 200, "max_backoff_ms": 5000, **base, **override}
    return merged["max_backoff_ms"] >= merged["backoff_base_ms"]


def random_config(rng: random.Random) -> dict[str, Any]:
    while True:
        config = policy_fields(rng, partial=True)
        if merged_valid(config, {}):
            break
    config["jitter"] = False
    overrides = {}
    for tool in rng.sample(TOOLS, rng.randint(0, 3)):
        while True:
            override = policy_fields(rng, partial=True)
            if merged_valid(config, override):
                break
        overrides[tool] = override
    if overrides or rng.random() < 0.5:
        config["tool_overrides"] = overrides
    return config


def plugin_config(cls_kind: str, config: dict[str, Any]) -> PluginConfig:
    return PluginConfig(
        name="RetryWithBackoffPlugin",
        kind=cls_kind,
        hooks=["tool_post_invoke", "resource_post_fetch"],
        priority=170,
        config=json.loads(json.dumps(config)),  # independent copies
    )


def observed(res: Any) -> tuple[int, dict[str, Any]]:
    return res.retry_delay_ms, dict(res.metadata or {})


@pytest.mark.parametrize("seed", range(30))
async def test_identical_decisions_and_metrics(seed: int) -> None:
    rng = random.Random(seed)
    config = random_config(rng)
    native = native_module.RetryWithBackoffPlugin(
        plugin_config("cpex_retry_with_backoff.RetryWithBackoffPlugin", config)
    )
    ours = RetryWithBackoffPlugin(
        plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", config)
    )

    resource = ResourcePostFetchPayload(uri="file:///r", content="x")
    rctx = PluginContext(global_context=GlobalContext(request_id="res"))
    assert observed(await ours.resource_post_fetch(resource, rctx)) == observed(
        await native.resource_post_fetch(resource, rctx)
    ), config

    tools = rng.sample(TOOLS, rng.randint(2, len(TOOLS)))
    rids = rng.sample(REQUEST_IDS, rng.randint(1, 3))
    for step in range(250):
        tool, rid = rng.choice(tools), rng.choice(rids)
        # failures dominate so budgets run out; successes still interleave
        result = rng.choice(RESULTS[2:]) if rng.random() < 0.8 else rng.choice(RESULTS[:2])
        if isinstance(result, dict) and rng.random() < 0.5:
            result = CopyOnWriteDict(result)
        trace_id = rng.choice([None, "", "trace-abc"])
        ext = Extensions(request=RequestExtension(request_id=rid, trace_id=trace_id))
        payload = ToolPostInvokePayload(name=tool, result=result)
        context = PluginContext(global_context=GlobalContext(request_id=rid))
        want = observed(await native.tool_post_invoke(payload, context, ext))
        got = observed(await ours.tool_post_invoke(payload, context, ext))
        assert got == want, (
            f"seed={seed} step={step} tool={tool!r} rid={rid!r} result={result!r} config={config}"
        )
    assert ours.instance.fault_count == 0


#: (tenant_id, server_id) of the gateway contexts the per-context test spreads calls over.
CONTEXTS = [(None, None), ("team-a", None), ("team-b", None), ("team-a", "srv-1"), (None, "srv-1")]


@pytest.mark.parametrize("seed", range(10))
async def test_one_policy_decides_as_one_native_object_per_context(seed: int) -> None:
    rng = random.Random(1000 + seed)
    config = random_config(rng)
    natives = {
        ctx: native_module.RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff.RetryWithBackoffPlugin", config)
        )
        for ctx in CONTEXTS
    }
    ours = {
        ctx: RetryWithBackoffPlugin(
            plugin_config("cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin", config)
        )
        for ctx in CONTEXTS
    }
    assert len({plugin.policy.id for plugin in ours.values()}) == 1, "one stanza and config: one policy"

    tools = rng.sample(TOOLS, rng.randint(2, 4))
    # The same request ids in every context: only the context tells their keys apart.
    rids = rng.sample(REQUEST_IDS, 2)
    for step in range(300):
        ctx = rng.choice(CONTEXTS)
        tool, rid = rng.choice(tools), rng.choice(rids)
        result = rng.choice(RESULTS[2:]) if rng.random() < 0.8 else rng.choice(RESULTS[:2])
        trace_id = rng.choice([None, "trace-abc"])
        ext = Extensions(request=RequestExtension(request_id=rid, trace_id=trace_id))
        payload = ToolPostInvokePayload(name=tool, result=result)
        global_context = GlobalContext(request_id=rid, tenant_id=ctx[0], server_id=ctx[1])
        want = observed(
            await natives[ctx].tool_post_invoke(payload, PluginContext(global_context=global_context), ext)
        )
        got = observed(
            await ours[ctx].tool_post_invoke(payload, PluginContext(global_context=global_context), ext)
        )
        assert got == want, (
            f"seed={seed} step={step} context={ctx} tool={tool!r} rid={rid!r} result={result!r}"
        )
    assert ours[CONTEXTS[0]].instance.fault_count == 0
