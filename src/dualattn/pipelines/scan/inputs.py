"""Bringing a scan to the run's model and the map back: channels, grid, intensities, class targets."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...data.readers import equal_channels
from ...data.transforms import normalize
from ...evaluate.testset import fit_to_model
from ...runs import RunDir

__all__ = ["MAX_MODEL_VOXELS", "fit_channels", "map_to_scan_grid", "model_meta", "resolve_target", "run_class_names",
           "run_input_size", "scan_to_model_input"]


def run_input_size(run: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The spatial input size a run was trained at (from its ``config.yaml``), or ``None`` if not recorded.

    Args:
        run: run folder (``config.yaml``, ``best.safetensors`` ...).

    Returns:
        A tuple of ints, e.g. ``(64, 64)``, or ``None`` (:attr:`dualattn.runs.RunDir.recorded_size`).
    """
    return RunDir(run).recorded_size


def run_class_names(run: str | os.PathLike[str]) -> list[str] | None:
    """Class names recorded in a run's ``summary.json``/``config.yaml`` or in its training dataset's
    ``dataset.json``, or ``None`` (:attr:`dualattn.runs.RunDir.class_names`)."""
    return RunDir(run).class_names


def _normalize_per_sample(x: Any, *, method: str = "zscore") -> Any:
    """Per-sample, per-channel normalization of a batch ``(1, C, *S)`` like the folder datasets'."""
    return normalize(x[0], method=method)[None]


def scan_to_model_input(scan: np.ndarray, *, in_channels: int, size: Sequence[int] | None,
                        notes: list[str] | None = None, normalization: str = "zscore") -> Any:
    """Turn a scan ``(C, *S)`` into a model batch ``(1, in_channels, *size)`` float32 tensor.

    Channels and grid are fitted by the one rule the evaluation uses too
    (:func:`dualattn.evaluate.testset.fit_to_model`: several channels averaged into a single-channel model, one
    channel repeated, the grid resized as training resizes); intensities are then normalized per sample and
    channel.

    Args:
        scan: array ``(C, *S)``.
        in_channels: the model's input channels.
        size: the training grid, or ``None`` to keep ``S``.
        notes: list that receives a sentence per conversion.
        normalization: ``"zscore"`` (the datasets' default), ``"minmax"`` or ``"none"``.

    Returns:
        Tensor ``(1, in_channels, *size)``.

    Raises:
        ValueError: on a channel count that cannot be converted or a size of the wrong dimensionality.
    """
    notes = notes if notes is not None else []
    arr = np.asarray(scan, dtype=np.float32)
    if arr.ndim < 3:
        raise ValueError(f"scan must be channels-first (C, *spatial), got shape {arr.shape}")
    x = torch.from_numpy(np.nan_to_num(arr)).unsqueeze(0)
    x, fit_notes = fit_to_model(x, in_channels=in_channels, size=size, normalization=None)
    notes.extend(fit_notes)
    return _normalize_per_sample(x, method=normalization)


def map_to_scan_grid(heatmap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a map ``grid`` to the scan grid ``shape`` keeping its total mass (up to interpolation).

    Linear interpolation (``align_corners=False``), then scaled by ``prod(grid) / prod(shape)`` so that a
    constant map keeps its sum exactly.

    Args:
        heatmap: array ``grid`` (2-D or 3-D).
        shape: the scan's spatial shape, same dimensionality.

    Returns:
        float32 array of ``shape``.

    Raises:
        ValueError: if the dimensionalities differ.
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if hm.ndim != len(shape):
        raise ValueError(f"map of shape {hm.shape} cannot be resized to a {len(shape)}-D grid {shape}")
    if hm.shape == shape:
        return hm.copy()
    t = torch.from_numpy(np.ascontiguousarray(hm))[None, None]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(shape))
    if mode is None:
        raise ValueError(f"maps must be 1-, 2- or 3-D, got {hm.ndim}-D")
    out = F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()
    return (out * (hm.size / out.size)).astype(np.float32)


