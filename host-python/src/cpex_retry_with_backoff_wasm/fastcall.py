"""A lean call path for the hot ``decide(key: string, tool-len: u32, signals: u64) -> u64``.

wasmtime-py's generic ``Func.__call__`` reflects over the function's type on every call (a
C call for the type, Python objects for each parameter type, per-value conversion): ~20 µs of
the ~22 µs a decision cost.  The signature of ``decide`` never changes, so this module
prebuilds the three argument values and the result slot once, as the C API's own
``wasmtime_component_val_t`` structs, and each call only points the string at the key's
bytes, writes two scalars and calls ``wasmtime_component_func_call`` (the C function
``Func.__call__`` ends in).  ``make bench`` shows the result next to the native plugin.

Why each choice (each measured on this project's machines, per call):
* The C functions are called through cffi (ABI mode, the same shared library wasmtime-py
  loaded) rather than ctypes: ctypes builds a converter object per argument and took
  ~0.5 µs more per ``decide``.  cffi is already in every gateway install (``cryptography``
  needs it).
* The key's bytes are not copied: the string value points into the ``bytes`` object for the
  duration of the call (``ffi.from_buffer``).  ``func_call`` only reads its arguments (the
  generic path frees them afterwards), so no per-call allocation is needed either.
* The caller is a closure over prebuilt cffi views of the argument and result slots, so a
  call reaches them as locals rather than attributes.
* cffi releases the GIL around each C call, so other Python threads run while the guest
  decides; the Store itself is behind the adapter's lock.  A runaway guest is bounded by
  the per-call fuel, set before every call.

The struct layout is declared here and checked against wasmtime-py's own ctypes declaration
of ``wasmtime_component_val_t`` when this module is imported; ``lean_decide`` returns
``None`` (the adapter then uses the generic path and logs why) when cffi is missing or the
layout differs.  The caller holds the store's lock: nothing here is thread-safe, as a Store
is not.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from ctypes import POINTER, c_void_p
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import U32, U64, Func, String

log = logging.getLogger(__name__)

_CDEF = """
typedef struct { size_t size; const uint8_t *data; } lean_byte_vec_t;
typedef union {
    uint32_t u32;
    uint64_t u64;
    lean_byte_vec_t string;
    uint8_t reserved[24];
} lean_valunion_t;
typedef struct { uint8_t kind; lean_valunion_t of; } lean_val_t;
void *wasmtime_component_func_call(const void *func, void *context, const lean_val_t *args,
                                   size_t args_len, lean_val_t *results, size_t results_len);
void *wasmtime_context_set_fuel(void *context, uint64_t fuel);
"""

#: Why the lean path is unavailable, or None when it is available.
UNAVAILABLE: str | None = None
try:  # pragma: no cover - exercised by whichever wasmtime-py / cffi is installed
    import cffi
    from wasmtime import _bindings as _capi
    from wasmtime import _ffi
    from wasmtime.component import _enter

    _ffi_cffi = cffi.FFI()
    _ffi_cffi.cdef(_CDEF)
    _VAL = _capi.wasmtime_component_val_t
    if (_ffi_cffi.sizeof("lean_val_t"), _ffi_cffi.offsetof("lean_val_t", "of")) != (
        ctypes.sizeof(_VAL),
        _VAL.of.offset,
    ):
        raise ImportError("wasmtime_component_val_t has another layout in this wasmtime-py")
    # The functions are declared by the cdef above, which the type checker cannot see.
    _lib: Any = _ffi_cffi.dlopen(_ffi.dll._name)
    _func_call = _lib.wasmtime_component_func_call
    _set_fuel = _lib.wasmtime_context_set_fuel
    _from_buffer = _ffi_cffi.from_buffer
    # cffi parses a C type from its string on first use (pycparser, ~0.25 ms each): once here
    # rather than in every plugin's construction.
    _ARGS_TYPE = _ffi_cffi.typeof("lean_val_t[3]")
    _RESULT_TYPE = _ffi_cffi.typeof("lean_val_t *")
    _VOID_PTR = _ffi_cffi.typeof("void *")
    _UINTPTR = _ffi_cffi.typeof("uintptr_t")
    _ERROR_PTR = POINTER(_capi.wasmtime_error_t)
    _KIND_STRING = _ffi.WASMTIME_COMPONENT_STRING.value
    _KIND_U32 = _ffi.WASMTIME_COMPONENT_U32.value
    _KIND_U64 = _ffi.WASMTIME_COMPONENT_U64.value
    _maybe_raise_last_exn = _enter.maybe_raise_last_exn
except (ImportError, AttributeError, OSError) as exc:  # pragma: no cover - other layouts
    UNAVAILABLE = f"{type(exc).__name__}: {exc}"

#: Fuel per byte of key on top of the base budget: hashing and copying a key costs ~16.
KEY_FUEL_PER_BYTE = 128


def _error(err: Any) -> WasmtimeError:
    """The ``wasmtime_error_t *`` a C call returned, as wasmtime-py's exception."""
    address = int(_ffi_cffi.cast(_UINTPTR, err))
    return WasmtimeError._from_ptr(ctypes.cast(address, _ERROR_PTR))


