"""One sandbox per process: the engine owns every policy and all retry state (issue 23).

Every configuration a process sees is a policy in one instance of the component; the host
keeps only the handles the engine gave; ages run on one process-wide clock, so a reload keeps
them; a reload or a build dropped in at ``wasm_path`` sticks for objects built later; gateway
contexts never share state.  Most tests drive the ``VirtualClock``; the ones named
``..._on_the_production_clock`` use the real monotonic clock (the issue asks for both) with
short TTLs and margins that only a stall of seconds could cross.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import INSTANCES, ConfigurationError, RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.settings import HostSettings

from .conftest import PLUGIN_NAME, VirtualClock, err, ok
from .conftest import direct_plugin as plugin

NO_JITTER: dict[str, Any] = {"jitter": False, "backoff_base_ms": 50, "max_retries": 3}


async def delay(
    p: RetryWithBackoffPlugin,
    tool: str,
    rid: str,
    result: Any,
    *,
    tenant: str | None = None,
    server: str | None = None,
    user: Any = None,
) -> int:
    payload = ToolPostInvokePayload(name=tool, result=result)
    gc = GlobalContext(request_id=rid, tenant_id=tenant, server_id=server, user=user)
    return int((await p.tool_post_invoke(payload, PluginContext(global_context=gc))).retry_delay_ms)


def rebuilt(wasm_path: Path, target: Path, patch: str) -> Path:
    """The real component as another build: it declares contract ``0.5.<patch>`` (a newer
    patch loads), so its bytes, and sha256, differ."""
    data = wasm_path.read_bytes()
    found = re.findall(rb"retry-engine@0\.5\.\d", data)
    assert found, "the fixture no longer finds the export name"
    data = data.replace(found[0], b"retry-engine@0.5." + patch.encode())
    data = re.sub(rb"(?<![\d.])0\.5\.0(?!\d)", b"0.5." + patch.encode(), data)
    target.write_bytes(data)
    return target


# --------------------------------------------------------------------------- one instance


async def test_every_configuration_is_a_policy_of_one_instance(clock: VirtualClock) -> None:
    """Per-team bindings (one stanza, a config per team) and their 30 s rebuilds: one instance;
    an equal configuration is the same policy and state, another its own."""
    teams = [
        plugin({**NO_JITTER, "max_retries": 1 + i % 4, "backoff_base_ms": 10 + i}, clock=clock)
        for i in range(40)
    ]
    assert len(INSTANCES) == 1
    instance = teams[0].instance
    assert all(p.instance is instance for p in teams)
    assert instance.policy_count() == 40
    # Each team's policy decides with its own config.
    assert [await delay(p, "t", "r", err()) for p in teams[:3]] == [10, 11, 12]
    # The gateway's rebuild: an equal configuration attaches to the same policy and its counts.
    again = plugin({**NO_JITTER, "max_retries": 2, "backoff_base_ms": 11}, clock=clock)
    assert again.policy is teams[1].policy
    assert await delay(again, "t", "r", err()) == 22
    assert instance.policy_count() == 40
    # Another stanza name is another policy, counting its own failures.
    other = plugin({**NO_JITTER, "max_retries": 2, "backoff_base_ms": 11}, name="Other", clock=clock)
    assert other.policy is not teams[1].policy
    assert await delay(other, "t", "r", err()) == 11


async def test_an_unused_policy_is_released_and_reopened_transparently(clock: VirtualClock) -> None:
    p = plugin({**NO_JITTER, "state_ttl_ms": 1000}, clock=clock)
    q = plugin({**NO_JITTER, "state_ttl_ms": 60_000}, clock=clock)
    assert await delay(p, "t", "r", err()) == 50
    clock.advance_ms(1001)
    assert p.instance.evict_expired() == 1
    assert p.instance.policy_count() == 1, "released after its state_ttl_ms unused; q is not"
    # The object still works: the instance opens its policy again (same id) on the next call.
    ident = p.policy.id
    assert await delay(p, "t", "r", err()) == 50
    assert (p.policy.id, p.instance.policy_count()) == (ident, 2)
    assert await delay(q, "t", "r", err()) == 50


def test_the_policy_bound_refuses_a_flood_of_configurations(clock: VirtualClock) -> None:
    """At most 4096 policies are held; a flood of distinct configurations is refused with an
    error saying so, not grown without bound."""
    settings = HostSettings.read({})
    instance = INSTANCES.attach(settings, clock=clock)
    held = [instance.open(PLUGIN_NAME, {"n": i}) for i in range(4096)]
    with pytest.raises(ConfigurationError, match="4096 configurations in use"):
        instance.open(PLUGIN_NAME, {"n": -1})
    # Unused for their TTL, they make room (released a few at each open, all at an eviction).
    clock.advance_ms(300_001)
    assert instance.open(PLUGIN_NAME, {"n": -1}).id not in {p.id for p in held}
    instance.evict_expired()
    assert instance.policy_count() == 1


# --------------------------------------------------------------------------- contexts


@pytest.mark.parametrize("scope", ["request", "tenant", "user"])
async def test_two_gateway_contexts_never_share_a_keys_state(clock: VirtualClock, scope: str) -> None:
    """Issue 23 §5: team A's failures of tool ``t`` with request id ``corr-1`` do not exhaust
    team B's first failure of its own ``t`` with the same id, under every ``key_scope`` (the
    native plugin keeps the two contexts apart by an object each)."""
    p = plugin({**NO_JITTER, "max_retries": 2, "key_scope": scope}, clock=clock)
    assert [await delay(p, "t", "corr-1", err(), tenant="A") for _ in range(3)] == [50, 100, 0]
    assert await delay(p, "t", "corr-1", err(), tenant="B") == 50
    assert await delay(p, "t", "corr-1", err(), tenant="A", server="s2") == 50, "another virtual server"


async def test_budgets_are_kept_per_context(clock: VirtualClock) -> None:
    p = plugin(
        {**NO_JITTER, "max_retries": 1, "retry_budget_percent": 50, "retry_budget_min_per_sec": 0},
        clock=clock,
    )
    for i in range(10):
        assert await delay(p, "t", f"a{i}", err(), tenant="A") == 50
    assert await delay(p, "t", "a-next", err(), tenant="A") == 0, "A spent its bucket"
    assert await delay(p, "t", "b0", err(), tenant="B") == 50, "B's is untouched"


async def test_one_contexts_flood_leaves_anothers_key_mid_backoff(clock: VirtualClock) -> None:
    """Issue 23 §1: two unbound teams (one configuration, one policy) with max_state_entries
    1000; team A's 3,000 new failing keys leave team B's key in mid-backoff: its next delay is
    100, not a fresh 50 (each context keeps its own max_state_entries)."""
    p = plugin({**NO_JITTER, "max_state_entries": 1000}, clock=clock)
    assert await delay(p, "t", "victim", err(), tenant="B") == 50
    for i in range(3000):
        await delay(p, "t", f"flood-{i}", err(), tenant="A")
    assert await delay(p, "t", "victim", err(), tenant="B") == 100
    assert p.policy.state_count() == 1001


# --------------------------------------------------------------------------- the host's table


async def test_a_success_always_reaches_the_engine_for_a_key_it_holds(clock: VirtualClock) -> None:
    """Issue 23 §2: the host forgets a key only when the engine says so, so a key's success is
    never answered by the host while the engine holds its count.  Before, the host's copy
    dropped a key by TTL that the engine still held (after a rebuild), and the success was
    answered without reaching the engine: the count survived it."""
    p = plugin({**NO_JITTER, "state_ttl_ms": 1000}, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    clock.advance_ms(999)
    p.reload()  # moves the state to a new instance: nothing on the host side ages it
    clock.advance_ms(1)
    assert await delay(p, "t", "k", ok()) == 0
    assert await delay(p, "t", "k", err()) == 50, "the success cleared the count"
    assert p.policy.state_count() == 1


async def test_an_entry_the_engine_evicted_stays_gone(clock: VirtualClock, faulty_wasm: Path) -> None:
    """Issue 23 §2: when the table is full, the engine evicts for a key it refuses at once
    (max_retries 0); nothing on the host side brings the evicted key back, a fault included."""
    config = {
        **NO_JITTER,
        "max_state_entries": 1,
        "wasm_path": str(faulty_wasm),
        "tool_overrides": {"once": {"max_retries": 0}},
    }
    p = plugin(config, clock=clock)
    assert await delay(p, "t", "a", err()) == 50
    assert await delay(p, "once", "b", err()) == 0  # recorded, evicting "a", then refused
    assert p.policy.state_count() == 0
    assert await delay(p, "__fault_trap__", "c", err()) == 0  # a fault: a new instance
    assert await delay(p, "t", "a", err()) == 50, "a starts over: nothing restored it"
    assert p.instance.fault_count == 1


async def test_a_fault_loses_live_state_and_the_policy_reopens(
    clock: VirtualClock, faulty_wasm: Path
) -> None:
    p = plugin({**NO_JITTER, "wasm_path": str(faulty_wasm)}, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    assert await delay(p, "__fault_trap__", "x", err()) == 0
    assert p.instance.rebuild_count == 1
    assert await delay(p, "t", "k", err()) == 50, "the count was lost with the instance"
    assert p.instance.policy_count() == 1


# --------------------------------------------------------------------------- one clock


async def test_reload_keeps_ages_exactly_on_the_virtual_clock(clock: VirtualClock) -> None:
    p = plugin({**NO_JITTER, "state_ttl_ms": 2000}, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    clock.advance_ms(1500)
    p.reload()
    clock.advance_ms(500)
    assert await delay(p, "t", "k", err()) == 100, "2000 ms old: still live (TTL is inclusive)"
    clock.advance_ms(1500)
    p.reload()
    clock.advance_ms(501)
    assert await delay(p, "t", "k", err()) == 50, "2001 ms old: expired, as without the reloads"


def test_reload_keeps_ages_on_the_production_clock() -> None:
    """Issue 23 §3: with state_ttl_ms 300, a key that failed 200 ms before a reload is fresh
    150 ms after it (a new Store's clock starting near zero made it 150 ms old); reloading every
    100 ms does not keep an entry alive either.  Real time, hence a synchronous test."""

    def fail(p: RetryWithBackoffPlugin) -> int:
        return asyncio.run(delay(p, "t", "k", err()))

    p = plugin({**NO_JITTER, "state_ttl_ms": 300})
    assert fail(p) == 50
    time.sleep(0.2)
    p.reload()
    time.sleep(0.15)
    assert fail(p) == 50, "350 ms old: expired across the reload"
    assert fail(p) == 100
    for _ in range(5):
        time.sleep(0.1)
        p.reload()
    assert fail(p) == 50, "reloads do not keep an entry alive"
    live = plugin({**NO_JITTER, "state_ttl_ms": 10_000})
    assert fail(live) == 50
    live.reload()
    assert fail(live) == 100, "well within its TTL: carried over"


# --------------------------------------------------------------------------- builds that stick


async def test_objects_built_after_a_reload_attach_to_the_reloaded_build(
    clock: VirtualClock, wasm_path: Path, tmp_path: Path
) -> None:
    p = plugin(NO_JITTER, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    other = rebuilt(wasm_path, tmp_path / "other.wasm", "7")
    assert p.reload(str(other)) == 1
    later = plugin(NO_JITTER, clock=clock)  # the gateway's 30 s rebuild, same stanza
    assert later.instance is p.instance
    assert later.instance.wasm_path == other
    assert later.instance.contract_version == "0.5.7"
    assert await delay(later, "t", "k", err()) == 100, "the reloaded state"


async def test_a_build_dropped_in_at_wasm_path_is_picked_up_with_its_state(
    clock: VirtualClock, wasm_path: Path, tmp_path: Path
) -> None:
    """A new .wasm renamed over ``wasm_path`` (as a Kubernetes ConfigMap update does) is loaded
    the next time the gateway builds a plugin object for the stanza, live state carried over."""
    live = tmp_path / "retry_engine.wasm"
    shutil.copyfile(wasm_path, live)
    config = {**NO_JITTER, "wasm_path": str(live)}
    p = plugin(config, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    staged = rebuilt(wasm_path, tmp_path / "staged.wasm", "3")
    os.replace(staged, live)
    later = plugin(config, clock=clock)
    assert later.instance is p.instance
    assert (later.instance.contract_version, later.instance.reload_count) == ("0.5.3", 1)
    assert await delay(later, "t", "k", err()) == 100
    # An unchanged file is not reloaded again.
    plugin(config, clock=clock)
    assert later.instance.reload_count == 1


async def test_a_dropped_in_build_that_misses_the_pin_is_refused_once(
    clock: VirtualClock, wasm_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    live = tmp_path / "retry_engine.wasm"
    shutil.copyfile(wasm_path, live)
    pin = hashlib.sha256(live.read_bytes()).hexdigest()
    config = {**NO_JITTER, "wasm_path": str(live), "wasm_sha256": pin}
    p = plugin(config, clock=clock)
    assert await delay(p, "t", "k", err()) == 50
    os.replace(rebuilt(wasm_path, tmp_path / "staged.wasm", "4"), live)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            later = plugin(config, clock=clock)
    warnings = [r for r in caplog.records if "wasm_sha256 pins" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert str(live) in warnings[0].getMessage()
    assert "running build stays" in warnings[0].getMessage()
    assert (later.instance.contract_version, later.instance.reload_count) == ("0.5.0", 0)
    assert await delay(later, "t", "k", err()) == 100, "the running build and its state"
