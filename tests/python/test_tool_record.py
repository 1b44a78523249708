"""Whose annotations count (issue 24 §1): only those of the record of the tool being decided.

The gateway puts a tool's record in ``global_context.metadata["tool"]`` before
``tool_pre_invoke`` and hands ``tool_post_invoke`` a payload named as the caller named the tool
(1.0.7 and 1.1.0, ``mcpgateway/services/tool_service.py``, ``ToolService.invoke_tool``: every
``ToolPostInvokePayload(name=name, ...)``, the timeout one in ``_run_timeout_post_invoke`` too).
It resolves that name against the tool's ``name`` (the prefixed
``<gateway-slug><separator><custom-name-slug>``) and, for a call scoped to a virtual server,
against its ``original_name`` (the upstream's own name): 1.0.7 ``_load_invocable_tools``
(``DbTool.name == name`` or, with a ``server_id``, ``DbTool.original_name == name``), 1.1.0
``_select_invocable_tool`` (exact ``name`` first, then with a ``server_id`` the
``match_original_name=True`` fallback).  So the record is the decided tool's when its ``name`` or
its ``original_name`` is the payload's name; anything else is another tool's record.

The records below are built as the gateways build them, without the gateway installed:
``GatewayTool`` has the fields of ``mcpgateway.common.models.Tool`` (``CommonAttributes`` +
``Tool``, identical in 1.0.7 and 1.1.0) that matter here, and is validated either from a
database row (``invoke_tool``: ``PydanticTool.model_validate(tool)``, ``from_attributes``) or
from the lookup cache's payload (``_pydantic_tool_from_payload`` of
``_build_tool_cache_payload(...)["tool"]``).  The rows' name fields are what
``mcpgateway/db.py``'s ``set_custom_name_and_slug`` (before insert/update, both releases) makes
of them: ``custom_name`` defaults to ``original_name``, ``custom_name_slug`` is its slug,
``name`` is ``<slugify(gateway.name)><sep><custom_name_slug>``, or the slug alone without a
gateway (REST and A2A tools).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from cpex_retry_with_backoff_wasm.signals import read_call_facts
from cpex_retry_with_backoff_wasm.wire import SIG_IDEMPOTENT, SIG_TIMEOUT

from .conftest import err
from .test_idempotency import HOOKS, THROTTLED, TIMED_OUT, Call

READ_ONLY = {"readOnlyHint": True, "destructiveHint": False}


class GatewayTool(BaseModel):
    """``mcpgateway.common.models.Tool`` (1.0.7 and 1.1.0): its name fields and annotations."""

    model_config = ConfigDict(from_attributes=True)
    name: str
    url: AnyHttpUrl
    original_name: str | None = None
    custom_name: str | None = None
    custom_name_slug: str | None = None
    display_name: str | None = None
    gateway_id: str | None = None
    annotations: dict[str, Any] | None = Field(default_factory=dict)


def db_row(
    *, name: str, original_name: str, custom_name: str, custom_name_slug: str, annotations: Any
) -> SimpleNamespace:
    """A ``mcpgateway.db.Tool`` row's attributes after ``set_custom_name_and_slug``."""
    return SimpleNamespace(
        id="0f3c",
        name=name,
        original_name=original_name,
        custom_name=custom_name,
        custom_name_slug=custom_name_slug,
        display_name=custom_name,
        url="http://127.0.0.1:9000/mcp",
        gateway_id="9a1b",
        annotations=annotations,
    )


def from_row(row: SimpleNamespace) -> GatewayTool:
    """``invoke_tool`` with the row it looked up: ``PydanticTool.model_validate(tool)``."""
    return GatewayTool.model_validate(row)


