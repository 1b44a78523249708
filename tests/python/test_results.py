"""``results``: the hook's result objects are exactly the ones pydantic builds."""

from __future__ import annotations

import random
from typing import Any

from cpex.framework import ToolPostInvokeResult, ToolPreInvokeResult
from pydantic import BaseModel, Field

from cpex_retry_with_backoff_wasm import results


def validated(delay: int) -> Any:
    return ToolPostInvokeResult(retry_delay_ms=delay)


def test_the_fast_builder_is_in_use_and_builds_what_pydantic_builds() -> None:
    build = results.delay_result_builder()
    assert build.__name__ == "build", "the copying builder should pass its check on this pydantic"
    rng = random.Random(5)
    for delay in [0, 1, 2**40 - 1, *(rng.randrange(2**40) for _ in range(200))]:
        got, want = build(delay), validated(delay)
        assert results._same(got, want)
        assert got.model_fields_set == want.model_fields_set == {"retry_delay_ms"}


def test_results_share_no_mutable_state() -> None:
    build = results.delay_result_builder()
    first, second = build(1), build(2)
    first.metadata["x"] = 1
    first.background_tasks.append("t")
    first.executions.append("e")
    first.model_fields_set.add("metadata")
    assert second == validated(2)
    assert build(3) == validated(3)
    # Assignment goes through pydantic as on any model.
    second.retry_delay_ms = 9
    assert second.retry_delay_ms == 9
    assert "retry_delay_ms" in second.model_fields_set


def test_a_default_it_cannot_copy_falls_back_to_the_validator() -> None:
    class WithList(BaseModel):
        retry_delay_ms: int = 0
        tags: list[str] = Field(default_factory=lambda: ["a"])

    class Inner(BaseModel):
        n: int = 0

    class WithModel(BaseModel):
        retry_delay_ms: int = 0
        inner: Inner = Field(default_factory=Inner)

    for cls in (WithList, WithModel):
        assert results._copying_builder(lambda fields, cls=cls: cls(**fields), "retry_delay_ms", 0) is None


def test_a_builder_that_differs_from_pydantic_is_not_used(monkeypatch: Any) -> None:
    real = results._copying_builder

    def off_by_one(validated_: Any, field: str, value: Any) -> Any:
        build = real(validated_, field, value)
        return lambda delay: build(delay + 1)

    monkeypatch.setattr(results, "_copying_builder", off_by_one)
    build = results.delay_result_builder()
    assert build.__name__ == "slow"
    assert build(4) == validated(4)


def test_the_pre_invoke_answer_is_a_fresh_continue_each_time() -> None:
    build = results.continue_result_builder()
    first, second = build(), build()
    want = ToolPreInvokeResult(continue_processing=True)
    assert results._same(first, want)
    assert results._same(second, want)
    assert first is not second
    first.metadata["x"] = 1
    assert second == want
