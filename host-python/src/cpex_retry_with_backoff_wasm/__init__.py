"""Retry-with-backoff plugin for cpex, backed by a sandboxed WebAssembly policy engine."""

from __future__ import annotations

from .model import ConfigError, ConfigurationError, Policy, RetryEngineLoadError
from .plugin import RetryWithBackoffPlugin
from .retry_engine import RetryEngine, WasmRetryEngine

__all__ = [
    "ConfigError",
    "ConfigurationError",
    "Policy",
    "RetryEngine",
    "RetryEngineLoadError",
    "RetryWithBackoffPlugin",
    "WasmRetryEngine",
]
