"""The design study's one test: every design on the sealed draw's test split, after the val decision was made.

``benchmarks/design_study.py`` chose on validation splits (data seed 1) and kept ``dual`` featured (no design was
admissible). This script reads the sealed draw's test split once, as the rule's last step: it trains the two
faithful-by-construction designs beside a default demo's runs (same data, recipes and seeds; ``select_predict``
starts from the demo's baseline of its seed, as its recipe says), then scores every design's featured map on its own
model with the study's settings (LRP of the same model beside it, ROAD fill, the hiding test at k = 20 on block3)
and the study's row format. Nothing is chosen from these numbers.

Usage::

    dualattn demo --preset default --out DEMO
    python benchmarks/design_sealed_test.py DEMO --out benchmarks/results/design_sealed_test.json
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demo", type=Path, help="a default demo's output folder (demo.json, data/, runs/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--common", action="store_true",
                   help="also score every featured map and LRP under the common_classifier protocol (on the baseline's "
                        "classifier; ROAD fill, block3) and add them to --out as row_common (same read of the test "
                        "split, another protocol; nothing is chosen)")
    args = p.parse_args(argv)

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import design_study as ds

    from dualattn._io import atomic_write_json
    from dualattn.evaluate import EvalSettings, evaluate_runs
    from dualattn.pipelines.demo import get_preset, train_run

    if args.threads:
        torch.set_num_threads(args.threads)
    identity = json.loads((args.demo / "demo.json").read_text(encoding="utf-8"))
    preset = get_preset(identity["preset"]["name"])
    data = next(p for p in (args.demo / "data").iterdir() if (p / "labels.csv").is_file())
    t0 = time.perf_counter()
    for seed in preset.seeds:
        for variant in ("additive", "select_predict"):
            train_run(preset, data=data, out=args.demo, variant=variant, seed=seed)
    t_train = time.perf_counter() - t0
    settings = EvalSettings(
        data=data, methods=tuple(ds.FEATURED_MAP.values()) + ("lrp",), split="test", size=preset.image_size,
        perturbation_steps=preset.perturbation_steps, sanity_images=0, fills=("road",), own_model_methods=("lrp",),
        own_model_variants="all", hiding_ks=(20,), hiding_blocks=("block3",), hiding_fills=("partner",), claims=(),
        protocols=("own_model",),
    )
    if args.common:
        return _common(args, data, preset, ds, argv)
    path = evaluate_runs(args.demo / "runs", out=args.demo / "eval-designs-test", settings=settings)
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    row = ds.dataset_row(results, preset.dataset)
    payload = {
        "command": " ".join(["python benchmarks/design_sealed_test.py", *(argv if argv is not None else sys.argv[1:])]),
        "split": "test", "data_seed": results["meta"].get("data_seed"), "sealed": results["meta"].get("sealed"),
        "n_images": results["meta"]["n_images"], "n_patients": results["meta"].get("n_patients"),
        "seeds": list(preset.seeds), "row": row, "train_s": round(t_train, 1),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
    }
    atomic_write_json(args.out, payload)
    print(json.dumps(row, indent=1, default=str))
    return 0


COMMON_METRICS = ("ap", "srg_prob@road", "srg@road")


def _common(args: argparse.Namespace, data: Path, preset: Any, ds: Any, argv: list[str] | None) -> int:
    """Every featured map and LRP of the baseline scored on the baseline's classifier (the paper's protocol)."""
    import torch

    from dualattn._io import atomic_write_json
    from dualattn.evaluate import EvalSettings, evaluate_runs

    t0 = time.perf_counter()
    settings = EvalSettings(
        data=data, methods=tuple(ds.FEATURED_MAP.values()) + ("lrp",), split="test", size=preset.image_size,
        perturbation_steps=preset.perturbation_steps, sanity_images=0, fills=("road",), hiding_ks=(), claims=(),
        protocols=("common_classifier",),
    )
    path = evaluate_runs(args.demo / "runs", out=args.demo / "eval-designs-test-common", settings=settings)
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    row: dict[str, Any] = {}
    for design, method in {**ds.FEATURED_MAP, "lrp (baseline)": "lrp"}.items():
        cells = results["methods"].get(method, {}).get("blocks", {}).get("block3", {})
        row[design] = {k: (cells[k]["mean"] if isinstance(cells.get(k), dict) else None) for k in COMMON_METRICS}
    lrp = row["lrp (baseline)"]
    for design, cells in row.items():
        for k in ("ap", "srg_prob@road"):
            cells[f"{k}_ratio_to_lrp_of_baseline"] = (cells[k] / lrp[k]) if cells.get(k) and lrp.get(k) else None
    payload = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    payload["row_common"] = row
    payload["common_command"] = " ".join(["python benchmarks/design_sealed_test.py",
                                          *(argv if argv is not None else sys.argv[1:])])
    payload["common_wall_time_s"] = round(time.perf_counter() - t0, 1)
    payload["common_machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    atomic_write_json(args.out, payload)
    print(json.dumps(row, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
