"""Scoring one method's maps on the test set: the paper's two protocols, the hiding test and the diagnostics.

:func:`map_scores` needs the maps only (implicit segmentation, sharpness); :func:`classifier_scores` scores
them on one classifier (input perturbation on accuracy and on the true class's probability, the hiding test):
the baseline in the ``common_classifier`` protocol, the map's own model in ``own_model``. :func:`score_maps` is
both. All are pure (their inputs are not changed; no file, no global). The model-randomization sanity check's
copy comes from :func:`randomized_copy`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..explain import eval_mode
from . import metrics as M
from .hiding import hiding_test
from .perturbation import make_fill, perturbation_outputs
from .testset import TestSet, batches

__all__ = ["QUANTILES", "ORDERS", "HidingSetup", "score_maps", "map_scores", "classifier_scores", "randomized_copy",
           "nanmean"]

#: IoU columns -> quantile of the map's values used as the threshold (DESIGN.md §2)
QUANTILES: dict[str, float] = {"iou@97.5": 0.975, "iou@95": 0.95, "iou@90": 0.90}
#: perturbation orders: the paper's (least important removed first) and deletion (most first)
ORDERS: tuple[str, ...] = ("least_first", "most_first")


def nanmean(x: Tensor) -> float:
    """Mean over the finite entries of ``x`` (float64); NaN when there is none."""
    x = x.double()
    ok = torch.isfinite(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


@dataclasses.dataclass(frozen=True)
class HidingSetup:
    """What the hiding test needs besides the maps and the classifier (computed once per evaluation).

    Attributes:
        ks: kept shares of the foreground cells (percent).
        fills: ``"partner"`` and/or ``"road"``.
        partners: ``(N, n)`` matched healthy partners (:func:`dualattn.evaluate.hiding.match_partners`), or
            ``None`` when only the ROAD fill runs.
        fg: ``(N, 1, *S)`` foreground of the images the swaps are made in.
        raw: the images the swaps are made in (the raw test images), ``None``: the model's own input images.
        preprocess: ``raw batch -> the model's input`` (its normalization and fitting), with ``raw``.
    """

    ks: tuple[int, ...]
    fills: tuple[str, ...]
    partners: Tensor | None
    fg: Tensor
    raw: Tensor | None = None
    preprocess: Any = None


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
    hiding: HidingSetup | None = None,
) -> dict[str, Any]:
    """Score one block's maps of every test image: :func:`map_scores` and, with a classifier,
    :func:`classifier_scores` (merged; same arguments).

    Returns:
        ``{"metrics", "curves", "per_image", "predictions"}``.
    """
    out = map_scores(maps, test)
    if classifier is not None and classifier_images is not None:
        clf = classifier_scores(maps, test, classifier=classifier, classifier_images=classifier_images,
                                fractions=fractions, fills=fills, batch_size=batch_size, device=device, seed=seed,
                                cache=cache, hiding=hiding)
        out["metrics"].update(clf["metrics"])
        out["per_image"].update(clf["per_image"])
        out["curves"], out["predictions"] = clf["curves"], clf["predictions"]
    return out


def _foreground_cells(maps: Tensor, test: TestSet) -> Tensor:
    """``(N, cells)`` bool: the map's cells that are at least half foreground in the raw test images (the hiding
    test's candidate cells)."""
    from .hiding import candidate_cells, foreground

    fg = foreground(test.raw_images if test.raw_images is not None else test.images)
    return candidate_cells(fg, tuple(maps.shape[2:]))


def map_scores(maps: Tensor, test: TestSet) -> dict[str, Any]:
    """What a map scores without a classifier: sharpness (over the whole grid and over the foreground cells), and
    on the images with a non-empty mask the IoU at
    each quantile, activation precision, ``ap`` and ``pointing_game`` (x100).

    Returns:
        ``{"metrics": {name: value}, "per_image": {name: one value per positive image (x100, NaN where
        undefined)}, "curves": {}, "predictions": {}}``.
    """
    vals: dict[str, float] = {"sharpness": nanmean(M.sharpness(maps)),
                              "sharpness_fg": nanmean(M.sharpness_in(maps, _foreground_cells(maps, test)))}
    per_image: dict[str, list[float]] = {}
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
    return {"metrics": vals, "curves": {}, "per_image": per_image, "predictions": {}}


