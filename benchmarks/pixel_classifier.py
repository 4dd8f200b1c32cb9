"""How well can the lesion be found with supervision? A per-pixel gradient-boosting classifier.

A reference point for the attention maps' AP on ``synthetic-brain``: sklearn's
``HistGradientBoostingClassifier`` is fit on pixels of the **train** split (label = the tumour mask),
each pixel described by a few local features of the model's input (per-image z-scored channels, as
``FolderDataset`` gives them):

* the 4 channel intensities;
* their 3x3 and 7x7 local means (``scipy.ndimage.uniform_filter``, reflected edges);

12 features per pixel, no position. Then, on the **test** split, AP = sklearn's
``average_precision_score`` of the predicted pixel probabilities against the mask, mean over
tumour-positive images with a non-empty mask (as the attention AP is averaged). For scale the same
images' AP of each raw channel (the better of the channel and its negative) and of a random map (the
mean mask fraction) are reported. The val split is not used: nothing is tuned (sklearn's defaults, a
fixed number of iterations). The data draw is ``--data-seed`` (written into the JSON as ``data_seed``; the
sealed draw of the default demo, :data:`dualattn.data.sealed.SEALED_DATA_SEED`, is refused).

Usage (a few minutes on one core)::

    python benchmarks/pixel_classifier.py --out benchmarks/results/pixel_classifier.json
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

logger = logging.getLogger("pixel_classifier")


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Per-pixel features of a batch of images.

    Args:
        images: ``(B, C, H, W)`` float array.

    Returns:
        ``(B, H, W, 3 * C)``: each channel, its 3x3 local mean and its 7x7 local mean (reflected edges).

    Example:
        >>> pixel_features(np.ones((2, 4, 8, 8))).shape
        (2, 8, 8, 12)
    """
    from scipy.ndimage import uniform_filter

    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {images.shape}")
    feats = [images]
    for k in (3, 7):
        feats.append(uniform_filter(images, size=(1, 1, k, k), mode="reflect"))
    return np.concatenate(feats, axis=1).transpose(0, 2, 3, 1)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(images (B, C, H, W), labels (B,), masks (B, H, W) bool, channel names)`` of one split."""
    from dualattn.data import FolderDataset

    ds = FolderDataset(root, split=split)
    items = [ds[i] for i in range(len(ds))]
    x = np.stack([it["image"].numpy() for it in items]).astype(np.float32)
    y = np.array([int(it["label"]) for it in items])
    m = np.stack([it["mask"].numpy()[0] for it in items]) > 0.5
    names = list(ds.channel_names or [f"ch{c}" for c in range(x.shape[1])])
    return x, y, m, names


def per_image_ap(scores: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Mean AP over positive images with a non-empty mask; ``(mean, count)``."""
    from sklearn.metrics import average_precision_score

    aps = [average_precision_score(masks[i].ravel(), scores[i].ravel())
           for i in range(len(masks)) if labels[i] == 1 and masks[i].any()]  # fmt: skip
    return float(np.mean(aps)), len(aps)


def run(args: argparse.Namespace) -> dict:
    import scipy
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    import dualattn
    from dualattn._io import atomic_write_json
    from dualattn.data import make_dataset

    from dualattn.data.sealed import refuse_sealed

    refuse_sealed(args.data_seed, who="benchmarks/pixel_classifier.py")
    t0 = time.perf_counter()
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="pixel_classifier_"))
    data = root / f"synthetic-brain-n{args.n}-s{args.size}-seed{args.data_seed}"
    if not (data / "labels.csv").exists():
        make_dataset("synthetic-brain", data, n=args.n, size=args.size, seed=args.data_seed)
    xtr, _, mtr, _ = load_split(data, "train")
    xte, yte, mte, names = load_split(data, "test")
    ftr = pixel_features(xtr).reshape(-1, 3 * xtr.shape[1])
    ltr = mtr.reshape(-1)
    rng = np.random.default_rng(args.seed)
    take = rng.choice(len(ltr), size=min(args.max_train_pixels, len(ltr)), replace=False)
    clf = HistGradientBoostingClassifier(max_iter=args.max_iter, random_state=args.seed)
    clf.fit(ftr[take], ltr[take])
    fte = pixel_features(xte)
    prob = clf.predict_proba(fte.reshape(-1, fte.shape[-1]))[:, 1].reshape(mte.shape)
    ap, n_pos = per_image_ap(prob, mte, yte)
    channels = {}
    for c in range(xte.shape[1]):
        channels[names[c]] = max(per_image_ap(xte[:, c], mte, yte)[0], per_image_ap(-xte[:, c], mte, yte)[0])
    prevalence = float(np.mean([mte[i].mean() for i in range(len(mte)) if yte[i] == 1 and mte[i].any()]))
    result = {
        "benchmark": "pixel_classifier",
        "data_seed": args.data_seed,
        "command": "python benchmarks/pixel_classifier.py " + " ".join(args.argv),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "sklearn": sklearn.__version__, "dualattn": getattr(dualattn, "__version__", "unknown")},
        "setup": {"dataset": "synthetic-brain", "n": args.n, "size": args.size, "data_seed": args.data_seed,
                  "seed": args.seed, "max_train_pixels": int(len(take)), "max_iter": args.max_iter,
                  "features": "4 z-scored channels + their 3x3 and 7x7 local means (12 per pixel)",
                  "fit_on": "train split pixels (uniform random subsample)", "scored_on": "test split positives",
                  "train_images": int(len(xtr)), "test_images": int(len(xte))},
        "ap": ap,
        "n_positive_test_images": n_pos,
        "raw_channel_ap": channels,
        "random_ap": prevalence,
        "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    atomic_write_json(args.out, result)
    print(f"pixel classifier AP {ap:.3f} on {n_pos} test positives; raw channels {channels}; random {prevalence:.3f}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/pixel_classifier.json")
    p.add_argument("--data-dir", default=None, help="cache folder for the generated dataset")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="pixel subsample and boosting seed")
    p.add_argument("--max-train-pixels", type=int, default=300_000)
    p.add_argument("--max-iter", type=int, default=200)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run(args)


if __name__ == "__main__":
    main()
