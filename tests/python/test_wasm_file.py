"""``wasm_path`` names a regular file of bounded size, or the load fails at once (issue 12 §6).

A FIFO without a writer used to block construction and ``reload()`` in ``open``; ``/dev/zero``
was read until ``MemoryError``.  Each case here must fail fast with a ``RetryEngineLoadError``
naming the path and the reason; the FIFO cases run under a time guard so that a regression
fails instead of hanging the suite.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload

from cpex_retry_with_backoff_wasm import RetryWithBackoffPlugin
from cpex_retry_with_backoff_wasm.loader import MAX_WASM_BYTES, load_component, read_wasm_file
from cpex_retry_with_backoff_wasm.model import RetryEngineLoadError

from .conftest import direct_plugin, err

#: Far longer than refusing a FIFO takes; short enough that a hang fails the test quickly.
GUARD_SECONDS = 20.0


def finishes(call: Callable[[], Any], *, unblock: Callable[[], None]) -> BaseException | None:
    """Run ``call`` in a thread; fail if it has not returned within the guard (then
    ``unblock`` lets the stuck thread go).  Returns what it raised, if anything."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(GUARD_SECONDS)
    if worker.is_alive():
        unblock()
        worker.join(GUARD_SECONDS)
        pytest.fail(f"still blocked after {GUARD_SECONDS} s")
    return outcome[0]


async def delay(plugin: RetryWithBackoffPlugin, result: Any) -> int:
    payload = ToolPostInvokePayload(name="tool", result=result)
    context = PluginContext(global_context=GlobalContext(request_id="r1"))
    return int((await plugin.tool_post_invoke(payload, context)).retry_delay_ms)


@pytest.fixture
def fifo(tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """A named pipe nobody writes to, and how to release a reader stuck opening it."""
    path = tmp_path / "pipe.wasm"
    os.mkfifo(path)

    def unblock() -> None:
        # Opening read-write never blocks on Linux; closing it again gives the reader EOF.
        os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))

    return path, unblock


def test_fifo_is_refused_at_once(fifo: tuple[Path, Callable[[], None]]) -> None:
    path, unblock = fifo
    raised = finishes(lambda: load_component(path), unblock=unblock)
    assert isinstance(raised, RetryEngineLoadError)
    assert f"cannot read component {path}: it is a FIFO (named pipe), not a regular file" in str(raised)


def test_fifo_as_wasm_path_fails_construction_at_once(fifo: tuple[Path, Callable[[], None]]) -> None:
    path, unblock = fifo
    raised = finishes(lambda: direct_plugin({"wasm_path": str(path)}), unblock=unblock)
    assert isinstance(raised, RetryEngineLoadError)
    assert str(path) in str(raised)
    assert "FIFO" in str(raised)


async def test_reload_to_a_fifo_fails_at_once_and_the_old_instance_serves(
    fifo: tuple[Path, Callable[[], None]],
) -> None:
    path, unblock = fifo
    plugin = direct_plugin({"jitter": False})
    assert await delay(plugin, err()) == 200
    raised = finishes(lambda: plugin.reload(str(path)), unblock=unblock)
    assert isinstance(raised, RetryEngineLoadError)
    assert "FIFO" in str(raised)
    assert plugin.instance.reload_count == 0
    assert await delay(plugin, err()) == 400


def test_device_as_wasm_path_fails_construction() -> None:
    with pytest.raises(RetryEngineLoadError, match="/dev/zero: it is a character device"):
        direct_plugin({"wasm_path": "/dev/zero"})


async def test_a_fifo_dropped_at_a_served_wasm_path_is_refused_at_once_and_the_build_stays(
    wasm_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin object attaching to the instance of its ``wasm_path`` first checks whether a new
    build was dropped there: a FIFO put in its place is read by the loader's bounded read too,
    so the construction neither blocks nor fails, and the running build keeps serving."""
    served = tmp_path / "served.wasm"
    shutil.copyfile(wasm_path, served)
    config = {"jitter": False, "wasm_path": str(served)}
    first = direct_plugin(config)
    assert await delay(first, err()) == 200
    served.unlink()
    os.mkfifo(served)

    def unblock() -> None:
        os.close(os.open(served, os.O_RDWR | os.O_NONBLOCK))

    built: list[RetryWithBackoffPlugin] = []
    with caplog.at_level(logging.WARNING, logger="cpex_retry_with_backoff_wasm"):
        raised = finishes(lambda: built.append(direct_plugin(config)), unblock=unblock)
    assert raised is None
    (later,) = built
    assert later.instance is first.instance
    warnings = [r.getMessage() for r in caplog.records if "changed but is not loaded" in r.getMessage()]
    assert len(warnings) == 1
    assert "FIFO" in warnings[0]
    assert await delay(later, err()) == 400, "the running build and its state"


def test_dev_zero_is_refused_without_reading_it() -> None:
    expected = r"cannot read component /dev/zero: it is a character device"
    with pytest.raises(RetryEngineLoadError, match=expected):
        load_component("/dev/zero")


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RetryEngineLoadError, match=r"it is a directory, not a regular file"):
        load_component(tmp_path)


def test_oversize_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.wasm"
    with path.open("wb") as out:
        out.truncate(MAX_WASM_BYTES + 1)  # sparse: nothing is written or read
    expected = rf"cannot read component .*huge\.wasm: it is larger than {MAX_WASM_BYTES} bytes"
    with pytest.raises(RetryEngineLoadError, match=expected):
        load_component(path)


def test_file_of_exactly_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bound.wasm"
    with path.open("wb") as out:
        out.truncate(MAX_WASM_BYTES)
    assert len(read_wasm_file(path)) == MAX_WASM_BYTES


async def test_symlink_to_a_good_file_loads(wasm_path: Path, tmp_path: Path) -> None:
    """Operators point ``wasm_path`` at a release through a symlink: the link is followed
    and its target checked."""
    link = tmp_path / "current.wasm"
    link.symlink_to(wasm_path)
    plugin = direct_plugin({"wasm_path": str(link), "jitter": False})
    assert plugin.instance.wasm_path == link
    assert await delay(plugin, err()) == 200


def test_symlink_to_a_fifo_is_refused(fifo: tuple[Path, Callable[[], None]], tmp_path: Path) -> None:
    path, unblock = fifo
    link = tmp_path / "link.wasm"
    link.symlink_to(path)
    raised = finishes(lambda: load_component(link), unblock=unblock)
    assert isinstance(raised, RetryEngineLoadError)
    assert "FIFO" in str(raised)
    assert str(link) in str(raised)


def test_dangling_symlink_names_the_path(tmp_path: Path) -> None:
    link = tmp_path / "dangling.wasm"
    link.symlink_to(tmp_path / "gone.wasm")
    with pytest.raises(RetryEngineLoadError, match=r"cannot read component .*dangling\.wasm"):
        load_component(link)
