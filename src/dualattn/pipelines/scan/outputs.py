"""What explaining a scan writes: the prediction JSON, the heatmap (NPY, NIfTI on the file's own grid), the
overlay and tri-planar PNGs, and the short summary the terminal shows."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..._io import atomic_path, atomic_write_bytes, atomic_write_json
from ...data.readers import write_nifti
from ...report.figures import overlay_png
from ...report.triplanar import triplanar_png
from .result import ScanExplanation
from .volumes import instance_number

__all__ = ["overlay_png_of", "overlay_title", "terminal_summary", "triplanar_png_of", "write_scan_explanation"]

logger = logging.getLogger(__name__)


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


def validate_stem(stem: str) -> str:
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


def _slice_text(result: ScanExplanation) -> str | None:
    """``slice 27 of 64 (axial), DICOM instance 12`` for the overlay's slice of a volume (numbered from 1)."""
    if result.overlay_slice is None:
        return None
    axis = result.slice_axis or {}
    plane = axis.get("plane") or f"axis {axis.get('file_axis', '?')}"
    if result.slices is not None:
        n: int | None = len(result.slices)
    elif axis.get("axis") is not None and np.ndim(result.scan) == 4:
        n = int(np.shape(result.scan)[1 + int(axis["axis"])])
    else:
        n = None
    text = f"slice {result.overlay_slice + 1}" + (f" of {n}" if n else "") + f" ({plane})"
    if result.instance_number is not None:
        text += f", DICOM instance {result.instance_number}"
    return text


def overlay_title(result: ScanExplanation) -> str:
    """The overlay's title: class name (or index), probability, slice number (from 1), plane and DICOM
    instance number, method."""
    label = result.class_name if result.class_names else f"class {result.predicted_class} (run has no class names)"
    bits = [f"{label} p={result.probability:.2f}"]
    where = _slice_text(result)
    if where:
        bits.append(where)
    elif result.instance_number is not None:
        bits.append(f"DICOM instance {result.instance_number}")
    bits.append(result.method)
    return " · ".join(bits)


def overlay_png_of(result: ScanExplanation, *, size_inches: float = 4.0) -> bytes:
    """The overlay PNG of a :class:`ScanExplanation`: the deciding slice (volumes) or the image, in display
    orientation, with the map on the fixed × uniform scale and its colour bar, the sharpness (and the
    near-uniform warning), the orientation letters and convention, :func:`overlay_title`, and for a volume a
    cross where the tri-planar view cuts through."""
    image = result.overlay_image if result.overlay_image is not None else result.scan
    hmap = result.overlay_map if result.overlay_map is not None else result.heatmap
    return overlay_png(image, hmap, title=overlay_title(result), size_inches=size_inches, colorbar=True,
                       edge_labels=result.edge_labels, caption=result.orientation, sharpness=result.sharpness,
                       marker=result.overlay_point)


def triplanar_png_of(result: ScanExplanation) -> bytes:
    """Three orthogonal planes of a volume through :attr:`ScanExplanation.volume_point` (on the overlay's slice,
    where its map peaks; the same voxel the overlay marks), in the array's canonical orientation, with the
    voxel spacing, the slice's DICOM instance number and the same colour scale as the overlay."""
    geo = result.geometry
    oriented = bool(getattr(geo, "oriented", False))
    axis = (result.slice_axis or {}).get("axis")
    notes = {}
    if axis is not None and result.volume_point is not None:
        number = instance_number(geo, result.overlay_slice)
        if number is not None:
            notes[int(axis)] = f"DICOM instance {number}"
    spacing = getattr(geo, "spacing", None)
    spacing = tuple(spacing) if spacing is not None and len(spacing) == 3 else None
    return triplanar_png(result.scan, {result.method: result.heatmap}, point=result.volume_point, show_peaks=False,
                         spacing=spacing, plane_notes=notes, oriented=oriented)


def terminal_summary(result: ScanExplanation, files: dict[str, Path] | None = None) -> list[str]:
    """The few lines ``dualattn explain`` prints: class and probability, the deciding slice of a volume, the
    map's sharpness (and the near-uniform warning), the files written. The full record is the JSON file."""
    label = result.class_name if result.class_names else f"class {result.predicted_class} (the run records no names)"
    lines = [f"class:      {label}, probability {result.probability:.2f}"]
    if result.target is not None and result.target != result.predicted_class:
        names = result.class_names
        lines.append(f"explains:   class {names[result.target] if names else result.target} (--target)")
    lines.append(f"method:     {result.method} ({result.block})")
    where = _slice_text(result)
    if where:
        rule = f"; volume rule {result.volume_rule}" if result.volume_rule else ""
        lines.append(f"deciding:   {where}{rule}")
    if result.sharpness is not None:
        lines.append(f"sharpness:  {result.sharpness:.2f} (exp(entropy)/N of the map: 1 = uniform)")
    for warning in result.warnings:
        lines.append(f"warning:    {warning}")
    if files:
        folder = {p.parent for p in files.values()}
        base = next(iter(folder)) if len(folder) == 1 else None
        names = [p.name if base is not None else str(p) for p in files.values()]
        lines.append(f"written:    {base}/" if base is not None else "written:")
        lines.extend(f"  {n}" for n in names)
    return lines


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
                                    heatmap on the fixed × uniform scale, its colour bar, the sharpness (and
                                    a near-uniform warning), orientation letters, class name, slice number;
        ``{stem}.triplanar.png``    volumes: three planes through the voxel the overlay marks.

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
        stem = validate_stem(stem)
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
        # a volume: three orthogonal planes through the voxel the overlay marks
        tri = out_dir / f"{stem}.triplanar.png"
        atomic_write_bytes(tri, triplanar_png_of(result))
        written["triplanar_png"] = tri

    summary = result.summary()
    summary["heatmap_file_shape"] = list(np.shape(on_file_grid))
    summary["files"] = {k: p.name for k, p in written.items()}
    js = out_dir / f"{stem}.prediction.json"
    atomic_write_json(js, summary)
    written["prediction_json"] = js
    logger.info("explained %s: class %s p=%.3f -> %s", js.name, result.class_name, result.probability, out_dir)
    return written
