"""Volumes: the background rule, the volume's class from its slices, the axis to cut, the planes shown, and
a volume explained slice by slice by a 2-D model (see :mod:`dualattn.pipelines.scan`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...data.readers import PLANE_NAMES, from_radiological_view, radiological_view
from ...explain import explain
from ...report.figures import map_sharpness
from ...report.triplanar import peak_in_slice
from .inputs import _bounded_size, map_to_scan_grid, scan_to_model_input
from .result import AS_STORED, ScanExplanation, class_label

__all__ = ["BACKGROUND_FRACTION", "SLICE_BATCH", "VOLUME_RULES", "background_slices", "display_point",
           "instance_number", "volume_decision"]

#: Volume rules of a 2-D model on a volume (module docstring); the first is the default.
VOLUME_RULES: tuple[str, ...] = ("max", "mean")
#: A slice is background when every voxel lies within this fraction of the volume's intensity range above
#: the volume's minimum (all-zero slices of a skull-stripped MRI, air-only slices of a CT).
BACKGROUND_FRACTION = 0.01
#: Slices per forward / explain call of a 2-D model on a volume.
SLICE_BATCH = 16

#: Orientation letters (top, bottom, left, right) of a plane cut perpendicular to each canonical axis,
#: drawn in the radiological convention.
EDGE_LABELS = {2: ("A", "P", "R", "L"), 1: ("S", "I", "R", "L"), 0: ("S", "I", "A", "P")}
CONVENTION = {
    2: "radiological convention: patient's right on the image's left, anterior up",
    1: "radiological convention: patient's right on the image's left, superior up",
    0: "radiological convention: anterior on the image's left, superior up",
}


def background_slices(volume: np.ndarray, axis: int, *, fraction: float = BACKGROUND_FRACTION) -> np.ndarray:
    """Which slices of a volume along ``axis`` are background.

    A slice is background when every voxel of it (all channels) is at most ``min + fraction * (max - min)``
    of the whole volume: all-zero slices around a skull-stripped brain, air-only slices of a CT. A
    constant volume is all background.

    Args:
        volume: ``(C, *S)`` with three spatial axes.
        axis: spatial axis (0, 1 or 2) the slices are cut along.
        fraction: the threshold as a fraction of the volume's range, in ``[0, 1)``.

    Returns:
        Boolean array ``(S[axis],)``.

    Raises:
        ValueError: a ``fraction`` outside ``[0, 1)`` or an ``axis`` that is not spatial.

    Example:
        >>> v = np.zeros((1, 2, 2, 3), np.float32); v[0, :, :, 1] = 5.0
        >>> background_slices(v, 2).tolist()
        [True, False, True]
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"background fraction must be in [0, 1), got {fraction}")
    arr = np.asarray(volume)
    if not 0 <= int(axis) < arr.ndim - 1:
        raise ValueError(f"axis {axis} is not a spatial axis of a volume of shape {arr.shape}")
    lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:
        return np.ones(arr.shape[1 + int(axis)], dtype=bool)
    threshold = lo + float(fraction) * (hi - lo)
    others = tuple(a for a in range(arr.ndim) if a != 1 + int(axis))
    return np.asarray(arr.max(axis=others) <= threshold)


