"""Contract-version checks at load, and hot reload with live retry state carried across.

Builds for another contract version are made from the real component by a same-length
rename of its contract version (``retry-engine@0.4.x`` -> ``@0.4.7`` or ``@0.5.0``, and the
``contract-version`` literal): the binary stays valid because no length changes, and the
fixture behaves exactly like the real engine except for the version it declares.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import PluginConfig

from cpex_retry_with_backoff_wasm import RetryEngineLoadError, RetryWithBackoffPlugin, WasmRetryEngine
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK

from .conftest import VirtualClock, err, ok

NO_JITTER = {"jitter": False, "max_retries": 5}


def contract_variant(wasm_path: Path, tmp_path: Path, version: str) -> Path:
    """The real component declaring contract ``version`` instead of its own 0.4.x."""
    data = wasm_path.read_bytes()
    found = re.search(rb"retry-engine@(0\.4\.\d)", data)
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


def delays(engine: WasmRetryEngine, tool: str, rid: str, results: list[Any]) -> list[int]:
    return [engine.decide(tool, rid, r) & DELAY_MASK for r in results]


def test_newer_patch_of_the_contract_loads(wasm_path: Path, tmp_path: Path) -> None:
    patch = contract_variant(wasm_path, tmp_path, "0.4.7")
    engine = WasmRetryEngine({**NO_JITTER, "wasm_path": str(patch)})
    assert engine.contract_version == "0.4.7"
    assert delays(engine, "t", "r", [err(), err()]) == [200, 400]


def test_incompatible_contract_is_refused_naming_both_versions(wasm_path: Path, tmp_path: Path) -> None:
    other = contract_variant(wasm_path, tmp_path, "0.5.0")
    with pytest.raises(RetryEngineLoadError) as info:
        WasmRetryEngine({"wasm_path": str(other)})
    message = str(info.value)
    assert "contextforge:retry/retry-engine@0.4.x" in message
    assert "contextforge:retry/retry-engine@0.5.0" in message


def test_reload_mid_backoff_keeps_every_budget(wasm_path: Path, tmp_path: Path) -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine(NO_JITTER, clock=clock, seed=(1, 2))
    for i in range(50):
        assert delays(engine, "t", f"r{i}", [err(), err()]) == [200, 400]
    clock.advance_ms(10)
    patch = contract_variant(wasm_path, tmp_path, "0.4.7")
    assert engine.reload(patch) == 50
    assert engine.contract_version == "0.4.7"
    assert engine.wasm_path == patch
    assert engine.state_count() == 50
    # Every request continues its budget: third failure -> 800 ms, then 1600, 3200, exhausted.
    for i in range(50):
        assert delays(engine, "t", f"r{i}", [err(), err(), err(), err()]) == [800, 1600, 3200, 0]


def test_reload_keeps_ttl_ages(wasm_path: Path) -> None:
    clock = VirtualClock()
    engine = WasmRetryEngine({**NO_JITTER, "state_ttl_ms": 1000}, clock=clock, seed=(1, 2))
    delays(engine, "t", "old", [err()])
    clock.advance_ms(600)
    delays(engine, "t", "new", [err()])
    engine.reload(wasm_path)
    clock.advance_ms(401)  # "old" is now 1001 ms past its failure, "new" 401 ms
    assert delays(engine, "t", "old", [err()]) == [200], "expired entry survived the reload"
    assert delays(engine, "t", "new", [err()]) == [400], "live entry lost its budget"


def test_reload_to_incompatible_build_is_refused_and_old_instance_serves(
    wasm_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = WasmRetryEngine(NO_JITTER, seed=(1, 2))
    assert delays(engine, "t", "r", [err()]) == [200]
    other = contract_variant(wasm_path, tmp_path, "0.5.0")
    with pytest.raises(RetryEngineLoadError, match=r"retry-engine@0\.4\.0"):
        engine.reload(other)
    assert engine.wasm_path == wasm_path
    assert engine.contract_version == "0.4.0"
    assert delays(engine, "t", "r", [err(), ok()]) == [400, 0]


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"not wasm", "not a valid WebAssembly component"), (None, "cannot read component")],
)
def test_reload_to_missing_or_corrupt_file_is_refused(
    tmp_path: Path, content: bytes | None, why: str
) -> None:
    engine = WasmRetryEngine(NO_JITTER, seed=(1, 2))
    delays(engine, "t", "r", [err()])
    path = tmp_path / "broken.wasm"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RetryEngineLoadError, match=why):
        engine.reload(path)
    assert delays(engine, "t", "r", [err()]) == [400]


def test_reload_refused_when_new_build_rejects_the_state(
    wasm_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = WasmRetryEngine(NO_JITTER, seed=(1, 2))
    delays(engine, "t", "r", [err()])
    old_funcs = engine.sandbox.funcs
    real = old_funcs["export-state"]
    # The old instance hands over a document the new one cannot read (a future format).
    monkeypatch.setitem(old_funcs, "export-state", lambda store: '{"format": 9, "entries": []}')
    with pytest.raises(RetryEngineLoadError, match="state format 9 is not supported"):
        engine.reload(wasm_path)
    monkeypatch.setitem(old_funcs, "export-state", real)
    assert delays(engine, "t", "r", [err()]) == [400]


def test_plugin_reload_under_load_through_the_plugin(
    wasm_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PluginConfig(
        name="RetryWithBackoffWasmPlugin",
        kind="cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin",
        hooks=["tool_post_invoke"],
        config=NO_JITTER,
    )
    plugin = RetryWithBackoffPlugin(config, seed=(1, 2))
    engine = plugin.engine
    delays(engine, "search", "req-1", [err()])
    with caplog.at_level(logging.WARNING):
        assert plugin.reload() == 1
    assert "1 retry-state entries carried over" in caplog.text
    assert delays(engine, "search", "req-1", [err()]) == [400]


def test_reload_while_threads_decide_loses_no_budget(wasm_path: Path, tmp_path: Path) -> None:
    """Threads keep driving failure sequences while the main thread reloads twice: every key
    sees exactly the uninterrupted backoff sequence.  One sequence is paused halfway on
    purpose until the first reload is done, so at least one budget provably crosses a reload
    whatever the scheduler does; the others race the reloads freely."""
    engine = WasmRetryEngine(NO_JITTER, seed=(1, 2))
    patch = contract_variant(wasm_path, tmp_path, "0.4.7")
    halfway = threading.Event()
    resume = threading.Event()
    stop = threading.Event()
    seen: dict[str, list[int]] = {}

    def paused_worker() -> None:
        first = delays(engine, "t", "paused", [err()] * 3)
        halfway.set()
        assert resume.wait(timeout=30)
        seen["paused"] = first + delays(engine, "t", "paused", [err()] * 3)

    def worker(n: int) -> None:
        k = 0
        while not stop.is_set() or k < 10:
            rid = f"w{n}-k{k}"
            seen[rid] = delays(engine, "t", rid, [err()] * 6)
            k += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=paused_worker))
    for t in threads:
        t.start()
    assert halfway.wait(timeout=30)
    engine.reload(patch)
    resume.set()
    engine.reload(wasm_path)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert engine.reload_count == 2
    assert seen["paused"] == [200, 400, 800, 1600, 3200, 0], "the paused budget did not survive"
    assert all(s == [200, 400, 800, 1600, 3200, 0] for s in seen.values()), seen
    assert engine.fault_count == 0


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wasm_sha256_pin_accepts_the_exact_artifact(wasm_path: Path) -> None:
    engine = WasmRetryEngine({**NO_JITTER, "wasm_sha256": sha256_of(wasm_path).upper()})
    assert engine.pinned_sha256 == sha256_of(wasm_path)
    assert delays(engine, "t", "r", [err()]) == [200]


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
        WasmRetryEngine({"wasm_sha256": wrong})
    assert compiled == []


@pytest.mark.parametrize("pin", ["abc", 42, "g" * 64])
def test_wasm_sha256_must_be_hex(pin: Any) -> None:
    with pytest.raises(ValueError, match="wasm_sha256: must be 64 hexadecimal digits"):
        WasmRetryEngine({"wasm_sha256": pin})


def test_reload_honours_the_pin_until_a_new_one_is_given(wasm_path: Path, tmp_path: Path) -> None:
    engine = WasmRetryEngine({**NO_JITTER, "wasm_sha256": sha256_of(wasm_path)}, seed=(1, 2))
    delays(engine, "t", "r", [err()])
    patch = contract_variant(wasm_path, tmp_path, "0.4.7")
    with pytest.raises(RetryEngineLoadError, match="but wasm_sha256 pins"):
        engine.reload(patch)
    assert engine.reload(patch, wasm_sha256=sha256_of(patch)) == 1
    assert engine.pinned_sha256 == sha256_of(patch)
    assert delays(engine, "t", "r", [err()]) == [400]
