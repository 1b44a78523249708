"""ceiling.py: where the gateway ceiling comes from and how a config is clamped to it."""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import ceiling
from cpex_retry_with_backoff_wasm.ceiling import Ceiling, clamp_effective, clamp_explicit, read_ceiling


def install_gateway(monkeypatch: pytest.MonkeyPatch, max_tool_retries: Any) -> None:
    package = types.ModuleType("mcpgateway")
    config = types.ModuleType("mcpgateway.config")
    config.settings = types.SimpleNamespace(max_tool_retries=max_tool_retries)  # type: ignore[attr-defined]
    package.config = config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mcpgateway", package)
    monkeypatch.setitem(sys.modules, "mcpgateway.config", config)


def install_cpex_settings(monkeypatch: pytest.MonkeyPatch, **attrs: Any) -> None:
    monkeypatch.setattr(ceiling, "get_settings", lambda: types.SimpleNamespace(**attrs))


def test_no_source_no_ceiling() -> None:
    assert read_ceiling() is None


def test_gateway_settings_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    install_gateway(monkeypatch, 5)
    monkeypatch.setenv("MAX_TOOL_RETRIES", "1")
    assert read_ceiling() == Ceiling(5, "mcpgateway settings max_tool_retries")


def test_env_used_without_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", " 4 ")
    assert read_ceiling() == Ceiling(4, "MAX_TOOL_RETRIES environment variable")


def test_env_wins_over_cpex_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", "2")
    install_cpex_settings(monkeypatch, max_tool_retries=7)
    assert read_ceiling() == Ceiling(2, "MAX_TOOL_RETRIES environment variable")


def test_cpex_settings_last(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cpex_settings(monkeypatch, max_tool_retries=6)
    assert read_ceiling() == Ceiling(6, "cpex settings max_tool_retries")


def test_cpex_settings_without_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    install_cpex_settings(monkeypatch)
    assert read_ceiling() is None


def test_gateway_without_attribute_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    install_gateway(monkeypatch, None)
    monkeypatch.setenv("MAX_TOOL_RETRIES", "3")
    assert read_ceiling() == Ceiling(3, "MAX_TOOL_RETRIES environment variable")


def test_gateway_import_failure_falls_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name: str) -> Any:
        raise RuntimeError("settings validation failed")

    monkeypatch.setattr(ceiling.importlib, "import_module", broken)
    monkeypatch.setenv("MAX_TOOL_RETRIES", "1")
    assert read_ceiling() == Ceiling(1, "MAX_TOOL_RETRIES environment variable")


def test_gateway_settings_failing_on_access_fall_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (found by the e2e run): gateway 1.0.7 builds its settings lazily, so reading
    `settings.max_tool_retries` raises (e.g. SecurityConfigurationError without JWT_SECRET_KEY)."""

    class LazySettings:
        @property
        def max_tool_retries(self) -> int:
            raise RuntimeError("JWT_SECRET_KEY is not set")

    install_gateway(monkeypatch, None)
    sys.modules["mcpgateway.config"].settings = LazySettings()  # type: ignore[attr-defined]
    monkeypatch.setenv("MAX_TOOL_RETRIES", "2")
    assert read_ceiling() == Ceiling(2, "MAX_TOOL_RETRIES environment variable")


@pytest.mark.parametrize("raw", ["three", "3.5", ""])
def test_env_not_an_integer_is_ignored(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", raw)
    assert read_ceiling() is None


def test_negative_ceiling_reads_as_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", "-2")
    assert read_ceiling() == Ceiling(0, "MAX_TOOL_RETRIES environment variable")


C3 = Ceiling(3, "test")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, {}),
        ({"max_retries": 2}, {"max_retries": 2}),
        ({"max_retries": 3}, {"max_retries": 3}),
        ({"max_retries": 9}, {"max_retries": 3}),
        ({"max_retries": 50}, {"max_retries": 3}),
        # not a plain int: left for the engine to reject
        ({"max_retries": "9"}, {"max_retries": "9"}),
        ({"max_retries": True}, {"max_retries": True}),
        ({"max_retries": 9.0}, {"max_retries": 9.0}),
        (
            {"tool_overrides": {"a": {"max_retries": 8}, "b": {"max_retries": 1}, "c": {}}},
            {"tool_overrides": {"a": {"max_retries": 3}, "b": {"max_retries": 1}, "c": {}}},
        ),
        ({"tool_overrides": {"a": "nonsense"}}, {"tool_overrides": {"a": "nonsense"}}),
        ({"tool_overrides": ["a"]}, {"tool_overrides": ["a"]}),
    ],
)
def test_clamp_explicit(config: dict[str, Any], expected: dict[str, Any]) -> None:
    assert clamp_explicit(config, C3) == expected


def test_clamp_explicit_copies_and_warns_per_key(caplog: pytest.LogCaptureFixture) -> None:
    config = {"max_retries": 7, "tool_overrides": {"search": {"max_retries": 10}}}
    with caplog.at_level(logging.WARNING, logger="cpex_retry_with_backoff_wasm.ceiling"):
        clamped = clamp_explicit(config, Ceiling(3, "MAX_TOOL_RETRIES environment variable"))
    assert config == {"max_retries": 7, "tool_overrides": {"search": {"max_retries": 10}}}
    assert clamped == {"max_retries": 3, "tool_overrides": {"search": {"max_retries": 3}}}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "max_retries=7 exceeds the gateway ceiling max_tool_retries=3" in messages[0]
    assert "MAX_TOOL_RETRIES environment variable" in messages[0]
    assert "tool_overrides.search.max_retries=10" in messages[1]


@pytest.mark.parametrize(
    ("config", "global_max", "overrides", "changed", "expected"),
    [
        ({}, 2, {}, False, {}),
        ({}, 4, {}, True, {"max_retries": 3}),
        (
            {"tool_overrides": {"a": {"max_retries": True}}},
            2,
            {"a": 5},
            True,
            {"tool_overrides": {"a": {"max_retries": 3}}},
        ),
        # an override that inherits the global budget is fixed by clamping the global one
        (
            {"max_retries": 9, "tool_overrides": {"a": {}}},
            9,
            {"a": 9},
            True,
            {"max_retries": 3, "tool_overrides": {"a": {}}},
        ),
    ],
)
def test_clamp_effective(
    config: dict[str, Any],
    global_max: int,
    overrides: dict[str, int],
    changed: bool,
    expected: dict[str, Any],
) -> None:
    assert clamp_effective(config, C3, global_max, overrides) is changed
    assert config == expected
