"""model.py: the frozen dataclasses WIT records become, and the error types."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm.model import (
    CONTRACT_MINOR,
    CONTRACT_VERSION,
    CONTRACT_WANTED,
    MESSAGE_PREFIX,
    ConfigError,
    ConfigurationError,
    Opened,
    Policy,
    RetryEngineLoadError,
)

from .conftest import REPO


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


def test_policy_defaults_follow_the_fields_they_default_to() -> None:
    """Left out, the jitter mode follows ``jitter`` and the throttle bounds the transient ones."""
    on = Policy(2, 100, 900, (503,), True, False)
    off = Policy(2, 100, 900, (503,), False, False)
    assert (on.jitter_mode, off.jitter_mode) == ("full", "none")
    assert (on.throttle_backoff_base_ms, on.throttle_max_backoff_ms) == (100, 900)
    explicit = Policy(2, 100, 900, (503,), True, False, "equal", throttle_max_backoff_ms=9000)
    assert (explicit.jitter_mode, explicit.throttle_backoff_base_ms, explicit.throttle_max_backoff_ms) == (
        "equal",
        100,
        9000,
    )


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


def policy_record(**fields: Any) -> SimpleNamespace:
    return record(
        max_retries=2,
        backoff_base_ms=200,
        max_backoff_ms=5000,
        retry_on_status=[429],
        jitter=True,
        check_text_content=False,
        **fields,
    )


@pytest.mark.parametrize(
    ("reads", "hints", "facts", "stateless", "reason"),
    [
        (set(), False, False, False, False),
        ({"result-hints"}, True, False, False, False),
        ({"call-facts", "result-hints"}, True, True, False, False),
        ({"stateless-successes"}, False, False, True, False),
        ({"metrics-reason", "stateless-successes"}, False, False, True, True),
    ],
)
def test_opened_from_record_reads_the_flags_as_a_set(
    reads: set[str], hints: bool, facts: bool, stateless: bool, reason: bool
) -> None:
    rec = record(
        id=2**64 - 1,
        reads=reads,
        key_scope="user",
        warnings=[SimpleNamespace(path="max_retries", message="lowered to 3")],
    )
    setattr(rec, "global", policy_record())
    opened = Opened.from_record(rec)
    assert opened.id == 2**64 - 1
    assert (opened.reads_result_hints, opened.reads_call_facts) == (hints, facts)
    assert (opened.stateless_successes, opened.metrics_reason) == (stateless, reason)
    assert opened.key_scope == "user"
    assert opened.global_policy == Policy(2, 200, 5000, (429,), True, False)
    assert opened.warnings == (ConfigError("max_retries", "lowered to 3"),)


def test_opened_from_incomplete_record_raises() -> None:
    with pytest.raises(AttributeError):
        Opened.from_record(record(id=1, reads=set()))


def test_the_host_speaks_the_contract_of_the_wit() -> None:
    """The host's contract version is the WIT package's, and it loads that minor only."""
    world = (REPO / "wit" / "world.wit").read_text(encoding="utf-8")
    (package,) = re.findall(r"^package contextforge:retry@(\S+);", world, re.M)
    assert package == CONTRACT_VERSION
    assert CONTRACT_VERSION.startswith(f"{CONTRACT_MINOR}.")
    assert CONTRACT_MINOR.count(".") == 1
    assert CONTRACT_WANTED.endswith(".x")
    assert CONTRACT_WANTED.removesuffix(".x") == CONTRACT_MINOR
    assert MESSAGE_PREFIX.split("@") == ["retry-engine", CONTRACT_VERSION]
