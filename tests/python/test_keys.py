"""Issue 12 §3 and §4: the state key is injective for every ``str``, and no context value makes
the hook raise.

Unit tests of ``keys`` (what each tool name, identity and request id crosses as), then the
same through the real cpex PluginManager and the real .wasm: keys that collided on 17a8224 get
separate budgets, and odd identities under ``key_scope`` get a defined key instead of an
exception.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm.keys import (
    KEY_DIGEST_PREFIX,
    KEY_PART_MAX_CHARS,
    engine_key,
    key_part,
    state_request_id,
    tenant_identity_part,
    user_identity_part,
)

from .conftest import PLUGIN_NAME, err, ok

NO_JITTER = {"jitter": False}


def digest(text: str) -> str:
    return KEY_DIGEST_PREFIX + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class RaisingStr(str):
    """A str whose every overridable reading raises (``__str__``, ``__format__``, ``__len__``)."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ must not be called")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("__format__ must not be called")

    def __len__(self) -> int:
        raise RuntimeError("__len__ must not be called")


class LyingStr(str):
    def __str__(self) -> str:
        return "someone-else"


class RaisingInt(int):
    def __str__(self) -> str:
        raise RuntimeError("__str__ must not be called")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ must not be called")


class RaisingDict(dict[str, Any]):
    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("get")


# --------------------------------------------------------------------------- key parts
@pytest.mark.parametrize(
    "part",
    ["", "r", "req-0001", "é✓😀", "x" * KEY_PART_MAX_CHARS, "#sha256", "sha256:x", "a#sha256:"],
    ids=[
        "empty",
        "short",
        "uuid-like",
        "non-ascii",
        "at-the-bound",
        "prefix-less-colon",
        "no-hash",
        "inside",
    ],
)
def test_valid_short_parts_cross_as_themselves(part: str) -> None:
    assert key_part(part) == part


@pytest.mark.parametrize(
    "part",
    [
        "x" * (KEY_PART_MAX_CHARS + 1),
        "é" * (KEY_PART_MAX_CHARS + 1),
        "\ud800",
        "r\udfff",
        "\ud83d\ude00",  # a surrogate pair as two code points: not the emoji
        KEY_DIGEST_PREFIX,
        KEY_DIGEST_PREFIX + "0" * 64,
        digest("x" * 1000),
    ],
    ids=[
        "too-long",
        "too-long-non-ascii",
        "lone-high",
        "lone-low",
        "pair",
        "prefix",
        "prefix-hex",
        "a-digest",
    ],
)
def test_other_parts_cross_as_their_digest(part: str) -> None:
    crossed = key_part(part)
    assert crossed == digest(part)
    assert len(crossed) == len(KEY_DIGEST_PREFIX) + 64 <= KEY_PART_MAX_CHARS
    assert crossed.encode("utf-8")  # valid Unicode


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("\ud800", "\\ud800"),  # 17a8224: both crossed as "\\ud800"
        ("\ud800", "\\xed\\xa0\\x80"),
        ("\ud83d\ude00", "😀"),
        ("x" * 300, digest("x" * 300)),  # a request id that spells another's digest
        ("x" * 300, "x" * 301),
    ],
)
def test_different_parts_never_cross_alike(a: str, b: str) -> None:
    assert key_part(a) != key_part(b)


def test_engine_key_is_the_layout_of_decide() -> None:
    assert engine_key("tool", "req") == (b"toolreq", 4)
    assert engine_key("é", "✓") == ("é✓".encode(), 1)
    long_tool = "t" * 1000
    key, tool_len = engine_key(long_tool, "\ud800")
    assert tool_len == len(digest(long_tool))
    assert key == (digest(long_tool) + digest("\ud800")).encode()


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize(
    ("user", "identity"),
    [
        ("bob", "bob"),
        ({"email": "a@b", "id": 7, "sub": "s"}, "a@b"),
        ({"id": 7, "sub": "s"}, "7"),
        ({"sub": "s"}, "s"),
        ({"id": -12}, "-12"),
        ({"id": True, "sub": "s"}, "s"),  # a bool is not an id
        ({"email": None, "id": 1.5, "sub": 3}, "3"),
        ({"id": 10**KEY_PART_MAX_CHARS - 1}, "9" * KEY_PART_MAX_CHARS),
        ({"id": -(10**KEY_PART_MAX_CHARS - 1)}, "-" + "9" * KEY_PART_MAX_CHARS),
        ({"email": "\ud800"}, digest("\ud800")),
        ("u" * 1000, digest("u" * 1000)),
        (None, ""),
        (7, ""),
        (["bob"], ""),
        ({}, ""),
        ({"name": "bob"}, ""),
    ],
    ids=repr,
)
def test_user_identity(user: Any, identity: str) -> None:
    assert user_identity_part(user) == identity


