"""Lazy, optional imports with a clear message naming the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional dependency is not installed."""


def optional_import(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` explaining how to get it.

    Args:
        module: dotted module name, e.g. ``"cvxpy"``.
        extra: the ``pip install 'dualattn[extra]'`` extra that installs it.
        purpose: what it is needed for, shown to the user.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in tests
        raise MissingDependencyError(
            f"{purpose} needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'dualattn[{extra}]'"
        ) from exc
