"""engine.py: WasmRetryEngine against the real component (decisions, policies, limits, faults)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import ConfigurationError, Policy, RetryEngineLoadError, WasmRetryEngine
from cpex_retry_with_backoff_wasm.ceiling import Ceiling
from cpex_retry_with_backoff_wasm.keys import KEY_PART_MAX_CHARS
from cpex_retry_with_backoff_wasm.sandbox import describe_fault
from cpex_retry_with_backoff_wasm.settings import DEFAULT_FUEL, DEFAULT_MAX_MEMORY_BYTES
from cpex_retry_with_backoff_wasm.signals import (
    decision_delay_ms,
    decision_reason,
    decision_retry_count,
)
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import EngineCalls, VirtualClock, err, ok

NO_JITTER = {"jitter": False}


def step(engine: WasmRetryEngine, tool: str, rid: str, result: Any) -> tuple[int, int, str]:
    d = engine.decide(tool, rid, result)
    return decision_delay_ms(d), decision_retry_count(d), decision_reason(d)


def test_defaults_and_contract(wasm_path: Path) -> None:
    engine = WasmRetryEngine({})
    assert engine.contract_version == "0.4.0"
    assert engine.wasm_path == wasm_path
    assert engine.fuel_per_call == DEFAULT_FUEL
    assert engine.global_policy == Policy(
        max_retries=2,
        backoff_base_ms=200,
        max_backoff_ms=5000,
        retry_on_status=(429, 500, 502, 503, 504),
        jitter=True,
        check_text_content=False,
    )
    assert DEFAULT_MAX_MEMORY_BYTES == 64 * 1024 * 1024


def test_policy_is_a_frozen_dataclass() -> None:
    policy = WasmRetryEngine({}).global_policy
    with pytest.raises(AttributeError):
        policy.max_retries = 5  # type: ignore[misc]


def test_tool_policy_merges_override() -> None:
    engine = WasmRetryEngine(
        {"max_retries": 4, "tool_overrides": {"slow": {"backoff_base_ms": 1000, "jitter": False}}}
    )
    assert engine.tool_policy("slow") == Policy(4, 1000, 5000, (429, 500, 502, 503, 504), False, False)
    assert engine.tool_policy("other") == engine.global_policy


@pytest.mark.parametrize(
    ("config", "sequence"),
    [
        # (result, expected (delay, count, reason)) per step
        (
            NO_JITTER,
            [
                (err(), (200, 1, "retry")),
                (err(), (400, 2, "retry")),
                (err(), (0, 3, "exhausted")),
                (err(), (200, 1, "retry")),
            ],
        ),
        (NO_JITTER, [(err(), (200, 1, "retry")), (ok(), (0, 0, "success")), (err(), (200, 1, "retry"))]),
        ({"jitter": False, "max_retries": 0}, [(err(), (0, 1, "exhausted")), (err(), (0, 1, "exhausted"))]),
        (
            {"jitter": False, "max_retries": 5, "backoff_base_ms": 1000, "max_backoff_ms": 3000},
            [
                (err(), (1000, 1, "retry")),
                (err(), (2000, 2, "retry")),
                (err(), (3000, 3, "retry")),
                (err(), (3000, 4, "retry")),
            ],
        ),
        (NO_JITTER, [(err(404), (0, 0, "non-retryable")), (err(503), (200, 1, "retry"))]),
    ],
    ids=["backoff-exhaust-fresh", "success-clears", "max-retries-0", "capped", "status-not-retriable"],
)
def test_decision_sequences(config: dict[str, Any], sequence: list[tuple[Any, tuple[int, int, str]]]) -> None:
    engine = WasmRetryEngine(config)
    assert [step(engine, "search", "r1", result) for result, _ in sequence] == [want for _, want in sequence]


def test_keys_are_independent_per_tool_and_request() -> None:
    engine = WasmRetryEngine(NO_JITTER)
    assert step(engine, "a", "r1", err())[0] == 200
    assert step(engine, "b", "r1", err())[0] == 200
    assert step(engine, "a", "r2", err())[0] == 200
    assert step(engine, "a", "r1", err())[0] == 400
    # the split between tool and request id is by length, not a separator
    assert step(engine, "ab", "c", err())[0] == 200
    assert step(engine, "a", "bc", err())[0] == 200
    assert engine.state_count() == 5


def test_unicode_tool_names_split_by_scalar_values() -> None:
    engine = WasmRetryEngine({"jitter": False, "tool_overrides": {"δ✓": {"backoff_base_ms": 7}}})
    assert step(engine, "δ✓", "r", err()) == (7, 1, "retry")
    assert step(engine, "δ", "✓r", err()) == (200, 1, "retry")


def test_text_content_checked_only_when_configured() -> None:
    text_error = {"content": [{"type": "text", "text": '{"isError": true}'}]}
    text_status = {"content": [{"type": "text", "text": '{"status_code": 503}'}]}
    plain = WasmRetryEngine(NO_JITTER)
    assert step(plain, "t", "r", text_error) == (0, 0, "success")
    checking = WasmRetryEngine({"jitter": False, "tool_overrides": {"t": {"check_text_content": True}}})
    assert step(checking, "t", "r", text_error) == (200, 1, "retry")
    assert step(checking, "t", "r", text_status) == (400, 2, "retry")
    assert step(checking, "u", "r", text_error) == (0, 0, "success")
    # structured content (even empty) suppresses the text check
    assert step(checking, "t", "r2", {**text_error, "structuredContent": {}}) == (0, 0, "success")


def test_lone_surrogates_do_not_fail_the_call() -> None:
    engine = WasmRetryEngine({"jitter": False, "check_text_content": True})
    assert step(engine, "bad\ud800tool", "r\udfff", err()) == (200, 1, "retry")
    assert step(engine, "bad\ud800tool", "r\udfff", err()) == (400, 2, "retry")
    # a text that cannot be encoded is skipped (the native plugin cannot extract it either)
    texts = {"content": [{"type": "text", "text": '{"isError": true}\ud800'}, {"type": "text", "text": "{}"}]}
    assert step(engine, "t\ud800", "r", texts) == (0, 0, "success")
    texts["content"].append({"type": "text", "text": '{"isError": true}'})
    assert step(engine, "t\ud800", "r", texts) == (200, 1, "retry")
    assert engine.fault_count == 0


@pytest.mark.parametrize(("tool", "rid"), [(None, "r"), ("t", None), (b"t", "r"), ("t", 5)])
def test_non_str_key_parts_raise(tool: Any, rid: Any) -> None:
    engine = WasmRetryEngine({})
    with pytest.raises(TypeError, match="must be a str"):
        engine.decide(tool, rid, err())


@pytest.mark.parametrize(
    ("config", "messages"),
    [
        ({"max_retries": 11}, ["max_retries: "]),
        ({"backoff_base_ms": 0}, ["backoff_base_ms: "]),
        ({"max_backoff_ms": 100}, ["max_backoff_ms: "]),
        ({"jitter": "yes"}, ["jitter: "]),
        ({"retry_on_status": [500, "503"]}, ["retry_on_status"]),
        ({"tool_overrides": {"search": {"max_backoff_ms": 100}}}, ["tool_overrides.search.max_backoff_ms: "]),
        (
            {"tool_overrides": {"a": {"max_retries": 99}, "b": {"backoff_base_ms": 0}}},
            ["tool_overrides.a.max_retries: ", "tool_overrides.b.backoff_base_ms: "],
        ),
        ({"state_ttl_ms": 0}, ["state_ttl_ms: "]),
    ],
)
def test_config_errors_name_every_key_path(config: dict[str, Any], messages: list[str]) -> None:
    with pytest.raises(ValueError, match=r"^retry-engine@0\.4\.0: invalid configuration: ") as info:
        WasmRetryEngine(config)
    assert isinstance(info.value, ConfigurationError)
    text = str(info.value)
    for message in messages:
        assert message in text
    assert len(info.value.errors) == len(messages)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"wasm_fuel": 0}, "wasm_fuel"),
        ({"wasm_fuel": -5}, "wasm_fuel"),
        ({"wasm_fuel": "lots"}, "wasm_fuel"),
        ({"wasm_fuel": True}, "wasm_fuel"),
        ({"wasm_max_memory_bytes": 0}, "wasm_max_memory_bytes"),
        ({"wasm_max_memory_bytes": 1.5}, "wasm_max_memory_bytes"),
        ({"wasm_path": 42}, "wasm_path"),
    ],
)
def test_host_keys_are_validated(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"invalid configuration: {key}: "):
        WasmRetryEngine(config)


def test_host_and_engine_errors_are_reported_together() -> None:
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine({"wasm_fuel": 0, "wasm_max_memory_bytes": "big", "max_retries": 11})
    assert [e.path for e in info.value.errors] == ["wasm_fuel", "wasm_max_memory_bytes", "max_retries"]


def test_config_not_representable_as_json() -> None:
    with pytest.raises(ValueError, match="not representable as JSON"):
        WasmRetryEngine({"unknown": float("nan")})


def test_config_with_lone_surrogates_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        WasmRetryEngine({"tool_overrides": {"bad\ud800": {"max_retries": 1}}})


def test_unknown_keys_are_ignored() -> None:
    engine = WasmRetryEngine({"jitter": False, "some_future_key": {"x": [1]}, "wasm_fuel": 5_000_000})
    assert engine.fuel_per_call == 5_000_000


def test_wasm_path_overrides_the_bundled_component(wasm_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm_path.read_bytes())
    assert WasmRetryEngine({"wasm_path": str(other)}).wasm_path == other


def test_missing_wasm_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RetryEngineLoadError, match=r"cannot read component .*missing\.wasm"):
        WasmRetryEngine({"wasm_path": str(tmp_path / "missing.wasm")})


def test_corrupt_wasm_path_is_a_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\x00asm garbage")
    with pytest.raises(RetryEngineLoadError, match=r"corrupt\.wasm is not a valid WebAssembly component"):
        WasmRetryEngine({"wasm_path": str(corrupt)})


def test_memory_cap_below_what_the_component_needs() -> None:
    with pytest.raises(RetryEngineLoadError, match="cannot instantiate"):
        WasmRetryEngine({"wasm_max_memory_bytes": 4096})


def test_ceiling_clamps_explicit_and_default_budgets(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        engine = WasmRetryEngine(
            {"jitter": False, "tool_overrides": {"a": {"max_retries": 9}, "b": {"backoff_base_ms": 10}}},
            max_retries_ceiling=Ceiling(1, "test"),
        )
    assert engine.global_policy.max_retries == 1
    assert engine.tool_policy("a").max_retries == 1
    assert engine.tool_policy("b").max_retries == 1
    assert step(engine, "a", "r", err()) == (200, 1, "retry")
    assert step(engine, "a", "r", err()) == (0, 2, "exhausted")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("tool_overrides.a.max_retries=9" in w for w in warnings)
    assert any("max_retries=2 (effective)" in w for w in warnings)


def test_ceiling_above_budgets_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        engine = WasmRetryEngine({"max_retries": 3}, max_retries_ceiling=Ceiling(3, "test"))
    assert engine.global_policy.max_retries == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_ceiling_rescues_a_budget_above_the_engine_limit() -> None:
    """As in the native plugin: the clamp runs before validation."""
    engine = WasmRetryEngine({"max_retries": 25}, max_retries_ceiling=Ceiling(3, "test"))
    assert engine.global_policy.max_retries == 3


# --------------------------------------------------------------------------- clock and seed
def test_injected_clock_is_called_and_seed_is_deterministic() -> None:
    clock = VirtualClock()
    jittered = {"max_retries": 10, "max_backoff_ms": 100_000}
    a = WasmRetryEngine(jittered, clock=clock, seed=(7, 11))
    b = WasmRetryEngine(jittered, clock=VirtualClock(), seed=(7, 11))
    seq_a = [step(a, "t", "r", err())[0] for _ in range(10)]
    seq_b = [step(b, "t", "r", err())[0] for _ in range(10)]
    assert seq_a == seq_b
    assert clock.calls > 0
    assert all(d > 0 for d in seq_a)


@pytest.mark.parametrize(
    ("age_ms", "survives"), [(-1, True), (0, True), (1, False)], ids=["ttl-1", "ttl", "ttl+1"]
)
def test_ttl_boundary_with_virtual_clock(age_ms: int, survives: bool) -> None:
    ttl = 60_000
    clock = VirtualClock()
    engine = WasmRetryEngine({"jitter": False, "state_ttl_ms": ttl}, clock=clock, seed=(1, 2))
    assert step(engine, "t", "r", err()) == (200, 1, "retry")
    clock.advance_ms(ttl + age_ms)
    assert step(engine, "t", "r", err()) == ((400, 2, "retry") if survives else (200, 1, "retry"))


@pytest.mark.parametrize(("age_ms", "removed"), [(-1, 0), (0, 0), (1, 1)], ids=["ttl-1", "ttl", "ttl+1"])
def test_evict_expired_sweeps_exactly_past_ttl(age_ms: int, removed: int) -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine({"jitter": False, "state_ttl_ms": 1000}, clock=clock, seed=(1, 2))
    step(engine, "t", "r", err())
    assert engine.state_count() == 1
    clock.advance_ms(1000 + age_ms)
    assert engine.evict_expired() == removed
    assert engine.state_count() == 1 - removed


def test_default_ttl_is_five_minutes() -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine(NO_JITTER, clock=clock, seed=(1, 2))
    step(engine, "t", "r", err())
    clock.advance_ms(300_000)
    assert engine.evict_expired() == 0
    clock.advance_ms(1)
    assert engine.evict_expired() == 1


# --------------------------------------------------------------------------- faults
def test_fuel_exhaustion_answers_no_retry_logs_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    engine = WasmRetryEngine(NO_JITTER)
    assert step(engine, "t", "r", err()) == (200, 1, "retry")
    engine.fuel_per_call = 50  # far below one decision
    with caplog.at_level(logging.ERROR, logger="cpex_retry_with_backoff_wasm.sandbox"):
        assert engine.decide("t", "r", err()) == 0
    assert engine.fault_count >= 1
    # The key holds state, so the engine is asked by its handle (decide-held).
    (fault,) = [r.getMessage() for r in caplog.records if "decide-held failed" in r.getMessage()]
    assert "all fuel consumed" in fault
    assert "\n" not in fault
    engine.fuel_per_call = DEFAULT_FUEL
    # a fresh instance: state was lost, the configuration was not
    assert step(engine, "t", "r", err()) == (200, 1, "retry")
    assert step(engine, "t", "r", err()) == (400, 2, "retry")
    assert engine.global_policy.jitter is False


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (RuntimeError("clock unplugged"), "RuntimeError: clock unplugged"),
        (
            ValueError(
                "error while executing at wasm backtrace:\n    0: 0x1 - f\n\nCaused by:\n    wasm trap: x"
            ),
            "ValueError: wasm trap: x",
        ),
    ],
)
def test_describe_fault_is_one_line(exc: BaseException, text: str) -> None:
    assert describe_fault(exc) == text


def test_trap_in_host_clock_is_recovered() -> None:
    clock = VirtualClock()
    fail = {"now": False}

    def flaky() -> int:
        if fail["now"]:
            raise RuntimeError("clock unplugged")
        return clock()

    engine = WasmRetryEngine(NO_JITTER, clock=flaky, seed=(1, 2))
    assert step(engine, "t", "r", err())[0] == 200
    fail["now"] = True
    assert engine.decide("t", "r", err()) == 0
    fail["now"] = False
    assert step(engine, "t", "r", err()) == (200, 1, "retry")
    assert engine.fault_count == 1


def test_cold_call_fault_raises_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = WasmRetryEngine(NO_JITTER)
    monkeypatch.setattr("cpex_retry_with_backoff_wasm.sandbox.COLD_FUEL_FACTOR", 1)
    engine.fuel_per_call = 1
    with pytest.raises(RetryEngineLoadError):
        engine.state_count()
    engine.fuel_per_call = DEFAULT_FUEL
    assert engine.state_count() == 0


@pytest.mark.parametrize("fuel", [0, -1, True, "x"])
def test_fuel_setter_rejects_misuse(fuel: Any) -> None:
    engine = WasmRetryEngine({})
    with pytest.raises(ValueError, match="positive integer"):
        engine.fuel_per_call = fuel


def test_memory_cap_trap_is_recovered() -> None:
    """Unique request ids until the capped memory runs out: calls keep answering.  (The ids are
    as long as a key part crosses as itself: a longer one crosses as a fixed-size digest.)"""
    engine = WasmRetryEngine({"jitter": False, "wasm_max_memory_bytes": 2 * 1024 * 1024})
    long_rid = "x" * (KEY_PART_MAX_CHARS - 8)
    delays = [decision_delay_ms(engine.decide("t", f"{i:08d}{long_rid}", err())) for i in range(2000)]
    assert engine.fault_count >= 1
    assert set(delays) <= {0, 200}
    assert step(engine, "t", "fresh", err()) == (200, 1, "retry")


def test_idle_engine_answers_plain_successes_without_calling_in() -> None:
    """WIT `idle` bit: no state and no text checks -> a result with no failure signal is a
    success the host may answer itself."""
    engine = WasmRetryEngine({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    calls = EngineCalls(engine)
    ok_result = {"isError": False, "content": []}
    engine.decide("t", "r", ok_result)  # first call: the host does not know yet
    assert calls.count == 1
    assert engine.decide("t", "other", ok_result) == 0
    assert calls.count == 1, "an idle engine was called for a plain success"
    assert engine.decide("t", "r", {"isError": True}) & DELAY_MASK == 200
    assert calls.count == 2
    # Not idle while state is held: the success must reach the engine to clear the key.
    engine.decide("t", "r", ok_result)
    assert calls.count == 3
    assert engine.state_count() == 0
    assert engine.decide("t", "r", {"isError": True}) & DELAY_MASK == 200, "budget not cleared"


def test_text_checking_config_is_never_idle() -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine(
        {"tool_overrides": {"t": {"check_text_content": True}}}, clock=clock, seed=(1, 2)
    )
    calls = EngineCalls(engine)
    for _ in range(3):
        engine.decide("u", "r", {"isError": False})
    assert calls.count == 3


def test_state_growth_never_exhausts_the_call_fuel() -> None:
    """Regression: with an open-addressing map, growing past ~100 000 live entries rehashed
    the whole table inside one `decide` and burnt its 10 M fuel (the call trapped and the
    instance lost its state).  The index is now sized once per capacity."""
    engine = WasmRetryEngine({"max_state_entries": 120_000}, clock=lambda: 0, seed=(1, 2))
    for i in range(150_000):
        engine.decide("tool", f"req-{i}", {"isError": True})
    assert engine.fault_count == 0
    assert engine.state_count() == 120_000
    assert len(engine.held.entries) == 120_000, "the mirror is bounded as the table is"


def test_success_shortcut_skips_only_keys_without_state() -> None:
    """WIT `text-free` bit: the host answers a plain success itself for keys it never saw
    retried, and always calls in for a key that may hold state (so the state is cleared)."""
    engine = WasmRetryEngine({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    ok_result = {"isError": False}
    assert engine.decide("t", "a", {"isError": True}) & DELAY_MASK == 200
    calls = EngineCalls(engine)
    assert engine.decide("t", "b", ok_result) == 0
    assert engine.decide("u", "a", ok_result) == 0  # same request id, other tool: other key
    assert calls.count == 0, "a success for a key without state reached the engine"
    engine.decide("t", "a", ok_result)
    assert calls.count == 1, "a success for a key with state must reach the engine"
    assert engine.state_count() == 0
    assert engine.decide("t", "a", {"isError": True}) & DELAY_MASK == 200, "state was not cleared"


def test_the_listed_keys_are_bounded_like_the_state_table() -> None:
    """The host lists at most `max_state_entries` keys, dropping the oldest as the component
    does: a success for a dropped key is answered without calling in (the component dropped
    it too), one for a listed key still reaches the component."""
    engine = WasmRetryEngine({"jitter": False, "max_state_entries": 2}, clock=VirtualClock(), seed=(1, 2))
    for rid in ("a", "b", "c"):
        assert engine.decide("t", rid, {"isError": True}) & DELAY_MASK == 200
    assert list(engine.held.entries) == [("t", "b"), ("t", "c")]
    assert engine.state_count() == 2
    calls = EngineCalls(engine)
    engine.decide("t", "a", {"isError": False})
    engine.decide("t", "other", {"isError": False})
    assert calls.count == 0, "a key without state reached the engine"
    engine.decide("t", "b", {"isError": False})
    assert calls.count == 1, "a listed key's success must reach the engine"
    assert engine.state_count() == 1
    # The component's own count agrees: a's state went, c's is kept.
    assert engine.decide("t", "a", {"isError": True}) & DELAY_MASK == 200
    assert engine.decide("t", "c", {"isError": True}) & DELAY_MASK == 400


def test_a_bound_the_memory_cap_cannot_hold_is_refused_naming_both_keys() -> None:
    with pytest.raises(ConfigurationError) as info:
        WasmRetryEngine({"max_state_entries": 1_000_000})
    (error,) = info.value.errors
    assert error.path == "max_state_entries"
    assert "wasm_max_memory_bytes" in error.message
    assert "146 MiB" in error.message
    WasmRetryEngine({"max_state_entries": 1_000_000, "wasm_max_memory_bytes": 256 * 1024 * 1024})


def test_the_largest_bound_accepted_under_the_default_cap_holds_gateway_sized_keys() -> None:
    """The estimate behind the check above is not optimistic: fill a table to the largest bound
    the default 64 MiB cap accepts, with keys as long as the gateway's, without a fault."""
    entries = 420_000
    engine = WasmRetryEngine({"max_state_entries": entries})
    fail = {"isError": True}
    for i in range(entries):
        engine.decide("weather-server-get-forecast", f"{i:08x}-0000-4000-8000-{i:012x}", fail)
    assert engine.fault_count == 0
    assert engine.state_count() == entries
