"""Scoring one method's maps on the test set: the paper's two protocols and the diagnostics.

:func:`score_maps` is pure (its inputs are not changed; no file, no global): maps of one block in, a dict of
per-run numbers out. The model-randomization sanity check's copy comes from :func:`randomized_copy`.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..explain import eval_mode
from . import metrics as M
from .perturbation import make_fill, perturbation_predictions
from .testset import TestSet, batches

__all__ = ["QUANTILES", "ORDERS", "score_maps", "randomized_copy", "nanmean"]

#: IoU columns -> quantile of the map's values used as the threshold (DESIGN.md §2)
QUANTILES: dict[str, float] = {"iou@97.5": 0.975, "iou@95": 0.95, "iou@90": 0.90}
#: perturbation orders: the paper's (least important removed first) and deletion (most first)
ORDERS: tuple[str, ...] = ("least_first", "most_first")


def nanmean(x: Tensor) -> float:
    """Mean over the finite entries of ``x`` (float64); NaN when there is none."""
    x = x.double()
    ok = torch.isfinite(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


def score_maps(
    maps: Tensor,
    test: TestSet,
    *,
    classifier: nn.Module | None = None,
    classifier_images: Tensor | None = None,
    fractions: Sequence[float] = (),
    fills: Sequence[str] = ("mean",),
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    cache: dict[Any, Tensor] | None = None,
) -> dict[str, Any]:
    """Score one block's maps of every test image.

    Args:
        maps: ``(N, 1, *grid)``, one map per test image, in test-set order.
        test: the test set (labels, masks).
        classifier: the baseline classifier of the perturbation protocol (``None``: no perturbation).
        classifier_images: the test images as ``classifier`` takes them (:func:`fit_to_model`).
        fractions: removed fractions of the perturbation curve (0 ... 1).
        fills: what replaces removed pixels (:data:`dualattn.evaluate.perturbation.FILLS`); the first is the
            one behind the un-suffixed keys (the paper's protocol).
        batch_size: images per classifier call.
        device: where the classifier runs.
        seed: seed of the noisy fills (ROAD; its noise does not depend on the batching).
        cache: a dict kept across calls with the same classifier and images (e.g. every method of one run):
            the predictions at the fractions that do not depend on the map (0: nothing removed; 1: everything
            removed) are computed once per fill and looked up afterwards.

    Returns:
        ``{"metrics", "curves", "per_image", "predictions"}``:

        * ``metrics``: ``sharpness``; on the images with a non-empty mask the IoU at each quantile, ``ap`` and
          ``pointing_game`` (x100); with a classifier, per fill ``auc_least_first@<fill>``,
          ``auc_most_first@<fill>`` and ``srg@<fill>`` (x100), and the first fill's under the un-suffixed keys;
        * ``curves``: fill -> order -> balanced accuracy x100 per fraction;
        * ``per_image``: segmentation metric -> one value per positive image (x100, NaN where undefined);
        * ``predictions``: fill -> order -> ``(N, F)`` predicted classes (what the paired bootstrap resamples).
    """
    vals: dict[str, float] = {"sharpness": nanmean(M.sharpness(maps))}
    per_image: dict[str, list[float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    predictions: dict[str, dict[str, list[list[int]]]] = {}
    pos = test.positives
    if len(pos):
        pm, mk = maps[pos], test.masks[pos]
        for name, q in QUANTILES.items():
            per_image[name] = (100.0 * M.iou_at_quantile(pm, mk, q)).tolist()
        per_image["activation_precision"] = (100.0 * M.activation_precision(pm, mk, 0.95)).tolist()
        per_image["ap"] = (100.0 * M.average_precision(pm, mk)).tolist()
        per_image["pointing_game"] = (100.0 * M.pointing_game(pm, mk)).tolist()
        for name, values in per_image.items():
            vals[name] = nanmean(torch.tensor(values))
    if classifier is not None and classifier_images is not None:
        for k, fill in enumerate(fills):
            aucs = {}
            for order in ORDERS:
                pr = _predictions(classifier, classifier_images, maps, fractions=fractions, order=order, fill=fill,
                                  seed=seed, batch_size=batch_size, device=device, cache=cache)
                acc = [float(100.0 * M.balanced_accuracy(test.labels, pr[:, j])) for j in range(len(fractions))]
                curves.setdefault(fill, {})[order] = acc
                predictions.setdefault(fill, {})[order] = pr.tolist()
                aucs[order] = M.curve_auc(fractions, [a / 100.0 for a in acc])
                vals[f"auc_{order}@{fill}"] = aucs[order]
            vals[f"srg@{fill}"] = aucs["least_first"] - aucs["most_first"]
            if k == 0:
                vals.update({"auc_least_first": aucs["least_first"], "auc_most_first": aucs["most_first"],
                             "srg": vals[f"srg@{fill}"]})
    return {"metrics": vals, "curves": curves, "per_image": per_image, "predictions": predictions}


def _predictions(
    classifier: nn.Module, images: Tensor, maps: Tensor, *, fractions: Sequence[float], order: str, fill: str,
    seed: int, batch_size: int, device: torch.device | str, cache: dict[Any, Tensor] | None,
) -> Tensor:
    """``(N, F)`` predictions of ``classifier`` on the images perturbed by ``maps`` at every fraction.

    With a ``cache``, the map-independent end fractions (0 and 1) come from it (computed on first use), and
    only the fractions in between are perturbed by this map.
    """
    fr = [float(f) for f in fractions]
    ends = [f for f in fr if f in (0.0, 1.0)]
    inner = [f for f in fr if f not in (0.0, 1.0)]
    if cache is None or not ends or len(inner) < 2:
        ends, inner = [], fr
    make = make_fill(fill, seed=seed)
    cols: dict[float, Tensor] = {}
    with eval_mode(classifier):
        if inner:
            out = torch.cat([perturbation_predictions(
                classifier, images[s].to(device), maps[s].to(device), fractions=inner, order=order, fill=make,
            ).cpu() for s in batches(maps.shape[0], batch_size)])
            cols.update({f: out[:, j] for j, f in enumerate(inner)})
        for f in ends:
            key = (id(classifier), id(images), fill, seed, f)
            if key not in cache:
                # nothing or everything removed: any map gives the same images (rank by a constant map)
                flat = torch.ones_like(maps)
                cache[key] = torch.cat([perturbation_predictions(
                    classifier, images[s].to(device), flat[s].to(device), fractions=(0.0, 1.0), order=order,
                    fill=make,
                ).cpu()[:, 0 if f == 0.0 else 1] for s in batches(maps.shape[0], batch_size)])
            cols[f] = cache[key]
    return torch.stack([cols[f] for f in fr], dim=1)


def randomized_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialized (``reset_parameters``; other
    parameters redrawn from N(0, 0.02^2)) -- the model-randomization test of Adebayo et al. 2018."""
    clone = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        done: set[int] = set()
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                done.update(id(p) for p in m.parameters(recurse=False))
        with torch.no_grad():
            for p in clone.parameters():
                if id(p) not in done:
                    p.normal_(0.0, 0.02)
    return clone