def classifier_scores(
    maps: Tensor,
    test: TestSet,
    *,
    classifier: nn.Module | None = None,
    classifier_images: Tensor | None = None,
    classifiers: Mapping[str, tuple[nn.Module, Tensor]] | None = None,
    fractions: Sequence[float] = (),
    fills: Sequence[str] = ("mean",),
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    cache: dict[Any, Tensor] | None = None,
    hiding: HidingSetup | Mapping[str, HidingSetup | None] | None = None,
) -> dict[str, Any]:
    """What a map scores on a classifier: the perturbation protocol and the hiding test.

    Args:
        maps: ``(N, 1, *grid)``, one map per test image, in test-set order.
        test: the test set (labels).
        classifier: the model the perturbed images go to (the baseline in the ``common_classifier`` protocol,
            the map's own model in ``own_model``).
        classifier_images: the test images as ``classifier`` takes them (:func:`fit_to_model`).
        classifiers: instead of ``classifier``: role -> ``(model, images)``; classifiers that take the same
            images see the same perturbed images, made once (ROAD's imputation, the hiding test's swaps).
        fractions: removed fractions of the perturbation curve (0 ... 1; fewer than 2: no curves).
        fills: what replaces removed pixels (:data:`dualattn.evaluate.perturbation.FILLS`); the first is the
            one behind the un-suffixed keys (the paper's protocol).
        batch_size: images per classifier call.
        device: where the classifier runs.
        seed: seed of the noisy fills (ROAD; its noise does not depend on the batching).
        cache: a dict kept across calls with the same classifier and images (e.g. every method of one run):
            the outputs at the fractions that do not depend on the map (0: nothing removed; 1: everything
            removed) are computed once per fill and looked up afterwards.
        hiding: the hiding test's setup (:class:`HidingSetup`; per role with ``classifiers``); ``None``: not run.

    Returns:
        ``{"metrics", "curves", "per_image", "predictions"}`` (with ``classifiers``: role -> that dict):

        * ``metrics``: per fill ``auc_least_first@<fill>``, ``auc_most_first@<fill>`` and ``srg@<fill>`` on the
          balanced accuracy, and ``auc_least_first_prob@<fill>``, ``auc_most_first_prob@<fill>`` and
          ``srg_prob@<fill>`` on each image's true-class probability (mean over images; x100); the first fill's
          accuracy keys also un-suffixed; the hiding test's metrics (:func:`dualattn.evaluate.hiding.hiding_test`);
        * ``curves``: fill -> order -> balanced accuracy x100 per fraction, and ``<order>_prob`` -> mean
          true-class probability x100 per fraction;
        * ``per_image``: the probability AUCs / SRG and the hiding metrics, one value per test image;
        * ``predictions``: fill -> order -> ``(N, F)`` predicted classes (what the bootstrap resamples).
    """
    single = classifiers is None
    if single:
        if classifier is None or classifier_images is None:
            raise ValueError("give classifier and classifier_images, or classifiers")
        classifiers = {"": (classifier, classifier_images)}
        hiding = {"": hiding} if not isinstance(hiding, Mapping) else hiding
    elif not isinstance(hiding, Mapping):
        hiding = {role: hiding for role in classifiers}
    results: dict[str, dict[str, Any]] = {
        role: {"metrics": {}, "curves": {}, "per_image": {}, "predictions": {}} for role in classifiers}
    groups: dict[int, list[str]] = {}
    for role, (_, images) in classifiers.items():
        groups.setdefault(id(images), []).append(role)
    labels = test.labels
    for roles in groups.values():
        models = [classifiers[r][0] for r in roles]
        images = classifiers[roles[0]][1]
        if len(fractions) >= 2:
            for k, fill in enumerate(fills):
                aucs: dict[str, dict[str, float]] = {r: {} for r in roles}
                prob_aucs: dict[str, dict[str, Tensor]] = {r: {} for r in roles}
                for order in ORDERS:
                    outs = _outputs(models, images, maps, fractions=fractions, order=order, fill=fill, seed=seed,
                                    batch_size=batch_size, device=device, cache=cache)
                    for role, logp in zip(roles, outs):
                        res = results[role]
                        pr = logp.argmax(2)
                        p_true = logp.gather(2, labels.view(-1, 1, 1).expand(-1, logp.shape[1], 1))[..., 0]
                        p_true = p_true.double().exp()
                        acc = [float(100.0 * M.balanced_accuracy(labels, pr[:, j])) for j in range(len(fractions))]
                        res["curves"].setdefault(fill, {})[order] = acc
                        res["curves"][fill][f"{order}_prob"] = (100.0 * p_true.mean(0)).tolist()
                        res["predictions"].setdefault(fill, {})[order] = pr.tolist()
                        aucs[role][order] = M.curve_auc(fractions, [a / 100.0 for a in acc])
                        res["metrics"][f"auc_{order}@{fill}"] = aucs[role][order]
                        prob_aucs[role][order] = _per_image_auc(fractions, p_true)
                        res["per_image"][f"auc_{order}_prob@{fill}"] = prob_aucs[role][order].tolist()
                        res["metrics"][f"auc_{order}_prob@{fill}"] = nanmean(prob_aucs[role][order])
                for role in roles:
                    vals, per_image = results[role]["metrics"], results[role]["per_image"]
                    vals[f"srg@{fill}"] = aucs[role]["least_first"] - aucs[role]["most_first"]
                    srg_prob = prob_aucs[role]["least_first"] - prob_aucs[role]["most_first"]
                    per_image[f"srg_prob@{fill}"] = srg_prob.tolist()
                    vals[f"srg_prob@{fill}"] = nanmean(srg_prob)
                    if k == 0:
                        vals.update({"auc_least_first": aucs[role]["least_first"],
                                     "auc_most_first": aucs[role]["most_first"], "srg": vals[f"srg@{fill}"]})
        setups = [hiding.get(r) for r in roles]
        if setups[0] is not None:
            raw = setups[0].raw
            got = hiding_test(models, images if raw is None else raw, maps, labels, partners=setups[0].partners,
                              fg=setups[0].fg, ks=setups[0].ks, fills=setups[0].fills, batch_size=max(batch_size, 64),
                              device=device, seed=seed,
                              preprocess=None if raw is None else [st.preprocess for st in setups])
            for role, per in zip(roles, got):
                for name, values in per.items():
                    results[role]["per_image"][name] = values
                    results[role]["metrics"][name] = nanmean(torch.tensor(values, dtype=torch.float64))
    return results[""] if single else results


