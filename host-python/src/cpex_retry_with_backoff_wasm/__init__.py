"""Retry-with-backoff plugin for cpex, backed by a sandboxed WebAssembly policy engine."""

from __future__ import annotations

from .engine import WasmRetryEngine
from .model import ConfigError, ConfigurationError, Policy, RetryEngineLoadError
from .plugin import RetryWithBackoffPlugin

__all__ = [
    "ConfigError",
    "ConfigurationError",
    "Policy",
    "RetryEngineLoadError",
    "RetryWithBackoffPlugin",
    "WasmRetryEngine",
]
