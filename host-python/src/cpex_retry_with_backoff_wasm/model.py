"""Host-side value types: what the WIT records become once they cross the boundary.

Nothing above ``engine.py`` ever sees a ``wasmtime.component.Record``; the adapter converts
``policy`` and ``config-error`` into these frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Name of the component's WIT interface and the contract version this host implements.
COMPONENT_NAME = "retry-engine"
CONTRACT_VERSION = "0.4.0"
#: Contract minors this host loads, newest first: its own, and the older ones, whose components
#: differ only in ``policy`` fields the host reads with their defaults, in configuration keys
#: (``KEYS_SINCE``) and in signal bits the host sends only where those keys are in force.
#: Loading an older build lets a hot reload carry live state from it into a newer one.
CONTRACT_MINORS = ("0.4", "0.3", "0.2")
#: Configuration keys (global and per tool) by the minor that introduced them: a component of
#: an older minor would ignore them, so the host refuses them for it instead.
KEYS_SINCE = {
    "0.3": ("backoff", "throttle_backoff_base_ms", "throttle_max_backoff_ms"),
    "0.4": ("non_idempotent_retries", "idempotent"),
}
#: Keys of ``KEYS_SINCE`` whose ``null`` is a valid value asking for what an older component does
#: anyway (the transient bounds; no configured idempotency): not refused. Any other value of a
#: newer key, ``null`` included, is.
NULL_MEANS_OLD_BEHAVIOUR = frozenset({"throttle_backoff_base_ms", "throttle_max_backoff_ms", "idempotent"})
#: How messages name the versions this host loads, e.g. ``0.4.x (or 0.3.x) (or 0.2.x)``.
CONTRACT_WANTED = f"{CONTRACT_MINORS[0]}.x" + "".join(f" (or {m}.x)" for m in CONTRACT_MINORS[1:])
#: Prefix for every message this package raises or logs about the component.
MESSAGE_PREFIX = f"{COMPONENT_NAME}@{CONTRACT_VERSION}"


def override_path(tool: str) -> str:
    """``tool_overrides.<tool>`` as the component writes it in error paths: quoted when the name is empty or
    contains ``.``, ``[``, ``]`` or ``"``."""
    if tool and not any(c in tool for c in '.[]"'):
        return f"tool_overrides.{tool}"
    escaped = tool.replace('"', '\\"')
    return f'tool_overrides["{escaped}"]'


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective retry policy of a tool (WIT record ``policy``)."""

    max_retries: int
    backoff_base_ms: int
    max_backoff_ms: int
    retry_on_status: tuple[int, ...]
    jitter: bool
    check_text_content: bool
    #: WIT ``jitter-mode``: ``none``, ``full``, ``equal`` or ``decorrelated``; left out, it
    #: follows ``jitter`` (``full`` when on, ``none`` when off).
    jitter_mode: str = ""
    #: WIT ``max-total-delay-ms``: the ``(tool, request)`` deadline in ms, or None.
    max_total_delay_ms: int | None = None
    #: WIT ``safe-classification``.
    safe_classification: bool = False
    #: WIT ``honor-retry-after``.
    honor_retry_after: bool = False
    #: WIT ``max-retry-after-ms``.
    max_retry_after_ms: int = 60_000
    #: WIT ``retry-budget-percent``: share of a token a success deposits, or None (no budget).
    retry_budget_percent: int | None = None
    #: WIT ``retry-budget-min-per-sec``.
    retry_budget_min_per_sec: int = 1
    #: WIT ``backoff``: ``exponential``, ``linear`` or ``constant``.
    backoff: str = "exponential"
    #: WIT ``throttle-backoff-base-ms`` / ``throttle-max-backoff-ms``: the throttle class's
    #: bounds; left out (a 0.2 component has none), the transient ones.
    throttle_backoff_base_ms: int | None = None
    throttle_max_backoff_ms: int | None = None
    #: WIT ``non-idempotent-retries``: ``all``, ``throttled`` or ``none``.
    non_idempotent_retries: str = "all"
    #: WIT ``idempotent``: the configured idempotency, or None (the annotations decide).
    idempotent: bool | None = None

    def __post_init__(self) -> None:
        if not self.jitter_mode:
            object.__setattr__(self, "jitter_mode", "full" if self.jitter else "none")
        if self.throttle_backoff_base_ms is None:
            object.__setattr__(self, "throttle_backoff_base_ms", self.backoff_base_ms)
        if self.throttle_max_backoff_ms is None:
            object.__setattr__(self, "throttle_max_backoff_ms", self.max_backoff_ms)

    @property
    def throttle_differs(self) -> bool:
        """Whether throttled failures (429 or a server delay hint) have bounds of their own."""
        return (self.throttle_backoff_base_ms, self.throttle_max_backoff_ms) != (
            self.backoff_base_ms,
            self.max_backoff_ms,
        )

    @property
    def reads_call_facts(self) -> bool:
        """Whether decisions depend on the call's timeout mark and the tool's annotations."""
        return self.non_idempotent_retries != "all"

    @classmethod
    def from_record(cls, record: Any) -> Policy:
        """Convert a ``wasmtime.component.Record`` (kebab-case fields) into a ``Policy``."""
        return cls(
            max_retries=int(getattr(record, "max-retries")),
            backoff_base_ms=int(getattr(record, "backoff-base-ms")),
            max_backoff_ms=int(getattr(record, "max-backoff-ms")),
            retry_on_status=tuple(int(s) for s in getattr(record, "retry-on-status")),
            jitter=bool(record.jitter),
            check_text_content=bool(getattr(record, "check-text-content")),
            jitter_mode=str(getattr(record, "jitter-mode", "")),
            max_total_delay_ms=_optional_int(getattr(record, "max-total-delay-ms", None)),
            safe_classification=bool(getattr(record, "safe-classification", False)),
            honor_retry_after=bool(getattr(record, "honor-retry-after", False)),
            max_retry_after_ms=int(getattr(record, "max-retry-after-ms", 60_000)),
            retry_budget_percent=_optional_int(getattr(record, "retry-budget-percent", None)),
            retry_budget_min_per_sec=int(getattr(record, "retry-budget-min-per-sec", 1)),
            backoff=str(getattr(record, "backoff", "exponential")),
            throttle_backoff_base_ms=_optional_int(getattr(record, "throttle-backoff-base-ms", None)),
            throttle_max_backoff_ms=_optional_int(getattr(record, "throttle-max-backoff-ms", None)),
            non_idempotent_retries=str(getattr(record, "non-idempotent-retries", "all")),
            idempotent=_optional_bool(getattr(record, "idempotent", None)),
        )

    def metadata(self) -> dict[str, Any]:
        """The ``retry_policy`` mapping the native plugin reports from ``resource_post_fetch``."""
        return {
            "max_retries": self.max_retries,
            "backoff_base_ms": self.backoff_base_ms,
            "max_backoff_ms": self.max_backoff_ms,
            "retry_on_status": list(self.retry_on_status),
        }


@dataclass(frozen=True, slots=True)
class ConfigError:
    """One problem the engine found in a configuration (WIT record ``config-error``)."""

    path: str
    message: str

    @classmethod
    def from_record(cls, record: Any) -> ConfigError:
        """Convert a ``wasmtime.component.Record`` into a ``ConfigError``."""
        return cls(path=str(record.path), message=str(record.message))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RetryEngineLoadError(RuntimeError):
    """The ``.wasm`` could not be read, compiled, linked or instantiated."""


class ConfigurationError(ValueError):
    """The engine rejected the plugin configuration; ``errors`` lists every problem found."""

    def __init__(self, errors: tuple[ConfigError, ...]) -> None:
        self.errors = errors
        joined = "; ".join(str(e) for e in errors) or "rejected without details"
        super().__init__(f"{MESSAGE_PREFIX}: invalid configuration: {joined}")
