"""A sanity run of ``select_predict`` (docs/models.md, "Select, then predict"): train it, then measure what its
guarantee leaves open.

Trains a ``unet_encoder`` baseline, then ``select_predict`` started from it (the recipe), with the real training
pipeline (:func:`dualattn.train.fit`) on a ``synthetic-brain`` draw (``--data-seed``; the sealed draw of the default
demo is refused), and on the draw's **test** split, with the images as the run takes them (raw: its
``input_normalization``):

* balanced accuracy of the baseline and of ``select_predict``; the EVAL-X comparison of ``summary.json`` (with the
  selector's masks, with random blob masks of the same size, with the mask alone);
* the hiding test at k = 100 x budget with the evaluation's own functions (:mod:`dualattn.evaluate.hiding`:
  foreground, matched healthy partners of other patients, up to 5 each): hidden pixels swapped for the partner's,
  prediction flips **with the mask held fixed** (``predict_masked`` with the original mask: 0 by construction) and
  **with the mask recomputed** (the deployed model), split by class; the mask's IoU before/after the swap (finest
  grid); the share of lesion pixels the mask shows before and after; swapping the *kept* cells instead (lesion
  images), and the same with a ``random`` map's region of the same size;
* lesion AP of the ``select_predict`` map (block3).

A sanity check, not a study: one seed, nothing selected. Usage (about 3 minutes on one core)::

    python benchmarks/select_predict_sanity.py --out benchmarks/results/select_predict_sanity.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("select_predict_sanity")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/select_predict_sanity.json", help="JSON to write")
    p.add_argument("--work", default=None, help="folder for the data and the runs (default: a temporary one)")
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--baseline-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20, help="select_predict epochs, both phases")
    p.add_argument("--predictor-epochs", type=int, default=10, help="phase 1")
    p.add_argument("--set", action="append", default=[], help="extra key=value for select_predict's config")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def hiding(model, x, y, lesion, patients, *, partners_per_image: int = 5) -> dict:
    """The hiding numbers of the module docstring for a ``select_predict`` model on raw images ``x``."""
    import torch

    from dualattn.evaluate.hiding import foreground, hiding_test, match_partners
    from dualattn.evaluate.metrics import average_precision
    from dualattn.explain import explain

    fg = foreground(x)
    partners = match_partners(fg, y, patients, n_partners=partners_per_image)
    fine = model.finest_block
    k = 100 * model.budget
    nanmean = lambda v: float(torch.as_tensor(v, dtype=torch.float64).nanmean())  # noqa: E731
    with torch.no_grad():
        sel = model.select(x)
        cells, keep = sel.mask[fine], sel.pixels
        base = model(x).argmax(1)
        fixed, again, ious, cls, shown_before, shown_after = [], [], [], [], [], []
        for j in range(partners.shape[1]):
            idx = partners[:, j]
            rows = torch.nonzero(idx >= 0)[:, 0]
            swapped = torch.where(keep[rows], x[rows], x[idx[rows]])
            fixed.append((model.predict_masked(swapped, cells[rows]).argmax(1) != base[rows]).double())
            new = model.select(swapped)
            again.append((model.predict_masked(swapped, new.mask[fine]).argmax(1) != base[rows]).double())
            a, b = cells[rows].flatten(1), new.mask[fine].flatten(1)
            ious.append((a & b).sum(1).double() / (a | b).sum(1).double())
            cls.append(y[rows])
            les = lesion[rows].flatten(1) > 0.5
            has = les.any(1)
            shown_before.append(((les & keep[rows].flatten(1)).sum(1) / les.sum(1).clamp_min(1)).double()[has])
            shown_after.append(((les & new.pixels.flatten(1)).sum(1) / les.sum(1).clamp_min(1)).double()[has])
        fixed, again, ious, cls = (torch.cat(v) for v in (fixed, again, ious, cls))
        ranked = explain(model, x, method="select_predict", block=fine)
        own = hiding_test(model, x, ranked, y, partners=partners, fg=fg, ks=(int(round(k)),))
        rnd = hiding_test(model, x, explain(model, x, method="random", block=fine), y, partners=partners, fg=fg,
                          ks=(int(round(k)),))
        pos = (y != 0) & (lesion.flatten(1).sum(1) > 0)
        ap = average_precision(ranked[pos], lesion[pos])
    tag = int(round(k))
    return {
        "k": tag,
        "kept_foreground_share": float((sel.kept.double() / sel.candidates.flatten(1).sum(1)).mean()),
        "flips_mask_fixed": 100 * float(fixed.mean()),
        "flips_mask_recomputed": 100 * float(again.mean()),
        "flips_mask_recomputed_lesion": 100 * float(again[cls != 0].mean()),
        "flips_mask_recomputed_healthy": 100 * float(again[cls == 0].mean()),
        "mask_iou_before_after": float(ious.mean()),
        "mask_unchanged_share": float((ious == 1).double().mean()),
        "lesion_pixels_shown_before": float(torch.cat(shown_before).mean()),
        "lesion_pixels_shown_after": float(torch.cat(shown_after).mean()),
        f"hidden_swap_flips@{tag}": nanmean(own[f"hidden_swap_flips@{tag}"]),
        f"kept_swap_flips@{tag}": nanmean(own[f"kept_swap_flips@{tag}"]),
        f"random_map_kept_swap_flips@{tag}": nanmean(rnd[f"kept_swap_flips@{tag}"]),
        f"random_map_hidden_swap_flips@{tag}": nanmean(rnd[f"hidden_swap_flips@{tag}"]),
        "lesion_ap_block3": 100 * float(ap.nanmean()),
        "pairs": int(fixed.numel()),
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    import dualattn
    from dualattn._io import atomic_write_json
    from dualattn.data import FolderDataset, make_dataset
    from dualattn.data.sealed import refuse_sealed
    from dualattn.evaluate.metrics import balanced_accuracy
    from dualattn.runs import RunDir
    from dualattn.train import fit, load_config

    refuse_sealed(args.data_seed, who="benchmarks/select_predict_sanity.py")
    t0 = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="select_predict_sanity_"))
    data = work / f"synthetic-brain-n{args.n}-s{args.size}-seed{args.data_seed}"
    if not (data / "labels.csv").exists():
        make_dataset("synthetic-brain", data, n=args.n, size=args.size, seed=args.data_seed,
                     options={"slices_per_patient": 1})
    common = [f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=16", f"seed={args.seed}",
              f"model_kwargs.features={args.features}", "split_fractions=[0.7,0.1,0.2]"]
    base_dir = work / f"baseline-seed{args.seed}"
    fit(load_config(overrides=[*common, f"max_epochs={args.baseline_epochs}"]), out=base_dir, resume=True)
    t1 = time.perf_counter()
    sp_dir = work / f"select_predict-seed{args.seed}"
    config = load_config(overrides=[*common, "variant=select_predict", f"max_epochs={args.epochs}",
                                    f"select_predict.predictor_epochs={args.predictor_epochs}", *args.set])
    fit(config, out=sp_dir, resume=True, init_from=base_dir)
    t2 = time.perf_counter()
    run_sp, run_base = RunDir(sp_dir), RunDir(base_dir)
    model = run_sp.load_model()
    ds = FolderDataset(data, split="test", normalize=run_sp.input_normalization, fractions=(0.7, 0.1, 0.2))
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items]).long()
    lesion = torch.stack([it["mask"] for it in items])
    zs = FolderDataset(data, split="test", fractions=(0.7, 0.1, 0.2))
    xz = torch.stack([zs[i]["image"] for i in range(len(zs))])
    with torch.no_grad():
        base_acc = balanced_accuracy(y, run_base.load_model()(xz).argmax(1))
        sp_acc = balanced_accuracy(y, model(x).argmax(1))
    result = {
        "benchmark": "select_predict_sanity",
        "argv": args.argv,
        "data_seed": args.data_seed,
        "setup": {"n": args.n, "size": args.size, "features": args.features, "seed": args.seed,
                  "baseline_epochs": args.baseline_epochs, "epochs": args.epochs,
                  "predictor_epochs": args.predictor_epochs, "extra": args.set, "split": "test",
                  "n_test": int(len(y)), "budget": model.budget, "best_epoch": run_sp.summary.get("best_epoch")},
        "balanced_accuracy": {"baseline": base_acc, "select_predict": sp_acc},
        "evalx": run_sp.summary.get("select_predict", {}).get("test"),
        "hiding": hiding(model, x, y, lesion, ds.patients),
        "wall_s": {"baseline": t1 - t0, "select_predict": t2 - t1, "total": time.perf_counter() - t0},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads()},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "dualattn": dualattn.__version__},
    }
    atomic_write_json(args.out, result)
    return result


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = run(_parse(argv))
    print(json.dumps({k: result[k] for k in ("balanced_accuracy", "evalx", "hiding")}, indent=1))
    return result


if __name__ == "__main__":
    main()
