"""docs/figures/select_predict_maps.png: what a select-then-predict model shows and what happens to its mask in the
hiding test.

For a few test scans with a lesion of a trained ``select_predict`` run: the scan (FLAIR) with the lesion contour, the
selector's consistent map ``mu`` (block3), the hard mask the predictor is shown, and the hiding test's composite
(the kept cells of this scan, the rest from a matched healthy scan of another patient) with the mask the selector
recomputes on it -- the mask that moves. Each row's title gives the predicted class on the scan, on the composite
with the mask held fixed, and with the mask recomputed, and the IoU of the two masks.

Usage (a run trained by ``benchmarks/design_study.py`` or ``dualattn train --set variant=select_predict``)::

    python benchmarks/select_predict_figure.py RUN --split val --out docs/figures/select_predict_maps.png
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--split", default="val")
    p.add_argument("--rows", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from dualattn.data.sealed import refuse_sealed
    from dualattn.evaluate.hiding import foreground, kept_pixels, match_partners
    from dualattn.evaluate.testset import load_test_set
    from dualattn.runs import RunDir

    run = RunDir(args.run)
    model = run.model.eval()
    data = run.dataset()
    meta = json_seed(data)
    if meta is not None:
        refuse_sealed(meta, who="select_predict_figure")
    cfg = run.config
    test = load_test_set(data, split=args.split, size=cfg.get("image_size"), seed=int(cfg.get("split_seed", 0)),
                         fractions=tuple(cfg.get("split_fractions") or (0.7, 0.15, 0.15)))
    raw = test.raw_images
    partners = match_partners(foreground(raw), test.labels, test.patients, n_partners=1)
    lesion = [int(i) for i in test.positives[: args.rows]]
    fig, axes = plt.subplots(len(lesion), 4, figsize=(10, 2.7 * len(lesion)), squeeze=False)
    with torch.no_grad():
        for row, i in enumerate(lesion):
            x = raw[i:i + 1]
            sel = model.select(x)
            mu = sel.mu["block3"][0].numpy()
            mask = sel.pixels[0, 0].numpy()
            keep = kept_pixels(sel.mu["block3"][:, None], foreground(x), 100.0 * model.budget)
            j = int(partners[i, 0])
            comp = torch.where(keep, x, raw[j:j + 1])
            sel2 = model.select(comp)
            pred = int(model(x).argmax(1))
            fixed = int(model.predict_masked(comp, sel.mask["block3"]).argmax(1))
            moved = int(model(comp).argmax(1))
            m1, m2 = sel.mask["block3"][0], sel2.mask["block3"][0]
            iou = float((m1 & m2).sum() / (m1 | m2).sum().clamp_min(1))
            flair = x[0, -1].numpy()
            ax = axes[row]
            ax[0].imshow(flair, cmap="gray")
            ax[0].contour(test.masks[i, 0].numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
            ax[0].set_title(f"scan (label {test.class_names[int(test.labels[i])]})", fontsize=8)
            im = ax[1].imshow(mu * mu.size, cmap="magma", norm=matplotlib.colors.LogNorm(1 / 8, 32))
            ax[1].set_title("selector mu, × uniform", fontsize=8)
            fig.colorbar(im, ax=ax[1], fraction=0.046)
            ax[2].imshow(flair, cmap="gray")
            ax[2].imshow(np.ma.masked_where(mask, mask), cmap="Greys", alpha=0.75, vmin=0, vmax=1)
            ax[2].set_title(f"hard mask (shown to the predictor)\nprediction: {test.class_names[pred]}", fontsize=8)
            ax[3].imshow(comp[0, -1].numpy(), cmap="gray")
            ax[3].contour(sel2.pixels[0, 0].numpy().astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax[3].contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.6, linestyles="dashed")
            ax[3].set_title(f"composite with a healthy scan\nmask fixed: {test.class_names[fixed]}; recomputed: "
                            f"{test.class_names[moved]}\nmask IoU {iou:.2f} (green: before, yellow: after)",
                            fontsize=7)
            for a in ax:
                a.set_axis_off()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


def json_seed(data: Path) -> int | None:
    """The data seed recorded in the dataset folder's ``dataset.json`` (``None`` when absent)."""
    import json

    info = Path(data) / "dataset.json"
    if not info.is_file():
        return None
    return json.loads(info.read_text(encoding="utf-8")).get("seed")


if __name__ == "__main__":
    raise SystemExit(main())
