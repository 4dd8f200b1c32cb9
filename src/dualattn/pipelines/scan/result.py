"""What explaining one scan gives: :class:`ScanExplanation`, its JSON summary, and the scan's record (never its path)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ScanExplanation", "scan_record", "class_label"]

#: The caption of an image whose file records no patient orientation.
AS_STORED = "drawn as stored: the file records no patient orientation"


def class_label(index: int, names: list[str] | None) -> str:
    """A class's name when the run records names, else its index as text."""
    return names[index] if names and 0 <= index < len(names) else str(index)


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
        deciding_slice: the index (in ``slices``, from 0) of the slice that decided the volume's class.
        volume_rule: ``"max"`` or ``"mean"`` for volumes explained slice by slice, else ``None``.
        slice_axis: ``{"axis": axis of the array, "file_axis": axis of the file's grid, "plane": "axial" |
            "coronal" | "sagittal" | None, "from": why this axis}`` for volumes, else ``None``.
        overlay_image: the 2-D image the overlay shows, in display orientation.
        overlay_map: the map over ``overlay_image``.
        overlay_slice: the slice index (as in ``slices``, from 0) the overlay shows; ``None`` for 2-D scans.
        orientation: the display convention the overlay states.
        edge_labels: orientation letters (top, bottom, left, right) of the overlay, or ``None``.
        sharpness: ``exp(entropy) / N`` of the map the overlay shows, on the model's grid (the deciding
            slice's map for a volume explained slice by slice, the whole map for a 3-D model).
        volume_point: for a volume: the voxel ``(i, j, k)`` of the array the tri-planar view cuts through:
            on the overlay's slice, where its map peaks.
        overlay_point: ``volume_point`` in the overlay's pixels ``(row, column)``, marked there.
        instance_number: the DICOM ``InstanceNumber`` of the overlay's slice (a series) or of the image
            (a single file), when the file records it.
        target: the class the maps explain when ``--target`` chose one, else ``None``.
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
    orientation: str = AS_STORED
    edge_labels: tuple[str, str, str, str] | None = None
    sharpness: float | None = None
    volume_point: tuple[int, int, int] | None = None
    overlay_point: tuple[int, int] | None = None
    instance_number: int | None = None
    target: int | None = None

    @property
    def warnings(self) -> list[str]:
        """What a reader must not miss: a near-uniform map (:func:`dualattn.report.figures.near_uniform_warning`)."""
        from ...report.figures import near_uniform_warning

        text = near_uniform_warning(self.sharpness)
        return [text] if text else []

    def summary(self) -> dict[str, Any]:
        """JSON-serializable summary (no arrays); ``scan`` is :func:`scan_record` of the input."""
        if getattr(self, "_scan_record", None) is None:
            self._scan_record = scan_record(self.scan_path)
        record = dict(self._scan_record)
        if self.record_path:
            record["path"] = str(self.scan_path)
        overlay: dict[str, Any] = {"slice": self.overlay_slice,
                                   "slice_number": None if self.overlay_slice is None else self.overlay_slice + 1,
                                   "instance_number": self.instance_number,
                                   "orientation": self.orientation,
                                   "edge_labels": None if self.edge_labels is None else list(self.edge_labels),
                                   "volume_point": None if self.volume_point is None else list(self.volume_point)}
        return {
            "scan": record,
            "run": str(self.run),
            "method": self.method,
            "block": self.block,
            "target": self.target,
            "predicted_class": int(self.predicted_class),
            "class_name": self.class_name,
            "probability": float(self.probability),
            "probabilities": [float(p) for p in self.probabilities],
            "sharpness": None if self.sharpness is None else float(self.sharpness),
            "warnings": self.warnings,
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
            "overlay": overlay,
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
