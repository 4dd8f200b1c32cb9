"""``evaluate_runs``: explain trained runs with every method and score them by the paper's protocols.

Which runs each method explains is the explain registry's answer (:func:`dualattn.explain.select_sources`):
a variant-named attention method explains the runs of that variant, ``cvx`` the ``unconstrained`` runs, ViT
maps the ViT runs, post-hoc methods and references the baseline runs (``baseline=``, else every CNN run of
variant ``baseline``). Every (method, run) unit (:mod:`~dualattn.evaluate.units`) is scored on the test
images (:mod:`~dualattn.evaluate.scoring`) -- implicit segmentation on the images with a mask, input
perturbation with baseline run ``k mod #baselines`` as the classifier, sharpness, cost, the
weight-randomization check and the fine-vs-coarse consistency -- and recorded under ``OUT/.partial``
(:mod:`~dualattn.evaluate.resume`). Per run: balanced accuracy and parameter counts (Table 3). Every number
is aggregated as mean ± std (sample std) over runs (:mod:`~dualattn.evaluate.results`); the schema of
``results.json`` is in ``docs/evaluation.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .._io import atomic_write_json
from ..explain import eval_mode
from ..models import count_parameters
from ..data.sealed import is_sealed
from ..runs import RunDir
from . import metrics as M
from . import road
from . import units as U
from .checks import result_warnings
from .claims import build_comparisons, protocol_descriptions
from .results import RunNumbers, assemble
from .resume import PARTIAL_DIR, load_unit, save_unit, unit_filename, unit_fingerprint
from .settings import EvalSettings
from .tables import write_tables
from .testset import TestSet, batches, load_test_set, progress_bar

__all__ = ["evaluate_runs"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def evaluate_runs(
    runs: PathLike | Sequence[PathLike], *, out: PathLike, settings: EvalSettings = EvalSettings(),
    baseline: PathLike | Sequence[PathLike] | None = None, progress: bool = False,
) -> Path:
    """Explain every run with every applicable method and write ``results.json`` and the tables.

    Args:
        runs: run folders, or folders containing runs (searched recursively), e.g. a demo's ``runs/``.
        out: output folder (``results.json``, ``table1_perturbation.md/.csv`` ... ``tables.md``, ``.partial/``).
        settings: what to compute (:class:`~dualattn.evaluate.settings.EvalSettings`).
        baseline: baseline run(s) for the post-hoc methods and the perturbation classifier;
            default every CNN run of variant ``baseline`` among ``runs``.
        progress: show progress bars.

    Returns:
        Path of ``results.json``.

    Raises:
        ValueError: no runs, unknown methods or blocks, data that cannot be fitted to a model.
    """
    t_start, out, dev = time.perf_counter(), Path(out), settings.torch_device()
    numbers = RunNumbers()
    notes = numbers.notes
    run_dirs, baselines = _load_runs(runs, baseline)
    if not baselines:
        notes.append("no baseline run: post-hoc methods, references and input perturbation were skipped")
    for run in run_dirs:
        run.model.to(dev)
    test, data = _load_data(settings, run_dirs, progress)
    pos_idx = test.positives
    logger.info("evaluating on %d images (%d with a mask) from %s", len(test.ids), len(pos_idx), test.root)
    if len(pos_idx) == 0:
        notes.append("no test image has a mask: implicit-segmentation metrics are empty")
    ctx = U.EvalContext(settings, test, dev, notes)
    if "center" in methods_wanted(settings, test):
        ctx.lesion_fraction = _lesion_fraction(settings, data, run_dirs[0].config)
    run_rows = [_classify(run, ctx) for run in progress_bar(run_dirs, progress, "classifying")]
    ctx.predictions = {str(r["run"]): r.pop("_predictions") for r in run_rows}

    methods = methods_wanted(settings, test)
    units, sources, own_sources = U.plan_units(
        methods, run_dirs, baselines, settings.blocks, notes, protocols=settings.protocols,
        own_model_methods=settings.own_model_methods, own_model_variants=settings.own_model_variants,
        map_only=settings.map_only_methods)
    common = _fingerprint_settings(settings, test, pos_idx)
    own_numbers: dict[str, RunNumbers] = {}
    reused, warmed = 0, set()
    for unit in progress_bar(units, progress, "units"):
        if unit.note:
            notes.append(unit.note)
        fingerprint = unit_fingerprint(
            common, method=unit.method, k=unit.k, k_own=unit.k_own, method_blocks=unit.blocks,
            source=unit.run.digest(), classifier={role: clf.digest() for role, clf in unit.classifiers.items()},
        )
        index = unit.k_own if unit.k_own is not None else unit.k
        record_path = out / PARTIAL_DIR / unit_filename(unit.method, unit.blocks, index, unit.variant)
        record = load_unit(record_path, fingerprint) if settings.resume else None
        if record is not None:
            logger.info("reusing %s (%s on %s)", record_path, unit.method, unit.run.path)
            reused += 1
        else:
            record = U.evaluate_unit(unit, ctx, warm_up=unit.method not in warmed)
            warmed.add(unit.method)
            record["fingerprint"] = fingerprint
            save_unit(record_path, record)
        if unit.k is not None:
            numbers.add(U.role_view(record, "baseline"), method=unit.method, k=unit.k)
        if unit.k_own is not None:
            own = own_numbers.setdefault(unit.variant, RunNumbers())
            own.add(U.role_view(record, "self"), method=unit.method, k=unit.k_own)

    results = assemble(numbers, fractions=settings.fractions, sources=sources, run_rows=run_rows,
                       blocks=settings.blocks)
    results["protocols"] = protocol_descriptions(settings.protocols)
    results["own_model"] = {
        variant: {"methods": assemble(nums, fractions=settings.fractions, sources={}, run_rows=[],
                                      blocks=settings.blocks)["methods"],
                  "runs": [str(r.path) for r in run_dirs if r.variant == variant and not r.is_vit]}
        for variant, nums in sorted(own_numbers.items())
    }
    for variant, entry in results["own_model"].items():
        for method, m_entry in entry["methods"].items():
            m_entry["source"] = {"variant": variant, **own_sources.get(variant, {}).get(method, {})}
    results["comparisons"] = build_comparisons(
        common=numbers, own=own_numbers, test=test, fractions=settings.fractions, run_rows=run_rows,
        sources=sources, settings=settings, classification=_classification_evidence(run_dirs, ctx),
    )
    results["warnings"] = result_warnings(results)
    results["meta"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": str(data), "data_path": str(test.root), "split": settings.split, "n_images": len(test.ids),
        "n_positive_with_mask": int(len(pos_idx)), "class_names": test.class_names,
        "n_patients": test.n_patients, **_data_meta(data, test),
        "image_size": list(test.images.shape[2:]), "model": ", ".join(sorted({r.model_name for r in run_dirs})),
        "runs": [str(r.path) for r in run_dirs], "baselines": [str(r.path) for r in baselines],
        "seeds": sorted({r.seed for r in run_dirs if r.seed is not None}), "methods": list(sources),
        "blocks": list(settings.blocks),
        "perturbation": {"fills": list(settings.fills), "fractions": list(settings.fractions),
                         "classifier": "common_classifier: baseline run k mod #baselines; own_model: the map's "
                                       "own run"},
        "protocols": list(settings.protocols),
        "own_model_methods": settings.own_model_methods if isinstance(settings.own_model_methods, str)
        else list(settings.own_model_methods),
        "own_model_variants": settings.own_model_variants if isinstance(settings.own_model_variants, str)
        else list(settings.own_model_variants),
        "hiding": {"ks": list(settings.hiding_ks), "fills": list(settings.hiding_fills),
                   "partners": settings.hiding_partners,
                   "blocks": settings.hiding_blocks if isinstance(settings.hiding_blocks, str)
                   else list(settings.hiding_blocks)},
        "n_boot": settings.n_boot, "map_only_methods": list(settings.map_only_methods),
        "sanity_images": settings.sanity_images, "device": str(dev), "ig_steps": settings.ig_steps,
        "reused_units": reused,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "wall_time_s": round(time.perf_counter() - t_start, 2),
    }
    results["tables"] = write_tables(results, out)
    path = out / "results.json"
    atomic_write_json(path, results)
    logger.info("wrote %s (%.1f s; reused %d of %d (method, run) units from %s)", path,
                time.perf_counter() - t_start, reused, len(units), out / PARTIAL_DIR)
    return path


def _data_meta(data: Any, test: TestSet) -> dict[str, Any]:
    """``data_seed`` / ``sealed`` of the evaluated data: from the dataset folder's ``dataset.json`` (written by
    the embedded generators and the demo), else unknown (``None`` / ``False``)."""
    import json

    seed = None
    info = Path(test.root) / "dataset.json"
    if info.is_file():
        try:
            seed = json.loads(info.read_text(encoding="utf-8")).get("seed")
        except (OSError, ValueError):
            seed = None
    return {"data_seed": seed, "sealed": bool(is_sealed(seed))}


def _load_runs(runs: Any, baseline: Any) -> tuple[list[RunDir], list[RunDir]]:
    """The runs (with the baseline runs added) and the baseline runs."""
    run_dirs = RunDir.discover(runs)
    if baseline is None:
        return run_dirs, [r for r in run_dirs if r.variant == "baseline" and not r.is_vit]
    known = {r.path.resolve(): r for r in run_dirs}
    baselines = [known.get(p.path.resolve(), p) for p in RunDir.discover(baseline)]
    run_dirs += [b for b in baselines if b.path.resolve() not in known]
    return run_dirs, baselines


def _load_data(settings: EvalSettings, run_dirs: Sequence[RunDir], progress: bool) -> tuple[TestSet, Any]:
    """The test set at the runs' common input size (unless ``settings.size``), split as they were trained."""
    first = run_dirs[0].config
    size = settings.size
    sizes = {tuple(r.model_input()[1] or ()) for r in run_dirs if not r.is_vit}
    if size is None and len(sizes) == 1 and () not in sizes:
        size = next(iter(sizes))
        size = size[0] if len(set(size)) == 1 else size
    data = run_dirs[0].dataset(settings.data)  # found where the run recorded it, or a clear error
    test = load_test_set(
        data, split=settings.split, size=size, seed=int(first.get("split_seed", 0) or 0),
        fractions=tuple(first.get("split_fractions") or (0.7, 0.15, 0.15)), max_images=settings.max_images,
        cache_dir=settings.cache_dir if settings.cache_dir is not None else first.get("cache_dir"),
        n=first.get("data_n"), progress=progress,
    )
    return test, data


