"""The evaluation's unit of work: one method on one trained run, explained once and scored on each classifier
its protocols need.

Two protocols, always named (DESIGN.md section 2):

* ``common_classifier`` (the paper's): post-hoc maps and most controls explain the baseline, every map's
  perturbation curves and hiding test run on the baseline classifier (role ``"baseline"``: baseline run
  ``k mod #baselines``);
* ``own_model``: every map is scored on the model it comes from (role ``"self"``), and the post-hoc
  explainers and controls of ``EvalSettings.own_model_methods`` also explain every other CNN variant's runs,
  so "attention of X vs LRP of X" is one comparison on one model.

:func:`plan_units` decides which runs each method explains and with which roles; a unit whose run is a
baseline scores once when both roles name the same classifier. :func:`evaluate_unit` explains the run's
test images at the unit's blocks, scores the maps without a classifier (implicit segmentation, sharpness,
randomization, consistency) and on each role's classifier (perturbation on accuracy and on probabilities,
the hiding test), and returns the JSON-serializable record that :mod:`dualattn.evaluate.resume` stores.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..explain import (
    METHOD_ALIASES,
    PIXEL_METHODS,
    block_grid,
    explain_blocks,
    get_method,
    list_methods,
    method_family,
    select_sources,
)
from . import metrics as M
from .hiding import foreground, lesion_oracle_maps, match_partners
from .resume import RESUME_FORMAT
from .scoring import HidingSetup, classifier_scores, map_scores, nanmean, randomized_copy
from .settings import EvalSettings
from ..data.transforms import normalize
from .testset import TestSet, batches, fit_to_model

__all__ = [
    "PROTOCOLS",
    "ROLE_OF",
    "EVAL_REFERENCES",
    "Unit",
    "EvalContext",
    "resolve_methods",
    "plan_units",
    "evaluate_unit",
    "role_view",
]

logger = logging.getLogger(__name__)

#: the two protocols and the classifier role each scores on
PROTOCOLS: tuple[str, ...] = ("common_classifier", "own_model")
ROLE_OF: dict[str, str] = {"common_classifier": "baseline", "own_model": "self"}
#: maps the evaluation makes from the data itself (not from a model): the dilated-lesion oracle of the hiding
#: test (the top cells are the lesion's, then those nearest to it); a control, scored like the methods
EVAL_REFERENCES: tuple[str, ...] = ("lesion_oracle",)
#: families whose maps come from the explained run itself (their own-model sources are their common ones)
_OWN_FAMILIES = ("attention", "cvx", "vit")


@dataclasses.dataclass(frozen=True)
class Unit:
    """Method ``method`` on run ``run`` at ``blocks``, scored on ``classifiers`` (role -> run).

    ``k`` is the run's index among the method's sources in the ``common_classifier`` protocol (``None`` when
    the unit is not part of it); ``k_own`` its index among the runs of its variant (``None`` when the unit is
    not part of ``own_model``). ``note`` says why the method's first unit has fewer blocks than asked for.
    """

    method: str
    family: str
    run: Any  # a dualattn.runs.RunDir
    blocks: tuple[str, ...]
    classifiers: Mapping[str, Any]
    k: int | None
    k_own: int | None
    note: str | None = None

    @property
    def variant(self) -> str:
        return str(self.run.variant)


class EvalContext:
    """What every unit of one evaluation shares: settings, device, test set, the images fitted to each model,
    the hiding test's partners."""

    def __init__(self, settings: EvalSettings, test: TestSet, device: torch.device, notes: list[str]) -> None:
        self.settings = settings
        self.test = test
        self.device = device
        self.notes = notes
        #: mean lesion area (fraction of the image) of the train split: the ``center`` control's size
        self.lesion_fraction: float | None = None
        #: outputs at the map-independent fractions, per classifier and fill (see ``classifier_scores``)
        self.prediction_cache: dict[Any, Tensor] = {}
        self._inputs: dict[int, Tensor] = {}
        self._hiding: dict[int, HidingSetup | None] = {}
        self._partners: Tensor | None = None
        self._raw_fg: Tensor | None = None

    def preprocess_for(self, run: Any) -> Callable[[Tensor], tuple[Tensor, list[str]]]:
        """``raw images -> (the images as run's model takes them, notes)``: the run's own normalization
        (:attr:`dualattn.runs.RunDir.input_normalization`: a per-sample z-score, or none for a model that
        normalizes its visible pixels itself), then the channel and size fitting of :func:`fit_to_model`."""
        norm = str(getattr(run, "input_normalization", "zscore") or "zscore")
        in_ch, size = run.model_input()

        def prep(raw: Tensor) -> tuple[Tensor, list[str]]:
            x = raw if norm == "none" else torch.stack([normalize(img, method=norm) for img in raw])
            return fit_to_model(x, in_channels=in_ch, size=size, normalization=None if norm == "none" else norm)

        return prep

    def images_for(self, run: Any) -> Tensor:
        """The test images fitted to ``run``'s model (computed once per run; each change noted once)."""
        key = id(run)
        if key not in self._inputs:
            if self.test.raw_images is not None:
                x, fit_notes = self.preprocess_for(run)(self.test.raw_images)
            else:
                in_ch, size = run.model_input()
                x, fit_notes = fit_to_model(self.test.images, in_channels=in_ch, size=size)
            for note in fit_notes:
                text = f"{run.path.name} ({run.variant}): {note}"
                if text not in self.notes:
                    self.notes.append(text)
            self._inputs[key] = x
        return self._inputs[key]

    def partners(self) -> Tensor | None:
        """The hiding test's matched healthy partners of every test image (``None`` without the partner fill)."""
        s = self.settings
        if "partner" not in s.hiding_fills or not s.hiding_ks:
            return None
        if self._partners is None:
            fg = foreground(self.test.raw_images if self.test.raw_images is not None else self.test.images)
            self._partners = match_partners(fg, self.test.labels, self.test.patients, n_partners=s.hiding_partners)
            missing = int((self._partners[:, 0] < 0).sum())
            if missing:
                self.notes.append(f"hiding test: {missing} test image(s) have no healthy partner of another "
                                  "patient; their swap values are undefined")
        return self._partners

    def hiding_for(self, run: Any) -> HidingSetup | None:
        """The hiding test's setup on ``run``'s input images (``None`` when the test is off)."""
        s = self.settings
        if not s.hiding_ks or not s.hiding_fills:
            return None
        key = id(run)
        if key not in self._hiding:
            raw = self.test.raw_images
            if raw is None:  # no raw images: swap in the model's input space
                x = self.images_for(run)
                self._hiding[key] = HidingSetup(ks=tuple(s.hiding_ks), fills=tuple(s.hiding_fills),
                                                partners=self.partners(), fg=foreground(x))
            else:  # swap the raw pixels, then the model's own preprocessing (the deployed pipeline)
                if self._raw_fg is None:
                    self._raw_fg = foreground(raw)
                prep = self.preprocess_for(run)
                self._hiding[key] = HidingSetup(ks=tuple(s.hiding_ks), fills=tuple(s.hiding_fills),
                                                partners=self.partners(), fg=self._raw_fg, raw=raw,
                                                preprocess=lambda b, prep=prep: prep(b)[0])
        return self._hiding[key]


