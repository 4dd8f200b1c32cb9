"""Which training choices make consistent attention win honestly? Selected on val, across datasets, judged on test.

Issue #14's study. Each *candidate* changes one thing against the current recipe of a consistent-attention
variant (``dual``, ``exact``, ``multilevel``): how the kept checkpoint is chosen (``select_by``), the
gate's bias (the authors' code: one gate with biases), the gate's form (our reading of the paper's "two
cascaded potential gates", with bias), the training signal through ``exact``'s
first pass (``exact_proposal="grad"``), the dual witness (``amortized``). Every candidate trains with the
real pipeline (``dualattn.train.fit``, the demo's default sizes) on every dataset in ``--datasets``, for
every seed, and is evaluated with the real evaluation (``dualattn.evaluate.evaluate_runs``: every post-hoc
explainer of the baseline runs, the controls, ROAD and mean fills, the paired bootstrap ``comparisons``):

1. **Selection, on the val split only.** For each variant, a candidate is *admissible* when its val
   balanced accuracy is within :data:`ACCURACY_SLACK` points (or one baseline std, whichever is larger) of
   the baseline's on every dataset. Its *score* is the mean over datasets of the mean of that dataset's
   log ratios against the best post-hoc explainer, one per block and metric (AP where the data has masks,
   SRG@road always). The admissible candidate with the highest score is selected; the variant's current
   recipe wins ties when it is admissible itself, is never preferred when it is not, and is kept only when
   no candidate at all is admissible (:data:`SELECTION_RULE`, :func:`select_variant`). The rule is written
   into the JSON (``selection.rule``) before any test number exists; ``--reselect`` re-applies it to the
   val numbers of finished study files.
2. **Test.** The current recipe and the selected candidate of each variant are evaluated on the test
   split of every dataset: the ``comparisons`` rows (AP, SRG@road, LeRF AUC under the paper's mean fill,
   IoU@90) before and after, sharpness per block, balanced accuracy, the controls.

Datasets: the embedded ``synthetic-brain`` (the demo's), ``synthetic-brain-easy`` (its confounders off: a
task solved in about one epoch), ``synthetic-pet`` (another anatomy, three classes) and ``br35h`` (real MRI,
no masks: SRG and sharpness only). Data are generated with ``--data-seed`` (rounds 1-5 used 0); the sealed
draw of the default demo (:data:`dualattn.data.sealed.SEALED_DATA_SEED`) is refused, and the seed is written
into the JSON (``data_seed``).

Usage (a GPU machine: about 9 minutes on one H200 with 12 worker processes; the CPU works, slowly)::

    python benchmarks/method_study.py --out benchmarks/results/method_study.json --workers 12 --device cuda
    python benchmarks/method_study.py --smoke --out /tmp/smoke.json      # 2 minutes on 2 CPU cores
    python benchmarks/method_study.py --reselect benchmarks/results/method_study*.json \
        --out benchmarks/results/method_study_reselection.json          # the rule on stored val numbers

Every summary is mean ± sample std (ddof=1) over seeds.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

logger = logging.getLogger("method_study")

VARIANTS: tuple[str, ...] = ("dual", "exact", "multilevel")

#: One change at a time against the variant's current recipe (``"recipe"``: no change).
#: ``config``: TrainConfig fields; ``model_kwargs``: create_model options over the recipe's.
CHANGES: dict[str, dict[str, Any]] = {
    "recipe": {},
    "select-objective": {"config": {"select_by": "val_objective"}},
    "bias": {"model_kwargs": {"gate_bias": True}},
    "cascaded-bias": {"model_kwargs": {"gate_form": "cascaded", "gate_bias": True}},
    "proposal-grad": {"model_kwargs": {"exact_proposal": "grad"}, "variants": ("exact", "multilevel")},
    "amortized": {"model_kwargs": {"witness": "amortized"}, "variants": ("dual",)},
    # round 2, on top of round 1's winner (cascaded-bias, selected for every variant): dual and multilevel maps
    # stayed near uniform (sharpness ~1.0) with u barely leaving its zero start; the entropy term has no
    # gradient at a uniform map, so a zero start leaves the sharpening to the cross-entropy alone
    "cascaded-bias+random-start": {"model_kwargs": {"gate_form": "cascaded", "gate_bias": True,
                                                    "gate_zero_init": False}, "variants": ("dual", "multilevel")},
    "cascaded-bias+entropy4": {"model_kwargs": {"gate_form": "cascaded", "gate_bias": True, "entropy_weight": 4.0},
                               "variants": ("dual", "multilevel")},
    # round 3, on top of the recipes round 2 left (cascaded gate with biases; dual from a random start):
    # attention pooling (exact / multilevel: the classifier sees only the map-weighted sum of the gated
    # features, faithful by construction at the gates' depth) and a smaller entropy-hinge area (sharper maps)
    "pool": {"model_kwargs": {"exact_mode": "pool"}, "variants": ("exact", "multilevel")},
    "area5": {"model_kwargs": {"attention_area": 0.05}},
    # round 4: pooling sharpened multilevel everywhere but lost PET accuracy (68 ± 19) with the sharpness term
    # on; does the pooled classifier sharpen its maps where it needs to without that term?
    "pool+entropy0": {"model_kwargs": {"exact_mode": "pool", "entropy_weight": 0.0},
                      "variants": ("exact", "multilevel")},
    # round 5: the pooled head beside the two-pass network (exact_mode="hybrid"): pooling's discriminative
    # gradient on the gates, the full-depth classifier's accuracy
    "hybrid": {"model_kwargs": {"exact_mode": "hybrid"}, "variants": ("exact", "multilevel")},
    "hybrid+entropy0": {"model_kwargs": {"exact_mode": "hybrid", "entropy_weight": 0.0},
                        "variants": ("exact", "multilevel")},
}
REFERENCE = "recipe"

DATASETS: tuple[str, ...] = ("synthetic-brain", "synthetic-brain-easy", "synthetic-pet", "br35h")

#: Balanced-accuracy slack (points) of the admissibility rule.
ACCURACY_SLACK = 3.0

SELECTION_RULE = (
    "per variant, on the val split only: admissible = val balanced accuracy >= baseline mean - max(3, baseline "
    "std) on every dataset (a failed evaluation is not admissible); score = mean over datasets of the mean of that "
    "dataset's log-ratio terms, one per block (block3, block4) and metric: log(AP / best post-hoc AP) where the "
    "data has masks and log(SRG@road / best post-hoc SRG@road) (each side floored at 1 point, so a value below 1 "
    "counts as 1); the admissible candidate with the highest score is selected, the current recipe winning ties "
    "when it is admissible itself; a current recipe that is not admissible is never preferred to an admissible "
    "candidate, whatever their scores; only when no candidate at all is admissible (the current recipe included) "
    "is the current recipe kept, and the selection says so"
)

BLOCKS = ("block3", "block4")
KEY_METRICS = ("ap", "srg@road", "auc_least_first@mean", "iou@90", "activation_precision")
CONTROLS = ("prior", "center", "random", "raw_channel_0", "raw_channel_1", "raw_channel_2", "raw_channel_3")


def candidates() -> list[dict[str, Any]]:
    out = [{"label": "baseline", "variant": "baseline", "change": None, "config": {}, "model_kwargs": {}}]
    for variant in VARIANTS:
        for change, spec in CHANGES.items():
            if variant not in spec.get("variants", VARIANTS):
                continue
            out.append({"label": f"{variant} {change}", "variant": variant, "change": change,
                        "config": dict(spec.get("config", {})), "model_kwargs": dict(spec.get("model_kwargs", {}))})
    return out


def _slug(label: str) -> str:
    return label.replace(" ", "_")


# ----------------------------------------------------------------------------- worker jobs (spawned processes)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def train_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (dataset, candidate, seed) run; returns its summary numbers or the error."""
    from dualattn.runs import RunDir
    from dualattn.train import TrainConfig, fit

    t0 = time.perf_counter()
    run_dir = Path(job["run_dir"])
    try:
        if not RunDir(run_dir).finished:
            config = TrainConfig(
                dataset=job["data"], image_size=job["size"], model="unet_encoder", variant=job["variant"],
                model_kwargs={"features": job["features"], **job["model_kwargs"]}, max_epochs=job["epochs"],
                batch_size=16, lr=1e-3, seed=job["seed"], split_seed=0, accelerator=job["accelerator"],
                devices=1, check_data=False, **job["config"],
            )
            fit(config, out=run_dir, resume=run_dir.is_dir())
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        return {"run_dir": str(run_dir), "ok": True, "seconds": time.perf_counter() - t0,
                "best_epoch": summary.get("best_epoch"), "epochs": summary.get("epochs"),
                "val_balanced_accuracy": summary.get("val_balanced_accuracy")}
    except Exception as exc:  # a failed run is reported, the study goes on
        return {"run_dir": str(run_dir), "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-2000:], "seconds": time.perf_counter() - t0}


def eval_job(job: dict[str, Any]) -> dict[str, Any]:
    """Evaluate baseline runs + one candidate's runs on one split; returns the extracted numbers."""
    from dualattn.evaluate import EvalSettings, evaluate_runs

    t0 = time.perf_counter()
    out = Path(job["out"])
    try:
        seed_partial = job.get("seed_partial")
        if seed_partial and Path(seed_partial).is_dir():
            shutil.copytree(seed_partial, out / ".partial", dirs_exist_ok=True)
        settings = EvalSettings(
            data=job["data"], methods="all", split=job["split"], size=job["size"], perturbation_steps=4,
            ig_steps=16, sanity_images=0, fills=tuple(job["fills"]), device=job["device"], n_boot=1000,
            blocks=tuple(job.get("blocks", BLOCKS)),
        )
        path = evaluate_runs(job["runs"], out=out, settings=settings, baseline=job["baselines"])
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        return {"ok": True, "seconds": time.perf_counter() - t0, **extract(results, job.get("variant"))}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:],
                "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- reading results.json


