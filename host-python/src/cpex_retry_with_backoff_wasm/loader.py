"""Process-wide wasmtime objects: the Engine, compiled Components and the production Linker.

* One ``wasmtime.Engine`` per process (fuel metering on, component-model async support off),
  built on first use.
* Components are compiled once per process per ``.wasm`` content and cached on disk as a
  serialized artifact keyed by the ``.wasm``'s sha256, the wasmtime library and the Engine's
  settings, so a second start deserializes (well under a millisecond) instead of compiling
  (tens of milliseconds).
  The cache lives in ``$XDG_CACHE_HOME/cpex-retry-with-backoff-wasm`` (else
  ``~/.cache/cpex-retry-with-backoff-wasm``), is written atomically (temp file +
  ``os.replace``) and carries a sha256 of its own payload, so a torn file is ignored and
  recompiled rather than handed to ``Component.deserialize``.
* The cache is part of the trust boundary: deserializing an entry runs its native code, past
  ``wasm_sha256`` and the sandbox.  An entry is used only if nobody but the effective user
  can have written it (the directory, created 0700, and the entry, written 0600, both owned
  by the effective uid and not group- or world-writable, checked on the opened descriptors;
  an entry that is a symlink is refused) and its header names the sha256 of the very
  ``.wasm`` bytes being loaded, so a pinned plugin only runs code compiled from the pinned
  bytes.  A refused directory or entry is logged once and the component compiled from the
  bytes; a refused directory is not written to.  ``wasm_compile_cache: false`` turns the
  cache off.  The effective user is trusted: it can replace the package itself.
* The production Linker links wasmtime's native WASI (``add_wasip2``); stores get an empty
  ``WasiConfig`` so no args, env, stdio, files or sockets are reachable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wasmtime import Config, Engine, WasmtimeError, _bindings, _ffi
from wasmtime.component import Component, ComponentInstanceType, ExportIndex, FuncType, Linker

from .model import CONTRACT_MINOR, CONTRACT_WANTED, MESSAGE_PREFIX, ConfigError, RetryEngineLoadError

log = logging.getLogger(__name__)

#: Exported interface, matched on package, name and the contract minor this host loads.
INTERFACE_FAMILY = "contextforge:retry/retry-engine"
INTERFACE_PREFIX = f"{INTERFACE_FAMILY}@{CONTRACT_MINOR}."
#: The only imports a retry-engine component may have (matched without the patch version).
CLOCK_INTERFACE_PREFIX = "wasi:clocks/monotonic-clock@0.2."
SEED_INTERFACE_PREFIX = "wasi:random/insecure-seed@0.2."
ALLOWED_IMPORT_PREFIXES = (CLOCK_INTERFACE_PREFIX, SEED_INTERFACE_PREFIX)
#: Functions the host calls; their export indices are resolved once per component.
EXPORTED_FUNCS = (
    "init",
    "open-policy",
    "close-policy",
    "decide",
    "decide-text",
    "decide-held",
    "tool-policy",
    "state-count",
    "policy-count",
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
#: Host setting: ``false`` turns the on-disk compile cache off (no entry read or written).
KEY_COMPILE_CACHE = "wasm_compile_cache"
#: An entry is this magic, the sha256 of the ``.wasm`` it was compiled from, the sha256 of
#: the payload, then the payload (``Component.serialize``).
_CACHE_MAGIC = b"CPEXRWBW2\n"
_DIGEST_LEN = 32
#: The largest cache entry read: compiled code is several times larger than its ``.wasm``.
MAX_CACHE_ENTRY_BYTES = 16 * MAX_WASM_BYTES

_lock = threading.Lock()
_engine: Engine | None = None
_engine_tag = "fuel"
_production_linker: Linker | None = None
_components: dict[str, LoadedComponent] = {}
#: Cache refusals already logged.
_warned: set[str] = set()


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
    # retry engine, but with it on wasmtime books a task on every call, a large share of a
    # `decide` (`make bench`).  wasmtime-py has no property for it yet.
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
    #: Whether it was deserialized from the disk cache rather than compiled in this process.
    from_disk_cache: bool = False


def _cache_name(sha256: str) -> str:
    return f"{sha256}-wasmtime-{wasmtime_build_id()}-{_engine_tag}.cwasm"


def _cache_file(sha256: str) -> Path:
    return cache_dir() / _cache_name(sha256)


def _warn_once(message: str) -> None:
    """Log a refused cache directory or entry once per process (it is refused on every load)."""
    with _lock:
        if message in _warned:
            return
        _warned.add(message)
    log.warning("%s: %s; compiling from the .wasm instead", MESSAGE_PREFIX, message)


def _untrusted(info: os.stat_result) -> str | None:
    """Why a file or directory with ``info`` may have been written by someone other than the
    effective user (who, as the owner of the process, is trusted anyway), or None."""
    euid = os.geteuid()
    if info.st_uid != euid:
        return f"owned by uid {info.st_uid}, not by this process's uid {euid}"
    writers = [
        who for bit, who in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "everyone")) if info.st_mode & bit
    ]
    if writers:
        return f"writable by {' and '.join(writers)} (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _open_cache_dir(*, create: bool) -> int | None:
    """A descriptor of the cache directory if only this user can have written into it, else
    None (a refused directory is logged once).  ``create`` makes it, private, if missing."""
    directory = cache_dir()
    try:
        if create:
            directory.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:  # missing (nothing cached yet), or not usable as a directory
        log.debug("%s: no compile cache in %s: %s", MESSAGE_PREFIX, directory, exc)
        return None
    # Checked on the opened descriptor: what is checked is what entries are opened in.
    problem = _untrusted(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        _warn_once(f"not using the compile cache {directory}: it is {problem}")
        return None
    return fd


def _read_entry(directory: int, name: str, path: Path) -> bytes | None:
    """The bytes of the cache entry ``name`` if it is a regular file only this user can have
    written, of bounded size; None if it is missing or refused (logged once)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a symlink (ELOOP), unreadable, ...
        _warn_once(f"not using the cache entry {path}: {exc.strerror or exc}")
        return None
    with os.fdopen(fd, "rb") as entry:
        info = os.fstat(fd)
        problem = _untrusted(info)
        if not stat.S_ISREG(info.st_mode):
            problem = "not a regular file"
        elif info.st_size > MAX_CACHE_ENTRY_BYTES:
            problem = f"larger than {MAX_CACHE_ENTRY_BYTES} bytes"
        if problem is not None:
            _warn_once(f"not using the cache entry {path}: it is {problem}")
            return None
        return entry.read(MAX_CACHE_ENTRY_BYTES + 1)