def resolve_methods(methods: str | Sequence[str], in_channels: int) -> list[str]:
    """The method names an evaluation runs: ``"all"`` -> every method but the any-variant ``attention``, plus
    the evaluation's own references (:data:`EVAL_REFERENCES`).

    Raises:
        ValueError: an unknown method (the message lists the valid ones).
    """
    if methods == "all":
        return [m for m in list_methods(in_channels=in_channels) if m != "attention"] + list(EVAL_REFERENCES)
    wanted = [methods] if isinstance(methods, str) else list(methods)
    wanted = list(dict.fromkeys(METHOD_ALIASES.get(m, m) for m in wanted))
    valid = set(list_methods(in_channels=max(in_channels, 1))) | set(EVAL_REFERENCES)
    bad = [m for m in wanted if m not in valid and not m.startswith("raw_channel_")]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; valid: {sorted(valid)}")
    return wanted


def _family(method: str) -> str:
    return "control" if method in EVAL_REFERENCES else method_family(method)


def _common_sources(method: str, runs: Sequence[Any], baselines: Sequence[Any]) -> list[Any]:
    if method in EVAL_REFERENCES:
        return list(baselines)
    return select_sources(method, runs, baselines)


def _uses_target(method: str) -> bool:
    if method in EVAL_REFERENCES:
        return False
    return bool(get_method(method).uses_target)


