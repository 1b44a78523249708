"""Fault injection through the real cpex PluginManager (issue 7, item 4).

Faults mid-sequence -- a guest that traps, a runaway guest stopped by fuel, a guest that hits
the memory cap -- never fail the tool call: the hook returns normally with
``retry_delay_ms == 0``, the cause is logged once (one ERROR record per fault), and the next
call runs on a rebuilt instance with the same configuration (its policy opened again) and no
live retry state: every key starts over (``test_fault_state.py``).

The guest faults come from the deliberately faulting build (``make wasm-faulty``,
``target/wasm/retry_engine_faulty.wasm``: the release component plus magic tool names in
``decide`` behind the ``fault-injection`` cargo feature).  A memory-limit hit is also produced
with the release build, by real state growth under a small cap.

Bad components fail at load with a clear error naming the file: truncated at any point, or a
component of another world (the right export name with the wrong function types, or missing
functions).  Corrupt files, foreign imports and components exporting nothing are covered in
``test_loader.py``; fuel exhaustion by a small budget in ``test_instance.py``/``test_plugin.py``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from cpex.framework import GlobalContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryEngineLoadError
from cpex_retry_with_backoff_wasm.keys import KEY_PART_MAX_CHARS
from cpex_retry_with_backoff_wasm.loader import EXPORTED_FUNCS

from .conftest import PLUGIN_NAME, direct_plugin, err, ok

ENGINE_LOGGER = "cpex_retry_with_backoff_wasm.sandbox"
NO_JITTER: dict[str, Any] = {"jitter": False}

#: magic tool name -> what the host logs as the cause
FAULTS = {
    "__fault_trap__": "wasm `unreachable` instruction executed",
    "__fault_spin__": "all fuel consumed by WebAssembly",
    "__fault_oom__": "wasm `unreachable` instruction executed",  # failed allocation aborts
}


async def post(manager: Any, tool: str, rid: str, result: Any) -> Any:
    payload = ToolPostInvokePayload(name=tool, result=result)
    res, _ = await manager.invoke_hook("tool_post_invoke", payload, GlobalContext(request_id=rid))
    assert res.continue_processing
    assert res.modified_payload is None
    return res


async def delay(manager: Any, tool: str, rid: str, result: Any) -> int:
    value: int = (await post(manager, tool, rid, result)).retry_delay_ms
    return value


def fault_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOGGER and r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------- faulty build
@pytest.mark.parametrize(("magic", "cause"), FAULTS.items(), ids=list(FAULTS))
async def test_guest_fault_mid_sequence_is_answered_logged_once_and_rebuilt(
    manager_factory: Any, faulty_wasm: Path, caplog: pytest.LogCaptureFixture, magic: str, cause: str
) -> None:
    manager = await manager_factory({**NO_JITTER, "wasm_path": str(faulty_wasm)})
    instance = manager.get_plugin(PLUGIN_NAME).instance
    assert instance.wasm_path == faulty_wasm
    assert [await delay(manager, "search", "r1", err()) for _ in range(2)] == [200, 400]
    assert await delay(manager, "fetch", "r2", err(503)) == 200

    with caplog.at_level(logging.DEBUG, logger=ENGINE_LOGGER):
        assert await delay(manager, magic, "r1", err()) == 0
    (record,) = fault_records(caplog)
    assert "decide failed" in record
    assert cause in record
    assert "\n" not in record
    assert instance.fault_count == 1

    # Rebuilt with the same configuration (jitter still off, the default budget of two) and no
    # live state: search/r1 starts over.
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=ENGINE_LOGGER):
        assert [await delay(manager, "search", "r1", err()) for _ in range(4)] == [200, 400, 0, 200]
        assert await delay(manager, "fetch", "r2", ok()) == 0
        assert await delay(manager, "fetch", "r2", err(503)) == 200
    assert fault_records(caplog) == []
    assert instance.fault_count == 1
    assert instance.state_count() == 2  # search/r1 after one failure, fetch/r2 after one


async def test_every_fault_in_a_burst_is_answered_and_logged_once(
    manager_factory: Any, faulty_wasm: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = await manager_factory({**NO_JITTER, "wasm_path": str(faulty_wasm)})
    instance = manager.get_plugin(PLUGIN_NAME).instance
    magics = list(FAULTS) * 10
    with caplog.at_level(logging.ERROR, logger=ENGINE_LOGGER):
        for i, magic in enumerate(magics):
            assert await delay(manager, "t", f"r{i}", err()) == 200
            assert await delay(manager, magic, f"r{i}", err(503)) == 0
            # Rebuilt, the policy opened again; the key starts over.
            assert [await delay(manager, "t", f"r{i}", err()) for _ in range(2)] == [200, 400]
    records = fault_records(caplog)
    assert len(records) == len(magics)
    for magic, record in zip(magics, records, strict=True):
        assert FAULTS[magic] in record
    assert instance.fault_count == len(magics)
    assert instance.rebuild_count == len(magics)


async def test_faulty_build_text_path_and_other_tools_behave_normally(
    manager_factory: Any, faulty_wasm: Path
) -> None:
    manager = await manager_factory(
        {"jitter": False, "check_text_content": True, "wasm_path": str(faulty_wasm)}
    )
    instance = manager.get_plugin(PLUGIN_NAME).instance
    marker = {"content": [{"type": "text", "text": '{"status_code": 503}'}], "isError": False}
    assert await delay(manager, "t", "r", marker) == 200
    assert await delay(manager, "__fault_trap__", "r", marker) == 0  # decide-text path
    assert await delay(manager, "__fault_trap__x", "r", marker) == 200  # only the exact name
    assert instance.fault_count == 1


# --------------------------------------------------------------------------- memory cap, release build
async def test_state_growth_stays_within_a_small_memory_cap_through_the_hook(
    manager_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Unique request ids as long as a key part crosses as itself (a longer one crosses as a
    fixed-size digest), under a 2 MiB cap: the engine bounds its state in bytes within the cap
    (issue 23: a quarter of what is left of a cap too small for its 4 MiB reserve), dropping the
    oldest entries,
    so state growth never runs the instance out of memory."""
    manager = await manager_factory(
        {**NO_JITTER, "wasm_max_memory_bytes": 2 * 1024 * 1024, "max_state_entries": 800}
    )
    plugin = manager.get_plugin(PLUGIN_NAME)
    long_rid = "x" * (KEY_PART_MAX_CHARS - 8)
    with caplog.at_level(logging.ERROR, logger=ENGINE_LOGGER):
        answers = [await delay(manager, "t", f"{i:08d}{long_rid}", err()) for i in range(4_000)]
    assert set(answers) == {200}
    assert plugin.instance.fault_count == 0
    assert not fault_records(caplog)
    assert 0 < plugin.policy.state_count() < 800, "the byte bound, not the entry bound, held"
    # The newest keys kept their state.
    assert await delay(manager, "t", f"{3_999:08d}{long_rid}", err()) == 400


