"""Issue 6 (resilience beyond the native plugin) through the real cpex PluginManager.

Every feature here is opt-in or parity-preserving; ``test_differential.py`` checks the defaults
against the native plugin.  Jitter is off or the seed fixed, the clock virtual.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginConfig, PluginContext, ToolPostInvokePayload
from cpex.framework.extensions.extensions import Extensions
from cpex.framework.extensions.request import RequestExtension

from cpex_retry_with_backoff_wasm import OpenPolicy, RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.model import ConfigurationError, Policy
from cpex_retry_with_backoff_wasm.signals import read_hints, read_retry_after_ms
from cpex_retry_with_backoff_wasm.wire import (
    RETRY_AFTER_SHIFT,
    SIG_INPUT_REQUIRED,
    SIG_NOT_RETRYABLE,
    SIG_RETRY_AFTER,
    SIG_VALIDATION_ERROR,
)

from .conftest import direct_plugin, err, ok

NO_JITTER = {"jitter": False}


def policy_of(config: dict[str, Any]) -> OpenPolicy:
    """The policy a plugin object of ``config`` opens (its global and per-tool policies)."""
    return direct_plugin(config).policy


async def post(manager: Any, tool: str, rid: str, result: Any, trace_id: str | None = "trace-1") -> Any:
    payload = ToolPostInvokePayload(name=tool, result=result)
    ext = Extensions(request=RequestExtension(request_id=rid, trace_id=trace_id))
    res, _ = await manager.invoke_hook(
        "tool_post_invoke", payload, GlobalContext(request_id=rid), extensions=ext
    )
    return res


def metrics(res: Any) -> dict[str, Any]:
    return dict(res.metadata["retry_with_backoff"])


# --------------------------------------------------------------------------- (a) reasons
# The reason ordinals against the WIT enum itself: test_wire.py.
async def test_metrics_carry_no_reason_by_default(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    assert metrics(await post(manager, "t", "r", err())) == {"retry_count": 1, "retry_delay_ms": 200}


async def test_metrics_reason_opt_in(manager_factory: Any) -> None:
    manager = await manager_factory({**NO_JITTER, "max_retries": 1, "metrics_reason": True})
    seen = [metrics(await post(manager, "t", "r", r)) for r in [err(), err(), err(404), err(503), ok()]]
    assert seen == [
        {"retry_count": 1, "retry_delay_ms": 200, "reason": "retry"},
        {"retry_count": 2, "retry_delay_ms": 0, "reason": "exhausted"},
        {"retry_count": 0, "retry_delay_ms": 0, "reason": "non-retryable"},
        {"retry_count": 1, "retry_delay_ms": 200, "reason": "retry"},
        {"retry_count": 0, "retry_delay_ms": 0, "reason": "success"},
    ]


@pytest.mark.parametrize("bad", ["yes", 1, None])
async def test_metrics_reason_must_be_a_boolean(manager_factory: Any, bad: Any) -> None:
    await manager_factory({"metrics_reason": bad}, expect_plugins=0)


async def test_exhaustion_logs_the_native_warning(
    manager_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    manager = await manager_factory({**NO_JITTER, "max_retries": 1})
    with caplog.at_level(logging.WARNING, logger="cpex_retry_with_backoff_wasm.plugin"):
        for _ in range(2):
            await post(manager, "search", "req-9", err(), trace_id=None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["tool_post_invoke: tool=search request_id=req-9 exhausted after 2 failure(s)"]


# --------------------------------------------------------------------------- (b) jitter modes
def test_policy_reports_the_jitter_mode() -> None:
    policy = policy_of(
        {"jitter": "equal", "tool_overrides": {"a": {"jitter": False}, "b": {"jitter": "decorrelated"}}}
    )
    assert policy.global_policy.jitter_mode == "equal"
    assert policy.global_policy.jitter is True
    assert policy.tool_policy("a") == Policy(2, 200, 5000, (429, 500, 502, 503, 504), False, False)
    assert policy.tool_policy("a").jitter_mode == "none"
    assert policy.tool_policy("b").jitter_mode == "decorrelated"


@pytest.mark.parametrize(
    ("mode", "low", "high"),
    [("none", [200, 400, 800], [200, 400, 800]), ("equal", [100, 200, 400], [200, 400, 800])],
)
async def test_jitter_modes_through_the_manager(
    manager_factory: Any, mode: str, low: list[int], high: list[int]
) -> None:
    manager = await manager_factory({"jitter": mode, "max_retries": 3})
    for k in range(50):
        got = [(await post(manager, "t", f"r{k}", err(), trace_id=None)).retry_delay_ms for _ in range(3)]
        assert all(lo <= d <= hi for d, lo, hi in zip(got, low, high, strict=True)), got


async def test_decorrelated_jitter_through_the_manager(manager_factory: Any) -> None:
    manager = await manager_factory({"jitter": "decorrelated", "max_retries": 5, "max_backoff_ms": 1000})
    for k in range(50):
        previous = 200
        for _ in range(5):
            d = (await post(manager, "t", f"r{k}", err(), trace_id=None)).retry_delay_ms
            assert 200 <= d <= min(3 * previous, 1000)
            previous = d


async def test_jitter_mode_errors_name_the_key(manager_factory: Any) -> None:
    with pytest.raises(
        ConfigurationError, match=r'tool_overrides\.t\.jitter: must be a boolean or one of "none"'
    ):
        direct_plugin({"tool_overrides": {"t": {"jitter": "sometimes"}}})
    await manager_factory({"jitter": "sometimes"}, expect_plugins=0)


# --------------------------------------------------------------------------- (c) deadline
async def test_deadline_through_the_manager(manager_factory: Any) -> None:
    manager = await manager_factory(
        {**NO_JITTER, "max_retries": 5, "max_total_delay_ms": 1000, "metrics_reason": True}
    )
    seen = [metrics(await post(manager, "t", "r", err())) for _ in range(4)]
    assert seen == [
        {"retry_count": 1, "retry_delay_ms": 200, "reason": "retry"},
        {"retry_count": 2, "retry_delay_ms": 400, "reason": "retry"},
        {"retry_count": 3, "retry_delay_ms": 0, "reason": "deadline"},
        {"retry_count": 1, "retry_delay_ms": 200, "reason": "retry"},
    ]


def test_deadline_in_the_policy_and_per_tool() -> None:
    policy = policy_of({"max_total_delay_ms": 5000, "tool_overrides": {"t": {"max_total_delay_ms": None}}})
    assert policy.global_policy.max_total_delay_ms == 5000
    assert policy.tool_policy("t").max_total_delay_ms is None
    assert policy.tool_policy("u").max_total_delay_ms == 5000
    assert policy_of({}).global_policy.max_total_delay_ms is None


@pytest.mark.parametrize("bad", [0, -1, 2**32, "5s", 1.5, True])
def test_deadline_must_be_a_positive_integer_or_null(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"max_total_delay_ms: must be null or an integer from 1"):
        direct_plugin({"max_total_delay_ms": bad})


# --------------------------------------------------------------------------- (d) safe classification
VALIDATION = err(structuredContent={"error": {"code": -32602, "message": "missing 'q'"}})
NOT_RETRYABLE = err(structuredContent={"status_code": 503, "retryable": False})
INPUT_REQUIRED = err(resultType="input_required")


@pytest.mark.parametrize(
    ("result", "bits"),
    [
        (err(), 0),
        (VALIDATION, SIG_VALIDATION_ERROR),
        (err(structuredContent={"code": -32602}), SIG_VALIDATION_ERROR),
        (err(structuredContent={"validation_error": True}), SIG_VALIDATION_ERROR),
        (err(structuredContent={"error_type": "validation_error"}), SIG_VALIDATION_ERROR),
        (err(structuredContent={"code": -32602.0}), 0),
        (err(structuredContent={"code": True}), 0),
        (err(structuredContent={"validation_error": 1}), 0),
        (NOT_RETRYABLE, SIG_NOT_RETRYABLE),
        (err(retryable=False), SIG_NOT_RETRYABLE),
        (err(retryable=0), 0),
        (INPUT_REQUIRED, SIG_INPUT_REQUIRED),
        (err(resultType="complete"), 0),
        (None, 0),
        ([1], 0),
    ],
)
def test_read_hints(result: Any, bits: int) -> None:
    assert read_hints(result) == bits


def test_read_hints_never_raises() -> None:
    class Hostile(dict[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("boom")

    assert read_hints(Hostile()) == 0
    assert read_hints({"structuredContent": Hostile()}) == 0


async def test_safe_classification_is_opt_in(manager_factory: Any) -> None:
    manager = await manager_factory({**NO_JITTER, "metrics_reason": True})
    for i, result in enumerate([VALIDATION, NOT_RETRYABLE, INPUT_REQUIRED]):
        assert metrics(await post(manager, "t", f"r{i}", result))["reason"] == "retry"


async def test_safe_classification_through_the_manager(manager_factory: Any) -> None:
    manager = await manager_factory(
        {**NO_JITTER, "metrics_reason": True, "tool_overrides": {"safe": {"safe_classification": True}}}
    )
    assert metrics(await post(manager, "safe", "r", err()))["reason"] == "retry"
    assert metrics(await post(manager, "safe", "r", VALIDATION)) == {
        "retry_count": 0,
        "retry_delay_ms": 0,
        "reason": "non-retryable",
    }
    assert metrics(await post(manager, "safe", "r2", NOT_RETRYABLE))["reason"] == "non-retryable"
    assert metrics(await post(manager, "safe", "r3", INPUT_REQUIRED))["reason"] == "success"
    assert metrics(await post(manager, "other", "r", VALIDATION))["reason"] == "retry"


async def test_safe_classification_with_text_content(manager_factory: Any) -> None:
    manager = await manager_factory(
        {**NO_JITTER, "check_text_content": True, "safe_classification": True, "metrics_reason": True}
    )
    text_failure = {"content": [{"type": "text", "text": '{"isError": true}'}], "retryable": False}
    assert metrics(await post(manager, "t", "r", text_failure))["reason"] == "non-retryable"
    text_failure.pop("retryable")
    assert metrics(await post(manager, "t", "r", text_failure))["reason"] == "retry"


def test_safe_classification_in_the_policy() -> None:
    policy = policy_of(
        {"safe_classification": True, "tool_overrides": {"raw": {"safe_classification": False}}}
    )
    assert policy.global_policy.safe_classification is True
    assert policy.tool_policy("raw").safe_classification is False
    with pytest.raises(ConfigurationError, match="safe_classification: must be a boolean"):
        direct_plugin({"safe_classification": "on"})


# --------------------------------------------------------------------------- (e) server delay hints
#: 1994-11-06T08:49:37Z, the RFC 9110 example date, as the host's wall clock minus 30 s.
NOW_S = 784_111_777.0 - 30


def fixed_wall_clock() -> float:
    return NOW_S


@pytest.mark.parametrize(
    ("structured", "ms"),
    [
        ({}, None),
        ({"retry_after_ms": 1500, "retry_after": 9}, 1500),
        ({"retry_after": 2}, 2000),
        ({"retry_after": 0.25}, 250),
        ({"retry_after": "3"}, 3000),
        ({"retry_after": "Sun, 06 Nov 1994 08:49:37 GMT"}, 30_000),  # IMF-fixdate
        ({"retry_after": "Sunday, 06-Nov-94 08:49:37 GMT"}, 30_000),  # RFC 850
        ({"retry_after": "Sun Nov  6 08:49:37 1994"}, 30_000),  # asctime
        ({"retry_after": "Sun, 06 Nov 1994 08:48:37 GMT"}, 0),  # in the past
        ({"retry_after": "soon"}, None),
        ({"retry_after": -1}, None),
        ({"retry_after": True}, None),
        ({"retry_after": float("nan")}, None),
        ({"headers": {"Retry-After": "4"}}, 4000),
        ({"headers": {"RETRY-AFTER-MS": "250", "Retry-After": "4"}}, 250),
        ({"headers": {"retry-after": "Sun, 06 Nov 1994 08:49:47 GMT"}}, 40_000),
        ({"headers": {"X-RateLimit-Reset": "7"}}, 7000),
        ({"headers": {"x-ratelimit-reset": 999_999_999}}, 999_999_999_000),  # below 10^9: a delta
        ({"headers": [("Retry-After", "4")]}, None),
    ],
)
def test_read_retry_after(structured: dict[str, Any], ms: float | None) -> None:
    assert read_retry_after_ms(structured, fixed_wall_clock) == ms


def test_rate_limit_reset_epoch_seconds() -> None:
    def clock() -> float:
        return 1_700_000_000.5

    headers = {"headers": {"X-RateLimit-Reset": "1700000030"}}
    assert read_retry_after_ms(headers, clock) == 29_500
    assert read_retry_after_ms({"headers": {"X-RateLimit-Reset": 1_600_000_000}}, clock) == 0


def test_retry_after_hint_bits() -> None:
    bits = read_hints(err(structuredContent={"retry_after": 2}), fixed_wall_clock)
    assert bits == SIG_RETRY_AFTER | (2000 << RETRY_AFTER_SHIFT)
    huge = read_hints(err(structuredContent={"retry_after": 10**9}), fixed_wall_clock)
    # Saturated at the wire's 22 bits, below the call facts (bits 30..31).
    assert huge >> RETRY_AFTER_SHIFT == (1 << 22) - 1


async def test_retry_after_is_opt_in(manager_factory: Any) -> None:
    manager = await manager_factory(NO_JITTER)
    res = await post(manager, "t", "r", err(structuredContent={"status_code": 429, "retry_after": 3}))
    assert res.retry_delay_ms == 200


async def test_retry_after_through_the_manager(manager_factory: Any) -> None:
    manager = await manager_factory(
        {
            **NO_JITTER,
            "metrics_reason": True,
            "max_retries": 5,
            "honor_retry_after": True,
            "max_retry_after_ms": 10_000,
            "max_total_delay_ms": 15_000,
        }
    )

    def limited(**sc: Any) -> dict[str, Any]:
        return err(structuredContent={"status_code": 429, **sc})

    seen = [
        metrics(await post(manager, "t", "r", limited(retry_after=3))),
        metrics(await post(manager, "t", "r", limited(headers={"Retry-After": "60"}))),
        metrics(await post(manager, "t", "r", limited(retry_after_ms=2500))),
    ]
    assert seen == [
        {"retry_count": 1, "retry_delay_ms": 3000, "reason": "retry"},
        {"retry_count": 2, "retry_delay_ms": 10_000, "reason": "retry"},  # clamped
        {"retry_count": 3, "retry_delay_ms": 0, "reason": "retry-after"},  # 13 s + 2.5 s > 15 s
    ]


async def test_retry_after_http_date_uses_the_hosts_wall_clock() -> None:
    plugin = RetryWithBackoffPlugin(
        PluginConfig(
            name="RetryWithBackoffWasmPlugin",
            kind="cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin",
            hooks=["tool_post_invoke"],
            config={"jitter": False, "honor_retry_after": True},
        ),
        wall_clock=fixed_wall_clock,
    )
    result = err(
        structuredContent={"status_code": 503, "headers": {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"}}
    )
    payload = ToolPostInvokePayload(name="t", result=result)
    res = await plugin.tool_post_invoke(payload, PluginContext(global_context=GlobalContext(request_id="r")))
    assert res.retry_delay_ms == 30_000


def test_retry_after_keys_in_the_policy() -> None:
    policy = policy_of({"honor_retry_after": True, "tool_overrides": {"t": {"max_retry_after_ms": 5000}}})
    assert policy.global_policy.honor_retry_after is True
    assert policy.global_policy.max_retry_after_ms == 60_000
    assert policy.tool_policy("t").max_retry_after_ms == 5000
    with pytest.raises(ConfigurationError, match=r"max_retry_after_ms: must be an integer from 1 to 4194303"):
        direct_plugin({"max_retry_after_ms": 2**22})


# --------------------------------------------------------------------------- (f) retry budget
async def test_retry_budget_through_the_manager(manager_factory: Any) -> None:
    # No refill by time (min_per_sec 0): the count does not depend on how fast the test runs.
    manager = await manager_factory(
        {
            **NO_JITTER,
            "max_retries": 1,
            "metrics_reason": True,
            "tool_overrides": {"b": {"retry_budget_percent": 50, "retry_budget_min_per_sec": 0}},
        }
    )
    reasons = [metrics(await post(manager, "b", f"r{k}", err()))["reason"] for k in range(11)]
    assert reasons == ["retry"] * 10 + ["budget"]
    # Successes pass through the engine (they refill the bucket): two buy one retry.
    for k in range(2):
        assert (await post(manager, "b", f"ok{k}", ok())).retry_delay_ms == 0
    assert metrics(await post(manager, "b", "again", err()))["reason"] == "retry"
    assert metrics(await post(manager, "b", "more", err()))["reason"] == "budget"
    # Tools without a budget are unaffected.
    assert metrics(await post(manager, "free", "r", err()))["reason"] == "retry"


def test_retry_budget_in_the_policy() -> None:
    policy = policy_of({"retry_budget_percent": 34, "tool_overrides": {"t": {"retry_budget_percent": None}}})
    assert policy.global_policy.retry_budget_percent == 34
    assert policy.global_policy.retry_budget_min_per_sec == 1
    assert policy.tool_policy("t").retry_budget_percent is None
    with pytest.raises(
        ConfigurationError, match=r"retry_budget_percent: must be null or an integer from 1 to 1000"
    ):
        direct_plugin({"retry_budget_percent": 0})


# --------------------------------------------------------------------------- (g) contexts, key scope
async def post_as(
    manager: Any,
    rid: str,
    result: Any,
    *,
    tenant: str | None = None,
    server: str | None = None,
    user: Any = None,
    tool: str = "t",
) -> Any:
    payload = ToolPostInvokePayload(name=tool, result=result)
    context = GlobalContext(request_id=rid, tenant_id=tenant, server_id=server, user=user)
    ext = Extensions(request=RequestExtension(request_id=rid, trace_id="trace-1"))
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, context, extensions=ext)
    return res


async def delay_as(manager: Any, rid: str, result: Any, **caller: Any) -> int:
    return int((await post_as(manager, rid, result, **caller)).retry_delay_ms)


async def test_gateway_contexts_never_share_state(manager_factory: Any) -> None:
    """Since 0.5 the tenant and server are the key's context under every ``key_scope``: a request
    id sent in two contexts is two keys (before, tenant b continued tenant a's count)."""
    manager = await manager_factory(NO_JITTER)
    assert await delay_as(manager, "corr-1", err(), tenant="a") == 200
    assert await delay_as(manager, "corr-1", err(), tenant="b") == 200
    assert await delay_as(manager, "corr-1", err(), tenant="a") == 400
    assert await delay_as(manager, "corr-1", err(), tenant="a", server="s1") == 200
    assert await delay_as(manager, "corr-1", err(), tenant="a", server="s2") == 200
    assert await delay_as(manager, "corr-1", err(), tenant="a", server="s1") == 400
    # Within one context the request id alone is the key (the native plugin's): users share it.
    assert await delay_as(manager, "corr-2", err(), tenant="a", user="x") == 200
    assert await delay_as(manager, "corr-2", err(), tenant="a", user="y") == 400


async def test_key_parts_never_run_into_each_other(manager_factory: Any) -> None:
    """Each part is its own field: parts that concatenate alike are still different keys."""
    manager = await manager_factory({**NO_JITTER, "key_scope": "user"})
    assert await delay_as(manager, "c", err(), tenant="ab", server="") == 200
    assert await delay_as(manager, "c", err(), tenant="a", server="bc") == 200
    assert await delay_as(manager, "c", err(), tenant="a", server="b", user="c") == 200
    assert await delay_as(manager, "bc", err(), tenant="a", user="") == 200
    assert await delay_as(manager, "c", err(), tenant="a", user="b") == 200
    assert await delay_as(manager, "cx", err(), tenant="a", user="b") == 200
    assert await delay_as(manager, "x", err(), tenant="a", user="bc") == 200
    # ... while the same parts again continue their key.
    assert await delay_as(manager, "c", err(), tenant="ab", server="") == 400
    assert await delay_as(manager, "x", err(), tenant="a", user="bc") == 400


@pytest.mark.parametrize(
    ("scope", "first", "second"),
    [
        ("tenant", {"tenant": "a"}, {"tenant": "b"}),
        ("user", {"tenant": "a", "user": "x"}, {"tenant": "a", "user": "y"}),
    ],
)
async def test_key_scope_separates_identities(
    manager_factory: Any, scope: str, first: dict[str, Any], second: dict[str, Any]
) -> None:
    manager = await manager_factory({**NO_JITTER, "key_scope": scope})
    assert await delay_as(manager, "corr-1", err(), **first) == 200
    assert await delay_as(manager, "corr-1", err(), **second) == 200
    assert await delay_as(manager, "corr-1", err(), **first) == 400
    assert await delay_as(manager, "corr-1", ok(), **first) == 0
    assert await delay_as(manager, "corr-1", err(), **second) == 400


async def test_key_scope_tenant_adds_nothing_to_the_context(manager_factory: Any) -> None:
    """``tenant`` names no identity of its own since 0.5: the tenant is in every key's context,
    so within it users share a request id as under ``request``."""
    manager = await manager_factory({**NO_JITTER, "key_scope": "tenant"})
    assert await delay_as(manager, "corr-1", err(), tenant="a", user="x") == 200
    assert await delay_as(manager, "corr-1", err(), tenant="a", user="y") == 400


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("bob", "bob", True),
        ("a@b", {"email": "a@b", "id": 7}, True),
        ({"id": 7}, "7", True),
        ({"sub": "s-1"}, {"email": None, "sub": "s-1"}, True),
        (None, None, True),  # anonymous: the request id alone, as under `request`
        ("bob", "alice", False),
        ("bob", None, False),
        ({"email": "a@b"}, {"id": "a@c"}, False),
    ],
    ids=repr,
)
async def test_user_scope_identity(manager_factory: Any, first: Any, second: Any, same: bool) -> None:
    """Which ``global_context.user`` values are one identity under ``key_scope: user``: the
    second caller continues the first's count only when they are."""
    manager = await manager_factory({**NO_JITTER, "key_scope": "user"})
    assert await delay_as(manager, "corr-1", err(), tenant="a", user=first) == 200
    assert await delay_as(manager, "corr-1", err(), tenant="a", user=second) == (400 if same else 200)