def _stat(cell: Any) -> dict[str, Any] | None:
    if not isinstance(cell, dict) or cell.get("mean") is None:
        return None
    return {"mean": float(cell["mean"]), "std": None if cell.get("std") is None else float(cell["std"]),
            "values": cell.get("values")}


def extract(results: dict[str, Any], variant: str | None) -> dict[str, Any]:
    """The numbers the selection and the tables need, from one evaluation's results.json."""
    methods = results.get("methods", {})
    maps: dict[str, Any] = {}
    for method, entry in methods.items():
        for block, cells in entry.get("blocks", {}).items():
            row = {m: _stat(cells.get(m)) for m in (*KEY_METRICS, "sharpness", "consistency_kl")}
            maps[f"{method} [{block}]"] = {k: v for k, v in row.items() if v is not None}
    acc = {}
    for name, row in results.get("classification", {}).get("rows", {}).items():
        cell = _stat(row.get("balanced_accuracy"))
        if cell is not None:
            acc[name] = cell
    comps = [
        {k: c.get(k) for k in ("metric", "block", "ours", "ours_value", "best_other", "other_value", "ratio",
                               "ci_low", "ci_high", "p_value", "holds", "claim_blocked")}
        for c in results.get("comparisons", []) if c.get("metric") in KEY_METRICS
    ]
    return {"maps": maps, "balanced_accuracy": acc, "comparisons": comps,
            "warnings": [w if isinstance(w, str) else w.get("message", str(w)) for w in results.get("warnings", [])]}


