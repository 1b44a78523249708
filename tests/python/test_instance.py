"""instance.py: ``Instance`` and ``OpenPolicy`` against the real component (decisions, policies,
limits, faults).

Each test opens its policies as a plugin object does (``open_policy``: the instance for the
host keys from ``INSTANCES``, then ``Instance.open``) and decides through ``Instance.decide``
with a real ``GlobalContext``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cpex.framework import GlobalContext

from cpex_retry_with_backoff_wasm import (
    INSTANCES,
    ConfigurationError,
    OpenPolicy,
    Policy,
    RetryEngineLoadError,
)
from cpex_retry_with_backoff_wasm.ceiling import Ceiling
from cpex_retry_with_backoff_wasm.keys import KEY_PART_MAX_CHARS
from cpex_retry_with_backoff_wasm.sandbox import Clock, Seed, describe_fault
from cpex_retry_with_backoff_wasm.settings import DEFAULT_FUEL, DEFAULT_MAX_MEMORY_BYTES, HostSettings
from cpex_retry_with_backoff_wasm.signals import (
    decision_delay_ms,
    decision_reason,
    decision_retry_count,
)
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK, HANDLE_MASK, HANDLE_SHIFT

from .conftest import PLUGIN_NAME, EngineCalls, VirtualClock, err, ok

NO_JITTER = {"jitter": False}


def open_policy(
    config: dict[str, Any],
    *,
    name: str = PLUGIN_NAME,
    ceiling: Ceiling | None = None,
    clock: Clock | None = None,
    seed: Seed | None = None,
) -> OpenPolicy:
    """What constructing a plugin object does: the process's instance for the host keys of
    ``config``, and the policy of ``config`` for the stanza ``name`` in it."""
    settings = HostSettings.read(config)
    instance = INSTANCES.attach(settings, clock=clock, seed=seed)
    return instance.open(name, config, ceiling, settings.errors)


def decide(policy: OpenPolicy, tool: Any, rid: Any, result: Any, **context: Any) -> int:
    """One decision under ``policy`` for ``tool`` in a gateway context with request id ``rid``
    (and ``tenant_id``, ``server_id``, ``user`` as given)."""
    return policy.instance.decide(policy, tool, GlobalContext(request_id=rid, **context), result)


def step(policy: OpenPolicy, tool: str, rid: str, result: Any, **context: Any) -> tuple[int, int, str]:
    d = decide(policy, tool, rid, result, **context)
    return decision_delay_ms(d), decision_retry_count(d), decision_reason(d)


def handle_of(decision: int) -> int:
    """The handle the engine gave in ``decision`` (0: none)."""
    return (decision >> HANDLE_SHIFT) & HANDLE_MASK


def test_defaults_and_contract(wasm_path: Path) -> None:
    policy = open_policy({})
    instance = policy.instance
    assert instance.contract_version == "0.5.0"
    assert instance.wasm_path == wasm_path
    assert instance.fuel_per_call == DEFAULT_FUEL
    assert policy.key_scope == "request"
    assert policy.global_policy == Policy(
        max_retries=2,
        backoff_base_ms=200,
        max_backoff_ms=5000,
        retry_on_status=(429, 500, 502, 503, 504),
        jitter=True,
        check_text_content=False,
    )
    assert DEFAULT_MAX_MEMORY_BYTES == 64 * 1024 * 1024


def test_policy_is_a_frozen_dataclass() -> None:
    policy = open_policy({}).global_policy
    with pytest.raises(AttributeError):
        policy.max_retries = 5  # type: ignore[misc]


def test_tool_policy_merges_override() -> None:
    policy = open_policy(
        {"max_retries": 4, "tool_overrides": {"slow": {"backoff_base_ms": 1000, "jitter": False}}}
    )
    assert policy.tool_policy("slow") == Policy(4, 1000, 5000, (429, 500, 502, 503, 504), False, False)
    assert policy.tool_policy("other") == policy.global_policy


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
    policy = open_policy(config)
    assert [step(policy, "search", "r1", result) for result, _ in sequence] == [want for _, want in sequence]


def test_keys_are_independent_per_tool_and_request() -> None:
    policy = open_policy(NO_JITTER)
    assert step(policy, "a", "r1", err())[0] == 200
    assert step(policy, "b", "r1", err())[0] == 200
    assert step(policy, "a", "r2", err())[0] == 200
    assert step(policy, "a", "r1", err())[0] == 400
    # the split between tool and request id is by length, not a separator
    assert step(policy, "ab", "c", err())[0] == 200
    assert step(policy, "a", "bc", err())[0] == 200
    assert policy.state_count() == 5


def test_unicode_tool_names_split_by_scalar_values() -> None:
    policy = open_policy({"jitter": False, "tool_overrides": {"δ✓": {"backoff_base_ms": 7}}})
    assert step(policy, "δ✓", "r", err()) == (7, 1, "retry")
    assert step(policy, "δ", "✓r", err()) == (200, 1, "retry")


def test_text_content_checked_only_when_configured() -> None:
    text_error = {"content": [{"type": "text", "text": '{"isError": true}'}]}
    text_status = {"content": [{"type": "text", "text": '{"status_code": 503}'}]}
    plain = open_policy(NO_JITTER)
    assert step(plain, "t", "r", text_error) == (0, 0, "success")
    checking = open_policy({"jitter": False, "tool_overrides": {"t": {"check_text_content": True}}})
    assert step(checking, "t", "r", text_error) == (200, 1, "retry")
    assert step(checking, "t", "r", text_status) == (400, 2, "retry")
    assert step(checking, "u", "r", text_error) == (0, 0, "success")
    # structured content (even empty) suppresses the text check
    assert step(checking, "t", "r2", {**text_error, "structuredContent": {}}) == (0, 0, "success")


def test_lone_surrogates_do_not_fail_the_call() -> None:
    policy = open_policy({"jitter": False, "check_text_content": True})
    assert step(policy, "bad\ud800tool", "r\udfff", err()) == (200, 1, "retry")
    assert step(policy, "bad\ud800tool", "r\udfff", err()) == (400, 2, "retry")
    # a text that cannot be encoded is skipped (the native plugin cannot extract it either)
    texts = {"content": [{"type": "text", "text": '{"isError": true}\ud800'}, {"type": "text", "text": "{}"}]}
    assert step(policy, "t\ud800", "r", texts) == (0, 0, "success")
    texts["content"].append({"type": "text", "text": '{"isError": true}'})
    assert step(policy, "t\ud800", "r", texts) == (200, 1, "retry")
    assert policy.instance.fault_count == 0


@pytest.mark.parametrize(("tool", "rid"), [(None, "r"), ("t", None), (b"t", "r"), ("t", 5)])
def test_non_str_key_parts_raise(tool: Any, rid: Any) -> None:
    policy = open_policy({})
    # A bare namespace: GlobalContext itself refuses a request id that is not a str.
    context = SimpleNamespace(request_id=rid, tenant_id=None, server_id=None, user=None)
    with pytest.raises(TypeError, match="must be a str"):
        policy.instance.decide(policy, tool, context, err())


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
    with pytest.raises(ValueError, match=r"^retry-engine@0\.5\.0: invalid configuration: ") as info:
        open_policy(config)
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
        open_policy(config)


def test_host_and_engine_errors_are_reported_together() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_policy({"wasm_fuel": 0, "wasm_max_memory_bytes": "big", "max_retries": 11})
    assert [e.path for e in info.value.errors] == ["wasm_fuel", "wasm_max_memory_bytes", "max_retries"]


def test_config_not_representable_as_json() -> None:
    with pytest.raises(ValueError, match="not representable as JSON"):
        open_policy({"unknown": float("nan")})


def test_config_with_lone_surrogates_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        open_policy({"tool_overrides": {"bad\ud800": {"max_retries": 1}}})


def test_unknown_keys_are_ignored() -> None:
    policy = open_policy({"jitter": False, "some_future_key": {"x": [1]}, "wasm_fuel": 5_000_000})
    assert policy.instance.fuel_per_call == 5_000_000


def test_wasm_path_overrides_the_bundled_component(wasm_path: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.wasm"
    other.write_bytes(wasm_path.read_bytes())
    assert open_policy({"wasm_path": str(other)}).instance.wasm_path == other


def test_missing_wasm_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RetryEngineLoadError, match=r"cannot read component .*missing\.wasm"):
        open_policy({"wasm_path": str(tmp_path / "missing.wasm")})


def test_corrupt_wasm_path_is_a_clear_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wasm"
    corrupt.write_bytes(b"\x00asm garbage")
    with pytest.raises(RetryEngineLoadError, match=r"corrupt\.wasm is not a valid WebAssembly component"):
        open_policy({"wasm_path": str(corrupt)})


def test_memory_cap_below_what_the_component_needs() -> None:
    with pytest.raises(RetryEngineLoadError, match="cannot instantiate"):
        open_policy({"wasm_max_memory_bytes": 4096})


def test_ceiling_lowers_explicit_and_default_budgets(caplog: pytest.LogCaptureFixture) -> None:
    """The engine lowers every effective ``max_retries`` above the ceiling (open-policy); the
    host logs each warning once, with the stanza, the key path and where the ceiling was read."""
    with caplog.at_level(logging.WARNING):
        policy = open_policy(
            {"jitter": False, "tool_overrides": {"a": {"max_retries": 9}, "b": {"backoff_base_ms": 10}}},
            ceiling=Ceiling(1, "test source"),
        )
    assert policy.global_policy.max_retries == 1
    assert policy.tool_policy("a").max_retries == 1
    assert policy.tool_policy("b").max_retries == 1
    assert step(policy, "a", "r", err()) == (200, 1, "retry")
    assert step(policy, "a", "r", err()) == (0, 2, "exhausted")
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warnings) == 2
    default, override = warnings
    assert f"{PLUGIN_NAME}: max_retries: 2 (the default) exceeds" in default
    assert f"{PLUGIN_NAME}: tool_overrides.a.max_retries: 9 exceeds" in override
    assert all("lowered to 1 (test source)" in w for w in warnings)


def test_ceiling_above_budgets_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        policy = open_policy({"max_retries": 3}, ceiling=Ceiling(3, "test"))
    assert policy.global_policy.max_retries == 3
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_ceiling_rescues_a_budget_above_the_engine_limit() -> None:
    """As in the native plugin: the value is lowered before it is validated."""
    policy = open_policy({"max_retries": 25}, ceiling=Ceiling(3, "test"))
    assert policy.global_policy.max_retries == 3


# --------------------------------------------------------------------------- clock and seed
def test_injected_clock_is_called_and_seed_is_deterministic() -> None:
    clock = VirtualClock()
    jittered = {"max_retries": 10, "max_backoff_ms": 100_000}
    a = open_policy(jittered, clock=clock, seed=(7, 11))
    b = open_policy(jittered, clock=VirtualClock(), seed=(7, 11))
    assert a.instance is not b.instance, "another clock is another instance"
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
    policy = open_policy({"jitter": False, "state_ttl_ms": ttl}, clock=clock, seed=(1, 2))
    assert step(policy, "t", "r", err()) == (200, 1, "retry")
    clock.advance_ms(ttl + age_ms)
    assert step(policy, "t", "r", err()) == ((400, 2, "retry") if survives else (200, 1, "retry"))


@pytest.mark.parametrize(("age_ms", "removed"), [(-1, 0), (0, 0), (1, 1)], ids=["ttl-1", "ttl", "ttl+1"])
def test_evict_expired_sweeps_exactly_past_ttl(age_ms: int, removed: int) -> None:
    clock = VirtualClock()
    policy = open_policy({"jitter": False, "state_ttl_ms": 1000}, clock=clock, seed=(1, 2))
    step(policy, "t", "r", err())
    assert policy.state_count() == 1
    clock.advance_ms(1000 + age_ms)
    assert policy.instance.evict_expired() == removed
    assert policy.state_count() == 1 - removed


def test_default_ttl_is_five_minutes() -> None:
    clock = VirtualClock()
    policy = open_policy(NO_JITTER, clock=clock, seed=(1, 2))
    step(policy, "t", "r", err())
    clock.advance_ms(300_000)
    assert policy.instance.evict_expired() == 0
    clock.advance_ms(1)
    assert policy.instance.evict_expired() == 1


# --------------------------------------------------------------------------- faults
def test_fuel_exhaustion_answers_no_retry_logs_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    policy = open_policy(NO_JITTER)
    instance = policy.instance
    assert step(policy, "t", "r", err()) == (200, 1, "retry")
    instance.fuel_per_call = 50  # far below one decision
    with caplog.at_level(logging.ERROR, logger="cpex_retry_with_backoff_wasm.sandbox"):
        assert decide(policy, "t", "r", err()) == 0
    assert instance.fault_count >= 1
    # The key holds state, so the engine is asked by its handle (decide-held).
    (fault,) = [r.getMessage() for r in caplog.records if "decide-held failed" in r.getMessage()]
    assert "all fuel consumed" in fault
    assert "\n" not in fault
    instance.fuel_per_call = DEFAULT_FUEL
    # a fresh instance: the state was lost, the configuration was not (the policy reopens)
    assert step(policy, "t", "r", err()) == (200, 1, "retry")
    assert step(policy, "t", "r", err()) == (400, 2, "retry")
    assert policy.global_policy.jitter is False


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
    """The clock raises inside a call: that call faults, and so does the rebuild right after it
    (a new instance starts on the clock, ``init``); the next call, clock back, rebuilds."""
    clock = VirtualClock()
    fail = {"now": False}

    def flaky() -> int:
        if fail["now"]:
            raise RuntimeError("clock unplugged")
        return clock()

    policy = open_policy(NO_JITTER, clock=flaky, seed=(1, 2))
    instance = policy.instance
    assert step(policy, "t", "r", err())[0] == 200
    fail["now"] = True
    assert decide(policy, "t", "r", err()) == 0
    assert (instance.fault_count, instance.rebuild_count) == (2, 0)
    fail["now"] = False
    assert step(policy, "t", "r", err()) == (200, 1, "retry")
    assert (instance.fault_count, instance.rebuild_count) == (2, 1)


def test_cold_call_fault_raises_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = open_policy(NO_JITTER)
    instance = policy.instance
    monkeypatch.setattr("cpex_retry_with_backoff_wasm.sandbox.COLD_FUEL_FACTOR", 1)
    instance.fuel_per_call = 1
    with pytest.raises(RetryEngineLoadError):
        instance.state_count()
    instance.fuel_per_call = DEFAULT_FUEL
    assert instance.state_count() == 0


@pytest.mark.parametrize("fuel", [0, -1, True, "x"])
def test_fuel_setter_rejects_misuse(fuel: Any) -> None:
    instance = open_policy({}).instance
    with pytest.raises(ValueError, match="positive integer"):
        instance.fuel_per_call = fuel


def test_state_stays_within_a_small_memory_cap() -> None:
    """Unique request ids under a 2 MiB cap: the engine's byte budget (a quarter of a cap too
    small for its 4 MiB reserve) drops the oldest entries before memory runs out; no fault."""
    policy = open_policy(
        {"jitter": False, "wasm_max_memory_bytes": 2 * 1024 * 1024, "max_state_entries": 800}
    )
    long_rid = "x" * (KEY_PART_MAX_CHARS - 8)
    delays = [decision_delay_ms(decide(policy, "t", f"{i:08d}{long_rid}", err())) for i in range(4000)]
    assert policy.instance.fault_count == 0
    assert set(delays) == {200}
    assert step(policy, "t", "fresh", err()) == (200, 1, "retry")


def test_plain_successes_of_keys_without_state_never_call_in() -> None:
    """WIT ``stateless-successes``, reported when the policy is opened: a result with no failure
    signal for a key the engine never said holds state is answered by the host itself, from the
    first call on; one for a key holding state reaches the engine and clears it."""
    policy = open_policy({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    assert policy.stateless
    calls = EngineCalls(policy.instance)
    ok_result = {"isError": False, "content": []}
    assert decide(policy, "t", "r", ok_result) == 0
    assert decide(policy, "t", "other", ok_result) == 0
    assert calls.count == 0, "a plain success of a key without state reached the engine"
    assert decide(policy, "t", "r", {"isError": True}) & DELAY_MASK == 200
    assert calls.count == 1
    # The key holds state: the success must reach the engine to clear it.
    assert decide(policy, "t", "r", ok_result) == 0
    assert calls.count == 2
    assert policy.state_count() == 0
    assert decide(policy, "t", "r", {"isError": True}) & DELAY_MASK == 200, "budget not cleared"


def test_text_checking_config_always_calls_in() -> None:
    clock = VirtualClock()
    policy = open_policy({"tool_overrides": {"t": {"check_text_content": True}}}, clock=clock, seed=(1, 2))
    assert not policy.stateless
    calls = EngineCalls(policy.instance)
    for _ in range(3):
        decide(policy, "u", "r", {"isError": False})
    assert calls.count == 3


def test_state_growth_never_exhausts_the_call_fuel() -> None:
    """Regression: with an open-addressing map, growing past ~100 000 live entries rehashed
    the whole table inside one `decide` and burnt its 10 M fuel (the call trapped and the
    instance lost its state).  The index grows one bucket at a time."""
    policy = open_policy({"max_state_entries": 100_000}, clock=lambda: 0, seed=(1, 2))
    instance = policy.instance
    for i in range(130_000):
        decide(policy, "tool", f"req-{i}", {"isError": True})
    assert instance.fault_count == 0
    assert policy.state_count() == 100_000
    # Each key dropped at the bound gave its handle to the next new key: the host forgot it.
    assert instance.held_count == 100_000


def test_success_shortcut_skips_only_keys_without_state() -> None:
    """The host answers a plain success itself for keys the engine never said hold state, and
    always calls in for a key that may hold state (so the state is cleared)."""
    policy = open_policy({"jitter": False}, clock=VirtualClock(), seed=(1, 2))
    ok_result = {"isError": False}
    assert decide(policy, "t", "a", {"isError": True}) & DELAY_MASK == 200
    calls = EngineCalls(policy.instance)
    assert decide(policy, "t", "b", ok_result) == 0
    assert decide(policy, "u", "a", ok_result) == 0  # same request id, other tool: other key
    assert calls.count == 0, "a success for a key without state reached the engine"
    decide(policy, "t", "a", ok_result)
    assert calls.count == 1, "a success for a key with state must reach the engine"
    assert policy.state_count() == 0
    assert decide(policy, "t", "a", {"isError": True}) & DELAY_MASK == 200, "state was not cleared"


def test_the_host_forgets_a_key_when_the_engine_gives_its_handle_to_another() -> None:
    """At ``max_state_entries`` the engine drops the oldest key and gives its handle to the new
    one (a decision): the host forgets the dropped key then, and a success for it is answered
    without calling in (the engine holds nothing for it); one for a held key still reaches the
    engine."""
    policy = open_policy({"jitter": False, "max_state_entries": 2}, clock=VirtualClock(), seed=(1, 2))
    instance = policy.instance
    given = {rid: decide(policy, "t", rid, {"isError": True}) for rid in ("a", "b", "c")}
    assert {rid: d & DELAY_MASK for rid, d in given.items()} == {"a": 200, "b": 200, "c": 200}
    assert handle_of(given["c"]) == handle_of(given["a"]) != handle_of(given["b"])
    assert policy.state_count() == 2
    assert instance.held_count == 2
    calls = EngineCalls(instance)
    assert decide(policy, "t", "a", {"isError": False}) == 0
    assert decide(policy, "t", "other", {"isError": False}) == 0
    assert calls.count == 0, "a key without state reached the engine"
    decide(policy, "t", "b", {"isError": False})
    assert calls.count == 1, "a held key's success must reach the engine"
    assert policy.state_count() == 1
    assert instance.held_count == 1
    # The engine's own count agrees: a's state went, c's is kept.
    assert decide(policy, "t", "a", {"isError": True}) & DELAY_MASK == 200
    assert decide(policy, "t", "c", {"isError": True}) & DELAY_MASK == 400


def test_a_bound_the_memory_cap_cannot_hold_is_refused_naming_both_keys() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_policy({"max_state_entries": 1_000_000})
    (error,) = info.value.errors
    assert error.path == "max_state_entries"
    assert "wasm_max_memory_bytes" in error.message
    assert "134 MiB" in error.message
    open_policy({"max_state_entries": 1_000_000, "wasm_max_memory_bytes": 600 * 1024 * 1024})


def test_the_largest_bound_accepted_under_the_default_cap_holds_gateway_sized_keys() -> None:
    """The estimate behind the check above is not optimistic: fill a context to the largest
    bound the default 64 MiB cap accepts, with keys as long as the gateway's, without a fault."""
    entries = 112_347
    with pytest.raises(ConfigurationError, match="max_state_entries"):
        open_policy({"max_state_entries": entries + 1})
    policy = open_policy({"max_state_entries": entries})
    fail = {"isError": True}
    for i in range(entries):
        decide(policy, "weather-server-get-forecast", f"{i:08x}-0000-4000-8000-{i:012x}", fail)
    assert policy.instance.fault_count == 0
    assert policy.state_count() == entries
