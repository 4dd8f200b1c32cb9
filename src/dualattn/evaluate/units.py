"""The evaluation's unit of work: one method on one trained run, explained and scored.

:func:`plan_units` decides which runs each method explains (:func:`dualattn.explain.select_sources`) and at which
blocks; :func:`evaluate_unit` explains the run's test images at those blocks, scores the maps
(:func:`dualattn.evaluate.scoring.score_maps`) and returns the unit's JSON-serializable record -- the one
:mod:`dualattn.evaluate.resume` stores so that an interrupted evaluation resumes unit by unit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from ..explain import METHOD_ALIASES, PIXEL_METHODS, explain_blocks, list_methods, method_family, select_sources
from . import metrics as M
from .resume import RESUME_FORMAT
from .scoring import nanmean, randomized_copy, score_maps
from .settings import EvalSettings
from .testset import TestSet, batches, fit_to_model

__all__ = ["Unit", "EvalContext", "resolve_methods", "plan_units", "evaluate_unit"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Unit:
    """Method ``method`` on run ``k`` of its sources, at ``blocks``; ``classifier`` scores its perturbation;
    ``note`` says why the method's first unit has fewer blocks than asked for."""

    method: str
    family: str
    k: int
    run: Any  # a dualattn.runs.RunDir
    blocks: tuple[str, ...]
    classifier: Any | None  # the baseline RunDir paired with this run (k mod #baselines), or None
    note: str | None = None


class EvalContext:
    """What every unit of one evaluation shares: settings, device, test set, the images fitted to each model."""

    def __init__(self, settings: EvalSettings, test: TestSet, device: torch.device, notes: list[str]) -> None:
        self.settings = settings
        self.test = test
        self.device = device
        self.notes = notes
        #: mean lesion area (fraction of the image) of the train split: the ``center`` control's size
        self.lesion_fraction: float | None = None
        #: predictions at the map-independent fractions, per classifier and fill (see ``score_maps``)
        self.prediction_cache: dict[Any, Tensor] = {}
        self._inputs: dict[int, Tensor] = {}

    def images_for(self, run: Any) -> Tensor:
        """The test images fitted to ``run``'s model (computed once per run; each change noted once)."""
        key = id(run)
        if key not in self._inputs:
            in_ch, size = run.model_input()
            x, fit_notes = fit_to_model(self.test.images, in_channels=in_ch, size=size)
            for note in fit_notes:
                text = f"{run.path.name} ({run.variant}): {note}"
                if text not in self.notes:
                    self.notes.append(text)
            self._inputs[key] = x
        return self._inputs[key]


def resolve_methods(methods: str | Sequence[str], in_channels: int) -> list[str]:
    """The method names an evaluation runs: ``"all"`` -> every method but the any-variant ``attention``.

    Raises:
        ValueError: an unknown method (the message lists the valid ones).
    """
    if methods == "all":
        return [m for m in list_methods(in_channels=in_channels) if m != "attention"]
    wanted = [methods] if isinstance(methods, str) else list(methods)
    wanted = list(dict.fromkeys(METHOD_ALIASES.get(m, m) for m in wanted))
    valid = set(list_methods(in_channels=max(in_channels, 1)))
    bad = [m for m in wanted if m not in valid and not m.startswith("raw_channel_")]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {sorted(valid)}")
    return wanted


def plan_units(
    methods: Sequence[str], runs: Sequence[Any], baselines: Sequence[Any], blocks: Sequence[str], notes: list[str],
) -> tuple[list[Unit], dict[str, dict[str, Any]]]:
    """Every (method, run) unit, in method order, and each method's source (``{"variant", "runs"}``).

    Methods without a run to explain are skipped with a note; attention methods are evaluated only at the
    blocks their model has gates at (the method's first unit carries a note when fewer than asked); ViT maps
    at ``"patches"``.
    """
    units: list[Unit] = []
    sources: dict[str, dict[str, Any]] = {}
    skipped = []
    for method in methods:
        src = select_sources(method, runs, baselines)
        if not src:
            skipped.append(method)
            continue
        family = method_family(method)
        method_blocks: tuple[str, ...] = ("patches",) if family == "vit" else tuple(blocks)
        note = None
        if family in ("attention", "cvx") or method in ("prior", "dual_tau"):
            gated = tuple(getattr(src[0].model, "attention_blocks", ()) or ())
            kept = tuple(b for b in blocks if b in gated)
            if kept != tuple(blocks):
                note = (f"{method}: the model has attention maps only at {', '.join(gated) or 'no block'}; "
                        f"evaluated at {', '.join(kept) or 'none'}")
            method_blocks = kept
        sources[method] = {"variant": src[0].variant, "runs": [str(r.path) for r in src]}
        for k, run in enumerate(src):
            clf = baselines[k % len(baselines)] if baselines else None
            units.append(Unit(method=method, family=family, k=k, run=run, blocks=method_blocks, classifier=clf,
                              note=note if k == 0 else None))
    if skipped:
        notes.append(f"methods without a run to explain (skipped): {', '.join(skipped)}")
    return units, sources


