"""The built component driven by the real wasmtime CLI (pinned 48.0.8), one fresh instance per call.

Every call is ``wasmtime run --invoke '<call in WAVE syntax>' target/wasm/retry_engine.wasm``,
with a timeout. Multi-step behaviour goes through the ``simulate`` export (a fresh engine on a
virtual clock, jitter from a given seed). Each scenario below carries the decisions the
contract's semantics predict, written by hand; the CLI's exact output is also kept as a golden
file in ``golden/`` (one line per step), so a change of either the decisions or the CLI's text
shows up. ``UPDATE_GOLDEN=1`` rewrites the golden files from the CLI (review the diff: the
hand-written expectations still have to hold).

``WASMTIME`` overrides the CLI binary; ``RETRY_ENGINE_WASM`` the component.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WASM = Path(os.environ.get("RETRY_ENGINE_WASM", REPO / "target" / "wasm" / "retry_engine.wasm"))
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("UPDATE_GOLDEN") == "1"
PINNED_VERSION = "48.0.8"
IFACE = "contextforge:retry/retry-engine"
#: The contract version: the WIT package's (``package contextforge:retry@X;``).
CONTRACT = re.search(r"package contextforge:retry@([^;]+);", (REPO / "wit" / "world.wit").read_text())[1]
TIMEOUT_S = 30

#: Limits under which every normal scenario must still pass: each ``simulate`` creates an engine
#: and opens its policy; its linear memory is mostly the 1 MiB stack (retry state grows with
#: the live entries, never with ``max_state_entries``).
FUEL = 4_000_000
MAX_MEMORY = 3 * 1024 * 1024


def find_wasmtime() -> str:
    exe = os.environ.get("WASMTIME") or shutil.which("wasmtime")
    if exe is None:
        cargo_bin = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "wasmtime"
        exe = str(cargo_bin) if cargo_bin.is_file() else None
    if exe is None:
        pytest.fail(
            "no wasmtime CLI: `make test-cli` installs it "
            f"(cargo install --locked wasmtime-cli@{PINNED_VERSION})",
            pytrace=False,
        )
    return exe


WASMTIME = find_wasmtime()


# --- WAVE encoding ---------------------------------------------------------------------------


def wave_str(s: str) -> str:
    """A WAVE string literal."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def call(func: str, *args: str) -> str:
    """``iface.func@version(args)``: the qualified call syntax of the 48 CLI."""
    return f"{IFACE}.{func}@{CONTRACT}({', '.join(args)})"


#: The stanza the tests open policies under (the gateway's name for the plugin).
SCOPE = "RetryWithBackoffPlugin"


def open_policy(config: str, *, ceiling: int | None = None) -> str:
    """An ``open-policy`` call under ``SCOPE``."""
    wave_ceiling = "none" if ceiling is None else f"some({ceiling})"
    return call("open-policy", wave_str(SCOPE), wave_str(config), wave_ceiling)


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def wasmtime(invoke: str, *limits: str, wasm: Path = WASM) -> Run:
    """One ``wasmtime run --invoke`` (a fresh instance), with ``-W`` limits and a timeout."""
    argv = [WASMTIME, "run"]
    for limit in limits:
        argv += ["-W", limit]
    argv += ["--invoke", invoke, str(wasm)]
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, check=False)
    return Run(proc.returncode, proc.stdout.strip(), proc.stderr)


def ok(invoke: str, *limits: str) -> str:
    run = wasmtime(invoke, *limits)
    assert run.returncode == 0, f"wasmtime failed ({run.returncode}): {run.stderr}"
    return run.stdout


# --- reading the CLI's output ----------------------------------------------------------------

WAVE_STRING = r'"((?:[^"\\]|\\.)*)"'
RECORD = re.compile(r"\{[^{}]*\}")
REASON_NAMES = "success|retry|exhausted|non-retryable|budget|deadline|retry-after|non-idempotent"
DECISION = re.compile(r"\{delay-ms: (\d+), retry-count: (\d+), reason: (" + REASON_NAMES + r")\}")
CONFIG_ERROR = re.compile(r"\{path: " + WAVE_STRING + r", message: " + WAVE_STRING + r"\}")


def unwave(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), s)


