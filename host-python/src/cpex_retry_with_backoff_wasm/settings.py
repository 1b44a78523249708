"""``HostSettings``: the config keys the host reads itself, checked and named by key path.

The component validates every other key (and reports its problems together with these); the
host reads none of them: defaults and limits of the policy are the component's.
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

#: The most fuel one call into the instance may burn (one unit ~ one Wasm instruction).  A
#: decision takes a few thousand; the budget only stops a runaway guest.
DEFAULT_FUEL: Final = 10_000_000
#: Linear-memory cap of the instance (the component bounds its state within it: ``init``).
DEFAULT_MAX_MEMORY_BYTES: Final = 64 * 1024 * 1024
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
            errors=tuple(errors),
        )


__all__ = [
    "DEFAULT_FUEL",
    "DEFAULT_MAX_MEMORY_BYTES",
    "HostSettings",
    "bundled_wasm_path",
    "check_sha256",
]
