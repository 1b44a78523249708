"""Building the hooks' results: on every tool call, so as cheaply as pydantic allows, and always
the very instance pydantic would build.

* ``result_builder``: ``fields -> ToolPostInvokeResult(**fields)`` through the model's own
  schema validator (no ``BaseModel.__init__`` keyword packing or extra frame), cheaper than
  the constructor.
* ``delay_result_builder``: ``delay -> ToolPostInvokeResult(retry_delay_ms=delay)``, the
  answer to nearly every call, cheapest of all: a validated prototype's field values are copied
  into a new instance (``model_construct``'s recipe, without its per-call inspection of the
  default factories, which is dear), with fresh empty containers where the prototype has them.
  Before it is used, its instances are compared with validated ones (fields, fields set,
  extras, private attributes, dump); on any difference, or a default it cannot copy safely, the
  validator builds them instead.
* ``continue_result_builder``: ``() -> ToolPreInvokeResult(continue_processing=True)``, the
  one answer of the no-op ``tool_pre_invoke``, by the same recipe and the same checks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from cpex.framework import (  # type: ignore[import-untyped, unused-ignore]
    ToolPostInvokeResult,
    ToolPreInvokeResult,
)
from pydantic import BaseModel

from .wire import DELAY_MASK

#: Delays the fast builder is checked on before use (0, small, the wire format's largest).
_CHECKED_DELAYS = (0, 1, 5_000, DELAY_MASK)
_EMPTY_MUTABLE = (dict, list, set)


def result_builder(cls: Any = ToolPostInvokeResult) -> Callable[[dict[str, Any]], Any]:
    """``fields -> cls(**fields)``; a result class with an ``__init__`` of its own gets its
    constructor."""
    validator = getattr(cls, "__pydantic_validator__", None)
    if validator is None or cls.__init__ is not BaseModel.__init__:
        return lambda fields: cls(**fields)
    build: Callable[[dict[str, Any]], Any] = validator.validate_python
    return build


# Built once per process and shared by every plugin object (the gateway builds one per context):
# the builders hold no per-object state.
@cache
def delay_result_builder() -> Callable[[int], ToolPostInvokeResult]:
    """``delay -> ToolPostInvokeResult(retry_delay_ms=delay)``, checked equal to pydantic's."""
    return _checked(ToolPostInvokeResult, "retry_delay_ms", _CHECKED_DELAYS)


@cache
def continue_result_builder() -> Callable[[], ToolPreInvokeResult]:
    """``() -> ToolPreInvokeResult(continue_processing=True)``, checked equal to pydantic's."""
    build = _checked(ToolPreInvokeResult, "continue_processing", (True,))
    return lambda: build(True)


def _checked(cls: Any, field: str, checked: tuple[Any, ...]) -> Callable[[Any], Any]:
    """``value -> cls(**{field: value})``: the copying builder where it builds, for each of the
    ``checked`` values, what the validator builds; else the validator."""
    validated = result_builder(cls)

    def slow(value: Any) -> Any:
        return validated({field: value})

    fast = _copying_builder(validated, field, checked[0])
    if fast is None or not all(_same(fast(v), slow(v)) for v in checked):
        return slow
    return fast


def _copying_builder(
    validated: Callable[[dict[str, Any]], Any], field: str, example: Any
) -> Callable[[Any], Any] | None:
    prototype = validated({field: example})
    names = ("__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")
    slots = {name: BaseModel.__dict__.get(name) for name in names}
    if any(not hasattr(slot, "__set__") for slot in slots.values()):
        return None  # another pydantic layout
    if getattr(prototype, "__pydantic_extra__", None) is not None:
        return None
    if getattr(prototype, "__pydantic_private__", None) is not None:
        return None
    template = dict(prototype.__dict__)
    fresh: list[tuple[str, type]] = []
    for name, value in template.items():
        if type(value) in _EMPTY_MUTABLE:
            if value:
                return None  # a non-empty mutable default: not shared, not copied here
            fresh.append((name, type(value)))
        elif not isinstance(value, bool | int | float | str | bytes | tuple | frozenset | type(None)):
            return None  # a default of a kind this builder does not know to be immutable
    cls = type(prototype)
    new = object.__new__
    set_fields_set = slots["__pydantic_fields_set__"].__set__  # type: ignore[union-attr]
    set_extra = slots["__pydantic_extra__"].__set__  # type: ignore[union-attr]
    set_private = slots["__pydantic_private__"].__set__  # type: ignore[union-attr]
    fresh_fields = tuple(fresh)

    def build(value: Any) -> Any:
        result = new(cls)
        values = result.__dict__
        values.update(template)
        values[field] = value
        for name, kind in fresh_fields:
            values[name] = kind()
        set_fields_set(result, {field})  # as validating {field: ...} sets it
        set_extra(result, None)
        set_private(result, None)
        return result

    return build


def _same(a: Any, b: Any) -> bool:
    """Whether two results are the same in every way a reader of them could tell."""
    return bool(
        type(a) is type(b)
        and a.__dict__ == b.__dict__
        and list(a.__dict__) == list(b.__dict__)
        and a.__pydantic_fields_set__ == b.__pydantic_fields_set__
        and a.__pydantic_extra__ == b.__pydantic_extra__
        and a.__pydantic_private__ == b.__pydantic_private__
        and a.model_dump() == b.model_dump()
        and a == b
    )


__all__ = ["continue_result_builder", "delay_result_builder", "result_builder"]
