"""Host-side value types: what the WIT records become once they cross the boundary.

Nothing above ``sandbox.py`` ever sees a ``wasmtime.component.Record``; it converts ``policy``,
``config-error`` and ``opened-policy`` into these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Name of the component's WIT interface and the contract version this host implements.
COMPONENT_NAME = "retry-engine"
CONTRACT_VERSION = "0.5.0"
#: The contract minor this host loads (a newer patch of it loads too). Components of older
#: minors are refused: 0.5 made one instance hold every configuration of the process, which
#: older builds cannot.
CONTRACT_MINOR = "0.5"
#: How messages name the versions this host loads.
CONTRACT_WANTED = f"{CONTRACT_MINOR}.x"
#: Prefix for every message this package raises or logs about the component.
MESSAGE_PREFIX = f"{COMPONENT_NAME}@{CONTRACT_VERSION}"


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
class Opened:
    """What ``open-policy`` answered (WIT record ``opened-policy``)."""

    #: The policy's id: the same for the same stanza, configuration text and ceiling in every
    #: instance of the contract.
    id: int
    #: WIT ``policy-reads``: signal bits 4..29 matter for some tool.
    reads_result_hints: bool
    #: ... bits 30..31 matter for some tool.
    reads_call_facts: bool
    #: A result whose signals are 0 changes nothing for a key without state.
    stateless_successes: bool
    #: ``metrics_reason``: the trace metrics carry the reason.
    metrics_reason: bool
    #: WIT ``key-scope``: ``request``, ``tenant`` or ``user``.
    key_scope: str
    #: The global policy (what ``resource_post_fetch`` reports).
    global_policy: Policy
    #: One per ``max_retries`` lowered to the gateway's ceiling.
    warnings: tuple[ConfigError, ...]

    @classmethod
    def from_record(cls, record: Any) -> Opened:
        """Convert a ``wasmtime.component.Record`` (kebab-case fields; flags read as a set)."""
        reads = {str(flag) for flag in record.reads}
        return cls(
            id=int(record.id),
            reads_result_hints="result-hints" in reads,
            reads_call_facts="call-facts" in reads,
            stateless_successes="stateless-successes" in reads,
            metrics_reason="metrics-reason" in reads,
            key_scope=str(getattr(record, "key-scope")),
            global_policy=Policy.from_record(getattr(record, "global")),
            warnings=tuple(ConfigError.from_record(w) for w in record.warnings),
        )


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
