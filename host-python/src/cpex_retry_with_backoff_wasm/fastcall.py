"""A lean call path for the hot ``decide(key: string, tool-len: u32, signals: u64) -> u64``.

wasmtime-py's generic ``Func.__call__`` reflects over the function's type on every call (a
C call for the type, Python objects for each parameter type, per-value conversion), which is
~20 µs of the ~22 µs a decision cost.  The signature of ``decide`` never changes, so this
module prebuilds the three argument values and the result slot once, as the C API's own
``wasmtime_component_val_t`` structs, and each call only writes the three scalars and calls
``wasmtime_component_func_call`` directly (the same C function ``Func.__call__`` ends in).

It uses wasmtime-py's ctypes bindings of the wasmtime C API (``wasmtime._bindings``, and the
kind constants in ``wasmtime._ffi``), which mirror ``wasmtime.h``.  ``LeanDecide.build``
checks that everything it needs is there and returns ``None`` otherwise, so an incompatible
wasmtime-py falls back to the generic path.
The caller holds the store's lock: nothing here is thread-safe, as a Store is not.
"""

from __future__ import annotations

import ctypes
import logging
from ctypes import byref
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import U32, U64, Func, String

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised by whichever wasmtime-py is installed
    from wasmtime import _bindings as _capi
    from wasmtime import _ffi
    from wasmtime.component import _enter

    _VAL = _capi.wasmtime_component_val_t
    _KIND_STRING = _ffi.WASMTIME_COMPONENT_STRING.value
    _KIND_U32 = _ffi.WASMTIME_COMPONENT_U32.value
    _KIND_U64 = _ffi.WASMTIME_COMPONENT_U64.value
    _func_call = _capi._wasmtime_component_func_call
    _val_delete = _capi._wasmtime_component_val_delete
    _set_fuel = _capi._wasmtime_context_set_fuel
    # ``wasm_byte_vec_new`` copies the key into a Rust-owned buffer that ``val_delete``
    # frees.  Declared here with a ``char*`` argument so Python bytes pass without a copy.
    _byte_vec_new = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)(
        ("wasm_byte_vec_new", _ffi.dll)
    )
    _maybe_raise_last_exn = _enter.maybe_raise_last_exn
    _AVAILABLE = True
except (ImportError, AttributeError) as exc:  # pragma: no cover - other wasmtime-py layouts
    log.debug("retry_with_backoff_wasm: lean call path unavailable: %s", exc)
    _AVAILABLE = False


class LeanDecide:
    """``decide`` of one instance, called through prebuilt C argument buffers."""

    __slots__ = ("_ctx", "_fref", "_fuel", "_key", "_params", "_result", "_rref", "_signals", "_tool_len")
    _ctx: Any
    _fref: Any
    _fuel: int
    _key: Any
    _params: Any
    _result: Any
    _rref: Any
    _signals: Any
    _tool_len: Any

    def __init__(self) -> None:
        raise TypeError("use LeanDecide.build(func, store, fuel)")

    @classmethod
    def build(cls, func: Func, store: Store, fuel: int) -> LeanDecide | None:
        """A lean caller for ``func`` in ``store`` refuelled to ``fuel`` per call, or None.

        None when this wasmtime-py does not expose the C API pieces used here.
        """
        if not _AVAILABLE:
            return None
        ftype = func.type(store)
        kinds = tuple(type(ty) for _name, ty in ftype.params)
        if kinds != (String, U32, U64) or type(ftype.result) is not U64:
            raise TypeError(f"decide is {ftype.params} -> {ftype.result}, not (string, u32, u64) -> u64")
        try:
            self = cls.__new__(cls)
            params = (_VAL * 3)()
            params[0].kind = _KIND_STRING
            params[1].kind = _KIND_U32
            params[2].kind = _KIND_U64
            self._params = params
            self._key = params[0]
            self._tool_len = params[1].of
            self._signals = params[2].of
            self._result = _VAL()
            self._rref = byref(self._result)
            self._fref = byref(func._func)
            self._ctx = store._context()
            self._fuel = fuel
        except (AttributeError, TypeError) as exc:  # pragma: no cover - other layouts
            log.debug("retry_with_backoff_wasm: lean call path unavailable: %s", exc)
            return None
        return self

    def __call__(self, key: bytes, tool_len: int, signals: int) -> int:
        """Call ``decide`` with the UTF-8 ``key``; raise ``WasmtimeError`` on a trap."""
        ctx = self._ctx
        err = _set_fuel(ctx, self._fuel)
        if err:
            raise WasmtimeError._from_ptr(err)
        key_val = self._key
        key_val.kind = _KIND_STRING
        _byte_vec_new(byref(key_val.of.string), len(key), key)
        self._tool_len.u32 = tool_len
        self._signals.u64 = signals
        err = _func_call(self._fref, ctx, self._params, 3, self._rref, 1)
        _val_delete(byref(key_val))
        if err:
            error = WasmtimeError._from_ptr(err)
            _maybe_raise_last_exn()  # an exception raised by a Python host function
            raise error
        result: int = self._result.of.u64
        return result


__all__ = ["LeanDecide"]
