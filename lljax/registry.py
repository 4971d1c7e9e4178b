"""Plug-ins chosen by name: a registered name or an import path `package.module:attribute`.

Models, losses and optimisers are looked up the same way, so `--model mlp` and `--model mypkg.nets:wide_cnn`
(the form uvicorn and gunicorn use for applications) go through one function.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Mapping

from lljax.errors import LLJaxError


def is_import_path(name: str) -> bool:
    return isinstance(name, str) and ":" in name


@functools.lru_cache(maxsize=None)
def import_object(path: str, what: str) -> Any:
    """The object named by `package.module:attribute` (dotted attributes allowed); a one-line LLJaxError when
    the module does not import or lacks the attribute."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise LLJaxError(f"{what} import path {path!r} must look like package.module:attribute")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- any failure of the user's module is reported the same way
        raise LLJaxError(f"{what} {path!r}: module {module_name!r} does not import "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise LLJaxError(f"{what} {path!r}: {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj


def resolve(name: Any, table: Mapping[str, Any], what: str) -> Any:
    """`table[name]` for a registered name, the imported object for an import path, `name` itself for an
    object that is not a string."""
    if not isinstance(name, str):
        return name
    if name in table:
        return table[name]
    if is_import_path(name):
        return import_object(name, what)
    raise LLJaxError(f"unknown {what} {name!r}; choose one of {', '.join(table)} or give package.module:attribute")


def describe(obj: Any) -> str:
    """A name for an object passed in Python (recorded in config.json): its import path where it has one."""
    if isinstance(obj, str):
        return obj
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module and name and "<" not in name:
        return f"{module}:{name}"
    return f"<{type(obj).__name__}>"
