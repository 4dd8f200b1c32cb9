"""The figure of docs/models.md, "Local evidence, additive consistent pooling": a tiny ``additive`` model's two maps.

Trains ``unet_encoder`` variant ``additive`` (``features=8``, the sharp gate of the recipes) with the real training
pipeline (:func:`dualattn.train.fit`) on a small ``synthetic-brain`` draw, then, on the draw's **test** split:

* balanced accuracy (sklearn) and the mean AP against the tumour masks of the positive images of ``additive``
  (``mu``, where the model looks) and ``additive_contribution`` (``mu * s`` for the tumour class against the
  other, what each place contributed), nearest-upsampled to the image;
* the same AP of two post-hoc maps of the same model (Input x Gradient, GradCAM; target the tumour class);
* the largest gap between a contribution map's sum and the logit difference less the biases' (the exact
  decomposition, float32 rounding only);
* a PNG: for a few positive test images, the FLAIR channel with the mask's outline, ``mu`` and ``mu * s`` at
  block3 and block4 (each contribution map on its own symmetric colour scale: red for the tumour class, blue
  against it, white none).

A sanity figure for the docs, not a study: one seed, no selection, nothing tuned. The data draw is
``--data-seed`` (the sealed draw of the default demo is refused; written into the JSON as ``data_seed``).

Usage (about a minute on one core)::

    python benchmarks/additive_figure.py --figure docs/figures/additive_maps.png \\
        --out benchmarks/results/additive_figure.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("additive_figure")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--figure", default="docs/figures/additive_maps.png", help="PNG to write")
    p.add_argument("--out", default="benchmarks/results/additive_figure.json", help="JSON to write")
    p.add_argument("--work", default=None, help="folder for the data and the run (default: a temporary one)")
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--rows", type=int, default=3, help="positive test images shown")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def _load_split(root: Path, split: str):
    import torch

    from dualattn.data import FolderDataset

    ds = FolderDataset(root, split=split)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items])
    m = torch.stack([it["mask"] for it in items])
    return x, y, m, list(ds.channel_names or [])


def _upsample(maps, size):
    import torch

    return torch.nn.functional.interpolate(maps, size=size, mode="nearest")


def _ap(maps, masks) -> float:
    from sklearn.metrics import average_precision_score

    up = _upsample(maps, tuple(masks.shape[2:]))
    aps = [average_precision_score(masks[i].flatten().numpy() > 0.5, up[i].flatten().numpy())
           for i in range(len(maps)) if masks[i].any()]  # fmt: skip
    return 100.0 * float(np.mean(aps))


def _figure(path: Path, images, masks, maps: dict, flair: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("image", None), ("mu block3", "additive/block3"), ("mu*s block3", "additive_contribution/block3"),
            ("mu block4", "additive/block4"), ("mu*s block4", "additive_contribution/block4")]
    rows = len(images)
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.9 * len(cols), 1.9 * rows + 0.4), squeeze=False)
    size = tuple(images.shape[2:])
    for r in range(rows):
        for c, (label, key) in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if key is None:
                ax.imshow(images[r, flair].numpy(), cmap="gray")
            else:
                m = _upsample(maps[key][r : r + 1], size)[0, 0].numpy()
                if "contribution" in key:
                    lim = max(float(np.abs(m).max()), 1e-12)  # symmetric: white is no contribution
                    ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
                else:
                    ax.imshow(m, cmap="viridis", vmin=0)
            ax.contour(masks[r, 0].numpy(), levels=[0.5], colors="w" if key is None else "k", linewidths=0.6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=72)
    plt.close(fig)
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict:
    import sklearn
    import torch
    from sklearn.metrics import balanced_accuracy_score

    import dualattn
    from dualattn._io import atomic_write_json
    from dualattn.data import make_dataset
    from dualattn.data.sealed import refuse_sealed
    from dualattn.explain import explain
    from dualattn.train import fit, load_config, load_run
    from dualattn.train.recipes import SHARP_GATE

    refuse_sealed(args.data_seed, who="benchmarks/additive_figure.py")
    t0 = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="additive_figure_"))
    data = work / f"synthetic-brain-n{args.n}-s{args.size}-seed{args.data_seed}"
    if not (data / "labels.csv").exists():
        make_dataset("synthetic-brain", data, n=args.n, size=args.size, seed=args.data_seed)
    gate = [f"model_kwargs.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SHARP_GATE.items()]
    config = load_config(overrides=[
        f"dataset={data}", "accelerator=cpu", "devices=1", "variant=additive", f"seed={args.seed}",
        f"max_epochs={args.epochs}", "batch_size=32", "lr=2e-3", f"model_kwargs.features={args.features}", *gate,
    ])
    run_dir = work / f"additive-seed{args.seed}"
    if not (run_dir / "summary.json").exists():
        fit(config, out=run_dir)
    train_s = time.perf_counter() - t0
    model = load_run(run_dir)
    x, y, m, names = _load_split(data, "test")
    with torch.no_grad():
        out = model.forward_with_evidence(x)
    out = out._replace(bias=out.bias.detach())
    pred = out.logits.argmax(1)
    bal_acc = 100.0 * float(balanced_accuracy_score(y.numpy(), pred.numpy()))
    pos = (y == 1) & (m.flatten(1).amax(1) > 0)
    maps = {}
    for block in ("block3", "block4"):
        maps[f"additive/block{block[-1]}"] = explain(model, x[pos], method="additive", block=block)
        maps[f"additive_contribution/block{block[-1]}"] = explain(model, x[pos], method="additive_contribution",
                                                                  block=block, target=1)
    margin = (out.logits[pos, 1] - out.logits[pos, 0]) - (out.bias[1] - out.bias[0])
    gap = max(float((maps[f"additive_contribution/block{b}"].flatten(1).sum(1) - margin).abs().max()) for b in (3, 4))
    aps = {key: _ap(value, m[pos]) for key, value in maps.items()}
    for method in ("input_x_gradient", "gradcam"):  # post-hoc maps of the same model, for scale
        for block in ("block3", "block4"):
            aps[f"{method}/{block}"] = _ap(explain(model, x[pos], method=method, block=block, target=1), m[pos])
    sharp = {}
    for block, mu in out.mu.items():
        flat = mu[pos].flatten(1)
        ent = -(flat * flat.clamp_min(1e-30).log()).sum(1)
        sharp[block] = float((ent.exp() / flat.shape[1]).mean())
    flair = names.index("FLAIR") if "FLAIR" in names else 0
    rows = slice(0, args.rows)
    _figure(Path(args.figure), x[pos][rows], m[pos][rows], {k: v[rows] for k, v in maps.items()}, flair,
            f"additive, synthetic-brain test images (data seed {args.data_seed}); balanced accuracy {bal_acc:.1f}; "
            f"mu*s: red for the tumour class, blue against")
    rf = model.receptive_fields
    result = {
        "benchmark": "additive_figure",
        "data_seed": args.data_seed,
        "command": "python benchmarks/additive_figure.py " + " ".join(args.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "sklearn": sklearn.__version__,
                     "dualattn": getattr(dualattn, "__version__", "unknown")},
        "setup": {"dataset": "synthetic-brain", "n": args.n, "size": args.size, "seed": args.seed,
                  "epochs": args.epochs, "model": model.config, "test_images": int(len(y)),
                  "positive_test_images_with_mask": int(pos.sum()),
                  "receptive_field_px": {b: rf[b].size for b in model.attention_blocks}},
        "test": {"balanced_accuracy": bal_acc, "ap": aps, "sharpness": sharp,
                 "max_abs_sum_minus_logit_difference": gap},
        "wall_s": {"data_and_training": train_s, "total": time.perf_counter() - t0},
    }  # fmt: skip
    atomic_write_json(args.out, result)
    print(f"balanced accuracy {bal_acc:.1f}; AP {aps}; sharpness {sharp}; sum gap {gap:.2e}; -> {args.figure}")
    return result


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.WARNING)
    return run(_parse(argv))


if __name__ == "__main__":
    main()
