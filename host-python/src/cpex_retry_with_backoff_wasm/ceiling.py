"""The gateway's retry ceiling (``max_tool_retries``) and clamping a plugin config to it.

The gateway re-invokes a tool at most ``max_tool_retries`` times whatever the plugin asks for.
A plugin budget above that ceiling leaves retry state behind that a later call sharing the
request id (clients choose it through ``X-Correlation-ID``) would inherit, so the budget is
clamped at start-up.  The native plugin reads the ceiling from cpex settings only, which never
carry it; here the sources are, in order:

1. ``mcpgateway.config.settings.max_tool_retries`` when ``mcpgateway`` is importable;
2. the ``MAX_TOOL_RETRIES`` environment variable (what the gateway's settings read);
3. a ``max_tool_retries`` attribute on cpex settings, should a cpex version carry one.

With no source, nothing is clamped.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cpex.framework.settings import get_settings  # type: ignore[import-untyped, unused-ignore]

from .model import override_path

log = logging.getLogger(__name__)

ENV_VAR = "MAX_TOOL_RETRIES"


@dataclass(frozen=True, slots=True)
class Ceiling:
    """A retry ceiling and where it was read from (for the warning)."""

    value: int
    source: str


def _as_count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
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
    return Ceiling(max(value, 0), f"{ENV_VAR} environment variable")


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


def _warn(key: str, value: object, ceiling: Ceiling) -> None:
    log.warning(
        "retry_with_backoff_wasm: %s=%s exceeds the gateway ceiling max_tool_retries=%d (%s); clamping to %d",
        key,
        value,
        ceiling.value,
        ceiling.source,
        ceiling.value,
    )


def clamp_explicit(config: Mapping[str, Any], ceiling: Ceiling) -> dict[str, Any]:
    """A deep copy of ``config`` whose explicit integer ``max_retries`` values are clamped.

    Done before the engine validates, as the native plugin does, so ``max_retries: 20`` under
    a ceiling of 3 loads as 3.  Values that are not plain ints are left for the engine to judge.
    Logs one warning per clamped key.
    """
    clamped: dict[str, Any] = copy.deepcopy(dict(config))
    value = _as_count(clamped.get("max_retries"))
    if value is not None and value > ceiling.value:
        _warn("max_retries", clamped["max_retries"], ceiling)
        clamped["max_retries"] = ceiling.value
    overrides = clamped.get("tool_overrides")
    if isinstance(overrides, dict):
        for tool, override in overrides.items():
            if not isinstance(override, dict):
                continue
            value = _as_count(override.get("max_retries"))
            if value is not None and value > ceiling.value:
                _warn(f"{override_path(tool)}.max_retries", override["max_retries"], ceiling)
                override["max_retries"] = ceiling.value
    return clamped


def clamp_effective(
    config: dict[str, Any],
    ceiling: Ceiling,
    global_max_retries: int,
    override_max_retries: Mapping[str, int],
) -> bool:
    """Clamp budgets the config does not spell out (e.g. the engine's default of 2).

    ``global_max_retries`` and ``override_max_retries`` are the engine's effective values after
    configuring ``config``.  Writes explicit values into ``config`` (in place) and returns True
    when the engine must be configured again.
    """
    changed = False
    if global_max_retries > ceiling.value:
        _warn("max_retries", f"{global_max_retries} (effective)", ceiling)
        config["max_retries"] = ceiling.value
        changed = True
    overrides = config.get("tool_overrides")
    if isinstance(overrides, dict):
        for tool, effective in override_max_retries.items():
            override = overrides.get(tool)
            if not isinstance(override, dict) or "max_retries" not in override:
                continue  # inherits the (now clamped) global value
            if effective > ceiling.value:
                _warn(f"{override_path(tool)}.max_retries", f"{effective} (effective)", ceiling)
                override["max_retries"] = ceiling.value
                changed = True
    return changed
