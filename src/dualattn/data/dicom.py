"""DICOM: single files (multi-frame ones as volumes) and series folders stacked along the slice normal."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .geometry import _LPS_TO_RAS, Geometry, _oriented_geometry

__all__ = ["ORIENTATION_TOLERANCE", "SPACING_TOLERANCE", "read_dicom_series"]

logger = logging.getLogger(__name__)


def _dcmread(path: Path, *, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"cannot read DICOM ({type(exc).__name__}: {exc})") from exc


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    """Stored pixels with the modality rescale applied, as float32 ``(frames?, rows, cols[, samples])``."""
    try:
        arr = ds.pixel_array
    except Exception as exc:  # truncated data, missing PixelData, unsupported transfer syntax
        raise DataError(path, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr, dtype=np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope != 1.0 or intercept != 0.0:
        arr = arr * np.float32(slope) + np.float32(intercept)
    return arr


def _dicom_slice_affine(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    """(row_cosine, col_cosine, position, (row_spacing, col_spacing)) in LPS, with fallbacks."""
    iop = ds.get("ImageOrientationPatient")
    ipp = ds.get("ImagePositionPatient")
    ps = ds.get("PixelSpacing")
    rc = np.asarray([float(v) for v in iop[:3]]) if iop is not None else np.array([1.0, 0.0, 0.0])
    cc = np.asarray([float(v) for v in iop[3:6]]) if iop is not None else np.array([0.0, 1.0, 0.0])
    pos = np.asarray([float(v) for v in ipp]) if ipp is not None else np.zeros(3)
    spacing = (float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0)
    return rc, cc, pos, spacing


def _read_dicom_file(path: Path) -> tuple[np.ndarray, Geometry]:
    ds = _dcmread(path)
    arr = _dicom_pixels(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        arr = np.moveaxis(arr, -1, 0)  # (S, [F,] rows, cols)
    else:
        arr = arr[None]
    rc, cc, pos, (dr, dc) = _dicom_slice_affine(ds)
    affine = np.eye(4)
    affine[:3, 0] = cc * dr  # axis 0 = rows: moves along the column direction
    affine[:3, 1] = rc * dc
    affine[:3, 2] = np.cross(rc, cc)
    affine[:3, 3] = pos
    spacing: tuple[float, ...] = (dr, dc)
    if arr.ndim == 4:  # multi-frame: (C, F, rows, cols)
        thick = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 1.0)) or 1.0)
        normal = np.cross(rc, cc)
        affine = np.eye(4)
        affine[:3, 0] = normal * thick
        affine[:3, 1] = cc * dr
        affine[:3, 2] = rc * dc
        affine[:3, 3] = pos
        spacing = (thick, dr, dc)
        if ds.get("ImageOrientationPatient") is not None:
            return _oriented_geometry(arr, _LPS_TO_RAS @ affine, "dicom", source_slice_axis=0,
                                      extra={"modality": str(ds.get("Modality", "")), "slices": int(arr.shape[1])})
    extra: dict[str, Any] = {"modality": str(ds.get("Modality", ""))}
    if arr.ndim == 3 and ds.get("ImageOrientationPatient") is not None and np.linalg.norm(np.cross(rc, cc)) > 0.5:
        # a single image stays as stored; the directions of its rows and columns say how it lies
        extra["image_orientation"] = [float(v) for v in (*rc, *cc)]
    if ds.get("InstanceNumber") is not None:
        extra["instance_number"] = int(ds.get("InstanceNumber"))
    geo = Geometry(affine=_LPS_TO_RAS @ affine, format="dicom", spacing=spacing, extra=extra,
                   slice_axis=0 if arr.ndim == 4 else None)
    return np.ascontiguousarray(arr), geo


#: Largest difference between two slices' direction cosines (``ImageOrientationPatient``) still read
#: as one orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Relative spread of the gaps between consecutive slice positions above which the series is reported
#: as unevenly spaced (``Geometry.extra["spacing_varies_mm"]``, a warning in the log).
SPACING_TOLERANCE = 0.01


def read_dicom_series(folder: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry, list[Any]]:
    """Read a folder holding one DICOM series as a stack of its images.

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected on
    the ``row x column`` cross product of ``ImageOrientationPatient``), falling back to
    ``InstanceNumber`` when positions are missing; the file-system order never matters. The slice
    spacing is the distance between the first and last positions divided by ``slices - 1`` (not the
    ``SliceThickness`` tag, which may overlap or leave gaps); the in-plane spacing is ``PixelSpacing``.
    Files that are not DICOM (e.g. ``.txt``) are skipped.

    This is the low-level stack in the series' own layout; :func:`read_volume` turns it into the
    package's one convention (``(C, X, Y, Z)`` canonical RAS, see the module docstring).

    Args:
        folder: directory with one ``.dcm`` file per slice (any file names).

    Returns:
        ``(array (1, slices, rows, cols) float32 with rescale applied, geometry, datasets)``:
        slices in position order along the normal, ``geometry.affine`` mapping ``(slice, row, col)`` to
        RAS mm, ``datasets`` the pydicom headers in the same order (pixel data released).

    Raises:
        DataError: naming the folder: no DICOM file, several series, slices of different orientations
            or sizes, two slices at one position; naming the file: corrupt pixel data.

    Example:
        >>> vol, geo, headers = read_dicom_series("series/")  # doctest: +SKIP
        >>> vol.shape, geo.spacing                            # doctest: +SKIP
        ((1, 24, 256, 256), (3.0, 0.9, 0.9))
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "DICOM series folder does not exist")
    entries: list[tuple[Path, Any]] = []
    skipped = 0
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.name.startswith("."):
            continue
        try:
            ds = _dcmread(f)
        except DataError:
            if f.suffix.lower() in (".dcm", ".dicom"):
                raise
            skipped += 1  # file names are not logged: DICOM file names are often UIDs
            continue
        if "PixelData" not in ds:
            continue
        entries.append((f, ds))
    if skipped:
        logger.debug("DICOM series: skipped %d non-DICOM file(s)", skipped)
    if not entries:
        raise DataError(folder, "no DICOM image files in the folder")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in entries}
    if len(series) > 1:
        raise DataError(folder, f"the folder holds {len(series)} DICOM series; put each series in its own folder")
    _check_series_consistency(folder, [ds for _, ds in entries])
    rc, cc, _, (dr, dc) = _dicom_slice_affine(entries[0][1])
    normal = np.cross(rc, cc)
    have_positions = all(ds.get("ImagePositionPatient") is not None for _, ds in entries)

    def key(item: tuple[Path, Any]) -> tuple[float, float, str]:
        ds = item[1]
        ipp = ds.get("ImagePositionPatient")
        along = float(np.dot(normal, [float(v) for v in ipp])) if ipp is not None else 0.0
        return (along, float(ds.get("InstanceNumber", 0) or 0), item[0].name)

    entries.sort(key=key)
    along = np.array([key(e)[0] for e in entries])
    extra: dict[str, Any] = {"modality": str(entries[0][1].get("Modality", "")), "slices": len(entries)}
    if have_positions and len(entries) > 1:
        gaps = np.diff(along)
        if np.any(gaps < 1e-4 * max(dr, dc, 1e-6)):
            n_dup = int(np.sum(gaps < 1e-4 * max(dr, dc, 1e-6)))
            raise DataError(folder, f"{n_dup} pair(s) of slices share one position along the slice normal "
                                    "(several echoes, phases or time points in one series?); put one stack per folder")
        if gaps.max() - gaps.min() > SPACING_TOLERANCE * float(np.median(gaps)):
            extra["spacing_varies_mm"] = [float(gaps.min()), float(gaps.max())]
            logger.warning("DICOM series: slice gaps vary from %.3g to %.3g mm; the mean gap is used",
                           gaps.min(), gaps.max())
    slices = []
    for f, ds in entries:
        px = _dicom_pixels(ds, f)
        if px.ndim != 2:
            raise DataError(f, f"series slices must be single-frame grayscale; got pixel shape {px.shape}")
        slices.append(px)
        if "PixelData" in ds:
            del ds.PixelData
    shapes = sorted({px.shape for px in slices})
    if len(shapes) > 1:
        raise DataError(folder, f"the series' slices have different sizes {shapes}; one series must have one size")
    vol = np.stack(slices)[None]
    first = _dicom_slice_affine(entries[0][1])[2]
    last = _dicom_slice_affine(entries[-1][1])[2]
    n = len(entries)
    if n > 1 and np.linalg.norm(last - first) > 0:
        step = (last - first) / (n - 1)
    else:
        thick = float(entries[0][1].get("SpacingBetweenSlices", entries[0][1].get("SliceThickness", 1.0)) or 1.0)
        step = normal * thick
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = cc * dr
    affine[:3, 2] = rc * dc
    affine[:3, 3] = first
    instances = [ds.get("InstanceNumber") for _, ds in entries]
    if all(v is not None for v in instances):
        extra["instance_numbers"] = [int(v) for v in instances]
    geo = Geometry(
        affine=_LPS_TO_RAS @ affine,
        format="dicom",
        spacing=(float(np.linalg.norm(step)), dr, dc),
        extra=extra,
        slice_axis=0,
    )
    return np.ascontiguousarray(vol), geo, [ds for _, ds in entries]


def _check_series_consistency(folder: Path, headers: list[Any]) -> None:
    """One orientation and one pixel spacing for every slice, else a DataError naming the folder."""
    cosines = []
    for ds in headers:
        iop = ds.get("ImageOrientationPatient")
        cosines.append(None if iop is None else np.asarray([float(v) for v in iop[:6]]))
    known = [c for c in cosines if c is not None]
    if known and len(known) != len(cosines):
        raise DataError(folder, f"{len(cosines) - len(known)} of {len(cosines)} slices lack ImageOrientationPatient")
    if known:
        spread = max(float(np.abs(c - known[0]).max()) for c in known)
        if spread > ORIENTATION_TOLERANCE:
            n_orient = len({tuple(np.round(c, 3)) for c in known})
            raise DataError(folder, f"the slices have {n_orient} different orientations (ImageOrientationPatient "
                                    f"differs by up to {spread:.3g}); a localizer or several stacks in one series? "
                                    "Put one stack per folder")
    spacings = {tuple(round(float(v), 4) for v in ds.get("PixelSpacing")) for ds in headers
                if ds.get("PixelSpacing") is not None}
    if len(spacings) > 1:
        raise DataError(folder, f"the slices have different pixel spacings {sorted(spacings)}")