# ----------------------------------------------------------------------------- selection


def _log_ratio(ours: float | None, other: float | None) -> float | None:
    """``log(max(ours, 1) / max(other, 1))`` of two x100 scores: bounded where either side is <= 0.

    Example:
        >>> round(_log_ratio(50.0, 25.0), 4), _log_ratio(-3.0, 0.5), round(_log_ratio(10.0, -2.0), 4)
        (0.6931, 0.0, 2.3026)
    """
    if ours is None or other is None or math.isnan(ours) or math.isnan(other):
        return None
    return math.log(max(ours, 1.0) / max(other, 1.0))


def candidate_score(evals: dict[str, dict[str, Any]], variant: str, blocks: tuple[str, ...] = BLOCKS) -> dict[str, Any]:
    """Score of one candidate from its val evaluations on every dataset (see :data:`SELECTION_RULE`)."""
    terms, admissible, per_dataset = [], True, {}
    for ds, ev in evals.items():
        if not ev.get("ok"):
            admissible = False
            per_dataset[ds] = {"error": ev.get("error")}
            continue
        acc = ev["balanced_accuracy"]
        base, ours = acc.get("baseline"), acc.get(variant)
        ok = base is not None and ours is not None and ours["mean"] >= base["mean"] - max(
            ACCURACY_SLACK, base["std"] or 0.0)
        admissible &= bool(ok)
        ds_terms = []
        for c in ev["comparisons"]:
            if c["metric"] in ("ap", "srg@road") and c["block"] in blocks and c["ours"] == variant:
                lr = _log_ratio(c["ours_value"], c["other_value"])
                if lr is not None:
                    ds_terms.append(lr)
        per_dataset[ds] = {"accuracy_ok": bool(ok), "terms": ds_terms}
        if ds_terms:
            terms.append(sum(ds_terms) / len(ds_terms))
    score = sum(terms) / len(terms) if terms else float("-inf")
    return {"score": score, "admissible": admissible, "per_dataset": per_dataset}