def _own_wanted(method: str, family: str, own_methods: str | Sequence[str]) -> bool:
    """Whether a method is scored under ``own_model``: a variant's own attention map always; ``cvx``, the dual's
    controls and the baseline-sourced methods (post-hoc, controls) when ``own_methods`` names them (or is
    ``"all"``)."""
    if family in ("attention", "vit"):
        return True
    if own_methods == "all":
        return True
    return method in tuple(own_methods)


def plan_units(
    methods: Sequence[str], runs: Sequence[Any], baselines: Sequence[Any], blocks: Sequence[str], notes: list[str],
    *, protocols: Sequence[str] = PROTOCOLS, own_model_methods: str | Sequence[str] = "all",
    own_model_variants: str | Sequence[str] = "all", map_only: Sequence[str] = (),
) -> tuple[list[Unit], dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """Every (method, run) unit, in method order; each method's common-protocol source; the own-model grid.

    Methods without a run to explain are skipped with a note; attention methods are evaluated only at the
    blocks their model has gates at (the method's first unit carries a note when fewer than asked); ViT maps
    at ``"patches"``. Methods named in ``map_only`` (a name, or a prefix ending in ``_`` such as
    ``"raw_channel_"``) are scored without a classifier (implicit segmentation and sharpness only).

    Returns:
        ``(units, sources, own_sources)``: ``sources[method] = {"variant", "runs"}`` (common protocol);
        ``own_sources[variant][method] = {"runs"}`` (own-model protocol).
    """
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"protocols must be among {PROTOCOLS}, got {list(protocols)}")
    units: list[Unit] = []
    sources: dict[str, dict[str, Any]] = {}
    own_sources: dict[str, dict[str, dict[str, Any]]] = {}
    skipped = []
    by_variant: dict[str, list[Any]] = {}
    for r in runs:
        if not r.is_vit:
            by_variant.setdefault(str(r.variant), []).append(r)
    for method in methods:
        family = _family(method)
        common = _common_sources(method, runs, baselines) if "common_classifier" in protocols else []
        own: list[Any] = []
        if "own_model" in protocols and _own_wanted(method, family, own_model_methods):
            if family in _OWN_FAMILIES or method in ("prior", "dual_tau"):
                own = _common_sources(method, runs, baselines)
            else:
                own = [r for v, rs in by_variant.items() for r in rs
                       if own_model_variants == "all" or v in own_model_variants or v == "baseline"]
        if not common and not own:
            skipped.append(method)
            continue
        first = (common or own)[0]
        method_blocks: tuple[str, ...] = ("patches",) if family == "vit" else tuple(blocks)
        note = None
        if family in ("attention", "cvx") or method in ("prior", "dual_tau"):
            gated = tuple(getattr(first.model, "attention_blocks", ()) or ())
            kept = tuple(b for b in blocks if b in gated)
            if kept != tuple(blocks):
                note = (f"{method}: the model has attention maps only at {', '.join(gated) or 'no block'}; "
                        f"evaluated at {', '.join(kept) or 'none'}")
            method_blocks = kept
        if common:
            sources[method] = {"variant": common[0].variant, "runs": [str(r.path) for r in common]}
        seen: list[Any] = []
        for r in common + own:
            if all(r is not s for s in seen):
                seen.append(r)
        for i, run in enumerate(seen):
            classifiers: dict[str, Any] = {}
            k = next((j for j, r in enumerate(common) if r is run), None)
            scored = not any(method == m or (m.endswith("_") and method.startswith(m)) for m in map_only)
            if k is not None and baselines and scored:
                classifiers["baseline"] = baselines[k % len(baselines)]
            k_own = None
            if any(run is r for r in own):
                peers = by_variant.get(str(run.variant), [run]) if not run.is_vit else [r for r in own if r.is_vit]
                k_own = next((j for j, r in enumerate(peers) if r is run), 0)
                if scored:
                    classifiers["self"] = run
                own_sources.setdefault(str(run.variant), {}).setdefault(method, {"runs": []})["runs"].append(
                    str(run.path))
            units.append(Unit(method=method, family=family, run=run, blocks=method_blocks, classifiers=classifiers,
                              k=k, k_own=k_own, note=note if i == 0 else None))
    if skipped:
        notes.append(f"methods without a run to explain (skipped): {', '.join(skipped)}")
    return units, sources, own_sources


