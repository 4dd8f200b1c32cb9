"""Explain one scan with a trained run: the predicted class, its probability, and the heatmap written
back in the scan's own geometry (what a clinician opens next to the original file).

Pipeline for one file (PNG/JPG, NPY, NIfTI, DICOM file or series folder, NRRD -- whatever
:func:`dualattn.data.read_volume` reads):

1. read the scan ``(C, *S)`` and its geometry: volumes with a known orientation come as ``(C, X, Y, Z)``
   closest-canonical RAS, with the axis their slices were acquired along (``Geometry.slice_axis``);
2. bring it to the model: channels averaged or repeated to ``in_channels``; resized (trilinear/bilinear)
   to the run's training size when it differs, with a note; normalized per sample like the training data;
3. ``forward`` -> softmax -> predicted class and probability;
4. ``dualattn.explain.explain(model, x, method=..., block=..., target=predicted)`` -> map ``(1, 1, *grid)``;
5. the map is resized to the scan's grid (linear interpolation, scaled by ``cells(map) / voxels(scan)``
   so the total mass is kept up to interpolation) and written as NPY and NIfTI on the input file's own
   voxel grid, and as an overlay PNG with the prediction.

A volume given to a 2-D model is explained slice by slice **as acquired**: along ``Geometry.slice_axis``
(a DICOM series: its images; NIfTI: the header's slice dimension, else the thickest voxel axis, else
axial; ``axis=`` / ``--axis`` overrides), each slice shown to the model in the radiological display
orientation (:func:`dualattn.data.readers.radiological_view`: a DICOM image as stored; the patient's
right on the image's left, anterior up for axial slices). Background slices (every voxel within
``background`` of the volume's intensity range above its minimum, e.g. all-zero slices) are skipped
and counted. The volume's class follows ``volume_rule``:

- ``"max"`` (default): the slice with the highest probability of the lesion class (the last class,
  e.g. ``tumor``; ``target`` when given) decides; the volume's probabilities are that slice's;
- ``"mean"``: the volume's probabilities are the mean over the slices that are not background; the
  deciding slice is the one with the highest probability of the resulting class.

Every slice's map explains the volume's class; the overlay draws the deciding slice.

Example:
    >>> from dualattn.pipelines.scan import explain_scan, write_scan_explanation  # doctest: +SKIP
    >>> result = explain_scan("case.nii.gz", run="runs/exact/seed0", method="exact")  # doctest: +SKIP
    >>> result.deciding_slice, result.class_name  # doctest: +SKIP
    (77, 'tumor')
    >>> write_scan_explanation(result, "out/")  # doctest: +SKIP

Output file names: ``scan-<first 12 hex digits of the content SHA-256>.*`` by default (the same digest
the prediction JSON records), never the scan's file or folder name, which often carry patient
identifiers; ``keep_name=True`` (CLI ``--keep-name``) opts in to naming them after the scan, and
``stem=`` (CLI ``--name``) sets the name explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_path, atomic_write_bytes, atomic_write_json
from ..data import read_volume
from ..data.readers import PLANE_NAMES, from_radiological_view, radiological_view, write_nifti
from ..data.transforms import normalize
from ..evaluate.testset import fit_to_model
from ..explain import METHOD_ALIASES, explain, get_method, list_methods
from ..report.figures import overlay_png
from ..report.triplanar import map_peak, triplanar_png
from ..runs import RunDir

logger = logging.getLogger(__name__)

__all__ = ["ScanExplanation", "explain_scan", "write_scan_explanation", "run_input_size", "run_class_names",
           "scan_to_model_input", "map_to_scan_grid", "scan_record", "background_slices", "volume_decision",
           "VOLUME_RULES", "BACKGROUND_FRACTION", "overlay_png_of", "overlay_title"]

#: Volume rules of a 2-D model on a volume (module docstring); the first is the default.
VOLUME_RULES: tuple[str, ...] = ("max", "mean")
#: A slice is background when every voxel lies within this fraction of the volume's intensity range above
#: the volume's minimum (all-zero slices of a skull-stripped MRI, air-only slices of a CT).
BACKGROUND_FRACTION = 0.01
#: Slices per forward / explain call of a 2-D model on a volume.
SLICE_BATCH = 16

_EDGE_LABELS = {2: ("A", "P", "R", "L"), 1: ("S", "I", "R", "L"), 0: ("S", "I", "A", "P")}
_CONVENTION = {
    2: "radiological convention: patient's right on the image's left, anterior up",
    1: "radiological convention: patient's right on the image's left, superior up",
    0: "radiological convention: anterior on the image's left, superior up",
}
_AS_STORED = "drawn as stored: the file records no patient orientation"


@dataclasses.dataclass
class ScanExplanation:
    """Everything known about one explained scan.

    Attributes:
        scan_path: the input file.
        run: the run folder of the model used.
        method: the explanation method.
        block: the block whose map was explained.
        predicted_class: argmax of the model's probabilities.
        class_name: the class's name when the run records names, else ``str(predicted_class)``.
        probability: softmax probability of the predicted class (for volumes explained slice by slice:
            of the slice with the highest positive-class probability; see ``notes``).
        probabilities: all class probabilities.
        scan: the scan as read, ``(C, *S)`` float32.
        heatmap: the map on the scan's grid, ``S`` float32.
        heatmap_model: the map on the model's grid, ``grid`` (or ``(slices, *grid)`` slice-wise).
        model_input_shape: spatial shape the model saw.
        geometry: the reader's geometry (affine etc.), passed through to the writer.
        notes: human-readable remarks (resizing, channel conversion, slice-wise processing).
        record_path: write the scan's path into :meth:`summary` (and so the prediction JSON). Off by
            default: folder and file names often carry patient identifiers; the summary then records
            the scan's format and a SHA-256 of its content only (:func:`scan_record`).
        class_names: the run's class names, or ``None`` (classes are then named by index).
        slices: for a volume explained slice by slice: one entry per slice along the slice axis, in
            the file's own order (a DICOM series: by position along the slice normal), each
            ``{"index": i, "probabilities": [...]}`` or ``{"index": i, "skipped": "background"}``.
        deciding_slice: the index (in ``slices``) of the slice that decided the volume's class.
        volume_rule: ``"max"`` or ``"mean"`` for volumes explained slice by slice, else ``None``.
        slice_axis: ``{"axis": axis of the array, "file_axis": axis of the file's grid, "plane": "axial" |
            "coronal" | "sagittal" | None, "from": why this axis}`` for volumes, else ``None``.
        overlay_image: the 2-D image the overlay shows, in display orientation.
        overlay_map: the map over ``overlay_image``.
        overlay_slice: the slice index (as in ``slices``) the overlay shows; ``None`` for 2-D scans.
        orientation: the display convention the overlay states.
        edge_labels: orientation letters (top, bottom, left, right) of the overlay, or ``None``.
    """

    scan_path: Path
    run: Path
    method: str
    block: str
    predicted_class: int
    class_name: str
    probability: float
    probabilities: list[float]
    scan: np.ndarray
    heatmap: np.ndarray
    heatmap_model: np.ndarray
    model_input_shape: tuple[int, ...]
    geometry: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)
    record_path: bool = False
    class_names: list[str] | None = None
    slices: list[dict[str, Any]] | None = None
    deciding_slice: int | None = None
    volume_rule: str | None = None
    slice_axis: dict[str, Any] | None = None
    overlay_image: np.ndarray | None = None
    overlay_map: np.ndarray | None = None
    overlay_slice: int | None = None
    orientation: str = _AS_STORED
    edge_labels: tuple[str, str, str, str] | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-serializable summary (no arrays); ``scan`` is :func:`scan_record` of the input."""
        if getattr(self, "_scan_record", None) is None:
            self._scan_record = scan_record(self.scan_path)
        record = dict(self._scan_record)
        if self.record_path:
            record["path"] = str(self.scan_path)
        return {
            "scan": record,
            "run": str(self.run),
            "method": self.method,
            "block": self.block,
            "predicted_class": int(self.predicted_class),
            "class_name": self.class_name,
            "probability": float(self.probability),
            "probabilities": [float(p) for p in self.probabilities],
            "scan_shape": list(self.scan.shape),
            "model_input_shape": list(self.model_input_shape),
            "heatmap_shape": list(self.heatmap.shape),
            "heatmap_model_shape": list(self.heatmap_model.shape),
            "class_names": None if self.class_names is None else list(self.class_names),
            "volume_rule": self.volume_rule,
            "slice_axis": self.slice_axis,
            "deciding_slice": self.deciding_slice,
            "background_slices": (None if self.slices is None else
                                  sum(1 for e in self.slices if e.get("skipped") == "background")),
            "slices": self.slices,
            "overlay": {"slice": self.overlay_slice, "orientation": self.orientation},
            "notes": list(self.notes),
        }


