"""``RetryWithBackoffPlugin``: the cpex Plugin, a drop-in for cpex-retry-with-backoff.

Switching from the native plugin changes only the ``kind:`` line of the gateway's stanza to
``cpex_retry_with_backoff_wasm.RetryWithBackoffPlugin``: same hooks, config keys and results.
The class stays thin: every decision is made by the component, in the process's one instance
(``instance.Instance``), under the policy this object's configuration opened there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cpex.framework import (  # type: ignore[import-untyped, unused-ignore]
    Plugin,
    PluginConfig,
    PluginContext,
    ResourcePostFetchPayload,
    ResourcePostFetchResult,
    ToolPostInvokePayload,
    ToolPostInvokeResult,
    ToolPreInvokePayload,
    ToolPreInvokeResult,
)

from . import metrics
from .ceiling import read_ceiling
from .instance import INSTANCES, Instance, OpenPolicy
from .model import ConfigError, Opened
from .results import continue_result_builder, delay_result_builder, result_builder
from .sandbox import Clock, Seed
from .settings import HostSettings
from .signals import REASON_EXHAUSTED
from .wire import DELAY_MASK, REASON_MASK, REASON_SHIFT, REASONS, RETRY_COUNT_MASK, RETRY_COUNT_SHIFT

log = logging.getLogger(__name__)

#: The hook before which the gateway puts the tool's record (its annotations) in the global
#: context, and whose local context it marks on a timeout.
PRE_INVOKE_HOOK = "tool_pre_invoke"


def read_trace_id(extensions: Any) -> str | None:
    """Best-effort ``extensions.request.trace_id``: a non-empty str, else None; never raises."""
    if extensions is None:
        return None
    try:
        request = extensions.request
        if request is None:
            return None
        trace_id = request.trace_id
    except Exception:
        return None
    if isinstance(trace_id, str) and trace_id:
        return trace_id
    return None


class RetryWithBackoffPlugin(Plugin):  # type: ignore[misc, unused-ignore]  # cpex is untyped
    """Retry-with-backoff policy for tool results, decided by a sandboxed Wasm engine.

    ``clock`` (monotonic nanoseconds) and ``seed`` replace the component's WASI clock and
    seed, ``wall_clock`` (epoch seconds) the host's clock for absolute delay hints; they exist
    for deterministic tests and are never set by the plugin manager.

    Every plugin object of the process uses one instance of the component (per component and
    host limits); its configuration is a policy there, shared with every object of the same
    stanza name, configuration and gateway ceiling: the gateway builds one object per context
    and rebuilds them every 30 s, and a rebuilt object continues every count and budget.
    """

    def __init__(
        self,
        config: PluginConfig,
        *,
        clock: Clock | None = None,
        seed: Seed | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(config)
        raw = dict(config.config or {})
        settings = HostSettings.read(raw)
        self._instance = INSTANCES.attach(settings, clock=clock, seed=seed, wall_clock=wall_clock)
        hooks = _hook_names(config.hooks)

        def missing_hook(opened: Opened) -> tuple[ConfigError, ...]:
            if not opened.reads_call_facts or PRE_INVOKE_HOOK in hooks:
                return ()
            return (
                ConfigError(
                    "hooks",
                    f"must include {PRE_INVOKE_HOOK}: non_idempotent_retries reads the tool's "
                    "annotations and the timeout mark, which the gateway gives only to a "
                    f"plugin with that hook (got {list(hooks)})",
                ),
            )

        self._policy = self._instance.open(
            config.name,
            raw,
            read_ceiling(),
            settings.errors,
            prometheus_metrics=settings.prometheus_metrics,
            refuse=missing_hook,
        )
        self._policy_metadata = self._policy.global_policy.metadata()
        # Bound once: the hook runs on every tool result.
        self._decide = self._instance.decide
        self._result = result_builder()
        self._delay_result = delay_result_builder()
        self._continue = continue_result_builder()
        self._metrics = metrics.attach(self, config.name, self._policy)
        log.info(
            "retry_with_backoff_wasm: loaded %s (contract %s)",
            self._instance.wasm_path,
            self._instance.contract_version,
        )

    @property
    def policy(self) -> OpenPolicy:
        """This object's policy in the instance (its id, what it reads, its global policy)."""
        return self._policy

    @property
    def instance(self) -> Instance:
        """The process's instance of the component this object decides with."""
        return self._instance

    def reload(self, wasm_path: str | None = None, wasm_sha256: str | None = None) -> int:
        """Hot-swap the component (default: re-read ``wasm_path``), keeping live retry state.

        Returns the number of retry-state entries carried over.  On any problem with the new
        build (including a ``wasm_sha256`` pin it does not match) it raises
        ``RetryEngineLoadError`` and the previous instance keeps serving.  Plugin objects built
        later from the same stanza attach to the reloaded instance and its state.
        """
        return self._instance.reload(wasm_path, wasm_sha256)

    async def shutdown(self) -> None:
        """Nothing to release: the policy stays for the objects still using it and for the next
        one, until nobody has used it for ``state_ttl_ms`` (the engine releases it then)."""

    async def tool_post_invoke(
        self,
        payload: ToolPostInvokePayload,
        context: PluginContext,
        extensions: Any = None,
    ) -> ToolPostInvokeResult:
        """Ask for a retry (``retry_delay_ms`` > 0) when the tool result is a retriable failure."""
        global_context = context.global_context
        tool = payload.name
        decision = self._decide(self._policy, tool, global_context, payload.result, context)
        if self._metrics is not None:
            (self._metrics.queues.get(tool) or self._metrics.queue(tool))(decision)
        delay = decision & DELAY_MASK
        reason = (decision >> REASON_SHIFT) & REASON_MASK
        if reason == REASON_EXHAUSTED:
            # The native plugin's warning, word for word.
            log.warning(
                "tool_post_invoke: tool=%s request_id=%s exhausted after %d failure(s)",
                payload.name,
                global_context.request_id,
                (decision >> RETRY_COUNT_SHIFT) & RETRY_COUNT_MASK,
            )
        trace_id = None if extensions is None else read_trace_id(extensions)
        if trace_id is None:
            return self._delay_result(delay)
        metrics: dict[str, Any] = {
            "retry_count": (decision >> RETRY_COUNT_SHIFT) & RETRY_COUNT_MASK,
            "retry_delay_ms": delay,
        }
        if self._policy.metrics_reason:
            metrics["reason"] = REASONS[reason] if reason < len(REASONS) else str(reason)
        return self._result({"retry_delay_ms": delay, "metadata": {"retry_with_backoff": metrics}})

    async def tool_pre_invoke(
        self,
        payload: ToolPreInvokePayload,
        context: PluginContext,
        extensions: Any = None,
    ) -> ToolPreInvokeResult:
        """Nothing to do: registering this hook is what makes the gateway hand the tool's
        annotations and its timeout mark to ``tool_post_invoke`` (``non_idempotent_retries``)."""
        return self._continue()

    async def resource_post_fetch(
        self,
        payload: ResourcePostFetchPayload,
        context: PluginContext,
    ) -> ResourcePostFetchResult:
        """Report the global retry policy as ``metadata["retry_policy"]``."""
        policy = self._policy_metadata
        return ResourcePostFetchResult(
            metadata={"retry_policy": {**policy, "retry_on_status": list(policy["retry_on_status"])}}
        )


def _hook_names(hooks: Any) -> tuple[str, ...]:
    """The stanza's hook names (str or str-valued enum members)."""
    return tuple(str(getattr(hook, "value", hook)) for hook in hooks or ())


__all__ = ["RetryWithBackoffPlugin", "read_trace_id"]
