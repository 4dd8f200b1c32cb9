"""How much can a cell see of its own pixels? The ceiling of the threshold form's selector, an exploratory diagnostic.

``select_predict``'s threshold form (docs/models.md, "The threshold form") judges every block3 cell (4 px of a 64 px
image) on its own pixels; that is what makes its mask provably stable. Where its accuracy is low, is the selector
badly trained or is 4 px too little to tell a lesion? This script trains the selector's architecture alone (the
patch encoder, ``selector="patch"``, and its block3 gate; the training split's statistics in front) two ways for
the same epochs:

* ``mil``: image labels only, the multiple-instance loss the product trains with (``threshold_mil_loss``);
* ``oracle``: every cell labelled by the lesion mask (lesion share of the cell >= 0.5), binary cross-entropy per
  cell -- supervision the product never has, a ceiling for what the cells' own pixels can say.

Each is calibrated as the product is (threshold: healthy false-positive rate ``--fpr`` on the training split's
healthy images) and scored on **val**: the share of lesion images that show a cell (sensitivity), of healthy images
that do (false positives), and the per-cell AUC of the potential for lesion cells (scikit-learn). Data: the design
study's draws (``--data-seed``, default 1; never the sealed draw), 70/10/20 split, 64x64, raw intensities.

Usage::

    python benchmarks/cell_oracle.py --work /tmp/design --out benchmarks/results/cell_oracle.json
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

THRESHOLD_FORM = {"selector": "patch", "selector_norm": "dataset", "mask_rule": "threshold",
                  "predictor_norm": "dataset"}


def _split(data: Path, split: str, preset: Any) -> dict[str, Any]:
    import torch

    from dualattn.data import FolderDataset

    ds = FolderDataset(data, split=split, size=preset.image_size, seed=0, fractions=tuple(preset.split_fractions),
                       normalize="none")
    items = [ds[i] for i in range(len(ds))]
    return {"x": torch.stack([torch.as_tensor(it["image"]) for it in items]).float(),
            "y": torch.stack([torch.as_tensor(it["label"]).reshape(()) for it in items]).long(),
            "m": torch.stack([torch.as_tensor(it["mask"]).reshape(it["image"].shape[1:]) for it in items]).float()}


def train_cells(train: dict[str, Any], *, mode: str, features: int, epochs: int, seed: int, batch: int = 16,
                lr: float = 1e-3) -> Any:
    """The selector of a fresh threshold-form model trained alone by ``mode`` (``"mil"`` or ``"oracle"``)."""
    import torch
    import torch.nn.functional as F

    from dualattn.models import create_model
    from dualattn.models.select_predict import cell_fraction
    from dualattn.train.select_predict import threshold_mil_loss

    torch.manual_seed(seed)
    model = create_model("unet_encoder", variant="select_predict", in_channels=train["x"].shape[1],
                         features=features, **THRESHOLD_FORM)
    model.set_input_statistics([train["x"]])
    params = [p for m in model.selector_modules() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    n = train["x"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for m in model.selector_modules():
            m.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n - 1, batch):
            idx = order[start:start + batch]
            x, y = train["x"][idx], train["y"][idx]
            _, phis = model._pass_one(model.selector_input(x))
            phi = phis[model.finest_block]
            if mode == "mil":
                loss = threshold_mil_loss(phi, y, model.empty_class)
            else:
                target = (cell_fraction(train["m"][idx] > 0.5, phi.shape[1:]) >= 0.5).float()
                loss = F.binary_cross_entropy_with_logits(phi, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def score(model: Any, train: dict[str, Any], val: dict[str, Any], fpr: float) -> dict[str, float]:
    """Calibrate on the training split's healthy images, then sensitivity / false positives / cell AUC on val."""
    import torch
    from sklearn.metrics import roc_auc_score

    from dualattn.models.select_predict import cell_fraction

    model.calibrate_threshold([(train["x"], train["y"])], false_positive_rate=fpr)
    with torch.no_grad():
        sel = model.select(val["x"])
    shown = sel.mask[model.finest_block].flatten(1).any(1)
    lesion = val["y"] != model.empty_class
    phi = sel.potentials[model.finest_block]
    cells = (cell_fraction(val["m"] > 0.5, phi.shape[1:]) >= 0.5).flatten()
    auc = float(roc_auc_score(cells.numpy(), phi.flatten().double().numpy())) if 0 < int(cells.sum()) < cells.numel() \
        else float("nan")
    return {"sensitivity": 100.0 * float(shown[lesion].double().mean()),
            "false_positives": 100.0 * float(shown[~lesion].double().mean()),
            "cell_auc": auc, "threshold": float(model.threshold), "n_val": int(val["y"].numel())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="the design study's --work (its data draws are reused)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default="synthetic-brain,synthetic-brain-easy,synthetic-pet")
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--fpr", type=float, default=0.02)
    args = p.parse_args(argv)

    import torch

    from dualattn._io import atomic_write_json
    from dualattn.data.sealed import refuse_sealed

    seed = refuse_sealed(args.data_seed, who="cell_oracle")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    rows: dict[str, Any] = {}
    t0 = time.perf_counter()
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        preset, data = design_study.study_setup(dataset, work=args.work / dataset, data_seed=seed, seeds=seeds,
                                                variants=("baseline",))
        train, val = _split(data, "train", preset), _split(data, "val", preset)
        for mode in ("mil", "oracle"):
            runs = [score(train_cells(train, mode=mode, features=int(preset.model_kwargs.get("features", 8)),
                                      epochs=args.epochs, seed=s), train, val, args.fpr) for s in seeds]
            rows.setdefault(dataset, {})[mode] = {
                key: [r[key] for r in runs] for key in runs[0]} | {
                f"{key}_mean": sum(r[key] for r in runs) / len(runs)
                for key in ("sensitivity", "false_positives", "cell_auc")}
            print(dataset, mode, {k: round(v, 3) for k, v in rows[dataset][mode].items() if k.endswith("_mean")},
                  flush=True)
        atomic_write_json(args.out, {
            "command": " ".join(["python benchmarks/cell_oracle.py", *(argv if argv is not None else sys.argv[1:])]),
            "exploratory": True, "split": "val", "data_seed": seed, "seeds": list(seeds), "epochs": args.epochs,
            "healthy_fpr": args.fpr, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