async def test_key_scope_is_validated(manager_factory: Any) -> None:
    await manager_factory({"key_scope": "session"}, expect_plugins=0)
    assert policy_of({}).key_scope == "request"
    assert policy_of({"key_scope": "tenant"}).key_scope == "tenant"
    assert policy_of({"key_scope": "user"}).key_scope == "user"


# --------------------------------------------------------------------------- issue 24 §4
#: A user's ~200-character email: under the old layout (identity length-prefixed into the request
#: part, the whole part digested past 256 characters) such a caller's budget was the anonymous one.
LONG_EMAIL = "a" * 188 + "@example.com"


def request_id(prefix: str, k: int, length: int) -> str:
    """A distinct request id of ``length`` characters (a client-chosen correlation id)."""
    return f"{prefix}-{k}-".ljust(length, "x")


def reason(res: Any) -> str:
    return str(res.metadata["retry_with_backoff"]["reason"])


@pytest.mark.parametrize("scope", ["user", "tenant"])
@pytest.mark.parametrize(
    ("identity", "rid_length"),
    [(LONG_EMAIL, 80), ("b" * 300, 80), (LONG_EMAIL, 300), ("bob@example.com", 300)],
    ids=["200-80", "300-80", "200-300", "15-300"],
)
async def test_a_long_identity_drains_only_its_own_budget(
    manager_factory: Any, scope: str, identity: str, rid_length: int
) -> None:
    """Issue 24 §4: a long identity (a user under ``key_scope: user``, a tenant under
    ``tenant``) sending long request ids never lands in another identity's, or the anonymous,
    retry budget, whatever the lengths: it drains its own bucket, and the others' first failure
    is still retried."""
    manager = await manager_factory(
        {
            **NO_JITTER,
            "key_scope": scope,
            "metrics_reason": True,
            "max_retries": 1,
            "retry_budget_percent": 50,
            "retry_budget_min_per_sec": 0,  # no refill by time: the bucket holds 10 tokens
        }
    )

    def caller(who: str | None) -> dict[str, Any]:
        return {"tenant": "team", "user": who} if scope == "user" else {"tenant": who}

    drained = [
        reason(await post_as(manager, request_id("long", k, rid_length), err(), **caller(identity)))
        for k in range(11)
    ]
    assert drained == ["retry"] * 10 + ["budget"]
    others = {"anonymous": None, "short": "carol", "another long": identity[:-1] + "z"}
    for k, (who, other) in enumerate(others.items()):
        res = await post_as(manager, request_id("other", k, rid_length), err(), **caller(other))
        assert reason(res) == "retry", who
    # The drained identity stays drained.
    res = await post_as(manager, request_id("long", 11, rid_length), err(), **caller(identity))
    assert reason(res) == "budget"


