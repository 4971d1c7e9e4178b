"""Declared options: frozen-dataclass fields that carry their help, flag and choices, so a configuration section
and its command-line flags come from one declaration.

    @dataclasses.dataclass(frozen=True)
    class MyOptions:
        samples: int = options.option(256, "probe inputs per model", low=1)

A section with prefix `my` gets the flag `--my-samples` and the flat configuration key `my_samples`; its
values are checked by `check` (types, `low`/`high` bounds, `choices`), each problem a one-line LLJaxError.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from lljax.errors import LLJaxError


def option(default, help: str, *, low=None, high=None, low_open: bool = False, choices=None, flag: str | None = None,
           metavar: str | None = None, negate: str | None = None, parse=None):
    """A dataclass field with its help text and checks. low/high bound numbers (low_open: strictly above low);
    choices is a sequence or a function returning one; flag overrides the generated flag name; negate names a
    flag that sets a bool field to False (e.g. --per-seed-data for shared_data); parse reads a command-line
    value (default: the field's type)."""
    return dataclasses.field(default=default, metadata=dict(help=help, low=low, high=high, low_open=low_open,
                                                            choices=choices, flag=flag, metavar=metavar,
                                                            negate=negate, parse=parse))


def choices_of(f: dataclasses.Field):
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _unwrap(kind):
    """(base type, optional, element type of a tuple or None) of an annotation."""
    optional = False
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = len(args) < len(typing.get_args(kind))
        kind = args[0]
        origin = typing.get_origin(kind)
    if origin is tuple:
        return tuple, optional, typing.get_args(kind)[0]
    return kind, optional, None


def field_types(cls) -> dict[str, tuple]:
    """name -> (base type, optional, element type) of every field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: _unwrap(hints[f.name]) for f in dataclasses.fields(cls)}


def fields(cls) -> list[dataclasses.Field]:
    """The declared options of a dataclass (fields made with `option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _label(name: str, prefix: str) -> str:
    return f"{prefix} {name}".replace("_", " ").strip() if prefix else name.replace("_", " ")


def check(instance, prefix: str = "") -> None:
    """Check every declared option of a dataclass instance against its type, bounds and choices."""
    types_ = field_types(type(instance))
    for f in fields(type(instance)):
        value = getattr(instance, f.name)
        kind, optional, element = types_[f.name]
        label = _label(f.name, prefix)
        if value is None:
            if not optional:
                raise LLJaxError(f"{label} must be set")
            continue
        for v in (value if kind is tuple else (value,)):
            _check_value(v, element if kind is tuple else kind, f, label)


def _check_value(v, kind, f, label):
    meta = f.metadata
    if kind is bool:
        if not isinstance(v, bool):
            raise LLJaxError(f"{label} must be true or false, got {v!r}")
        return
    if kind in (int, float):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LLJaxError(f"{label} must be a finite number, got {v!r}")
        if kind is int and not float(v).is_integer():
            raise LLJaxError(f"{label} must be an integer, got {v}")
        low, high = meta.get("low"), meta.get("high")
        if low is not None and (v <= low if meta.get("low_open") else v < low):
            what = ("a positive integer" if kind is int and low == 1 else
                    f"{'above' if meta.get('low_open') else 'at least'} {low:g}")
            raise LLJaxError(f"{label} must be {what}, got {v:g}")
        if high is not None and v > high:
            raise LLJaxError(f"{label} must be at most {high:g}, got {v:g}")
    elif kind is str and not isinstance(v, str):
        raise LLJaxError(f"{label} must be a string, got {v!r}")
    choices = choices_of(f)
    if choices is not None and v not in choices:
        raise LLJaxError(f"unknown {label} {v!r}; choose one of {', '.join(map(str, choices))}")


def coerce(cls, values: dict[str, Any]) -> dict[str, Any]:
    """Values read from JSON or a preset as the field types want them: lists become tuples, integral floats
    of int fields become ints."""
    types_ = field_types(cls)
    out = {}
    for name, value in values.items():
        kind, _, element = types_.get(name, (None, False, None))
        if isinstance(value, list):
            value = tuple(value)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is tuple and element is int and isinstance(value, tuple):
            value = tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in value)
        out[name] = value
    return out