def from_cache(row: SimpleNamespace) -> GatewayTool:
    """``invoke_tool`` on a lookup-cache hit: ``_pydantic_tool_from_payload`` of the payload
    ``_build_tool_cache_payload`` made (its name fields, url and ``annotations or {}``)."""
    payload = {
        "id": row.id,
        "name": row.name,
        "original_name": row.original_name,
        "url": row.url,
        "custom_name": row.custom_name,
        "custom_name_slug": row.custom_name_slug,
        "display_name": row.display_name,
        "gateway_id": row.gateway_id,
        "annotations": row.annotations or {},
    }
    return GatewayTool.model_validate(payload)


#: Upstream ``get_time`` of the MCP server registered as ``fast_time``, separator ``-``.
GET_TIME = db_row(
    name="fast-time-get-time",
    original_name="get_time",
    custom_name="get_time",
    custom_name_slug="get-time",
    annotations=READ_ONLY,
)
#: The same tool renamed by an operator (``custom_name``); the upstream name stays.
RENAMED = db_row(
    name="fast-time-current-time",
    original_name="get_time",
    custom_name="Current Time",
    custom_name_slug="current-time",
    annotations=READ_ONLY,
)
#: ``GATEWAY_TOOL_NAME_SEPARATOR=--``.
DOUBLE_DASH = db_row(
    name="fast-time--get-time",
    original_name="get_time",
    custom_name="get_time",
    custom_name_slug="get-time",
    annotations=READ_ONLY,
)
#: A tool without a gateway (A2A: ``a2a_<agent slug>``, ``_create_a2a_tool``; REST alike): its
#: ``name`` is the slug of its ``original_name``.
A2A = db_row(
    name="a2a-billing-agent",
    original_name="a2a_billing-agent",
    custom_name="a2a_billing-agent",
    custom_name_slug="a2a-billing-agent",
    annotations={"title": "A2A Agent: billing", "a2a_agent_id": "a1", "idempotentHint": True},
)

#: (how the call reaches the tool, the payload's name, the row it resolves to)
CALLS = [
    ("by name", "fast-time-get-time", GET_TIME),
    ("virtual server, upstream name", "get_time", GET_TIME),
    ("renamed, by name", "fast-time-current-time", RENAMED),
    ("renamed, virtual server, upstream name", "get_time", RENAMED),
    ("separator --, by name", "fast-time--get-time", DOUBLE_DASH),
    ("no gateway, by name", "a2a-billing-agent", A2A),
    ("no gateway, virtual server, upstream name", "a2a_billing-agent", A2A),
]


@pytest.mark.parametrize("build", [from_row, from_cache], ids=["db-row", "cache"])
@pytest.mark.parametrize(("how", "tool", "row"), CALLS, ids=[c[0] for c in CALLS])
async def test_a_read_only_tool_is_recognised_by_every_name_the_gateway_resolves(
    manager_factory: Any, build: Any, how: str, tool: str, row: SimpleNamespace
) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    call = Call(manager, tool, "r", build(row))
    assert await call.attempt(TIMED_OUT, timed_out=True) == 200, how
    assert call.reasons == ["retry"]


#: (the call's name, the record in the global context): never this tool's record.
OTHERS = [
    # Issue 24 as reported: a record of another tool, a plain mapping.
    ("send", {"name": "search", "annotations": {"readOnlyHint": True}}),
    ("send", {"name": "search", "original_name": "search", "annotations": {"idempotentHint": True}}),
    # Another tool of the same MCP server; the same upstream name on another server.
    ("fast-time-send", from_cache(GET_TIME)),
    ("other-gw-get-time", from_row(GET_TIME)),
    # custom_name, custom_name_slug and display_name are never lookup keys: a call named so
    # resolved another tool.
    ("current-time", from_row(RENAMED)),
    ("Current Time", from_row(RENAMED)),
    # The gateway's name lookups are exact (SQLite and PostgreSQL `=` compare case-sensitively).
    ("Fast-Time-Get-Time", from_row(GET_TIME)),
    ("GET_TIME", from_cache(GET_TIME)),
    # No name at all.
    ("get", {"annotations": {"readOnlyHint": True}}),
]


