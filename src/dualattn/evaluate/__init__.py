"""Scoring explanations: pure per-sample metrics, perturbation curves, and ``evaluate_runs``.

One concept per module:

* :mod:`~dualattn.evaluate.metrics` -- pure per-sample metrics (``iou_at_quantile``, ``average_precision``,
  ``pointing_game``, ``balanced_accuracy``, ``curve_auc``, ``consistency_kl``, ``spearman_rank_correlation``,
  ``sharpness``);
* :mod:`~dualattn.evaluate.specs` -- the one metric table (:data:`METRICS`: label, description, direction);
* :mod:`~dualattn.evaluate.perturbation` -- input-perturbation curves (least/most important first,
  injectable perturbation value);
* :mod:`~dualattn.evaluate.testset` -- the test images as tensors and the one rule fitting them to a model;
* :mod:`~dualattn.evaluate.scoring` -- ``score_maps``: one block's maps -> the protocols' numbers;
* :mod:`~dualattn.evaluate.units` -- one method on one run: plan, explain, score;
* :mod:`~dualattn.evaluate.resume` -- unit records under ``OUT/.partial`` (fingerprints);
* :mod:`~dualattn.evaluate.statistics` / :mod:`~dualattn.evaluate.results` -- mean ± std over runs,
  ``results.json`` assembly; :mod:`~dualattn.evaluate.tables` -- Markdown/CSV tables;
* :mod:`~dualattn.evaluate.settings` / :mod:`~dualattn.evaluate.runner` -- :class:`EvalSettings` and
  :func:`evaluate_runs`, the orchestration (schema in ``docs/evaluation.md``).

Example:
    >>> import torch
    >>> from dualattn.evaluate import iou_at_quantile
    >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
    >>> iou_at_quantile(m, m, 0.9).tolist()
    [1.0]
"""

from __future__ import annotations

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
from .specs import METRICS, MetricSpec
from .perturbation import (
    FILLS,
    DEFAULT_FRACTIONS,
    make_fill,
    PerturbationCurve,
    make_perturbation,
    perturbation_curve,
    perturbation_predictions,
    removal_masks,
)
from .runner import evaluate_runs
from .settings import EvalSettings
from .tables import write_tables

__all__ = [
    "METRICS",
    "MetricSpec",
    "EvalSettings",
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
    "FILLS",
    "make_fill",
    "PerturbationCurve",
    "make_perturbation",
    "perturbation_curve",
    "perturbation_predictions",
    "removal_masks",
    "evaluate_runs",
    "write_tables",
]
