"""What the threshold form's guarantee costs: its operating curve on val, an exploratory study.

``select_predict``'s threshold form (docs/models.md, "The threshold form") shows a cell only when its own potential
exceeds a threshold calibrated so that at most ``healthy_fpr`` of the healthy training images show a cell; that rate
bounds how often a healthy hiding-test partner can change a prediction, and it also bounds how many lesions are
found. The selector study trains the form at ``healthy_fpr=0.02``; this script moves only the operating point of
those trained runs: it copies each run, recalibrates its threshold to every rate of ``--rates`` on the run's own
training split (the calibration the training does, ``calibrate_threshold`` on 512 un-augmented training images),
saves the weights, and scores the copies on **val** exactly as the selector study does (own model, LRP of the same
model, ROAD fill, the hiding test at k = 20 on block3). Nothing is chosen from it.

Usage (after ``selector_study.py --selectors patch_threshold`` with the same ``--work``)::

    python benchmarks/threshold_curve.py --work /tmp/design --out benchmarks/results/threshold_curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import design_study  # noqa: E402

RATES = (0.02, 0.05, 0.1, 0.2, 0.4)


def recalibrated_copy(run: Path, out: Path, rate: float) -> Path:
    """``run`` copied to ``out`` with the threshold of ``best.safetensors`` recalibrated to ``rate`` (the weights
    are otherwise the run's)."""
    from dualattn.train import load_config
    from dualattn.train.datamodule import TrainDataModule, build_datasets
    from dualattn.weights import load_model, save_model, read_metadata

    if (out / "summary.json").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = load_config(run / "config.yaml")
    model = load_model(run / "best.safetensors").eval()
    pairs = TrainDataModule(build_datasets(cfg), config=cfg).calibration_batches(512, labels=True)
    model.calibrate_threshold(pairs, false_positive_rate=rate)
    meta = read_metadata(run / "best.safetensors")
    save_model(model, tmp / "best.safetensors", metadata={**(meta or {}), "healthy_fpr_recalibrated": rate})
    (tmp / "last.safetensors").unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the selector study's --work")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default="synthetic-brain,synthetic-brain-easy,synthetic-pet,br35h")
    p.add_argument("--rates", default=",".join(str(r) for r in RATES))
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)

    import torch

    from dualattn._io import atomic_write_json
    from dualattn.data.sealed import refuse_sealed
    from dualattn.evaluate import evaluate_runs

    seed = refuse_sealed(args.data_seed, who="threshold_curve")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    rates = [float(r) for r in args.rates.split(",")]
    rows: dict[str, dict[str, object]] = {}
    t0 = time.perf_counter()
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        root = args.work / dataset
        preset, data = design_study.study_setup(dataset, work=root, data_seed=seed, seeds=seeds,
                                                variants=("baseline", "select_predict"))
        settings = design_study.val_settings(dataset, preset, data, ("select_predict", "lrp"))
        source = root / "selector_patch_threshold" / "runs" / "select_predict"
        for rate in rates:
            work = root / "threshold_curve" / f"fpr{rate:g}"
            runs = [recalibrated_copy(source / f"seed{s}", work / "runs" / "select_predict" / f"seed{s}", rate)
                    for s in seeds]
            base = [root / "runs" / "baseline" / f"seed{s}" for s in seeds]
            path = evaluate_runs(base + runs, out=work / "eval-val", settings=settings)
            row = design_study.dataset_row(json.loads(Path(path).read_text(encoding="utf-8")), dataset)
            rows.setdefault(dataset, {})[f"{rate:g}"] = {"select_predict": row["designs"].get("select_predict"),
                                                        "baseline_accuracy": row.get("baseline_accuracy")}
            print(dataset, rate, json.dumps(rows[dataset][f"{rate:g}"], default=str)[:300], flush=True)
            atomic_write_json(args.out, {
                "command": " ".join(["python benchmarks/threshold_curve.py",
                                     *(argv if argv is not None else sys.argv[1:])]),
                "exploratory": True, "chosen": None, "split": "val", "data_seed": seed, "seeds": list(seeds),
                "rates": rates, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
            })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
