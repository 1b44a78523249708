"""The on-disk compile cache is part of the trust boundary (issue 12 §7).

Deserializing a cache entry runs its native code, so a plugin pinned by ``wasm_sha256`` must
only ever run code compiled from the pinned bytes: an entry is used only when nobody but this
user can have written it (directory and entry owned by the effective uid, not group- or
world-writable) and its header names the sha256 of the ``.wasm`` it was compiled from.  The
tests run as root; other owners are simulated with ``os.chown``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cpex_retry_with_backoff_wasm.loader import (
    CACHE_DIR_NAME,
    KEY_COMPILE_CACHE,
    clear_memory_cache,
    load_component,
)
from cpex_retry_with_backoff_wasm.model import CONTRACT_VERSION, ConfigurationError

from .conftest import direct_plugin
from .test_loader import CompileSpy

#: A uid that is not the test's (the tests run as root, so chown to it works).
OTHER_UID = 4242
#: Giving a file to another user needs root.
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory (not yet created) and no in-process components.  Every refusal
    the loader logs (once per process) names the test's own paths, so none was logged yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clear_memory_cache()
    yield tmp_path / "xdg" / CACHE_DIR_NAME
    clear_memory_cache()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def other_build(wasm_path: Path, tmp_path: Path, version: str) -> Path:
    """Another well-formed build: the real component renamed to contract ``version`` (its
    export name and its ``contract-version`` literal)."""
    data = wasm_path.read_bytes()
    current = CONTRACT_VERSION.encode()
    assert len(version) == len(current)
    data = data.replace(b"retry-engine@" + current, b"retry-engine@" + version.encode())
    literal = re.compile(rb"(?<![\d.])" + re.escape(current) + rb"(?!\d)")
    assert len(literal.findall(data)) == 1, "the rename no longer finds the version literal"
    out = tmp_path / f"retry_engine-{version}.wasm"
    out.write_bytes(literal.sub(version.encode(), data))
    return out


def the_entry(cache: Path) -> Path:
    (entry,) = (p for p in cache.iterdir() if not p.name.startswith(".tmp-"))
    return entry


def reload_counts(wasm_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Load ``wasm_path`` afresh (no in-process component); how many times it was compiled."""
    clear_memory_cache()
    spy = CompileSpy(monkeypatch)
    load_component(wasm_path)
    return spy.compiles


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_created_private_and_used(wasm_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert reload_counts(wasm_path, monkeypatch) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    entry = the_entry(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert entry.name.startswith(sha256_of(wasm_path))
    assert reload_counts(wasm_path, monkeypatch) == 0


def test_swapped_entry_under_the_release_name_is_not_run(
    wasm_path: Path,
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another build's compiled artifact, well-formed, written under the release's cache
    name: a plugin pinned to the release must run the release, not the other build."""
    other = other_build(wasm_path, tmp_path, "0.5.7")
    assert load_component(other).interface.endswith("@0.5.7")
    other_entry = the_entry(cache)
    release_name = other_entry.name.replace(sha256_of(other), sha256_of(wasm_path))
    other_entry.rename(cache / release_name)
    clear_memory_cache()

    spy = CompileSpy(monkeypatch)
    plugin = direct_plugin({"wasm_sha256": sha256_of(wasm_path)})
    assert plugin.instance.contract_version == CONTRACT_VERSION
    assert spy.compiles == 1
    assert warnings_about(caplog, f"compiled from a .wasm with sha256 {sha256_of(other)}")
    # The swapped entry was replaced by the release's own compilation.
    assert reload_counts(wasm_path, monkeypatch) == 0
    assert load_component(wasm_path).interface.endswith(f"@{CONTRACT_VERSION}")


@pytest.mark.parametrize(
    "writable", [(0o770, "its group"), (0o707, "everyone"), (0o777, "its group and everyone")]
)
def test_directory_writable_by_others_is_refused_and_left_alone(
    wasm_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    writable: tuple[int, str],
) -> None:
    mode, who = writable
    assert reload_counts(wasm_path, monkeypatch) == 1
    entry = the_entry(cache)
    before = entry.stat().st_mtime_ns
    cache.chmod(mode)
    assert reload_counts(wasm_path, monkeypatch) == 1
    assert reload_counts(wasm_path, monkeypatch) == 1
    (warning,) = warnings_about(caplog, "not using the compile cache")
    assert f"{cache}: it is writable by {who} (mode {mode:o})" in warning
    assert entry.stat().st_mtime_ns == before, "nothing is written into a refused directory"


@needs_root
def test_directory_owned_by_another_user_is_refused(
    wasm_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert reload_counts(wasm_path, monkeypatch) == 1
    os.chown(cache, OTHER_UID, -1)
    assert reload_counts(wasm_path, monkeypatch) == 1
    (warning,) = warnings_about(caplog, "not using the compile cache")
    assert f"owned by uid {OTHER_UID}, not by this process's uid {os.geteuid()}" in warning


@pytest.mark.parametrize(
    "change", [pytest.param("other-owner", marks=needs_root), "group-writable", "world-writable"]
)
def test_entry_another_user_could_have_written_is_refused_and_replaced(
    wasm_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    change: str,
) -> None:
    assert reload_counts(wasm_path, monkeypatch) == 1
    entry = the_entry(cache)
    if change == "other-owner":
        os.chown(entry, OTHER_UID, -1)
    else:
        entry.chmod(0o620 if change == "group-writable" else 0o602)
    assert reload_counts(wasm_path, monkeypatch) == 1
    (warning,) = warnings_about(caplog, "not using the cache entry")
    assert str(entry) in warning
    # Rewritten by this user, private: used again.
    info = the_entry(cache).stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (os.geteuid(), 0o600)
    assert reload_counts(wasm_path, monkeypatch) == 0


def test_entry_that_is_a_symlink_is_refused(
    wasm_path: Path,
    tmp_path: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert reload_counts(wasm_path, monkeypatch) == 1
    entry = the_entry(cache)
    elsewhere = tmp_path / "elsewhere.cwasm"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert reload_counts(wasm_path, monkeypatch) == 1
    assert warnings_about(caplog, f"not using the cache entry {entry}")


def test_cache_off_neither_reads_nor_writes(
    wasm_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = CompileSpy(monkeypatch)
    load_component(wasm_path, compile_cache=False)
    assert spy.compiles == 1
    assert not cache.exists()
    # A good entry exists and the process holds the component deserialized from it: with the
    # cache off, neither is used.
    assert reload_counts(wasm_path, monkeypatch) == 1
    clear_memory_cache()
    assert load_component(wasm_path).from_disk_cache
    spy = CompileSpy(monkeypatch)
    compiled = load_component(wasm_path, compile_cache=False)
    assert spy.compiles == 1
    assert not compiled.from_disk_cache
    # ... and from then on everyone shares the compiled one.
    assert load_component(wasm_path) is compiled
    assert load_component(wasm_path, compile_cache=False) is compiled


def test_plugin_setting_turns_the_cache_off(
    wasm_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = CompileSpy(monkeypatch)
    plugin = direct_plugin({KEY_COMPILE_CACHE: False})
    plugin.reload(wasm_path)
    assert spy.compiles == 1
    assert plugin.instance.reload_count == 1
    assert not cache.exists()


@pytest.mark.parametrize("value", ["false", 0, None, [], "yes"])
def test_plugin_setting_must_be_a_bool(value: Any, cache: Path) -> None:
    expected = re.escape(f"{KEY_COMPILE_CACHE}: must be true or false, got {value!r}")
    with pytest.raises(ConfigurationError, match=expected):
        direct_plugin({KEY_COMPILE_CACHE: value})
