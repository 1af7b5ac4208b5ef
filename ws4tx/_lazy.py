"""A package face whose public names are imported on first use (PEP 562).

A face lists where each public name is defined and delegates its module ``__getattr__``
and ``__dir__`` here: importing the package then loads none of its parts, so importing
one part stays light and no part imports a package that imports it back.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any


def attribute(package: str, where: Mapping[str, str], namespace: dict[str, Any],
              name: str) -> Any:
    """``name`` imported from the module ``where`` gives, then kept in ``namespace``."""
    module = where.get(name)
    if module is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    namespace[name] = value
    return value


def names(namespace: Mapping[str, Any], public: Iterable[str]) -> list[str]:
    """What ``dir()`` of the face shows: what it holds and every public name."""
    return sorted(set(namespace) | set(public))