def _change_order(label: str) -> int:
    """Position of a label's change in :data:`CHANGES` (ties between non-reference candidates go to the first)."""
    change = label.split(" ", 1)[1] if " " in label else label
    names = list(CHANGES)
    return names.index(change) if change in names else len(names)


def select_variant(scored: dict[str, dict[str, Any]], variant: str) -> dict[str, Any]:
    """Apply :data:`SELECTION_RULE` to one variant's scored candidates (``label -> candidate_score(...)``).

    Returns ``{"selected": label, "reason": str}``. The current recipe (``"<variant> recipe"``) is only a
    candidate like the others: it wins a tie when it is admissible, and it is kept by default only when no
    candidate is admissible; an inadmissible recipe never blocks an admissible candidate.

    Example:
        >>> s = {"exact recipe": {"score": -0.7, "admissible": False},
        ...      "exact hybrid": {"score": -1.2, "admissible": True}}
        >>> select_variant(s, "exact")["selected"]
        'exact hybrid'
    """
    ref = f"{variant} {REFERENCE}"
    if not scored:
        return {"selected": ref, "reason": "no candidate of this variant was run: the current recipe stands"}
    admissible = [label for label, s in scored.items() if s["admissible"]]
    if not admissible:
        return {"selected": ref, "reason": "no candidate is admissible (the current recipe included): the current "
                                           "recipe is kept"}
    top = max(scored[label]["score"] for label in admissible)
    best = [label for label in admissible if scored[label]["score"] >= top - 1e-12]
    if ref in best:
        reason = "the current recipe is admissible and no admissible candidate scores higher"
        return {"selected": ref, "reason": reason}
    chosen = min(best, key=lambda label: (_change_order(label), label))
    if scored.get(ref, {}).get("admissible"):
        reason = "admissible, and the highest score (above the admissible current recipe)"
    else:
        reason = "admissible, and the highest score among the admissible candidates (the current recipe is not admissible)"
    return {"selected": chosen, "reason": reason}


