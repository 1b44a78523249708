"""Non-idempotent tools (issue 15 §1) through the real cpex ``PluginManager``, fed the way the
gateway feeds it (1.0.7 and 1.1.0, ``ToolService``): the tool's record in
``global_context.metadata["tool"]`` before ``tool_pre_invoke``, the local contexts that hook
returns passed on to ``tool_post_invoke``, and on a timeout the state ``cb_timeout_failure`` set
on each of them first and a synthesized error result.
"""

from __future__ import annotations

from typing import Any

import pytest
from cpex.framework import (
    GlobalContext,
    PluginConfig,
    PluginContext,
    ToolPostInvokePayload,
    ToolPreInvokePayload,
)
from cpex.framework.extensions.extensions import Extensions
from cpex.framework.extensions.request import RequestExtension
from pydantic import BaseModel

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.model import ConfigurationError

from .conftest import PLUGIN_KIND, PLUGIN_NAME, direct_plugin, err, ok

HOOKS = ("tool_pre_invoke", "tool_post_invoke")
THROTTLED = {"jitter": False, "non_idempotent_retries": "throttled", "metrics_reason": True}
#: What the gateway hands ``tool_post_invoke`` after ``TOOL_TIMEOUT`` (``ToolResult.model_dump``).
TIMED_OUT = {
    "content": [{"type": "text", "text": "Tool invocation timed out after 1s"}],
    "structuredContent": None,
    "isError": True,
}


class ToolRecord(BaseModel):
    """The shape of the gateway's ``mcpgateway.common.models.Tool`` that matters here."""

    name: str
    annotations: dict[str, Any] | None = None


READ_ONLY = ToolRecord(name="get", annotations={"readOnlyHint": True, "destructiveHint": False})
UNANNOTATED = ToolRecord(name="send", annotations={})


class Call:
    """One tool call through the manager, attempt by attempt, as the gateway makes it."""

    def __init__(self, manager: Any, tool: str, rid: str, record: Any) -> None:
        self.manager, self.tool, self.rid = manager, tool, rid
        self.global_context = GlobalContext(request_id=rid)
        if record is not None:
            self.global_context.metadata["tool"] = record
        self.contexts: Any = None
        self.reasons: list[str] = []

    async def attempt(self, result: Any, *, timed_out: bool = False) -> int:
        """One attempt: pre-invoke, then post-invoke with ``result``; the delay asked."""
        _, self.contexts = await self.manager.invoke_hook(
            "tool_pre_invoke",
            ToolPreInvokePayload(name=self.tool, args={}),
            self.global_context,
            local_contexts=self.contexts,
        )
        if timed_out:
            for ctx in self.contexts.values():
                ctx.set_state("cb_timeout_failure", True)
        ext = Extensions(request=RequestExtension(request_id=self.rid, trace_id="trace-1"))
        res, self.contexts = await self.manager.invoke_hook(
            "tool_post_invoke",
            ToolPostInvokePayload(name=self.tool, result=result),
            self.global_context,
            local_contexts=self.contexts,
            extensions=ext,
        )
        self.reasons.append(res.metadata["retry_with_backoff"].get("reason", ""))
        return int(res.retry_delay_ms)


async def test_a_read_only_tool_that_times_out_is_retried_an_unannotated_one_is_not(
    manager_factory: Any,
) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    get = Call(manager, "get", "r1", READ_ONLY)
    assert [await get.attempt(TIMED_OUT, timed_out=True) for _ in range(3)] == [200, 400, 0]
    assert get.reasons == ["retry", "retry", "exhausted"]
    send = Call(manager, "send", "r2", UNANNOTATED)
    assert await send.attempt(TIMED_OUT, timed_out=True) == 0
    assert send.reasons == ["non-idempotent"]


async def test_an_unannotated_tool_is_retried_only_when_the_call_was_refused(manager_factory: Any) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    send = Call(manager, "send", "r", UNANNOTATED)
    assert await send.attempt(err(429)) == 200
    assert await send.attempt(err(503)) == 0
    assert send.reasons == ["retry", "non-idempotent"]
    # A 503 is a refusal only with a delay hint (read although honor_retry_after is off).
    hinted = err(503, structuredContent={"status_code": 503, "retry_after_ms": 5})
    assert await Call(manager, "send", "r", UNANNOTATED).attempt(hinted) == 200
    assert await Call(manager, "send", "r", UNANNOTATED).attempt(ok()) == 0
    # Refused: the key is cleared, as on exhaustion.
    assert manager.get_plugin(PLUGIN_NAME).policy.state_count() == 0
    for result in (err(), err(500), ok(isError=True)):
        assert await Call(manager, "send", "other", None).attempt(result) == 0


async def test_the_timeout_mark_is_taken_as_it_is_read(manager_factory: Any) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    call = Call(manager, "get", "r", READ_ONLY)
    assert await call.attempt(TIMED_OUT, timed_out=True) == 200
    assert all("cb_timeout_failure" not in ctx.state for ctx in call.contexts.values())
    # The next attempt of the call, through the same local contexts, is not a timeout: a 429
    # of a tool that is not idempotent (the record changed, so that the mark would matter) is a
    # refusal to retry, not a timeout to give up on.
    call.global_context.metadata["tool"] = ToolRecord(name="get", annotations={})
    assert await call.attempt(err(429)) == 400


async def test_configured_idempotent_overrides_the_annotations(manager_factory: Any) -> None:
    config = {
        **THROTTLED,
        "tool_overrides": {"get": {"idempotent": False}, "send": {"idempotent": True}},
    }
    manager = await manager_factory(config, hooks=HOOKS)
    assert await Call(manager, "get", "r", READ_ONLY).attempt(TIMED_OUT, timed_out=True) == 0
    assert await Call(manager, "send", "r", UNANNOTATED).attempt(TIMED_OUT, timed_out=True) == 200


