"""Hot-path work that must not grow with what clients create (issue 23; found by an
adversarial review): a fuel trap is a fault, the call is answered "no retry", the instance is
rebuilt and every tenant's retry state is lost; the same input would trip it again.
"""

from __future__ import annotations

from typing import Any

from cpex.framework import GlobalContext

from cpex_retry_with_backoff_wasm import OpenPolicy
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import VirtualClock, err, ok
from .test_instance import open_policy


def decide(policy: OpenPolicy, tool: str, rid: str, result: Any, **context: Any) -> int:
    return policy.instance.decide(policy, tool, GlobalContext(request_id=rid, **context), result)


def test_a_decision_at_the_instance_bound_never_scans_every_context() -> None:
    policy = open_policy({"jitter": False, "max_state_entries": 10, "state_ttl_ms": 10**9})
    instance = policy.instance
    # A decision takes ~5 000 fuel, a new context's up to ~4 M where `contexts` doubles (65 536:
    # the copy); half the default budget.  (Under the default 10 M the flood below faults at
    # the bound all the same, ~95 000 contexts in.)
    instance.fuel_per_call = 5_000_000
    # Gateway-sized context values (a team id and a virtual server id may be 256 characters).
    tenant, server = "t" * 246, "s" * 256
    past_the_bound = 0
    for n in range(120_000):
        decide(policy, "tool", "r", err(), tenant_id=f"{tenant}{n:010d}", server_id=server)
        if instance.fault_count:
            break
        if n % 1000 == 999 and instance.state_count() <= n:
            past_the_bound += 1  # the bound drops entries: each new context evicts
            if past_the_bound == 3:
                break
    assert instance.fault_count == 0, f"fuel exhausted after {n} contexts"


def test_consecutive_held_successes_under_a_retry_budget_never_exhaust_the_fuel() -> None:
    policy = open_policy(
        {
            "jitter": False,
            "retry_budget_percent": 10,
            "retry_budget_min_per_sec": 0,
            "key_scope": "user",
            "max_retries": 5,
        },
        clock=VirtualClock(),
        seed=(1, 2),
    )
    instance = policy.instance
    wide = "\U0001f600" * 256  # 256 characters, 1 KiB of UTF-8: a key part crossing as itself

    def context(user: str) -> dict[str, Any]:
        return {"tenant_id": wide, "server_id": wide, "user": wide[: 256 - len(user)] + user}

    # Twelve keys retry once (their buckets each lose a token: not full again, min_per_sec 0).
    victims = [f"v{i:02d}" for i in range(12)]
    for v in victims:
        assert decide(policy, wide, wide, err(), **context(v)) & DELAY_MASK == 200
    # 4200 other (tool, identity) buckets, each spending a token, push theirs out of the 4096.
    for i in range(4200):
        decide(policy, wide, "r", err(), **context(f"{i:04x}"))
    assert instance.fault_count == 0
    # Their successes: each reaches the engine by handle and deposits into a new bucket.
    for v in victims:
        decide(policy, wide, wide, ok(), **context(v))
    assert instance.fault_count == 0