# --------------------------------------------------------------------------- bad components at load
def truncated_copy(src: Path, dst: Path, keep: float) -> Path:
    """``src`` cut after ``keep`` bytes (>= 1), a fraction of it (< 1), or all but its last byte (< 0)."""
    data = src.read_bytes()
    cut = int(keep) if keep >= 1 else len(data) - 1 if keep < 0 else int(len(data) * keep)
    dst.write_bytes(data[:cut])
    return dst


@pytest.mark.parametrize(
    "keep", [8, 100, 1 / 3, 2 / 3, -1], ids=["header", "100B", "third", "two-thirds", "last-byte"]
)
async def test_truncated_component_is_a_clear_error_at_load(
    manager_factory: Any, wasm_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, keep: float
) -> None:
    path = truncated_copy(wasm_path, tmp_path / "truncated.wasm", keep)
    # The first 8 bytes alone are a valid, empty component: it exports nothing.
    message = r"truncated\.wasm (is not a valid WebAssembly component|is not for this host's contract)"
    with pytest.raises(RetryEngineLoadError, match=message):
        direct_plugin({"wasm_path": str(path)})
    with caplog.at_level(logging.ERROR):
        await manager_factory({"wasm_path": str(path)}, expect_plugins=0)
    assert any(re.search(message, r.getMessage()) for r in caplog.records)


def wrong_world(funcs: tuple[str, ...], *, version: str = "0.5.0") -> str:
    """A component exporting the retry-engine name with ``funcs``, each typed ``() -> u32``."""
    exports = " ".join(f'(export "{name}" (func $f))' for name in funcs)
    return f"""
    (component
      (core module $m (func (export "f") (result i32) i32.const 7))
      (core instance $i (instantiate $m))
      (func $f (result u32) (canon lift (core func $i "f")))
      (instance $e {exports})
      (export "contextforge:retry/retry-engine@{version}" (instance $e))
    )
    """


@pytest.mark.parametrize(
    ("wat", "message"),
    [
        pytest.param(
            wrong_world(EXPORTED_FUNCS),
            r"wrong-world\.wasm.*is not \(u64, string, u64, u64\) -> u64",
        ),
        (wrong_world(tuple(f for f in EXPORTED_FUNCS if f != "decide")), r"has no function 'decide'"),
        (wrong_world(EXPORTED_FUNCS, version="0.6.0"), r"not for this host's contract.*retry-engine@0\.6\.0"),
    ],
    ids=["wrong-types", "missing-decide", "other-contract"],
)
async def test_component_of_another_world_is_a_clear_error_at_load(
    manager_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, wat: str, message: str
) -> None:
    path = tmp_path / "wrong-world.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(wat)))
    with pytest.raises(RetryEngineLoadError, match=message):
        direct_plugin({"wasm_path": str(path)})
    with caplog.at_level(logging.ERROR):
        await manager_factory({"wasm_path": str(path)}, expect_plugins=0)
    assert any("wrong-world.wasm" in r.getMessage() for r in caplog.records)


async def test_component_with_wrong_function_types_is_skipped_by_the_manager(
    manager_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "wrong-world.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(wrong_world(EXPORTED_FUNCS))))
    with caplog.at_level(logging.ERROR):
        await manager_factory({"wasm_path": str(path)}, expect_plugins=0)
    assert any("is not (u64, string, u64, u64) -> u64" in r.getMessage() for r in caplog.records)
