"""A lean call path for the hot ``decide(key: string, tool-len: u32, signals: u64) -> u64``.

wasmtime-py's generic ``Func.__call__`` reflects over the function's type on every call (a
C call for the type, Python objects for each parameter type, per-value conversion): ~20 µs of
the ~22 µs a decision cost.  The signature of ``decide`` never changes, so this module
prebuilds the three argument values and the result slot once, as the C API's own
``wasmtime_component_val_t`` structs, and each call only copies the key into a reusable
buffer, writes two scalars and calls ``wasmtime_component_func_call`` (the C function
``Func.__call__`` ends in).  Measured on this project's machines: ~2 µs per call instead of
~22 µs (``make bench``).

Why each choice:
* The key's bytes go into a buffer this object owns and the string value points at it:
  ``func_call`` only reads its arguments (the generic path frees them afterwards), so no
  per-call ``wasm_byte_vec_new``/``val_delete`` pair is needed.
* The C functions are bound with ``ctypes.PYFUNCTYPE``, which keeps the GIL across the call.
  A decision runs ~1.5 µs in Wasm; dropping and retaking the GIL around it costs more than it
  could give another thread, and the Store is behind the adapter's lock anyway.  A runaway
  guest is bounded by the per-call fuel, set before every call.

It uses wasmtime-py's ctypes bindings of the wasmtime C API (``wasmtime._bindings``, the kind
constants and library handle in ``wasmtime._ffi``), which mirror ``wasmtime.h``.
``LeanDecide.build`` returns ``None`` when they are not there, so an incompatible
wasmtime-py falls back to the generic path.  The caller holds the store's lock: nothing here
is thread-safe, as a Store is not.
"""

from __future__ import annotations

import ctypes
import logging
from ctypes import POINTER, c_size_t, c_uint64, c_void_p
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import U32, U64, Func, String

log = logging.getLogger(__name__)

try:  # pragma: no cover - exercised by whichever wasmtime-py is installed
    from wasmtime import _bindings as _capi
    from wasmtime import _ffi
    from wasmtime.component import _enter

    _VAL = _capi.wasmtime_component_val_t
    _ERROR_PTR = POINTER(_capi.wasmtime_error_t)
    _KIND_STRING = _ffi.WASMTIME_COMPONENT_STRING.value
    _KIND_U32 = _ffi.WASMTIME_COMPONENT_U32.value
    _KIND_U64 = _ffi.WASMTIME_COMPONENT_U64.value
    _func_call = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t)(
        ("wasmtime_component_func_call", _ffi.dll)
    )
    _set_fuel = ctypes.PYFUNCTYPE(c_void_p, c_void_p, c_uint64)(("wasmtime_context_set_fuel", _ffi.dll))
    _maybe_raise_last_exn = _enter.maybe_raise_last_exn
    _AVAILABLE = True
except (ImportError, AttributeError) as exc:  # pragma: no cover - other wasmtime-py layouts
    log.debug("retry_with_backoff_wasm: lean call path unavailable: %s", exc)
    _AVAILABLE = False

_INITIAL_KEY_CAPACITY = 256
#: Fuel per byte of key on top of the base budget: hashing and copying a key costs ~16.
KEY_FUEL_PER_BYTE = 128


class LeanDecide:
    """``decide`` of one instance, called through prebuilt C argument buffers."""

    __slots__ = (
        "_buffer",
        "_capacity",
        "_ctx",
        "_fuel",
        "_func",
        "_keepalive",
        "_key",
        "_params",
        "_result",
        "_result_of",
        "_signals",
        "_tool_len",
    )
    _buffer: Any
    _capacity: int
    _ctx: int
    _func: int
    _fuel: int
    _keepalive: tuple[Any, ...]
    _key: Any
    _params: int
    _result: int
    _result_of: Any
    _signals: Any
    _tool_len: Any

    def __init__(self) -> None:
        raise TypeError("use LeanDecide.build(func, store, fuel)")

    @classmethod
    def build(cls, func: Func, store: Store, fuel: int) -> LeanDecide | None:
        """A lean caller for ``func`` in ``store``, refuelled to ``fuel`` before every call.

        None when this wasmtime-py does not expose the C API pieces used here; ``TypeError``
        when ``func`` is not ``(string, u32, u64) -> u64``.
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
            result = _VAL()
            func_raw = func._func
            ctx = ctypes.cast(store._context(), c_void_p).value
            # The structs stay alive as long as this object: only raw addresses are passed.
            self._keepalive = (params, result, func_raw, store)
            self._key = params[0].of.string
            self._tool_len = params[1].of
            self._signals = params[2].of
            self._result_of = result.of
            self._params = ctypes.addressof(params)
            self._result = ctypes.addressof(result)
            self._func = ctypes.addressof(func_raw)
            self._ctx = ctx if ctx is not None else 0
            self._fuel = fuel
            self._capacity = 0
            self._grow(_INITIAL_KEY_CAPACITY)
        except (AttributeError, TypeError) as exc:  # pragma: no cover - other layouts
            log.debug("retry_with_backoff_wasm: lean call path unavailable: %s", exc)
            return None
        return self

    def _grow(self, size: int) -> None:
        capacity = max(size, 2 * self._capacity)
        self._buffer = ctypes.create_string_buffer(capacity)
        self._key.data = ctypes.cast(self._buffer, POINTER(ctypes.c_ubyte))
        self._capacity = capacity

    def __call__(self, key: bytes, tool_len: int, signals: int) -> int:
        """Call ``decide`` with the UTF-8 ``key``; raise ``WasmtimeError`` on a trap."""
        ctx = self._ctx
        size = len(key)
        # The budget grows with the key (hashing and copying it), so a long key is bounded by
        # its size instead of failing at a fixed budget.
        err = _set_fuel(ctx, self._fuel + KEY_FUEL_PER_BYTE * size)
        if err:
            raise WasmtimeError._from_ptr(ctypes.cast(err, _ERROR_PTR))
        if size > self._capacity:
            self._grow(size)
        ctypes.memmove(self._buffer, key, size)
        self._key.size = size
        self._tool_len.u32 = tool_len
        self._signals.u64 = signals
        err = _func_call(self._func, ctx, self._params, 3, self._result, 1)
        if err:
            error = WasmtimeError._from_ptr(ctypes.cast(err, _ERROR_PTR))
            _maybe_raise_last_exn()  # an exception raised by a Python host function
            raise error
        decision: int = self._result_of.u64
        return decision


__all__ = ["LeanDecide"]