def config_errors(out: str) -> list[tuple[str, str]]:
    assert out.startswith("err(["), out
    assert out.endswith("])"), out
    errors = [(unwave(p), unwave(m)) for p, m in CONFIG_ERROR.findall(out)]
    assert len(errors) == len(RECORD.findall(out)), out
    return errors


@dataclass(frozen=True)
class Opened:
    """An ``opened-policy`` record as the CLI prints it."""

    id: int
    reads: set[str]
    key_scope: str
    #: The global policy's fields, as printed (``{"max-retries": "3", ...}``).
    policy: dict[str, str]
    warnings: list[tuple[str, str]]


OPENED = re.compile(
    r"ok\(\{id: (\d+), reads: \{([a-z, -]*)\}, key-scope: ([a-z]+), global: \{(.*)\}, warnings: \[(.*)\]\}\)"
)
FIELD = re.compile(r"([a-z-]+): (\[[^\]]*\]|some\([^)]*\)|[^,]+)")


def opened(out: str) -> Opened:
    match = OPENED.fullmatch(out)
    assert match, out
    id_, reads, key_scope, policy, warnings = match.groups()
    return Opened(
        id=int(id_),
        reads={r for r in reads.split(", ") if r},
        key_scope=key_scope,
        policy=dict(FIELD.findall(policy)),
        warnings=[(unwave(p), unwave(m)) for p, m in CONFIG_ERROR.findall(warnings)],
    )


def decisions(out: str) -> list[tuple[int, int, str]]:
    assert out.startswith("ok(["), out
    assert out.endswith("])"), out
    found = [(int(d), int(c), r) for d, c, r in DECISION.findall(out)]
    assert len(found) == len(RECORD.findall(out)), out
    return found


# --- policy ids ---------------------------------------------------------------------------------


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with the key (0, 0) (Aumasson and Bernstein, one compression round, three
    finalization rounds), written from the algorithm, not from the guest's code."""
    mask = (1 << 64) - 1

    def rotl(x: int, b: int) -> int:
        return ((x << b) | (x >> (64 - b))) & mask

    v = [0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573]

    def sipround() -> None:
        v[0] = (v[0] + v[1]) & mask
        v[1] = rotl(v[1], 13) ^ v[0]
        v[0] = rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & mask
        v[3] = rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & mask
        v[3] = rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & mask
        v[1] = rotl(v[1], 17) ^ v[2]
        v[2] = rotl(v[2], 32)

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v[3] ^= m
        sipround()
        v[0] ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v[3] ^= last
    sipround()
    v[0] ^= last
    v[2] ^= 0xFF
    for _ in range(3):
        sipround()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def policy_id(scope: str, config: str, ceiling: int | None) -> int:
    """The id ``open-policy`` gives, as the contract derives it: over the scope, a 0xff byte, the
    configuration's text as sent, a 0xff byte and the ceiling as 4 little-endian bytes (none: no
    bytes); 0 becomes 1."""
    data = scope.encode() + b"\xff" + config.encode() + b"\xff"
    if ceiling is not None:
        data += ceiling.to_bytes(4, "little")
    return siphash13(data) or 1


# --- scenarios ---------------------------------------------------------------------------------

FAIL = {"isError": True}
OK = {"isError": False, "content": [{"type": "text", "text": "done"}]}


def status(code: int, *, is_error: bool = True) -> dict[str, Any]:
    return {"isError": is_error, "structuredContent": {"status_code": code}, "content": []}


