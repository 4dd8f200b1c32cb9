"""Does a selector of bounded receptive field keep ``select_predict``'s mask in place? An exploratory val study.

``select_predict`` (docs/models.md, "Select, then predict") proves that with its mask fixed the prediction ignores
every hidden pixel; the hiding test recomputes the mask, and the mask moved (11-13 % flips on val,
``benchmarks/design_study.py``). Its selector is a gated network's pass 1, whose block3 cells see 32 px and block4
cells 68 px of a 64 px image, z-scored per image: every pixel moves every cell's score. This study trains the same
design with the selector of the ``additive`` model's encoder (``selector="local"``: 1x1 convolutions after block2, a
block3 cell sees 16 px, block4 20 px) and either per-image z-scoring (``selector_norm="image"``) or one per-channel
shift and scale from the training split (``"dataset"``: a cell's score then reads its window and nothing else,
``tests/test_select_predict.py``), against the design study's ``exact`` selector.

Everything else is the design study's: its data draws (``--data-seed``, default 1, never the sealed draw), its
baselines as the warm start, the default demo's training, the **val** split, each map on its own model, ROAD fill,
the hiding test at k = 20 on block3 (matched healthy partners; ROAD for br35h). Exploratory: it was started after
the design study's decision and its first row was read before the others ran, so nothing is chosen from it (the
recipe keeps ``selector="exact"``); its rows are leads for the next design round.

``patch_threshold`` is the threshold form (docs/models.md, "The threshold form"): a selector whose cells read only
their own pixels (``selector="patch"``), a cell shown iff its own potential exceeds a threshold calibrated to a
healthy false-positive rate of 2 % (``healthy_fpr``, the hiding target: the rate bounds how often a healthy partner
can change a prediction), the predictor on dataset statistics; random masks from 2 % of the foreground. ``--set``
with ``--tag`` trains a variant of a selector (one option changed; its own runs), for exploratory screens.

Usage::

    python benchmarks/selector_study.py --work /tmp/design --out benchmarks/results/selector_study.json
    python benchmarks/selector_study.py --work /tmp/design --selectors patch_threshold \
        --datasets synthetic-brain,synthetic-brain-easy,synthetic-pet,br35h \
        --out benchmarks/results/selector_study_threshold.json
    python benchmarks/selector_study.py --work /tmp/design --selectors patch_threshold --datasets synthetic-brain \
        --seeds 0 --set select_predict.healthy_fpr=null --tag fpr_none --out /tmp/screen.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import design_study  # noqa: E402

#: selector name -> the select_predict model options it means ("exact": the design study's own runs)
SELECTORS: dict[str, dict[str, str]] = {
    "exact": {},
    "local_image": {"selector": "local", "selector_norm": "image"},
    "local_dataset": {"selector": "local", "selector_norm": "dataset"},
    "patch_threshold": {"selector": "patch", "selector_norm": "dataset", "mask_rule": "threshold",
                        "predictor_norm": "dataset"},
}
def _own_model_claims() -> tuple[Any, ...]:
    from dualattn.evaluate.claims import ClaimSpec

    return tuple(ClaimSpec(f"own_model:{metric}@block3", "own_model", metric, "block3", "select_predict", "lrp")
                 for metric in ("ap", "srg_prob@road"))


#: selector name -> the select_predict training options it changes (``TrainConfig.select_predict``)
TRAINING: dict[str, dict[str, float]] = {
    "patch_threshold": {"budget_low": 0.02, "healthy_fpr": 0.02},
}


def apply_overrides(cfg: Any, overrides: list[str]) -> None:
    """``KEY=VALUE`` (YAML value) onto a TrainConfig: ``model_kwargs.NAME``, ``select_predict.NAME`` or a field."""
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        value = yaml.safe_load(raw)
        head, _, name = key.partition(".")
        if head in ("model_kwargs", "select_predict") and name:
            setattr(cfg, head, {**(getattr(cfg, head) or {}), name: value})
        elif hasattr(cfg, key):
            setattr(cfg, key, value)
        else:
            raise SystemExit(f"--set {item!r}: no option {key!r}")


def claim_rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluation's records of the ``--intervals`` claims: the map's value, LRP's, their ratio and difference
    with the intervals (patients and seeds resampled together)."""
    keys = ("ours_value", "other_value", "ratio", "ci_low", "ci_high", "difference", "diff_ci_low", "diff_ci_high")
    names = {c.name for c in _own_model_claims()}
    out: dict[str, dict[str, Any]] = {}
    for rec in results.get("comparisons") or []:
        name = f"{rec.get('protocol')}:{rec.get('metric')}@{rec.get('block')}"
        if rec.get("primary") and name in names and rec.get("ours") == "select_predict":
            out[name] = {k: rec.get(k) for k in keys}
    return out