def _explain_all(model: Any, images: Tensor, unit: Unit, ctx: EvalContext, targets: Tensor | None,
                 options: dict[str, Any], blocks: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, float],
                                                                           dict[str, str]]:
    """Maps of every block over all images (batched), ms per image per block, errors per block.

    Pixel-level methods compute their attribution once per batch for all blocks (it does not depend on the
    block), so every block is charged the shared time; other methods are timed block by block.
    """
    if unit.method in EVAL_REFERENCES:
        return _reference_maps(model, images, unit, ctx, blocks)
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


def _reference_maps(model: Any, images: Tensor, unit: Unit, ctx: EvalContext, blocks: Sequence[str]
                    ) -> tuple[dict[str, Tensor], dict[str, float], dict[str, str]]:
    """The evaluation's references (:data:`EVAL_REFERENCES`) on each block's grid."""
    maps, costs, errors = {}, {}, {}
    n = images.shape[0]
    for b in blocks:
        t0 = time.perf_counter()
        try:
            grid = block_grid(model, images[:1].to(ctx.device), b)
        except ValueError as exc:
            errors[b] = str(exc)
            continue
        maps[b] = lesion_oracle_maps(ctx.test.masks[:n], ctx.test.has_mask[:n], grid)
        costs[b] = 1000.0 * (time.perf_counter() - t0) / max(n, 1)
    return maps, costs, errors


