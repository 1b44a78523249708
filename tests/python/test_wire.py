"""wire.py: the host's wire names and values are exactly those of ``wit/wire.json``.

The guest's ``wire`` tests check ``guest/src/wire.rs`` against the same file, so a change on either
side that the other does not make fails one of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from cpex_retry_with_backoff_wasm import signals, wire

WIRE_JSON = Path(__file__).resolve().parents[2] / "wit" / "wire.json"


def _as_json(value: object) -> object:
    """A wire value as JSON reads it back (tuples become lists)."""
    return json.loads(json.dumps(value))


def test_the_module_declares_exactly_the_names_and_values_of_wire_json() -> None:
    spec = json.loads(WIRE_JSON.read_text(encoding="utf-8"))
    declared = {name: _as_json(value) for name, value in wire.as_dict().items()}
    assert sorted(declared) == sorted(spec), "names differ between wire.py and wit/wire.json"
    assert declared == spec


def test_as_dict_lists_every_public_constant_of_the_module() -> None:
    """Nothing in ``wire`` escapes the comparison above (e.g. a lower-case constant)."""
    public = {
        name
        for name, value in vars(wire).items()
        if not name.startswith("_") and isinstance(value, int | tuple) and not isinstance(value, bool)
    }
    assert public == set(wire.as_dict())


def test_signals_uses_the_wire_values_rather_than_copies() -> None:
    for name, value in wire.as_dict().items():
        if hasattr(signals, name):
            assert getattr(signals, name) is value, f"signals.{name} is a copy, not wire.{name}"
    assert wire.REASONS.index("retry") == signals.REASON_RETRY
    assert wire.REASONS.index("exhausted") == signals.REASON_EXHAUSTED