def _read_cached(engine: Engine, sha256: str) -> Component | None:
    """The component cached for the ``.wasm`` whose sha256 is ``sha256``, or None.

    An entry is deserialized (which runs its native code) only when the directory and the
    entry can only have been written by this user, and its header says it was compiled from
    exactly these ``.wasm`` bytes.
    """
    directory = _open_cache_dir(create=False)
    if directory is None:
        return None
    name = _cache_name(sha256)
    path = cache_dir() / name
    try:
        blob = _read_entry(directory, name, path)
    except OSError as exc:
        log.debug("%s: cannot read cache entry %s: %s", MESSAGE_PREFIX, path, exc)
        return None
    finally:
        os.close(directory)
    if blob is None:
        return None
    header = len(_CACHE_MAGIC) + 2 * _DIGEST_LEN
    if len(blob) <= header or not blob.startswith(_CACHE_MAGIC):
        log.debug("%s: ignoring malformed cache file %s", MESSAGE_PREFIX, path)
        return None
    source = blob[len(_CACHE_MAGIC) : len(_CACHE_MAGIC) + _DIGEST_LEN]
    digest = blob[len(_CACHE_MAGIC) + _DIGEST_LEN : header]
    payload = blob[header:]
    if source != bytes.fromhex(sha256):
        _warn_once(
            f"not using the cache entry {path}: it was compiled from a .wasm with sha256 {source.hex()}"
        )
        return None
    if hashlib.sha256(payload).digest() != digest:
        log.debug("%s: ignoring corrupt cache file %s", MESSAGE_PREFIX, path)
        return None
    try:
        return Component.deserialize(engine, payload)
    except WasmtimeError as exc:  # other engine config, other wasmtime build
        log.debug("%s: cache file %s unusable: %s", MESSAGE_PREFIX, path, exc)
        return None