def evaluate_unit(unit: Unit, ctx: EvalContext, *, warm_up: bool = False) -> dict[str, Any]:
    """Explain ``unit.run`` with ``unit.method`` and score it without a classifier and on each role's.

    Returns:
        The unit's JSON-serializable record: ``metrics`` / ``per_image`` per block that do not depend on a
        classifier (segmentation, sharpness, cost, randomization), ``scores[role]`` with the classifier's
        run, per-block metrics, curves, per-image values and predictions, the fine-vs-coarse consistency KL
        (not for pixel-level explainers, whose maps are no distributions), and notes of blocks that could not
        be explained.
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
    # a class-dependent map (post-hoc methods, a contribution map) explains the true class
    targets = test.labels if unit.family == "posthoc" or _uses_target(unit.method) else None
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
    pixel_level = unit.method in PIXEL_METHODS
    metrics: dict[str, dict[str, float]] = {}
    per_image: dict[str, dict[str, list[float]]] = {}
    for block in unit.blocks:
        if block not in maps:
            continue
        scored = map_scores(maps[block], test)
        vals = {"cost_ms": costs[block], **scored["metrics"]}
        if pixel_level:
            # min-max scaled pixel attributions are no distribution: their sharpness would say nothing
            vals.pop("sharpness", None)
            vals.pop("sharpness_fg", None)
        if unit.method in EVAL_REFERENCES:
            # the oracle is made of the masks: its segmentation scores say nothing
            vals = {"cost_ms": costs[block]}
            scored["per_image"] = {}
        if scored["per_image"]:
            per_image[block] = scored["per_image"]
        if block in after:
            n_s = after[block].shape[0]
            rho = M.spearman_rank_correlation(maps[block][:n_s], after[block])
            vals["randomization_spearman"] = nanmean(rho.abs())
        metrics[block] = vals
    scores = _score_on(unit.classifiers, maps, unit, ctx)
    consistency = None
    first_two = s.blocks[:2]
    if len(s.blocks) >= 2 and all(b in maps for b in first_two) and not pixel_level:
        fine, coarse = maps[first_two[0]], maps[first_two[1]]
        if fine.shape[2:] != coarse.shape[2:]:
            consistency = {"pair": "+".join(first_two), "value": nanmean(M.consistency_kl(fine, coarse))}
    return {
        "format": RESUME_FORMAT,
        "method": unit.method,
        "k": unit.k,
        "k_own": unit.k_own,
        "run": str(unit.run.path),
        "variant": unit.variant,
        "blocks": list(unit.blocks),
        "metrics": {b: {n: float(v) for n, v in vals.items()} for b, vals in metrics.items()},
        "per_image": per_image,
        "scores": scores,
        "consistency": consistency,
        "errors": notes,
    }


def _score_on(classifiers: Mapping[str, Any], maps: Mapping[str, Tensor], unit: Unit, ctx: EvalContext
              ) -> dict[str, dict[str, Any]]:
    """Every role's scores: the perturbation protocol and the hiding test of every block's maps on its
    classifier. A classifier that plays two roles (the baseline's own model is the common classifier) is scored
    once; classifiers that take the same images share the perturbed images."""
    s = ctx.settings
    distinct: dict[int, Any] = {}
    for clf in classifiers.values():
        distinct.setdefault(id(clf), clf)
    out: dict[int, dict[str, Any]] = {
        key: {"classifier": str(clf.path), "metrics": {}, "curves": {}, "per_image": {}, "predictions": {}}
        for key, clf in distinct.items()}
    for block in unit.blocks:
        if block not in maps:
            continue
        hide = block in (s.hiding_blocks if s.hiding_blocks != "all" else unit.blocks)
        got = classifier_scores(
            maps[block], ctx.test,
            classifiers={str(key): (clf.model, ctx.images_for(clf)) for key, clf in distinct.items()},
            fractions=s.fractions, fills=s.fills, batch_size=s.batch_size, device=ctx.device, seed=s.seed,
            cache=ctx.prediction_cache,
            hiding={str(key): ctx.hiding_for(clf) if hide else None for key, clf in distinct.items()},
        )
        for key in distinct:
            res = got[str(key)]
            out[key]["metrics"][block] = {n: float(v) for n, v in res["metrics"].items()}
            for part in ("curves", "per_image", "predictions"):
                if res[part]:
                    out[key][part][block] = res[part]
    return {role: out[id(clf)] for role, clf in classifiers.items()}


def role_view(record: Mapping[str, Any], role: str) -> dict[str, Any]:
    """A unit record seen from one role: its map metrics merged with that role's classifier scores, in the
    layout :meth:`dualattn.evaluate.results.RunNumbers.add` reads (``metrics``, ``curves``, ``per_image``,
    ``predictions``, ``consistency``, ``errors``)."""
    sc = (record.get("scores") or {}).get(role) or {}
    metrics = {b: dict(v) for b, v in record["metrics"].items()}
    for b, v in (sc.get("metrics") or {}).items():
        metrics.setdefault(b, {}).update(v)
    per_image = {b: dict(v) for b, v in record.get("per_image", {}).items()}
    for b, v in (sc.get("per_image") or {}).items():
        per_image.setdefault(b, {}).update(v)
    return {"metrics": metrics, "curves": sc.get("curves") or {}, "per_image": per_image,
            "predictions": sc.get("predictions") or {}, "consistency": record.get("consistency"),
            "errors": record.get("errors", [])}