def select(val: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """``val[label][dataset]`` -> per variant: every candidate's score and the selected label (with why)."""
    out: dict[str, Any] = {"rule": SELECTION_RULE, "variants": {}}
    for variant in VARIANTS:
        scored = {label: candidate_score(evals, variant) for label, evals in val.items()
                  if label.split(" ")[0] == variant}
        out["variants"][variant] = {"candidates": scored, **select_variant(scored, variant)}
    return out


def reselect(paths: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """Apply today's :func:`select` to the stored val numbers of finished study files (no training, no evaluation).

    Every round file keeps the val evaluations its selection read (``val[label][dataset]``); this recomputes
    each variant's selection under :data:`SELECTION_RULE` and sets it beside the selection the file recorded.

    Returns:
        ``{"rule": ..., "files": {path: {"data_seed", "variants": {variant: {"recorded", "selected", "reason",
        "changed", "candidates": {label: {"score", "admissible"}}}}}}}``.
    """
    files: dict[str, Any] = {}
    for path in paths:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if not payload.get("val"):
            continue
        recorded = payload.get("selection", {}).get("variants", {})
        new = select(payload["val"])
        rows = {}
        for variant, sel in new["variants"].items():
            if not sel["candidates"]:
                continue
            was = recorded.get(variant, {}).get("selected")
            rows[variant] = {"recorded": was, "selected": sel["selected"], "reason": sel["reason"],
                             "changed": was is not None and was != sel["selected"],
                             "candidates": {label: {"score": c["score"], "admissible": c["admissible"]}
                                            for label, c in sel["candidates"].items()}}
        files[str(path)] = {"data_seed": payload.get("data_seed", payload.get("settings", {}).get("data_seed")),
                            "variants": rows}
    return {"rule": SELECTION_RULE, "files": files}


def show_reselection(result: dict[str, Any]) -> str:
    """A markdown table of :func:`reselect`: per file and variant, the recorded and the corrected selection."""
    lines = ["| file | variant | recorded selection | selection under the rule | changed | why |",
             "|---|---|---|---|---|---|"]
    for path, entry in result["files"].items():
        for variant, row in entry["variants"].items():
            lines.append(f"| {Path(path).name} | {variant} | {row['recorded']} | {row['selected']} | "
                         f"{'**yes**' if row['changed'] else 'no'} | {row['reason']} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- driver


def _pool(workers: int, threads: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _machine(args: argparse.Namespace) -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; {args.workers} worker processes x "
            f"{args.threads} torch threads; device {args.device}")


def prepare_data(args: argparse.Namespace) -> dict[str, str]:
    """Every dataset of ``--datasets`` drawn with ``--data-seed`` (never the sealed draw)."""
    from dualattn.data import resolve_dataset
    from dualattn.data.sealed import refuse_sealed

    refuse_sealed(args.data_seed, who="benchmarks/method_study.py")
    paths = {}
    for ds in args.datasets:
        paths[ds] = str(resolve_dataset(ds, cache_dir=Path(args.work) / "data", n=args.n, size=args.size,
                                        seed=args.data_seed))
    return paths


def _run_dir(work: Path, ds: str, label: str, seed: int) -> Path:
    return work / "runs" / ds / _slug(label) / f"seed{seed}"


def _finished(args: argparse.Namespace, ds: str, label: str) -> list[str]:
    """The finished runs (a ``summary.json``) of one candidate on one dataset, one per seed."""
    work = Path(args.work)
    return [str(_run_dir(work, ds, label, s)) for s in args.seeds
            if (_run_dir(work, ds, label, s) / "summary.json").is_file()]


def _eval_jobs(args: argparse.Namespace, data: dict[str, str], split: str, labels: list[str], *,
               blocks: tuple[str, ...] = BLOCKS, folder: str | None = None) -> list[dict[str, Any]]:
    """One evaluation per dataset x label: the baselines' runs plus the label's, under ``eval/<folder>/``
    (default: the split); every candidate's evaluation starts from the baselines' finished units."""
    work, folder = Path(args.work), folder or split
    out = []
    for ds in args.datasets:
        base = _finished(args, ds, "baseline")
        seed_partial = str(work / "eval" / folder / ds / "baseline" / ".partial")
        for label in labels:
            out.append({"dataset": ds, "label": label, "variant": label.split(" ")[0], "split": split,
                        "data": data[ds], "size": args.size, "device": args.device, "blocks": blocks,
                        "runs": base if label == "baseline" else base + _finished(args, ds, label), "baselines": base,
                        "fills": ("road",) if split == "val" else ("road", "mean"),
                        "out": str(work / "eval" / folder / ds / _slug(label)),
                        "seed_partial": None if label == "baseline" else seed_partial})
    return out


def _evaluate(args: argparse.Namespace, jobs: list[dict[str, Any]], table: dict[str, dict[str, Any]],
              payload: dict[str, Any], seconds_key: str) -> dict[str, dict[str, Any]]:
    """Run ``jobs`` (baselines first: their units seed every candidate), filling ``table[label][dataset]`` and
    writing ``payload`` to ``--out`` after each."""
    t = time.perf_counter()
    with _pool(args.workers, args.threads) as pool:
        for baseline_phase in (True, False):
            futs = {pool.submit(eval_job, job): job for job in jobs if (job["label"] == "baseline") == baseline_phase}
            for fut in cf.as_completed(futs):
                job, res = futs[fut], fut.result()
                table.setdefault(job["label"], {})[job["dataset"]] = res
                if not res["ok"]:
                    payload.setdefault("errors", []).append(
                        {"eval": job["out"], "error": res["error"], "trace": res.get("trace")})
                payload[seconds_key] = time.perf_counter() - t
                _write(Path(args.out), payload)
    return table


def _header(args: argparse.Namespace, cands: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON's fixed part, written before any run trains: the data draw, the command, the rule."""
    return {
        "data_seed": args.data_seed,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": _machine(args),
        "trained_on": args.trained_on or _machine(args),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "candidates": cands,
        "selection": {"rule": SELECTION_RULE},
        "train": [], "val": {}, "test": {}, "errors": [],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    work = Path(args.work)
    out_path = Path(args.out)
    cands = [c for c in candidates() if c["variant"] == "baseline" or c["label"] in args.candidates
             or not args.candidates]
    data = prepare_data(args)
    payload = _header(args, cands)
    deadline = t_start + args.budget_s

    # 1. training: every dataset x candidate x seed, baselines first
    jobs = []
    for cand in cands:
        for ds in args.datasets:
            for seed in args.seeds:
                jobs.append({"run_dir": str(_run_dir(work, ds, cand["label"], seed)), "data": data[ds],
                             "size": args.size, "variant": cand["variant"], "model_kwargs": cand["model_kwargs"],
                             "config": cand["config"], "features": args.features, "epochs": args.epochs,
                             "seed": seed, "accelerator": "gpu" if args.device.startswith("cuda") else "cpu"})
    t0 = time.perf_counter()
    with _pool(args.workers, args.threads) as pool:
        for res in pool.map(train_job, jobs):
            payload["train"].append(res)
            if not res["ok"]:
                payload["errors"].append(res)
                logger.warning("training failed: %s: %s", res["run_dir"], res["error"])
            if len(payload["train"]) % 12 == 0:
                logger.info("trained %d/%d runs (%.0f s)", len(payload["train"]), len(jobs), time.perf_counter() - t0)
    payload["train_seconds"] = time.perf_counter() - t0
    logger.info("training: %d runs in %.0f s", len(jobs), payload["train_seconds"])
    _write(out_path, payload)

    def evaluate(split: str, labels: list[str]) -> dict[str, dict[str, Any]]:
        return _evaluate(args, _eval_jobs(args, data, split, labels), payload.setdefault(split, {}), payload,
                         f"{split}_seconds")

    # 2. val evaluation and selection
    labels = [c["label"] for c in cands]
    payload["val"] = evaluate("val", labels)
    payload["selection"] = select(payload["val"])
    _write(out_path, payload)
    if time.perf_counter() > deadline:
        payload["notes"] = ["the time budget ran out before the test phase"]
        _write(out_path, payload)
        return payload

    # 3. test: the current recipe and the selected candidate of each variant
    wanted = ["baseline"]
    for variant in VARIANTS:
        ref = f"{variant} {REFERENCE}"
        sel = payload["selection"]["variants"][variant]["selected"]
        for lbl in (ref, sel):
            if lbl in labels and lbl not in wanted:
                wanted.append(lbl)
    payload["test"] = evaluate("test", wanted)
    payload["wall_time_s"] = time.perf_counter() - t_start
    _write(out_path, payload)
    return payload


def run_finer(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate the finished ``multilevel`` runs of ``--candidates`` at ``--finer-block`` (val only), against every
    post-hoc explainer at that block, and add the numbers to the existing ``--out`` JSON (``val_finer``).

    ``multilevel`` has a third, finer gate (block2 of the U-Net encoder: 32x32 cells at 64x64); the main
    evaluation scores block3 / block4 only. Scored with the selection rule's formula at that block.
    """
    payload = json.loads(Path(args.out).read_text(encoding="utf-8"))
    recorded = payload.get("data_seed", payload.get("settings", {}).get("data_seed"))
    if recorded is not None and recorded != args.data_seed:
        raise SystemExit(f"--data-seed {args.data_seed} differs from the data seed {recorded} of {args.out}")
    data = prepare_data(args)
    payload["data_seed"] = args.data_seed
    labels = [lbl for lbl in args.candidates if lbl.split(" ")[0] == "multilevel"]
    block = args.finer_block
    finer: dict[str, Any] = payload.setdefault("val_finer", {})
    finer.update({"block": block, "evals": {}})
    jobs = _eval_jobs(args, data, "val", ["baseline", *labels], blocks=(block,), folder=f"val-{block}")
    table = _evaluate(args, jobs, finer["evals"], payload, "val_finer_seconds")
    finer["seconds"] = payload.pop("val_finer_seconds", None)
    finer["scores"] = {lbl: candidate_score(table[lbl], "multilevel", (block,)) for lbl in labels if lbl in table}
    _write(Path(args.out), payload)
    return payload


def show(payload: dict[str, Any]) -> str:
    """A plain-text digest: the selection and the test comparisons (AP, SRG@road) before/after."""
    lines = [f"machine: {payload.get('machine')}", f"rule: {payload['selection'].get('rule')}"]
    for variant, sel in payload["selection"].get("variants", {}).items():
        lines.append(f"{variant}: selected {sel['selected']}" + (f" ({sel['reason']})" if sel.get("reason") else ""))
        for label, s in sel["candidates"].items():
            lines.append(f"   {label:28s} score {s['score']:+.3f} admissible {s['admissible']}")
    for split in ("val", "test"):
        for label, per_ds in payload.get(split, {}).items():
            for ds, ev in per_ds.items():
                if not ev.get("ok"):
                    lines.append(f"[{split}] {label} on {ds}: ERROR {ev.get('error')}")
                    continue
                for c in ev["comparisons"]:
                    if c["metric"] in ("ap", "srg@road") and c["ours"] == label.split(" ")[0]:
                        ci = "" if c["ci_low"] is None else f" [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
                        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}"
                        lines.append(f"[{split}] {ds:22s} {label:28s} {c['metric']:9s} {c['block']}: "
                                     f"{c['ours_value']:.1f} vs {c['best_other']} {c['other_value']:.1f} "
                                     f"ratio {ratio}{ci} holds={c['holds']}")
    finer = payload.get("val_finer")
    if finer:
        block = finer["block"]
        for label, sc in finer.get("scores", {}).items():
            lines.append(f"[val {block}] {label}: score {sc['score']:+.3f} admissible {sc['admissible']}")
            for ds, ev in finer["evals"].get(label, {}).items():
                if not ev.get("ok"):
                    lines.append(f"[val {block}] {label} on {ds}: ERROR {ev.get('error')}")
                    continue
                sharp = ev["maps"].get(f"multilevel [{block}]", {}).get("sharpness")
                for c in ev["comparisons"]:
                    if c["metric"] in ("ap", "srg@road") and c["ours"] == "multilevel" and c["block"] == block:
                        ratio = "n/a" if c["ratio"] is None else f"{c['ratio']:.2f}"
                        lines.append(f"[val {block}] {ds:22s} {label:28s} {c['metric']:9s}: {c['ours_value']:.1f} vs "
                                     f"{c['best_other']} {c['other_value']:.1f} ratio {ratio}"
                                     + ("" if not sharp else f" (sharpness {sharp['mean']:.2f})"))
    return "\n".join(lines)


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat:
        return "-"
    std = stat.get("std")
    return f"{stat['mean']:.1f}" if std is None or (isinstance(std, float) and math.isnan(std)) else f"{stat['mean']:.1f} ± {std:.1f}"


def markdown_tables(payload: dict[str, Any], split: str = "val") -> str:
    """One markdown table per dataset: every candidate's maps (AP, SRG@road, sharpness per block), balanced
    accuracy, and the best post-hoc explainer and controls for scale (mean ± sample std over seeds)."""
    out = []
    table = payload.get(split, {})
    datasets = sorted({ds for per in table.values() for ds in per}, key=lambda d: DATASETS.index(d) if d in DATASETS else 99)
    for ds in datasets:
        base = table.get("baseline", {}).get(ds, {})
        out.append(f"**{ds}** ({split} split)\n")
        out.append("| candidate | bal. acc. | AP b3 | AP b4 | SRG@road b3 | SRG@road b4 | sharpness b3 | sharpness b4 |")
        out.append("|---|---|---|---|---|---|---|---|")
        rows = []
        if base.get("ok"):
            maps = base["maps"]
            for method in ("gradcam", "gradcam_norelu", "input_x_gradient", "deeplift", "lrp", "integrated_gradients",
                           "center", "raw_channel_3", "raw_channel_0"):
                b3, b4 = maps.get(f"{method} [block3]", {}), maps.get(f"{method} [block4]", {})
                if b3 or b4:
                    rows.append((f"*{method}* (baseline)", _cell(base["balanced_accuracy"].get("baseline")), b3, b4))
        for label, per in table.items():
            ev = per.get(ds)
            if label == "baseline" or not ev:
                continue
            if not ev.get("ok"):
                out.append(f"| {label} | error: {ev.get('error')} | | | | | | |")
                continue
            variant = label.split(" ")[0]
            rows.append((label, _cell(ev["balanced_accuracy"].get(variant)),
                         ev["maps"].get(f"{variant} [block3]", {}), ev["maps"].get(f"{variant} [block4]", {})))
        for name, acc, b3, b4 in rows:
            out.append(f"| {name} | {acc} | {_cell(b3.get('ap'))} | {_cell(b4.get('ap'))} | {_cell(b3.get('srg@road'))} | "
                       f"{_cell(b4.get('srg@road'))} | {_cell(b3.get('sharpness'))} | {_cell(b4.get('sharpness'))} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="JSON file to write (required but with --reselect)")
    p.add_argument("--work", default="method_study_work", help="folder for data, runs and evaluations")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--candidates", nargs="*", default=[], help="labels to train (default: all); baseline always")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--trained-on", default="", help="where finished runs under --work/runs were trained (when "
                   "they were copied from another machine: the study then only evaluates)")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="skip the test phase past this")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end")
    p.add_argument("--show", action="store_true", help="print the digest of an existing --out JSON and exit")
    p.add_argument("--reselect", nargs="+", default=None, metavar="JSON", help="apply the selection rule to the "
                   "stored val numbers of these finished study files and print (and with --out write) the result")
    p.add_argument("--finer-block", default=None, help="only evaluate the finished multilevel runs of --candidates "
                   "at this block (e.g. block2) on val and add the numbers to --out (val_finer)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.reselect:
        result = reselect(args.reselect)
        if args.out:
            _write(Path(args.out), {"command": " ".join(["method_study.py", *(argv if argv is not None else sys.argv[1:])]),
                                    **result})
        print(show_reselection(result))
        return
    if args.out is None:
        p.error("--out is required")
    if args.show:
        payload = json.loads(Path(args.out).read_text(encoding="utf-8"))
        print(show(payload))
        print(markdown_tables(payload, "val"))
        print(markdown_tables(payload, "test"))
        return
    if args.smoke:
        args.n, args.size, args.features, args.epochs, args.seeds = 48, 32, 2, 1, [0]
        args.datasets = [d for d in args.datasets if d in ("synthetic-brain-easy", "br35h")]
    if args.finer_block:
        payload = run_finer(args)
        for label, sc in payload["val_finer"]["scores"].items():
            print(f"{label} at {args.finer_block}: score {sc['score']:+.3f} admissible {sc['admissible']}")
        return
    payload = run(args)
    print(show(payload))


if __name__ == "__main__":
    main()