def block3(results: dict[str, Any], method: str, variant: str | None = None) -> dict[str, Any]:
    """The block3 cell of ``method`` in ``results.json``: scored on ``variant``'s own model, or (None) on the
    baseline's classifier (the paper's protocol)."""
    table = results.get("methods") if variant is None else ((results.get("own_model") or {}).get(variant) or {}).get(
        "methods")
    return ((((table or {}).get(method) or {}).get("blocks") or {}).get("block3")) or {}


def _tag(dataset: str) -> str:
    return "road" if dataset in design_study.NO_MASKS else "swap"


def common_row(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The paper's protocol: the selector's map and LRP of the baseline, both scored on the baseline's classifier
    (AP and SRG on probabilities at block3; reported, not targeted)."""
    return {label: {key: design_study._mean(block3(results, name).get(key)) for key in ("ap", "srg_prob@road")}
            for label, name in (("select_predict", "select_predict"), ("lrp (baseline)", "lrp"))}


def random_row(results: dict[str, Any], dataset: str) -> dict[str, float]:
    """The ``random`` control's region on the select_predict model (own model, block3): the hiding test's flips
    when it is kept and when it is swapped instead (the kept-swap target: the map's region >= 2x a random one)."""
    cell = block3(results, "random", "select_predict")
    return {f"{part}_flips@20": design_study._mean(cell.get(f"{part}_{_tag(dataset)}_flips@20"))
            for part in ("hidden", "kept")}


def baseline_lrp(results: dict[str, Any], dataset: str) -> dict[str, float]:
    """LRP of the baseline scored on the baseline (the evaluation's own-model cell): AP, SRG on probabilities and
    hidden flips at block3 -- the best post-hoc map of the baseline the issue compares with."""
    cell = block3(results, "lrp", "baseline")
    return {key: design_study._mean(cell.get(metric)) for key, metric in (
        ("ap", "ap"), ("srg_prob@road", "srg_prob@road"), ("hidden_flips@20", f"hidden_{_tag(dataset)}_flips@20"))}


def evalx_means(work: Path, seeds: tuple[int, ...]) -> dict[str, float]:
    """The runs' val EVAL-X report (``summary.json``), averaged over the seeds (x100 for shares and accuracies)."""
    reps = [json.loads((work / "runs" / "select_predict" / f"seed{s}" / "summary.json").read_text(encoding="utf-8"))
            .get("select_predict", {}).get("val", {}) for s in seeds]
    keys = ("balanced_accuracy_selector", "balanced_accuracy_random", "evalx_gap", "balanced_accuracy_mask_only",
            "kept_share", "lesion_pixels_shown")
    return {k: round(100.0 * sum(r[k] for r in reps) / len(reps), 2) for k in keys
            if reps and all(isinstance(r.get(k), (int, float)) for r in reps)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the design study's --work (its runs are reused)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default="synthetic-brain,synthetic-brain-easy")
    p.add_argument("--selectors", default=",".join(SELECTORS))
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option on top of the selector's (model_kwargs.NAME, select_predict.NAME or a "
                        "TrainConfig field; YAML value); with --tag, repeatable")
    p.add_argument("--tag", default=None, help="name of the --set variant (its runs: selector_NAME-TAG)")
    p.add_argument("--intervals", action="store_true",
                   help="also compare the selector's map with LRP of the same model (AP, SRG on probabilities at "
                        "block3; ratio and difference with intervals that resample patients and seeds) and score "
                        "both maps on the baseline's classifier too (the paper's protocol)")
    args = p.parse_args(argv)
    if args.overrides and not args.tag:
        p.error("--set needs --tag (the variant's runs must not mix with the plain selector's)")

    import torch

    from dualattn._io import atomic_write_json
    from dualattn.data.sealed import refuse_sealed
    from dualattn.evaluate import evaluate_runs
    from dualattn.pipelines import demo
    from dualattn.train import fit

    if args.threads:
        torch.set_num_threads(args.threads)
    seed = refuse_sealed(args.data_seed, who="selector_study")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    selectors = [s.strip() for s in args.selectors.split(",") if s.strip()]
    unknown = sorted(set(selectors) - set(SELECTORS))
    if unknown:
        raise SystemExit(f"unknown selectors {unknown}; choose from {list(SELECTORS)}")
    rows: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        root = args.work / dataset
        preset, data = design_study.study_setup(dataset, work=root, data_seed=seed, seeds=seeds,
                                                variants=("baseline", "select_predict"))
        for name in selectors:
            t0 = time.perf_counter()
            label = f"{name}-{args.tag}" if args.tag else name
            work = root if name == "exact" and not args.tag else root / f"selector_{label}"
            for s in seeds:
                base = root / "runs" / "baseline" / f"seed{s}"
                if not (base / "summary.json").exists():
                    demo.train_run(preset, data=data, out=root, variant="baseline", seed=s)
                run = work / "runs" / "select_predict" / f"seed{s}"
                if not (run / "summary.json").exists():
                    cfg = demo._train_config(preset, data=data, variant="select_predict", seed=s, progress=False)
                    cfg.model_kwargs = {**cfg.model_kwargs, **SELECTORS[name]}
                    cfg.select_predict = {**(cfg.select_predict or {}), **TRAINING.get(name, {})}
                    apply_overrides(cfg, args.overrides)
                    fit(cfg, out=run, resume=run.is_dir(), init_from=base)
            methods = ("select_predict", "lrp", "random") if args.intervals else ("select_predict", "lrp")
            settings = design_study.val_settings(dataset, preset, data, methods)
            if args.intervals:
                settings = dataclasses.replace(settings, claims=_own_model_claims(), own_model_methods=("lrp", "random"),
                                               protocols=("own_model", "common_classifier"))
            runs = [root / "runs" / "baseline" / f"seed{s}" for s in seeds] + \
                [work / "runs" / "select_predict" / f"seed{s}" for s in seeds]
            path = evaluate_runs(runs, out=work / f"eval-val-selector-{name}", settings=settings)
            results = json.loads(Path(path).read_text(encoding="utf-8"))
            row = design_study.dataset_row(results, dataset)
            rows.setdefault(dataset, {})[label] = {"select_predict": row["designs"].get("select_predict"),
                                                   "baseline_accuracy": row.get("baseline_accuracy"),
                                                   "evalx_val": evalx_means(work, seeds),
                                                   "baseline_lrp": baseline_lrp(results, dataset),
                                                   **({"intervals": claim_rows(results),
                                                       "common_classifier": common_row(results),
                                                       "random_region": random_row(results, dataset)}
                                                      if args.intervals else {})}
            timing[f"{dataset}/{label}"] = round(time.perf_counter() - t0, 1)
            print(f"{dataset} {label}: {json.dumps(rows[dataset][label], default=str)[:300]}", flush=True)
            atomic_write_json(args.out, {
                "command": " ".join(["python benchmarks/selector_study.py", *(argv if argv is not None else sys.argv[1:])]),
                "exploratory": True, "chosen": None, "data_seed": seed, "split": "val", "seeds": list(seeds),
                "selectors": {k: SELECTORS[k] for k in selectors},
                "training": {k: TRAINING[k] for k in selectors if k in TRAINING}, "overrides": args.overrides,
                "rows": rows, "seconds": timing,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
            })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
