"""ceiling.py: where the gateway ceiling comes from; the engine lowers a configuration to it.

The host only reads the ceiling and passes it to ``open-policy``; the engine lowers every
effective ``max_retries`` above it, before validating, and returns one warning per key path,
which the host logs with the stanza and the ceiling's source.
"""

from __future__ import annotations

import logging
import sys
import types
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import ConfigurationError, ceiling
from cpex_retry_with_backoff_wasm.ceiling import Ceiling, read_ceiling

from .conftest import PLUGIN_NAME, direct_plugin
from .test_instance import open_policy


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
        ({}, (2, {})),
        ({"max_retries": 2}, (2, {})),
        ({"max_retries": 3}, (3, {})),
        ({"max_retries": 9}, (3, {})),
        ({"max_retries": 50}, (3, {})),
        (
            {"tool_overrides": {"a": {"max_retries": 8}, "b": {"max_retries": 1}, "c": {}}},
            (2, {"a": 3, "b": 1, "c": 2}),
        ),
        # An override that inherits the global budget is lowered with it.
        ({"max_retries": 9, "tool_overrides": {"a": {}}}, (3, {"a": 3})),
    ],
)
def test_the_engine_lowers_every_budget_above_the_ceiling(
    config: dict[str, Any], expected: tuple[int, dict[str, int]]
) -> None:
    policy = open_policy(config, ceiling=C3)
    global_max, per_tool = expected
    assert policy.global_policy.max_retries == global_max
    assert {tool: policy.tool_policy(tool).max_retries for tool in per_tool} == per_tool


@pytest.mark.parametrize(
    ("config", "path"),
    [
        # not a plain int: refused by the engine, ceiling or not
        ({"max_retries": "9"}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"max_retries": 9.0}, "max_retries"),
        ({"tool_overrides": {"a": {"max_retries": True}}}, "tool_overrides.a.max_retries"),
        ({"tool_overrides": {"a": "nonsense"}}, "tool_overrides.a"),
        ({"tool_overrides": ["a"]}, "tool_overrides"),
    ],
)
def test_the_ceiling_rescues_no_malformed_budget(config: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_policy(config, ceiling=C3)
    assert [e.path for e in info.value.errors] == [path]


@pytest.mark.parametrize(
    ("config", "ceiling_value", "paths"),
    [
        ({}, 3, []),
        ({}, 1, ["max_retries"]),
        ({"max_retries": 3, "tool_overrides": {"a": {}}}, 3, []),
        ({"max_retries": 9, "tool_overrides": {"a": {}}}, 3, ["max_retries"]),
        (
            {"max_retries": 1, "tool_overrides": {"a": {"max_retries": 5}, "b": {"max_retries": 2}}},
            2,
            ["tool_overrides.a.max_retries"],
        ),
    ],
)
def test_one_warning_per_key_path_lowered(
    caplog: pytest.LogCaptureFixture, config: dict[str, Any], ceiling_value: int, paths: list[str]
) -> None:
    with caplog.at_level(logging.WARNING):
        open_policy(config, ceiling=Ceiling(ceiling_value, "test"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(": ")[2] for w in warnings] == paths


def test_the_plugin_reads_the_ceiling_and_logs_each_lowering_with_its_source(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAX_TOOL_RETRIES", "3")
    config = {"max_retries": 7, "tool_overrides": {"search": {"max_retries": 10}}}
    with caplog.at_level(logging.WARNING, logger="cpex_retry_with_backoff_wasm"):
        plugin = direct_plugin(config)
    assert config == {"max_retries": 7, "tool_overrides": {"search": {"max_retries": 10}}}
    assert plugin.policy.global_policy.max_retries == 3
    assert plugin.policy.tool_policy("search").max_retries == 3
    messages = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(messages) == 2
    assert (
        f"{PLUGIN_NAME}: max_retries: 7 exceeds the gateway's retry ceiling (max_tool_retries = 3)"
        in (messages[0])
    )
    assert f"{PLUGIN_NAME}: tool_overrides.search.max_retries: 10 exceeds" in messages[1]
    assert all(m.endswith("lowered to 3 (MAX_TOOL_RETRIES environment variable)") for m in messages)