def volume_decision(probabilities: np.ndarray, *, skipped: np.ndarray | None = None, rule: str = "max",
                    positive: int | None = None) -> tuple[np.ndarray, int, int]:
    """The volume's class from per-slice probabilities (module docstring).

    Args:
        probabilities: ``(slices, classes)`` softmax probabilities (rows of skipped slices are ignored).
        skipped: boolean ``(slices,)``, ``True`` for background slices; none skipped when ``None``.
        rule: ``"max"``: the slice with the highest ``positive``-class probability decides and gives the
            volume its probabilities; ``"mean"``: the mean over kept slices, the deciding slice being
            the one with the highest probability of the resulting class. Ties go to the first slice.
        positive: the lesion class of ``"max"``; default the last class.

    Returns:
        ``(volume probabilities (classes,), predicted class, deciding slice index)``.

    Raises:
        ValueError: an unknown rule, a ``positive`` out of range, or no slice left.

    Example:
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
        >>> volume_decision(p, rule="max")[1:]
        (1, 1)
        >>> probs, cls, k = volume_decision(p, rule="mean")
        >>> probs.round(3).tolist(), cls, k
        ([0.6, 0.4], 0, 0)
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probabilities must be (slices, classes) with at least one slice, got {probs.shape}")
    kept = np.ones(probs.shape[0], bool) if skipped is None else ~np.asarray(skipped, dtype=bool)
    if kept.shape != (probs.shape[0],):
        raise ValueError(f"skipped has shape {kept.shape}, expected ({probs.shape[0]},)")
    if not kept.any():
        raise ValueError("every slice is skipped: nothing decides the volume's class")
    if rule not in VOLUME_RULES:
        raise ValueError(f"unknown volume rule {rule!r}; choose one of {', '.join(VOLUME_RULES)}")
    idx = np.flatnonzero(kept)
    if rule == "max":
        pos = probs.shape[1] - 1 if positive is None else int(positive)
        if not 0 <= pos < probs.shape[1]:
            raise ValueError(f"positive class {positive} out of range for {probs.shape[1]} classes")
        deciding = int(idx[int(np.argmax(probs[idx, pos]))])
        vol = probs[deciding]
        return vol, int(np.argmax(vol)), deciding
    vol = probs[idx].mean(axis=0)
    pred = int(np.argmax(vol))
    return vol, pred, int(idx[int(np.argmax(probs[idx, pred]))])


def resolve_axis(axis: int | str | None, geometry: Any) -> tuple[int, str]:
    """The array's spatial axis a 2-D model cuts a volume along, and why."""
    oriented = bool(getattr(geometry, "oriented", False))
    if axis is None:
        a = getattr(geometry, "slice_axis", None)
        if a is None:
            return 0, "the first axis (the file records no slice axis)"
        why = (getattr(geometry, "extra", {}) or {}).get("slice_axis_from")
        fmt = str(getattr(geometry, "format", ""))
        return int(a), str(why or ("the series' stacking axis" if fmt == "dicom" else "the file's slice axis"))
    text = str(axis).strip().lower()
    if text in PLANE_NAMES:
        if not oriented:
            raise ValueError(f"axis {axis!r} needs a scan with a known orientation (NIfTI, DICOM, NRRD); this "
                             "one has none: give 0, 1 or 2")
        return PLANE_NAMES.index(text), "--axis"
    if text in ("0", "1", "2"):
        return int(text), "--axis"
    raise ValueError(f"axis {axis!r}: use axial, coronal, sagittal, or 0, 1, 2 (axes of the array as read)")


def plane(volume: np.ndarray, axis: int, k: int, oriented: bool) -> np.ndarray:
    """Slice ``k`` along spatial ``axis`` of ``(C, *S)`` in display orientation ``(C, rows, cols)``."""
    plane = np.take(volume, k, axis=1 + axis)
    return np.ascontiguousarray(radiological_view(plane) if oriented else plane)


def unplane(image: np.ndarray, oriented: bool) -> np.ndarray:
    """A 2-D display-oriented map back to the plane's axis order."""
    return np.ascontiguousarray(from_radiological_view(image) if oriented else image)


def squeezed_axis(geometry: Any) -> int | None:
    """The canonical axis a 2-D oriented image is perpendicular to (its singleton axis in the file)."""
    ornt, shape = getattr(geometry, "source_ornt", None), getattr(geometry, "source_shape", None)
    if ornt is None or shape is None or len(shape) != 3:
        return None
    single = [a for i, (a, _f) in enumerate(ornt) if shape[i] == 1]
    return int(single[0]) if len(single) == 1 else None


