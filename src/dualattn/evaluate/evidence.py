"""From the evaluation's per-image numbers to the ``comparisons`` of ``results.json``, and when a claim may be made.

For every metric and block, the best consistent-attention method (``dualattn.models.CONSISTENT_VARIANTS``) is
compared with the best post-hoc explainer by a paired bootstrap over the test images with the runs (seeds) as
strata (:func:`dualattn.evaluate.comparisons.comparisons`). A comparison is *claimable* only when the classifiers
behind it are more than ``CHANCE_MARGIN`` points above chance and, for the implicit-segmentation metrics, at least
``MIN_POSITIVES`` positive images were scored; otherwise its ``holds`` is ``False`` and ``claim_blocked`` says why.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..explain import methods_in_family
from ..models import CONSISTENT_VARIANTS
from .comparisons import Curves, PerImage, Srg, comparisons
from .results import RunNumbers
from .specs import METRICS

__all__ = ["CHANCE_MARGIN", "MIN_POSITIVES", "SEGMENTATION_METRICS", "build_evidence", "claimable_comparisons"]

#: a classifier within this many balanced-accuracy points (x100) of chance supports no claim
CHANCE_MARGIN = 10.0
#: fewer positive test images than this support no implicit-segmentation claim
MIN_POSITIVES = 30
SEGMENTATION_METRICS: tuple[str, ...] = ("iou@97.5", "iou@95", "iou@90", "activation_precision", "ap",
                                         "pointing_game")


def _runs_array(by_run: Mapping[int, Any], dtype: Any) -> np.ndarray:
    return np.asarray([by_run[k] for k in sorted(by_run)], dtype=dtype)


def build_evidence(numbers: RunNumbers, *, labels: np.ndarray, fractions: Sequence[float]) -> dict[str, Any]:
    """``evidence[method][block][metric]`` for :func:`~dualattn.evaluate.comparisons.comparisons`: per-image
    segmentation values, and per fill the least-first / most-first prediction curves and their SRG."""
    evidence: dict[str, Any] = {}
    for method, by_block in numbers.per_image.items():
        for block, by_metric in by_block.items():
            for metric, by_run in by_metric.items():
                evidence.setdefault(method, {}).setdefault(block, {})[metric] = PerImage(_runs_array(by_run, float))
    for method, by_block in numbers.predictions.items():
        for block, by_fill in by_block.items():
            for fill, orders in by_fill.items():
                curves = {order: Curves(_runs_array(by_run, np.int64), labels, tuple(fractions), order)
                          for order, by_run in orders.items()}
                slot = evidence.setdefault(method, {}).setdefault(block, {})
                for order, curve in curves.items():
                    slot[f"auc_{order}@{fill}"] = curve
                if {"least_first", "most_first"} <= set(curves):
                    slot[f"srg@{fill}"] = Srg(curves["least_first"], curves["most_first"])
    return evidence


def claimable_comparisons(
    numbers: RunNumbers, *, labels: np.ndarray, fractions: Sequence[float], run_rows: Sequence[Mapping[str, Any]],
    sources: Mapping[str, Mapping[str, Any]], n_positives: int, num_classes: int, n_boot: int = 2000, seed: int = 0,
) -> list[dict[str, Any]]:
    """The ``comparisons`` list: one record per metric and block (see the module docstring).

    Args:
        numbers: the evaluation's per-run numbers (with per-image values and predictions).
        labels: the test labels ``(N,)``.
        fractions: the perturbation curve's fractions.
        run_rows: Table 3's rows (variant, balanced_accuracy x100) of every run.
        sources: method -> ``{"variant", "runs"}`` it explained.
        n_positives: positive test images with a mask.
        num_classes: classes of the task (chance = 100 / num_classes).
        n_boot, seed: bootstrap replicates and seed.
    """
    evidence = build_evidence(numbers, labels=labels, fractions=fractions)
    ours = [m for m in CONSISTENT_VARIANTS if m in evidence]
    others = [m for m in methods_in_family("posthoc") if m in evidence]
    if not ours or not others:
        return []
    directions = {name: spec.direction.value for name, spec in METRICS.items()}
    directions.update({m: "higher" for m in SEGMENTATION_METRICS})
    records = comparisons(evidence, ours=ours, others=others, directions=directions, n_boot=n_boot, seed=seed)
    accuracy: dict[str, list[float]] = {}
    for row in run_rows:
        accuracy.setdefault(str(row["variant"]), []).append(float(row["balanced_accuracy"]))
    chance = 100.0 / max(int(num_classes), 1)
    for rec in records:
        blocked = []
        for method in (rec["ours"], rec["best_other"]):
            variant = str(sources.get(method, {}).get("variant", "baseline"))
            acc = float(np.mean(accuracy[variant])) if accuracy.get(variant) else float("nan")
            if not acc > chance + CHANCE_MARGIN:
                blocked.append(f"the {variant} classifier ({acc:.1f}) is within {CHANCE_MARGIN:.0f} points of "
                               f"chance ({chance:.1f})")
        if rec["metric"] in SEGMENTATION_METRICS and n_positives < MIN_POSITIVES:
            blocked.append(f"only {n_positives} positive images (< {MIN_POSITIVES})")
        rec["claim_blocked"] = "; ".join(dict.fromkeys(blocked)) or None
        if blocked:
            rec["holds"] = False
    return records
