"""Reading a tool result the way the native plugin reads it, and unpacking a decision.

Pure functions, no Wasm: ``read_signals`` packs the few facts the engine needs into the
``signals`` u64 of ``retry-engine.decide`` (the layout and its names are in ``wire``),
``collect_texts`` gathers text items for ``decide-text``, and the ``decision_*`` helpers unpack
the u64 result.
No policy is decided here: which status codes count, budgets and delays live in the engine.

Every read goes through the mapping protocol (``obj[key]``), as the native plugin's
``mapping_get`` does, so dict subclasses such as cpex's ``CopyOnWriteDict`` work.  A missing key
(``KeyError``) or a value that is not subscriptable (``TypeError``) reads as absent; any other
exception raised by a broken mapping propagates, as it does in the native plugin.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

from . import wire
from .keys import is_unicode
from .wire import (
    DELAY_MASK,
    NEED_TEXT,
    REASON_MASK,
    REASON_SHIFT,
    REASONS,
    RETRY_AFTER_MAX_MS,
    RETRY_AFTER_SHIFT,
    RETRY_COUNT_MASK,
    RETRY_COUNT_SHIFT,
    SIG_IDEMPOTENT,
    SIG_INPUT_REQUIRED,
    SIG_IS_ERROR,
    SIG_NOT_RETRYABLE,
    SIG_RETRY_AFTER,
    SIG_STATUS,
    SIG_STRUCTURED,
    SIG_STRUCTURED_IS_ERROR,
    SIG_TIMEOUT,
    SIG_VALIDATION_ERROR,
    STATUS_SHIFT,
)

#: ``X-RateLimit-Reset`` values from here on are epoch seconds, not a delta (September 2001).
EPOCH_SECONDS_FROM: Final = 1_000_000_000
#: JSON-RPC "Invalid params": MCP's code for tool input-validation errors.
JSONRPC_INVALID_PARAMS: Final = -32602
#: ``decision-reason`` ordinals the host acts on.
REASON_RETRY: Final = REASONS.index("retry")
REASON_EXHAUSTED: Final = REASONS.index("exhausted")

_S32_MIN: Final = -(1 << 31)
_S32_MAX: Final = (1 << 31) - 1
_U32_MASK: Final = (1 << 32) - 1

_MISSING: Final[Any] = object()


def _get(obj: Any, key: str) -> Any:
    """``obj[key]``; ``_MISSING`` on KeyError/TypeError (native ``mapping_get``)."""
    try:
        return obj[key]
    except (KeyError, TypeError):
        return _MISSING


def extract_bool(value: Any) -> bool:
    """True only for the bool True (or a true numpy bool), as PyO3's ``extract::<bool>`` reads it.

    ``1``, ``"true"`` and other truthy values are not booleans and read as False.
    """
    if value is True:
        return True
    if value is False:
        return False
    cls = type(value)
    if getattr(cls, "__module__", None) == "numpy" and cls.__name__ in ("bool_", "bool"):
        try:
            return bool(value)
        except Exception:
            return False
    return False


def extract_s32(value: Any) -> int | None:
    """The value as an s32 the way PyO3's ``extract::<i32>`` reads it, else None.

    Ints (a bool reads as 0/1) and objects with ``__index__`` convert; floats, strings and
    ints outside the s32 range do not.
    """
    if type(value) is int:
        number = value
    else:
        try:
            number = operator.index(value)
        except Exception:
            return None
    if _S32_MIN <= number <= _S32_MAX:
        return number
    return None


def pack_signals(
    *,
    is_error: bool = False,
    has_structured: bool = False,
    structured_is_error: bool = False,
    status_code: int | None = None,
) -> int:
    """Pack already-extracted facts into the ``signals`` u64 (the WIT bit layout)."""
    bits = 0
    if is_error:
        bits |= SIG_IS_ERROR
    if has_structured:
        bits |= SIG_STRUCTURED
    if structured_is_error:
        bits |= SIG_STRUCTURED_IS_ERROR
    if status_code is not None:
        if not _S32_MIN <= status_code <= _S32_MAX:
            raise ValueError(f"status_code {status_code} does not fit an s32")
        bits |= SIG_STATUS | ((status_code & _U32_MASK) << STATUS_SHIFT)
    return bits


def read_signals(result: Any) -> int:
    """Read ``result`` (normally the MCP ``CallToolResult`` mapping) into the ``signals`` u64.

    Keys are read in the native plugin's order and only when the native plugin reads them,
    so a mapping that raises on access behaves the same in both plugins.  Each read is
    ``_get`` written out inline (this runs on every tool result, and a Python call per read
    was a measurable share of the hook in ``make bench``).
    """
    try:
        is_error = result["isError"]
    except (KeyError, TypeError):
        is_error = _MISSING
    failed = is_error is True or (is_error is not _MISSING and extract_bool(is_error))
    bits = SIG_IS_ERROR if failed else 0
    try:
        structured = result["structuredContent"]
    except (KeyError, TypeError):
        return bits
    if structured is None:
        return bits
    bits |= SIG_STRUCTURED
    if not bits & SIG_IS_ERROR:
        try:
            structured_is_error = structured["isError"]
        except (KeyError, TypeError):
            structured_is_error = _MISSING
        if structured_is_error is True or (
            structured_is_error is not _MISSING and extract_bool(structured_is_error)
        ):
            # The native plugin stops here (a failure whatever the status code says).
            return bits | SIG_STRUCTURED_IS_ERROR
    try:
        status = structured["status_code"]
    except (KeyError, TypeError):
        return bits
    if type(status) is not int:
        status = extract_s32(status)
        if status is None:
            return bits
    elif not _S32_MIN <= status <= _S32_MAX:
        return bits
    return bits | SIG_STATUS | ((status & _U32_MASK) << STATUS_SHIFT)


def _is_invalid_params(value: Any) -> bool:
    return type(value) is int and value == JSONRPC_INVALID_PARAMS


def _is_str(value: Any, text: str) -> bool:
    return isinstance(value, str) and str.__eq__(value, text)


WallClock = Callable[[], float]


def _number(value: Any) -> float | None:
    """A finite, non-negative int or float (not a bool), else None."""
    if type(value) is bool or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _seconds_or_date_ms(value: Any, wall_clock: WallClock) -> float | None:
    """``Retry-After``: delay-seconds (a number or digit string) or an RFC 9110 HTTP-date."""
    number = _number(value)
    if number is not None:
        return number * 1000
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text) * 1000.0
    try:
        when = parsedate_to_datetime(text)  # IMF-fixdate, RFC 850 and asctime
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # asctime carries no zone: it is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when.timestamp() - wall_clock()) * 1000)


def _rate_limit_reset_ms(value: Any, wall_clock: WallClock) -> float | None:
    """``X-RateLimit-Reset``: delta seconds, or epoch seconds from ``EPOCH_SECONDS_FROM`` on."""
    number = _number(value)
    if number is None and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = float(value.strip())
    if number is None:
        return None
    if number >= EPOCH_SECONDS_FROM:
        return max(0.0, (number - wall_clock()) * 1000)
    return number * 1000


def _header(headers: Any, name: str) -> Any:
    """``headers[name]`` with the name in any case (HTTP header names are case-insensitive)."""
    if not isinstance(headers, Mapping):
        return _MISSING
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return _MISSING


def read_retry_after_ms(structured: Any, wall_clock: WallClock = time.time) -> float | None:
    """The server's delay hint in ms from now, or None (the first readable one, in order).

    ``retry_after_ms``, ``retry_after`` (delay-seconds or HTTP-date), then in ``headers``:
    ``retry-after-ms``, ``Retry-After``, ``X-RateLimit-Reset``.  Absolute times are converted
    with ``wall_clock`` (epoch seconds); a time in the past is 0.
    """
    ms = _number(_get(structured, "retry_after_ms"))
    if ms is not None:
        return ms
    ms = _seconds_or_date_ms(_get(structured, "retry_after"), wall_clock)
    if ms is not None:
        return ms
    headers = _get(structured, "headers")
    if headers is _MISSING:
        return None
    raw = _header(headers, "retry-after-ms")
    ms = _number(raw)
    if ms is None and isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        ms = float(raw.strip())
    if ms is not None:
        return ms
    ms = _seconds_or_date_ms(_header(headers, "retry-after"), wall_clock)
    if ms is not None:
        return ms
    return _rate_limit_reset_ms(_header(headers, "x-ratelimit-reset"), wall_clock)


def read_hints(result: Any, wall_clock: WallClock = time.time) -> int:
    """The safe-classification and delay-hint bits (4..31) of ``result``; never raises.

    Only facts, read after the native plugin's keys (so a mapping that raises on access fails
    there first, as in the native plugin); any exception here reads as "no hint".  Whether
    they count is the engine's decision (``safe_classification``, ``honor_retry_after``).
    """
    try:
        bits = 0
        if _is_str(_get(result, "resultType"), "input_required"):
            bits |= SIG_INPUT_REQUIRED
        if _get(result, "retryable") is False:
            bits |= SIG_NOT_RETRYABLE
        structured = _get(result, "structuredContent")
        if structured is _MISSING or structured is None:
            return bits
        if _get(structured, "retryable") is False:
            bits |= SIG_NOT_RETRYABLE
        error = _get(structured, "error")
        if (
            _is_invalid_params(_get(structured, "code"))
            or (error is not _MISSING and _is_invalid_params(_get(error, "code")))
            or _get(structured, "validation_error") is True
            or _is_str(_get(structured, "error_type"), "validation_error")
        ):
            bits |= SIG_VALIDATION_ERROR
        hint = read_retry_after_ms(structured, wall_clock)
        if hint is not None:
            ms = min(math.ceil(hint), RETRY_AFTER_MAX_MS)
            bits |= SIG_RETRY_AFTER | (ms << RETRY_AFTER_SHIFT)
        return bits
    except Exception:
        return 0


#: The plugin-context state key the gateway sets to True before it hands a timeout to
#: ``tool_post_invoke`` (1.0.7 and 1.1.0, ``ToolService``'s timeout handler).
TIMEOUT_STATE_KEY: Final = "cb_timeout_failure"
#: The ``global_context.metadata`` key of the tool's record (set before ``tool_pre_invoke``).
TOOL_METADATA_KEY: Final = "tool"
#: MCP tool annotations that make a tool safe to run twice.
IDEMPOTENT_ANNOTATIONS: Final = ("readOnlyHint", "idempotentHint")
#: The fields of the tool's record the gateway resolves a call's name against (1.0.7 and 1.1.0):
#: ``name`` always, ``original_name`` for a call scoped to a virtual server.  The record is the
#: decided tool's only when one of them equals the call's name exactly.
TOOL_NAME_FIELDS: Final = ("name", "original_name")


def _member(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, else the attribute ``name``; ``_MISSING`` if neither."""
    if isinstance(obj, Mapping):
        return _get(obj, name)
    return getattr(obj, name, _MISSING)