async def test_none_never_retries_a_non_idempotent_tool(manager_factory: Any) -> None:
    manager = await manager_factory({"jitter": False, "non_idempotent_retries": "none"}, hooks=HOOKS)
    assert await Call(manager, "send", "r", UNANNOTATED).attempt(err(429)) == 0
    assert await Call(manager, "get", "r", READ_ONLY).attempt(err(429)) == 200


async def test_the_default_retries_every_tool_as_the_native_plugin_does(manager_factory: Any) -> None:
    manager = await manager_factory({"jitter": False}, hooks=HOOKS)
    send = Call(manager, "send", "r", UNANNOTATED)
    assert await send.attempt(TIMED_OUT, timed_out=True) == 200
    assert await send.attempt(err(503)) == 400
    # Without the pre-invoke hook, the native plugin's stanza, too.
    manager = await manager_factory({"jitter": False})
    payload = ToolPostInvokePayload(name="send", result=TIMED_OUT)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id="r2"))
    assert res.retry_delay_ms == 200


@pytest.mark.parametrize(
    "record",
    [
        {"name": "get", "annotations": {"readOnlyHint": True}},
        {"name": "get", "annotations": {"idempotentHint": True, "readOnlyHint": False}},
        ToolRecord(name="get", annotations={"idempotentHint": True}),
    ],
)
async def test_annotations_are_read_from_a_record_or_a_mapping(manager_factory: Any, record: Any) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    assert await Call(manager, "get", "r", record).attempt(TIMED_OUT, timed_out=True) == 200


class Hostile:
    """A tool record (of the tool decided) whose annotations raise."""

    name = "get"

    @property
    def annotations(self) -> Any:
        raise RuntimeError("no annotations")

    def __repr__(self) -> str:
        return "Hostile()"


@pytest.mark.parametrize(
    "record",
    [
        Hostile(),
        "get",
        42,
        {"name": "get", "annotations": None},
        {"name": "get", "annotations": ["readOnlyHint"]},
        {"name": "get", "annotations": {"readOnlyHint": "true"}},
        {"name": "get", "annotations": {"readOnlyHint": 1}},
        {"name": "get", "annotations": {"idempotentHint": None}},
        {"name": "get", "annotations": {"destructiveHint": True, "openWorldHint": True}},
        {"name": "get", "annotations": {"destructiveHint": False, "openWorldHint": False}},
        ToolRecord(name="get"),
    ],
)
async def test_anything_but_a_true_annotation_reads_as_not_idempotent(
    manager_factory: Any, record: Any
) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    call = Call(manager, "get", "r", record)
    assert await call.attempt(TIMED_OUT, timed_out=True) == 0
    assert call.reasons == ["non-idempotent"]
    # ... and the same record never keeps a refusal from a retry the policy allows.
    assert await Call(manager, "get", "r2", record).attempt(err(429)) == 200


async def test_a_text_content_failure_reads_the_call_facts_too(manager_factory: Any) -> None:
    # No structured content, no isError: only the text says it failed (check_text_content), so
    # the facts are read on the second call into the engine (decide-text).
    manager = await manager_factory({**THROTTLED, "check_text_content": True}, hooks=HOOKS)
    texty = {"content": [{"type": "text", "text": '{"isError": true}'}]}
    assert await Call(manager, "get", "r", READ_ONLY).attempt(texty, timed_out=True) == 200
    assert await Call(manager, "send", "r", UNANNOTATED).attempt(texty) == 0


@pytest.mark.parametrize(
    "config",
    [{"jitter": False, "honor_retry_after": True}, {"jitter": False, "safe_classification": True}],
    ids=["honor_retry_after", "safe_classification"],
)
async def test_a_policy_that_reads_no_call_facts_leaves_the_timeout_mark(config: dict[str, Any]) -> None:
    """The call facts are read only for a policy that reads them (WIT ``policy-reads``): one that
    reads the result's hints only never takes the gateway's timeout mark, which another plugin of
    the stanza may still need."""
    plugin = direct_plugin(config)
    assert plugin.policy.reads_hints
    assert not plugin.policy.reads_call_facts
    context = PluginContext(global_context=GlobalContext(request_id="r"))
    context.global_context.metadata["tool"] = READ_ONLY
    context.state["cb_timeout_failure"] = True
    hinted = err(503, structuredContent={"status_code": 503, "retry_after_ms": 1000})
    res = await plugin.tool_post_invoke(ToolPostInvokePayload(name="get", result=hinted), context)
    assert res.retry_delay_ms == (1000 if config.get("honor_retry_after") else 200)
    assert context.state["cb_timeout_failure"] is True, "read although no policy needs it"


def test_a_config_that_needs_annotations_without_the_pre_invoke_hook_is_refused() -> None:
    config = {"tool_overrides": {"send": {"non_idempotent_retries": "none"}}}
    with pytest.raises(ConfigurationError) as info:
        direct_plugin(config)
    (error,) = info.value.errors
    assert error.path == "hooks"
    assert "must include tool_pre_invoke" in error.message
    assert "['tool_post_invoke']" in error.message
    # With the hook it loads; so does the default config without it.
    hooked = PluginConfig(name=PLUGIN_NAME, kind=PLUGIN_KIND, hooks=list(HOOKS), config=config)
    assert RetryWithBackoffPlugin(hooked).policy.reads_call_facts
    assert not direct_plugin({}).policy.reads_call_facts
