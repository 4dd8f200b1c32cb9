"""dualattn: medical-image classifiers whose attention maps are faithful and consistent.

Implements and extends "Dual Decomposition of Convex Optimization Layers for Consistent
Attention in Medical Images" (Ron, Weiler-Sagie, Hazan, ICML 2022).

Importing the package has no side effects and imports nothing heavy: submodules
(``dualattn.consistency``, ``dualattn.models``, ``dualattn.data``, ...) load on first access.
"""

from __future__ import annotations

from ._lazy import lazy_exports

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
    "runs",
    "pipelines",
)

__all__ = ["__version__", *_SUBMODULES]


__getattr__, __dir__ = lazy_exports(__name__, submodules=_SUBMODULES)