def _write_cached(component: Component, sha256: str) -> None:
    """Cache ``component`` (compiled from the ``.wasm`` whose sha256 is ``sha256``): written
    to a private temp file (mode 0600) and renamed into place, in a directory that is
    created private (0700) and used only if nobody else can write into it."""
    directory = _open_cache_dir(create=True)
    if directory is None:
        return
    os.close(directory)
    path = _cache_file(sha256)
    try:
        payload = bytes(component.serialize())
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".cwasm", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(_CACHE_MAGIC)
                out.write(bytes.fromhex(sha256))
                out.write(hashlib.sha256(payload).digest())
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except (OSError, WasmtimeError) as exc:
        log.debug("%s: not caching the compiled component: %s", MESSAGE_PREFIX, exc)


def compile_cache_setting(config: Mapping[str, Any], errors: list[ConfigError]) -> bool:
    """``wasm_compile_cache`` (default true), checked; a problem goes to ``errors`` and turns
    the cache off for this load."""
    value = config.get(KEY_COMPILE_CACHE, True)
    if type(value) is not bool:
        errors.append(ConfigError(KEY_COMPILE_CACHE, f"must be true or false, got {value!r}"))
        return False
    return value


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
        others = sorted(name for name in exports if name.startswith(INTERFACE_FAMILY))
        found = f"it exports {', '.join(others or sorted(exports)) or 'nothing'}"
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: {path} is not for this host's contract: the host needs "
            f"{INTERFACE_FAMILY}@{CONTRACT_WANTED}, {found}"
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


def _wasmtime_py() -> str:
    """The installed wasmtime-py and the range this package declares, for an error message
    (read only then: scanning the installed distributions is slow)."""
    from importlib import metadata  # noqa: PLC0415 - only on this error path, not at every start

    try:
        version = metadata.version("wasmtime")
    except metadata.PackageNotFoundError:  # pragma: no cover - wasmtime imported from elsewhere
        version = "(version unknown)"
    try:
        requires = metadata.requires("cpex-retry-with-backoff-wasm") or []
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        requires = []
    declared = next((req for req in requires if req.startswith("wasmtime")), None)
    return f"wasmtime-py {version}" + (f" (this plugin needs {declared})" if declared else "")


def load_component(
    path: str | os.PathLike[str], expected_sha256: str | None = None, *, compile_cache: bool = True
) -> LoadedComponent:
    """Compile (or fetch from the caches) the component at ``path``.

    With ``compile_cache`` false the on-disk cache is neither read nor written, and a
    component this process deserialized from it is not reused either: the code run is
    compiled here from the bytes read.

    Raises ``RetryEngineLoadError`` naming the path when the file is missing, unreadable,
    not a regular file (``read_wasm_file``), larger than ``MAX_WASM_BYTES``,
    not a component, not a retry-engine component, or (with ``expected_sha256``) not the
    pinned artifact — checked before anything is compiled or loaded — and naming the cause
    when this wasmtime-py cannot load it.
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
    if cached is not None and (compile_cache or not cached.from_disk_cache):
        return cached
    try:
        engine = get_engine()
        component = _read_cached(engine, sha256) if compile_cache else None
        from_disk = component is not None
        if component is None:
            try:
                component = Component(engine, data)
            except WasmtimeError as exc:
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: {wasm_path} is not a valid WebAssembly component: {exc}"
                ) from exc
            if compile_cache:
                _write_cached(component, sha256)
        loaded = _describe(wasm_path, engine, component, sha256)
    except RetryEngineLoadError:
        raise
    except Exception as exc:  # another wasmtime-py whose API differs: say which, and why
        raise RetryEngineLoadError(
            f"{MESSAGE_PREFIX}: cannot load {wasm_path} with {_wasmtime_py()}: {type(exc).__name__}: {exc}"
        ) from exc
    loaded.from_disk_cache = from_disk
    with _lock:
        known = _components.get(sha256)
        if known is None or (known.from_disk_cache and not from_disk):
            _components[sha256] = known = loaded
        return known


def clear_memory_cache() -> None:
    """Forget in-process compiled components (tests use this to exercise the disk cache)."""
    with _lock:
        _components.clear()