#: Largest grid a model is run on when the run records no training size (2-D: 512x512, 3-D: 128^3):
#: bigger scans are shrunk (aspect kept) so that memory stays bounded, with a note.
MAX_MODEL_VOXELS = {2: 512 * 512, 3: 128**3}


def _bounded_size(spatial: Sequence[int], notes: list[str]) -> tuple[int, ...] | None:
    """``None`` (keep the scan's grid) when it fits :data:`MAX_MODEL_VOXELS`, else a shrunk grid."""
    cap = MAX_MODEL_VOXELS.get(len(spatial))
    n = int(np.prod(spatial))
    if cap is None or n <= cap:
        return None
    factor = (cap / n) ** (1.0 / len(spatial))
    # multiples of 32: every backbone's total downsampling (U-Net 16, ResNet 32, ViT patches 16) divides them
    size = tuple(max(32, int(s * factor) // 32 * 32) for s in spatial)
    notes.append(f"the run records no training size and the scan grid {'x'.join(map(str, spatial))} exceeds "
                 f"{cap} voxels: the model sees it at {'x'.join(map(str, size))} to bound memory")
    return size


def model_meta(model: Any) -> tuple[int, int, int | None]:
    """``(in_channels, spatial_dims, num_classes or None)`` from a model's config."""
    cfg = getattr(model, "config", {}) or {}
    n = cfg.get("num_classes")
    return int(cfg.get("in_channels", 1)), int(cfg.get("spatial_dims", 2)), None if n is None else int(n)


def fit_channels(array: np.ndarray, *, in_channels: int, notes: list[str]) -> np.ndarray:
    """The scan's channels as the model can take them, before :func:`scan_to_model_input`'s rule applies.

    A multi-channel image whose channels are all equal (a grayscale image saved as RGB) is read as one
    grayscale channel, with a note, unless the model takes exactly that many channels. A channel count that
    no rule maps to the model's is refused here, saying what would work.

    Args:
        array: the scan ``(C, *S)``.
        in_channels: the model's input channels.
        notes: receives a sentence when the channels are collapsed.

    Returns:
        ``array`` or its first channel ``(1, *S)``.

    Raises:
        ValueError: ``C`` channels for a model of ``in_channels`` when neither is 1 and they differ.
    """
    c = int(array.shape[0])
    if c > 1 and c != in_channels and equal_channels(array):
        notes.append(f"the image's {c} channels are equal (a grayscale image saved as RGB): read as one grayscale "
                     "channel")
        return array[:1]
    if c != in_channels and c != 1 and in_channels != 1:
        raise ValueError(f"the scan has {c} channels but the run's model takes {in_channels}: give a scan with "
                         f"{in_channels} channels (e.g. a NIfTI whose 4th axis holds them, in the training data's "
                         f"order) or a single-channel one (repeated to {in_channels})")
    return array


def resolve_target(target: int | str | None, *, num_classes: int, names: list[str] | None) -> int | None:
    """``--target`` as a class index: an index ``0 .. num_classes - 1`` or one of the run's class names.

    Args:
        target: ``None``, an int, or text (digits, or a class name; case-insensitive).
        num_classes: the model's classes.
        names: the run's class names, if recorded.

    Returns:
        The class index, or ``None``.

    Raises:
        ValueError: an index out of range or an unknown name, listing the valid classes.

    Example:
        >>> resolve_target("Tumor", num_classes=2, names=["healthy", "tumor"]), resolve_target("0", num_classes=2, names=None)
        (1, 0)
    """
    if target is None:
        return None
    listing = ", ".join(f"{k} ({names[k]!r})" if names and k < len(names) else str(k) for k in range(num_classes))
    what = f"the run's classes are {listing}: give an index 0-{num_classes - 1}" + (" or a class name" if names else "")
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < num_classes:
            raise ValueError(f"--target {text}: {what}")
        return k
    if names:
        lower = [str(n).lower() for n in names]
        if text.lower() in lower:
            return lower.index(text.lower())
    raise ValueError(f"--target {text!r} is no class of this run; {what}"
                     + ("" if names else " (the run records no class names)"))
