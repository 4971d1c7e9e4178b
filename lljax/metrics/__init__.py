"""Metric families as plug-ins: the registry and the built-in families.

    from lljax import metrics
    metrics.register(metrics.Family("param_norm", "member", lambda ctx, shared, m, key: {...}, columns=(...)))

A new family is one file (a `Family` and its function for one model or one pair) plus one `register` call;
`--metrics NAME` then computes it, its columns land in the tables, its heatmaps in figures/ and its
correlated columns in the report. Built-in: loss (always computed), hessian, curves, cka, l2 (on by default),
spectra, collapse, slices, surfaces and robust (asked for with --metrics; with robust and curves, the
companion robust_curves).
"""
from __future__ import annotations

from lljax.errors import LLJaxError
from lljax.metrics.family import Context, Family, Heatmap, Member, Shared

__all__ = ["Context", "Family", "Heatmap", "Member", "Shared", "FAMILIES", "register", "get", "default_names",
           "with_companions"]

FAMILIES: dict[str, Family] = {}


def register(family: Family, replace: bool = False) -> Family:
    """Add a family to the registry (by its name; `replace` to redefine one). Returns it."""
    if not isinstance(family, Family):
        raise LLJaxError(f"register takes an lljax.metrics.Family, got {type(family).__name__}")
    if family.name in FAMILIES and not replace and FAMILIES[family.name] is not family:
        raise LLJaxError(f"a metric family named {family.name!r} is already registered (replace=True redefines it)")
    FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise LLJaxError(f"unknown metric {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


def default_names() -> tuple[str, ...]:
    """The families computed when --metrics is not given."""
    return tuple(name for name, family in FAMILIES.items() if family.default)


def with_companions(names) -> tuple[str, ...]:
    """The families `names` (registration order) and every companion family all of whose families are among them."""
    names = set(names)
    return tuple(name for name, family in FAMILIES.items()
                 if name in names or (family.companion_of and set(family.companion_of) <= names))


def _register_builtins() -> None:
    from lljax.metrics import cka, collapse, curves, hessian, l2, loss, robust, slices, spectra, surfaces

    for module in (loss, hessian, curves, cka, l2, spectra, collapse, slices, surfaces):
        register(module.FAMILY)
    register(robust.FAMILY)
    register(robust.CURVES_FAMILY)


_register_builtins()
