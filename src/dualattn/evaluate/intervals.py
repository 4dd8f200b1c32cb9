"""Intervals that hold every source of chance: test patients and training seeds, crossed.

Every seed of a method scores the *same* test patients, so a comparison's uncertainty has two crossed
sources: which patients happened to be in the test split (several images per patient are not independent),
and which training seeds happened to be drawn. Resampling images independently per seed (the first
edition's bootstrap) ignores both the clustering and the seed-to-seed variance; with 3 seeds a bootstrap of
the seeds cannot represent their distribution either (3 values have 10 resampled multisets and the bootstrap
variance of their mean is 2/3 of the unbiased one).

So :func:`crossed_comparison` combines a ``t`` over the per-seed estimates with a patient bootstrap, the
pairing kept (A and B see the same patients, and A's seed ``s`` is paired with B's seed ``s``). With
``theta_s`` the statistic of seed pair ``s`` on all test images and ``theta`` the statistic of the seed means:

* **seeds** -- ``V_seed = var_s(theta_s) / S``. In the two-way crossed random-effects model (seed effect
  ``a``, patient effect ``b``, interaction and image noise ``e``; ``S`` seeds, ``P`` patients) the per-seed
  estimates share the patients, so their spread holds ``s_a^2 + s_e^2 / P`` but not the patient effect:
  ``V_seed`` estimates ``s_a^2 / S + s_e^2 / (SP)``, with ``S - 1`` degrees of freedom.
* **patients** -- a cluster bootstrap: each replicate draws ``P`` of the ``P`` test patients with
  replacement; an image counts as often as its patient was drawn, and the *same* draw serves every seed and
  both methods. The mean covariance of the replicates of two different seeds, ``V_shared``, is the patient
  variation every seed shares, ``s_b^2 / P`` (computed as ``(S V_pb - V_ps) / (S - 1)`` from the variance
  ``V_pb`` of the seed-mean replicates and the mean per-seed variance ``V_ps``; both scaled by
  ``P / (P - 1)``, as a bootstrap variance of a mean over ``P`` clusters is that much too small).

The variance of ``theta`` is ``s_a^2/S + s_b^2/P + s_e^2/(SP) = V_seed + V_shared`` in expectation, so the
interval is ``theta +- t_{df} sqrt(V_seed + V_shared)`` with Satterthwaite's
``df = V^2 / (V_seed^2 / (S-1) + V_shared^2 / (P-1))``: when the seeds dominate, ``df`` is near ``S - 1``
(2 with 3 seeds, ``t`` = 4.3), which is what 3 seeds can say; when the shared patient variation dominates it
is near ``P - 1``. The p-value is the two-sided ``t`` tail of ``(theta - null) / sqrt(V)``. A ratio ``a / b``
is handled on the log scale (``theta = log a - log b``, ``theta_s = log a_s - log b_s``) and the interval
exponentiated; it is undefined (the difference decides) when a value or replicate is ``<= 0``. With one seed
the seed variance is not estimable: ``V = V_pb``, ``df = P - 1``, ``resampled = ["patients"]`` and the note
says so. (McCullagh 2000 shows that no resampling scheme alone is exact for crossed designs; this moment
combination was chosen over a pigeonhole bootstrap because 3 seeds cannot be resampled meaningfully.)

``tests/test_evaluate_intervals.py`` checks the coverage on simulated nulls with a known answer
(correlated images within patients, crossed seeds, seed- / patient- / noise-dominated) at the sealed draw's
size, and the resampling against hand-computed counts.

Example:
    >>> import numpy as np
    >>> from dualattn.evaluate.comparisons import PerImage
    >>> a = PerImage(np.array([[2.0, 4.0, 6.0, 8.0], [3.0, 5.0, 7.0, 9.0]]))
    >>> b = PerImage(np.array([[1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5]]))
    >>> r = crossed_comparison(a, b, groups=["p0", "p0", "p1", "p1"], kind="ratio", n_boot=200)
    >>> round(r.estimate, 4), r.resampled
    (2.0, ('patients', 'seeds'))
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .statistics import strata_runs

__all__ = [
    "CrossedInterval",
    "crossed_comparison",
    "group_index",
    "patient_bootstrap_counts",
    "holm",
    "holm_levels",
    "t_interval",
]

_CHUNK_ELEMENTS = 2**21


@dataclass(frozen=True)
class CrossedInterval:
    """What :func:`crossed_comparison` found for A against B.

    Attributes:
        kind: ``"difference"`` or ``"ratio"`` (the scale of ``estimate``, the interval and ``null``).
        a, b: point values (each method's statistic on all images, mean over its seeds).
        estimate: ``a - b`` or ``a / b``.
        ci_low, ci_high: the interval at ``level`` (``None`` when no variance could be estimated).
        p_value: two-sided p-value of ``estimate == null``.
        null: the value tested (0 for a difference, 1 for a ratio, or a non-inferiority margin).
        level: the interval's coverage.
        se: standard error on the working scale (the log scale for a ratio).
        df: degrees of freedom of the ``t`` reference.
        var_patients, var_seeds: the two variance components (``V_pb`` and ``V_a``) on the working scale.
        n_patients, n_seeds, n_boot: clusters, seed pairs, patient replicates kept.
        resampled: the sources of chance the interval holds (``("patients", "seeds")`` or ``("patients",)``).
        note: what was dropped or undefined; ``None`` when nothing is to be said.
        per_seed: ``theta_s`` per seed pair (working scale).
    """

    kind: str
    a: float
    b: float
    estimate: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    null: float
    level: float
    se: float | None
    df: float | None
    var_patients: float | None
    var_seeds: float | None
    n_patients: int
    n_seeds: int
    n_boot: int
    resampled: tuple[str, ...]
    note: str | None
    per_seed: tuple[float, ...] = field(default=())

    def excludes_null(self, direction: str) -> bool:
        """Whether the interval lies entirely on the favourable side of ``null``
        (``direction`` ``"higher"``: above it; ``"lower"``: below it)."""
        if self.ci_low is None or self.ci_high is None:
            return False
        if direction == "higher":
            return self.ci_low > self.null
        if direction == "lower":
            return self.ci_high < self.null
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")


def group_index(groups: Sequence[Any]) -> tuple[np.ndarray, int]:
    """Dense cluster indices ``(N,)`` of ``groups`` (patient ids, in order of first appearance) and their
    number ``P``.

    Example:
        >>> idx, p = group_index(["b", "a", "b", "c"])
        >>> idx.tolist(), p
        ([0, 1, 0, 2], 3)
    """
    labels = [str(g) for g in groups]
    if not labels:
        raise ValueError("groups must name at least one image's patient")
    order: dict[str, int] = {}
    idx = np.array([order.setdefault(g, len(order)) for g in labels], dtype=np.int64)
    return idx, len(order)


def patient_bootstrap_counts(patient_draws: np.ndarray, group: np.ndarray, n_patients: int) -> np.ndarray:
    """Image multiplicities ``(B, N)`` of patient resamples ``patient_draws (B, P)``: image ``i`` counts as
    often as its patient ``group[i]`` was drawn.

    Example:
        >>> patient_bootstrap_counts(np.array([[0, 0], [1, 0]]), np.array([0, 0, 1]), 2).tolist()
        [[2.0, 2.0, 0.0], [1.0, 1.0, 1.0]]
    """
    draws = np.asarray(patient_draws)
    if draws.ndim != 2 or not np.issubdtype(draws.dtype, np.integer):
        raise ValueError(f"patient_draws must be an integer (B, P) array, got {draws.dtype} {draws.shape}")
    if draws.size and (draws.min() < 0 or draws.max() >= n_patients):
        raise ValueError(f"patient_draws must lie in [0, {n_patients})")
    rows = draws.shape[0]
    flat = (np.arange(rows, dtype=np.int64)[:, None] * n_patients + draws).ravel()
    per_patient = np.bincount(flat, minlength=rows * n_patients).reshape(rows, n_patients).astype(np.float64)
    return per_patient[:, np.asarray(group, dtype=np.int64)]


def t_interval(estimate: float, se: float, df: float, level: float = 0.95, null: float = 0.0
               ) -> tuple[float, float, float]:
    """``(low, high, two-sided p)`` of a ``t`` interval with ``df`` degrees of freedom.

    Example:
        >>> [round(v, 3) for v in t_interval(1.0, 0.5, 1e9)]
        [0.02, 1.98, 0.046]
    """
    from scipy import stats

    if not (se > 0 and math.isfinite(se)):
        return estimate, estimate, (1.0 if estimate == null else 0.0)
    q = float(stats.t.ppf(0.5 + level / 2.0, df))
    p = float(2.0 * stats.t.sf(abs(estimate - null) / se, df))
    return estimate - q * se, estimate + q * se, min(1.0, p)


def _statistic(kind: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if kind == "difference":
        return a - b
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(a) - np.log(b)


def crossed_comparison(
    a: Any,
    b: Any,
    *,
    groups: Sequence[Any],
    kind: str = "difference",
    null: float | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    patient_draws: np.ndarray | None = None,
) -> CrossedInterval:
    """A against B on the same test images, patients and seeds crossed (see the module docstring).

    Args:
        a, b: evidence of the same kind (:class:`~dualattn.evaluate.comparisons.PerImage`, ``Curves``,
            ``Srg``, ``BalancedAccuracy``) over the same ``N`` images; seed ``s`` of A is paired with seed
            ``s`` of B (``s mod R`` when their seed counts differ).
        groups: ``(N,)`` the patient of every image (the cluster the bootstrap resamples).
        kind: ``"difference"`` (``a - b``) or ``"ratio"`` (``a / b``, on the log scale; falls back to the
            difference, with a note, when ``b`` or one of its replicates is ``<= 0``).
        null: the value tested (default 0 for a difference, 1 for a ratio; e.g. ``-3`` for a
            non-inferiority margin on a difference).
        n_boot: patient replicates (ignored when ``patient_draws`` is given).
        seed: seed of the patient draws.
        level: interval coverage.
        patient_draws: ``(B, P)`` patient indices to use instead of drawing them (tests).

    Returns:
        :class:`CrossedInterval`.

    Raises:
        ValueError: evidence of different kinds or sizes, ``groups`` of the wrong length, bad arguments.
    """
    if kind not in ("difference", "ratio"):
        raise ValueError(f"kind must be 'difference' or 'ratio', got {kind!r}")
    if type(a) is not type(b):
        raise ValueError(f"a and b must be evidence of the same kind, got {type(a).__name__} and {type(b).__name__}")
    if a.n_images != b.n_images:
        raise ValueError(f"a and b must be on the same images, got {a.n_images} and {b.n_images}")
    if hasattr(a, "labels") and not np.array_equal(a.labels, b.labels):
        raise ValueError("a and b must be on the same images, but their labels differ")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    group, n_pat = group_index(groups)
    if group.shape[0] != a.n_images:
        raise ValueError(f"groups has {group.shape[0]} entries for {a.n_images} images")
    if patient_draws is None:
        if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 2:
            raise ValueError(f"n_boot must be an int >= 2, got {n_boot!r}")
        draws = np.random.default_rng(seed).integers(0, n_pat, size=(int(n_boot), n_pat), dtype=np.int64)
    else:
        draws = np.asarray(patient_draws)
        if draws.ndim != 2 or draws.shape[1] != n_pat or draws.shape[0] < 2:
            raise ValueError(f"patient_draws must be (B >= 2, {n_pat}), got {draws.shape}")

    runs_a, runs_b = strata_runs(a.n_runs, b.n_runs)
    n_seeds = int(runs_a.shape[0])
    ones = np.ones((1, n_seeds, a.n_images))
    a_s = a.strata_statistics(runs_a, ones)[0]  # (S,)
    b_s = b.strata_statistics(runs_b, ones)[0]
    va, vb = float(np.mean(a_s)), float(np.mean(b_s))
    notes: list[str] = []
    if not (math.isfinite(va) and math.isfinite(vb)):
        raise ValueError(f"a and b need defined point values, got a = {va} and b = {vb}")

    rep_a, rep_b = _replicates(a, b, runs_a, runs_b, draws, group, n_pat)  # (B, S) each
    keep = np.isfinite(rep_a).all(axis=1) & np.isfinite(rep_b).all(axis=1)
    if not keep.all():
        notes.append(f"{int((~keep).sum())} of {keep.size} patient replicates had a seed without a defined "
                     "value and were dropped")
    rep_a, rep_b = rep_a[keep], rep_b[keep]
    if kind == "ratio" and not (vb > 0 and bool(np.all(b_s > 0)) and bool(np.all(rep_b > 0))
                                and va > 0 and bool(np.all(a_s > 0)) and bool(np.all(rep_a > 0))):
        notes.append("ratio undefined: a value or replicate is <= 0; the difference decides")
        kind = "difference"
    null_v = (1.0 if kind == "ratio" else 0.0) if null is None else float(null)
    null_w = math.log(null_v) if kind == "ratio" else null_v

    theta = float(_statistic(kind, np.array(va), np.array(vb)))
    theta_s = _statistic(kind, a_s, b_s)
    if n_pat < 2:
        notes.append("one patient: the patients' variance is not estimable, so there is no interval")
    if rep_a.shape[0] < 2 or n_pat < 2:
        return CrossedInterval(kind, va, vb, _back(kind, theta), None, None, None, null_v, level, None, None,
                               None, None, n_pat, n_seeds, int(rep_a.shape[0]), ("patients", "seeds"),
                               "; ".join(notes if n_pat < 2 else notes + ["too few defined replicates for an interval"]),
                               tuple(float(t) for t in theta_s))
    boot = _statistic(kind, rep_a.mean(axis=1), rep_b.mean(axis=1))
    # a bootstrap variance of a mean over P clusters is (P - 1) / P of the unbiased one: undo that
    unbias = n_pat / (n_pat - 1) if n_pat > 1 else 1.0
    v_pb = unbias * float(np.var(boot, ddof=1))
    if n_seeds >= 2:
        boot_s = _statistic(kind, rep_a, rep_b)  # (B, S)
        v_ps = unbias * float(np.mean(np.var(boot_s, axis=0, ddof=1)))
        # the patient variation every seed shares: the mean cross-seed covariance of the replicates
        v_shared = max(0.0, (n_seeds * v_pb - v_ps) / (n_seeds - 1))
        v_seed = float(np.var(theta_s, ddof=1)) / n_seeds
        var = v_seed + v_shared
        resampled: tuple[str, ...] = ("patients", "seeds")
        # Satterthwaite: V_seed from S per-seed values (S - 1 df), the shared part from P patients
        denom = v_seed**2 / (n_seeds - 1) + v_shared**2 / max(n_pat - 1, 1)
        var_patients, var_seeds = v_shared, v_seed
    else:
        var = v_pb
        resampled = ("patients",)
        notes.append("one seed: the training-seed variance is not estimable and is left out")
        denom = v_pb**2 / max(n_pat - 1, 1)
        var_patients, var_seeds = v_pb, None
    df = var**2 / denom if denom > 0 else float(max(n_pat - 1, 1))
    se = math.sqrt(var)
    lo, hi, p = t_interval(theta, se, df, level, null_w)
    return CrossedInterval(
        kind=kind, a=va, b=vb, estimate=_back(kind, theta), ci_low=_back(kind, lo), ci_high=_back(kind, hi),
        p_value=p, null=null_v, level=float(level), se=se, df=float(df), var_patients=var_patients,
        var_seeds=var_seeds,
        n_patients=n_pat, n_seeds=n_seeds, n_boot=int(rep_a.shape[0]), resampled=resampled,
        note="; ".join(notes) or None, per_seed=tuple(float(t) for t in theta_s),
    )


def _back(kind: str, x: float) -> float:
    return float(math.exp(x)) if kind == "ratio" else float(x)


def _replicates(a: Any, b: Any, runs_a: np.ndarray, runs_b: np.ndarray, draws: np.ndarray, group: np.ndarray,
                n_pat: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, S)`` per-seed statistics of A and B on every patient resample (the same draw for both and for
    every seed)."""
    n_seeds, n = int(runs_a.shape[0]), int(group.shape[0])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_seeds * n))
    out_a, out_b = [], []
    for start in range(0, draws.shape[0], chunk):
        counts = patient_bootstrap_counts(draws[start:start + chunk], group, n_pat)  # (b, N)
        counts = np.broadcast_to(counts[:, None, :], (counts.shape[0], n_seeds, n))
        out_a.append(a.strata_statistics(runs_a, counts))
        out_b.append(b.strata_statistics(runs_b, counts))
    return np.concatenate(out_a), np.concatenate(out_b)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (``None`` entries stay ``None`` and do not count).

    ``p_adj[(j)] = max_{k <= j} min(1, (m - k + 1) p_(k))`` over the sorted p-values.

    Example:
        >>> holm([0.01, 0.04, 0.03, None])
        [0.03, 0.06, 0.06, None]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: (p_values[i], i))):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))  # type: ignore[arg-type]
        out[i] = round(running, 15)
    return out


def holm_levels(p_values: Sequence[float | None], alpha: float = 0.05) -> list[float | None]:
    """The interval level each hypothesis is judged at under Holm's procedure.

    Sorted by p-value, the ``k``-th (from 1) is tested at ``alpha / (m - k + 1)`` while every earlier one
    was rejected; after the first non-rejection every later one keeps that level (none of them can be
    rejected). A ``t`` interval at level ``1 - alpha_k`` excludes the null exactly when Holm rejects.

    Example:
        >>> [round(v, 4) for v in holm_levels([0.001, 0.2, 0.01])]
        [0.9833, 0.95, 0.975]
    """
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    stopped_at: float | None = None
    for rank, i in enumerate(sorted(idx, key=lambda i: (p_values[i], i))):
        a_k = alpha / (m - rank)
        if stopped_at is None and float(p_values[i]) > a_k:  # type: ignore[arg-type]
            stopped_at = a_k
        out[i] = 1.0 - (a_k if stopped_at is None else stopped_at)
    return out
