"""The folder format every part of dualattn reads, its writer, and :class:`FolderDataset`.

Layout::

    my_data/
      labels.csv        image,label[,mask][,patient][,split]
      dataset.json      optional: {"class_names": [...], "channel_names": [...], ...}
      images/...        any readable image files (PNG/JPG/NPY/NIfTI/DICOM/NRRD)
      masks/...         optional binary masks, same spatial size as their image

``image`` and ``mask`` are paths relative to the folder (absolute paths work too); ``label`` is a
class index or a class name; ``patient`` groups items for patient-level splits (default: one
patient per image); an optional ``split`` column (train/val/test) overrides the seeded split.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import atomic_write_json, atomic_write_text
from .errors import DataError
from .readers import read_image
from .splits import SPLIT_NAMES, split_indices
from .transforms import (
    NORMALIZATIONS,
    ORIENTATIONS,
    AugmentPolicy,
    default_orientation,
    left_right_axis,
    normalize as _normalize,
    resize as _resize,
    resolve_augment,
)

__all__ = ["FolderDataset", "FolderWriter", "read_labels_csv", "parse_labels_csv", "read_dataset_meta", "check_mask",
           "class_names_from_labels",
           "resolve_item_path", "item_patient"]

logger = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
META_JSON = "dataset.json"


def read_dataset_meta(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``dataset.json`` as a dict (``{}`` when absent).

    Raises:
        DataError: the file exists but is not a JSON object.
    """
    path = Path(root) / META_JSON
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot parse JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(path, "must hold a JSON object")
    return meta


