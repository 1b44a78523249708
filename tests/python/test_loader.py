"""loader.py: the process Engine, loading the component, and the compiled-component cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from cpex_retry_with_backoff_wasm import loader
from cpex_retry_with_backoff_wasm.loader import (
    CACHE_DIR_NAME,
    EXPORTED_FUNCS,
    cache_dir,
    clear_memory_cache,
    get_engine,
    load_component,
    production_linker,
    wasmtime_build_id,
)
from cpex_retry_with_backoff_wasm.model import RetryEngineLoadError

from .conftest import REPO, WASM_0_2, direct_plugin


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty disk cache and no in-process compiled components."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clear_memory_cache()
    yield tmp_path / "xdg" / CACHE_DIR_NAME
    clear_memory_cache()


class CompileSpy:
    """Stands in for ``wasmtime.component.Component`` and counts compilations."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, allow_compile: bool = True) -> None:
        real = loader.Component
        spy = self

        class Spy:
            deserialize = staticmethod(real.deserialize)

            def __new__(cls, engine: Any, data: Any) -> Any:
                spy.compiles += 1
                if not allow_compile:
                    raise AssertionError("compiled although a cached artifact exists")
                return real(engine, data)

        self.compiles = 0
        monkeypatch.setattr(loader, "Component", Spy)


def test_engine_and_linker_are_process_wide() -> None:
    assert get_engine() is get_engine()
    assert production_linker() is production_linker()


def test_imports_are_exactly_clock_and_seed(wasm_path: Path) -> None:
    loaded = load_component(wasm_path)
    assert {name.rsplit("@", 1)[0]: funcs for name, funcs in loaded.imports.items()} == {
        "wasi:clocks/monotonic-clock": frozenset({"now"}),
        "wasi:random/insecure-seed": frozenset({"insecure-seed"}),
    }
    assert loaded.interface.startswith("contextforge:retry/retry-engine@0.5.")