@pytest.mark.parametrize(("tool", "record"), OTHERS, ids=[c[0] + "/" + str(i) for i, c in enumerate(OTHERS)])
async def test_another_tools_annotations_never_make_a_tool_idempotent(
    manager_factory: Any, tool: str, record: Any
) -> None:
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    call = Call(manager, tool, "r", record)
    assert await call.attempt(TIMED_OUT, timed_out=True) == 0
    assert call.reasons == ["non-idempotent"]
    # ... and its refusals still retry: the record is ignored, the call is not.
    assert await Call(manager, tool, "r2", record).attempt(err(429)) == 200


async def test_the_reported_record_still_counts_for_its_own_tool(manager_factory: Any) -> None:
    # The other side of the first OTHERS case: the same record, on a call of "search".
    manager = await manager_factory(THROTTLED, hooks=HOOKS)
    record = {"name": "search", "annotations": {"readOnlyHint": True}}
    assert await Call(manager, "search", "r", record).attempt(TIMED_OUT, timed_out=True) == 200
    assert await Call(manager, "send", "r", record).attempt(TIMED_OUT, timed_out=True) == 0


def context_with(record: Any, *, timed_out: bool = False) -> PluginContext:
    context = PluginContext(global_context=GlobalContext(request_id="r"))
    context.global_context.metadata["tool"] = record
    if timed_out:
        context.state["cb_timeout_failure"] = True
    return context


class Raising:
    """A record whose named field raises on access."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.annotations = {"readOnlyHint": True}

    def __getattr__(self, name: str) -> Any:
        if name == self.field:
            raise RuntimeError(f"no {name}")
        raise AttributeError(name)


class Liar(str):
    """A str subclass that says it equals anything."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return str.__hash__(self)


@pytest.mark.parametrize(
    ("tool", "record"),
    [
        (None, {"name": "send", "annotations": {"readOnlyHint": True}}),
        (42, {"name": 42, "annotations": {"readOnlyHint": True}}),
        (b"send", {"name": b"send", "annotations": {"readOnlyHint": True}}),
        ("", {"name": "", "annotations": {"readOnlyHint": True}}),
        ("send", {"name": None, "original_name": None, "annotations": {"readOnlyHint": True}}),
        ("send", {"name": ["send"], "annotations": {"readOnlyHint": True}}),
        ("send", {"name": Liar("search"), "annotations": {"readOnlyHint": True}}),
        ("send", Raising("name")),
        ("send", Raising("original_name")),
    ],
    ids=[
        "tool None",
        "int names",
        "bytes names",
        "empty names",
        "None names",
        "list name",
        "lying str",
        "name raises",
        "original_name raises",
    ],
)
def test_a_record_not_named_as_expected_reads_as_not_idempotent(tool: Any, record: Any) -> None:
    context = context_with(record, timed_out=True)
    # The timeout mark is read (and taken) whatever the record says.
    assert read_call_facts(context, tool) == SIG_TIMEOUT
    assert "cb_timeout_failure" not in context.state


@pytest.mark.parametrize(
    "record",
    [
        {"name": "send", "annotations": {"readOnlyHint": True}},
        {"name": "fast-time-send", "original_name": "send", "annotations": {"readOnlyHint": True}},
        SimpleNamespace(name="send", annotations={"idempotentHint": True}),
        from_row(
            db_row(
                name="send", original_name="x", custom_name="x", custom_name_slug="x", annotations=READ_ONLY
            )
        ),
        # The first name field that matches suffices; the other may be anything.
        {"name": 42, "original_name": "send", "annotations": {"readOnlyHint": True}},
    ],
)
def test_the_record_of_the_tool_is_read(record: Any) -> None:
    assert read_call_facts(context_with(record), "send") == SIG_IDEMPOTENT
    assert read_call_facts(context_with(record, timed_out=True), "send") == SIG_IDEMPOTENT | SIG_TIMEOUT
