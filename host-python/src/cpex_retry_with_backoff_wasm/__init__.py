"""Retry-with-backoff plugin for cpex, backed by a sandboxed WebAssembly policy engine."""

from __future__ import annotations

from .instance import INSTANCES, Instance, OpenPolicy
from .model import ConfigError, ConfigurationError, Policy, RetryEngineLoadError
from .plugin import RetryWithBackoffPlugin

__all__ = [
    "INSTANCES",
    "ConfigError",
    "ConfigurationError",
    "Instance",
    "OpenPolicy",
    "Policy",
    "RetryEngineLoadError",
    "RetryWithBackoffPlugin",
]
