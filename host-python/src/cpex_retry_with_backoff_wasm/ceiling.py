"""The gateway's retry ceiling (``max_tool_retries``), read for the engine.

The gateway re-invokes a tool at most ``max_tool_retries`` times whatever the plugin asks for.
The engine lowers every ``max_retries`` above the ceiling to it (a budget above it would leave
retry state behind that a later call sharing the request id inherits): the host only reads the
ceiling and passes it to ``open-policy``.  The native plugin reads it from cpex settings only,
which never carry it; here the sources are, in order:

1. ``mcpgateway.config.settings.max_tool_retries`` when ``mcpgateway`` is importable;
2. the ``MAX_TOOL_RETRIES`` environment variable (what the gateway's settings read);
3. a ``max_tool_retries`` attribute on cpex settings, should a cpex version carry one.

With no source, there is no ceiling.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpex.framework.settings import get_settings  # type: ignore[import-untyped, unused-ignore]

log = logging.getLogger(__name__)

ENV_VAR = "MAX_TOOL_RETRIES"
#: The largest ceiling the engine takes (a u32); a larger one means no ceiling in practice.
_U32_MAX = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A retry ceiling and where it was read from (for the warning)."""

    value: int
    source: str


def _as_count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, 0), _U32_MAX)
    return None


def _from_gateway() -> Ceiling | None:
    try:
        config = importlib.import_module("mcpgateway.config")
        # Gateway 1.0.7 builds its settings lazily on first attribute access, so reading the
        # value can fail (e.g. no JWT_SECRET_KEY outside a running gateway) as well as the import.
        value = _as_count(getattr(getattr(config, "settings", None), "max_tool_retries", None))
    except ImportError:
        return None
    except Exception as exc:  # a gateway whose settings fail to load: try the next source
        log.debug("retry_with_backoff_wasm: mcpgateway settings unavailable: %s", exc)
        return None
    if value is None:
        return None
    return Ceiling(value, "mcpgateway settings max_tool_retries")


def _from_env() -> Ceiling | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        log.warning("retry_with_backoff_wasm: ignoring %s=%r: not an integer", ENV_VAR, raw)
        return None
    return Ceiling(min(max(value, 0), _U32_MAX), f"{ENV_VAR} environment variable")


def _from_cpex() -> Ceiling | None:
    try:
        value = _as_count(getattr(get_settings(), "max_tool_retries", None))
    except Exception as exc:
        log.debug("retry_with_backoff_wasm: cpex settings unavailable: %s", exc)
        return None
    if value is None:
        return None
    return Ceiling(value, "cpex settings max_tool_retries")


_SOURCES: tuple[Callable[[], Ceiling | None], ...] = (_from_gateway, _from_env, _from_cpex)


def read_ceiling() -> Ceiling | None:
    """The first ceiling found among the sources above, or None."""
    for source in _SOURCES:
        found = source()
        if found is not None:
            return found
    return None


__all__ = ["ENV_VAR", "Ceiling", "read_ceiling"]