def methods_wanted(settings: EvalSettings, test: TestSet) -> list[str]:
    """The method names this evaluation runs (``"all"``: every one that applies to the data's channels)."""
    return U.resolve_methods(settings.methods, test.images.shape[1])


def _lesion_fraction(settings: EvalSettings, data: Any, first: dict[str, Any]) -> float | None:
    """Mean lesion area (fraction of the image) over the TRAIN split's positive masks: the size of the
    ``center`` control's Gaussian, measured without looking at the test masks."""
    try:
        train = load_test_set(
            data, split="train",
            seed=int(first.get("split_seed", 0) or 0), fractions=tuple(first.get("split_fractions") or (0.7, 0.15, 0.15)),
            cache_dir=settings.cache_dir if settings.cache_dir is not None else first.get("cache_dir"),
            n=first.get("data_n"),
        )
    except ValueError as exc:
        logger.warning("no train split to size the center control (%s): its default size is used", exc)
        return None
    areas = train.masks[train.positives].flatten(1).gt(0.5).double().mean(1)
    return float(areas.mean()) if len(areas) else None


@torch.no_grad()
def _classify(run: RunDir, ctx: U.EvalContext) -> dict[str, Any]:
    """Table 3's row of one run: balanced accuracy on the test images and the parameter count."""
    x = ctx.images_for(run)
    with eval_mode(run.model):
        pred = torch.cat([run.model(x[s].to(ctx.device)).argmax(1).cpu()
                          for s in batches(x.shape[0], ctx.settings.batch_size)])
    return {"run": str(run.path), "variant": run.variant, "model": run.model_name, "seed": run.seed,
            "balanced_accuracy": 100.0 * M.balanced_accuracy(ctx.test.labels, pred),
            "params": count_parameters(run.model), "_predictions": pred.tolist()}