def _names_tool(record: Any, tool: Any) -> bool:
    """The record is ``tool``'s: its ``name`` or ``original_name`` is the str ``tool`` exactly."""
    if not isinstance(tool, str) or not tool:
        return False
    for field in TOOL_NAME_FIELDS:
        value = _member(record, field)
        # str.__eq__ on two strs: a str subclass's own __eq__ is never called.
        if isinstance(value, str) and str.__eq__(value, tool) is True:
            return True
    return False


def read_call_facts(context: Any, tool: Any) -> int:
    """The facts of the call of ``tool`` (signal bits 30..31) from the plugin ``context``; never
    raises.

    - bit 30: the gateway marked this failure a timeout: the state ``cb_timeout_failure`` of
      this plugin's local context is True. It is taken out as it is read: the gateway sets it
      once per timeout, and the same local context reaches every later attempt of the call.
    - bit 31: the tool's MCP annotations (``global_context.metadata["tool"]``, a record or a
      mapping, its ``annotations`` a mapping or a record) say ``readOnlyHint`` or
      ``idempotentHint`` is True, and the record is the one of ``tool``, the name being decided
      (``payload.name``): its ``name`` or its ``original_name`` is that str, exactly.  That is
      how the gateway finds the tool for a call (1.0.7 and 1.1.0, ``ToolService.invoke_tool``,
      which passes the caller's name unchanged to ``tool_post_invoke``): by ``name`` (the
      prefixed ``<gateway-slug><sep><custom-name-slug>``), and, for a call scoped to a virtual
      server, by ``original_name`` too (the upstream's own name; 1.0.7
      ``_load_invocable_tools``, 1.1.0 ``_select_invocable_tool``).  ``custom_name``,
      ``custom_name_slug`` and ``display_name`` are never lookup keys, so they never match.
      The annotations of any other record (another tool's) are not read.
      The gateway provides the record only where some plugin has ``tool_pre_invoke``; without
      it, with a record of another tool, or when anything is not as expected, the bit is 0 (not
      idempotent, the MCP default).

    Whether they count is the engine's decision (``non_idempotent_retries``, ``idempotent``).
    """
    bits = 0
    try:
        state = context.state
        if isinstance(state, dict) and state.pop(TIMEOUT_STATE_KEY, None) is True:
            bits |= SIG_TIMEOUT
    except Exception:
        pass
    try:
        record = _member(context.global_context.metadata, TOOL_METADATA_KEY)
        if _names_tool(record, tool):
            annotations = _member(record, "annotations")
            if any(_member(annotations, name) is True for name in IDEMPOTENT_ANNOTATIONS):
                bits |= SIG_IDEMPOTENT
    except Exception:
        pass
    return bits


