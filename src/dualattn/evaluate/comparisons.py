"""Ours vs the best post-hoc explainer: a paired bootstrap over test images, seeds as strata.

A method's evidence for one metric at one block is one of

* :class:`PerImage` -- ``values (R, P)``: run ``r``'s per-image metric (AP, IoU@q, pointing game, ×100)
  on the ``P`` positive test images; NaN = undefined for that image. Statistic: the mean over runs of
  the nanmean over images.
* :class:`Curves` -- ``preds (R, N, F)``: run ``r``'s predicted class for test image ``n`` at removed
  fraction ``f``, with ``labels (N,)`` and ``fractions (F,)``. Statistic: the mean over runs of the AUC
  (:func:`~dualattn.evaluate.statistics.trapezoid_auc`, ×100) of the balanced accuracy (sklearn's: mean
  recall over the classes present) against the fraction.
* :class:`Srg` -- two :class:`Curves` on the same images, least-important-first and most-first.
  Statistic: the mean over runs of ``AUC(least) - AUC(most)`` (SRG, Blücher et al. 2024).

The images are in the same order for every method, so two methods can be compared image by image.

**Paired bootstrap** (:func:`paired_bootstrap`). Method A has ``R_a`` runs and B ``R_b``. There are
``S = max(R_a, R_b)`` strata; stratum ``s`` pairs A's run ``s mod R_a`` with B's run ``s mod R_b``. Each
replicate draws, independently per stratum, ``n`` image indices with replacement and evaluates A and B on
the *same* indices; its statistic is the mean over strata. From ``B`` replicates: the 95 % percentile
intervals of the ratio ``a / b`` and of the difference ``a - b``, and the two-sided p-value of
:func:`~dualattn.evaluate.statistics.bootstrap_p_value` on the difference. The point values are each
method's statistic on all images (the numbers the tables show); when ``R_a != R_b`` and one does not
divide the other, the strata weight some runs twice, so the replicates centre on a slightly different
mean. The ratio is undefined -- its fields are ``None`` and the record says why -- when B's value or any
of its replicates is ``<= 0`` (SRG can be negative); the difference then decides.

**Comparisons** (:func:`comparisons`): for each metric and block where both sides have evidence, the best
of ``ours`` (consistent-attention methods) against the best of ``others`` (post-hoc explainers), each by
point value in the metric's direction; a claim *holds* only when the ratio's interval excludes 1 in ours'
favour (the difference's interval excludes 0 when the ratio is undefined).

NaN policy: a replicate in which a stratum draws no image with a defined value is NaN and is dropped (the
record's ``n_boot`` counts the replicates kept and its ``note`` says how many were dropped); a method
whose point value is NaN has no evidence.

Example:
    >>> import numpy as np
    >>> a = PerImage(np.array([[60.0, 70.0, 80.0, 90.0]]))
    >>> b = PerImage(np.array([[30.0, 35.0, 40.0, 45.0]]))
    >>> r = paired_bootstrap(a, b, n_boot=200, seed=0)
    >>> r.a, r.b, r.ratio, (r.ci_low, r.ci_high)  # every image has a / b = 2
    (75.0, 37.5, 2.0, (2.0, 2.0))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping, Sequence, Union

import numpy as np

from .statistics import (
    balanced_accuracy_curves,
    bootstrap_indices,
    bootstrap_p_value,
    percentile_interval,
    resample_counts,
    strata_runs,
    trapezoid_auc,
)

__all__ = [
    "PerImage",
    "Curves",
    "Srg",
    "BalancedAccuracy",
    "Evidence",
    "PairedBootstrap",
    "paired_bootstrap",
    "comparisons",
    "COMPARISON_KEYS",
    "CURVE_ORDERS",
]

#: Orders of a :class:`Curves` (those of :mod:`dualattn.evaluate.perturbation`).
CURVE_ORDERS: tuple[str, ...] = ("least_first", "most_first")

#: Keys of every record :func:`comparisons` returns, in order.
COMPARISON_KEYS: tuple[str, ...] = (
    "metric",
    "block",
    "ours",
    "ours_value",
    "best_other",
    "other_value",
    "ratio",
    "ci_low",
    "ci_high",
    "p_value",
    "holds",
    "difference",
    "diff_ci_low",
    "diff_ci_high",
    "direction",
    "n_images",
    "n_strata",
    "n_boot",
    "note",
)

# replicates evaluated per chunk are bounded so that (chunk, S, N) counts stay near 16 MB
_CHUNK_ELEMENTS = 2**21


def _readonly(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


# --------------------------------------------------------------------------------------------
# evidence
# --------------------------------------------------------------------------------------------


class _RunTable:
    """What every evidence table shares: runs x images in its first two axes (``_table``), the statistic of each
    run on all images, and their mean. Subclasses define ``_table`` and ``strata_statistics``."""

    _table: np.ndarray

    @property
    def n_runs(self) -> int:
        return int(self._table.shape[0])

    @property
    def n_images(self) -> int:
        return int(self._table.shape[1])

    def run_statistics(self) -> np.ndarray:
        """``(R,)`` the statistic of each run on all images (NaN for a run without a defined value)."""
        return self.strata_statistics(np.arange(self.n_runs), np.ones((1, self.n_runs, self.n_images)))[0]

    def value(self) -> float:
        """Mean over runs of :meth:`run_statistics`."""
        return float(np.mean(self.run_statistics()))

    def strata_statistics(self, runs: np.ndarray, counts: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class PerImage(_RunTable):
    """Per-image values of one method's runs: ``values (R, P)`` float, NaN = undefined for that image.

    Statistic: mean over runs of the nanmean over images.

    Example:
        >>> PerImage(np.array([[1.0, 3.0], [2.0, float("nan")]])).value()
        2.0
    """

    values: np.ndarray

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float64)
        if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
            raise ValueError(f"PerImage values must be (R, P) with R, P >= 1, got shape {v.shape}")
        if np.isinf(v).any():
            raise ValueError("PerImage values must be finite or NaN, got an infinite value")
        object.__setattr__(self, "values", _readonly(v))

    @property
    def _table(self) -> np.ndarray:
        return self.values

    def strata_statistics(self, runs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``(B, S)`` statistic of run ``runs[s]`` on resample ``counts[b, s]`` (image multiplicities
        ``(B, S, P)``): the weighted nanmean ``sum c v / sum c [v defined]``."""
        v = self.values[np.asarray(runs)]  # (S, P)
        defined = ~np.isnan(v)
        w = np.ascontiguousarray(np.asarray(counts, dtype=np.float64).transpose(1, 0, 2))  # (S, B, P)
        num = np.matmul(w, np.where(defined, v, 0.0)[:, :, None])[..., 0]
        den = np.matmul(w, defined.astype(np.float64)[:, :, None])[..., 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (num / den).T


@dataclass(frozen=True, eq=False)
class Curves(_RunTable):
    """Perturbation predictions of one method's runs, in one removal order.

    Args:
        preds: ``(R, N, F)`` int, run ``r``'s predicted class for test image ``n`` at fraction ``f``.
        labels: ``(N,)`` int true classes.
        fractions: ``(F,)`` strictly increasing removed fractions, ``F >= 2``.
        order: ``"least_first"`` or ``"most_first"``.

    Statistic: mean over runs of the balanced-accuracy AUC (×100).

    Example:
        >>> y = np.array([0, 1]); p = np.array([[[0, 0], [1, 0]]])  # both right, then class 1 missed
        >>> Curves(p, y, (0.0, 1.0)).value()  # balanced accuracy 1 then 0.5
        75.0
    """

    preds: np.ndarray
    labels: np.ndarray
    fractions: tuple[float, ...]
    order: str = "least_first"

    def __post_init__(self) -> None:
        p = np.asarray(self.preds)
        y = np.asarray(self.labels)
        if p.ndim != 3 or 0 in p.shape or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(
                f"Curves preds must be a non-empty integer array (R, N, F), got dtype {p.dtype} shape {p.shape}"
            )
        if y.shape != (p.shape[1],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"Curves labels must be integer (N,) with N = {p.shape[1]}, got dtype {y.dtype} shape {y.shape}"
            )
        fr = tuple(float(f) for f in np.asarray(self.fractions, dtype=np.float64).ravel())
        if len(fr) != p.shape[2] or len(fr) < 2 or not all(b > a for a, b in zip(fr, fr[1:])):
            raise ValueError(f"Curves fractions must be {p.shape[2]} >= 2 strictly increasing numbers, got {list(fr)}")
        if self.order not in CURVE_ORDERS:
            raise ValueError(f"Curves order must be one of {CURVE_ORDERS}, got {self.order!r}")
        object.__setattr__(self, "preds", _readonly(p.astype(np.int64)))
        object.__setattr__(self, "labels", _readonly(y.astype(np.int64)))
        object.__setattr__(self, "fractions", fr)

    @property
    def _table(self) -> np.ndarray:
        return self.preds

    def strata_statistics(self, runs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``(B, S)`` AUC of run ``runs[s]`` on resample ``counts[b, s]`` (``(B, S, N)`` multiplicities)."""
        bal = balanced_accuracy_curves(self.preds[np.asarray(runs)], self.labels, counts)  # (B, S, F)
        return trapezoid_auc(self.fractions, bal)


@dataclass(frozen=True, eq=False)
class Srg:
    """Symmetric relevance gain: ``AUC(least) - AUC(most)`` on the same images and runs.

    Example:
        >>> y = np.array([0, 1])
        >>> least = Curves(np.array([[[0, 0], [1, 1]]]), y, (0.0, 1.0), "least_first")  # AUC 100
        >>> most = Curves(np.array([[[0, 0], [1, 0]]]), y, (0.0, 1.0), "most_first")  # AUC 75
        >>> Srg(least, most).value()
        25.0
    """

    least: Curves
    most: Curves

    def __post_init__(self) -> None:
        if not isinstance(self.least, Curves) or not isinstance(self.most, Curves):
            raise ValueError(
                f"Srg takes two Curves, got {type(self.least).__name__} and {type(self.most).__name__}"
            )
        if self.least.order != "least_first" or self.most.order != "most_first":
            raise ValueError(
                f"Srg needs a least_first and a most_first Curves, got {self.least.order!r} and {self.most.order!r}"
            )
        if self.least.preds.shape[:2] != self.most.preds.shape[:2]:
            raise ValueError(
                f"Srg curves differ in runs or images: {self.least.preds.shape[:2]} vs {self.most.preds.shape[:2]}"
            )
        if not np.array_equal(self.least.labels, self.most.labels):
            raise ValueError("Srg curves must be on the same images, but their labels differ")

    @property
    def labels(self) -> np.ndarray:
        return self.least.labels

    @property
    def n_runs(self) -> int:
        return self.least.n_runs

    @property
    def n_images(self) -> int:
        return self.least.n_images

    def run_statistics(self) -> np.ndarray:
        """``(R,)`` SRG of each run on all images."""
        return self.least.run_statistics() - self.most.run_statistics()

    def value(self) -> float:
        """Mean over runs of :meth:`run_statistics`."""
        return float(np.mean(self.run_statistics()))

    def strata_statistics(self, runs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``(B, S)`` SRG of run ``runs[s]`` on resample ``counts[b, s]``; both curves see the same images."""
        return self.least.strata_statistics(runs, counts) - self.most.strata_statistics(runs, counts)


@dataclass(frozen=True, eq=False)
class BalancedAccuracy(_RunTable):
    """Predicted classes of one method's runs on the test images: ``preds (R, N)`` int, ``labels (N,)``.

    Statistic: mean over runs of the balanced accuracy (sklearn's: mean recall over the classes present), x100.

    Example:
        >>> BalancedAccuracy(np.array([[0, 1, 1, 1]]), np.array([0, 0, 1, 1])).value()
        75.0
    """

    preds: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        p, y = np.asarray(self.preds), np.asarray(self.labels)
        if p.ndim != 2 or 0 in p.shape or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"BalancedAccuracy preds must be a non-empty integer (R, N) array, got {p.dtype} {p.shape}")
        if y.shape != (p.shape[1],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"BalancedAccuracy labels must be integer (N,) with N = {p.shape[1]}, got {y.shape}")
        object.__setattr__(self, "preds", _readonly(p.astype(np.int64)))
        object.__setattr__(self, "labels", _readonly(y.astype(np.int64)))

    @property
    def _table(self) -> np.ndarray:
        return self.preds

    def strata_statistics(self, runs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``(B, S)`` balanced accuracy x100 of run ``runs[s]`` on resample ``counts[b, s]``."""
        return 100.0 * balanced_accuracy_curves(self.preds[np.asarray(runs)][..., None], self.labels, counts)[..., 0]


Evidence = Union[PerImage, Curves, Srg, BalancedAccuracy]
_EVIDENCE_TYPES = (PerImage, Curves, Srg, BalancedAccuracy)


# --------------------------------------------------------------------------------------------
# the paired bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedBootstrap:
    """What :func:`paired_bootstrap` found for A against B.

    Attributes:
        a, b: point values (each method's statistic on all images, mean over its runs).
        ratio, ci_low, ci_high: ``a / b`` and the percentile interval of its replicates; all ``None``
            when B's value or one of its replicates is ``<= 0`` (see ``note``).
        difference, diff_ci_low, diff_ci_high: ``a - b`` and the percentile interval of its replicates.
        p_value: two-sided bootstrap p-value of "a = b" (:func:`~dualattn.evaluate.statistics.bootstrap_p_value`).
        n_images, n_strata: images resampled per stratum; strata (``max(R_a, R_b)``).
        n_boot: replicates the intervals rest on (those drawn minus the undefined ones).
        note: why a field is ``None`` or replicates were dropped; ``None`` when nothing is to be said.
        replicates_a, replicates_b: ``(B_drawn,)`` replicate statistics (NaN where undefined).
    """

    a: float
    b: float
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    difference: float
    diff_ci_low: float | None
    diff_ci_high: float | None
    p_value: float | None
    n_images: int
    n_strata: int
    n_boot: int
    note: str | None
    replicates_a: np.ndarray = field(repr=False)
    replicates_b: np.ndarray = field(repr=False)


def _check_evidence(name: str, x: object) -> None:
    if not isinstance(x, _EVIDENCE_TYPES):
        raise ValueError(f"{name} must be PerImage, Curves or Srg, got {type(x).__name__}")


def _replicates(a: Evidence, b: Evidence, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(B,)`` replicate statistics of A and B: mean over strata, the same resamples for both."""
    runs_a, runs_b = strata_runs(a.n_runs, b.n_runs)
    n_boot, n_strata, n = indices.shape
    chunk = max(1, _CHUNK_ELEMENTS // (n_strata * n))
    out_a, out_b = [], []
    for start in range(0, n_boot, chunk):
        counts = resample_counts(indices[start : start + chunk], n)
        out_a.append(a.strata_statistics(runs_a, counts).mean(axis=1))
        out_b.append(b.strata_statistics(runs_b, counts).mean(axis=1))
    return np.concatenate(out_a), np.concatenate(out_b)


def paired_bootstrap(
    a: Evidence,
    b: Evidence,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    indices: np.ndarray | None = None,
    level: float = 0.95,
) -> PairedBootstrap:
    """Paired, seed-stratified bootstrap of method A against method B on the same test images.

    Stratum ``s = 0 .. max(R_a, R_b) - 1`` pairs A's run ``s mod R_a`` with B's run ``s mod R_b``; each
    replicate draws ``n`` image indices with replacement per stratum, uses them for A and B alike, and
    averages the statistic over strata (see the module doc).

    Args:
        a, b: evidence of the same kind (:class:`PerImage`, :class:`Curves` or :class:`Srg`) on the same
            ``n`` images (for curves: the same labels).
        n_boot: replicates ``B`` to draw (ignored when ``indices`` is given).
        seed: seed of :func:`~dualattn.evaluate.statistics.bootstrap_indices`; same seed, same result.
        indices: ``(B, S, n)`` integer resamples to use instead of drawing them (tests), with
            ``S = max(R_a, R_b)``.
        level: coverage of the intervals.

    Returns:
        :class:`PairedBootstrap`.

    Raises:
        ValueError: evidence of different kinds or images, a point value that is NaN, bad ``indices``.

    Example:
        >>> import numpy as np
        >>> x = PerImage(np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]]))
        >>> r = paired_bootstrap(x, x, n_boot=100)
        >>> r.ratio, r.ci_low, r.ci_high, r.difference, r.p_value
        (1.0, 1.0, 1.0, 0.0, 1.0)
    """
    _check_evidence("a", a)
    _check_evidence("b", b)
    if type(a) is not type(b):
        raise ValueError(f"a and b must be evidence of the same kind, got {type(a).__name__} and {type(b).__name__}")
    if a.n_images != b.n_images:
        raise ValueError(f"a and b must be on the same images, got {a.n_images} and {b.n_images} images")
    if isinstance(a, (Curves, Srg)) and not np.array_equal(a.labels, b.labels):  # type: ignore[union-attr]
        raise ValueError("a and b must be on the same images, but their labels differ")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = a.n_images
    n_strata = max(a.n_runs, b.n_runs)
    if indices is None:
        if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
            raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
        idx = bootstrap_indices(int(n_boot), n_strata, n, seed=seed)
    else:
        idx = np.asarray(indices)
        if idx.ndim != 3 or idx.shape[0] < 1 or idx.shape[1:] != (n_strata, n):
            raise ValueError(f"indices must be (B, {n_strata}, {n}) (B >= 1), got shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    va, vb = a.value(), b.value()
    if not (math.isfinite(va) and math.isfinite(vb)):
        raise ValueError(f"a and b need defined point values, got a = {va} and b = {vb}")

    rep_a, rep_b = _replicates(a, b, idx)
    keep = np.isfinite(rep_a) & np.isfinite(rep_b)
    drawn, kept = int(idx.shape[0]), int(keep.sum())
    notes = []
    if kept < drawn:
        notes.append(f"{drawn - kept} of {drawn} replicates had a stratum without a defined value and were dropped")
    diff_ci: tuple[float | None, float | None] = (None, None)
    p_value = None
    if kept:
        d = rep_a[keep] - rep_b[keep]
        diff_ci = percentile_interval(d, level)
        p_value = bootstrap_p_value(d)
    ratio = ci_low = ci_high = None
    if vb > 0 and kept and bool(np.all(rep_b[keep] > 0)):
        ratio = va / vb
        ci_low, ci_high = percentile_interval(rep_a[keep] / rep_b[keep], level)
    elif kept:
        notes.append(
            "ratio undefined: the denominator's value or one of its replicates is <= 0; the difference decides"
        )
    return PairedBootstrap(
        a=va,
        b=vb,
        ratio=ratio,
        ci_low=ci_low,
        ci_high=ci_high,
        difference=va - vb,
        diff_ci_low=diff_ci[0],
        diff_ci_high=diff_ci[1],
        p_value=p_value,
        n_images=n,
        n_strata=n_strata,
        n_boot=kept,
        note="; ".join(notes) or None,
        replicates_a=_readonly(rep_a),
        replicates_b=_readonly(rep_b),
    )


# --------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------


def _direction(metric: str, d: object) -> str:
    value = str(getattr(d, "value", d))
    if value not in ("higher", "lower", "none"):
        raise ValueError(f"directions[{metric!r}] must be 'higher', 'lower' or 'none', got {d!r}")
    return value


def _names(name: str, x: object) -> tuple[str, ...]:
    if isinstance(x, str) or not isinstance(x, Sequence) or not all(isinstance(m, str) for m in x):
        raise ValueError(f"{name} must be a sequence of method names, got {x!r}")
    return tuple(x)


def _holds(r: PairedBootstrap, direction: str) -> bool:
    if r.ratio is not None:
        return bool(r.ci_low > 1.0) if direction == "higher" else bool(r.ci_high < 1.0)  # type: ignore[operator]
    if r.diff_ci_low is None:
        return False
    return bool(r.diff_ci_low > 0.0) if direction == "higher" else bool(r.diff_ci_high < 0.0)  # type: ignore[operator]


def comparisons(
    evidence: Mapping[str, Mapping[str, Mapping[str, Evidence]]],
    *,
    ours: Sequence[str],
    others: Sequence[str],
    directions: Mapping[str, object],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict]:
    """The best of ``ours`` against the best of ``others``, per metric and block, by a paired bootstrap.

    For every metric of ``directions`` ranked ``"higher"`` or ``"lower"`` (``"none"`` is skipped), in that
    order, and every block (sorted by name) where at least one method of each side has evidence with a
    defined value: ``ours`` is that side's best method by point value in the metric's direction (ties: the
    first in ``ours``' order), ``best_other`` likewise, and :func:`paired_bootstrap` compares them (ours
    as A, the other as B). ``holds`` is ``True`` only when the ratio's interval excludes 1 in ours' favour
    (``ci_low > 1`` for higher, ``ci_high < 1`` for lower) or, when the ratio is undefined, the
    difference's interval excludes 0 in ours' favour.

    Args:
        evidence: ``evidence[method][block][metric]`` -> :class:`PerImage`, :class:`Curves` or :class:`Srg`.
        ours: method names eligible for ours' side (consistent-attention methods).
        others: method names eligible for the other side (post-hoc explainers); disjoint from ``ours``.
        directions: ``metric -> "higher" | "lower" | "none"`` (or :class:`~dualattn.evaluate.specs.Direction`).
        n_boot: replicates per comparison.
        seed: seed of every comparison's resamples (deterministic given the seed).
        level: coverage of the intervals.

    Returns:
        One dict per comparison with the keys :data:`COMPARISON_KEYS` (JSON-serializable; ``None`` for an
        undefined ratio or interval).

    Example:
        >>> import numpy as np
        >>> ev = {"dual": {"block3": {"ap": PerImage(np.array([[60.0, 80.0]]))}},
        ...       "gradcam": {"block3": {"ap": PerImage(np.array([[30.0, 40.0]]))}}}
        >>> rec = comparisons(ev, ours=["dual"], others=["gradcam"], directions={"ap": "higher"}, n_boot=100)[0]
        >>> rec["ours"], rec["best_other"], rec["ratio"], rec["ci_low"], rec["holds"]
        ('dual', 'gradcam', 2.0, 2.0, True)
    """
    ours_t, others_t = _names("ours", ours), _names("others", others)
    both = sorted(set(ours_t) & set(others_t))
    if both:
        raise ValueError(f"ours and others must be disjoint, both contain {both}")
    if not isinstance(evidence, Mapping):
        raise ValueError(
            f"evidence must be a mapping method -> block -> metric -> evidence, got {type(evidence).__name__}"
        )
    for method, blocks in evidence.items():
        for block, metrics in blocks.items():
            for metric, ev in metrics.items():
                _check_evidence(f"evidence[{method!r}][{block!r}][{metric!r}]", ev)
    dirs = {metric: _direction(metric, d) for metric, d in directions.items()}

    def candidates(side: tuple[str, ...], block: str, metric: str) -> list[tuple[str, Evidence, float]]:
        out = []
        for m in side:
            ev = evidence.get(m, {}).get(block, {}).get(metric)
            if ev is not None:
                v = ev.value()
                if math.isfinite(v):
                    out.append((m, ev, v))
        return out

    records = []
    blocks = sorted({b for m in ours_t + others_t for b in evidence.get(m, {})})
    for metric, direction in dirs.items():
        if direction == "none":
            continue
        pick = max if direction == "higher" else min
        for block in blocks:
            mine, theirs = candidates(ours_t, block, metric), candidates(others_t, block, metric)
            if not mine or not theirs:
                continue
            best_ours = pick(mine, key=lambda t: t[2])
            best_other = pick(theirs, key=lambda t: t[2])
            r = paired_bootstrap(best_ours[1], best_other[1], n_boot=n_boot, seed=seed, level=level)
            records.append(
                {
                    "metric": metric,
                    "block": block,
                    "ours": best_ours[0],
                    "ours_value": r.a,
                    "best_other": best_other[0],
                    "other_value": r.b,
                    "ratio": r.ratio,
                    "ci_low": r.ci_low,
                    "ci_high": r.ci_high,
                    "p_value": r.p_value,
                    "holds": _holds(r, direction),
                    "difference": r.difference,
                    "diff_ci_low": r.diff_ci_low,
                    "diff_ci_high": r.diff_ci_high,
                    "direction": direction,
                    "n_images": r.n_images,
                    "n_strata": r.n_strata,
                    "n_boot": r.n_boot,
                    "note": r.note,
                }
            )
    return records