def _per_image_auc(fractions: Sequence[float], values: Tensor) -> Tensor:
    """``(N,)`` trapezoid AUC x100 of each row of ``values (N, F)`` over ``fractions``, divided by their range."""
    x = torch.tensor([float(f) for f in fractions], dtype=torch.float64)
    return 100.0 * torch.trapezoid(values.double(), x, dim=1) / float(x[-1] - x[0])


def _outputs(
    models: Sequence[nn.Module], images: Tensor, maps: Tensor, *, fractions: Sequence[float], order: str, fill: str,
    seed: int, batch_size: int, device: torch.device | str, cache: dict[Any, Tensor] | None,
) -> list[Tensor]:
    """``(N, F, K)`` log-probabilities of every model on the images perturbed by ``maps`` at every fraction (the
    perturbed images made once for all models).

    With a ``cache``, the map-independent end fractions (0 and 1) come from it (computed on first use), and
    only the fractions in between are perturbed by this map.
    """
    fr = [float(f) for f in fractions]
    ends = [f for f in fr if f in (0.0, 1.0)]
    inner = [f for f in fr if f not in (0.0, 1.0)]
    if cache is None or not ends or len(inner) < 2:
        ends, inner = [], fr
    make = make_fill(fill, seed=seed)
    cols: list[dict[float, Tensor]] = [{} for _ in models]
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        if inner:
            parts = [perturbation_outputs(list(models), images[s].to(device), maps[s].to(device), fractions=inner,
                                          order=order, fill=make) for s in batches(maps.shape[0], batch_size)]
            for j in range(len(models)):
                out = torch.cat([p[j].cpu() for p in parts])
                cols[j].update({f: out[:, i] for i, f in enumerate(inner)})
        for f in ends:
            missing = [j for j, m in enumerate(models) if (id(m), id(images), fill, seed, f) not in cache]
            if missing:
                # nothing or everything removed: any map gives the same images (rank by a constant map)
                flat = torch.ones_like(maps)
                parts = [perturbation_outputs([models[j] for j in missing], images[s].to(device), flat[s].to(device),
                                              fractions=(0.0, 1.0), order=order, fill=make)
                         for s in batches(maps.shape[0], batch_size)]
                for i, j in enumerate(missing):
                    cache[(id(models[j]), id(images), fill, seed, f)] = torch.cat(
                        [p[i].cpu()[:, 0 if f == 0.0 else 1] for p in parts])
            for j, m in enumerate(models):
                cols[j][f] = cache[(id(m), id(images), fill, seed, f)]
    return [torch.stack([c[f] for f in fr], dim=1) for c in cols]


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
