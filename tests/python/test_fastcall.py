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

from cpex_retry_with_backoff_wasm import Instance, fastcall
from cpex_retry_with_backoff_wasm.fastcall import HeldFuel, lean_decide, lean_decide_held
from cpex_retry_with_backoff_wasm.handles import HeldKeys
from cpex_retry_with_backoff_wasm.keys import wire_key
from cpex_retry_with_backoff_wasm.sandbox import Sandbox
from cpex_retry_with_backoff_wasm.settings import HostSettings
from cpex_retry_with_backoff_wasm.signals import pack_signals
from cpex_retry_with_backoff_wasm.wire import (
    DELAY_MASK,
    HANDLE_MASK,
    HANDLE_SHIFT,
    NEED_TEXT,
    UNKNOWN_HANDLE,
    UNKNOWN_POLICY,
)

from .conftest import PLUGIN_NAME, direct_plugin, err, ok

FAIL = pack_signals(is_error=True)


def handle_of(decision: int) -> int:
    return (decision >> HANDLE_SHIFT) & HANDLE_MASK


def test_lean_path_is_active_on_the_tested_wasmtime() -> None:
    """A silent fallback to the generic path would cost ~4x per call: fail loudly instead."""
    assert fastcall.UNAVAILABLE is None
    plugin = direct_plugin({})
    assert plugin.instance.sandbox.lean is not None
    assert all(callable(call) for call in plugin.instance.sandbox.lean)


def test_lean_and_generic_calls_agree_step_by_step() -> None:
    """Two instances with the same seed and clock, one driven lean and one generic, stay
    identical word for word (handles included): ``decide`` by key, and ``decide-held`` for the
    keys the lean one's decisions said hold state (``HeldKeys``, as the host keeps them)."""
    config = {"max_retries": 4, "backoff_base_ms": 7, "max_backoff_ms": 90, "retry_on_status": [500, 503]}
    settings = HostSettings.read({})
    lean_instance = Instance(settings, seed=(3, 4), clock=lambda: 0)
    generic_instance = Instance(settings, seed=(3, 4), clock=lambda: 0)
    lean_policy = lean_instance.open("scope", config)
    generic_policy = generic_instance.open("scope", config)
    assert lean_policy.id == generic_policy.id, "a policy's id is its content's"
    assert lean_instance.sandbox.lean is not None
    decide, decide_held = lean_instance.sandbox.lean
    generic = generic_instance.sandbox
    rng = random.Random(20261128)
    statuses = [None, 200, 404, 500, 503, -1, 2**31 - 1]
    held = HeldKeys()
    held_calls = 0
    for _ in range(3000):
        parts = (
            rng.choice(["", "team-a", "é✓"]),  # tenant
            rng.choice(["", "srv"]),  # server
            rng.choice(["", "bob"]),  # identity
            rng.choice(["a", "ab", "é✓", ""]),  # tool
            rng.choice(["", "b", "1", "x" * 300]),  # request id
        )
        key, lengths = wire_key(*parts)
        signals = pack_signals(
            is_error=rng.random() < 0.5,
            has_structured=rng.random() < 0.5,
            structured_is_error=rng.random() < 0.2,
            status_code=rng.choice(statuses),
        )
        store = generic.live_store()
        store.set_fuel(generic_instance.fuel_per_call)
        want = generic.funcs["decide"](store, generic_policy.id, key.decode(), lengths, signals)
        handle = held.handles.get(parts, 0)
        got = decide_held(handle, signals) if handle else UNKNOWN_HANDLE
        if got == UNKNOWN_HANDLE:
            got = decide(lean_policy.id, key, lengths, signals)
        else:
            held_calls += 1
        assert got == want, (parts, signals)
        assert not got & (UNKNOWN_POLICY | UNKNOWN_HANDLE | NEED_TEXT)
        held.note(parts, got)
    assert held_calls > 100, "the walk should exercise decide-held"
    assert lean_instance.state_count() == generic_instance.state_count() > 0


def test_decide_held_of_an_unknown_handle_changes_nothing() -> None:
    plugin = direct_plugin({"jitter": False})
    assert plugin.instance.sandbox.lean is not None
    decide, decide_held = plugin.instance.sandbox.lean
    assert decide_held(1, FAIL) == UNKNOWN_HANDLE
    assert decide_held(0, FAIL) == UNKNOWN_HANDLE
    assert plugin.policy.state_count() == 0
    key, parts = wire_key("", "", "", "tool", "request")
    first = decide(plugin.policy.id, key, parts, FAIL)
    assert first & DELAY_MASK == 200
    handle = handle_of(first)
    assert handle, "a retry names its key by a handle"
    second = decide_held(handle, FAIL)
    assert second & DELAY_MASK == 400
    assert handle_of(second) == handle
    assert decide_held(handle % HANDLE_MASK + 1, FAIL) == UNKNOWN_HANDLE
    assert plugin.policy.state_count() == 1