def text(*texts: str, structured: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": t} for t in texts]}
    if structured is not None:
        result["structuredContent"] = structured
    return result


@dataclass(frozen=True)
class Step:
    tool: str
    request_id: str
    result: dict[str, Any] | str  # a str is sent as-is (e.g. invalid JSON)
    #: What the semantics predict: "delay/count/reason", or for jitter "1..C/count/retry".
    expect: str
    advance_ms: int = 0
    #: The step's ``call-facts`` flags (``timeout``, ``idempotent``); none: the field is left out.
    call: tuple[str, ...] = ()

    @property
    def result_json(self) -> str:
        return self.result if isinstance(self.result, str) else json.dumps(self.result)

    def wave(self) -> str:
        return (
            f"{{tool: {wave_str(self.tool)}, request-id: {wave_str(self.request_id)}, "
            f"result-json: {wave_str(self.result_json)}, advance-ms: {self.advance_ms}"
            + (f", call: some({{{', '.join(self.call)}}})" if self.call else "")
            + "}"
        )


@dataclass(frozen=True)
class Scenario:
    name: str
    doc: str
    config: dict[str, Any]
    steps: list[Step] = field(default_factory=list)
    seed: int = 1

    def invoke(self, seed: int | None = None) -> str:
        steps = "[" + ", ".join(s.wave() for s in self.steps) + "]"
        return call(
            "simulate", wave_str(json.dumps(self.config)), str(self.seed if seed is None else seed), steps
        )


NO_JITTER = {"jitter": False}
S = Step

SCENARIOS = [
    Scenario(
        "backoff_sequence",
        "min(base * 2^(n-1), max) for the n-th failure, then exhaustion after max_retries",
        {"max_retries": 6, "backoff_base_ms": 100, "max_backoff_ms": 1000, "jitter": False},
        [
            S("fetch", "req-1", FAIL, "100/1/retry"),
            S("fetch", "req-1", status(503), "200/2/retry", 100),
            S("fetch", "req-1", status(503, is_error=False), "400/3/retry", 200),  # rule 2: status listed
            S("fetch", "req-1", status(429), "800/4/retry", 400),
            S("fetch", "req-1", FAIL, "1000/5/retry", 800),  # 1600 capped at max_backoff_ms
            S("fetch", "req-1", FAIL, "1000/6/retry", 1000),
            S("fetch", "req-1", FAIL, "0/7/exhausted", 1000),
        ],
    ),
    Scenario(
        "exhaustion_fresh_budget",
        "defaults: budget of 2, exhaustion clears the key, a fresh budget follows; keys are independent",
        NO_JITTER,
        [
            S("t", "r1", status(503), "200/1/retry"),
            S("t", "r1", status(503), "400/2/retry"),
            S("t", "r1", status(503), "0/3/exhausted"),
            S("t", "r1", status(503), "200/1/retry"),  # fresh budget
            S("t", "r2", FAIL, "200/1/retry"),  # another request id: its own budget
            S("t", "r1", OK, "0/0/success"),  # success clears r1
            S("t", "r1", FAIL, "200/1/retry"),
            S("t", "r2", status(404), "0/0/non-retryable"),  # explicit non-retriable status: clears r2
            S("t", "r2", FAIL, "200/1/retry"),
            S("a:b", "c", FAIL, "200/1/retry"),  # ("a:b", "c") and ("a", "b:c") do not collide
            S("a", "b:c", FAIL, "200/1/retry"),
            S("a:b", "c", FAIL, "400/2/retry"),
        ],
    ),
    Scenario(
        "overrides",
        "per-tool max_retries, backoff_base_ms, retry_on_status and max_backoff_ms over the globals",
        {
            "jitter": False,
            "tool_overrides": {
                "search": {"max_retries": 1, "backoff_base_ms": 50, "retry_on_status": [404]},
                "slow": {"max_backoff_ms": 300},
            },
        },
        [
            S("search", "r", status(404), "50/1/retry"),
            S("search", "r", status(404), "0/2/exhausted"),
            S("search", "r2", status(503), "0/0/non-retryable"),  # 503 is not in search's list
            S("search", "r3", FAIL, "50/1/retry"),  # isError without a status still fails
            S("slow", "r", FAIL, "200/1/retry"),
            S("slow", "r", FAIL, "300/2/retry"),  # 400 capped at the override's 300
            S("slow", "r", FAIL, "0/3/exhausted"),  # global max_retries 2
            S("other", "r", status(404), "0/0/non-retryable"),  # global list has no 404
            S("other", "r", status(500), "200/1/retry"),
        ],
    ),
    Scenario(
        "shapes_and_throttle",
        "backoff shapes (linear, constant per tool) and the throttle class: a 429 or a delay hint "
        "takes the throttle bounds",
        {
            "jitter": False,
            "max_retries": 3,
            "backoff": "linear",
            "backoff_base_ms": 100,
            "max_backoff_ms": 250,
            "throttle_backoff_base_ms": 1000,
            "throttle_max_backoff_ms": 1500,
            "tool_overrides": {"flat": {"backoff": "constant"}},
        },
        [
            S("t", "r", FAIL, "100/1/retry"),
            S("t", "r", status(503), "200/2/retry"),
            S("t", "r", FAIL, "250/3/retry"),  # 300 capped at max_backoff_ms
            S("t", "r", FAIL, "0/4/exhausted"),
            S("t", "q", status(429), "1000/1/retry"),  # throttled
            S("t", "q", status(429), "1500/2/retry"),  # 2000 capped at throttle_max_backoff_ms
            S("t", "q", status(503), "250/3/retry"),  # transient again: the count is the key's
            S(
                "t",
                "h",
                {"isError": True, "structuredContent": {"status_code": 503, "retry_after_ms": 5}},
                "1000/1/retry",  # a delay hint: throttled, though not honoured
            ),
            S("flat", "f", FAIL, "100/1/retry"),
            S("flat", "f", status(429), "1000/2/retry"),
            S("flat", "f", FAIL, "100/3/retry"),
        ],
    ),
    Scenario(
        "text_content",
        "check_text_content: a JSON text item with isError or a listed status_code, "
        "only without structured content",
        {"jitter": False, "tool_overrides": {"texty": {"check_text_content": True}}},
        [
            S("texty", "r", text('{"isError": true}'), "200/1/retry"),
            S("texty", "r", text('{"status_code": 503}'), "400/2/retry"),
            S("texty", "r", text('{"status_code": 404}'), "0/0/success"),  # not listed: clears
            S("texty", "r2", text("not json"), "0/0/success"),
            S("texty", "r3", text('{"isError": true}', structured={}), "0/0/success"),  # structured wins
            S("texty", "r4", text("hello", '{"status_code": 429}'), "200/1/retry"),  # any item
            S("texty", "r5", {"content": [{"type": "image", "text": '{"isError": true}'}]}, "0/0/success"),
            S("plain", "r", text('{"isError": true}'), "0/0/success"),  # text not checked by default
        ],
    ),
    Scenario(
        "ttl",
        "state_ttl_ms 1000 on the virtual clock: an entry older than the TTL is forgotten",
        {"jitter": False, "state_ttl_ms": 1000, "max_retries": 3},
        [
            S("t", "r", FAIL, "200/1/retry"),
            S("t", "r", FAIL, "400/2/retry", 1000),  # exactly the TTL old: kept
            S("t", "r", FAIL, "200/1/retry", 1001),  # older than the TTL: a fresh budget
            S("t", "r", FAIL, "400/2/retry", 999),
            S("t", "r", FAIL, "800/3/retry", 1),
            S("t", "r", FAIL, "0/4/exhausted", 1000),
        ],
    ),
    Scenario(
        "bounded_state",
        "max_state_entries 2: a third key evicts the oldest",
        {"jitter": False, "max_state_entries": 2},
        [
            S("t", "a", FAIL, "200/1/retry", 1),
            S("t", "b", FAIL, "200/1/retry", 1),
            S("t", "c", FAIL, "200/1/retry", 1),  # evicts a
            S("t", "a", FAIL, "200/1/retry", 1),  # a was forgotten; evicts b
            S("t", "c", FAIL, "400/2/retry", 1),  # c survived
        ],
    ),
    Scenario(
        "jitter_seed_42",
        "full jitter from a fixed seed: uniform in [1, ceiling], never 0, reproducible",
        {"max_retries": 8, "backoff_base_ms": 1, "max_backoff_ms": 32, "jitter": True},
        [S("t", "r", FAIL, f"1..{min(2 ** (n - 1), 32)}/{n}/retry") for n in range(1, 9)]
        + [S("t", "r", FAIL, "0/9/exhausted")],
        seed=42,
    ),
    Scenario(
        "jitter_defaults_seed_7",
        "default policy with jitter: delays in [1, 200 * 2^(n-1)]",
        {},
        [
            S("t", "r", status(503), "1..200/1/retry"),
            S("t", "r", status(503), "1..400/2/retry"),
            S("t", "r", status(503), "0/3/exhausted"),
            S("t", "r2", status(502), "1..200/1/retry"),
        ],
        seed=7,
    ),
    Scenario(
        "non_idempotent",
        "non_idempotent_retries throttled: a tool that is not idempotent is retried only after a 429 "
        "or a 503 with a delay hint, never after a timeout; annotations or the idempotent key make "
        "it idempotent",
        {
            "jitter": False,
            "non_idempotent_retries": "throttled",
            "tool_overrides": {"get": {"idempotent": True}},
        },
        [
            S("send", "a", FAIL, "0/1/non-idempotent"),
            S("send", "b", status(503), "0/1/non-idempotent"),
            S("send", "c", status(429), "200/1/retry"),
            S(
                "send",
                "c",
                {**status(503), "structuredContent": {"status_code": 503, "retry_after_ms": 5}},
                "400/2/retry",
            ),
            S("send", "c", status(429), "0/3/exhausted"),
            S("send", "d", FAIL, "0/1/non-idempotent", call=("timeout",)),
            S("send", "e", status(429), "0/1/non-idempotent", call=("timeout",)),
            S("send", "f", FAIL, "200/1/retry", call=("timeout", "idempotent")),  # annotated
            S("get", "g", FAIL, "200/1/retry", call=("timeout",)),  # the idempotent key
        ],
    ),
]
BY_NAME = {s.name: s for s in SCENARIOS}


def golden_text(scenario: Scenario, out: str) -> str:
    lines = [
        f"# {scenario.name}: {scenario.doc}",
        f"# config {json.dumps(scenario.config)} seed {scenario.seed}",
        "# step tool request-id +advance-ms result-json => CLI output",
    ]
    records = RECORD.findall(out)
    assert len(records) == len(scenario.steps), out
    for i, (step, record) in enumerate(zip(scenario.steps, records, strict=True)):
        facts = f" call {','.join(step.call)}" if step.call else ""
        lines.append(
            f"{i} {step.tool} {step.request_id} +{step.advance_ms}{facts} {step.result_json} => {record}"
        )
    return "\n".join(lines) + "\n"


def check_golden(name: str, text_now: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if UPDATE_GOLDEN:
        path.write_text(text_now)
    assert path.is_file(), f"{path} is missing: run with UPDATE_GOLDEN=1 and review it"
    assert text_now == path.read_text(), f"{path} differs (UPDATE_GOLDEN=1 regenerates it; review the diff)"


def matches(expect: str, got: tuple[int, int, str]) -> bool:
    delay, count, reason = expect.split("/")
    if (int(count), reason) != got[1:]:
        return False
    if ".." in delay:
        low, high = (int(x) for x in delay.split(".."))
        return low <= got[0] <= high
    return int(delay) == got[0]


# --- tests -----------------------------------------------------------------------------------


def test_pinned_cli_version() -> None:
    out = subprocess.run(
        [WASMTIME, "--version"], capture_output=True, text=True, timeout=TIMEOUT_S, check=True
    ).stdout
    assert out.split()[:2] == ["wasmtime", PINNED_VERSION], f"{WASMTIME}: {out}"


@pytest.mark.parametrize("invoke", [call("contract-version"), "contract-version()"])
def test_contract_version(invoke: str) -> None:
    assert ok(invoke) == f'"{CONTRACT}"'


@pytest.mark.parametrize(
    "config",
    [
        "null",
        "{}",
        '{"max_retries": 3, "jitter": false, "unknown_key": [1, 2]}',
        json.dumps(
            {
                "max_retries": 10,
                "backoff_base_ms": 1,
                "max_backoff_ms": 1,
                "retry_on_status": [],
                "check_text_content": True,
                "tool_overrides": {"a.b": {"max_retries": 0}, "": {"jitter": False}},
                "state_ttl_ms": 1,
                "max_state_entries": 1,
            }
        ),
    ],
)
def test_open_policy_accepts(config: str) -> None:
    got = opened(ok(open_policy(config)))
    assert got.key_scope == "request"
    assert got.warnings == []
    assert got.policy["max-retries"] == str((json.loads(config) or {}).get("max_retries", 2))


@pytest.mark.parametrize(
    ("config", "errors"),
    [
        ('{"max_retries": 11}', [("max_retries", "cannot exceed 10, got 11")]),
        (
            '{"backoff_base_ms": 0, "max_backoff_ms": "x", "jitter": 1}',
            [
                ("backoff_base_ms", "must be > 0"),
                ("max_backoff_ms", 'must be a non-negative integer, got "x"'),
                ("jitter", 'must be a boolean or one of "none", "full", "equal", "decorrelated", got 1'),
            ],
        ),
        (
            '{"tool_overrides": {"search": {"max_backoff_ms": 100}}}',
            [
                (
                    "tool_overrides.search.max_backoff_ms",
                    "must be >= backoff_base_ms (200, inherited from the global config), got 100",
                )
            ],
        ),
        (
            '{"tool_overrides": {"a.b": {"max_retries": -1}}}',
            [('tool_overrides["a.b"].max_retries', "must be a non-negative integer, got -1")],
        ),
        ('{"retry_on_status": "500"}', [("retry_on_status", 'must be a list of integers, got "500"')]),
        (
            '{"backoff": "linear", "jitter": "decorrelated", "throttle_max_backoff_ms": 100}',
            [
                ("throttle_max_backoff_ms", "must be >= backoff_base_ms (200), got 100"),
                (
                    "backoff",
                    'must be "exponential" with jitter "decorrelated" (it grows from the previous delay, '
                    'not by a shape), got "linear"',
                ),
            ],
        ),
        ("[1]", [("", "must be a mapping, got a list")]),
    ],
)
def test_open_policy_rejects_naming_the_key_path(config: str, errors: list[tuple[str, str]]) -> None:
    assert config_errors(ok(open_policy(config))) == errors


def test_open_policy_rejects_non_json() -> None:
    [(path, message)] = config_errors(ok(open_policy("not json")))
    assert path == ""
    assert message.startswith("config is not valid JSON")


CANONICAL_CONFIGS = ["null", "{}", '{"jitter":false,"max_retries":3}', '{"tool_overrides":{"é":{}}}']


@pytest.mark.parametrize("config", CANONICAL_CONFIGS)
@pytest.mark.parametrize("ceiling", [None, 0, 3])
def test_open_policy_id_is_the_contracts_siphash(config: str, ceiling: int | None) -> None:
    # Canonical texts: the id a host can compute and keep across instances.
    assert opened(ok(open_policy(config, ceiling=ceiling))).id == policy_id(SCOPE, config, ceiling)


def test_open_policy_id_is_over_the_text_as_sent() -> None:
    """The WIT's id: over the configuration's text, not its value (spacing and key order count)."""
    config = '{"max_retries": 3, "jitter": false}'
    assert opened(ok(open_policy(config))).id == policy_id(SCOPE, config, None)


def test_open_policy_lowers_max_retries_to_the_ceiling() -> None:
    config = '{"max_retries":5,"tool_overrides":{"a":{"max_retries":8},"b":{"max_retries":1}}}'
    got = opened(ok(open_policy(config, ceiling=3)))
    assert got.policy["max-retries"] == "3"
    lowered = "exceeds the gateway's retry ceiling (max_tool_retries = 3); lowered to 3"
    assert got.warnings == [("max_retries", f"5 {lowered}"), ("tool_overrides.a.max_retries", f"8 {lowered}")]
    # Another ceiling, or none, is another policy.
    assert got.id == policy_id(SCOPE, config, 3)
    assert len({got.id, opened(ok(open_policy(config, ceiling=4))).id, policy_id(SCOPE, config, None)}) == 3


def test_open_policy_reads_flags() -> None:
    plain = opened(ok(open_policy("{}")))
    assert plain.reads == {"stateless-successes"}
    config = {"non_idempotent_retries": "throttled", "check_text_content": True, "metrics_reason": True}
    hinted = opened(ok(open_policy(json.dumps(config))))
    assert hinted.reads == {"result-hints", "call-facts", "metrics-reason"}
    assert opened(ok(open_policy('{"key_scope": "user"}'))).key_scope == "user"


def test_fresh_instance_holds_no_policy() -> None:
    # Each --invoke is a fresh instance: no policy, no state, no handle.
    key, parts = "tr", 1 << 48
    known_elsewhere = str(policy_id(SCOPE, "{}", None))
    assert ok(call("decide", known_elsewhere, wave_str(key), str(parts), "1")) == str(1 << 61)
    assert ok(call("decide-text", "1", wave_str(key), str(parts), "0", '["{}"]')) == str(1 << 61)
    assert ok(call("decide-held", "1", "1")) == str(1 << 62)
    assert ok(call("tool-policy", "1", wave_str("t"))) == "none"
    assert ok(call("state-count", "none")) == "0"
    assert ok(call("policy-count")) == "0"
    assert ok(call("evict-expired")) == "0"
    assert ok(call("close-policy", "1")) == "()"
    assert ok(call("init", "5", str(64 << 20))) == "()"
    assert ok(call("export-state")) == wave_str('{"format":3,"policies":[],"entries":[],"budgets":[]}')


@pytest.mark.parametrize("name", list(BY_NAME))
def test_scenario_matches_semantics_and_golden(name: str) -> None:
    scenario = BY_NAME[name]
    out = ok(scenario.invoke())
    got = decisions(out)
    wrong = [
        (i, step.expect, g)
        for i, (step, g) in enumerate(zip(scenario.steps, got, strict=True))
        if not matches(step.expect, g)
    ]
    assert not wrong, f"steps deviating from the semantics (index, expected, got): {wrong}"
    check_golden(name, golden_text(scenario, out))


@pytest.mark.parametrize("name", ["jitter_seed_42", "jitter_defaults_seed_7"])
def test_jitter_is_reproducible_per_seed(name: str) -> None:
    scenario = BY_NAME[name]
    first = ok(scenario.invoke())
    assert ok(scenario.invoke()) == first  # two fresh instances, same seed
    others = {ok(scenario.invoke(seed=seed)) for seed in (scenario.seed + 1, scenario.seed + 2)}
    assert first not in others, "another seed drew the same delays"


def test_jitter_many_draws_never_zero() -> None:
    # 400 first-and-second retries on distinct keys: ceilings 1 and 2 leave no room but [1, 2].
    steps = [S("t", f"r{i}", FAIL, f"1..{j}/{j}/retry") for i in range(200) for j in (1, 2)]
    config = {"backoff_base_ms": 1, "max_backoff_ms": 2, "jitter": True}
    scenario = Scenario("many", "", config, steps, seed=3)
    got = decisions(ok(scenario.invoke()))
    assert all(matches(s.expect, g) for s, g in zip(steps, got, strict=True))
    assert {g[0] for g in got[1::2]} == {1, 2}  # both values of [1, 2] drawn


def test_simulate_errors() -> None:
    steps = BY_NAME["exhaustion_fresh_budget"].steps[:2]
    bad_config = call("simulate", wave_str('{"max_retries": 11}'), "1", "[" + steps[0].wave() + "]")
    assert config_errors(ok(bad_config)) == [("max_retries", "cannot exceed 10, got 11")]
    bad_step = Step("t", "r", "{nope", "")
    invoke = call("simulate", wave_str("{}"), "1", f"[{steps[0].wave()}, {bad_step.wave()}]")
    [(path, message)] = config_errors(ok(invoke))
    assert path == "steps[1].result-json"
    assert message.startswith("is not valid JSON")


# --- limits ------------------------------------------------------------------------------------

LIMITS = (f"fuel={FUEL}", f"max-memory-size={MAX_MEMORY}")


@pytest.mark.parametrize("name", list(BY_NAME))
def test_scenarios_pass_under_fuel_and_memory_limits(name: str) -> None:
    scenario = BY_NAME[name]
    assert ok(scenario.invoke(), *LIMITS) == ok(scenario.invoke())


def test_open_policy_and_version_pass_under_limits() -> None:
    assert ok(call("contract-version"), *LIMITS) == f'"{CONTRACT}"'
    assert opened(ok(open_policy('{"max_retries": 3}'), *LIMITS)).policy["max-retries"] == "3"


def assert_trapped(run: Run, trap: str) -> None:
    assert run.returncode != 0, run
    assert "wasm trap" in run.stderr, run.stderr
    assert trap in run.stderr, run.stderr
    assert run.stdout == "", run.stdout


def huge_steps(n: int) -> str:
    step = S("t", "r", FAIL, "")
    return "[" + ", ".join([step.wave()] * n) + "]"


def test_huge_steps_list_runs_out_of_fuel() -> None:
    # ~1400 steps (~110 KiB: a single argv string is capped at 128 KiB on Linux) cost ~13M fuel.
    invoke = call("simulate", wave_str("{}"), "1", huge_steps(1400))
    assert len(invoke.encode()) < 128 * 1024
    assert_trapped(wasmtime(invoke, *LIMITS), "all fuel consumed")
    # Unlimited, the same input is fine: the limit, not the input, stopped it.
    assert len(decisions(ok(invoke))) == 1400


def test_json_bomb_runs_out_of_memory() -> None:
    # 60000 array elements in a ~120 KiB result-json expand to ~4.5 MB of parsed JSON.
    bomb = "[" + ",".join(["0"] * 60_000) + "]"
    invoke = call("simulate", wave_str("{}"), "1", f"[{S('t', 'r', bomb, '').wave()}]")
    # The guest aborts on a failed allocation: an `unreachable` trap.
    assert_trapped(wasmtime(invoke, f"max-memory-size={MAX_MEMORY}"), "unreachable")
    assert decisions(ok(invoke)) == [(0, 0, "success")]


def test_largest_state_bound_costs_nothing_up_front() -> None:
    # Retry state grows with the live entries (a chunk of the table at a time), never with
    # max_state_entries: the largest bound replays in 3 MiB as the default does. (Before 0.5 the
    # state index for the bound was allocated on the first failure and trapped here.)
    steps = "[" + ", ".join(S("t", f"r{i}", FAIL, "").wave() for i in range(50)) + "]"
    largest = call("simulate", wave_str('{"max_state_entries": 1000000}'), "1", steps)
    default = call("simulate", wave_str("{}"), "1", steps)
    assert ok(largest, f"max-memory-size={MAX_MEMORY}") == ok(default)
    # Without `init` the instance knows no memory cap, so opening it is no error either.
    got = opened(ok(open_policy('{"max_state_entries": 1000000}'), f"max-memory-size={MAX_MEMORY}"))
    assert got.warnings == []


def test_memory_limit_that_stops_growth_traps_the_first_step() -> None:
    # 17 pages (the 1 MiB stack) fit, the first page more does not: a trap, not a hang.
    steps = "[" + S("t", "r", FAIL, "").wave() + "]"
    invoke = call("simulate", wave_str("{}"), "1", steps)
    assert_trapped(wasmtime(invoke, "max-memory-size=1150000"), "unreachable")
    assert decisions(ok(invoke, "max-memory-size=1179648"))[0][1:] == (1, "retry")


def test_memory_limit_below_the_initial_stack_fails_at_instantiation() -> None:
    run = wasmtime(call("contract-version"), "max-memory-size=1000000")
    assert run.returncode != 0
    assert "exceeds memory limits" in run.stderr


# --- the examples in docs/cli.md ----------------------------------------------------------------


def readme_examples() -> list[tuple[str, list[str]]]:
    """``(command, output lines)`` of every ``$ wasmtime ...`` in ``docs/cli.md``."""
    section = (REPO / "docs" / "cli.md").read_text()
    examples: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.DOTALL):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            assert lines[i].startswith("$ "), lines[i]
            command = [lines[i][2:]]
            while not command[-1].endswith("retry_engine.wasm"):
                i += 1
                command.append(lines[i])
            i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            examples.append(("\n".join(command), output))
    return examples


README_EXAMPLES = readme_examples()


@pytest.mark.parametrize(
    ("command", "output"), README_EXAMPLES, ids=[str(i) for i in range(len(README_EXAMPLES))]
)
def test_cli_doc_example_output_is_real(command: str, output: list[str]) -> None:
    argv = shlex.split(command)
    assert argv[:2] == ["wasmtime", "run"]
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    proc = subprocess.run(
        [WASMTIME, *argv[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        check=False,
    )
    if output[0].startswith("Error:"):
        assert proc.returncode == 134, proc
        assert proc.stderr.startswith(output[0])
        assert output[-1] in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == output


def test_cli_doc_has_examples() -> None:
    assert len(README_EXAMPLES) >= 7
