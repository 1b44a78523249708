"""``results``: the hook's result objects are exactly the ones pydantic builds."""

from __future__ import annotations

import random
from typing import Any

import pytest
from cpex.framework import ToolPostInvokeResult, ToolPreInvokeResult
from pydantic import BaseModel, Field, model_validator

from cpex_retry_with_backoff_wasm import results


def validated(delay: int) -> Any:
    return ToolPostInvokeResult(retry_delay_ms=delay)


def same(a: Any, b: Any) -> bool:
    """Whether two results are the same in every way a reader of them could tell: type, field
    values and their order, fields set, extras, private attributes, dump, equality."""
    return bool(
        type(a) is type(b)
        and vars(a) == vars(b)
        and list(vars(a)) == list(vars(b))
        and a.model_fields_set == b.model_fields_set
        and a.model_extra == b.model_extra
        and a.__pydantic_private__ == b.__pydantic_private__
        and a.model_dump() == b.model_dump()
        and a == b
    )


def test_the_fast_builder_is_in_use_and_builds_what_pydantic_builds() -> None:
    build = results.delay_result_builder()
    assert build.__name__ == "build", "the copying builder should pass its check on this pydantic"
    rng = random.Random(5)
    for delay in [0, 1, 2**40 - 1, *(rng.randrange(2**40) for _ in range(200))]:
        got, want = build(delay), validated(delay)
        assert same(got, want)
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


class WithList(BaseModel):
    """A result whose default is a non-empty list: not shared, so not copied."""

    retry_delay_ms: int = 0
    tags: list[str] = Field(default_factory=lambda: ["a"])


class Inner(BaseModel):
    n: int = 0


class WithModel(BaseModel):
    """A result whose default is a model: not known to be immutable, so not copied."""

    retry_delay_ms: int = 0
    inner: Inner = Field(default_factory=Inner)


class Derived(BaseModel):
    """A result whose validation derives a field from the delay: a copy of a prototype would
    carry the prototype's, so the copying builder differs from pydantic."""

    retry_delay_ms: int = 0
    seconds: float = 0.0

    @model_validator(mode="after")
    def derive(self) -> Derived:
        self.seconds = self.retry_delay_ms / 1000
        return self


@pytest.mark.parametrize("cls", [WithList, WithModel, Derived])
def test_a_result_class_it_cannot_copy_is_built_by_the_validator(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseModel]
) -> None:
    # As a cpex whose result class has such a field would make it (the builder is made once per
    # process: forget the one made for the real class, before and after).
    results.delay_result_builder.cache_clear()
    monkeypatch.setattr(results, "ToolPostInvokeResult", cls)
    build = results.delay_result_builder()
    results.delay_result_builder.cache_clear()
    assert build.__name__ == "slow"
    for delay in (0, 4, 5_000):
        assert same(build(delay), cls(retry_delay_ms=delay))
    first, second = build(1), build(1)
    assert first is not second
    if cls is WithList:
        first.tags.append("b")
        assert second.tags == ["a"]


def test_the_pre_invoke_answer_is_a_fresh_continue_each_time() -> None:
    build = results.continue_result_builder()
    first, second = build(), build()
    want = ToolPreInvokeResult(continue_processing=True)
    assert same(first, want)
    assert same(second, want)
    assert first is not second
    first.metadata["x"] = 1
    assert second == want