def test_str_subclasses_are_read_as_plain_str() -> None:
    assert user_identity_part(RaisingStr("bob")) == "bob"
    assert user_identity_part({"email": RaisingStr("bob")}) == "bob"
    assert user_identity_part({"email": LyingStr("bob")}) == "bob"
    assert tenant_identity_part(RaisingStr("acme")) == "acme"
    assert type(user_identity_part(LyingStr("bob"))) is str


def test_int_identities_never_raise() -> None:
    huge = user_identity_part({"id": 10**5000})  # past Python's int->str digit limit
    assert huge.startswith(KEY_DIGEST_PREFIX)
    assert len(huge) == len(KEY_DIGEST_PREFIX) + 64
    assert user_identity_part({"id": 10**5000}) == huge, "not deterministic"
    assert user_identity_part({"id": -(10**5000)}) != huge
    assert user_identity_part({"id": 10**5000 + 1}) != huge
    assert user_identity_part({"id": 10**KEY_PART_MAX_CHARS}).startswith(KEY_DIGEST_PREFIX)
    # No str identity crosses as a large int's digest: not even the digest spelled out.
    assert user_identity_part(huge) != huge
    assert user_identity_part({"id": RaisingInt(42)}) == "42"


def test_unreadable_identities_are_no_identity() -> None:
    assert user_identity_part(RaisingDict(id=7)) == ""
    assert tenant_identity_part(7) == ""
    assert tenant_identity_part(None) == ""


class Context:
    """A global context whose attributes may raise when read."""

    request_id = "r:1"

    @property
    def user(self) -> Any:
        raise RuntimeError("user")

    @property
    def tenant_id(self) -> Any:
        raise RuntimeError("tenant_id")


@pytest.mark.parametrize(
    ("scope", "kwargs", "want"),
    [
        ("user", {"user": {"id": 10**300}}, f"72:{user_identity_part({'id': 10**300})}r:1"),
        ("user", {"user": "\ud800"}, f"72:{digest(chr(0xD800))}r:1"),
        ("user", {"user": "\\"}, "1:\\r:1"),
        ("tenant", {"tenant_id": "\ud800"}, f"72:{digest(chr(0xD800))}r:1"),
        ("user", {"user": {"email": RaisingStr("bob")}}, "3:bobr:1"),
    ],
    ids=["huge-int", "surrogate-user", "backslash-user", "surrogate-tenant", "raising-str"],
)
def test_state_request_id_encodes_each_part(scope: str, kwargs: dict[str, Any], want: str) -> None:
    assert state_request_id(scope, GlobalContext(request_id="r:1", **kwargs)) == want


def test_state_request_id_keeps_the_identity_readable_past_the_bound() -> None:
    """Issue 16: the engine reads the identity for per-tenant budgets; a long request id must
    not hide it (the whole part would otherwise cross as one digest)."""
    context = GlobalContext(request_id="r" * 251, tenant_id="acme")
    assert state_request_id("tenant", context) == f"4:acme{digest('r' * 251)}"
    at_the_bound = GlobalContext(request_id="r" * 250, tenant_id="acme")  # 256 characters in all
    assert state_request_id("tenant", at_the_bound) == f"4:acme{'r' * 250}"
    huge = GlobalContext(request_id="r" * 300, tenant_id="acme")
    assert state_request_id("tenant", huge) == f"4:acme{digest('r' * 300)}"


def test_state_request_id_encodes_the_request_id() -> None:
    context = GlobalContext(request_id="\ud800", user="u")
    assert state_request_id("user", context) == f"1:u{digest(chr(0xD800))}"
    assert state_request_id("request", context) == "\ud800"  # the engine encodes it


@pytest.mark.parametrize("scope", ["user", "tenant"])
def test_state_request_id_survives_raising_context_attributes(scope: str) -> None:
    assert state_request_id(scope, Context()) == "0:r:1"


# --------------------------------------------------------------------------- through cpex
async def post(manager: Any, tool: str, rid: str, result: Any, **context: Any) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid, **context))
    assert res.continue_processing
    return int(res.retry_delay_ms)


