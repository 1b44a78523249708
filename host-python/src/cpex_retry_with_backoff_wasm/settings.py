"""``HostSettings``: the config keys the host reads itself, checked and named by key path.

The component validates every other key (and reports its problems together with these); the
host only reads two of the component's keys, ``state_ttl_ms`` and ``max_state_entries``, to
bound what it mirrors of the component's retry state (``handles``), and the memory they need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from .loader import compile_cache_setting
from .metrics import read_setting as read_metrics_setting
from .model import MESSAGE_PREFIX, ConfigError, ConfigurationError, RetryEngineLoadError

#: Host-only config keys (the component ignores keys it does not know).
KEY_WASM_PATH: Final = "wasm_path"
KEY_WASM_SHA256: Final = "wasm_sha256"
KEY_FUEL: Final = "wasm_fuel"
KEY_MAX_MEMORY: Final = "wasm_max_memory_bytes"
#: Component keys the host reads (the component validates them).
KEY_MAX_STATE_ENTRIES: Final = "max_state_entries"
KEY_STATE_TTL_MS: Final = "state_ttl_ms"

#: The most fuel one call into the instance may burn (one unit ~ one Wasm instruction).  A
#: decision takes a few thousand; the budget only stops a runaway guest.
DEFAULT_FUEL: Final = 10_000_000
#: Linear-memory cap of the instance.
DEFAULT_MAX_MEMORY_BYTES: Final = 64 * 1024 * 1024
#: The component's defaults and range for the two keys the host reads.
DEFAULT_MAX_STATE_ENTRIES: Final = 100_000
DEFAULT_STATE_TTL_MS: Final = 300_000
MAX_STATE_ENTRIES: Final = 1_000_000
#: Guest memory a configuration needs: a fixed part plus, per `max_state_entries`, the slot,
#: index and handle tables (allocated for the bound on the first failure) and a gateway-sized
#: key (tool name + UUID request id), as the memory bench measures it
#: (`cargo run ... --example memory`).
GUEST_BASE_BYTES: Final = 2 * 1024 * 1024
GUEST_BYTES_PER_ENTRY: Final = 150
BUNDLED_WASM: Final = "retry_engine.wasm"


def bundled_wasm_path() -> Path:
    """Where the component shipped inside this package lives."""
    return Path(str(resources.files(__package__ or "cpex_retry_with_backoff_wasm").joinpath(BUNDLED_WASM)))


def is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def check_sha256(value: Any) -> str:
    """A ``wasm_sha256`` pin, lower-cased; ``ConfigurationError`` naming the key otherwise."""
    if not (isinstance(value, str) and is_sha256_hex(value)):
        raise ConfigurationError(
            (ConfigError(KEY_WASM_SHA256, f"must be 64 hexadecimal digits, got {value!r}"),)
        )
    return value.lower()


def _positive_int(config: Mapping[str, Any], key: str, default: int, errors: list[ConfigError]) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        errors.append(ConfigError(key, f"must be a positive integer, got {value!r}"))
        return default
    return value


def _component_int(config: Mapping[str, Any], key: str, default: int, top: int) -> int:
    """A component key as the component will read it; invalid values are the component's to
    report, and the host falls back to the default meanwhile."""
    value = config.get(key, default)
    return value if type(value) is int and 0 < value <= top else default


@dataclass(frozen=True, slots=True)
class HostSettings:
    """What the host reads of the plugin config."""

    #: The component to load (``wasm_path``, else the bundled one).
    wasm_path: Path
    #: ``wasm_sha256``, lower-cased, or None.
    wasm_sha256: str | None
    #: ``wasm_fuel``: the most fuel one call may burn.
    fuel: int
    #: ``wasm_max_memory_bytes``: the instance's linear-memory cap.
    max_memory_bytes: int
    #: ``wasm_compile_cache``: false never reads or writes the on-disk compile cache.
    compile_cache: bool
    #: ``prometheus_metrics``: the plugin exports its metrics (``metrics``).
    prometheus_metrics: bool
    #: ``max_state_entries`` and ``state_ttl_ms`` as the component applies them.
    max_state_entries: int
    state_ttl_ms: int
    #: Problems to report together with the component's (every problem at once).
    errors: tuple[ConfigError, ...]

    @classmethod
    def read(cls, config: Mapping[str, Any]) -> HostSettings:
        """Read and check the host keys of ``config``.

        Raises:
            ConfigurationError: ``wasm_path`` or ``wasm_sha256`` is malformed (nothing can be
                loaded); other problems are kept in ``errors``.
            RetryEngineLoadError: no ``wasm_path`` and the bundled component is missing.
        """
        errors: list[ConfigError] = []
        fuel = _positive_int(config, KEY_FUEL, DEFAULT_FUEL, errors)
        max_memory = _positive_int(config, KEY_MAX_MEMORY, DEFAULT_MAX_MEMORY_BYTES, errors)
        _check_memory(config, max_memory, errors)
        compile_cache = compile_cache_setting(config, errors)
        prometheus_metrics = read_metrics_setting(config, errors)
        wasm_path = config.get(KEY_WASM_PATH)
        if wasm_path is None:
            path = bundled_wasm_path()
            if not path.is_file():
                raise RetryEngineLoadError(
                    f"{MESSAGE_PREFIX}: the bundled component {path} is missing "
                    f"(build it with `make wasm`, or set {KEY_WASM_PATH})"
                )
        elif isinstance(wasm_path, str | Path):
            path = Path(wasm_path)
        else:
            errors.append(ConfigError(KEY_WASM_PATH, f"must be a path string, got {wasm_path!r}"))
            raise ConfigurationError(tuple(errors))
        pin = config.get(KEY_WASM_SHA256)
        if pin is not None:
            try:
                pin = check_sha256(pin)
            except ConfigurationError as exc:
                raise ConfigurationError((*errors, *exc.errors)) from None
        return cls(
            wasm_path=path,
            wasm_sha256=pin,
            fuel=fuel,
            max_memory_bytes=max_memory,
            compile_cache=compile_cache,
            prometheus_metrics=prometheus_metrics,
            max_state_entries=_component_int(
                config, KEY_MAX_STATE_ENTRIES, DEFAULT_MAX_STATE_ENTRIES, MAX_STATE_ENTRIES
            ),
            state_ttl_ms=_component_int(config, KEY_STATE_TTL_MS, DEFAULT_STATE_TTL_MS, 1 << 64),
            errors=tuple(errors),
        )


def _check_memory(config: Mapping[str, Any], max_memory: int, errors: list[ConfigError]) -> None:
    """A ``max_state_entries`` whose tables cannot fit the memory cap is refused now, rather
    than failing every call once the table has grown."""
    entries = config.get(KEY_MAX_STATE_ENTRIES)
    if type(entries) is not int or not 0 < entries <= MAX_STATE_ENTRIES:
        return  # absent (the default fits), or invalid: the component says why
    need = GUEST_BASE_BYTES + entries * GUEST_BYTES_PER_ENTRY
    if need > max_memory:
        mib = 1024 * 1024
        errors.append(
            ConfigError(
                KEY_MAX_STATE_ENTRIES,
                f"{entries} entries need about {-(-need // mib)} MiB of guest memory "
                f"(~{GUEST_BYTES_PER_ENTRY} bytes each), more than {KEY_MAX_MEMORY} allows "
                f"({max_memory // mib} MiB): lower {KEY_MAX_STATE_ENTRIES} or raise {KEY_MAX_MEMORY}",
            )
        )


__all__ = [
    "DEFAULT_FUEL",
    "DEFAULT_MAX_MEMORY_BYTES",
    "HostSettings",
    "bundled_wasm_path",
    "check_sha256",
]
