"""Contract-version checks at load, and hot reload with live retry state carried across.

Builds for another contract version are made from the real component by a same-length
rename of its contract version (``retry-engine@0.5.x`` -> ``@0.5.7`` or ``@0.6.0``, and the
``contract-version`` literal): the binary stays valid because no length changes, and the
fixture behaves exactly like the real engine except for the version it declares.  The real
release build of contract 0.2.1 (``WASM_0_2``) is refused like any other minor.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm import OpenPolicy, RetryEngineLoadError
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import WASM_0_2, VirtualClock, direct_plugin, err, ok
from .test_instance import decide, open_policy

NO_JITTER = {"jitter": False, "max_retries": 5}


def contract_variant(wasm_path: Path, tmp_path: Path, version: str) -> Path:
    """The real component declaring contract ``version`` instead of its own 0.5.x."""
    data = wasm_path.read_bytes()
    found = re.search(rb"retry-engine@(0\.5\.\d)", data)
    assert found, "the fixture rename no longer finds the export name"
    current = found.group(1)
    assert len(version) == len(current)
    data = data.replace(b"retry-engine@" + current, b"retry-engine@" + version.encode())
    # What is left is the `contract-version` literal, exactly once (not inside `@0.2.12`).
    literal = re.compile(rb"(?<![\d.])" + re.escape(current) + rb"(?!\d)")
    assert len(literal.findall(data)) == 1, "the fixture rename no longer finds the version literal"
    data = literal.sub(version.encode(), data)
    out = tmp_path / f"retry_engine-{version}.wasm"
    out.write_bytes(data)
    return out


def other_minor(wasm_path: Path, tmp_path: Path, which: str) -> tuple[Path, str]:
    """A build of another contract minor and the version it declares: the real component
    renamed to 0.6.0, or the real 0.2.1 release."""
    if which == "0.2.1":
        return WASM_0_2, "0.2.1"
    return contract_variant(wasm_path, tmp_path, which), which


OTHER_MINORS = ["0.6.0", "0.2.1"]


def delays(policy: OpenPolicy, tool: str, rid: str, results: list[Any]) -> list[int]:
    return [decide(policy, tool, rid, r) & DELAY_MASK for r in results]


def test_newer_patch_of_the_contract_loads(wasm_path: Path, tmp_path: Path) -> None:
    patch = contract_variant(wasm_path, tmp_path, "0.5.7")
    policy = open_policy({**NO_JITTER, "wasm_path": str(patch)})
    assert policy.instance.contract_version == "0.5.7"
    assert delays(policy, "t", "r", [err(), err()]) == [200, 400]


@pytest.mark.parametrize("which", OTHER_MINORS)
def test_incompatible_contract_is_refused_naming_both_versions(
    wasm_path: Path, tmp_path: Path, which: str
) -> None:
    other, version = other_minor(wasm_path, tmp_path, which)
    with pytest.raises(RetryEngineLoadError) as info:
        open_policy({"wasm_path": str(other)})
    message = str(info.value)
    assert "contextforge:retry/retry-engine@0.5.x" in message, "the version the host needs"
    assert f"contextforge:retry/retry-engine@{version}" in message, "the version the build has"
    assert str(other) in message


def test_reload_mid_backoff_keeps_every_budget(wasm_path: Path, tmp_path: Path) -> None:
    clock = VirtualClock()
    policy = open_policy(NO_JITTER, clock=clock, seed=(1, 2))
    instance = policy.instance
    for i in range(50):
        assert delays(policy, "t", f"r{i}", [err(), err()]) == [200, 400]
    clock.advance_ms(10)
    patch = contract_variant(wasm_path, tmp_path, "0.5.7")
    assert instance.reload(patch) == 50
    assert instance.contract_version == "0.5.7"
    assert instance.wasm_path == patch
    assert policy.state_count() == 50
    # Every request continues its budget: third failure -> 800 ms, then 1600, 3200, exhausted.
    for i in range(50):
        assert delays(policy, "t", f"r{i}", [err(), err(), err(), err()]) == [800, 1600, 3200, 0]


def test_reload_keeps_ttl_ages(wasm_path: Path) -> None:
    clock = VirtualClock()
    policy = open_policy({**NO_JITTER, "state_ttl_ms": 1000}, clock=clock, seed=(1, 2))
    delays(policy, "t", "old", [err()])
    clock.advance_ms(600)
    delays(policy, "t", "new", [err()])
    policy.instance.reload(wasm_path)
    clock.advance_ms(401)  # "old" is now 1001 ms past its failure, "new" 401 ms
    assert delays(policy, "t", "old", [err()]) == [200], "expired entry survived the reload"
    assert delays(policy, "t", "new", [err()]) == [400], "live entry lost its budget"


@pytest.mark.parametrize("which", OTHER_MINORS)
def test_reload_to_incompatible_build_is_refused_and_old_instance_serves(
    wasm_path: Path, tmp_path: Path, which: str
) -> None:
    policy = open_policy(NO_JITTER, seed=(1, 2))
    instance = policy.instance
    assert delays(policy, "t", "r", [err()]) == [200]
    other, version = other_minor(wasm_path, tmp_path, which)
    with pytest.raises(RetryEngineLoadError) as info:
        instance.reload(other)
    message = str(info.value)
    assert "retry-engine@0.5.x" in message, "the version the host needs"
    assert f"retry-engine@{version}" in message, "the version the build has"
    assert instance.wasm_path == wasm_path
    assert instance.contract_version == "0.5.0"
    assert instance.reload_count == 0
    assert delays(policy, "t", "r", [err(), ok()]) == [400, 0]


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"not wasm", "not a valid WebAssembly component"), (None, "cannot read component")],
)
def test_reload_to_missing_or_corrupt_file_is_refused(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    policy = open_policy(NO_JITTER, seed=(1, 2))
    delays(policy, "t", "r", [err()])
    path = tmp_path / "broken.wasm"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RetryEngineLoadError, match=why):
        policy.instance.reload(path)
    assert delays(policy, "t", "r", [err()]) == [400]


def test_reload_refused_when_new_build_rejects_the_state(
    wasm_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = open_policy(NO_JITTER, seed=(1, 2))
    delays(policy, "t", "r", [err()])
    old_funcs = policy.instance.sandbox.funcs
    real = old_funcs["export-state"]
    # The old instance hands over a document the new one cannot read (a future format).
    monkeypatch.setitem(
        old_funcs, "export-state", lambda store: '{"format": 9, "policies": [], "entries": [], "budgets": []}'
    )
    with pytest.raises(RetryEngineLoadError, match="state format 9 is not supported"):
        policy.instance.reload(wasm_path)
    monkeypatch.setitem(old_funcs, "export-state", real)
    assert delays(policy, "t", "r", [err()]) == [400]


def test_plugin_reload_under_load_through_the_plugin(caplog: pytest.LogCaptureFixture) -> None:
    plugin = direct_plugin(NO_JITTER, name="RetryWithBackoffWasmPlugin", seed=(1, 2))
    policy = plugin.policy
    delays(policy, "search", "req-1", [err()])
    with caplog.at_level(logging.WARNING):
        assert plugin.reload() == 1
    assert "1 retry-state entries carried over" in caplog.text
    assert delays(policy, "search", "req-1", [err()]) == [400]


def test_reload_while_threads_decide_loses_no_budget(wasm_path: Path, tmp_path: Path) -> None:
    """Threads keep driving failure sequences while the main thread reloads twice: every key
    sees exactly the uninterrupted backoff sequence.  One sequence is paused halfway on
    purpose until the first reload is done, so at least one budget provably crosses a reload
    whatever the scheduler does; the others race the reloads freely."""
    policy = open_policy(NO_JITTER, seed=(1, 2))
    instance = policy.instance
    patch = contract_variant(wasm_path, tmp_path, "0.5.7")
    halfway = threading.Event()
    resume = threading.Event()
    stop = threading.Event()
    seen: dict[str, list[int]] = {}

    def paused_worker() -> None:
        first = delays(policy, "t", "paused", [err()] * 3)
        halfway.set()
        assert resume.wait(timeout=30)
        seen["paused"] = first + delays(policy, "t", "paused", [err()] * 3)

    def worker(n: int) -> None:
        k = 0
        while not stop.is_set() or k < 10:
            rid = f"w{n}-k{k}"
            seen[rid] = delays(policy, "t", rid, [err()] * 6)
            k += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=paused_worker))
    for t in threads:
        t.start()
    assert halfway.wait(timeout=30)
    instance.reload(patch)
    resume.set()
    instance.reload(wasm_path)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert instance.reload_count == 2
    assert seen["paused"] == [200, 400, 800, 1600, 3200, 0], "the paused budget did not survive"
    assert all(s == [200, 400, 800, 1600, 3200, 0] for s in seen.values()), seen
    assert instance.fault_count == 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wasm_sha256_pin_accepts_the_exact_artifact(wasm_path: Path) -> None:
    policy = open_policy({**NO_JITTER, "wasm_sha256": sha256_of(wasm_path).upper()})
    assert policy.instance.pinned_sha256 == sha256_of(wasm_path)
    assert delays(policy, "t", "r", [err()]) == [200]


def test_wasm_sha256_mismatch_loads_nothing(wasm_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpex_retry_with_backoff_wasm import loader

    compiled: list[bytes] = []
    monkeypatch.setattr(loader, "Component", lambda engine, data: compiled.append(data))
    monkeypatch.setattr(loader, "_components", {})
    monkeypatch.setattr(loader, "_read_cached", lambda *a: pytest.fail("the cache was read"))
    wrong = "0" * 64
    with pytest.raises(
        RetryEngineLoadError, match=f"has sha256 {sha256_of(wasm_path)}, but wasm_sha256 pins {wrong}"
    ):
        open_policy({"wasm_sha256": wrong})
    assert compiled == []


@pytest.mark.parametrize("pin", ["abc", 42, "g" * 64])
def test_wasm_sha256_must_be_hex(pin: Any) -> None:
    with pytest.raises(ValueError, match="wasm_sha256: must be 64 hexadecimal digits"):
        open_policy({"wasm_sha256": pin})


def test_reload_honours_the_pin_until_a_new_one_is_given(wasm_path: Path, tmp_path: Path) -> None:
    policy = open_policy({**NO_JITTER, "wasm_sha256": sha256_of(wasm_path)}, seed=(1, 2))
    instance = policy.instance
    delays(policy, "t", "r", [err()])
    patch = contract_variant(wasm_path, tmp_path, "0.5.7")
    with pytest.raises(RetryEngineLoadError, match="but wasm_sha256 pins"):
        instance.reload(patch)
    assert instance.reload(patch, wasm_sha256=sha256_of(patch)) == 1
    assert instance.pinned_sha256 == sha256_of(patch)
    assert delays(policy, "t", "r", [err()]) == [400]
