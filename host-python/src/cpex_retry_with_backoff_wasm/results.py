"""Building the hook's ``ToolPostInvokeResult``: on every tool result, so as cheaply as pydantic
allows, and always the very instance pydantic would build.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cpex.framework import ToolPostInvokeResult  # type: ignore[import-untyped, unused-ignore]
from pydantic import BaseModel

#: Delays the fast builder is checked on before use (0, small, the wire format's largest).
_CHECKED_DELAYS = (0, 1, 5_000, (1 << 40) - 1)
_EMPTY_MUTABLE = (dict, list, set)


def result_builder() -> Callable[[dict[str, Any]], ToolPostInvokeResult]:
    """``fields -> ToolPostInvokeResult(**fields)``; a result class with an ``__init__`` of its
    own gets its constructor."""
    validator = getattr(ToolPostInvokeResult, "__pydantic_validator__", None)
    if validator is None or ToolPostInvokeResult.__init__ is not BaseModel.__init__:
        return lambda fields: ToolPostInvokeResult(**fields)
    build: Callable[[dict[str, Any]], ToolPostInvokeResult] = validator.validate_python
    return build


def delay_result_builder() -> Callable[[int], ToolPostInvokeResult]:
    """``delay -> ToolPostInvokeResult(retry_delay_ms=delay)``, checked equal to pydantic's."""
    validated = result_builder()

    def slow(delay: int) -> ToolPostInvokeResult:
        return validated({"retry_delay_ms": delay})

    fast = _copying_builder(validated)
    if fast is None or not all(_same(fast(d), slow(d)) for d in _CHECKED_DELAYS):
        return slow
    return fast


def _copying_builder(
    validated: Callable[[dict[str, Any]], ToolPostInvokeResult],
) -> Callable[[int], ToolPostInvokeResult] | None:
    prototype = validated({"retry_delay_ms": 0})
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

    def build(delay: int) -> ToolPostInvokeResult:
        result = new(cls)
        values = result.__dict__
        values.update(template)
        values["retry_delay_ms"] = delay
        for name, kind in fresh_fields:
            values[name] = kind()
        set_fields_set(result, {"retry_delay_ms"})  # as validating {"retry_delay_ms": ...} sets it
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


__all__ = ["delay_result_builder", "result_builder"]
