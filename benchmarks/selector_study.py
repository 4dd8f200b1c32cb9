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

Usage::

    python benchmarks/selector_study.py --work /tmp/design --out benchmarks/results/selector_study.json
"""

from __future__ import annotations

import argparse
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
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the design study's --work (its runs are reused)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default="synthetic-brain,synthetic-brain-easy")
    p.add_argument("--selectors", default=",".join(SELECTORS))
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

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
            work = root if name == "exact" else root / f"selector_{name}"
            for s in seeds:
                base = root / "runs" / "baseline" / f"seed{s}"
                if not (base / "summary.json").exists():
                    demo.train_run(preset, data=data, out=root, variant="baseline", seed=s)
                run = work / "runs" / "select_predict" / f"seed{s}"
                if not (run / "summary.json").exists():
                    cfg = demo._train_config(preset, data=data, variant="select_predict", seed=s, progress=False)
                    cfg.model_kwargs = {**cfg.model_kwargs, **SELECTORS[name]}
                    fit(cfg, out=run, resume=run.is_dir(), init_from=base)
            settings = design_study.val_settings(dataset, preset, data, ("select_predict", "lrp"))
            runs = [root / "runs" / "baseline" / f"seed{s}" for s in seeds] + \
                [work / "runs" / "select_predict" / f"seed{s}" for s in seeds]
            path = evaluate_runs(runs, out=work / f"eval-val-selector-{name}", settings=settings)
            row = design_study.dataset_row(json.loads(Path(path).read_text(encoding="utf-8")), dataset)
            rows.setdefault(dataset, {})[name] = {"select_predict": row["designs"].get("select_predict"),
                                                  "baseline_accuracy": row.get("baseline_accuracy")}
            timing[f"{dataset}/{name}"] = round(time.perf_counter() - t0, 1)
            print(f"{dataset} {name}: {json.dumps(rows[dataset][name], default=str)[:300]}", flush=True)
            atomic_write_json(args.out, {
                "command": " ".join(["python benchmarks/selector_study.py", *(argv if argv is not None else sys.argv[1:])]),
                "exploratory": True, "chosen": None, "data_seed": seed, "split": "val", "seeds": list(seeds),
                "selectors": {k: SELECTORS[k] for k in selectors}, "rows": rows, "seconds": timing,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
            })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
