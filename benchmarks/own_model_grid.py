"""The whole own-model grid on a demo's runs: every post-hoc explainer and control on every gated variant, both
protocols, every fill, the hiding test at every block.

The default demo (15 minutes on 2 CPU cores) runs the primary claims' comparators and the floors on the featured
variant only; this script re-evaluates the same runs with nothing left out, so "attention of X vs LRP of X" exists
for every X. It reads the demo's runs and data (the sealed draw: reading its test split here is a report, not a
choice -- nothing is selected from it) and writes the full results.json plus a JSON summary.

Usage::

    dualattn demo --preset default --out DEMO
    python benchmarks/own_model_grid.py DEMO --out benchmarks/results/own_model_grid.json [--threads 2]
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

#: metrics the summary keeps per (variant, method, block)
KEEP = ("ap", "activation_precision", "sharpness", "srg_prob@road", "srg_prob@mean", "auc_least_first_prob@road",
        "hidden_swap_flips@20", "hidden_swap_flips_lesion@20", "hidden_swap_flips_healthy@20", "kept_swap_flips@20")


def _cell(stat: Any) -> dict[str, Any] | None:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return None
    return {"mean": round(float(stat["mean"]), 2), "std": None if stat.get("std") is None else round(float(stat["std"]), 2)}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """variant -> method [block] -> the :data:`KEEP` metrics (mean, std over seeds)."""
    out: dict[str, Any] = {}
    for variant, entry in (results.get("own_model") or {}).items():
        rows = {}
        for method, m in (entry.get("methods") or {}).items():
            for block, cells in (m.get("blocks") or {}).items():
                row = {k: _cell(cells.get(k)) for k in KEEP}
                rows[f"{method} [{block}]"] = {k: v for k, v in row.items() if v is not None}
        out[variant] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("demo", type=Path, help="a demo output folder (runs/, data/)")
    p.add_argument("--out", type=Path, required=True, help="summary JSON")
    p.add_argument("--eval-out", type=Path, default=None, help="evaluation folder (default DEMO/eval-own-grid)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    import torch

    from dualattn._io import atomic_write_json
    from dualattn.evaluate import EvalSettings, evaluate_runs
    from dualattn.evaluate.perturbation import FILLS

    if args.threads:
        torch.set_num_threads(args.threads)
    identity = json.loads((args.demo / "demo.json").read_text(encoding="utf-8"))
    preset = identity["preset"]
    t0 = time.perf_counter()
    settings = EvalSettings(
        methods="all", size=preset["image_size"], max_images=preset.get("max_eval_images"),
        perturbation_steps=preset["perturbation_steps"], ig_steps=preset["ig_steps"],
        sanity_images=preset["sanity_images"], fills=FILLS, own_model_methods="all", own_model_variants="all",
        hiding_blocks="all",
    )
    path = evaluate_runs(args.demo / "runs", out=args.eval_out or args.demo / "eval-own-grid", settings=settings)
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    payload = {
        "command": " ".join(["python benchmarks/own_model_grid.py", *(argv if argv is not None else sys.argv[1:])]),
        "demo_preset": preset["name"], "data_seed": results["meta"].get("data_seed"),
        "sealed": results["meta"].get("sealed"), "n_images": results["meta"]["n_images"],
        "n_patients": results["meta"].get("n_patients"), "seeds": results["meta"].get("seeds"),
        "own_model": summarize(results),
        "comparisons": [c for c in results.get("comparisons", []) if c.get("protocol") == "own_model"],
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "versions": results["meta"].get("versions"),
    }
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out} ({payload['wall_time_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