def display_point(point: Sequence[int], axis: int, shape: Sequence[int], oriented: bool) -> tuple[int, int]:
    """Where voxel ``point`` of a ``shape`` volume lies on its plane along ``axis`` as :func:`plane` shows it.

    Returns:
        ``(row, column)`` in the displayed plane (radiological view for an oriented volume, as stored otherwise).

    Example:
        >>> display_point((1, 2, 3), 2, (4, 5, 6), oriented=False), display_point((1, 2, 3), 2, (4, 5, 6), oriented=True)
        ((1, 2), (2, 2))
    """
    others = [a for a in range(3) if a != int(axis)]
    p0, p1 = int(point[others[0]]), int(point[others[1]])
    if not oriented:
        return p0, p1
    n0, n1 = int(shape[others[0]]), int(shape[others[1]])
    return n1 - 1 - p1, n0 - 1 - p0  # radiological_view: plane.T[::-1, ::-1]


def instance_number(geometry: Any, file_index: int | None) -> int | None:
    """The DICOM ``InstanceNumber`` of slice ``file_index`` (a series, position order) or of a single image."""
    extra = getattr(geometry, "extra", None) or {}
    numbers = extra.get("instance_numbers")
    if numbers is not None and file_index is not None and 0 <= int(file_index) < len(numbers):
        return int(numbers[int(file_index)])
    single = extra.get("instance_number")
    return int(single) if single is not None and file_index is None else None


def positive_class(probs_width: int, target: int | None) -> int:
    """The lesion class of the ``max`` rule: ``target``, else the last class."""
    return probs_width - 1 if target is None else int(target)