def _classification_evidence(run_dirs: Sequence[RunDir], ctx: U.EvalContext) -> dict[str, list[list[int]]]:
    """variant -> one list of test predictions per run (in run order): the accuracy comparisons' evidence."""
    out: dict[str, list[list[int]]] = {}
    for r in run_dirs:
        if not r.is_vit:
            out.setdefault(str(r.variant), []).append(ctx.predictions[str(r.path)])
    return out


def _fingerprint_settings(settings: EvalSettings, test: TestSet, pos_idx: torch.Tensor) -> dict[str, Any]:
    """The settings and data every unit's fingerprint includes."""
    digest = lambda t: hashlib.sha256(t.cpu().numpy().astype("int64").tobytes()).hexdigest()  # noqa: E731
    return {
        "data_root": str(Path(test.root).resolve()), "split": settings.split, "image_size": list(test.images.shape[2:]),
        "n_images": len(test.ids), "labels_sha256": digest(test.labels), "positives_sha256": digest(pos_idx),
        "blocks": list(settings.blocks), "fills": list(settings.fills), "fractions": list(settings.fractions),
        "road": {"noise_std": road.NOISE_STD, "tol": road.TOL, "max_iter": road.MAX_ITER},
        "sanity_images": settings.sanity_images, "ig_steps": settings.ig_steps, "seed": settings.seed,
        "protocols": list(settings.protocols),
        "hiding": {"ks": list(settings.hiding_ks), "fills": list(settings.hiding_fills),
                   "partners": settings.hiding_partners, "blocks": str(settings.hiding_blocks)},
        "patients_sha256": hashlib.sha256("\x00".join(test.patients).encode("utf-8")).hexdigest(),
    }