def test_decide_under_an_unknown_policy_changes_nothing() -> None:
    plugin = direct_plugin({"jitter": False})
    assert plugin.instance.sandbox.lean is not None
    decide, _ = plugin.instance.sandbox.lean
    key, parts = wire_key("", "", "", "tool", "request")
    other = plugin.policy.id % (2**64 - 1) + 1
    assert decide(other, key, parts, FAIL) == UNKNOWN_POLICY
    assert plugin.instance.state_count() == 0
    assert decide(plugin.policy.id, key, parts, FAIL) & DELAY_MASK == 200


def test_lean_call_raises_on_a_trap() -> None:
    plugin = direct_plugin({})
    sandbox = plugin.instance.sandbox
    assert sandbox.store is not None
    starved = lean_decide(sandbox.funcs["decide"], sandbox.store, 1, HeldFuel(1))
    starved_held = lean_decide_held(sandbox.funcs["decide-held"], sandbox.store, 1, HeldFuel(1))
    assert starved is not None
    assert starved_held is not None
    key, parts = wire_key("", "", "", "tool", "request")
    with pytest.raises(WasmtimeError):
        starved(plugin.policy.id, key, parts, FAIL)
    with pytest.raises(WasmtimeError):
        starved_held(1, FAIL)


def test_lean_build_refuses_another_signature() -> None:
    sandbox = direct_plugin({}).instance.sandbox
    assert sandbox.store is not None
    with pytest.raises(TypeError, match=r"is not \(u64, string, u64, u64\) -> u64"):
        lean_decide(sandbox.funcs["state-count"], sandbox.store, 1000, HeldFuel(1000))
    with pytest.raises(TypeError, match=r"is not \(u64, string, u64, u64\) -> u64"):
        lean_decide(sandbox.funcs["decide-held"], sandbox.store, 1000, HeldFuel(1000))
    with pytest.raises(TypeError, match=r"is not \(u32, u64\) -> u64"):
        lean_decide_held(sandbox.funcs["decide"], sandbox.store, 1000, HeldFuel(1000))


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

import asyncio
from cpex.framework import GlobalContext, PluginContext, ToolPostInvokePayload
from cpex_retry_with_backoff_wasm import fastcall
from tests.python.conftest import direct_plugin, err, ok

# Two instances (other host limits): each is built without the lean path, one warning in all.
plugins = [direct_plugin({"jitter": False, "wasm_fuel": 10_000_000 + i}) for i in range(2)]

async def run(plugin):
    out = []
    for result in (err(), err(), err(), ok(), err()):
        payload = ToolPostInvokePayload(name="search", result=result)
        context = PluginContext(global_context=GlobalContext(request_id="r1"))
        out.append((await plugin.tool_post_invoke(payload, context)).retry_delay_ms)
    return out

delays = [d for plugin in plugins for d in asyncio.run(run(plugin))]
print(json.dumps({
    "unavailable": fastcall.UNAVAILABLE,
    "lean": [plugin.instance.sandbox.lean is not None for plugin in plugins],
    "instances": len({id(plugin.instance) for plugin in plugins}),
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
    assert seen["instances"] == 2
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
    from wasmtime.component import Instance as ComponentInstance

    from .test_plugin import delays

    real_get_func = ComponentInstance.get_func

    def get_func(self: Any, store: Any, index: Any) -> Any:
        func = real_get_func(self, store, index)
        return None if func is None else RenamedFunc(func)

    monkeypatch.setattr(ComponentInstance, "get_func", get_func)
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
        first_instance = first.get_plugin(PLUGIN_NAME).instance
        # Other host limits: a second instance, built without the lean path too.
        second = await manager_factory({"jitter": False, "max_retries": 3, "wasm_fuel": 20_000_000})
        assert await delays(second, "search", "r1", [err(), err(), err(), err()]) == [200, 400, 800, 0]
        second_instance = second.get_plugin(PLUGIN_NAME).instance
    assert second_instance is not first_instance
    assert first_instance.sandbox.lean is None
    assert second_instance.sandbox.lean is None
    assert fastcall.UNAVAILABLE is not None
    assert "preparing the lean call failed: AttributeError" in fastcall.UNAVAILABLE
    warnings = [r.getMessage() for r in caplog.records if "lean decide call is unavailable" in r.getMessage()]
    assert len(warnings) == 1
    assert "'Func' object has no attribute '_func'" in warnings[0]
