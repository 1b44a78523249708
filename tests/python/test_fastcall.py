"""The lean call paths (``fastcall.lean_decide``, ``lean_decide_held``) against the generic
``Func`` call."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from wasmtime import WasmtimeError

from cpex_retry_with_backoff_wasm import WasmRetryEngine, fastcall
from cpex_retry_with_backoff_wasm.fastcall import HeldFuel, lean_decide, lean_decide_held
from cpex_retry_with_backoff_wasm.sandbox import Sandbox
from cpex_retry_with_backoff_wasm.signals import pack_signals
from cpex_retry_with_backoff_wasm.wire import UNKNOWN_HANDLE

from .conftest import err, ok


def test_lean_path_is_active_on_the_tested_wasmtime() -> None:
    """A silent fallback to the generic path would cost ~4x per call: fail loudly instead."""
    assert fastcall.UNAVAILABLE is None
    engine = WasmRetryEngine({})
    assert engine.sandbox.lean is not None
    assert all(callable(call) for call in engine.sandbox.lean)


def test_lean_and_generic_calls_agree_step_by_step() -> None:
    """Two instances with the same seed, one driven lean and one generic, stay identical:
    ``decide`` with and without handles, and ``decide-held`` for keys that have one."""
    config = {"max_retries": 4, "backoff_base_ms": 7, "max_backoff_ms": 90, "retry_on_status": [500, 503]}
    lean = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    generic = WasmRetryEngine(config, seed=(3, 4), clock=lambda: 0)
    assert lean.sandbox.lean is not None
    decide, decide_held = lean.sandbox.lean
    rng = random.Random(20261128)
    statuses = [None, 200, 404, 500, 503, -1, 2**31 - 1]
    handles: dict[tuple[str, str], int] = {}
    held_calls = 0
    for _ in range(3000):
        tool = rng.choice(["a", "ab", "é✓", ""])
        rid = rng.choice(["", "b", "1", "x" * 300])
        signals = pack_signals(
            is_error=rng.random() < 0.5,
            has_structured=rng.random() < 0.5,
            structured_is_error=rng.random() < 0.2,
            status_code=rng.choice(statuses),
        )
        store = generic.sandbox.live_store()
        store.set_fuel(generic.fuel_per_call)
        want = generic.sandbox.funcs["decide"](store, tool + rid, len(tool), signals, 0)
        handle = handles.get((tool, rid), 0)
        got = decide_held(handle, signals) if handle else UNKNOWN_HANDLE
        if got == UNKNOWN_HANDLE:
            # Handle 1..4 per tool: a handle given to another key moves to it.
            handle = ["a", "ab", "é✓", ""].index(tool) + 1
            got = decide((tool + rid).encode(), len(tool), signals, handle)
            handles = {k: h for k, h in handles.items() if h != handle}
            handles[(tool, rid)] = handle
        else:
            held_calls += 1
        assert got == want, (tool, rid, signals)
    assert held_calls > 100, "the walk should exercise decide-held"


def test_decide_held_of_an_unknown_handle_changes_nothing() -> None:
    engine = WasmRetryEngine({"jitter": False})
    assert engine.sandbox.lean is not None
    decide, decide_held = engine.sandbox.lean
    fail = pack_signals(is_error=True)
    assert decide_held(1, fail) == UNKNOWN_HANDLE
    assert decide_held(0, fail) == UNKNOWN_HANDLE
    assert engine.state_count() == 0
    first = decide(b"toolrequest", 4, fail, 1)
    assert first & ((1 << 40) - 1) == 200
    second = decide_held(1, fail)
    assert second & ((1 << 40) - 1) == 400
    assert decide_held(2, fail) == UNKNOWN_HANDLE
    assert engine.state_count() == 1


def test_lean_call_raises_on_a_trap() -> None:
    engine = WasmRetryEngine({})
    assert engine.sandbox.store is not None
    starved = lean_decide(engine.sandbox.funcs["decide"], engine.sandbox.store, 1, HeldFuel(1))
    starved_held = lean_decide_held(engine.sandbox.funcs["decide-held"], engine.sandbox.store, 1, HeldFuel(1))
    assert starved is not None
    assert starved_held is not None
    with pytest.raises(WasmtimeError):
        starved(b"toolrequest", 4, 1, 0)
    with pytest.raises(WasmtimeError):
        starved_held(1, 1)


def test_lean_build_refuses_another_signature() -> None:
    engine = WasmRetryEngine({})
    assert engine.sandbox.store is not None
    with pytest.raises(TypeError, match=r"is not \(string, u32, u64, u32\) -> u64"):
        lean_decide(engine.sandbox.funcs["state-count"], engine.sandbox.store, 1000, HeldFuel(1000))
    with pytest.raises(TypeError, match=r"is not \(u32, u64\) -> u64"):
        lean_decide_held(engine.sandbox.funcs["decide"], engine.sandbox.store, 1000, HeldFuel(1000))


# ------------------------------------------------------- the lean path's private surface
# The lean path reaches into wasmtime-py's internals; when they change, the plugin must keep
# deciding through the public call, with one warning, rather than fail to load.


class Redeclared:
    """A wasmtime-py C function declared with other ``argtypes``/``restype`` (what the import
    guard reads) that still calls the real one (what the public call path uses)."""

    def __init__(self, real: Any, argtypes: list[Any], restype: Any) -> None:
        self.real, self.argtypes, self.restype = real, argtypes, restype

    def __call__(self, *args: Any) -> Any:
        return self.real(*args)


def declarations(**changes: tuple[list[Any] | None, Any]) -> SimpleNamespace:
    """wasmtime-py's declarations of the lean path's C functions, some replaced."""
    from wasmtime import _bindings

    names: dict[str, Any] = {}
    for name in fastcall.C_FUNCTIONS:
        real = getattr(_bindings, f"_{name}")
        argtypes, restype = changes.get(name, (None, None))
        names[f"_{name}"] = Redeclared(real, argtypes or list(real.argtypes), restype or real.restype)
    return SimpleNamespace(**names)


def check(capi: SimpleNamespace) -> None:
    from wasmtime import _bindings

    fastcall.check_c_signatures(fastcall._ffi_cffi, fastcall._lib, capi, _bindings.wasmtime_component_val_t)


def test_c_signatures_of_the_installed_wasmtime_py_match() -> None:
    check(declarations())


def _call_args(**replace: Any) -> list[Any]:
    from wasmtime import _bindings

    args = list(_bindings._wasmtime_component_func_call.argtypes)
    for index, ty in replace.items():
        args[int(index.removeprefix("a"))] = ty
    return args


class _OtherVal(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_uint8)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"wasmtime_component_func_call": (_call_args(a3=ctypes.c_uint32), None)},
            "wasmtime_component_func_call argument 3 is c_uint in this wasmtime-py, not size_t",
        ),
        (
            {"wasmtime_component_func_call": (_call_args(a3=ctypes.c_ssize_t), None)},
            "argument 3 is c_long in this wasmtime-py, not size_t",
        ),
        (
            {"wasmtime_component_func_call": (_call_args(a2=ctypes.POINTER(_OtherVal)), None)},
            "argument 2 is LP__OtherVal in this wasmtime-py, not lean_val_t *",
        ),
        (
            {"wasmtime_component_func_call": (_call_args(a1=ctypes.c_uint64), None)},
            "argument 1 is c_ulong in this wasmtime-py, not void *",
        ),
        (
            {"wasmtime_component_func_call": ([*_call_args(), ctypes.c_void_p], None)},
            "wasmtime_component_func_call takes 7 arguments in this wasmtime-py, not 6",
        ),
        (
            {"wasmtime_component_func_call": (None, ctypes.c_int)},
            "wasmtime_component_func_call returns c_int in this wasmtime-py, not void *",
        ),
        (
            {"wasmtime_context_set_fuel": ([ctypes.c_void_p, ctypes.c_int64], None)},
            "wasmtime_context_set_fuel argument 1 is c_long in this wasmtime-py, not uint64_t",
        ),
    ],
)
def test_another_c_signature_is_detected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(fastcall.SurfaceMismatch, match=re.escape(message)):
        check(declarations(**changes))


#: Run in a fresh interpreter: wasmtime-py declares ``wasmtime_component_func_call``'s
#: ``args_len`` as a 32-bit int (the public call still works: the declaration is a stand-in
#: that calls the real function), then the plugin is imported.
_REDECLARED_IMPORT = """
import ctypes, json, logging, sys
sys.path.insert(0, sys.argv[1])
from wasmtime import _bindings