# --------------------------------------------------------------------------- hot reload, format 3
async def call(plugin: RetryWithBackoffPlugin, rid: str, result: Any) -> Any:
    payload = ToolPostInvokePayload(name="t", result=result)
    context = PluginContext(global_context=GlobalContext(request_id=rid))
    ext = Extensions(request=RequestExtension(request_id=rid, trace_id="trace-1"))
    return await plugin.tool_post_invoke(payload, context, ext)


async def test_reload_carries_the_delay_history(wasm_path: Any) -> None:
    """A deadline's summed delays survive ``reload`` (export-state format 3)."""
    plugin = direct_plugin(
        {"jitter": False, "max_retries": 5, "max_total_delay_ms": 1500, "metrics_reason": True}, seed=(1, 2)
    )
    assert [(await call(plugin, "r", err())).retry_delay_ms for _ in range(2)] == [200, 400]
    assert plugin.reload(wasm_path) == 1
    assert plugin.instance.reload_count == 1
    assert plugin.policy.state_count() == 1
    # 600 ms already spent: 800 more fits 1500, the next 1600 would not.
    assert (await call(plugin, "r", err())).retry_delay_ms == 800
    assert metrics(await call(plugin, "r", err())) == {
        "retry_count": 4,
        "retry_delay_ms": 0,
        "reason": "deadline",
    }