def scan_record(path: str | os.PathLike[str]) -> dict[str, str]:
    """What the prediction JSON says about its input: the format and a content digest, never the path.

    Args:
        path: the scan file, or a DICOM series folder.

    Returns:
        ``{"format": "png" | "nii.gz" | ... | "dicom-series", "sha256": hex}``. For a folder the digest is
        the SHA-256 of the sorted SHA-256 digests of its (non-hidden) files, so file names do not count.
    """
    def digest(f: Path) -> str:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    p = Path(path)
    if p.is_dir():
        parts = sorted(digest(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return {"format": "dicom-series", "sha256": hashlib.sha256("\n".join(parts).encode()).hexdigest()}
    name = p.name.lower()
    fmt = "nii.gz" if name.endswith(".nii.gz") else (p.suffix.lower().lstrip(".") or "unknown")
    return {"format": fmt, "sha256": digest(p)}


def _default_method(model: Any) -> str:
    """The run's own map: the variant-named attention method (e.g. ``exact``, ``dual``, ``tau_l``: mu where
    the variant has it, else tau) for a gated model, ``attention`` for a gated model of an unlisted variant,
    ``gradcam`` for one without gates (the baseline)."""
    if not tuple(getattr(model, "attention_blocks", ()) or ()):
        return "gradcam"
    variant = (getattr(model, "config", {}) or {}).get("variant")
    return variant if isinstance(variant, str) and variant in list_methods() else "attention"


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


def _model_meta(model: Any) -> tuple[int, int]:
    cfg = getattr(model, "config", {}) or {}
    return int(cfg.get("in_channels", 1)), int(cfg.get("spatial_dims", 2))


def _default_block(model: Any, block: str | None) -> str:
    if block is not None:
        return block
    blocks = tuple(getattr(model, "map_blocks", ()) or getattr(model, "attention_blocks", ()) or ())
    return "block3" if not blocks or "block3" in blocks else blocks[0]


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


def _resolve_axis(axis: int | str | None, geometry: Any) -> tuple[int, str]:
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


def _plane(volume: np.ndarray, axis: int, k: int, oriented: bool) -> np.ndarray:
    """Slice ``k`` along spatial ``axis`` of ``(C, *S)`` in display orientation ``(C, rows, cols)``."""
    plane = np.take(volume, k, axis=1 + axis)
    return np.ascontiguousarray(radiological_view(plane) if oriented else plane)


def _unplane(image: np.ndarray, oriented: bool) -> np.ndarray:
    """A 2-D display-oriented map back to the plane's axis order."""
    return np.ascontiguousarray(from_radiological_view(image) if oriented else image)


def _squeezed_axis(geometry: Any) -> int | None:
    """The canonical axis a 2-D oriented image is perpendicular to (its singleton axis in the file)."""
    ornt, shape = getattr(geometry, "source_ornt", None), getattr(geometry, "source_shape", None)
    if ornt is None or shape is None or len(shape) != 3:
        return None
    single = [a for i, (a, _f) in enumerate(ornt) if shape[i] == 1]
    return int(single[0]) if len(single) == 1 else None


def _class_label(pred: int, names: list[str] | None) -> str:
    return names[pred] if names and pred < len(names) else str(pred)


def _positive_class(probs_width: int, target: int | None) -> int:
    return probs_width - 1 if target is None else int(target)


def explain_scan(scan: str | os.PathLike[str], *, run: str | os.PathLike[str], method: str | None = None,
                 block: str | None = None, which: str = "best", target: int | None = None,
                 size: Sequence[int] | None = None, axis: int | str | None = None, volume_rule: str = "max",
                 background: float = BACKGROUND_FRACTION, progress: bool = False) -> ScanExplanation:
    """Predict and explain one scan with a trained run.

    Args:
        scan: image or volume file (PNG/JPG/NPY/NIfTI/DICOM/NRRD) or a DICOM series folder.
        run: a run folder written by :func:`dualattn.train.fit`.
        method: explanation method or alias (see :func:`dualattn.explain.list_methods` and
            :data:`dualattn.explain.METHOD_ALIASES`), e.g. ``"exact"``, ``"attention"``, ``"gradcam"``,
            ``"ig"``. Default: the run's own attention map (the method named after its variant, e.g.
            ``"exact"``, ``"dual"``, ``"tau_l"``) for a gated variant, ``"gradcam"`` for a baseline.
        block: block to explain; default ``"block3"`` (the paper's fine gate) when the model has it.
        which: ``"best"`` or ``"last"`` checkpoint.
        target: class to explain; default the predicted class (for a volume: the volume's class). With
            ``volume_rule="max"`` it is also the class whose probability picks the deciding slice.
        size: model input size; default the run's training size (``config.yaml``), else the scan's own.
        axis: for a volume and a 2-D model, the axis to cut: ``"axial"``, ``"coronal"``, ``"sagittal"``
            (oriented volumes), or ``0``/``1``/``2`` (axes of the array as read); default the axis the
            slices were acquired along (:attr:`dualattn.data.readers.Geometry.slice_axis`).
        volume_rule: ``"max"`` (default) or ``"mean"`` (module docstring).
        background: the background threshold of :func:`background_slices`.
        progress: show a progress bar on stderr while slices are explained (tqdm).

    Returns:
        A :class:`ScanExplanation`.

    Raises:
        ValueError: an unknown method, axis or volume rule, a missing run, an unreadable scan
            (``DataError``), or a volume whose every slice is background.
        FileNotFoundError: the run has no weights file ``which``.
    """
    scan_path = Path(scan)
    run_dir = Path(run)
    if not scan_path.exists():
        raise ValueError(f"scan {scan_path} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    if method is not None:
        method = METHOD_ALIASES.get(method, method)
        get_method(method)  # ValueError naming the valid methods
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    if volume_rule not in VOLUME_RULES:
        raise ValueError(f"unknown volume rule {volume_rule!r}; choose one of {', '.join(VOLUME_RULES)}")
    if not 0.0 <= float(background) < 1.0:
        raise ValueError(f"background fraction must be in [0, 1), got {background}")
    if axis is not None:
        _resolve_axis(axis, type("G", (), {"oriented": True})())  # the spelling, before the model loads
    run_info = RunDir(run_dir)
    model = run_info.load_model(which)
    if method is None:
        method = _default_method(model)
    gated = tuple(getattr(model, "attention_blocks", ()) or ())
    variant = (getattr(model, "config", {}) or {}).get("variant")
    if block is None and method in ("attention", variant) and gated and "block3" not in gated:
        block = gated[0]  # e.g. a tau_l run gates only block4: its attention map is there
    in_channels, model_dims = _model_meta(model)
    array, geometry = read_volume(scan_path)
    array = np.asarray(array, dtype=np.float32)
    notes: list[str] = []
    names = run_info.class_names
    if not names:
        notes.append("the run records no class names: classes are named by their index")
    if size is None:
        size = run_info.recorded_size
    spatial = tuple(array.shape[1:])
    oriented = bool(getattr(geometry, "oriented", False))
    blk = _default_block(model, block)
    extra: dict[str, Any] = {"class_names": names}
    if len(spatial) == model_dims:
        if size is None:
            size = _bounded_size(spatial, notes)
        x = scan_to_model_input(array, in_channels=in_channels, size=size, notes=notes)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0]
        pred = int(probs.argmax())
        tgt = pred if target is None else int(target)
        hm = explain(model, x, method=method, block=blk, target=torch.tensor([tgt]))
        hm_model = hm.detach().float().cpu().numpy()[0, 0]
        heatmap = map_to_scan_grid(hm_model, spatial)
        probabilities = [float(p) for p in probs]
        model_shape = tuple(int(s) for s in x.shape[2:])
        if len(spatial) == 2:
            plane_axis = _squeezed_axis(geometry) if oriented else None
            shown = plane_axis is not None
            extra.update(overlay_image=radiological_view(array) if shown else array,
                         overlay_map=radiological_view(heatmap) if shown else heatmap,
                         orientation=_CONVENTION[plane_axis] if shown else _AS_STORED,
                         edge_labels=_EDGE_LABELS[plane_axis] if shown else None)
        else:  # a 3-D model: the overlay shows the slice with the most map mass along the slice axis
            a, why = _resolve_axis(axis, geometry)
            mass = np.abs(heatmap).sum(axis=tuple(i for i in range(3) if i != a))
            k = int(np.argmax(mass))
            file_axis, file_k = geometry.source_index(a, k) if hasattr(geometry, "source_index") else (a, k)
            extra.update(overlay_image=_plane(array, a, k, oriented),
                         overlay_map=_plane(heatmap[None], a, k, oriented)[0], overlay_slice=file_k,
                         slice_axis={"axis": a, "file_axis": file_axis,
                                     "plane": PLANE_NAMES[a] if oriented else None, "from": why},
                         orientation=_CONVENTION[a] if oriented else _AS_STORED,
                         edge_labels=_EDGE_LABELS[a] if oriented else None)
            notes.append(f"a 3-D model sees the whole volume; the overlay shows slice {file_k} along "
                         f"{PLANE_NAMES[a] if oriented else f'axis {a}'}, the one with the most map mass")
    elif len(spatial) == 3 and model_dims == 2:
        a, why = _resolve_axis(axis, geometry)
        return _explain_volume_2d(
            scan_path, run_dir, model, array, geometry, axis=a, axis_why=why, method=method, block=blk,
            target=target, size=size, in_channels=in_channels, volume_rule=volume_rule, background=background,
            progress=progress, names=names, notes=notes)
    else:
        raise ValueError(f"scan {scan_path} has a {len(spatial)}-D grid {spatial} but the model is {model_dims}-D")
    return ScanExplanation(
        scan_path=scan_path, run=run_dir, method=method, block=blk, predicted_class=pred,
        class_name=_class_label(pred, names), probability=probabilities[pred], probabilities=probabilities,
        scan=array, heatmap=heatmap.astype(np.float32), heatmap_model=np.asarray(hm_model, dtype=np.float32),
        model_input_shape=model_shape, geometry=geometry, notes=notes, **extra,
    )


def _explain_volume_2d(scan_path: Path, run_dir: Path, model: Any, array: np.ndarray, geometry: Any, *,
                       axis: int, axis_why: str, method: str, block: str, target: int | None,
                       size: Sequence[int] | None, in_channels: int, volume_rule: str, background: float,
                       progress: bool, names: list[str] | None, notes: list[str]) -> ScanExplanation:
    """A volume and a 2-D model: slice by slice along ``axis`` (module docstring)."""
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
                         "the intensity range above the minimum): nothing to classify")
    if skipped.any():
        notes.append(f"{int(skipped.sum())} of {n} slices skipped as background (every voxel within "
                     f"{background:g} of the volume's intensity range above its minimum)")
    plane_shape = _plane(array[:1], axis, 0, oriented).shape[1:]
    if size is None:
        size = _bounded_size(plane_shape, notes)

    def batch(ks: Sequence[int], first: bool) -> Any:
        return torch.cat([scan_to_model_input(_plane(array, axis, int(k), oriented), in_channels=in_channels,
                                              size=size, notes=notes if (first and j == 0) else [])
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
        positive = _positive_class(n_classes, target)
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
        on_plane = _unplane(map_to_scan_grid(mk, plane_shape), oriented)
        index = [slice(None)] * 3
        index[axis] = k
        heatmap[tuple(index)] = on_plane
    rule_text = (f"max: the slice with the highest probability of class {_class_label(positive, names)!r} decides"
                 if volume_rule == "max" else
                 "mean: the volume's probabilities are the mean over the slices that are not background")
    notes.append(f"volume rule {rule_text}; every slice's map explains class {_class_label(tgt, names)!r}")

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
    return ScanExplanation(
        scan_path=scan_path, run=run_dir, method=method, block=block, predicted_class=pred,
        class_name=_class_label(pred, names), probability=probabilities[pred], probabilities=probabilities,
        scan=array, heatmap=heatmap, heatmap_model=hm_model, model_input_shape=x_shape, geometry=geometry,
        notes=notes, class_names=names, slices=entries, deciding_slice=file_index(deciding), volume_rule=volume_rule,
        slice_axis={"axis": int(axis), "file_axis": int(file_axis), "plane": plane_name, "from": axis_why},
        overlay_image=_plane(array, axis, deciding, oriented),
        overlay_map=_plane(heatmap[None], axis, deciding, oriented)[0],
        overlay_slice=file_index(deciding), orientation=_CONVENTION[axis] if oriented else _AS_STORED,
        edge_labels=_EDGE_LABELS[axis] if oriented else None,
    )


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


def _wants_nifti(result: ScanExplanation) -> bool:
    """A NIfTI heatmap is written for volumetric formats, or any scan whose affine is not the identity."""
    geo = result.geometry
    fmt = str(getattr(geo, "format", "")).lower()
    if fmt in {"nifti", "dicom", "nrrd"} or _is_nifti(result.scan_path):
        return True
    affine = getattr(geo, "affine", None)
    return affine is not None and not np.allclose(np.asarray(affine, dtype=np.float64), np.eye(4))


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _validate_stem(stem: str) -> str:
    """An explicit file-name stem: non-empty, one path component, no NUL."""
    if not isinstance(stem, str) or not stem or stem in (".", "..") or any(c in stem for c in "/\\\0"):
        raise ValueError(f"invalid output name (stem) {stem!r}: it must be a non-empty file name without "
                         "path separators ('/', '\\'), NUL, and not '.' or '..'")
    return stem


def _scan_name_stem(path: Path) -> str:
    """The scan's file name without its extension (the old default; opt-in via ``keep_name``)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".npy", ".dcm", ".nrrd"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name or "scan"


def overlay_title(result: ScanExplanation) -> str:
    """The overlay's title: class name (or index), probability, slice index and plane, method."""
    label = result.class_name if result.class_names else f"class {result.predicted_class} (run has no class names)"
    bits = [f"{label} p={result.probability:.2f}"]
    if result.overlay_slice is not None:
        axis = result.slice_axis or {}
        plane = axis.get("plane") or f"axis {axis.get('file_axis', '?')}"
        n = len(result.slices) if result.slices is not None else None
        bits.append(f"slice {result.overlay_slice}" + (f" of {n}" if n else "") + f" ({plane})")
    bits.append(result.method)
    return " · ".join(bits)


def overlay_png_of(result: ScanExplanation, *, size_inches: float = 4.0) -> bytes:
    """The overlay PNG of a :class:`ScanExplanation`: the deciding slice (volumes) or the image, in display
    orientation, with the map, a colour bar, the orientation letters and convention, and
    :func:`overlay_title`."""
    image = result.overlay_image if result.overlay_image is not None else result.scan
    hmap = result.overlay_map if result.overlay_map is not None else result.heatmap
    return overlay_png(image, hmap, title=overlay_title(result), size_inches=size_inches, colorbar=True,
                       colorbar_label="heatmap (share of the map per voxel)", edge_labels=result.edge_labels,
                       caption=result.orientation)


def write_scan_explanation(result: ScanExplanation, out: str | os.PathLike[str], *,
                           stem: str | None = None, keep_name: bool = False) -> dict[str, Path]:
    """Write the prediction JSON, the heatmap (NPY, NIfTI in the scan's geometry) and an overlay PNG.

    Files:
        ``{stem}.prediction.json``  class, probability, shapes, notes, file names;
        ``{stem}.heatmap.npy``      the map on the input file's own voxel grid (for a DICOM series:
                                    ``(slices in position order, rows, columns)``);
        ``{stem}.heatmap.nii.gz``   the same map with the file's affine, voxel for voxel over the input
                                    (NIfTI/DICOM/NRRD scans, or any scan whose affine is not the identity);
        ``{stem}.overlay.png``      the image (volumes: the deciding slice) in display orientation with the
                                    heatmap, a colour bar, orientation letters, class name and slice index.

    ``stem`` defaults to ``scan-`` + the first 12 hex digits of the scan's content SHA-256 (the digest
    of :func:`scan_record`, also in the JSON): deterministic, and free of the scan's file and folder
    names, which often carry patient identifiers.

    Args:
        result: from :func:`explain_scan`.
        out: output folder (created).
        stem: explicit file-name stem (wins over ``keep_name``); one file name: non-empty, no ``/`` or
            ``\\``, no NUL, not ``.`` or ``..``.
        keep_name: name the files after the scan's file name without extension (the old default) instead
            of its digest. Opt-in: file names often carry patient identifiers.

    Returns:
        Kind -> path written.

    Raises:
        ValueError: an invalid explicit ``stem``.
    """

    if stem is not None:
        stem = _validate_stem(stem)
    elif keep_name:
        stem = _scan_name_stem(result.scan_path)
    else:
        stem = "scan-" + result.summary()["scan"]["sha256"][:12]  # summary() caches the record: hashed once
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    geo = result.geometry
    on_file_grid = geo.to_source_grid(result.heatmap) if hasattr(geo, "to_source_grid") else result.heatmap
    npy = out_dir / f"{stem}.heatmap.npy"
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(on_file_grid, dtype=np.float32))
    written["heatmap_npy"] = npy

    if _wants_nifti(result):
        nii = out_dir / f"{stem}.heatmap.nii.gz"
        write_nifti(nii, result.heatmap.astype(np.float32), geometry=result.geometry)
        written["heatmap_nifti"] = nii

    png = out_dir / f"{stem}.overlay.png"
    atomic_write_bytes(png, overlay_png_of(result))
    written["overlay_png"] = png
    if np.ndim(result.heatmap) == 3:
        # a volume: three orthogonal planes through the map's peak (the scan is read in canonical RAS order)
        tri = out_dir / f"{stem}.triplanar.png"
        atomic_write_bytes(tri, triplanar_png(result.scan, {result.method: result.heatmap},
                                              point=map_peak(result.heatmap, np.shape(result.heatmap))))
        written["triplanar_png"] = tri

    summary = result.summary()
    summary["heatmap_file_shape"] = list(np.shape(on_file_grid))
    summary["files"] = {k: p.name for k, p in written.items()}
    js = out_dir / f"{stem}.prediction.json"
    atomic_write_json(js, summary)
    written["prediction_json"] = js
    logger.info("explained %s: class %s p=%.3f -> %s", js.name, result.class_name, result.probability, out_dir)
    return written
