"""model.py: the frozen dataclasses WIT records become, and the error types."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm.model import (
    MESSAGE_PREFIX,
    ConfigError,
    ConfigurationError,
    Policy,
    RetryEngineLoadError,
)


def record(**fields: Any) -> SimpleNamespace:
    """A stand-in for ``wasmtime.component.Record`` (kebab-case attribute names)."""
    ns = SimpleNamespace()
    for name, value in fields.items():
        setattr(ns, name.replace("_", "-"), value)
    return ns


def test_policy_from_record_uses_kebab_case_fields() -> None:
    rec = record(
        max_retries=3,
        backoff_base_ms=100,
        max_backoff_ms=900,
        retry_on_status=[503, 429],
        jitter=False,
        check_text_content=True,
    )
    assert Policy.from_record(rec) == Policy(3, 100, 900, (503, 429), False, True)


def test_policy_metadata_is_the_native_retry_policy_shape() -> None:
    policy = Policy(2, 200, 5000, (429, 500), True, False)
    assert policy.metadata() == {
        "max_retries": 2,
        "backoff_base_ms": 200,
        "max_backoff_ms": 5000,
        "retry_on_status": [429, 500],
    }
    assert policy.metadata() is not policy.metadata()


def test_policy_is_frozen_and_hashable() -> None:
    policy = Policy(2, 200, 5000, (429,), True, False)
    assert hash(policy) == hash(Policy(2, 200, 5000, (429,), True, False))
    with pytest.raises(AttributeError):
        policy.jitter = False  # type: ignore[misc]


def test_policy_from_incomplete_record_raises() -> None:
    with pytest.raises(AttributeError):
        Policy.from_record(record(max_retries=1))


@pytest.mark.parametrize(
    ("path", "message", "text"),
    [
        ("max_retries", "must be <= 10, got 11", "max_retries: must be <= 10, got 11"),
        ("tool_overrides.a.b", "must be > 0", "tool_overrides.a.b: must be > 0"),
        ("", "must be a mapping, got a list", "must be a mapping, got a list"),
    ],
)
def test_config_error_text(path: str, message: str, text: str) -> None:
    assert str(ConfigError.from_record(SimpleNamespace(path=path, message=message))) == text


def test_configuration_error_joins_every_problem() -> None:
    exc = ConfigurationError((ConfigError("a", "bad"), ConfigError("b.c", "worse")))
    assert isinstance(exc, ValueError)
    assert str(exc) == f"{MESSAGE_PREFIX}: invalid configuration: a: bad; b.c: worse"
    assert exc.errors[1].path == "b.c"


def test_configuration_error_without_details() -> None:
    assert "rejected without details" in str(ConfigurationError(()))


def test_load_error_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError):
        raise RetryEngineLoadError("x")
