"""Process-wide wasmtime objects: the Engine, compiled Components and the production Linker.

* One ``wasmtime.Engine`` per process (fuel metering on, component-model async support off),
  built on first use.
* Components are compiled once per process per ``.wasm`` content and cached on disk as a
  serialized artifact keyed by the ``.wasm``'s sha256, the wasmtime library and the Engine's
  settings, so a second start deserializes (well under a millisecond) instead of compiling
  (tens of milliseconds).
  The cache lives in ``$XDG_CACHE_HOME/cpex-retry-with-backoff-wasm`` (else
  ``~/.cache/cpex-retry-with-backoff-wasm``), is written atomically (temp file +
  ``os.replace``) and carries a sha256 of its own payload, so a torn or tampered file is
  ignored and recompiled rather than handed to ``Component.deserialize``.
* The production Linker links wasmtime's native WASI (``add_wasip2``); stores get an empty
  ``WasiConfig`` so no args, env, stdio, files or sockets are reachable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from wasmtime import Config, Engine, WasmtimeError, _bindings, _ffi
from wasmtime.component import Component, ComponentInstanceType, ExportIndex, FuncType, Linker

from .model import MESSAGE_PREFIX, RetryEngineLoadError

log = logging.getLogger(__name__)

#: Exported interface, matched on package, name and the contract's 0.2 minor.
INTERFACE_PREFIX = "contextforge:retry/retry-engine@0.2."
#: The only imports a retry-engine component may have (matched without the patch version).
CLOCK_INTERFACE_PREFIX = "wasi:clocks/monotonic-clock@0.2."
SEED_INTERFACE_PREFIX = "wasi:random/insecure-seed@0.2."
ALLOWED_IMPORT_PREFIXES = (CLOCK_INTERFACE_PREFIX, SEED_INTERFACE_PREFIX)
#: Functions the host calls; their export indices are resolved once per component.
EXPORTED_FUNCS = (
    "configure",
    "decide",
    "decide-text",
    "decide-held",
    "tool-policy",
    "global-policy",
    "state-count",
    "evict-expired",
    "export-state",
    "import-state",
    "contract-version",
)

#: The largest ``.wasm`` the loader reads (the release is well under a hundredth of it): a
#: bound so that a mistaken ``wasm_path`` (a device, a huge file) fails at once rather than
#: reading without end.
MAX_WASM_BYTES = 16 * 1024 * 1024

CACHE_DIR_NAME = "cpex-retry-with-backoff-wasm"
_CACHE_MAGIC = b"CPEXRWBW1\n"
_DIGEST_LEN = 32

_lock = threading.Lock()
_engine: Engine | None = None
_engine_tag = "fuel"
_production_linker: Linker | None = None
_components: dict[str, LoadedComponent] = {}


def wasmtime_build_id() -> str:
    """The wasmtime library this process runs (part of the cache key): its file's size and
    modification time, so any other build or install of it misses the cache.

    A ``stat`` instead of ``importlib.metadata.version("wasmtime")``, which scans every
    installed distribution: ~0.45 ms of a ~5 ms cold start.
    """
    try:
        info = os.stat(_ffi.dll._name)
    except (AttributeError, OSError):  # pragma: no cover - another wasmtime-py layout
        return "unknown"
    return f"{info.st_size:x}-{info.st_mtime_ns:x}"


def _engine_config() -> tuple[Config, str]:
    """The Engine's Config and a tag naming its settings (part of the cache file name)."""
    config = Config()
    config.consume_fuel = True
    # The component model's async support (tasks, threads, waitables) is not used by a
    # retry engine, but with it on wasmtime books a task on every call: ~0.25 µs of a
    # ~1 µs `decide` (`make bench`).  wasmtime-py has no property for it yet.
    try:
        _bindings.wasmtime_config_concurrency_support_set(config.ptr(), False)
    except AttributeError:  # pragma: no cover - a wasmtime-py without the setting
        return config, "fuel"
    return config, "fuel-sync"


def get_engine() -> Engine:
    """The process-wide Engine (fuel metering on, no async support), built on first use."""
    global _engine, _engine_tag  # noqa: PLW0603 - the one Engine of the process
    with _lock:
        if _engine is None:
            config, _engine_tag = _engine_config()
            _engine = Engine(config)
        return _engine


def production_linker() -> Linker:
    """The shared Linker with wasmtime's native WASI and nothing else."""
    global _production_linker  # noqa: PLW0603 - shared by every production instance
    engine = get_engine()
    with _lock:
        if _production_linker is None:
            linker = Linker(engine)
            linker.add_wasip2()
            _production_linker = linker
        return _production_linker


