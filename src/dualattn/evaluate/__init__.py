"""Scoring explanations: pure per-sample metrics, perturbation curves, and ``evaluate_runs``.

* :mod:`dualattn.evaluate.metrics` -- ``iou_at_quantile``, ``average_precision``, ``pointing_game``,
  ``balanced_accuracy``, ``curve_auc``, ``consistency_kl``, ``spearman_rank_correlation``,
  ``sharpness``, ``resize_mass`` and :data:`METRIC_DIRECTIONS` (which way each is better);
* :mod:`dualattn.evaluate.perturbation` -- input-perturbation curves (least/most important first,
  injectable perturbation value);
* :func:`evaluate_runs` -- the paper's protocols over trained runs -> ``results.json`` + Tables 1-3
  (:mod:`dualattn.evaluate.runner`, schema in ``docs/evaluation.md``).

Example:
    >>> import torch
    >>> from dualattn.evaluate import iou_at_quantile
    >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
    >>> iou_at_quantile(m, m, 0.9).tolist()
    [1.0]
"""

from __future__ import annotations

from typing import Any

from .metrics import (
    METRIC_DIRECTIONS,
    Direction,
    average_precision,
    balanced_accuracy,
    consistency_kl,
    curve_auc,
    iou_at_quantile,
    match_mask_grid,
    pointing_game,
    resize_mass,
    sharpness,
    spearman_rank_correlation,
)
from .perturbation import (
    DEFAULT_FRACTIONS,
    PerturbationCurve,
    make_perturbation,
    perturbation_curve,
    perturbation_predictions,
    removal_masks,
)

__all__ = [
    "METRIC_DIRECTIONS",
    "Direction",
    "average_precision",
    "balanced_accuracy",
    "consistency_kl",
    "curve_auc",
    "iou_at_quantile",
    "match_mask_grid",
    "pointing_game",
    "resize_mass",
    "sharpness",
    "spearman_rank_correlation",
    "DEFAULT_FRACTIONS",
    "PerturbationCurve",
    "make_perturbation",
    "perturbation_curve",
    "perturbation_predictions",
    "removal_masks",
    "evaluate_runs",
    "write_tables",
]


def __getattr__(name: str) -> Any:
    # the runner and tables pull in the data/model/weights packages: load them on first use
    if name == "evaluate_runs":
        from .runner import evaluate_runs

        return evaluate_runs
    if name == "write_tables":
        from .tables import write_tables

        return write_tables
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