#: ``decide(key, tool_len, signals) -> decision`` of one instance (see ``lean_decide``).
LeanDecide = Callable[[bytes, int, int], int]


def lean_decide(func: Func, store: Store, fuel: int) -> LeanDecide | None:
    """A lean caller of ``func`` (``decide``) in ``store``, refuelled before every call.

    The caller takes the UTF-8 key, the tool name's length and the signals, and returns the
    decision; it raises ``WasmtimeError`` on a trap.  Each call gets ``fuel`` plus
    ``KEY_FUEL_PER_BYTE`` per byte of key.  Returns None when the lean path is unavailable
    here (``UNAVAILABLE`` says why); raises ``TypeError`` when ``func`` is not
    ``(string, u32, u64) -> u64``.
    """
    if UNAVAILABLE is not None:
        return None
    ftype = func.type(store)
    kinds = tuple(type(ty) for _name, ty in ftype.params)
    if kinds != (String, U32, U64) or type(ftype.result) is not U64:
        raise TypeError(f"decide is {ftype.params} -> {ftype.result}, not (string, u32, u64) -> u64")
    params = _ffi_cffi.new(_ARGS_TYPE)
    params[0].kind = _KIND_STRING
    params[1].kind = _KIND_U32
    params[2].kind = _KIND_U64
    out: Any = _ffi_cffi.new(_RESULT_TYPE)
    func_raw = func._func  # the C API's wasmtime_component_func_t, a ctypes struct
    context = ctypes.cast(store._context(), c_void_p).value
    c_func = _ffi_cffi.cast(_VOID_PTR, ctypes.addressof(func_raw))
    c_ctx = _ffi_cffi.cast(_VOID_PTR, context or 0)
    key_arg = params[0].of.string
    tool_len_arg = params[1].of
    signals_arg = params[2].of
    result = out.of
    # Everything the call needs is a local of this closure (cheaper to reach than attributes);
    # `keepalive` holds what the raw addresses point into for as long as the closure lives.
    keepalive = (func_raw, store)
    set_fuel, func_call, from_buffer = _set_fuel, _func_call, _from_buffer

    def call(key: bytes, tool_len: int, signals: int) -> int:
        size = len(key)
        # The budget grows with the key (hashing and copying it), so a long key is bounded
        # by its size instead of failing at a fixed budget.
        err = set_fuel(c_ctx, fuel + KEY_FUEL_PER_BYTE * size)
        if err:
            raise _error(err)
        # `pinned` keeps the key's bytes where they are until the call returns.
        pinned = from_buffer(key)
        key_arg.size = size
        key_arg.data = pinned
        tool_len_arg.u32 = tool_len
        signals_arg.u64 = signals
        err = func_call(c_func, c_ctx, params, 3, out, 1)
        if err:
            error = _error(err)
            _maybe_raise_last_exn()  # an exception raised by a Python host function
            raise error
        decision: int = result.u64
        return decision

    call.keepalive = keepalive  # type: ignore[attr-defined]
    return call


__all__ = ["KEY_FUEL_PER_BYTE", "UNAVAILABLE", "LeanDecide", "lean_decide"]