def test_same_content_is_compiled_once_per_process(wasm_path: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.wasm"
    copy.write_bytes(wasm_path.read_bytes())
    assert load_component(copy) is load_component(wasm_path)


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / CACHE_DIR_NAME
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / CACHE_DIR_NAME


def test_second_start_deserializes_instead_of_compiling(
    wasm_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = CompileSpy(monkeypatch)
    load_component(wasm_path)
    assert first.compiles == 1
    files = sorted(p.name for p in fresh_cache.iterdir())
    assert len(files) == 1
    assert files[0].endswith(f"-wasmtime-{wasmtime_build_id()}-fuel-sync.cwasm")
    assert not any(name.startswith(".tmp-") for name in files)

    clear_memory_cache()
    CompileSpy(monkeypatch, allow_compile=False)
    load_component(wasm_path)


@pytest.mark.parametrize("damage", ["flip-payload-byte", "truncate", "bad-magic", "empty"])
def test_damaged_cache_file_is_recompiled(
    wasm_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    load_component(wasm_path)
    (cached,) = fresh_cache.iterdir()
    blob = bytearray(cached.read_bytes())
    if damage == "flip-payload-byte":
        blob[-100] ^= 0xFF
    elif damage == "truncate":
        del blob[len(blob) // 2 :]
    elif damage == "bad-magic":
        blob[0:4] = b"XXXX"
    else:
        blob = bytearray()
    cached.write_bytes(bytes(blob))
    clear_memory_cache()

    spy = CompileSpy(monkeypatch)
    loaded = load_component(wasm_path)
    assert spy.compiles == 1
    assert loaded.interface.startswith("contextforge:retry/retry-engine@")
    # ... and the cache file was rewritten whole
    clear_memory_cache()
    CompileSpy(monkeypatch, allow_compile=False)
    load_component(wasm_path)


def test_unusable_cache_dir_falls_back_to_compiling(
    wasm_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    clear_memory_cache()
    try:
        spy = CompileSpy(monkeypatch)
        assert load_component(wasm_path).interface.startswith("contextforge:retry/")
        assert spy.compiles == 1
    finally:
        clear_memory_cache()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "retry_engine.wasm"
    with pytest.raises(RetryEngineLoadError, match=r"cannot read component .*nope/retry_engine\.wasm"):
        load_component(missing)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"", "empty file"),
        (b"this is not wasm", "text"),
        (bytes(wasmtime.wat2wasm("(module)")), "core module"),
        (b"\x00asm\r\x00\x01\x00\xff\xff", "garbage after a component header"),
    ],
)
def test_corrupt_file_names_the_path(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "corrupt.wasm"
    path.write_bytes(content)
    with pytest.raises(RetryEngineLoadError, match=r"corrupt\.wasm is not a valid WebAssembly component"):
        load_component(path)


def test_truncated_engine_names_the_path(wasm_path: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.wasm"
    path.write_bytes(wasm_path.read_bytes()[:5000])
    with pytest.raises(RetryEngineLoadError, match=r"truncated\.wasm is not a valid WebAssembly component"):
        load_component(path)


def test_component_that_is_not_a_retry_engine(tmp_path: Path) -> None:
    path = tmp_path / "empty-component.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm("(component)")))
    expected = (
        r"empty-component\.wasm is not for this host's contract: "
        r"the host needs contextforge:retry/retry-engine@0\.5\.x, it exports nothing"
    )
    with pytest.raises(RetryEngineLoadError, match=expected):
        load_component(path)


def test_component_with_foreign_imports_is_rejected(tmp_path: Path) -> None:
    wat = """
    (component
      (import "wasi:cli/environment@0.2.0" (instance))
      (instance $e)
      (export "contextforge:retry/retry-engine@0.5.0" (instance $e))
    )
    """
    path = tmp_path / "foreign.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(wat)))
    with pytest.raises(RetryEngineLoadError, match=r"foreign\.wasm imports wasi:cli/environment@0\.2\.0"):
        load_component(path)


def test_wasmtime_py_api_mismatch_is_a_load_error_naming_version_and_cause(
    wasm_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What wasmtime-py 39-48 do to the loader, simulated through their public API: their
    ``ComponentType.imports()`` gives the types themselves (no ``ComponentExtern`` with a
    ``.ty``).  The plugin's construction fails with a load error naming the wasmtime-py in use
    and the cause, not with a bare ``AttributeError``."""
    from importlib.metadata import version

    from wasmtime.component import ComponentType

    real_imports = ComponentType.imports

    def old_api(self: Any, engine: Any) -> dict[str, Any]:
        return {name: extern.ty for name, extern in real_imports(self, engine).items()}

    monkeypatch.setattr(ComponentType, "imports", old_api)
    expected = (
        rf"cannot load .*retry_engine\.wasm with wasmtime-py {re.escape(version('wasmtime'))} "
        r"\(this plugin needs wasmtime.*\): "
        r"AttributeError: 'ComponentInstanceType' object has no attribute 'ty'"
    )
    with pytest.raises(RetryEngineLoadError, match=expected):
        direct_plugin({})


# --------------------------------------------------------------------------- other contracts
def test_a_0_2_build_is_refused_naming_both_versions() -> None:
    """Since 0.5 the host loads only builds of its own contract minor: one instance holds every
    policy of the process, which older builds cannot."""
    expected = (
        r"retry_engine-0\.2\.1\.wasm is not for this host's contract: "
        r"the host needs contextforge:retry/retry-engine@0\.5\.x, "
        r"it exports contextforge:retry/retry-engine@0\.2\.1"
    )
    with pytest.raises(RetryEngineLoadError, match=expected):
        load_component(WASM_0_2)


@pytest.mark.parametrize("version", ["0.4.0", "0.6.0", "1.0.0"])
def test_an_interface_of_another_minor_is_refused_naming_it(tmp_path: Path, version: str) -> None:
    wat = f"""
    (component
      (instance $e)
      (export "contextforge:retry/retry-engine@{version}" (instance $e))
    )
    """
    path = tmp_path / "other.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(wat)))
    expected = rf"needs contextforge:retry/retry-engine@0\.5\.x, it exports .*@{re.escape(version)}$"
    with pytest.raises(RetryEngineLoadError, match=expected):
        load_component(path)


def test_an_interface_without_the_hosts_functions_is_refused(tmp_path: Path) -> None:
    wat = """
    (component
      (instance $e)
      (export "contextforge:retry/retry-engine@0.5.0" (instance $e))
    )
    """
    path = tmp_path / "hollow.wasm"
    path.write_bytes(bytes(wasmtime.wat2wasm(wat)))
    with pytest.raises(RetryEngineLoadError, match=r"hollow\.wasm: .*@0\.5\.0 has no function 'init'"):
        load_component(path)


def test_the_functions_the_host_calls_are_the_contracts() -> None:
    """``EXPORTED_FUNCS`` against ``wit/retry-engine.wit``: every function the host resolves is
    declared there, and the only one it does not call is the CLI's ``simulate``."""
    wit = (REPO / "wit" / "retry-engine.wit").read_text(encoding="utf-8")
    declared = set(re.findall(r"^    ([a-z][a-z-]*): func\(", wit, re.M))
    assert set(EXPORTED_FUNCS) <= declared
    assert declared - set(EXPORTED_FUNCS) == {"simulate"}
    assert len(set(EXPORTED_FUNCS)) == len(EXPORTED_FUNCS)