def cache_dir() -> Path:
    """Where serialized components are cached."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / CACHE_DIR_NAME


@dataclass
class LoadedComponent:
    """A compiled component plus what the adapter needs to instantiate and call it."""

    path: Path
    sha256: str
    component: Component
    interface: str
    func_indices: dict[str, ExportIndex]
    #: import name -> names of the functions imported from it
    imports: dict[str, frozenset[str]] = field(default_factory=dict)


def _cache_file(sha256: str) -> Path:
    return cache_dir() / f"{sha256}-wasmtime-{wasmtime_build_id()}-{_engine_tag}.cwasm"


def _read_cached(engine: Engine, sha256: str) -> Component | None:
    path = _cache_file(sha256)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    header = len(_CACHE_MAGIC) + _DIGEST_LEN
    if len(blob) <= header or not blob.startswith(_CACHE_MAGIC):
        log.debug("retry_with_backoff_wasm: ignoring malformed cache file %s", path)
        return None
    payload = blob[header:]
    if hashlib.sha256(payload).digest() != blob[len(_CACHE_MAGIC) : header]:
        log.debug("retry_with_backoff_wasm: ignoring corrupt cache file %s", path)
        return None
    try:
        return Component.deserialize(engine, payload)
    except WasmtimeError as exc:  # other engine config, other wasmtime build
        log.debug("retry_with_backoff_wasm: cache file %s unusable: %s", path, exc)
        return None


def _write_cached(component: Component, sha256: str) -> None:
    path = _cache_file(sha256)
    try:
        payload = bytes(component.serialize())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".cwasm", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_CACHE_MAGIC)
                out.write(hashlib.sha256(payload).digest())
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, WasmtimeError) as exc:
        log.debug("retry_with_backoff_wasm: not caching the compiled component: %s", exc)


def _imported_funcs(engine: Engine, item: object) -> frozenset[str]:
    """Names of the functions an imported instance provides (types such as ``instant`` skipped)."""
    if not isinstance(item, ComponentInstanceType):
        return frozenset()
    return frozenset(name for name, ext in item.exports(engine).items() if isinstance(ext.ty, FuncType))


def _describe(path: Path, engine: Engine, component: Component, sha256: str) -> LoadedComponent:
    ctype = component.type
    # The contract first: a build for another contract version is the likeliest mistake, and
    # its error should name both versions rather than whatever else differs.
    exports = ctype.exports(engine)
    interface = next((name for name in exports if name.startswith(INTERFACE_PREFIX)), None)
    if interface is None:
        family = INTERFACE_PREFIX.split("@", maxsplit=1)[0]
        others = sorted(name for name in exports if name.startswith(family))
        found = f"it exports {', '.join(others or sorted(exports)) or 'nothing'}"
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: {path} is not for this host's contract: the host needs "
            f"{INTERFACE_PREFIX}x, {found}"
        )
    imports: dict[str, frozenset[str]] = {}
    for name, item in ctype.imports(engine).items():
        if not name.startswith(ALLOWED_IMPORT_PREFIXES):
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {path} imports {name}; a retry-engine component may import only "
                "wasi:clocks/monotonic-clock and wasi:random/insecure-seed"
            )
        imports[name] = _imported_funcs(engine, item.ty)
    iface_index = component.get_export_index(interface)
    assert iface_index is not None
    indices: dict[str, ExportIndex] = {}
    for name in EXPORTED_FUNCS:
        index = component.get_export_index(name, instance=iface_index)
        if index is None:
            raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: {path}: {interface} has no function {name!r}")
        indices[name] = index
    return LoadedComponent(path, sha256, component, interface, indices, imports)


def _file_kind(mode: int) -> str:
    """What a non-regular file is, for an error message."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((what for test, what in kinds if test(mode)), "not a regular file")


def read_wasm_file(path: Path) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``MAX_WASM_BYTES``.

    Opened non-blocking, so that a FIFO without a writer is refused at once instead of
    blocking the caller (plugin construction, ``reload``); then the opened descriptor is
    checked, so what is read is what was checked.  Anything but a regular file, or a file
    over the bound, raises ``RetryEngineLoadError`` naming the path and the reason.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: cannot read component {path}: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: cannot read component {path}: it is {_file_kind(info.st_mode)}, "
                "not a regular file"
            )
        too_big = RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: cannot read component {path}: it is larger than {MAX_WASM_BYTES} bytes, "
            "the most a retry-engine component may be"
        )
        if info.st_size > MAX_WASM_BYTES:
            raise too_big
        chunks: list[bytes] = []
        left = MAX_WASM_BYTES + 1  # one byte more tells a file that grew past the bound
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise too_big
        return b"".join(chunks)
    except OSError as exc:
        raise RetryEngineLoadError(f"{MESSAGE_PREFIX}: cannot read component {path}: {exc}") from exc
    finally:
        os.close(fd)


def load_component(path: str | os.PathLike[str], expected_sha256: str | None = None) -> LoadedComponent:
    """Compile (or fetch from the caches) the component at ``path``.

    Raises ``RetryEngineLoadError`` naming the path when the file is missing, unreadable,
    not a regular file (``read_wasm_file``), larger than ``MAX_WASM_BYTES``,
    not a component, not a retry-engine component, or (with ``expected_sha256``) not the
    pinned artifact — checked before anything is compiled or loaded.
    """
    wasm_path = Path(path)
    data = read_wasm_file(wasm_path)
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: {wasm_path} has sha256 {sha256}, but wasm_sha256 pins "
            f"{expected_sha256.lower()}; nothing was loaded"
        )
    with _lock:
        cached = _components.get(sha256)
    if cached is not None:
        return cached
    engine = get_engine()
    component = _read_cached(engine, sha256)
    if component is None:
        try:
            component = Component(engine, data)
        except WasmtimeError as exc:
            raise RetryEngineLoadError(
                f"{MESSAGE_PREFIX}: {wasm_path} is not a valid WebAssembly component: {exc}"
            ) from exc
        _write_cached(component, sha256)
    loaded = _describe(wasm_path, engine, component, sha256)
    with _lock:
        return _components.setdefault(sha256, loaded)


def clear_memory_cache() -> None:
    """Forget in-process compiled components (tests use this to exercise the disk cache)."""
    with _lock:
        _components.clear()