def read_labels_csv(root: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Rows of ``root/labels.csv`` as dicts with stripped string values.

    Each row also carries ``"_line"``, its line number in the file (the header is line 1).

    Raises:
        DataError: missing file, missing ``image``/``label`` columns, empty table or empty cells.
    """
    rows, problems = parse_labels_csv(root)
    if problems:
        line, message = problems[0]
        path = Path(root) / LABELS_CSV
        raise DataError(path, message if line is None else f"row {line}: {message}")
    return rows


def parse_labels_csv(root: str | os.PathLike[str]) -> tuple[list[dict[str, str]], list[tuple[int | None, str]]]:
    """Rows of ``root/labels.csv`` and every problem found, without raising (``dualattn check``).

    Returns:
        ``(rows, problems)``: the complete rows (as :func:`read_labels_csv` returns them) and
        ``(line or None, message)`` for the file (missing, unreadable, columns, no rows) or for each
        row with an empty ``image`` or ``label`` cell (such rows are left out of ``rows``).
    """
    path = Path(root) / LABELS_CSV
    if not path.is_file():
        return [], [(None, "labels.csv not found (a dataset folder needs labels.csv with columns image,label[,mask][,patient])")]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [(None, f"cannot read ({exc})")]
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    missing = [c for c in ("image", "label") if c not in fields]
    if missing:
        return [], [(None, f"missing column(s) {missing}; found {fields}")]
    rows: list[dict[str, str]] = []
    problems: list[tuple[int | None, str]] = []
    for n, raw in enumerate(reader, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        empty = [col for col in ("image", "label") if not row.get(col)]
        if empty:
            problems.extend((n, f"empty {col!r}") for col in empty)
            continue
        row["_line"] = str(n)
        rows.append(row)
    if not rows and not problems:
        problems.append((None, "no rows"))
    return rows, problems


def resolve_item_path(root: str | os.PathLike[str], value: str) -> Path:
    """Where a ``labels.csv`` ``image`` / ``mask`` value points: absolute as is, else under ``root``."""
    p = Path(value)
    return p if p.is_absolute() else Path(root) / p


def item_patient(row: dict[str, str]) -> str:
    """A row's patient: its ``patient`` cell, else the image's file name up to the first dot."""
    return row.get("patient") or Path(row["image"]).name.split(".")[0]


def class_names_from_labels(labels: Sequence[str], *, csv_path: str | os.PathLike[str]) -> list[str]:
    """The classes a ``labels.csv`` defines without ``dataset.json``: its label strings sorted, or
    ``"0" .. "max"`` when every label is an integer.

    Raises:
        DataError: a negative integer label.
    """
    values = sorted(set(labels))
    ints = [_as_index(v) for v in values]
    if any(i is None for i in ints):
        return values
    if min(ints) < 0:  # type: ignore[type-var]
        raise DataError(csv_path, f"negative label {min(ints)}")  # type: ignore[type-var]
    return [str(i) for i in range(max(ints) + 1)]  # type: ignore[type-var, operator]


def _as_index(value: str) -> int | None:
    """``"2"``, ``"+2"``, ``"2.0"`` -> 2; anything else (names, ``"2.5"``, ``"nan"``) -> ``None``."""
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def check_mask(mask: np.ndarray, *, path: str | os.PathLike[str]) -> np.ndarray:
    """Validate and binarize a mask ``(1, *S)``: at most two distinct values, one of them 0.

    Returns:
        float32 ``(1, *S)`` array of 0/1.

    Raises:
        DataError: more than one channel or not binary.
    """
    if mask.shape[0] != 1:
        raise DataError(path, f"mask must have 1 channel; got {mask.shape[0]} (shape {mask.shape})")
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = values[:6].tolist()
        raise DataError(path, f"mask is not binary: values {shown}{' ...' if len(values) > 6 else ''} (expected 0 and one positive value)")
    return (mask > 0).astype(np.float32)


class FolderDataset:
    """A :class:`torch.utils.data.Dataset` over the folder format (see the module docstring).

    Args:
        root: the folder holding ``labels.csv``.
        split: ``None`` (all items) or ``"train"`` / ``"val"`` / ``"test"``: a patient-level,
            label-stratified, seeded split independent of row order (or the ``split`` column).
        size: resize every image (bilinear/trilinear) and mask (nearest) to this size (int or one
            int per spatial axis); ``None`` keeps the files' sizes.
        in_channels: channels the model expects; single-channel images are repeated to it,
            any other mismatch raises :class:`DataError`. ``None``: from ``dataset.json`` or the
            first image.
        augment: train-time augmentation, only when ``split == "train"`` (or ``None``): ``True`` (the
            ``lr-flip-affine`` policy: a left-right flip and a small affine), ``False``, a policy name
            (:data:`~dualattn.data.transforms.AUGMENT_POLICIES`) or an
            :class:`~dualattn.data.transforms.AugmentPolicy`. Named policies take their axes from
            ``dataset.json``'s ``"orientation"`` (:data:`~dualattn.data.transforms.ORIENTATIONS`; or its
            ``"axes"`` when that names one; default ``RAS`` for volumes, ``radiological`` for 2-D images).
        seed: seeds the split and the augmentation.
        fractions: ``(train, val, test)`` fractions of patients.
        normalize: per-sample per-channel ``"zscore"`` (default), ``"minmax"`` or ``"none"``.
        class_names: the classes, in label-index order; overrides ``dataset.json``.
        cache: keep decoded (resized) images in memory after their first read.

    Items are dicts: ``image`` ``(C, *S)`` float32, ``label`` int64 scalar tensor, ``mask``
    ``(1, *S)`` float32 (zeros when the row has none), ``has_mask`` bool, ``id`` str. Attributes:
    ``augment_policy`` (the resolved :class:`~dualattn.data.transforms.AugmentPolicy`), ``orientation``.

    Raises:
        DataError: missing labels.csv or files, unknown labels, bad channel counts, corrupt files,
            NaN/Inf voxels, mask/image size mismatch (file-level errors surface on first access).

    Example:
        >>> ds = FolderDataset("my_data", split="train", size=128, in_channels=1)  # doctest: +SKIP
        >>> item = ds[0]; item["image"].shape, item["label"], ds.class_names       # doctest: +SKIP
        (torch.Size([1, 128, 128]), tensor(1), ['no', 'yes'])
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str | None = None,
        size: int | Sequence[int] | None = None,
        in_channels: int | None = None,
        augment: bool | str | AugmentPolicy = False,
        seed: int = 0,
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        normalize: str = "zscore",
        class_names: Sequence[str] | None = None,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder does not exist")
        if split is not None and split not in SPLIT_NAMES:
            raise ValueError(f"split must be None or one of {SPLIT_NAMES}; got {split!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}")
        if in_channels is not None and int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1; got {in_channels!r}")
        self.meta = read_dataset_meta(self.root)
        rows = read_labels_csv(self.root)
        csv_path = self.root / LABELS_CSV
        self.class_names = self._class_names(rows, class_names, csv_path)
        index = {name: i for i, name in enumerate(self.class_names)}
        images, masks, labels, patients, split_col = [], [], [], [], []
        for row in rows:
            line = row["_line"]
            img = self._resolve(row["image"], csv_path, line, "image")
            msk = self._resolve(row["mask"], csv_path, line, "mask") if row.get("mask") else None
            lab = row["label"]
            y = index[lab] if lab in index else _as_index(lab)
            if y is None or not 0 <= y < len(self.class_names):
                raise DataError(csv_path, f"row {line}: unknown label {lab!r} for {row['image']!r} (classes: {self.class_names})")
            images.append(img)
            masks.append(msk)
            labels.append(y)
            patients.append(item_patient(row))
            split_col.append(row.get("split", ""))
        self.split = split
        if split is not None:
            if all(split_col):
                bad = sorted({s for s in split_col if s not in SPLIT_NAMES})
                if bad:
                    raise DataError(csv_path, f"unknown split value(s) {bad}; expected {SPLIT_NAMES}")
                chosen = [i for i, s in enumerate(split_col) if s == split]
            else:
                chosen = split_indices(patients, labels=labels, fractions=fractions, seed=seed).get(split, [])
        else:
            chosen = list(range(len(rows)))
        self._images = [images[i] for i in chosen]
        self._masks = [masks[i] for i in chosen]
        self.labels: list[int] = [labels[i] for i in chosen]
        self.patients: list[str] = [patients[i] for i in chosen]
        self.ids: list[str] = [rows[i]["image"] for i in chosen]
        self.num_classes = len(self.class_names)
        self.size = size
        self.seed = int(seed)
        self.normalize = normalize
        wanted = augment is not False and augment is not None and augment != "none"
        if wanted and split not in (None, "train"):
            logger.info("augmentation is for the train split only; off for split=%r", split)
        self.channel_names: list[str] | None = self.meta.get("channel_names")
        self._epoch = 0
        self._draws: dict[int, int] = {}
        self._cache: dict[int, tuple[Any, Any, bool]] | None = {} if cache else None
        need_first = not ("in_channels" in self.meta and "spatial_dims" in self.meta)
        first = self._load_raw(0) if (self._images and need_first) else None
        file_channels = int(self.meta.get("in_channels", first[0].shape[0] if first is not None else 1))
        self.spatial_dims = int(self.meta.get("spatial_dims", first[0].ndim - 1 if first is not None else 2))
        self.in_channels = int(in_channels) if in_channels is not None else file_channels
        orientation = self.meta.get("orientation")
        if orientation is None and self.meta.get("axes") in ORIENTATIONS:  # synthetic-brain-3d's key
            orientation = self.meta["axes"]
        if orientation is not None:
            try:
                left_right_axis(self.spatial_dims, orientation)
            except ValueError as exc:
                raise DataError(self.root / META_JSON, f"\"orientation\": {exc}") from None
        self.orientation: str = orientation or default_orientation(self.spatial_dims)
        self.augment_policy = resolve_augment(augment if wanted and split in (None, "train") else False,
                                              spatial_dims=self.spatial_dims, orientation=self.orientation)
        self.augment = not self.augment_policy.is_identity

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _class_names(rows: list[dict[str, str]], given: Sequence[str] | None, csv_path: Path) -> list[str]:
        if given is not None:
            names = [str(c) for c in given]
        else:
            meta = read_dataset_meta(csv_path.parent)
            if "class_names" in meta:
                names = [str(c) for c in meta["class_names"]]
            else:
                return class_names_from_labels([r["label"] for r in rows], csv_path=csv_path)
        if len(names) < 1 or len(set(names)) != len(names):
            raise ValueError(f"class_names must be distinct and non-empty; got {names!r}")
        return names

    def _resolve(self, value: str, csv_path: Path, line: str, column: str) -> Path:
        p = resolve_item_path(self.root, value)
        if not p.exists():
            raise DataError(csv_path, f"row {line}: {column} file {value!r} does not exist ({p})")
        return p

    def _load_raw(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        img = read_image(self._images[i])
        if img.ndim not in (3, 4):
            raise DataError(self._images[i], f"expected a 2D or 3D image; got array shape {img.shape}")
        msk = None
        if self._masks[i] is not None:
            msk = check_mask(read_image(self._masks[i]), path=self._masks[i])
            if msk.shape[1:] != img.shape[1:]:
                raise DataError(self._masks[i], f"mask size {msk.shape[1:]} differs from image size {img.shape[1:]} ({self._images[i]})")
        return img, msk

    def _load(self, i: int):
        import torch

        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img_np, msk_np = self._load_raw(i)
        if img_np.ndim - 1 != self.spatial_dims:
            raise DataError(self._images[i], f"image has {img_np.ndim - 1} spatial dims, the dataset {self.spatial_dims}")
        c = img_np.shape[0]
        if c != self.in_channels:
            if c == 1:
                img_np = np.repeat(img_np, self.in_channels, axis=0)
            else:
                raise DataError(self._images[i], f"image has {c} channels; expected {self.in_channels} (only 1-channel images are repeated)")
        img = torch.from_numpy(np.ascontiguousarray(img_np))
        has_mask = msk_np is not None
        msk = torch.from_numpy(msk_np) if has_mask else torch.zeros((1, *img.shape[1:]), dtype=torch.float32)
        if self.size is not None:
            img = _resize(img, self.size)
            msk = _resize(msk, self.size, is_mask=True)
        out = (img.float(), msk.float(), has_mask)
        if self._cache is not None:
            self._cache[i] = out
        return out

    # ------------------------------------------------------------------ Dataset API
    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (call once per epoch, before workers start).

        Draws come from ``numpy.random.default_rng([seed, epoch, index, draw])`` where ``draw``
        counts reads of the item since the last ``set_epoch``, so an epoch's stream is the same
        whether or not earlier epochs ran in this process (resume is reproducible).
        """
        self._epoch = int(epoch)
        self._draws.clear()

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item(i)

    def item(self, i: int, *, augment: bool = True) -> dict[str, Any]:
        """Item ``i``; ``augment=False`` reads it as the val/test splits do (no augmentation, no draw counted),
        e.g. to recompute BatchNorm's statistics on the training images (``TrainConfig.precise_bn``)."""
        import torch

        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        img, msk, has_mask = self._load(i)
        rng = None
        if self.augment and augment:
            draw = self._draws.get(i, 0)
            self._draws[i] = draw + 1
            rng = np.random.default_rng([self.seed, self._epoch, i, draw])
            img, msk = self.augment_policy.spatial(img, msk, rng=rng)
        img = _normalize(img, method=self.normalize)
        if rng is not None and self.augment_policy.has_intensity:
            img = self.augment_policy.intensity(img, rng=rng)  # on the normalized image; never the mask
        return {
            "image": img.contiguous(),
            "label": torch.tensor(self.labels[i], dtype=torch.int64),
            "mask": msk.contiguous(),
            "has_mask": has_mask,
            "id": self.ids[i],
        }

    def class_counts(self) -> list[int]:
        """Number of items per class, in class-index order."""
        return [sum(1 for y in self.labels if y == k) for k in range(self.num_classes)]

    def __repr__(self) -> str:
        return (
            f"FolderDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.class_names}, in_channels={self.in_channels}, spatial_dims={self.spatial_dims})"
        )


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write an NPY via a temporary file + rename (atomic; no fsync per item: ``labels.csv``,
    written last with fsync, is what marks a folder complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img = Image.fromarray(array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1))
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


class FolderWriter:
    """Write a dataset in the folder format: NPY images/masks, ``labels.csv``, ``dataset.json``.

    Files are written atomically; ``labels.csv`` and ``dataset.json`` only on :meth:`close` (or
    leaving the ``with`` block without error), so a folder with ``labels.csv`` is complete.

    Args:
        root: destination folder (created).
        class_names: class names in label-index order.
        channel_names: optional names of the image channels (e.g. ``["T1", "T1ce", "T2", "FLAIR"]``).
        meta: extra JSON-serializable entries for ``dataset.json``.

    Example:
        >>> with FolderWriter("out", class_names=["no", "yes"]) as w:  # doctest: +SKIP
        ...     w.add("case0", image=np.zeros((1, 8, 8)), label=0, patient="p0")
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        class_names: Sequence[str],
        channel_names: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "images").mkdir(exist_ok=True)
        self.class_names = [str(c) for c in class_names]
        self.channel_names = None if channel_names is None else [str(c) for c in channel_names]
        self.meta = dict(meta or {})
        self.rows: list[dict[str, str]] = []
        self._shape: tuple[int, ...] | None = None

    def add(
        self,
        name: str,
        *,
        image: np.ndarray,
        label: int,
        patient: str,
        mask: np.ndarray | None = None,
        split: str | None = None,
        fmt: str = "npy",
    ) -> None:
        """Write one item: ``image`` ``(C, *S)``, optional binary ``mask`` ``(1, *S)`` or ``(*S)``.

        ``fmt="npy"`` stores float32; ``fmt="png"`` stores a 2D 1- or 3-channel uint8 image
        (values must lie in 0..255).
        """
        if not 0 <= int(label) < len(self.class_names):
            raise ValueError(f"label {label!r} outside 0..{len(self.class_names) - 1}")
        if fmt not in ("npy", "png"):
            raise ValueError(f"fmt must be 'npy' or 'png'; got {fmt!r}")
        image = np.asarray(image)
        if image.ndim not in (3, 4):
            raise ValueError(f"image must be (C, H, W) or (C, D, H, W); got shape {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError(f"image {name!r} has NaN/Inf values")
        if self._shape is None:
            self._shape = image.shape
        row = {"image": f"images/{name}.{fmt}", "label": str(int(label)), "mask": "", "patient": str(patient)}
        if fmt == "png":
            if image.ndim != 3 or image.shape[0] not in (1, 3) or image.min() < 0 or image.max() > 255:
                raise ValueError(f"png needs a (1|3, H, W) image in 0..255; got shape {image.shape}")
            _save_png(self.root / row["image"], image.astype(np.uint8))
        else:
            _save_npy(self.root / row["image"], image.astype(np.float32))
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == image.ndim - 1:
                mask = mask[None]
            if mask.shape != (1, *image.shape[1:]):
                raise ValueError(f"mask shape {mask.shape} does not match image {image.shape}")
            row["mask"] = f"masks/{name}.npy"
            _save_npy(self.root / row["mask"], (mask > 0).astype(np.uint8))
        if split is not None:
            row["split"] = split
        self.rows.append(row)

    def close(self) -> Path:
        """Write ``dataset.json`` and ``labels.csv``; return the folder."""
        cols = ["image", "label", "mask", "patient"] + (["split"] if any("split" in r for r in self.rows) else [])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow(r)
        meta = {
            **self.meta,
            "class_names": self.class_names,
            "num_items": len(self.rows),
            "class_counts": [sum(1 for r in self.rows if int(r["label"]) == k) for k in range(len(self.class_names))],
        }
        if self._shape is not None:
            meta.update(in_channels=int(self._shape[0]), spatial_dims=len(self._shape) - 1, image_size=list(self._shape[1:]))
        if self.channel_names is not None:
            meta["channel_names"] = self.channel_names
        atomic_write_json(self.root / META_JSON, meta)
        atomic_write_text(self.root / LABELS_CSV, buf.getvalue())
        return self.root

    def __enter__(self) -> "FolderWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
