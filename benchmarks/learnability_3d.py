"""Choose the ``3d`` demo preset's training settings on val: normalization, augmentation policy, size.

The ``3d`` preset must learn (baseline and gated variants >= 88 % balanced accuracy, std <= 5 points over 3
seeds) within 15 minutes of 2 idle CPU cores for the whole demo (data, 5 variants x 3 seeds, evaluation). This
study trains exactly as the demo does (:func:`dualattn.pipelines.demo.train_run` on the ``3d`` preset with the
candidate's fields replaced) on ``synthetic-brain-3d`` at 32^3, on a data draw that is not the sealed one
(``--data-seed``, default 3; :data:`dualattn.data.sealed.SEALED_DATA_SEED` is refused before anything is
generated), and reads each run's **val** balanced accuracy (the best epoch's, as the demo selects it). The test
split of this draw is recorded beside it as a check of the val numbers (the epoch is chosen on val, so the val
number is optimistic); no choice reads it.

The rule, written before the first run:

1. Candidates: ``norm`` in {batch, group, instance} x ``augment_policy`` in {lr-flip-affine, anatomy} x a size
   (volumes ``n``, ``epochs``, base ``features``); batch 16, lr 1e-3, the demo's 70/15/15 split.
2. Screening variants: ``baseline``, ``dual`` (the paper's method) and ``exact`` (ours), seeds 0, 1, 2. Each
   candidate's cost is the mean training seconds per run on this CPU (``summary.json``'s ``wall_time_s``; one
   torch thread, two runs side by side, so the two cores are used as the demo uses them).
3. A candidate is **admissible** when every screened variant's mean val balanced accuracy is >= 88 and its
   sample std over the 3 seeds is <= 5. Its **score** is the worst variant's ``mean - std``.
4. Stage ``policy``: the 6 norm x policy pairs at the base size (320 volumes, 6 epochs, 8 features: the preset's
   size before this study). Stage ``size``: only when no pair is admissible at the base size, the two pairs with
   the best score climb the size ladder :data:`SIZE_LADDER` (in order of predicted cost), one rung at a time,
   stopping after the first rung where a candidate is admissible.
   *Amendment, written when 52 of the policy stage's 54 runs had finished (none of the amendment's yet):* in their
   ``metrics.csv`` the training cross-entropy of most runs stays near ln 2 for 1-5 epochs before it falls, and 30
   of the 34 finished GroupNorm/InstanceNorm runs never leave it within the 6 epochs (84 optimizer steps in all at batch 16), so the
   number of optimizer steps, not the number of volumes, looks like the limit. Stage ``steps``
   runs between the two stages: the two ladder pairs at the base size with batch :data:`STEPS_BATCH` (twice the
   steps, the same volume passes, about the same CPU time); the size ladder runs only when stage ``steps`` has no
   admissible candidate either. Candidates of stage ``steps`` carry ``batch`` and the key suffix ``_b8``.
   *Amendment 2, written after the whole screen above and one sealed ``3d`` demo, before any run of its stage:*
   the runs' val numbers are read in eval mode, with BatchNorm's running averages (momentum 0.1, 14 optimizer
   steps an epoch), and those lag the weights: the stored sealed demo's baseline runs, in eval mode, predict
   one class on their own training volumes (50-80 %), and recomputing the statistics from 224 un-augmented
   training volumes with the weights fixed lifts their val balanced accuracy from 58-79 to 90-98 % (a diagnosis
   on that draw's val split; its test split was not read for it). Stage ``precise_bn`` runs after the stages
   above: the chosen candidate's size (320 volumes, 8 epochs, 8 features) and the base size (6 epochs), both
   with BatchNorm and ``lr-flip-affine``, with ``precise_bn`` = :data:`PRECISE_BN` (``TrainConfig.precise_bn``:
   the statistics recomputed on that many un-augmented training volumes before every validation). Its
   candidates carry ``precise_bn`` and the key suffix ``_pbn64``; steps 5 and 6 then run over every candidate.
5. Chosen: the admissible candidate of least cost; when none is, the candidate with the best score.
6. Confirmation (``--confirm``): the chosen candidate runs as the whole ``3d`` demo on this study's draw
   (2 threads, every variant, the evaluation included). It passes when every variant of the demo (the 4 gated
   ones and the baseline) meets step 3 on val and the demo's wall time is <= 900 s. When it fails, the next
   admissible candidate in order of cost is confirmed; when none passes, the preset keeps the chosen candidate
   and docs/demo.md says which target it misses, with the numbers.

Usage (one thread per run, two runs side by side on a 2-core machine; then the confirmation, 2 threads)::

    OMP_NUM_THREADS=1 python benchmarks/learnability_3d.py --out benchmarks/results/learnability_3d.json
    OMP_NUM_THREADS=2 python benchmarks/learnability_3d.py --out benchmarks/results/learnability_3d.json --confirm
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

NORMS = ("batch", "group", "instance")
POLICIES = ("lr-flip-affine", "anatomy")
BASE_SIZE = {"n": 320, "epochs": 6, "features": 8}
#: The preset's batch size before this study, and the amendment's smaller one (twice the optimizer steps).
BASE_BATCH = 16
#: The demo's learning rate (``--explore`` candidates may set another; the rule's never do).
BASE_LR = 1e-3
STEPS_BATCH = 8
#: Amendment 2's training volumes for the recomputed BatchNorm statistics (``TrainConfig.precise_bn``), and the
#: sizes its stage screens (the chosen candidate's before the amendment, then the base size).
PRECISE_BN = 64
PRECISE_BN_SIZES: tuple[dict[str, int], ...] = ({"n": 320, "epochs": 8, "features": 8},
                                                {"n": 320, "epochs": 6, "features": 8})
#: Larger sizes, in order of predicted training cost (relative to the base size: n x epochs, x 1.5 for 12 features).
SIZE_LADDER: tuple[dict[str, int], ...] = (
    {"n": 480, "epochs": 5, "features": 8},    # 1.25
    {"n": 320, "epochs": 8, "features": 8},    # 1.33
    {"n": 480, "epochs": 6, "features": 8},    # 1.5
    {"n": 320, "epochs": 6, "features": 12},   # ~1.5
    {"n": 640, "epochs": 6, "features": 8},    # 2.0
)
SCREEN_VARIANTS = ("baseline", "dual", "exact")
DEMO_VARIANTS = ("baseline", "unconstrained", "dual", "exact", "multilevel")
TARGET_MEAN = 88.0
TARGET_STD = 5.0
BUDGET_S = 900.0
SEEDS = (0, 1, 2)
RULE = ("admissible: every screened variant's mean val balanced accuracy >= 88 and std <= 5 over seeds 0-2; score: "
        "the worst variant's mean - std; stage policy: 3 norms x 2 policies at 320 volumes, 6 epochs, 8 features; "
        "stage size (only when none is admissible): the two best-scored pairs climb SIZE_LADDER, stopping after the "
        "first rung with an admissible candidate; chosen: the admissible candidate of least cost (mean training "
        "seconds per run), else the best score; confirmation: the chosen candidate as the whole 3d demo on this "
        "draw must meet the targets for all 5 variants on val within 900 s, else the next admissible candidate. "
        "Amendment (written when 52 of the policy stage's 54 runs had finished): stage steps, between policy and size, "
        "runs the two ladder pairs at the base size with batch 8 instead of 16 (twice the optimizer steps, the same "
        "volume passes); the size ladder runs only when stage steps has no admissible candidate either. "
        "Amendment 2 (written after the whole screen and one sealed 3d demo, before any of its runs): when no "
        "candidate is admissible, stage precise_bn runs 320 volumes x 8 and x 6 epochs, 8 features, BatchNorm, "
        "lr-flip-affine with precise_bn=64 (BatchNorm statistics recomputed on 64 un-augmented training volumes "
        "before every validation); choice and confirmation then over every candidate")


# ----------------------------------------------------------------------------- the rule (pure, tested by hand)


def candidate_key(c: Mapping[str, Any]) -> str:
    """``"n320_e6_f8_group_anatomy"``: one candidate's folder and JSON key (``_b8`` appended when its batch size is
    not :data:`BASE_BATCH`)."""
    batch = int(c.get("batch", BASE_BATCH))
    lr = float(c.get("lr", BASE_LR))
    pbn = int(c.get("precise_bn", 0))
    return (f"n{c['n']}_e{c['epochs']}_f{c['features']}_{c['norm']}_{c['augment_policy']}"
            + ("" if batch == BASE_BATCH else f"_b{batch}") + ("" if lr == BASE_LR else f"_lr{lr:g}")
            + ("" if pbn == 0 else f"_pbn{pbn}")
            + ("" if int(c.get("penalty_warmup", 0)) == 0 else f"_pw{int(c['penalty_warmup'])}"))


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean and sample std (ddof 1; NaN for fewer than 2 values) of the finite values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return {"mean": mean, "std": std, "n": len(vals)}


def judge(per_variant: Mapping[str, Mapping[str, float]], *, variants: Sequence[str], n_seeds: int | None = None
          ) -> dict[str, Any]:
    """Step 3 of the rule for one candidate: ``per_variant`` maps a variant to its val balanced accuracy's
    ``{"mean", "std", "n"}`` (percent). A variant missing, or with fewer than ``n_seeds`` finished runs, makes the
    candidate inadmissible and its score NaN (``n_seeds``: default ``len(SEEDS)``).

    Example:
        >>> judge({"baseline": {"mean": 90, "std": 2, "n": 3}, "exact": {"mean": 89, "std": 6, "n": 3}},
        ...       variants=("baseline", "exact"))["admissible"]
        False
    """
    n_seeds = len(SEEDS) if n_seeds is None else n_seeds
    misses = []
    scores = []
    for v in variants:
        s = per_variant.get(v)
        if s is None or s.get("n", 0) < n_seeds or not math.isfinite(s["mean"]) or not math.isfinite(s["std"]):
            misses.append(f"{v}: {0 if s is None else s.get('n', 0)} of {n_seeds} runs")
            scores.append(math.nan)
            continue
        if s["mean"] < TARGET_MEAN:
            misses.append(f"{v}: mean {s['mean']:.1f} < {TARGET_MEAN:g}")
        if s["std"] > TARGET_STD:
            misses.append(f"{v}: std {s['std']:.1f} > {TARGET_STD:g}")
        scores.append(s["mean"] - s["std"])
    score = math.nan if any(math.isnan(x) for x in scores) else min(scores)
    return {"admissible": not misses, "score": score, "misses": misses}


def choose(candidates: Sequence[Mapping[str, Any]]) -> str | None:
    """Step 5: the key of the admissible candidate of least ``cost_s``, else the best ``score`` (ties: least cost).

    Each candidate is ``{"key", "admissible", "score", "cost_s"}``; ``None`` when no candidate has a score.

    Example:
        >>> choose([{"key": "a", "admissible": True, "score": 86, "cost_s": 50},
        ...         {"key": "b", "admissible": True, "score": 90, "cost_s": 40},
        ...         {"key": "c", "admissible": False, "score": 95, "cost_s": 10}])
        'b'
    """
    ok = [c for c in candidates if c["admissible"]]
    if ok:
        return min(ok, key=lambda c: (c["cost_s"], c["key"]))["key"]
    scored = [c for c in candidates if math.isfinite(c["score"])]
    if not scored:
        return None
    return min(scored, key=lambda c: (-c["score"], c["cost_s"], c["key"]))["key"]


def ladder_pairs(candidates: Sequence[Mapping[str, Any]], *, k: int = 2) -> list[tuple[str, str]]:
    """Step 4: the ``k`` (norm, policy) pairs of the best score at the base size (ties: least cost)."""
    base = [c for c in candidates if all(c[f] == BASE_SIZE[f] for f in BASE_SIZE)
            and int(c.get("batch", BASE_BATCH)) == BASE_BATCH and math.isfinite(c["score"])]
    base.sort(key=lambda c: (-c["score"], c["cost_s"], c["key"]))
    return [(c["norm"], c["augment_policy"]) for c in base[:k]]


def confirmation_passes(confirm: Mapping[str, Any]) -> bool:
    """Step 6: every demo variant admissible on val and the demo within :data:`BUDGET_S`."""
    return bool(judge(confirm["val_balanced_accuracy"], variants=DEMO_VARIANTS)["admissible"]) \
        and float(confirm["wall_time_s"]) <= BUDGET_S


# ----------------------------------------------------------------------------- training


def _preset(c: Mapping[str, Any], data_seed: int):
    from dualattn.pipelines.demo import get_preset

    return get_preset("3d", n=int(c["n"]), max_epochs=int(c["epochs"]), data_seed=data_seed,
                      batch_size=int(c.get("batch", BASE_BATCH)), lr=float(c.get("lr", BASE_LR)),
                      model_kwargs={"features": int(c["features"]), "norm": c["norm"]},
                      augment_policy=c["augment_policy"], precise_bn=int(c.get("precise_bn", 0)),
                      penalty_warmup_epochs=int(c.get("penalty_warmup", 0)))


def _job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    from dualattn.pipelines.demo import train_run
    from dualattn.runs import RunDir

    row = {k: job[k] for k in ("key", "variant", "seed")}
    t0 = time.perf_counter()
    try:
        train_run(_preset(job["candidate"], job["data_seed"]), data=Path(job["data"]), out=Path(job["out"]),
                  variant=job["variant"], seed=job["seed"])
        summary = RunDir(Path(job["out"]) / "runs" / job["variant"] / f"seed{job['seed']}").summary
        return {**row, "ok": True, "val_balanced_accuracy": 100 * summary["val_balanced_accuracy"],
                "test_balanced_accuracy": 100 * summary["test_balanced_accuracy"],
                "best_epoch": summary["best_epoch"], "train_seconds": summary["wall_time_s"],
                "job_seconds": time.perf_counter() - t0}
    except Exception as exc:  # a failed run is a finding, recorded, not a crash of the whole grid
        return {**row, "ok": False, "error": f"{type(exc).__name__}: {exc}", "job_seconds": time.perf_counter() - t0}


def _summarize(candidate: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], variants: Sequence[str]
               ) -> dict[str, Any]:
    key = candidate_key(candidate)
    mine = [r for r in rows if r["key"] == key and r["ok"]]
    per_variant = {v: mean_std(r["val_balanced_accuracy"] for r in mine if r["variant"] == v) for v in variants}
    test = {v: mean_std(r["test_balanced_accuracy"] for r in mine if r["variant"] == v) for v in variants}
    verdict = judge(per_variant, variants=variants)
    cost = mean_std(r["train_seconds"] for r in mine)
    return {"key": key, **candidate, "val_balanced_accuracy": per_variant, "test_balanced_accuracy_check": test,
            "cost_s": cost["mean"], "cost_std_s": cost["std"], "runs": len(mine),
            "failed_runs": [r for r in rows if r["key"] == key and not r["ok"]], **verdict}


def _train_all(args: argparse.Namespace, candidates: list[dict[str, Any]], rows: list[dict[str, Any]],
               state: dict[str, Any]) -> None:
    done = {(r["key"], r["variant"], r["seed"]) for r in rows if r["ok"]}
    rows[:] = [r for r in rows if r["ok"]]  # failed runs are tried again
    todo = [(c, v, s) for c in candidates for s in SEEDS for v in SCREEN_VARIANTS
            if (candidate_key(c), v, s) not in done]
    if not todo:
        return
    data = _data(args, (c["n"] for c, _, _ in todo))
    jobs = [{"key": candidate_key(c), "candidate": c, "variant": v, "seed": s, "data": data[c["n"]],
             "data_seed": args.data_seed, "threads": args.threads, "out": str(Path(args.work) / candidate_key(c))}
            for c, v, s in todo]
    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"{row['key']} {row['variant']} seed{row['seed']}: "
              + (f"val {row['val_balanced_accuracy']:.1f} test {row['test_balanced_accuracy']:.1f} "
                 f"({row['train_seconds']:.0f} s)" if row["ok"] else row["error"]), flush=True)
        _write(args, state)

    if args.workers <= 1:  # in this process
        for job in jobs:
            record(_job(job))
        return
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for row in pool.map(_job, jobs):
            record(row)


def _data(args: argparse.Namespace, ns: Iterable[int]) -> dict[int, str]:
    from dualattn.data import resolve_dataset

    return {n: str(resolve_dataset("synthetic-brain-3d", cache_dir=Path(args.work) / "data", n=n, size=32,
                                   seed=args.data_seed)) for n in sorted(set(ns))}


def parse_candidate(text: str) -> dict[str, Any]:
    """``"n=320,epochs=8,features=8,norm=batch,augment_policy=lr-flip-affine,lr=0.003"`` -> a candidate dict.

    Example:
        >>> parse_candidate("n=320,epochs=8,features=8,norm=batch,augment_policy=anatomy,lr=0.003")["lr"]
        0.003
    """
    out: dict[str, Any] = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k in ("n", "epochs", "features", "batch", "precise_bn", "penalty_warmup"):
            out[k] = int(v)
        elif k == "lr":
            out[k] = float(v)
        elif k in ("norm", "augment_policy"):
            out[k] = v.strip()
        else:
            raise SystemExit(f"--explore: unknown field {k!r} in {text!r}")
    missing = {"n", "epochs", "features", "norm", "augment_policy"} - set(out)
    if missing:
        raise SystemExit(f"--explore: {text!r} lacks {sorted(missing)}")
    return out


def explore(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """Screen the ``--explore`` candidates exactly as the rule screens, into their own file; nothing is chosen
    (``chosen`` stays ``None``): leads for the next study, never the preset."""
    rows: list[dict[str, Any]] = state.setdefault("runs", [])
    cands = [parse_candidate(t) for t in args.explore]
    _train_all(args, cands, rows, state)
    state.setdefault("candidates", {}).update(
        {s["key"]: {**s, "stage": "explore"} for s in (_summarize(c, rows, SCREEN_VARIANTS) for c in cands)})
    state["exploratory"] = True
    state["chosen"] = None
    _write(args, state)


def screen(args: argparse.Namespace, state: dict[str, Any]) -> None:
    rows: list[dict[str, Any]] = state.setdefault("runs", [])

    def run_stage(name: str, cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        _train_all(args, cands, rows, state)
        summaries = [_summarize(c, rows, SCREEN_VARIANTS) for c in cands]
        state.setdefault("stage_seconds", {})[name] = state.get("stage_seconds", {}).get(name, 0.0) + \
            time.perf_counter() - t0
        state.setdefault("candidates", {}).update({s["key"]: {**s, "stage": name} for s in summaries})
        _write(args, state)
        return summaries

    base = run_stage("policy", [{**BASE_SIZE, "norm": nm, "augment_policy": p} for nm in NORMS for p in POLICIES])
    if not any(s["admissible"] for s in base):
        pairs = ladder_pairs(base)
        state["ladder_pairs"] = [list(p) for p in pairs]
        steps = run_stage("steps", [{**BASE_SIZE, "batch": STEPS_BATCH, "norm": nm, "augment_policy": p}
                                    for nm, p in pairs])
        rungs = [] if any(s["admissible"] for s in steps) else list(enumerate(SIZE_LADDER, 1))
        for rung, size in rungs:
            got = run_stage(f"size{rung}", [{**size, "norm": nm, "augment_policy": p} for nm, p in pairs])
            if any(s["admissible"] for s in got):
                break
    if not any(c["admissible"] for c in state["candidates"].values()):  # amendment 2
        run_stage("precise_bn", [{**size, "norm": "batch", "augment_policy": "lr-flip-affine",
                                  "precise_bn": PRECISE_BN} for size in PRECISE_BN_SIZES])
    state["chosen"] = choose(list(state["candidates"].values()))
    _write(args, state)


# ----------------------------------------------------------------------------- confirmation


def confirm(args: argparse.Namespace, state: dict[str, Any]) -> None:
    import torch

    from dualattn.pipelines.demo import run_demo
    from dualattn.runs import RunDir

    torch.set_num_threads(args.threads)
    cands = state["candidates"]
    order = sorted((c for c in cands.values() if c["admissible"]), key=lambda c: (c["cost_s"], c["key"]))
    if not order:
        order = [cands[state["chosen"]]]
    results = state.setdefault("confirmations", {})
    for c in order:
        key = c["key"]
        if key not in results:
            out = Path(args.work) / f"confirm_{key}"
            fields = {f: c[f] for f in ("n", "epochs", "features", "norm", "augment_policy")}
            fields["batch"] = int(c.get("batch", BASE_BATCH))
            fields["precise_bn"] = int(c.get("precise_bn", 0))
            outcome = run_demo(preset=_preset(fields, args.data_seed), out=out)
            demo_results = json.loads(outcome.results.read_text(encoding="utf-8"))
            wall = float(demo_results["meta"]["wall_time_s"])  # the sum of the steps' seconds when some were reused
            steps = demo_results.get("demo", {}).get("step_seconds", {})
            val = {v: mean_std(100 * RunDir(p).summary["val_balanced_accuracy"] for p in outcome.runs.get(v, []))
                   for v in DEMO_VARIANTS}
            test = {v: mean_std(100 * RunDir(p).summary["test_balanced_accuracy"] for p in outcome.runs.get(v, []))
                    for v in DEMO_VARIANTS}
            results[key] = {
                "threads": args.threads, "wall_time_s": wall, "reused_steps": outcome.skipped_steps,
                "data_s": steps.get("data"), "training_s": sum(v for k, v in steps.items() if k.startswith("train-")),
                "evaluation_s": steps.get("evaluate"), "examples_s": steps.get("examples"),
                "val_balanced_accuracy": val, "test_balanced_accuracy_check": test,
                "verdict": judge(val, variants=DEMO_VARIANTS),
            }
            results[key]["passes"] = confirmation_passes(results[key])
            _write(args, state)
        if results[key]["passes"]:
            state["confirmed"] = key
            break
    else:
        state["confirmed"] = None
    _write(args, state)


# ----------------------------------------------------------------------------- output


def _write(args: argparse.Namespace, state: dict[str, Any]) -> None:
    import torch

    payload = {
        "data_seed": args.data_seed,
        "command": "python benchmarks/learnability_3d.py " + " ".join(
            " ".join(f"--{k.replace('_', '-')}" + ("" if isinstance(x, bool) else f" {x}")
                     for x in (v if isinstance(v, list) else [v]))
            for k, v in vars(args).items() if v not in (False, None)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
        "rule": RULE, "targets": {"mean": TARGET_MEAN, "std": TARGET_STD, "budget_s": BUDGET_S},
        "seeds": list(SEEDS), "base_size": BASE_SIZE, "size_ladder": list(SIZE_LADDER),
        "screen_variants": list(SCREEN_VARIANTS), "threads_per_run": args.threads, "workers": args.workers,
        **state,
    }
    payload["candidates"] = dict(sorted(payload.get("candidates", {}).items(), key=lambda kv: kv[1]["cost_s"]
                                        if math.isfinite(kv[1]["cost_s"]) else math.inf))
    tmp = Path(str(args.out) + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, args.out)


def table(state: Mapping[str, Any]) -> str:
    """The candidates as a Markdown table (val balanced accuracy, mean ± std over seeds; seconds per run)."""
    lines = ["| n | epochs | features | batch | norm | precise BN | policy | " + " | ".join(SCREEN_VARIANTS)
             + " | s/run | admissible |",
             "|---|---|---|---|---|---|---|" + "---|" * len(SCREEN_VARIANTS) + "---|---|"]
    for c in state.get("candidates", {}).values():
        cells = [f"{c['val_balanced_accuracy'][v]['mean']:.1f} ± {c['val_balanced_accuracy'][v]['std']:.1f}"
                 for v in SCREEN_VARIANTS]
        lines.append(f"| {c['n']} | {c['epochs']} | {c['features']} | {c.get('batch', BASE_BATCH)} | {c['norm']} | "
                     f"{c.get('precise_bn', 0) or 'off'} | {c['augment_policy']} | "
                     + " | ".join(cells) + f" | {c['cost_s']:.0f} | {'yes' if c['admissible'] else 'no'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="learnability_3d_work")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-seed", type=int, default=3, help="the data draw (never the sealed one)")
    p.add_argument("--confirm", action="store_true", help="run step 6 on the screening in --out")
    p.add_argument("--explore", action="append", default=None, metavar="FIELDS",
                   help="screen only this candidate (n=..,epochs=..,features=..,norm=..,augment_policy=..[,batch=..]"
                        "[,lr=..]; repeatable) into --out, choosing nothing: for leads, never the preset")
    args = p.parse_args(argv)
    from dualattn.data.sealed import refuse_sealed

    refuse_sealed(args.data_seed, who="benchmarks/learnability_3d.py")
    state: dict[str, Any] = {}
    if Path(args.out).is_file():
        previous = json.loads(Path(args.out).read_text(encoding="utf-8"))
        if previous.get("data_seed") == args.data_seed and "rule" in previous:
            state = {k: previous[k] for k in ("runs", "candidates", "stage_seconds", "ladder_pairs", "chosen",
                                               "confirmations", "confirmed", "exploratory") if k in previous}
    if args.explore:
        if Path(args.out).is_file() and not json.loads(Path(args.out).read_text(encoding="utf-8")).get("exploratory"):
            raise SystemExit(f"{args.out} holds the rule's screening; --explore writes to a file of its own")
        explore(args, state)
    elif args.confirm:
        if not state.get("chosen"):
            raise SystemExit(f"{args.out} holds no screening with a chosen candidate; run without --confirm first")
        confirm(args, state)
    else:
        screen(args, state)
    print(table(state))
    print("chosen:", state.get("chosen"), "| confirmed:", state.get("confirmed", "(not yet)"))


if __name__ == "__main__":
    main()
