"""Aggregation over runs (seeds): mean and sample standard deviation, ignoring missing values.

Example:
    >>> from dualattn.evaluate.statistics import mean_std
    >>> s = mean_std([1.0, 3.0, float("nan")])
    >>> s["mean"], s["std"], s["n"]
    (2.0, 1.4142135623730951, 2)
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Sequence

__all__ = ["mean_std"]


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` over the finite entries of ``values``.

    The std is the sample standard deviation (ddof = 1; 0.0 for a single value); ``mean`` and ``std``
    are ``None`` when no entry is finite. ``values`` keeps every entry as given (``None`` stays
    ``None``), so a reader sees which run lacks a number.
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": [None if v is None else float(v) for v in values]}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": [float(v) for v in values],
    }