def explain_volume_2d(scan_path: Path, run_dir: Path, model: Any, array: np.ndarray, geometry: Any, *,
                       axis: int, axis_why: str, method: str, block: str, target: int | None,
                       size: Sequence[int] | None, in_channels: int, volume_rule: str, background: float,
                       progress: bool, names: list[str] | None, notes: list[str],
                       normalization: str = "zscore") -> ScanExplanation:
    """A volume and a 2-D model: slice by slice along ``axis`` (module docstring); every slice normalized as the
    run's images were (``normalization``: :attr:`dualattn.runs.RunDir.input_normalization`)."""
    from tqdm.auto import tqdm

    oriented = bool(getattr(geometry, "oriented", False))
    spatial = tuple(array.shape[1:])
    n = spatial[axis]
    plane_name = PLANE_NAMES[axis] if oriented else None
    where = f"{plane_name} slices" if oriented else f"slices along axis {axis} of the array as read"
    notes.append(f"a {'x'.join(map(str, spatial))} volume given to a 2-D model: its {n} {where} "
                 f"(chosen by {axis_why}) were classified and explained one by one"
                 + (", each shown to the model in radiological orientation" if oriented else ""))
    skipped = background_slices(array, axis, fraction=background)
    kept = np.flatnonzero(~skipped)
    if kept.size == 0:
        raise ValueError(f"every one of the {n} slices of {scan_path.name} is background (within {background:g} of "
                         "the intensity range above the minimum): nothing to classify; lower the threshold "
                         "(--background 0 keeps every slice above the minimum) or check that the file holds the image")
    if skipped.any():
        notes.append(f"{int(skipped.sum())} of {n} slices skipped as background (every voxel within "
                     f"{background:g} of the volume's intensity range above its minimum)")
    plane_shape = plane(array[:1], axis, 0, oriented).shape[1:]
    if size is None:
        size = _bounded_size(plane_shape, notes)

    def batch(ks: Sequence[int], first: bool) -> Any:
        return torch.cat([scan_to_model_input(plane(array, axis, int(k), oriented), in_channels=in_channels,
                                              size=size, notes=notes if (first and j == 0) else [],
                                              normalization=normalization)
                          for j, k in enumerate(ks)])

    chunks = [kept[i:i + SLICE_BATCH] for i in range(0, kept.size, SLICE_BATCH)]
    n_classes = None
    all_probs: np.ndarray | None = None
    bar = tqdm(total=2 * int(kept.size), desc="slices (classify, explain)", unit="slice", file=sys.stderr,
               disable=not progress, leave=False)
    try:
        for i, ks in enumerate(chunks):  # pass 1: every kept slice's probabilities
            x = batch(ks, i == 0)
            with torch.no_grad():
                p = torch.softmax(model(x).float(), dim=1).cpu().numpy()
            if all_probs is None:
                n_classes = p.shape[1]
                all_probs = np.zeros((n, n_classes), np.float64)
            all_probs[ks] = p
            bar.update(len(ks))
        if all_probs is None or n_classes is None:  # unreachable: kept is not empty
            raise RuntimeError("no slice was classified")
        positive = positive_class(n_classes, target)
        vol_probs, pred, deciding = volume_decision(all_probs, skipped=skipped, rule=volume_rule, positive=positive)
        tgt = pred if target is None else int(target)
        maps_model: dict[int, np.ndarray] = {}
        for ks in chunks:  # pass 2: every kept slice's map of the volume's class
            x = batch(ks, False)
            m = explain(model, x, method=method, block=block, target=torch.full((len(ks),), tgt, dtype=torch.long))
            for k, mk in zip(ks, m.detach().float().cpu().numpy()[:, 0]):
                maps_model[int(k)] = mk
            bar.update(len(ks))
    finally:
        bar.close()
    grid = next(iter(maps_model.values())).shape
    heatmap = np.zeros(spatial, np.float32)
    hm_model = np.zeros((n, *grid), np.float32)
    for k, mk in maps_model.items():
        hm_model[k] = mk
        on_plane = unplane(map_to_scan_grid(mk, plane_shape), oriented)
        index = [slice(None)] * 3
        index[axis] = k
        heatmap[tuple(index)] = on_plane
    rule_text = (f"max: the slice with the highest probability of class {class_label(positive, names)!r} decides"
                 if volume_rule == "max" else
                 "mean: the volume's probabilities are the mean over the slices that are not background")
    notes.append(f"volume rule {rule_text}; every slice's map explains class {class_label(tgt, names)!r}")

    def file_index(k: int) -> int:
        return geometry.source_index(axis, k)[1] if hasattr(geometry, "source_index") else int(k)

    entries = []
    for k in range(n):
        e: dict[str, Any] = {"index": file_index(k)}
        if skipped[k]:
            e["skipped"] = "background"
        else:
            e["probabilities"] = [float(v) for v in all_probs[k]]
        entries.append(e)
    entries.sort(key=lambda e: e["index"])
    file_axis = geometry.source_index(axis, 0)[0] if hasattr(geometry, "source_index") else axis
    x_shape = tuple(int(s) for s in (size if size is not None else plane_shape))
    if len(x_shape) == 1:
        x_shape = x_shape * 2
    probabilities = [float(v) for v in vol_probs]
    point = peak_in_slice(heatmap, axis=axis, index=deciding)
    shown = file_index(deciding)
    return ScanExplanation(
        scan_path=scan_path, run=run_dir, method=method, block=block, predicted_class=pred,
        class_name=class_label(pred, names), probability=probabilities[pred], probabilities=probabilities,
        scan=array, heatmap=heatmap, heatmap_model=hm_model, model_input_shape=x_shape, geometry=geometry,
        notes=notes, class_names=names, slices=entries, deciding_slice=shown, volume_rule=volume_rule,
        slice_axis={"axis": int(axis), "file_axis": int(file_axis), "plane": plane_name, "from": axis_why},
        overlay_image=plane(array, axis, deciding, oriented),
        overlay_map=plane(heatmap[None], axis, deciding, oriented)[0],
        overlay_slice=shown, orientation=CONVENTION[axis] if oriented else AS_STORED,
        edge_labels=EDGE_LABELS[axis] if oriented else None,
        sharpness=map_sharpness(hm_model[deciding]), volume_point=point,
        overlay_point=display_point(point, axis, spatial, oriented), instance_number=instance_number(geometry, shown),
        target=target,
    )
