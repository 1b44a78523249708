"""Per-team policies through the gateway's tool plugin bindings (issue 23 §7).

One gateway (per release) whose configuration file holds both plugins' stanzas, each
``mode: disabled`` with ``max_retries: 2``: nothing retries until a binding switches a plugin on
for a team's tool, as the gateway's own live test does on its ``binding`` path. Everything goes
through the REST API an operator uses:

* ``POST /teams/``: one private team per row of TEAMS (the admin owns it);
* ``POST /gateways`` with ``team_id`` and ``visibility: "team"``: the flaky server registered once
  per team under the same name, so every team has its own tools of the same names
  (``flaky-always-fail``, ...), and the gateway runs their plugins in the context
  ``<team id>::<tool name>`` that bindings apply to;
* ``POST /servers``: a virtual server per team over its bound tools; a call names it
  (``params.server_id`` of ``tools/call`` on ``POST /rpc``) to reach that team's tool;
* ``POST /v1/tools/plugin_bindings/``: one request binding every team, ``mode: enforce`` and a
  ``config`` the gateway merges over the stanza's (key by key).

Attempts are counted at the flaky server; delays read from the gateway's DEBUG log. Gateway
1.0.7 caches a tool lookup by name alone (``TOOL_LOOKUP_CACHE_ENABLED``), so the second team's
call of a same-named tool would get the first team's tool, and is then refused by the server
scope: that gateway runs with the cache off.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h
import pytest

VARIANTS = ("wasm", "native")
BASE_MS = 100
#: The stanzas' max_retries, which no binding below uses: a count of 3 attempts would mean the
#: stanza, not the binding, decided.
STANZA_MAX_RETRIES = 2
#: MAX_TOOL_RETRIES above every bound max_retries: the binding is the limit, not the gateway.
CEILING = 5
#: max_retries each team of a variant binds ("spoilt" gets an invalid config in its test).
BOUND = {"one": 1, "three": 3, "spoilt": 1}
#: The flaky server's tools every binding names.
BOUND_TOOLS = ("always_fail", "flaky")
BINDINGS_PATH = "/v1/tools/plugin_bindings/"  # the trailing slash avoids a redirect


def gateway_tool(tool: str) -> str:
    """The gateway's name of a flaky-server tool (the same in every team)."""
    return f"{h.SERVER_NAME}-{tool.replace('_', '-')}"


def policy(variant: str, config: dict[str, Any]) -> dict[str, Any]:
    """One entry of a team's "policies": that variant's stanza, on, for BOUND_TOOLS."""
    return {
        "tool_names": [gateway_tool(t) for t in BOUND_TOOLS],
        "plugin_id": h.PLUGINS[variant][0],
        "mode": "enforce",
        "priority": h.PRIORITY,
        "config": config,
    }


@dataclass
class Team:
    id: str
    #: The virtual server over this team's tools, which a call names to reach them.
    server_id: str


@dataclass
class Bound:
    gw: h.Gateway
    teams: dict[str, Team]  # "<variant>-<BOUND key>" and "unbound"

    def call(self, server: h.FlakyServer, team: str, scenario: str, tool: str, **args: Any) -> dict[str, Any]:
        variant = team.split("-", 1)[0] if team != "unbound" else "none"
        return h.record_call(
            self.gw,
            server,
            f"binding: {scenario}",
            tool,
            server_id=self.teams[team].server_id,
            variant=variant,
            **args,
        )


@pytest.fixture(scope="module")
def bound(workdir: Path, database: Path, flaky_server: h.FlakyServer) -> Iterator[Bound]:
    stanzas = [
        h.PluginSetup(
            variant=v, max_retries=STANZA_MAX_RETRIES, backoff_base_ms=BASE_MS, jitter=False, mode="disabled"
        )
        for v in VARIANTS
    ]
    extra_env = {"TOOL_LOOKUP_CACHE_ENABLED": "false"} if h.gateway_release() < (1, 1) else {}
    gw = h.launch_gateway(
        workdir / "gw-bindings",
        stanzas[0],
        max_tool_retries=CEILING,
        extra_env=extra_env,
        database=database,
        extra_plugins=tuple(stanzas[1:]),
    )
    try:
        gw.wait_ready()
        teams: dict[str, Team] = {}
        for label in [f"{v}-{t}" for v in VARIANTS for t in BOUND] + ["unbound"]:
            team_id = gw.create_team(f"retry-e2e-{label}")
            tools = gw.tools_of(gw.register(flaky_server, team_id=team_id)["id"])
            tool_ids = [tools[gateway_tool(t)] for t in BOUND_TOOLS]
            teams[label] = Team(team_id, gw.create_server(f"retry-e2e-{label}", tool_ids, team_id=team_id))
        body = {
            "teams": {
                teams[f"{v}-{t}"].id: {"policies": [policy(v, {"max_retries": n})]}
                for v in VARIANTS
                for t, n in BOUND.items()
            }
        }
        answer = gw.post(BINDINGS_PATH, body)
        assert answer["total"] == len(VARIANTS) * len(BOUND) * len(BOUND_TOOLS), answer
        yield Bound(gw, teams)
    finally:
        gw.stop()


