"""Does capping the gates' embedding width at 64 cost quality? ``exact`` at ``features=16``, cap 64 vs 256.

The default gate width is ``E = min(C, 64)`` (``dualattn.models.base._GATE_EMBED_CAP``; it was
``min(C, 256)``), chosen for step time (docs/training.md). At ``features=16`` only block4's gate differs
(C = 128: E = 64 vs 128; block3 has C = 64 either way). Same data, loop and metrics as
``recipe_study.py`` (its ``load_split``, ``train``, ``evaluate``; 1200 synthetic-brain scans, 12 epochs, the
recipe's gate options). It scores the test split: a check of a default chosen for step time, not a selection.
The data draw is ``--data-seed`` (default 0, the draw of the published check), written into the JSON as
``data_seed``; the sealed draw of the default demo (:data:`dualattn.data.sealed.SEALED_DATA_SEED`) is refused.

Usage (about 75 s per run on one thread)::

    python benchmarks/gate_width_check.py --cap 64 --seeds 0 1 2 3 4 5 --out /tmp/cap64.json
    python benchmarks/gate_width_check.py --cap 256 --seeds 0 1 2 3 4 5 --out /tmp/cap256.json
    python benchmarks/gate_width_check.py --merge /tmp/cap64.json /tmp/cap256.json \\
        --out benchmarks/results/gate_width_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import recipe_study as rs  # noqa: E402


def run(args: argparse.Namespace) -> None:
    import dualattn.models.base as base
    from dualattn._io import atomic_write_json
    from dualattn.data import make_dataset
    from dualattn.data.sealed import refuse_sealed
    from dualattn.models import create_model
    from dualattn.train.recipes import SHARP_GATE

    refuse_sealed(args.data_seed, who="benchmarks/gate_width_check.py")
    torch.set_num_threads(args.threads)
    base._GATE_EMBED_CAP = args.cap  # the default width rule under test
    data = Path(args.data_dir or tempfile.mkdtemp(prefix="gate_width_"))
    if not (data / "labels.csv").exists():
        make_dataset("synthetic-brain", data, n=1200, size=64, seed=args.data_seed)
    xtr, ytr, _ = rs.load_split(data, "train")
    xte, yte, mte = rs.load_split(data, "test")
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = create_model("unet_encoder", variant="exact", in_channels=4, features=16, img_size=64, **SHARP_GATE)
        t0 = time.perf_counter()
        stats = rs.train(model, xtr, ytr, epochs=12, batch=32, lr=2e-3, seed=seed)
        res = rs.evaluate(model, xte, yte, mte)
        rows.append({"cap": args.cap, "seed": seed, "embed": {b: g.embed_channels for b, g in model.gates.items()},
                     **stats, **res, "train_s": time.perf_counter() - t0})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
        atomic_write_json(args.out, {"data_seed": args.data_seed, "cap": args.cap, "threads": args.threads, "runs": rows})


def merge(files: list[str], out: str) -> None:
    from dualattn._io import atomic_write_json

    parts = [json.loads(Path(f).read_text()) for f in files]
    seeds = {p.get("data_seed", 0) for p in parts}  # files written before the seed was recorded used 0
    if len(seeds) != 1:
        raise SystemExit(f"the files to merge come from different data draws: {sorted(seeds)}")
    runs = [r for p in parts for r in p["runs"]]
    summary = {}
    for cap in sorted({r["cap"] for r in runs}):
        rows = [r for r in runs if r["cap"] == cap]
        summary[str(cap)] = {"n_seeds": len(rows), "embed": rows[0]["embed"], **{
            k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows], ddof=1))}
            for k in ("bal_acc", "ap_block3", "ap_block4", "sharpness_block3", "sharpness_block4", "step_ms")}}  # fmt: skip
    atomic_write_json(out, {"benchmark": "gate_width_check", "data_seed": seeds.pop(), "model": "unet_encoder features=16, exact, SHARP_GATE",
                            "data": "synthetic-brain n=1200 64x64, 12 epochs, lr 2e-3, batch 32",
                            "machine": "2-core CPU, 1 torch thread per run, two runs in parallel",
                            "std": "sample std over seeds (ddof=1)", "summary": summary, "runs": runs})  # fmt: skip
    print(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cap", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--merge", nargs="+", default=None)
    p.add_argument("--data-seed", type=int, default=0, help="the data draw (never the sealed one)")
    args = p.parse_args(argv)
    merge(args.merge, args.out) if args.merge else run(args)


if __name__ == "__main__":
    main()
