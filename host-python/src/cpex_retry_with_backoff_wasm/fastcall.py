"""A lean call path for the hot calls ``decide(policy, key, parts, signals) -> u64`` and
``decide-held(handle, signals) -> u64``.

wasmtime-py's generic ``Func.__call__`` reflects over the function's type on every call (a
C call for the type, Python objects for each parameter type, per-value conversion): nearly all
of what a decision cost.  The signatures never change, so this module prebuilds the
argument values and the result slot once, as the C API's own ``wasmtime_component_val_t``
structs, and each call only points the string at the key's bytes, writes the scalars and
calls ``wasmtime_component_func_call`` (the C function ``Func.__call__`` ends in).
``make bench`` shows the result next to the native plugin.

Why each choice (each measured on this project's machines, per call):
* The C functions are called through cffi (ABI mode, the same shared library wasmtime-py
  loaded) rather than ctypes: ctypes builds a converter object per argument, which showed in
  every ``decide``.  cffi is already in every gateway install (``cryptography``
  needs it).
* The key's bytes are not copied: the string value points into the ``bytes`` object for the
  duration of the call (``ffi.from_buffer``).  ``func_call`` only reads its arguments (the
  generic path frees them afterwards), so no per-call allocation is needed either.
* The caller is a closure over prebuilt cffi views of the argument and result slots, so a
  call reaches them as locals rather than attributes.
* cffi releases the GIL around each C call, so other Python threads run while the guest
  decides; the Store itself is behind the adapter's lock.  A runaway guest is bounded by
  fuel: ``decide`` refuels before every call, ``decide-held`` as ``HeldFuel`` says.

The struct layout and the C functions' signatures are declared here (``_CDEF``) and checked
against wasmtime-py's own ctypes declarations (``wasmtime_component_val_t``, and the
``argtypes``/``restype`` of each function called) when this module is imported.  The lean
path relies on wasmtime-py internals (``Func._func``, ``Store._context``, ``_bindings``), so
any failure in that check or while preparing a caller makes it unavailable: ``lean_decide``
returns ``None``, ``UNAVAILABLE`` says why, and the adapter uses wasmtime-py's public call
and logs that once.  Only a component whose function has another signature is an error.
The caller holds the store's lock: nothing here is thread-safe, as a Store is not.
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

#: The C functions the lean callers call (declared in ``_CDEF``).
C_FUNCTIONS = ("wasmtime_component_func_call", "wasmtime_context_set_fuel")
#: ctypes codes of the integer types, signed ones in lower case.
_CTYPES_INTS = "bhilqBHILQ"


class SurfaceMismatch(ImportError):
    """wasmtime-py's C declarations differ from what this module was written against."""


def _same_c_type(ffi: Any, ours: Any, theirs: Any, val: type) -> bool:
    """Whether the cffi type ``ours`` (from ``_CDEF``) passes like the ctypes type ``theirs``
    (from wasmtime-py's ``_bindings``): a pointer to our value struct only as a pointer to
    wasmtime-py's ``val``, another pointer as any pointer, an integer as an integer of the
    same size and signedness."""
    if ours.kind == "pointer":
        if ours.item.kind == "struct":
            return getattr(theirs, "_type_", None) is val and issubclass(theirs, ctypes._Pointer)
        return isinstance(theirs, type) and issubclass(theirs, ctypes._Pointer | c_void_p)
    if ours.kind == "primitive":
        code = getattr(theirs, "_type_", None)
        if not (isinstance(code, str) and len(code) == 1 and code in _CTYPES_INTS):
            return False
        signed = int(ffi.cast(ours, -1)) < 0
        return bool(ctypes.sizeof(theirs) == ffi.sizeof(ours) and code.islower() == signed)
    return False


def _name(ty: Any) -> str:
    return str(getattr(ty, "__name__", ty))