@pytest.mark.parametrize(
    ("scope", "first", "second"),
    [
        # 17a8224: both crossed as "...\\ud800r" and shared one budget (issue 12 §4).
        ("request", ("t", "\ud800", {}), ("t", "\\ud800", {})),
        ("request", ("\ud800", "r", {}), ("\\ud800", "r", {})),
        ("request", ("t\ud800", "r", {}), ("t", "\ud800r", {})),
        ("user", ("t", "r", {"user": "\ud800"}), ("t", "ud800r", {"user": "\\"})),
        ("user", ("t", "r", {"user": {"email": "\ud800"}}), ("t", "ud800r", {"user": {"email": "\\"}})),
        ("tenant", ("t", "r", {"tenant_id": "\ud800"}), ("t", "ud800r", {"tenant_id": "\\"})),
        # A request id that spells another's digest.
        ("request", ("t", "r" * 300, {}), ("t", digest("r" * 300), {})),
        ("request", ("t" * 300, "r", {}), (digest("t" * 300), "r", {})),
    ],
    ids=[
        "rid-surrogate",
        "tool-surrogate",
        "surrogate-across-the-split",
        "user-surrogate",
        "user-email-surrogate",
        "tenant-surrogate",
        "rid-spelling-a-digest",
        "tool-spelling-a-digest",
    ],
)
async def test_keys_that_collided_get_separate_budgets(
    manager_factory: Any,
    scope: str,
    first: tuple[str, str, dict[str, Any]],
    second: tuple[str, str, dict[str, Any]],
) -> None:
    manager = await manager_factory({**NO_JITTER, "key_scope": scope, "max_retries": 5})
    tool, rid, context = first
    assert [await post(manager, tool, rid, err(), **context) for _ in range(2)] == [200, 400]
    tool, rid, context = second
    assert await post(manager, tool, rid, err(), **context) == 200, "a different key shared the budget"
    tool, rid, context = first
    assert await post(manager, tool, rid, err(), **context) == 800
    assert await post(manager, tool, rid, ok(), **context) == 0
    tool, rid, context = second
    assert await post(manager, tool, rid, err(), **context) == 400, "a success cleared another key"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"id": 10**5000}, {"id": 10**5000 + 1}),
        ({"id": 10**5000}, {"id": -(10**5000)}),
        ({"email": RaisingStr("bob")}, {"email": "alice"}),
        ({"email": LyingStr("bob")}, {"email": "someone-else"}),
        ("\ud800", "\udfff"),
    ],
    ids=["huge-ints", "huge-int-signs", "raising-str", "lying-str", "surrogates"],
)
async def test_odd_user_identities_never_raise_and_keep_their_own_budget(
    manager_factory: Any, first: Any, second: Any
) -> None:
    manager = await manager_factory({**NO_JITTER, "key_scope": "user"})
    assert await post(manager, "t", "r", err(), user=first) == 200
    assert await post(manager, "t", "r", err(), user=second) == 200
    assert await post(manager, "t", "r", err(), user=first) == 400
    assert await post(manager, "t", "r", ok(), user=first) == 0
    assert await post(manager, "t", "r", err(), user=second) == 400


async def test_the_same_huge_int_is_the_same_user(manager_factory: Any) -> None:
    manager = await manager_factory({**NO_JITTER, "key_scope": "user"})
    assert await post(manager, "t", "r", err(), user={"id": 10**5000}) == 200
    assert await post(manager, "t", "r", err(), user={"id": 10**5000}) == 400


async def test_a_str_subclass_is_the_user_its_text_names(manager_factory: Any) -> None:
    manager = await manager_factory({**NO_JITTER, "key_scope": "user"})
    assert await post(manager, "t", "r", err(), user={"email": RaisingStr("bob")}) == 200
    assert await post(manager, "t", "r", err(), user="bob") == 400


async def test_an_override_applies_only_to_the_tool_it_names(manager_factory: Any) -> None:
    # 17a8224 sent the tool "\ud800" as "\\ud800", so it got that tool's override.
    manager = await manager_factory({**NO_JITTER, "tool_overrides": {"\\ud800": {"backoff_base_ms": 1000}}})
    assert await post(manager, "\\ud800", "r", err()) == 1000
    assert await post(manager, "\ud800", "r", err()) == 200
    plugin = manager.get_plugin(PLUGIN_NAME)
    assert plugin.engine.tool_policy("\ud800").backoff_base_ms == 200
    assert plugin.engine.tool_policy("\\ud800").backoff_base_ms == 1000
