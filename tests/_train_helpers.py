"""A tiny learnable dataset shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 32


def write_blobs(root: Path, *, n: int, seed: int = 0, size: int = SIZE) -> Path:
    """Class 1: a bright 6x6 square somewhere on noise; class 0: noise only (one patient per image)."""
    from dualattn.data import FolderWriter

    rng = np.random.default_rng(seed)
    with FolderWriter(root, class_names=["no", "yes"]) as w:
        for i in range(n):
            y = i % 2
            img = rng.normal(0.0, 1.0, (1, size, size)).astype(np.float32)
            mask = np.zeros((size, size), np.uint8)
            if y:
                r, c = rng.integers(2, size - 8, 2)
                img[0, r : r + 6, c : c + 6] += 3.0
                mask[r : r + 6, c : c + 6] = 1
            w.add(f"img{i:03d}", image=img, label=y, patient=f"p{i:03d}", mask=mask)
    return root
