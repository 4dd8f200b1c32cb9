"""Which size of the 3-D demo can a classifier learn? Val balanced accuracy over a small grid, seeds as spread.

The ``3d`` demo preset must finish within 15 minutes on 2 CPU cores and still train classifiers that are
clearly above chance (else its maps mean nothing). This grid trains the ``baseline`` and ``exact`` variants
of the U-Net encoder on ``synthetic-brain-3d`` (32^3 volumes) for each (volumes, base features, epochs)
and reports the **val** balanced accuracy (mean ± sample std over seeds) and the training seconds per run
on the machine it ran on (a GPU's seconds do not transfer to a CPU: the CPU time of the chosen size is
measured by the demo itself, see docs/demo.md). The data draw is ``--data-seed`` (default 0, the draw the
published grid used), written into the JSON as ``data_seed``; the sealed draw of the default demo
(:data:`dualattn.data.sealed.SEALED_DATA_SEED`) is refused.

Usage::

    python benchmarks/learnability_3d.py --out benchmarks/results/learnability_3d.json --workers 4 --device cuda
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from typing import Any

GRID = {"n": (320, 640), "features": (4, 8), "epochs": (6, 12)}
VARIANTS = ("baseline", "exact")


def _job(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(job["threads"])
    from dualattn.train import TrainConfig, fit

    t0 = time.perf_counter()
    try:
        config = TrainConfig(dataset=job["data"], image_size=32, model="unet_encoder", variant=job["variant"],
                             model_kwargs={"features": job["features"]}, max_epochs=job["epochs"], batch_size=16,
                             seed=job["seed"], split_seed=0, accelerator=job["accelerator"], devices=1,
                             check_data=False)
        run = fit(config, out=job["out"], overwrite=True)
        summary = json.loads((Path(run) / "summary.json").read_text(encoding="utf-8"))
        return {**{k: job[k] for k in ("n", "features", "epochs", "variant", "seed")}, "ok": True,
                "val_balanced_accuracy": summary["val_balanced_accuracy"], "best_epoch": summary["best_epoch"],
                "seconds": time.perf_counter() - t0}
    except Exception as exc:
        return {**{k: job[k] for k in ("n", "features", "epochs", "variant", "seed")}, "ok": False,
                "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}


def _mean_std(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else math.nan
    return {"mean": mean, "std": std, "n": len(vals)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="learnability_3d_work")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-seed", type=int, default=0, help="the data draw (never the sealed one)")
    args = p.parse_args(argv)
    from dualattn.data import resolve_dataset
    from dualattn.data.sealed import refuse_sealed

    refuse_sealed(args.data_seed, who="benchmarks/learnability_3d.py")
    work = Path(args.work)
    data = {n: str(resolve_dataset("synthetic-brain-3d", cache_dir=work / "data", n=n, size=32, seed=args.data_seed))
            for n in GRID["n"]}
    jobs = []
    for n, features, epochs in itertools.product(*GRID.values()):
        for variant in VARIANTS:
            for seed in args.seeds:
                jobs.append({"n": n, "features": features, "epochs": epochs, "variant": variant, "seed": seed,
                             "data": data[n], "threads": args.threads,
                             "accelerator": "gpu" if args.device.startswith("cuda") else "cpu",
                             "out": str(work / "runs" / f"n{n}_f{features}_e{epochs}_{variant}_s{seed}")})
    t0 = time.perf_counter()
    rows = []
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for row in pool.map(_job, jobs):  # grid order: the smallest sizes finish first
            rows.append(row)
            _write(args, rows, t0)
    _write(args, rows, t0, show=True)


def _write(args: argparse.Namespace, rows: list[dict[str, Any]], t0: float, *, show: bool = False) -> None:
    summary = []
    for n, features, epochs in itertools.product(*GRID.values()):
        for variant in VARIANTS:
            sel = [r for r in rows if (r["n"], r["features"], r["epochs"], r["variant"]) == (n, features, epochs, variant)]
            if not sel:
                continue
            summary.append({"n": n, "features": features, "epochs": epochs, "variant": variant,
                            "val_balanced_accuracy": _mean_std([100 * r.get("val_balanced_accuracy", math.nan)
                                                                for r in sel if r["ok"]]),
                            "seconds": _mean_std([r["seconds"] for r in sel])})
    import torch

    payload = {"data_seed": args.data_seed,
               "command": "python benchmarks/learnability_3d.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}",
               "grid": GRID, "seeds": args.seeds, "wall_time_s": time.perf_counter() - t0, "summary": summary,
               "runs": rows}
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, args.out)
    if not show:
        return
    for s in summary:
        v = s["val_balanced_accuracy"]
        print(f"n={s['n']:4d} f={s['features']} e={s['epochs']:2d} {s['variant']:8s} val bal acc "
              f"{v['mean']:.1f} ± {v['std']:.1f}  ({s['seconds']['mean']:.0f} s/run)")


if __name__ == "__main__":
    main()
