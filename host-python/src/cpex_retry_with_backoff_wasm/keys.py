"""How a tool call becomes the engine's state key: key parts, identities, ``key_scope``.

The engine's key is ``tool ++ request-part`` with the tool name's length beside it (WIT
``decide``).  Each part crosses as **itself** when it is valid Unicode (encodable to UTF-8),
at most ``KEY_PART_MAX_CHARS`` characters long and does not start with ``KEY_DIGEST_PREFIX``;
otherwise as ``KEY_DIGEST_PREFIX`` + the hex SHA-256 of its ``surrogatepass`` UTF-8 bytes.

That is injective over every ``str``: a part that crosses as itself never starts with the
prefix, a digested one always does, and ``surrogatepass`` is a one-to-one encoding of every
``str`` (lone surrogates included), so two different parts only meet in a SHA-256 collision.
It also bounds what crosses: no key part is longer than ``KEY_PART_MAX_CHARS`` characters,
however long the tool name or request id the gateway passes.

Under ``key_scope: tenant`` / ``user`` the request part is ``f"{n}:{identity}{request_id}"``
with both parts encoded as above and ``n`` the encoded identity's length, so the identity
ends where ``n`` says and no two (identity, request id) pairs give the same string; the engine
reads the identity back for retry budgets.  When that would exceed ``KEY_PART_MAX_CHARS``, the
request id crosses as its digest, so the identity stays readable; only past that (an identity
of more than about 170 characters) does the whole request part cross as its digest, and its
budget is then the tool's identity-less one.  What each context value maps to is
``user_identity_part``'s table; reading one never raises.

The prefix is a host-only concept: the engine only sees strings (and refuses ``tool_overrides``
names that could never match a tool name as it crosses).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

#: The longest key part (tool name, identity, request id) that crosses as itself, in
#: characters (code points).
KEY_PART_MAX_CHARS: Final = 256
#: What every digested key part starts with, and no part crossing as itself does.
KEY_DIGEST_PREFIX: Final = "#sha256:"
#: The fields of a mapping ``global_context.user`` that name the user, first present wins.
USER_IDENTITY_FIELDS: Final = ("email", "id", "sub")
#: Ints whose decimal form has at most ``KEY_PART_MAX_CHARS`` digits lie strictly between
#: minus this and this.
_DECIMAL_BOUND: Final = 10**KEY_PART_MAX_CHARS
#: Leads the bytes hashed for a larger int: never in UTF-8 (nor ``surrogatepass``), so no
#: ``str`` part has the same digest.
_INT_DIGEST_MARK: Final = b"\xff"


def _digest(data: bytes) -> str:
    return KEY_DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def is_unicode(text: str) -> bool:
    """Whether ``text`` is valid Unicode, i.e. encodable to UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_part(part: str) -> str:
    """``part`` (a plain ``str``) as it crosses into the engine: itself, or its digest."""
    if len(part) <= KEY_PART_MAX_CHARS and not part.startswith(KEY_DIGEST_PREFIX) and is_unicode(part):
        return part
    return _digest(part.encode("utf-8", "surrogatepass"))


def engine_key(tool: str, request_part: str) -> tuple[bytes, int]:
    """The UTF-8 ``key`` and ``tool-len`` of WIT ``decide`` for two plain ``str`` parts."""
    tool = key_part(tool)
    return (tool + key_part(request_part)).encode(), len(tool)


def engine_key_parts(tool: str, request_part: str) -> tuple[str, str]:
    """The two key parts as they cross (for the generic call path, which takes a ``str``)."""
    return key_part(tool), key_part(request_part)


def _plain(text: str) -> str:
    """A ``str`` subclass as a plain ``str``, read without any method it overrides."""
    return text if type(text) is str else str.__str__(text)


