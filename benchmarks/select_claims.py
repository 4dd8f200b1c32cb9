"""Choose the primary claims' comparators on a validation split, before the sealed test draw is read.

The rule (written before this script was first run):

1. Data: the embedded ``synthetic-brain`` dataset generated as the default demo generates it (same size,
   one slice per patient, the same split fractions) but with data seed ``--data-seed`` (default 0, not the
   sealed draw: :func:`dualattn.data.sealed.refuse_sealed`). Models: the default demo preset's variants,
   recipes and seeds, trained on that draw's train split.
2. The featured map is named, not selected: ``dual``, the paper's method (so its choice costs no
   multiplicity).
3. Evaluation on the **val split only**, both protocols, every post-hoc explainer on the baseline and on the
   featured variant (``own_model_methods="all"``, ``own_model_variants=("dual",)``), the ROAD fill, no hiding test.
4. For every (protocol, metric, block) of the primary claims -- ``own_model`` AP and ``srg_prob@road`` at
   block3 and block4, ``common_classifier`` AP and ``srg_prob@road`` at block3 -- the comparator is the
   post-hoc explainer with the best val mean in the metric's direction (the post-hoc map of the featured
   model under ``own_model``, of the baseline under ``common_classifier``). Ties: the first in the explain
   registry's order.

Output: ``benchmarks/results/claims_selection.json`` (the val table and the choices, the data seed, the
machine); ``dualattn.evaluate.claims.DEFAULT_CLAIMS`` must name exactly these choices (a test checks).

Usage::

    python benchmarks/select_claims.py --work /tmp/select --out benchmarks/results/claims_selection.json
    python benchmarks/select_claims.py --tiny --work /tmp/sel-tiny --out /tmp/sel.json   # smoke (tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

FEATURED = "dual"
#: (protocol, metric, block) of the primary claims, in DEFAULT_CLAIMS' order
SLOTS: tuple[tuple[str, str, str], ...] = (
    ("own_model", "ap", "block3"),
    ("own_model", "ap", "block4"),
    ("own_model", "srg_prob@road", "block3"),
    ("own_model", "srg_prob@road", "block4"),
    ("common_classifier", "ap", "block3"),
    ("common_classifier", "srg_prob@road", "block3"),
)


def _mean(stat: Any) -> float:
    if isinstance(stat, dict) and stat.get("mean") is not None:
        return float(stat["mean"])
    return math.nan


def choose(results: dict[str, Any], posthoc: list[str]) -> list[dict[str, Any]]:
    """The comparator of every slot from a val ``results.json`` (the rule's step 4)."""
    from dualattn.evaluate.claims import SEGMENTATION_METRICS
    from dualattn.evaluate.specs import METRICS

    out = []
    for protocol, metric, block in SLOTS:
        higher = metric in SEGMENTATION_METRICS or METRICS[metric].direction.value == "higher"
        if protocol == "own_model":
            table = results.get("own_model", {}).get(FEATURED, {}).get("methods", {})
        else:
            table = results.get("methods", {})
        scores = {m: _mean(table.get(m, {}).get("blocks", {}).get(block, {}).get(metric)) for m in posthoc}
        scores = {m: v for m, v in scores.items() if math.isfinite(v)}
        best = None
        for m in posthoc:  # registry order: the first wins ties
            if m in scores and (best is None or (scores[m] > scores[best] if higher else scores[m] < scores[best])):
                best = m
        out.append({"protocol": protocol, "metric": metric, "block": block, "ours": FEATURED, "other": best,
                    "val_scores": {m: round(v, 3) for m, v in scores.items()},
                    "featured_val": round(_mean(table.get(FEATURED, {}).get("blocks", {}).get(block, {}).get(metric)), 3)
                    if protocol == "own_model" else
                    round(_mean(results.get("methods", {}).get(FEATURED, {}).get("blocks", {}).get(block, {})
                                .get(metric)), 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the data, runs and evaluation")
    p.add_argument("--out", type=Path, required=True, help="JSON written here")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="the tiny preset (a smoke test of this script)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    import torch

    from dualattn._io import atomic_write_json
    from dualattn.data import resolve_dataset
    from dualattn.data.sealed import refuse_sealed
    from dualattn.evaluate import EvalSettings, evaluate_runs
    from dualattn.explain import methods_in_family
    from dualattn.pipelines.demo import get_preset, train_preset_runs

    if args.threads:
        torch.set_num_threads(args.threads)
    seed = refuse_sealed(args.data_seed, who="select_claims")
    preset = get_preset("tiny" if args.tiny else "default", data_seed=seed)
    t0 = time.perf_counter()
    data = Path(resolve_dataset(preset.dataset, cache_dir=args.work / "data", n=preset.n, size=preset.image_size,
                                seed=seed, options=dict(preset.data_options) or None))
    train_preset_runs(preset, data=data, out=args.work)
    t_train = time.perf_counter() - t0
    posthoc = [m for m in methods_in_family("posthoc")]
    settings = EvalSettings(data=data, methods=tuple(posthoc) + (FEATURED,), split="val", size=preset.image_size,
                            perturbation_steps=preset.perturbation_steps, ig_steps=preset.ig_steps, sanity_images=0,
                            fills=("road",), own_model_methods="all", own_model_variants=(FEATURED,), hiding_ks=(),
                            claims=())
    path = evaluate_runs(args.work / "runs", out=args.work / "eval-val", settings=settings)
    results = json.loads(Path(path).read_text(encoding="utf-8"))
    choices = choose(results, posthoc)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "rule": __doc__.split("The rule")[1].split("Output:")[0].strip(),
        "data_seed": seed, "split": "val", "preset": preset.to_dict(), "featured": FEATURED,
        "n_images": results["meta"]["n_images"], "n_patients": results["meta"]["n_patients"],
        "choices": choices,
        "classification": {k: v.get("balanced_accuracy") for k, v in results["classification"]["rows"].items()},
        "train_s": round(t_train, 1), "wall_time_s": round(time.perf_counter() - t0, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "versions": results["meta"].get("versions"),
    }
    atomic_write_json(args.out, payload)
    for c in choices:
        print(f"{c['protocol']:>17} {c['metric']:>14} {c['block']}: {c['other']}  (val {c['val_scores']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
