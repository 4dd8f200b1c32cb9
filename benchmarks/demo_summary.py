"""Summarize a demo's results.json into the numbers README.md and docs/demo.md quote, as JSON.

Every number quoted from a demo run comes from this file's output, which names the demo command, the preset,
the seeds, the machine and the wall time. Written whole (never edited by hand).

Usage::

    dualattn demo --preset default --threads 1 --out DEMO
    python benchmarks/demo_summary.py DEMO --out benchmarks/results/demo_default.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

KEY_METRICS = ("ap", "activation_precision", "iou@90", "auc_least_first@mean", "srg@mean", "srg@road",
               "auc_least_first@road", "srg_prob@mean", "srg_prob@road", "auc_least_first_prob@road",
               "hidden_swap_flips@10", "hidden_swap_flips@20", "hidden_swap_flips@35", "hidden_swap_flips_lesion@20",
               "hidden_swap_flips_healthy@20", "kept_swap_flips@20")
CONTROLS = ("prior", "dual_tau", "center", "random", "lesion_oracle")
#: comparison fields the summary keeps
COMPARISON_FIELDS = ("name", "protocol", "metric", "block", "ours", "ours_variant", "ours_value", "other",
                     "other_variant", "other_value", "kind", "ratio", "ci_low", "ci_high", "difference", "diff_ci_low",
                     "diff_ci_high", "level", "p_value", "p_adjusted", "holds", "primary", "noninferior",
                     "resampled", "n_patients", "n_seeds", "df", "claim_blocked")


def _cell(stat: Any) -> dict[str, Any] | None:
    if not isinstance(stat, dict) or stat.get("mean") is None:
        return None
    return {"mean": round(float(stat["mean"]), 2), "std": None if stat.get("std") is None else round(float(stat["std"]), 2),
            "n": stat.get("n")}


def summarize(demo: Path, *, threads: int | None = None) -> dict[str, Any]:
    results = json.loads((demo / "results.json").read_text(encoding="utf-8"))
    identity = json.loads((demo / "demo.json").read_text(encoding="utf-8"))
    meta = results.get("meta", {})
    table: dict[str, Any] = {}
    for method, entry in results.get("methods", {}).items():
        for block, cells in entry.get("blocks", {}).items():
            row = {m: _cell(cells.get(m)) for m in (*KEY_METRICS, "sharpness")}
            table[f"{method} [{block}]"] = {k: v for k, v in row.items() if v is not None}
    comparisons = [
        {k: rec.get(k) for k in COMPARISON_FIELDS}
        for rec in results.get("comparisons", [])
        if rec.get("primary") or rec.get("metric") == "balanced_accuracy"
        or rec.get("metric") in ("ap", "srg_prob@road") and rec.get("ours") in ("dual", "exact", "multilevel")
    ]
    own: dict[str, Any] = {}
    for variant, entry in (results.get("own_model") or {}).items():
        for method, m in (entry.get("methods") or {}).items():
            for block, cells in (m.get("blocks") or {}).items():
                row = {k: _cell(cells.get(k)) for k in (*KEY_METRICS, "sharpness")}
                own.setdefault(variant, {})[f"{method} [{block}]"] = {k: v for k, v in row.items() if v is not None}
    accuracy = {variant: _cell(row.get("balanced_accuracy"))
                for variant, row in results.get("classification", {}).get("rows", {}).items()}
    return {
        "command": f"dualattn demo --preset {identity['preset']['name']}"
                   f"{'' if threads is None else f' --threads {threads}'} --out DEMO; "
                   "python benchmarks/demo_summary.py DEMO" + ("" if threads is None else f" --threads {threads}"),
        "preset": identity["preset"],
        "dataset": identity["dataset"],
        "seeds": meta.get("seeds"),
        "n_images": meta.get("n_images"),
        "n_positive_with_mask": meta.get("n_positive_with_mask"),
        "n_patients": meta.get("n_patients"),
        "data_seed": meta.get("data_seed"),
        "sealed": meta.get("sealed"),
        "wall_time_s": meta.get("wall_time_s"),
        "step_seconds": (results.get("demo") or {}).get("step_seconds"),
        "machine": meta.get("machine") or f"{platform.machine()}, python {platform.python_version()}",
        "versions": meta.get("versions"),
        "balanced_accuracy": accuracy,
        "maps": table,
        "own_model": own,
        "comparisons": comparisons,
        "warnings": results.get("warnings", []),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", type=Path, help="the demo's output folder (holds results.json and demo.json)")
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here (default: stdout)")
    p.add_argument("--threads", type=int, default=None, help="the --threads the demo ran with (recorded only)")
    args = p.parse_args(argv)
    summary = json.dumps(summarize(args.demo, threads=args.threads), indent=1)
    if args.out is None:
        sys.stdout.write(summary + "\n")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