def test_each_team_retries_as_its_binding_says(
    bound: Bound, flaky_server: h.FlakyServer, variant: str
) -> None:
    """Two teams, the same tool name, max_retries 1 and 3 bound: 2 and 4 attempts, with the
    stanza's backoff_base_ms (the binding's config is merged over the stanza's)."""
    one = bound.call(flaky_server, f"{variant}-one", "team binds max_retries 1, always_fail", "always_fail")
    three = bound.call(
        flaky_server, f"{variant}-three", "team binds max_retries 3, always_fail", "always_fail"
    )
    assert one["answers"] == ["503"] * 2, one
    assert one["delays_ms"] == [BASE_MS], one
    assert three["answers"] == ["503"] * 4, three
    assert three["delays_ms"] == [BASE_MS, 2 * BASE_MS, 4 * BASE_MS], three


def test_the_binding_decides_the_outcome(bound: Bound, flaky_server: h.FlakyServer, variant: str) -> None:
    """flaky(3): the team bound to 1 retry gets the 2nd failure back; the team bound to 3 succeeds."""
    one = bound.call(
        flaky_server, f"{variant}-one", "team binds max_retries 1, flaky(3)", "flaky", fail_times=3
    )
    three = bound.call(
        flaky_server, f"{variant}-three", "team binds max_retries 3, flaky(3)", "flaky", fail_times=3
    )
    assert one["answers"] == ["503", "503"], one
    res = h.result_of(one)
    assert res["isError"] is True, res
    assert res["content"][0]["text"].startswith("attempt 2:"), res
    assert three["answers"] == ["503", "503", "503", "ok"], three
    assert h.result_of(three).get("isError") is False, three["resp"]


def test_a_team_without_a_binding_is_not_retried(bound: Bound, flaky_server: h.FlakyServer) -> None:
    """The stanzas are disabled: a team with no binding runs its tool without a retry plugin."""
    out = bound.call(flaky_server, "unbound", "no binding (stanzas disabled), always_fail", "always_fail")
    assert out["answers"] == ["503"], out
    assert out["delays_ms"] == [], out


def test_an_invalid_binding_is_refused_at_the_manager_build_and_spares_the_other_team(
    bound: Bound, flaky_server: h.FlakyServer, variant: str
) -> None:
    """A team's binding replaced by an invalid config: the REST API stores it (it checks the
    request's shape, not a plugin's config), then rebuilds that team's plugin managers within the
    same request; the plugin's constructor refuses the config, and cpex logs the error (with the
    key paths) and skips the plugin. That team's tool then runs without retries; another team
    bound to the same plugin keeps its own policy."""
    gw, team = bound.gw, bound.teams[f"{variant}-spoilt"]
    before = bound.call(
        flaky_server, f"{variant}-spoilt", "binds max_retries 1, before its invalid binding", "always_fail"
    )
    assert before["answers"] == ["503"] * 2, before

    bad_override = {"backoff_base_ms": 0}  # accepted by the native plugin, which skips overrides
    config = {"max_retries": "x", "tool_overrides": {gateway_tool("always_fail"): bad_override}}
    correlation_id = f"bad-binding-{variant}-{uuid.uuid4().hex[:12]}"
    r = gw.client.post(
        BINDINGS_PATH,
        json={"teams": {team.id: {"policies": [policy(variant, config)]}}},
        headers={"X-Correlation-ID": correlation_id},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert [b["config"] for b in r.json()["bindings"]] == [config] * len(BOUND_TOOLS), r.text

    name = h.PLUGINS[variant][0]
    refusals = [
        str(rec["message"])
        for rec in gw.log_records(correlation_id)
        if rec.get("levelname") == "ERROR" and f"Failed to load plugin {name}" in str(rec.get("message"))
    ]
    assert refusals, f"no refusal of {name} logged for the request:\n{gw.proc.log_tail()}"
    for message in refusals:
        assert "max_retries" in message, message
        if variant == "wasm":  # every problem at once, each with its key path
            assert "max_retries: " in message, message
            assert f"tool_overrides.{gateway_tool('always_fail')}.backoff_base_ms: " in message, message

    after = bound.call(flaky_server, f"{variant}-spoilt", "invalid binding, always_fail", "always_fail")
    assert after["answers"] == ["503"], after
    assert after["delays_ms"] == [], after
    other = bound.call(
        flaky_server, f"{variant}-three", "other team after the invalid binding, always_fail", "always_fail"
    )
    assert other["answers"] == ["503"] * 4, other
    assert other["delays_ms"] == [BASE_MS, 2 * BASE_MS, 4 * BASE_MS], other