class Redeclared:
    def __init__(self, real, argtypes):
        self.real, self.argtypes, self.restype = real, argtypes, real.restype
    def __call__(self, *args):
        return self.real(*args)

real = _bindings._wasmtime_component_func_call
argtypes = list(real.argtypes)
argtypes[3] = ctypes.c_uint32
_bindings._wasmtime_component_func_call = Redeclared(real, argtypes)

records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())

from cpex_retry_with_backoff_wasm import fastcall
from cpex_retry_with_backoff_wasm import WasmRetryEngine
from cpex_retry_with_backoff_wasm.wire import DELAY_MASK
from tests.python.conftest import err, ok

engines = [WasmRetryEngine({"jitter": False}) for _ in range(2)]
results = (err(), err(), err(), ok(), err())
delays = [engine.decide("search", "r1", r) & DELAY_MASK for engine in engines for r in results]
print(json.dumps({
    "unavailable": fastcall.UNAVAILABLE,
    "lean": [engine.sandbox.lean is not None for engine in engines],
    "delays": delays,
    "warnings": [m for m in records if "lean decide call is unavailable" in m],
}))
"""


def test_another_c_signature_at_import_falls_back_with_one_warning(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _REDECLARED_IMPORT, str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "argument 3 is c_uint in this wasmtime-py, not size_t" in seen["unavailable"]
    assert seen["lean"] == [False, False]
    assert seen["delays"] == [200, 400, 0, 0, 200] * 2
    (warning,) = seen["warnings"]
    assert "argument 3 is c_uint" in warning


class RenamedFunc:
    """A wasmtime-py ``Func`` whose private handle is no longer called ``_func`` (the lean
    path reads it); everything public works."""

    def __init__(self, real: Any) -> None:
        self._handle = real

    def __getattr__(self, name: str) -> Any:
        if name == "_func":
            raise AttributeError(f"'Func' object has no attribute {name!r}")
        return getattr(self._handle, name)

    def __call__(self, *args: Any) -> Any:
        return self._handle(*args)


async def test_renamed_private_attribute_falls_back_with_one_warning(
    manager_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from wasmtime.component import Instance

    from .test_plugin import delays

    real_get_func = Instance.get_func

    def get_func(self: Any, store: Any, index: Any) -> Any:
        func = real_get_func(self, store, index)
        return None if func is None else RenamedFunc(func)

    monkeypatch.setattr(Instance, "get_func", get_func)
    # Whatever this test does to the process-wide switches is undone afterwards.
    monkeypatch.setattr(fastcall, "UNAVAILABLE", None)
    monkeypatch.setattr(Sandbox, "_warned_slow_path", False)
    with caplog.at_level(logging.WARNING):
        # One manager at a time: cpex's PluginManager state is shared.
        first = await manager_factory({"jitter": False})
        assert await delays(first, "search", "r1", [err(), err(), err(), ok(), err()]) == [
            200,
            400,
            0,
            0,
            200,
        ]
        second = await manager_factory({"jitter": False, "max_retries": 3})
        assert await delays(second, "search", "r1", [err(), err(), err(), err()]) == [200, 400, 800, 0]
    assert fastcall.UNAVAILABLE is not None
    assert "preparing the lean call failed: AttributeError" in fastcall.UNAVAILABLE
    warnings = [r.getMessage() for r in caplog.records if "lean decide call is unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "'Func' object has no attribute '_func'" in warnings[0]
