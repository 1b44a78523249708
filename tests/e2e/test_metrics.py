"""The real gateway's ``/metrics/prometheus`` counts this plugin's decisions (issue 14, part 3).

One gateway per mode, with ``ENABLE_METRICS=true``: single-process (the gateway serves
``prometheus_client``'s default registry; a scrape flushes the plugin's queued decisions first,
so the counts are exact at once) and with ``PROMETHEUS_MULTIPROC_DIR`` set (it serves a
``MultiProcessCollector`` over the workers' files, which the plugin's flush thread writes about
every second: the test scrapes until they agree, within a bound).

The expected counts come from what the calls were observed to do: the attempts the flaky server
recorded and the delays the gateway logged as asked for ("retry requested ... delay_ms=N").
Each attempt is one ``tool_post_invoke`` decision: a logged delay is a ``retry``, and the last
attempt's answer is the outcome (``ok``: success; ``404``: non-retryable; a 503 after the
budget's two retries: exhausted).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import harness as h
import pytest
from prometheus_client.parser import text_string_to_metric_families

PLUGIN = h.PLUGINS["wasm"][0]
MAX_RETRIES = 2
PREFIX = "cpex_retry_wasm_"
#: How long a multiprocess scrape may lag behind (the flush thread runs about every second).
MULTIPROCESS_LAG_S = 30.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module", params=["single-process", "multiprocess"])
def metrics_gateway(
    request: pytest.FixtureRequest, workdir: Path, flaky_server: h.FlakyServer
) -> Iterator[tuple[h.Gateway, str]]:
    """A gateway with metrics on, and its mode."""
    mode = str(request.param)
    gwdir = workdir / f"gw-metrics-{mode}"
    env = {"ENABLE_METRICS": "true", "TOOL_TIMEOUT": "5"}
    if mode == "multiprocess":
        multiproc = gwdir / "prometheus-multiproc"
        multiproc.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    plugin = h.PluginSetup(variant="wasm", max_retries=MAX_RETRIES, backoff_base_ms=100, jitter=False)
    gw = h.launch_gateway(gwdir, plugin, max_tool_retries=3, extra_env=env)
    try:
        gw.wait_ready()
        gw.register(flaky_server)
        yield gw, mode
    finally:
        gw.stop()


def scrape(gw: h.Gateway) -> Samples:
    r = gw.client.get("/metrics/prometheus", timeout=30)
    assert r.status_code == 200, r.text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name.startswith(PREFIX) and s.labels.get("plugin") == PLUGIN
    }


def ours(samples: Samples) -> dict[str, Any]:
    """The figures the test checks: decisions by (tool, reason), the delay histogram's count
    and sum, the state gauge."""
    decisions: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == PREFIX + "decisions_total":
            d = dict(labels)
            decisions[(d["tool"], d["reason"])] += int(value)
    plugin = frozenset({("plugin", PLUGIN)})
    return {
        "decisions": decisions,
        "delay_count": int(samples.get((PREFIX + "retry_delay_seconds_count", plugin), 0)),
        "delay_sum_ms": round(samples.get((PREFIX + "retry_delay_seconds_sum", plugin), 0.0) * 1000),
        "state_entries": samples.get((PREFIX + "retry_state_entries", plugin)),
    }


SCENARIOS: list[tuple[str, dict[str, Any]]] = [
    ("flaky", {"fail_times": 2}),  # 503, 503, ok
    ("flaky", {"fail_times": 3}),  # 503 x 3: the budget runs out
    ("ok", {}),
    ("not_found", {}),  # 404: not retried
    ("http_503", {"fail_times": 1}),  # an HTTP-level 503, then ok
]


def outcome(answer: str, retries: int) -> str:
    if answer == "ok":
        return "success"
    if answer == "404":
        return "non-retryable"
    assert answer in ("503", "http 503"), answer
    assert retries == MAX_RETRIES, (answer, retries)
    return "exhausted"


def test_scrape_counts_the_decisions_observed(
    metrics_gateway: tuple[h.Gateway, str], flaky_server: h.FlakyServer
) -> None:
    gw, mode = metrics_gateway
    before = ours(scrape(gw))
    expected: Counter[tuple[str, str]] = Counter()
    delays: list[int] = []
    for tool, args in SCENARIOS:
        key = f"metrics-{tool}-{uuid.uuid4().hex[:12]}"
        gateway_tool = f"{h.SERVER_NAME}-{tool.replace('_', '-')}"
        gw.call(gateway_tool, {**args, "key": key}, correlation_id=key)
        answers = [r["answer"] for r in flaky_server.attempts(key)]
        asked = gw.retry_delays(key)
        assert len(answers) == len(asked) + 1, (answers, asked)  # every retry was one more attempt
        expected[(gateway_tool, "retry")] += len(asked)
        expected[(gateway_tool, outcome(answers[-1], len(asked)))] += 1
        delays += asked
    expected = +expected  # no zero counts
    assert sum(expected.values()) == 10, expected  # one decision per attempt: 3 + 3 + 1 + 1 + 2

    # Single-process: exact at the first scrape.  Multiprocess: within the flush thread's lag.
    deadline = time.monotonic() + (MULTIPROCESS_LAG_S if mode == "multiprocess" else 0)
    while True:
        after = ours(scrape(gw))
        got = +(after["decisions"] - before["decisions"])
        if got == expected or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert got == expected, f"scraped {dict(got)}, observed {dict(expected)}"
    assert after["delay_count"] - before["delay_count"] == len(delays)
    assert after["delay_sum_ms"] - before["delay_sum_ms"] == sum(delays)
    # Every call ran to its end: no key holds retry state any more.
    assert after["state_entries"] == 0
