"""Statistics over runs (seeds) and test images: mean ± sample std, and the bootstrap's building blocks.

* :func:`mean_std` -- mean and sample standard deviation over runs, ignoring missing values;
* :func:`bootstrap_indices`, :func:`resample_counts`, :func:`strata_runs` -- resamples of test images
  drawn independently per stratum (one stratum per seed), as image multiplicities;
* :func:`balanced_accuracy_curves`, :func:`trapezoid_auc` -- balanced accuracy per removed fraction on
  many resamples at once, and the curve's AUC (×100);
* :func:`percentile_interval`, :func:`bootstrap_p_value` -- what a bootstrap distribution says.

The paired bootstrap and the ``comparisons`` records built on these are in
:mod:`dualattn.evaluate.comparisons`. Everything here is NumPy, float64, and deterministic given its
arguments (the only randomness is :func:`bootstrap_indices`' ``seed``).

Example:
    >>> from dualattn.evaluate.statistics import mean_std
    >>> s = mean_std([1.0, 3.0, float("nan")])
    >>> s["mean"], s["std"], s["n"]
    (2.0, 1.4142135623730951, 2)
"""

from __future__ import annotations

import math
import numbers
import statistics
from typing import Any, Sequence

import numpy as np

__all__ = [
    "mean_std",
    "bootstrap_indices",
    "resample_counts",
    "strata_runs",
    "balanced_accuracy_curves",
    "trapezoid_auc",
    "percentile_interval",
    "bootstrap_p_value",
]


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


# --------------------------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------------------------


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def bootstrap_indices(n_boot: int, n_strata: int, n: int, *, seed: int = 0) -> np.ndarray:
    """Image indices of ``n_boot`` bootstrap replicates, drawn independently per stratum.

    Each replicate and stratum draws ``n`` of the ``n`` images uniformly with replacement.

    Args:
        n_boot: number of replicates ``B``.
        n_strata: number of strata ``S`` (one per seed).
        n: number of images.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same indices.

    Returns:
        ``(B, S, n)`` int64 indices in ``[0, n)``.

    Example:
        >>> bootstrap_indices(4, 3, 5, seed=0).shape
        (4, 3, 5)
    """
    b, s, m = _positive_int("n_boot", n_boot), _positive_int("n_strata", n_strata), _positive_int("n", n)
    return np.random.default_rng(seed).integers(0, m, size=(b, s, m), dtype=np.int64)


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How many times each image occurs in each resample.

    A statistic that is a function of the resampled multiset (a mean, a balanced accuracy) is a
    weighted statistic of the original images with these counts as weights, which lets one matrix
    product evaluate every replicate.

    Args:
        indices: ``(..., m)`` integer indices in ``[0, n)`` (e.g. ``(B, S, n)`` from
            :func:`bootstrap_indices`).
        n: number of images.

    Returns:
        ``(..., n)`` float64 counts; each row sums to ``m``.

    Example:
        >>> resample_counts(np.array([[0, 0, 2]]), 3).tolist()
        [[2.0, 0.0, 1.0]]
    """
    n = _positive_int("n", n)
    idx = np.asarray(indices)
    if idx.ndim < 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be an integer array (..., m), got dtype {idx.dtype} shape {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"indices must lie in [0, {n}), got range [{idx.min()}, {idx.max()}]")
    lead = idx.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n + idx.reshape(rows, -1)).ravel()
    return np.bincount(flat, minlength=rows * n).astype(np.float64).reshape(*lead, n)


def strata_runs(n_runs_a: int, n_runs_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair the runs of two methods into strata: stratum ``s`` holds A's run ``s mod R_a`` and B's
    run ``s mod R_b``, for ``s = 0 .. max(R_a, R_b) - 1``.

    Returns:
        ``(runs_a, runs_b)``, two ``(S,)`` int64 arrays.

    Example:
        >>> [r.tolist() for r in strata_runs(3, 2)]
        [[0, 1, 2], [0, 1, 0]]
    """
    ra, rb = _positive_int("n_runs_a", n_runs_a), _positive_int("n_runs_b", n_runs_b)
    s = np.arange(max(ra, rb), dtype=np.int64)
    return s % ra, s % rb


# --------------------------------------------------------------------------------------------
# balanced accuracy and curve AUC on many resamples at once
# --------------------------------------------------------------------------------------------


