"""Which training recipe should each attention variant use by default? A small measured study.

For every (variant, recipe) below and every seed, train a U-Net encoder (``features`` wide) on the
embedded ``synthetic-brain`` dataset (BraTS-like hemisphere halves with glioma masks) with a plain
PyTorch loop, then measure on the test split:

* balanced accuracy;
* AP: sklearn's average precision of the attention map (nearest-upsampled to the mask grid) against
  the tumour mask, mean over tumour-positive test images (x100), for the fine (block3) and coarse
  (block4) map; mu where the variant has consistent maps, else tau;
* sharpness: exp(entropy) / N of the same maps (1 = uniform, 1/N = one position), mean over images;
* marginal violation: mean L1 distance between marginalize(map_block3) and map_block4;
* step time: mean wall time of one training step (forward + backward + Adam) in ms.

Recipes: ``scratch`` trains end to end; ``frozen`` starts from the same seed's trained baseline
(``load_backbone_state``), freezes the backbone and trains the gates (and witness) only, as the
paper's code does; ``finetune`` starts from the baseline without freezing.

Usage (about 18 min of CPU time on 2 cores)::

    python benchmarks/recipe_study.py --out benchmarks/results/recipe_study.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

logger = logging.getLogger("recipe_study")

#: (label, variant, recipe, create_model kwargs)
CONFIGS: list[tuple[str, str, str, dict]] = [
    ("baseline", "baseline", "scratch", {}),
    ("unconstrained", "unconstrained", "scratch", {}),
    ("kl a=1", "kl", "scratch", {"alpha": 1.0}),
    ("kl a=10", "kl", "scratch", {"alpha": 10.0}),
    ("dual a=10", "dual", "scratch", {"alpha": 10.0}),
    ("dual a=1", "dual", "scratch", {"alpha": 1.0}),
    ("dual a=10 frozen", "dual", "frozen", {"alpha": 10.0}),
    ("exact two_pass", "exact", "scratch", {"exact_mode": "two_pass"}),
    ("exact pool", "exact", "scratch", {"exact_mode": "pool"}),
    ("exact two_pass frozen", "exact", "frozen", {"exact_mode": "two_pass"}),
    ("multilevel", "multilevel", "scratch", {}),
]

#: The gate gain / sharpness study (``--study sharpness``): the paper's gate (gain 1) against a gain
#: ``s`` with ``u`` started at zero and the entropy term ``beta`` (``entropy_weight``); see
#: ``dualattn.attention.AttentionGate``.
_SHARP = {"gate_scale": 32.0, "gate_zero_init": True, "entropy_weight": 1.0}
_GRAD = {"exact_proposal": "grad"}  # exact's first pass with gradient (the default before this study)
_S16 = {**_SHARP, "gate_scale": 16.0}
SHARPNESS_CONFIGS: list[tuple[str, str, str, dict]] = [
    ("baseline", "baseline", "scratch", {}),
    # round 1: gain x entropy weight on exact (first pass with gradient), the other variants at s32 b1
    ("exact s1 b0 (paper gate)", "exact", "scratch", dict(_GRAD)),
    ("exact s1 b1", "exact", "scratch", {**_GRAD, "entropy_weight": 1.0}),
    ("exact s32 b0", "exact", "scratch", {**_GRAD, **_SHARP, "entropy_weight": 0.0}),
    ("exact s16 b1", "exact", "scratch", {**_GRAD, **_S16}),
    ("exact s32 b1", "exact", "scratch", {**_GRAD, **_SHARP}),
    ("exact s32 b1 learned s", "exact", "scratch", {**_GRAD, **_SHARP, "gate_learn_scale": True}),
    ("exact s32 b0.3", "exact", "scratch", {**_GRAD, **_SHARP, "entropy_weight": 0.3}),
    ("dual a=1 s1 b0 (paper gate)", "dual", "scratch", {"alpha": 1.0}),
    ("dual a=1 s32 b1", "dual", "scratch", {"alpha": 1.0, **_SHARP}),
    ("unconstrained s32 b1", "unconstrained", "scratch", dict(_SHARP)),
    ("kl a=1 s32 b1", "kl", "scratch", {"alpha": 1.0, **_SHARP}),
    ("multilevel s32 b1", "multilevel", "scratch", {**_GRAD, **_SHARP}),
    ("tau_k s32 b1", "tau_k", "scratch", dict(_SHARP)),
    ("tau_l s32 b1", "tau_l", "scratch", dict(_SHARP)),
    # round 2: gain 16, the detached first pass for exact/multilevel, stronger entropy for dual/kl
    ("exact s16 b1 detached", "exact", "scratch", dict(_S16)),
    ("exact s16 b1 pool", "exact", "scratch", {**_S16, "exact_mode": "pool"}),
    ("exact s1 b0 detached", "exact", "scratch", {}),
    ("multilevel s16 b1 detached", "multilevel", "scratch", dict(_S16)),
    ("dual a=1 s16 b1", "dual", "scratch", {"alpha": 1.0, **_S16}),
    ("dual a=1 s16 b3", "dual", "scratch", {"alpha": 1.0, **_S16, "entropy_weight": 3.0}),
    ("dual a=0.1 s16 b1", "dual", "scratch", {"alpha": 0.1, **_S16}),
    ("kl a=1 s16 b3", "kl", "scratch", {"alpha": 1.0, **_S16, "entropy_weight": 3.0}),
    ("unconstrained s16 b1", "unconstrained", "scratch", dict(_S16)),
    ("tau_k s16 b1", "tau_k", "scratch", dict(_S16)),
    ("tau_l s16 b1", "tau_l", "scratch", dict(_S16)),
]

#: The confirmation run of the sharpness study's finalists on twice the data (``--study confirm --n 1200
#: --epochs 12``): the paper's gate (gain 1, no entropy term) against gain 16 + zero init + entropy 1.
CONFIRM_CONFIGS: list[tuple[str, str, str, dict]] = [
    ("baseline", "baseline", "scratch", {}),
    ("exact paper gate", "exact", "scratch", {}),
    ("exact s16 b1", "exact", "scratch", dict(_S16)),
    ("dual a=1 paper gate", "dual", "scratch", {"alpha": 1.0}),
    ("dual a=1 s16 b1", "dual", "scratch", {"alpha": 1.0, **_S16}),
    ("dual a=0.1 s16 b1", "dual", "scratch", {"alpha": 0.1, **_S16}),
    ("multilevel paper gate", "multilevel", "scratch", {}),
    ("multilevel s16 b1", "multilevel", "scratch", dict(_S16)),
    ("unconstrained s16 b1", "unconstrained", "scratch", dict(_S16)),
    ("kl a=1 s16 b1", "kl", "scratch", {"alpha": 1.0, **_S16}),
    # round 2 of the confirmation: entropy 1 over-sharpens at this length (maps on 2-8 cells), so the
    # gain alone, a weaker entropy term, and the hinge that stops at an effective area rho
    ("exact s16 b0", "exact", "scratch", {**_S16, "entropy_weight": 0.0}),
    ("exact s16 b0.1", "exact", "scratch", {**_S16, "entropy_weight": 0.1}),
    ("exact s16 area0.25", "exact", "scratch", {**_S16, "attention_area": 0.25}),
    ("exact s16 area0.1", "exact", "scratch", {**_S16, "attention_area": 0.1}),
    ("dual a=1 s16 area0.25", "dual", "scratch", {"alpha": 1.0, **_S16, "attention_area": 0.25}),
    ("multilevel s16 area0.25", "multilevel", "scratch", {**_S16, "attention_area": 0.25}),
    # round 3: the remaining variants, paper gate vs the chosen gate recipe
    ("unconstrained paper gate", "unconstrained", "scratch", {}),
    ("unconstrained s16 area0.25", "unconstrained", "scratch", {**_S16, "attention_area": 0.25}),
    ("kl a=1 paper gate", "kl", "scratch", {"alpha": 1.0}),
    ("kl a=1 s16 area0.25", "kl", "scratch", {"alpha": 1.0, **_S16, "attention_area": 0.25}),
    ("tau_k paper gate", "tau_k", "scratch", {}),
    ("tau_k s16 area0.25", "tau_k", "scratch", {**_S16, "attention_area": 0.25}),
    ("tau_l paper gate", "tau_l", "scratch", {}),
    ("tau_l s16 area0.25", "tau_l", "scratch", {**_S16, "attention_area": 0.25}),
    ("kl_reverse a=1 paper gate", "kl_reverse", "scratch", {"alpha": 1.0}),
    ("kl_reverse a=1 s16 area0.25", "kl_reverse", "scratch", {"alpha": 1.0, **_S16, "attention_area": 0.25}),
    # round 4: with sharp maps the soft penalties leave larger violations; does the paper's alpha = 10 help now?
    ("dual a=10 s16 area0.25", "dual", "scratch", {"alpha": 10.0, **_S16, "attention_area": 0.25}),
    ("kl a=10 s16 area0.25", "kl", "scratch", {"alpha": 10.0, **_S16, "attention_area": 0.25}),
]

STUDIES = {"recipes": CONFIGS, "sharpness": SHARPNESS_CONFIGS, "confirm": CONFIRM_CONFIGS}


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from dualattn.data import FolderDataset

    ds = FolderDataset(root, split=split)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items]).long()
    m = torch.stack([it["mask"] for it in items])[:, 0]
    return x, y, m


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, pred))


def map_metrics(maps: torch.Tensor, masks: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """AP vs mask (positives), sharpness exp(H)/N (all images)."""
    from sklearn.metrics import average_precision_score

    n = maps[0].numel()
    p = maps.flatten(1).double().clamp_min(1e-300)
    entropy = -(p * p.log()).sum(1)
    sharp = (entropy.exp() / n).mean().item()
    f = masks.shape[-1] // maps.shape[-1]
    up = maps.repeat_interleave(f, 1).repeat_interleave(f, 2)
    aps = [
        average_precision_score(masks[i].flatten().numpy() > 0.5, up[i].flatten().numpy())
        for i in torch.nonzero(positive).flatten().tolist()
        if masks[i].sum() > 0
    ]
    return {"ap": 100.0 * float(np.mean(aps)) if aps else float("nan"), "sharpness": sharp}


def evaluate(model, x, y, m, *, batch: int = 64) -> dict[str, float]:
    model.eval()
    logits, maps = [], {}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model.forward_with_attention(x[i : i + batch])
            logits.append(out.logits)
            src = out.mu if out.mu else out.tau
            for b, t in src.items():
                maps.setdefault(b, []).append(t)
    pred = torch.cat(logits).argmax(1).numpy()
    res = {"bal_acc": balanced_accuracy(y.numpy(), pred)}
    pos = y == 1
    cat = {b: torch.cat(v) for b, v in maps.items()}
    for b in ("block3", "block4"):
        if b in cat:
            mm = map_metrics(cat[b], m, pos)
            res[f"ap_{b}"] = mm["ap"]
            res[f"sharpness_{b}"] = mm["sharpness"]
    if "block3" in cat and "block4" in cat:
        fine, coarse = cat["block3"], cat["block4"]
        f = fine.shape[-1] // coarse.shape[-1]
        marg = F.avg_pool2d(fine.unsqueeze(1), f).squeeze(1) * f * f
        res["marginal_violation_l1"] = (marg - coarse).abs().flatten(1).sum(1).mean().item()
    return res


def train(model, x, y, *, epochs: int, batch: int, lr: float, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    times, penalties = [], []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            xb = x[idx]
            if torch.rand((), generator=g) < 0.5:  # horizontal flip augmentation
                xb = xb.flip(-1)
            t0 = time.perf_counter()
            out = model.forward_with_attention(xb)
            loss = F.cross_entropy(out.logits, y[idx]) + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            penalties.append(float(out.penalty.detach()))
    return {"step_ms": 1000.0 * float(np.mean(times)), "final_penalty": float(np.mean(penalties[-5:]))}


def run(args: argparse.Namespace) -> dict:
    from dualattn._io import atomic_write_json
    from dualattn.data import make_dataset
    from dualattn.models import create_model

    torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="recipe_study_"))
    if not (data_dir / "labels.csv").exists():
        make_dataset("synthetic-brain", data_dir, n=args.n, size=args.size, seed=args.data_seed)
    xtr, ytr, _ = load_split(data_dir, "train")
    xte, yte, mte = load_split(data_dir, "test")
    logger.info("train %s test %s (positives %d)", tuple(xtr.shape), tuple(xte.shape), int(yte.sum()))
    configs = [c for c in STUDIES[args.study] if not args.only or c[0] in args.only]
    runs = []
    for seed in args.seeds:
        baseline_state = None
        for label, variant, recipe, kw in configs:
            torch.manual_seed(seed)
            model = create_model(
                args.model, variant=variant, in_channels=xtr.shape[1], features=args.features,
                img_size=args.size, **{**json.loads(args.model_kwargs), **kw},
            )
            if recipe in ("frozen", "finetune"):
                if baseline_state is None:
                    raise ValueError("the baseline must come first in CONFIGS")
                model.load_backbone_state(baseline_state)
                model.freeze_backbone(recipe == "frozen")
            t0 = time.perf_counter()
            stats = train(model, xtr, ytr, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=seed)
            wall = time.perf_counter() - t0
            res = evaluate(model, xte, yte, mte)
            if variant == "baseline":
                baseline_state = {k: v.clone() for k, v in model.state_dict().items()}
            row = {"label": label, "variant": variant, "recipe": recipe, "seed": seed, **kw, **stats, **res,
                   "train_s": wall}
            if getattr(model, "gates", None):
                row["learned_gate_scale"] = {b: g.scale for b, g in model.gates.items()}
            runs.append(row)
            atomic_write_json(args.out, {"partial": True, "runs": runs})  # finished runs survive a crash
            logger.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    summary = summarize(runs)
    result = {
        "benchmark": "recipe_study",
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, CPU",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "setup": {k: getattr(args, k) for k in ("study", "model", "model_kwargs", "n", "size", "features", "epochs", "batch", "lr", "seeds",
                                                "data_seed", "threads")},
        "dataset": "synthetic-brain",
        "backbone": args.model,
        "backbone_kwargs": json.loads(args.model_kwargs),
        "summary": summary,
        "runs": runs,
    }
    atomic_write_json(args.out, result)
    print(format_table(summary))
    return result


_METRICS = ("bal_acc", "ap_block3", "ap_block4", "sharpness_block3", "sharpness_block4", "marginal_violation_l1",
            "step_ms", "final_penalty")


def summarize(runs: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["label"] for r in runs):
        rows = [r for r in runs if r["label"] == label]
        s = {"label": label, "variant": rows[0]["variant"], "recipe": rows[0]["recipe"], "n_seeds": len(rows)}
        for k in _METRICS:
            vals = [r[k] for r in rows if k in r and r[k] is not None and not math.isnan(r[k])]
            if vals:
                s[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
        out.append(s)
    return out


def format_table(summary: list[dict]) -> str:
    cols = ["bal_acc", "ap_block3", "ap_block4", "sharpness_block3", "sharpness_block4", "marginal_violation_l1"]
    lines = ["| config | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for s in summary:
        cells = []
        for c in cols:
            v = s.get(c)
            if v is None:
                cells.append("-")
            elif c == "bal_acc":
                cells.append(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}")
            elif c.startswith(("sharp", "marginal")):
                cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}")
            else:
                cells.append(f"{v['mean']:.1f} ± {v['std']:.1f}")
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_times(args: argparse.Namespace) -> dict:
    """Median wall time of one training step per variant on random inputs (interleaved, so load is shared)."""
    from dualattn._io import atomic_write_json
    from dualattn.models import count_parameters, create_model

    torch.set_num_threads(args.threads)
    variants = [("baseline", {}), ("unconstrained", {}), ("dual", {}), ("kl", {}),
                ("exact", {"exact_mode": "two_pass"}), ("exact", {"exact_mode": "pool"}), ("multilevel", {})]
    models = []
    for variant, kw in variants:
        torch.manual_seed(0)
        m = create_model("unet_encoder", variant=variant, in_channels=4, features=args.features, img_size=args.size, **kw)
        models.append((f"{variant} {kw.get('exact_mode', '')}".strip(), m, torch.optim.Adam(m.parameters(), lr=1e-3)))
    x = torch.randn(args.batch, 4, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))
    times: dict[str, list[float]] = {label: [] for label, _, _ in models}
    for rep in range(args.steps + 2):
        for label, m, opt in models:
            t0 = time.perf_counter()
            out = m.forward_with_attention(x)
            loss = F.cross_entropy(out.logits, y) + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rep >= 2:  # warm-up
                times[label].append(1000.0 * (time.perf_counter() - t0))
    rows = [{"label": label, "median_ms": float(np.median(times[label])), "params": count_parameters(m)}
            for label, m, _ in models]
    result = {"benchmark": "recipe_step_time", "machine": f"CPU, {args.threads} torch threads (shared)",
              "torch": torch.__version__, "batch": args.batch, "size": args.size, "features": args.features,
              "rows": rows}
    atomic_write_json(args.out, result)
    for r in rows:
        print(f"{r['label']:<20} {r['median_ms']:8.1f} ms  {r['params']:,} params")
    return result


def merge(files: list[str], out: str) -> dict:
    """One result file from several runs of this script (same setup, e.g. seed ranges run in parallel)."""
    from dualattn._io import atomic_write_json

    parts = [json.loads(Path(f).read_text()) for f in files]
    unfinished = [f for f, part in zip(files, parts) if part.get("partial")]
    if unfinished:
        raise SystemExit(f"unfinished result files (a run still going or crashed): {unfinished}")
    # files written before --model existed ran the U-Net with no extra options
    defaults = {"model": "unet_encoder", "model_kwargs": "{}"}
    setups = [{**defaults, **{k: v for k, v in part["setup"].items() if k != "seeds"}} for part in parts]
    if any(s != setups[0] for s in setups[1:]):
        raise SystemExit(f"the files were run with different setups: {setups}")
    runs = [r for part in parts for r in part["runs"]]
    order = list(dict.fromkeys(r["label"] for r in runs))
    runs.sort(key=lambda r: (order.index(r["label"]), r["seed"]))
    result = {**parts[0], "setup": {**parts[0]["setup"], "seeds": sorted({r["seed"] for r in runs})},
              "merged_from": [Path(f).name for f in files], "summary": summarize(runs), "runs": runs}  # fmt: skip
    atomic_write_json(out, result)
    print(format_table(result["summary"]))
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/recipe_study.json")
    p.add_argument("--study", choices=sorted(STUDIES), default="recipes",
                   help="which set of configurations: the training recipes, or the gate gain/sharpness study")
    p.add_argument("--model", default="unet_encoder", help="backbone (dualattn.models.list_models())")
    p.add_argument("--model-kwargs", default="{}", help='extra create_model options as JSON, e.g. \'{"stem": "small"}\'')
    p.add_argument("--data-dir", default=None, help="existing/cache folder for the generated dataset")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="config labels to run (baseline is needed first)")
    p.add_argument("--step-time", action="store_true", help="only time one training step per variant")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (--step-time)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="combine the runs of several result files (e.g. seeds run in parallel) into --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.merge:
        merge(args.merge, args.out)
    elif args.step_time:
        step_times(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