def collect_texts(result: Any) -> list[str]:
    """The text items ``decide-text`` reads: the ``text`` of ``content`` items whose ``type`` is
    the str ``"text"``, in order, within the wire's bounds.

    ``content`` must be a list (or list subclass, iterated at the C level as PyO3 does);
    items whose ``text`` is not a str are skipped, and so are texts that are not valid Unicode
    (lone surrogates), as the native plugin cannot read them either.  Str subclasses are
    copied to plain str.  Of the remaining items, at most ``wire.TEXT_MAX_ITEMS`` are read and
    at most ``wire.TEXT_MAX_CHARS`` characters of them in all: the item that reaches the
    character bound is cut there (the engine judges it on what is complete before the cut,
    reading the same bounds), and nothing after the bound is read.
    """
    content = _get(result, "content")
    if not isinstance(content, list):
        return []
    texts: list[str] = []
    left = wire.TEXT_MAX_CHARS
    for item in list.__iter__(content):
        kind = _get(item, "type")
        if not isinstance(kind, str) or not str.__eq__(kind, "text"):
            continue
        text = _get(item, "text")
        if not isinstance(text, str):
            continue
        # Cut before copying or checking: only what crosses is ever read in full.
        if str.__len__(text) >= left:
            text = str.__getitem__(text, slice(0, left))
        elif type(text) is not str:
            text = str.__str__(text)
        # A text the engine cannot be sent takes nothing of the bounds, so the engine, which
        # counts what it receives, cuts exactly where this does.
        if not is_unicode(text):
            continue
        texts.append(text)
        left -= len(text)
        if not left or len(texts) == wire.TEXT_MAX_ITEMS:
            break
    return texts


def decision_delay_ms(decision: int) -> int:
    """Delay before the retry in milliseconds (0 = do not retry)."""
    return decision & DELAY_MASK


def decision_retry_count(decision: int) -> int:
    """Consecutive failures of the key after this result (0 on success)."""
    return (decision >> RETRY_COUNT_SHIFT) & RETRY_COUNT_MASK


def decision_reason(decision: int) -> str:
    """The ``decision-reason`` name: ``success``, ``retry``, ``exhausted``, ``non-retryable``, ..."""
    ordinal = (decision >> REASON_SHIFT) & REASON_MASK
    if ordinal >= len(REASONS):
        raise ValueError(f"unknown decision-reason ordinal {ordinal}")
    return REASONS[ordinal]


def decision_needs_text(decision: int) -> bool:
    """The engine needs the result's text items (``decide-text``); nothing was changed."""
    return bool(decision & NEED_TEXT)
