"""Issue 12 §3 and §4: the state key is injective for every ``str``, and no context value makes
the hook raise.

Unit tests of ``keys`` (what each tenant, server, identity, tool name and request id crosses
as, each in its own field of the key), then the same through the real cpex PluginManager and
the real .wasm: keys that collided on 17a8224 get separate budgets, and odd identities under
``key_scope`` get a defined key instead of an exception.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm.keys import (
    KEY_DIGEST_PREFIX,
    KEY_PART_MAX_CHARS,
    context_part,
    key_part,
    user_identity_part,
    wire_key,
)
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, IDENTITY_LEN_SHIFT, SERVER_LEN_SHIFT, TOOL_LEN_SHIFT

from .conftest import PLUGIN_NAME, err, ok
from .test_instance import decide, open_policy

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


def parts(tenant: int, server: int, identity: int, tool: int) -> int:
    """``decide``'s ``parts`` for these lengths."""
    return server << SERVER_LEN_SHIFT | identity << IDENTITY_LEN_SHIFT | tool << TOOL_LEN_SHIFT | tenant


def test_wire_key_is_the_layout_of_decide() -> None:
    assert wire_key("", "", "", "tool", "req") == (b"toolreq", parts(0, 0, 0, 4))
    assert wire_key("acme", "srv", "bob", "tool", "req") == (b"acmesrvbobtoolreq", parts(4, 3, 3, 4))
    assert wire_key("", "", "", "é", "✓") == ("é✓".encode(), parts(0, 0, 0, 1))
    long_tool = "t" * 1000
    key, packed = wire_key("", "", "", long_tool, "\ud800")
    assert packed == parts(0, 0, 0, len(digest(long_tool)))
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
    assert context_part(RaisingStr("acme")) == "acme"
    assert type(user_identity_part(LyingStr("bob"))) is str
    assert type(context_part(LyingStr("acme"))) is str


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
    assert context_part(None) == ""
    assert context_part(["acme"]) == ""
    assert context_part(True) == ""


def test_context_parts() -> None:
    """A tenant or server id: a str as a key part, an int by its decimal form (as the str of its
    digits), anything else no context."""
    assert context_part("acme") == "acme"
    assert context_part("\ud800") == digest("\ud800")
    assert context_part("s" * 1000) == digest("s" * 1000)
    assert context_part(7) == context_part("7") == "7"
    assert context_part(RaisingInt(42)) == "42"
    assert context_part(10**5000).startswith(KEY_DIGEST_PREFIX)


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
    ("tenant", "identity", "want"),
    [
        pytest.param(
            "",
            user_identity_part({"id": 10**300}),
            (f"{user_identity_part({'id': 10**300})}tr:1", (0, 72)),
            id="huge-int",
        ),
        pytest.param(
            "",
            user_identity_part("\ud800"),
            (f"{digest(chr(0xD800))}tr:1", (0, 72)),
            id="surrogate-user",
        ),
        pytest.param("", user_identity_part("\\"), ("\\tr:1", (0, 1)), id="backslash-user"),
        # The tenant crosses as the instance reads it: a key part (``context_part``).
        pytest.param(
            context_part("\ud800"), "", (f"{digest(chr(0xD800))}tr:1", (72, 0)), id="surrogate-tenant"
        ),
        pytest.param(
            "", user_identity_part({"email": RaisingStr("bob")}), ("bobtr:1", (0, 3)), id="raising-str"
        ),
    ],
)
def test_each_part_crosses_in_its_own_field(
    tenant: str, identity: str, want: tuple[str, tuple[int, int]]
) -> None:
    """The tenant and the identity are fields of their own, never length-prefixed into the
    request id: an odd value of either crosses as a key part, and the request id is kept."""
    text, (tenant_len, identity_len) = want
    assert wire_key(tenant, "", identity, "t", "r:1") == (
        text.encode(),
        parts(tenant_len, 0, identity_len, 1),
    )


def test_a_long_request_id_never_hides_the_tenant() -> None:
    """Issue 16: the engine reads the tenant for per-tenant budgets; a long request id must not
    hide it.  Each part has its own bound, so the tenant crosses as itself however long the
    request id."""
    key, packed = wire_key("acme", "", "", "t", "r" * 257)
    assert (key, packed) == (f"acmet{digest('r' * 257)}".encode(), parts(4, 0, 0, 1))
    at_the_bound = wire_key("acme", "", "", "t", "r" * KEY_PART_MAX_CHARS)
    assert at_the_bound == (f"acmet{'r' * KEY_PART_MAX_CHARS}".encode(), parts(4, 0, 0, 1))


def test_the_request_id_crosses_as_a_key_part() -> None:
    assert wire_key("", "", "u", "t", "\ud800") == (f"ut{digest(chr(0xD800))}".encode(), parts(0, 0, 1, 1))
    assert wire_key("", "", "", "t", "r:1") == (b"tr:1", parts(0, 0, 0, 1))


@pytest.mark.parametrize("scope", ["user", "tenant", "request"])
def test_raising_context_attributes_are_no_identity_and_no_context(scope: str) -> None:
    """A global context whose ``user`` and ``tenant_id`` raise is decided as one with neither."""
    policy = open_policy({**NO_JITTER, "key_scope": scope, "max_retries": 5})
    assert decide(policy, "t", "r:1", err()) & DELAY_MASK == 200
    assert policy.instance.decide(policy, "t", Context(), err()) & DELAY_MASK == 400
    assert policy.instance.decide(policy, "t", Context(), err()) & DELAY_MASK == 800
    assert decide(policy, "t", "r:1", err(), tenant_id="acme") & DELAY_MASK == 200


def test_a_huge_int_tenant_and_the_str_spelling_its_digest_are_two_contexts() -> None:
    """``context_part`` gives a huge int its own digest, unlike any str's; a duck-typed global
    context may carry an int tenant (cpex's own GlobalContext only a str)."""
    policy = open_policy({**NO_JITTER, "max_retries": 5})
    huge = 10**300
    spelled = context_part(huge)
    assert spelled.startswith(KEY_DIGEST_PREFIX)

    def context(tenant: Any) -> SimpleNamespace:
        return SimpleNamespace(request_id="r", tenant_id=tenant, server_id=None, user=None)

    assert policy.instance.decide(policy, "t", context(huge), err()) & DELAY_MASK == 200
    assert policy.instance.decide(policy, "t", context(spelled), err()) & DELAY_MASK == 200


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
    assert plugin.policy.tool_policy("\ud800").backoff_base_ms == 200
    assert plugin.policy.tool_policy("\\ud800").backoff_base_ms == 1000