def _int_part(value: int) -> str:
    """An int identity: its decimal form when that has at most ``KEY_PART_MAX_CHARS`` digits
    (the same part as the str of those digits), else a digest of its two's-complement bytes
    (no decimal conversion: that is quadratic, and refused past Python's digit limit)."""
    number = int.__index__(value)  # a plain int, whatever an int subclass overrides
    if -_DECIMAL_BOUND < number < _DECIMAL_BOUND:
        return int.__repr__(number)
    size = (number.bit_length() + 8) // 8
    return _digest(_INT_DIGEST_MARK + number.to_bytes(size, "big", signed=True))


def _identity(value: Any) -> str:
    if isinstance(value, str):
        return key_part(_plain(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_part(value)
    return ""


def user_identity_part(user: Any) -> str:
    """The key part naming ``global_context.user``; never raises.

    ======================================  ==========================================
    ``user``                                identity
    ======================================  ==========================================
    a ``str`` (subclasses read as plain)    itself (as a key part: ``key_part``)
    a ``dict``                              its first ``email``, ``id`` or ``sub`` that
                                            is a ``str`` or an ``int`` (not a bool)
    an ``int`` field, at most 256 digits    its decimal form
    an ``int`` field, more digits           a digest of its bytes, unlike any ``str``'s
    anything else, or any exception         ``""`` (no identity: keyed by request id)
    ======================================  ==========================================
    """
    try:
        if isinstance(user, str):
            return key_part(_plain(user))
        if isinstance(user, dict):
            for field in USER_IDENTITY_FIELDS:
                value = user.get(field)
                if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
                    return _identity(value)
    except Exception:
        return ""
    return ""


def tenant_identity_part(tenant: Any) -> str:
    """The key part naming ``global_context.tenant_id``: a ``str`` as a key part, else ``""``;
    never raises."""
    try:
        return key_part(_plain(tenant)) if isinstance(tenant, str) else ""
    except Exception:
        return ""


def state_request_id(scope: str, global_context: Any) -> Any:
    """The request part of the engine's state key under ``key_scope``.

    ``request``: the request id as the gateway gave it (the native key; the engine encodes
    it).  ``tenant``/``user``: ``f"{n}:{identity}{request_id}"`` with both encoded
    (``key_part``) and ``n`` the encoded identity's length; when that is longer than
    ``KEY_PART_MAX_CHARS``, the request id as its digest (the identity stays readable to the
    engine, which keeps retry budgets per identity).  A request id that is not a
    ``str`` is returned as is, for the engine to refuse it (it names
    ``global_context.request_id``), as under ``request``.
    """
    request_id = global_context.request_id
    if scope == "request" or not isinstance(request_id, str):
        return request_id
    if scope == "tenant":
        try:
            tenant = getattr(global_context, "tenant_id", None)
        except Exception:
            tenant = None
        identity = tenant_identity_part(tenant)
    else:
        try:
            user = getattr(global_context, "user", None)
        except Exception:
            user = None
        identity = user_identity_part(user)
    request_part = key_part(_plain(request_id))
    scoped = f"{len(identity)}:{identity}{request_part}"
    if len(scoped) > KEY_PART_MAX_CHARS and not request_part.startswith(KEY_DIGEST_PREFIX):
        # Past the bound the whole part would cross as a digest, and the engine could no longer
        # read the identity its retry budgets are kept by (a client choosing a long request id
        # would leave its tenant's budget): the request id crosses as its digest instead.
        # Still injective: a plain request id never starts with the digest prefix.
        scoped = f"{len(identity)}:{identity}{_digest(_plain(request_id).encode('utf-8', 'surrogatepass'))}"
    return scoped


__all__ = [
    "KEY_DIGEST_PREFIX",
    "KEY_PART_MAX_CHARS",
    "USER_IDENTITY_FIELDS",
    "engine_key",
    "engine_key_parts",
    "is_unicode",
    "key_part",
    "state_request_id",
    "tenant_identity_part",
    "user_identity_part",
]
