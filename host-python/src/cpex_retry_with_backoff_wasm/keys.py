"""How a tool call becomes the engine's state key: key parts, contexts, identities.

The engine's key is five parts, ``tenant ++ server ++ identity ++ tool ++ request id``, with
the first four lengths packed beside it (WIT ``decide``'s ``parts``): the gateway context's
tenant and server (``global_context.tenant_id`` / ``server_id``), the identity ``key_scope``
adds (the user under ``user``), the tool name and the request id.  Each part crosses as
**itself** when it is valid Unicode (encodable to UTF-8), at most ``KEY_PART_MAX_CHARS``
characters long and does not start with ``KEY_DIGEST_PREFIX``; otherwise as
``KEY_DIGEST_PREFIX`` + the hex SHA-256 of its ``surrogatepass`` UTF-8 bytes.

That is injective over every ``str``: a part that crosses as itself never starts with the
prefix, a digested one always does, and ``surrogatepass`` is a one-to-one encoding of every
``str`` (lone surrogates included), so two different parts only meet in a SHA-256 collision.
It also bounds what crosses: no key part is longer than ``KEY_PART_MAX_CHARS`` characters,
however long the tool name or request id the gateway passes.

Each part is its own field, whatever the others' lengths: a long identity or request id never
runs into another part (issue 24 §4).  What each context value maps to is
``user_identity_part``'s and ``context_part``'s; reading one never raises.

The prefix is a host-only concept: the engine only sees strings (and refuses ``tool_overrides``
names that could never match a tool name as it crosses).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from .wire import IDENTITY_LEN_SHIFT, SERVER_LEN_SHIFT, TENANT_LEN_SHIFT, TOOL_LEN_SHIFT

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


def wire_key(tenant: str, server: str, identity: str, tool: str, request_id: str) -> tuple[bytes, int]:
    """The UTF-8 ``key`` and the ``parts`` of WIT ``decide``: ``tenant``, ``server`` and
    ``identity`` already key parts (``context_part``, ``user_identity_part``), ``tool`` and
    ``request_id`` plain ``str`` parts, encoded here.  Each part is encoded exactly once."""
    joined = tenant + server + identity + tool + request_id
    # Inline, the common case: short, ASCII, no "#": every part crosses as itself.
    if len(joined) <= KEY_PART_MAX_CHARS and joined.isascii() and "#" not in joined:
        return joined.encode(), _parts(len(tenant), len(server), len(identity), len(tool))
    tool, request_id = key_part(tool), key_part(request_id)
    parts = _parts(len(tenant), len(server), len(identity), len(tool))
    return (tenant + server + identity + tool + request_id).encode(), parts


def _parts(tenant: int, server: int, identity: int, tool: int) -> int:
    return (
        tenant << TENANT_LEN_SHIFT
        | server << SERVER_LEN_SHIFT
        | identity << IDENTITY_LEN_SHIFT
        | tool << TOOL_LEN_SHIFT
    )


def context_part(value: Any) -> str:
    """The key part naming a gateway context value (``tenant_id``, ``server_id``): a ``str``
    as a key part (inline when it crosses as itself: the hot path reads two per call), an
    ``int`` (not a bool) by its decimal form, anything else ``""`` (no context); never raises."""
    if type(value) is str and len(value) <= KEY_PART_MAX_CHARS and value.isascii() and value[:1] != "#":
        return value
    try:
        return _identity(value)
    except Exception:
        return ""


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


__all__ = [
    "KEY_DIGEST_PREFIX",
    "KEY_PART_MAX_CHARS",
    "USER_IDENTITY_FIELDS",
    "context_part",
    "is_unicode",
    "key_part",
    "user_identity_part",
    "wire_key",
]