def check_c_signatures(ffi: Any, lib: Any, capi: Any, val: type) -> None:
    """Raise ``SurfaceMismatch`` unless each of ``C_FUNCTIONS`` has, in wasmtime-py's ctypes
    declaration, the parameters and result ``_CDEF`` gives it."""
    for name in C_FUNCTIONS:
        ours = ffi.typeof(getattr(lib, name))
        declared = getattr(capi, f"_{name}")
        theirs = list(declared.argtypes or ())
        if len(theirs) != len(ours.args):
            raise SurfaceMismatch(
                f"{name} takes {len(theirs)} arguments in this wasmtime-py, not {len(ours.args)}"
            )
        for i, (mine, other) in enumerate(zip(ours.args, theirs, strict=True)):
            if not _same_c_type(ffi, mine, other, val):
                raise SurfaceMismatch(
                    f"{name} argument {i} is {_name(other)} in this wasmtime-py, not {mine.cname}"
                )
        if not _same_c_type(ffi, ours.result, declared.restype, val):
            raise SurfaceMismatch(
                f"{name} returns {_name(declared.restype)} in this wasmtime-py, not {ours.result.cname}"
            )


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
        raise SurfaceMismatch("wasmtime_component_val_t has another layout in this wasmtime-py")
    # The functions are declared by the cdef above, which the type checker cannot see.
    _lib: Any = _ffi_cffi.dlopen(_ffi.dll._name)
    check_c_signatures(_ffi_cffi, _lib, _capi, _VAL)
    _func_call = _lib.wasmtime_component_func_call
    _set_fuel = _lib.wasmtime_context_set_fuel
    _from_buffer = _ffi_cffi.from_buffer
    # cffi parses a C type from its string on first use (pycparser, ~0.25 ms each): once here
    # rather than in every plugin's construction.
    _ARGS_TYPE = _ffi_cffi.typeof("lean_val_t[4]")
    _RESULT_TYPE = _ffi_cffi.typeof("lean_val_t *")
    _VOID_PTR = _ffi_cffi.typeof("void *")
    _UINTPTR = _ffi_cffi.typeof("uintptr_t")
    _ERROR_PTR = POINTER(_capi.wasmtime_error_t)
    _KINDS: dict[type, int] = {
        String: _ffi.WASMTIME_COMPONENT_STRING.value,
        U32: _ffi.WASMTIME_COMPONENT_U32.value,
        U64: _ffi.WASMTIME_COMPONENT_U64.value,
    }
    _maybe_raise_last_exn = _enter.maybe_raise_last_exn
except Exception as exc:  # pragma: no cover - another wasmtime-py: whatever broke, fall back
    UNAVAILABLE = f"{type(exc).__name__}: {exc}"

#: Fuel per byte of key on top of the base budget: hashing and copying a key costs ~16.
KEY_FUEL_PER_BYTE = 128


def _error(err: Any) -> WasmtimeError:
    """The ``wasmtime_error_t *`` a C call returned, as wasmtime-py's exception."""
    address = int(_ffi_cffi.cast(_UINTPTR, err))
    return WasmtimeError._from_ptr(ctypes.cast(address, _ERROR_PTR))


#: ``decide(policy, key, parts, signals) -> decision`` of one instance (``lean_decide``).
LeanDecide = Callable[[int, bytes, int, int], int]
#: ``decide-held(handle, signals) -> decision`` of one instance (``lean_decide_held``).
LeanDecideHeld = Callable[[int, int], int]


class _Prepared:
    """What a lean caller needs of one exported function: its C handles and argument slots."""

    def __init__(self, func: Func, store: Store, kinds: tuple[type, ...]) -> None:
        self.params: Any = _ffi_cffi.new(_ARGS_TYPE)
        for i, kind in enumerate(kinds):
            self.params[i].kind = _KINDS[kind]
        self.out: Any = _ffi_cffi.new(_RESULT_TYPE)
        func_raw = func._func  # the C API's wasmtime_component_func_t, a ctypes struct
        context = ctypes.cast(store._context(), c_void_p).value
        self.func = _ffi_cffi.cast(_VOID_PTR, ctypes.addressof(func_raw))
        self.ctx = _ffi_cffi.cast(_VOID_PTR, context or 0)
        # The raw addresses above point into these: they live as long as the caller does.
        self.keepalive = (func_raw, store)


def _prepare(func: Func, store: Store, kinds: tuple[type, ...], signature: str) -> _Prepared | None:
    """The lean caller's parts for ``func``, or None (and ``UNAVAILABLE`` set, so the lean
    path stays off in this process) when wasmtime-py's internals do not let them be built.

    Raises ``TypeError`` when ``func`` does not have ``signature``: the component's fault,
    which the public call path would meet too.
    """
    global UNAVAILABLE  # noqa: PLW0603 - the lean path is off for the whole process from now
    ftype = func.type(store)
    if tuple(type(ty) for _name, ty in ftype.params) != kinds or type(ftype.result) is not U64:
        raise TypeError(f"{ftype.params} -> {ftype.result} is not {signature}")
    try:
        return _Prepared(func, store, kinds)
    except Exception as exc:
        UNAVAILABLE = f"preparing the lean call failed: {type(exc).__name__}: {exc}"
        return None


def _raise_call_error(err: Any) -> None:
    error = _error(err)
    _maybe_raise_last_exn()  # an exception raised by a Python host function
    raise error


#: A bound on the fuel one ``decide-held`` can take (~20x the worst a harness test measures,
#: ``robustness::test_decide_held_fuel_is_bounded``): its key is at most 256 bytes and already
#: in the state tables, which are allocated once, so nothing in it grows with the table.
HELD_CALL_FUEL_BOUND = 1_000_000