def _explain_all(model: Any, images: Tensor, unit: Unit, ctx: EvalContext, targets: Tensor | None,
                 options: dict[str, Any], blocks: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, float],
                                                                           dict[str, str]]:
    """Maps of every block over all images (batched), ms per image per block, errors per block.

    Pixel-level methods compute their attribution once per batch for all blocks (it does not depend on the
    block), so every block is charged the shared time; other methods are timed block by block.
    """
    groups = [tuple(blocks)] if unit.method in PIXEL_METHODS else [(b,) for b in blocks]
    n = images.shape[0]
    maps: dict[str, Tensor] = {}
    costs: dict[str, float] = {}
    errors: dict[str, str] = {}
    for group in groups:
        parts: dict[str, list[Tensor]] = {}
        t0 = time.perf_counter()
        for s in batches(n, ctx.settings.batch_size):
            live = [b for b in group if b not in errors]
            if not live:
                break
            tgt = None if targets is None else targets[s].to(ctx.device)
            got = explain_blocks(model, images[s].to(ctx.device), method=unit.method, blocks=live, target=tgt,
                                 errors=errors, **options)
            for b, m in got.items():
                parts.setdefault(b, []).append(m.cpu())
        ms = 1000.0 * (time.perf_counter() - t0) / n
        for b, p in parts.items():
            if b not in errors:
                maps[b] = torch.cat(p)
                costs[b] = ms
    return maps, costs, errors


def evaluate_unit(unit: Unit, ctx: EvalContext, *, warm_up: bool = False) -> dict[str, Any]:
    """Explain run ``unit.k`` of ``unit.method`` and score it.

    Returns:
        The unit's JSON-serializable record: per-block metrics (in the order they are added), perturbation
        curves per fill, per-image segmentation values and perturbation predictions (for the paired bootstrap),
        the fine-vs-coarse consistency KL (not for pixel-level explainers, whose maps are no distributions), and
        notes of blocks that could not be explained.
    """
    s, test = ctx.settings, ctx.test
    model = unit.run.model
    x = ctx.images_for(unit.run)
    options: dict[str, Any] = {}
    if unit.method == "integrated_gradients":
        options["n_steps"] = s.ig_steps
    if unit.method == "random":
        options["seed"] = s.seed
    if unit.method == "center" and ctx.lesion_fraction is not None:
        options["lesion_fraction"] = ctx.lesion_fraction
    if unit.method == "prior":  # an amortized witness's prior: its mean over the whole test set
        options["population"] = x
    targets = test.labels if unit.family == "posthoc" else None
    if warm_up:
        # warm-up (lazy imports, allocator) so that cost_ms measures the method itself
        _explain_all(model, x[:1], unit, ctx, None if targets is None else targets[:1], options, unit.blocks[:1])
    maps, costs, errors = _explain_all(model, x, unit, ctx, targets, options, unit.blocks)
    notes = []
    for block, err in errors.items():
        text = f"{unit.method} at {block} on {unit.run.path.name}: not computed ({err})"
        logger.warning(text)
        notes.append(text)
    after: dict[str, Tensor] = {}
    if s.sanity_images > 0 and unit.family in ("attention", "cvx", "posthoc", "vit") and maps:
        n_s = min(s.sanity_images, test.images.shape[0])
        rnd = randomized_copy(model, seed=s.seed + 1)
        after, _, _ = _explain_all(rnd, x[:n_s], unit, ctx, None if targets is None else targets[:n_s], options,
                                   tuple(maps))
        del rnd
    clf = unit.classifier
    pixel_level = unit.method in PIXEL_METHODS
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    per_image: dict[str, dict[str, list[float]]] = {}
    predictions: dict[str, dict[str, dict[str, list[list[int]]]]] = {}
    for block in unit.blocks:
        if block not in maps:
            continue
        scored = score_maps(
            maps[block], test, classifier=None if clf is None else clf.model,
            classifier_images=None if clf is None else ctx.images_for(clf), fractions=s.fractions,
            fills=s.fills, batch_size=s.batch_size, device=ctx.device, seed=s.seed,
            cache=ctx.prediction_cache,
        )
        vals = {"cost_ms": costs[block], **scored["metrics"]}
        if pixel_level:
            # min-max scaled pixel attributions are no distribution: their sharpness would say nothing
            vals.pop("sharpness", None)
        for key in ("curves", "per_image", "predictions"):
            if scored[key]:
                {"curves": curves, "per_image": per_image, "predictions": predictions}[key][block] = scored[key]
        if block in after:
            n_s = after[block].shape[0]
            rho = M.spearman_rank_correlation(maps[block][:n_s], after[block])
            vals["randomization_spearman"] = nanmean(rho.abs())
        metrics[block] = vals
    consistency = None
    first_two = s.blocks[:2]
    if len(s.blocks) >= 2 and all(b in maps for b in first_two) and not pixel_level:
        fine, coarse = maps[first_two[0]], maps[first_two[1]]
        if fine.shape[2:] != coarse.shape[2:]:
            consistency = {"pair": "+".join(first_two), "value": nanmean(M.consistency_kl(fine, coarse))}
    return {
        "format": RESUME_FORMAT,
        "method": unit.method,
        "k": int(unit.k),
        "run": str(unit.run.path),
        "classifier": None if clf is None else str(clf.path),
        "blocks": list(unit.blocks),
        "metrics": {b: {n: float(v) for n, v in vals.items()} for b, vals in metrics.items()},
        "curves": curves,
        "per_image": per_image,
        "predictions": predictions,
        "consistency": consistency,
        "errors": notes,
    }
