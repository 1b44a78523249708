"""Configurations as input (issue 23; found by an adversarial review).  A team's plugin binding
is merged over the stanza's config by the gateway, so its keys (every policy key, and the host
keys too) come from whoever may manage that team's bindings.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any

import pytest
from cpex.framework import GlobalContext

from cpex_retry_with_backoff_wasm import INSTANCES, ConfigurationError

from .conftest import VirtualClock, direct_plugin
from .test_instance import open_policy

MIB = 1024 * 1024


def padded(i: int, overrides: int = 60) -> dict[str, Any]:
    """A configuration of ~1.6 KB of JSON (tool overrides), distinct per ``i``."""
    return {
        "state_ttl_ms": 1000,
        "max_state_entries": 1000,
        "backoff_base_ms": 100 + i,
        "tool_overrides": {f"t{j:03d}": {"max_retries": 1} for j in range(overrides)},
        "wasm_max_memory_bytes": 8 * MIB,
    }


def test_unused_policies_make_room_before_the_share_refuses() -> None:
    clock = VirtualClock()
    opened = 0
    refused: ConfigurationError | None = None
    while refused is None:
        try:
            open_policy(padded(opened), clock=clock)
            opened += 1
        except ConfigurationError as exc:
            refused = exc
    assert "the configurations held would take more than" in str(refused)
    assert opened > 10
    clock.advance_ms(5_000)  # every policy held has gone unused for its state_ttl_ms (1 s)
    open_policy(padded(opened), clock=clock)


def test_a_configuration_past_its_size_is_refused_alone() -> None:
    """One binding cannot take the policies' whole share: a configuration text over 64 KiB is
    refused, saying so, and an ordinary one after it opens.  (Many distinct configurations near
    the bound can still fill the policies' share, an eighth of the cap: bindings are managed by
    a team's administrators; docs/reliability.md.)"""
    with pytest.raises(ConfigurationError, match="more than a configuration may be"):
        open_policy({"pad": "x" * (64 * 1024)})
    open_policy({"max_retries": 3, "backoff_base_ms": 150, "v": "other-team"})


def test_host_keys_from_configurations_never_grow_the_instances_without_bound() -> None:
    objects = []
    for i in range(100):
        # A bound may refuse the configurations past it: that is a fix too.
        with contextlib.suppress(ConfigurationError):
            objects.append(direct_plugin({"wasm_fuel": 10_000_000 + i}))
    del objects
    gc.collect()
    assert len(INSTANCES) <= 16


def test_opening_at_the_policy_bound_never_faults() -> None:
    clock = VirtualClock()
    held = []
    for i in range(4096):
        # Three in four stay in use (a long state_ttl_ms); the others go unused after 1 s.
        policy = open_policy(
            {"state_ttl_ms": 1000 if i % 4 == 0 else 10**9, "max_state_entries": 100, "v": i}, clock=clock
        )
        held.append(policy)
        for team in range(7):
            policy.instance.decide(
                policy, "tool", GlobalContext(request_id="r", tenant_id=f"team-{team}"), {"isError": True}
            )
    instance = held[0].instance
    assert (instance.policy_count(), instance.fault_count) == (4096, 0)
    clock.advance_ms(2000)
    open_policy({"v": "a new team binding"}, clock=clock)
    assert instance.fault_count == 0
    assert instance.state_count() == 3072 * 7
