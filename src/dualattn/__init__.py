"""dualattn: medical-image classifiers whose attention maps are faithful and consistent.

Implements and extends "Dual Decomposition of Convex Optimization Layers for Consistent
Attention in Medical Images" (Ron, Weiler-Sagie, Hazan, ICML 2022).

Importing the package has no side effects and imports nothing heavy: submodules
(``dualattn.consistency``, ``dualattn.models``, ``dualattn.data``, ...) load on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "attention",
    "consistency",
    "models",
    "data",
    "explain",
    "evaluate",
    "train",
    "report",
    "weights",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'dualattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