def balanced_accuracy_curves(preds: np.ndarray, labels: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """Balanced accuracy per fraction of every stratum's predictions, on every resample.

    Balanced accuracy is sklearn's: the mean recall over the classes present in the (resampled)
    labels. With ``counts`` (image multiplicities, see :func:`resample_counts`) image ``i`` counts
    ``counts[b, s, i]`` times in replicate ``b`` of stratum ``s``; class ``c``'s recall is
    ``sum_i counts * [pred == c == label] / sum_i counts * [label == c]`` and a class whose
    resampled count is 0 is absent.

    Args:
        preds: ``(S, N, F)`` integer predicted classes: stratum ``s``, image ``n``, fraction ``f``.
        labels: ``(N,)`` integer true classes (any integer values).
        counts: ``(B, S, N)`` non-negative multiplicities, or ``None`` for every image once.

    Returns:
        ``(B, S, F)`` balanced accuracies in ``[0, 1]`` (``(1, S, F)`` when ``counts`` is ``None``);
        NaN where a resample has no image.

    Example:
        >>> p = np.array([[[0], [1], [1], [1]]]); y = np.array([0, 0, 1, 1])
        >>> balanced_accuracy_curves(p, y).tolist()  # recalls 1/2 and 1
        [[[0.75]]]
    """
    p = np.asarray(preds)
    y = np.asarray(labels)
    if p.ndim != 3 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"preds must be an integer array (S, N, F), got dtype {p.dtype} shape {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[1] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer (N,) with N = {p.shape[1]}, got dtype {y.dtype} shape {y.shape}")
    s_, n_, f_ = p.shape
    if counts is None:
        w = np.ones((1, s_, n_), dtype=np.float64)
    else:
        w = np.asarray(counts, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (s_, n_):
            raise ValueError(f"counts must be (B, {s_}, {n_}), got shape {w.shape}")
    classes, y_idx = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes), dtype=np.float64)[y_idx]  # (N, K)
    k_ = onehot.shape[1]
    correct = (p == y[None, :, None]).astype(np.float64)  # (S, N, F)
    hit_design = (correct[..., None] * onehot[None, :, None, :]).reshape(s_, n_, f_ * k_)  # (S, N, F*K)
    ws = np.ascontiguousarray(w.transpose(1, 0, 2))  # (S, B, N)
    hits = np.matmul(ws, hit_design).reshape(s_, -1, f_, k_)  # (S, B, F, K)
    totals = np.matmul(ws, onehot)  # (S, B, K)
    present = totals > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present[:, :, None, :], hits / np.where(present, totals, 1.0)[:, :, None, :], 0.0)
        bal = recall.sum(-1) / present.sum(-1)[:, :, None]  # (S, B, F); 0/0 = NaN when no image
    return bal.transpose(1, 0, 2)


def trapezoid_auc(fractions: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Area under ``values`` over ``fractions`` by the trapezoid rule, divided by the fraction range,
    ×100 (:func:`dualattn.evaluate.metrics.curve_auc`, along the last axis).

    Args:
        fractions: ``(F,)`` strictly increasing, ``F >= 2``.
        values: ``(..., F)`` curve values (balanced accuracy in ``[0, 1]``).

    Returns:
        ``(...)`` AUCs; a constant curve at ``a`` scores ``100 a``.

    Example:
        >>> float(trapezoid_auc([0.0, 0.5, 1.0], np.array([1.0, 0.5, 0.0])))
        50.0
    """
    x = np.asarray(fractions, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape[0] < 2 or not np.all(np.diff(x) > 0):
        raise ValueError(f"fractions must be >= 2 strictly increasing numbers, got {x.tolist()}")
    if v.shape[-1:] != x.shape:
        raise ValueError(f"values must end in {x.shape[0]} fractions, got shape {v.shape}")
    return 100.0 * np.trapezoid(v, x, axis=-1) / (x[-1] - x[0])


# --------------------------------------------------------------------------------------------
# reading a bootstrap distribution
# --------------------------------------------------------------------------------------------


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution: its ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles (``numpy.percentile``'s default linear interpolation).

    Args:
        replicates: ``(B,)`` finite replicate values.
        level: coverage in ``(0, 1)``.

    Example:
        >>> percentile_interval(np.arange(101.0))
        (2.5, 97.5)
    """
    r = np.asarray(replicates, dtype=np.float64).ravel()
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError(f"replicates must be a non-empty array of finite values, got {r.size} values")
    tail = (100.0 - 100.0 * float(level)) / 2.0  # 2.5 for level 0.95 (50 * (1 - 0.95) is 2.5000000000000022)
    lo, hi = np.percentile(r, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value for "the difference is 0", from its replicates ``d_1 .. d_B``:

    ``p = min(1, 2 min((1 + #{d_b <= 0}) / (B + 1), (1 + #{d_b >= 0}) / (B + 1)))``.

    It is the smallest ``alpha`` at which the two-sided percentile interval of level ``1 - alpha``
    excludes 0 (with the +1 correction that keeps it above 0: ``p >= 2 / (B + 1)``). Replicates all
    equal to 0 give ``p = 1``.

    Example:
        >>> bootstrap_p_value(np.arange(1.0, 10.0))  # 9 positive replicates: 2 * 1 / 10
        0.2
    """
    d = np.asarray(differences, dtype=np.float64).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError(f"differences must be a non-empty array of finite values, got {d.size} values")
    b = d.size
    low = (1 + int(np.count_nonzero(d <= 0))) / (b + 1)
    high = (1 + int(np.count_nonzero(d >= 0))) / (b + 1)
    return min(1.0, 2.0 * min(low, high))