class HeldFuel:
    """When the ``decide-held`` caller refuels.

    Setting fuel is a C call of its own (a sizeable fraction of a decision), so ``decide-held``
    refuels to the full per-call budget only every ``refills + 1`` calls: each call still
    starts with at least ``HELD_CALL_FUEL_BOUND`` (no legitimate call can run out) and never
    with more than the per-call budget (a runaway guest is stopped as soon as before).  Any
    other call into the store sets its own fuel and leaves an unknown remainder, so whoever
    makes one calls ``invalidate`` and the next ``decide-held`` refuels.  The bound holds for a
    decision that keeps no retry budget; one that may (a success of a key under a policy with a
    budget, whose bucket may have to be made again at the bucket bound) is made with a full
    budget of its own: its caller calls ``invalidate`` first.
    """

    __slots__ = ("left", "refills")

    def __init__(self, fuel: int) -> None:
        self.refills = max(0, fuel // HELD_CALL_FUEL_BOUND - 1)
        self.left = 0

    def invalidate(self) -> None:
        self.left = 0


def lean_decide(func: Func, store: Store, fuel: int, held_fuel: HeldFuel) -> LeanDecide | None:
    """A lean caller of ``func`` (``decide``) in ``store``, refuelled before every call.

    The caller takes the policy id, the UTF-8 key, its ``parts`` and the signals, and returns
    the decision; it raises ``WasmtimeError`` on a trap.  Each call gets ``fuel`` plus
    ``KEY_FUEL_PER_BYTE`` per byte of key.  Returns None when the lean path is unavailable here
    (``UNAVAILABLE`` says why); raises ``TypeError`` when ``func`` is not
    ``(u64, string, u64, u64) -> u64``.
    """
    if UNAVAILABLE is not None:
        return None
    prepared = _prepare(func, store, (U64, String, U64, U64), "(u64, string, u64, u64) -> u64")
    if prepared is None:
        return None
    # Everything the call needs is a local of this closure (cheaper to reach than attributes).
    params, out, c_func, c_ctx = prepared.params, prepared.out, prepared.func, prepared.ctx
    policy_arg, key_arg, parts_arg, signals_arg = (params[i].of for i in range(4))
    key_arg = key_arg.string
    result = out.of
    set_fuel, func_call, from_buffer = _set_fuel, _func_call, _from_buffer

    def call(policy: int, key: bytes, parts: int, signals: int) -> int:
        size = len(key)
        # The budget grows with the key (hashing and copying it), so a long key is bounded
        # by its size instead of failing at a fixed budget.
        err = set_fuel(c_ctx, fuel + KEY_FUEL_PER_BYTE * size)
        held_fuel.left = 0
        if err:
            raise _error(err)
        # `pinned` keeps the key's bytes where they are until the call returns.
        pinned = from_buffer(key)
        policy_arg.u64 = policy
        key_arg.size = size
        key_arg.data = pinned
        parts_arg.u64 = parts
        signals_arg.u64 = signals
        err = func_call(c_func, c_ctx, params, 4, out, 1)
        if err:
            _raise_call_error(err)
        decision: int = result.u64
        return decision

    call.keepalive = prepared  # type: ignore[attr-defined]
    return call


def lean_decide_held(func: Func, store: Store, fuel: int, held_fuel: HeldFuel) -> LeanDecideHeld | None:
    """A lean caller of ``func`` (``decide-held``) in ``store``, refuelled to ``fuel`` as
    ``held_fuel`` says.  None when the lean path is unavailable here; ``TypeError`` when
    ``func`` is not ``(u32, u64) -> u64``.
    """
    if UNAVAILABLE is not None:
        return None
    prepared = _prepare(func, store, (U32, U64), "(u32, u64) -> u64")
    if prepared is None:
        return None
    params, out, c_func, c_ctx = prepared.params, prepared.out, prepared.func, prepared.ctx
    handle_arg, signals_arg = params[0].of, params[1].of
    result = out.of
    set_fuel, func_call = _set_fuel, _func_call

    def call(handle: int, signals: int) -> int:
        if held_fuel.left:
            held_fuel.left -= 1
        else:
            err = set_fuel(c_ctx, fuel)
            if err:
                raise _error(err)
            held_fuel.left = held_fuel.refills
        handle_arg.u32 = handle
        signals_arg.u64 = signals
        err = func_call(c_func, c_ctx, params, 2, out, 1)
        if err:
            _raise_call_error(err)
        decision: int = result.u64
        return decision

    call.keepalive = prepared  # type: ignore[attr-defined]
    return call


__all__ = [
    "C_FUNCTIONS",
    "HELD_CALL_FUEL_BOUND",
    "KEY_FUEL_PER_BYTE",
    "UNAVAILABLE",
    "HeldFuel",
    "LeanDecide",
    "LeanDecideHeld",
    "SurfaceMismatch",
    "check_c_signatures",
    "lean_decide",
    "lean_decide_held",
]
