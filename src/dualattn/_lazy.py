"""Lazy package exports: names that load their submodule on first access.

Keeps ``import dualattn`` (and ``dualattn.data``, ``dualattn.train``) cheap and free of side
effects while the public names stay importable from the package.

Example:
    In a package ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {"fit": "run"}, submodules=("run",))
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Iterable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, attributes: Mapping[str, str] | None = None, *, submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for ``package``.

    Args:
        package: the package's ``__name__``.
        attributes: public name -> submodule (relative to ``package``) that defines it.
        submodules: submodules that are themselves public names (``dualattn.models`` ...).

    Returns:
        ``(__getattr__, __dir__)``: the first imports on first access and caches the value in the
        package's namespace (so it runs once per name); the second lists the package's ``__all__``.
    """
    attrs = dict(attributes or {})
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in attrs:
            value = getattr(importlib.import_module(f"{package}.{attrs[name]}"), name)
        elif name in subs:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(getattr(sys.modules[package], "__all__", [*attrs, *subs]))

    return __getattr__, __dir__
