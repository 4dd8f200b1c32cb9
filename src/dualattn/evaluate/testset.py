"""The evaluation images as tensors, and the one rule for fitting images to a model's input.

Example:
    >>> import torch
    >>> from dualattn.evaluate.testset import fit_to_model
    >>> x, notes = fit_to_model(torch.randn(2, 1, 8, 8), in_channels=3, size=None)
    >>> tuple(x.shape), notes
    ((2, 3, 8, 8), ["single-channel data repeated to the model's 3 channels"])
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from ..data import FolderDataset, resolve_dataset
from ..data.transforms import normalize, resize

__all__ = ["TestSet", "load_test_set", "fit_to_model", "progress_bar", "batches"]


@dataclasses.dataclass
class TestSet:
    """The evaluation images as tensors.

    Attributes:
        images: ``(N, C, *S)`` float, z-scored per sample.
        labels: ``(N,)`` long.
        masks: ``(N, 1, *S)`` float (zeros where an image has no mask).
        has_mask: ``(N,)`` bool.
        ids: one id per image.
        patients: the patient of every image (the unit the intervals resample; one per image when the data
            name none).
        raw_images: ``(N, C, *S)`` the same images before any normalization (``images`` is their per-sample
            z-score): what a model that normalizes on its own takes (``RunDir.input_normalization == "none"``), and
            where the hiding test swaps pixels before each model's own preprocessing.
        root: the dataset folder.
        class_names: label strings by class index.
    """

    __test__ = False  # not a pytest test class despite the name

    images: Tensor
    labels: Tensor
    masks: Tensor
    has_mask: Tensor
    ids: list[str]
    root: Path
    class_names: list[str]
    patients: list[str] = dataclasses.field(default_factory=list)
    raw_images: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.patients:
            self.patients = list(self.ids)
        if len(self.patients) != len(self.ids):
            raise ValueError(f"patients has {len(self.patients)} entries for {len(self.ids)} images")

    @property
    def n_patients(self) -> int:
        """Distinct patients among the images."""
        return len(set(self.patients))

    @property
    def positives(self) -> Tensor:
        """Indices of the images with a non-empty mask (the implicit-segmentation protocol's images)."""
        keep = self.has_mask & (self.masks.flatten(1).sum(1) > 0)
        return torch.nonzero(keep).flatten()


def progress_bar(it: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    """``it`` wrapped in a tqdm bar when ``enabled``, else ``it`` itself."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def batches(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


def load_test_set(
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    size: int | Sequence[int] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    max_images: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    progress: bool = False,
) -> TestSet:
    """Read a split of a dataset (folder or embedded name) into tensors (z-scored per sample).

    Args:
        data: folder or embedded dataset name (:func:`dualattn.data.resolve_dataset`).
        split: ``"test"`` (default), ``"val"``, ``"train"`` or ``"all"``.
        size: resize images (and masks, nearest) to this size; ``None`` keeps the files' size.
        seed, fractions: the split's seed and fractions (the training run's ``split_seed``).
        max_images: keep at most this many (the first ones, in split order).
        cache_dir, n: passed to ``resolve_dataset`` for embedded names.
        progress: show a progress bar while reading.

    Raises:
        ValueError: the split holds no image.
    """
    int_size = size if isinstance(size, int) or size is None else None
    root = resolve_dataset(data, cache_dir=cache_dir, n=n, size=int_size, seed=seed)
    ds = FolderDataset(root, split=None if split == "all" else split, size=size, seed=seed, fractions=tuple(fractions),
                       normalize="none")
    count = len(ds) if max_images is None else min(len(ds), int(max_images))
    if count == 0:
        raise ValueError(f"dataset {str(root)!r} has no images in split {split!r}")
    items = [ds[i] for i in progress_bar(range(count), progress, "reading test images")]
    raw = torch.stack([it["image"] for it in items]).float()
    return TestSet(
        images=torch.stack([normalize(img, method="zscore") for img in raw]),
        raw_images=raw,
        labels=torch.stack([torch.as_tensor(it["label"]) for it in items]).long(),
        masks=torch.stack([it["mask"] for it in items]).float(),
        has_mask=torch.tensor([bool(it["has_mask"]) for it in items]),
        ids=[str(it["id"]) for it in items],
        root=Path(root),
        class_names=list(ds.class_names),
        patients=[str(p) for p in ds.patients[:count]],
    )


def fit_to_model(
    images: Tensor, *, in_channels: int | None, size: Sequence[int] | None, normalization: str | None = "zscore",
) -> tuple[Tensor, list[str]]:
    """Fit images to a model's input: the one rule used by ``evaluate`` and ``explain``.

    Channels: a single channel is repeated to ``in_channels``; several channels given to a
    single-channel model are averaged (a grey-level view of a multi-channel scan); any other mismatch
    has no unambiguous mapping and is refused. Grid: resized to ``size`` exactly as training resizes
    (:func:`dualattn.data.transforms.resize`: bilinear / trilinear, antialiased when shrinking 2-D).
    Images that were averaged or resized are normalized again per sample and channel.

    Args:
        images: ``(B, C, *S)``.
        in_channels: the model's input channels (``None``: keep).
        size: the model's input size, one int per spatial axis or one for all (``None``: keep).
        normalization: re-normalization of changed images (``"zscore"``, ``"minmax"``; ``None``: never,
            for a caller that normalizes itself).

    Returns:
        ``(fitted images, notes)``: one note per change made.

    Raises:
        ValueError: a channel mismatch with no unambiguous mapping (e.g. 4 channels -> 3), or a size of
            the wrong dimensionality.
    """
    notes: list[str] = []
    x = images
    c = x.shape[1]
    changed = False
    if in_channels is not None and c != in_channels:
        if c == 1:
            x = x.expand(-1, in_channels, *x.shape[2:]).contiguous()
            notes.append(f"single-channel data repeated to the model's {in_channels} channels")
        elif in_channels == 1:
            x = x.mean(dim=1, keepdim=True)
            changed = True
            notes.append(f"the data's {c} channels were averaged into the model's single channel")
        else:
            raise ValueError(
                f"data has {c} channels but the model expects {in_channels}; no unambiguous channel mapping"
            )
    spatial = tuple(x.shape[2:])
    if size is not None:
        target = tuple(int(s) for s in size)
        if len(target) == 1:
            target = target * len(spatial)
        if len(target) != len(spatial):
            raise ValueError(f"model input size {target} does not match the data's {len(spatial)}-D grid {spatial}")
        if target != spatial:
            x = torch.stack([resize(img, target) for img in x])
            changed = True
            old, new = "x".join(map(str, spatial)), "x".join(map(str, target))
            notes.append(f"images of {old} resized to {new}, the model's input size (maps are brought back to {old})")
    if changed and normalization is not None:
        x = torch.stack([normalize(img, method=normalization) for img in x])
    return x, notes
