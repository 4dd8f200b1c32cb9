"""Readers for the medical and ordinary image formats the folder format accepts.

Every reader returns a channels-first ``float32`` array ``(C, *spatial)`` and raises
:class:`~dualattn.data.errors.DataError` naming the file and the problem when the file is missing,
corrupt, truncated, of an unknown type, or holds NaN/Inf values.

Axis convention (one for every format :func:`read_volume` reads):

- **Volumes with a known patient orientation** (NIfTI, NRRD with space directions, DICOM series and
  multi-frame DICOM) are returned as ``(C, X, Y, Z)`` in *closest canonical RAS* order, as nibabel's
  ``as_closest_canonical`` gives: the index along axis 0 grows towards the patient's right (R),
  along axis 1 towards anterior (A), along axis 2 towards superior (S) (each axis is the file's
  voxel axis nearest to that direction; oblique volumes are not resampled). ``Geometry.oriented`` is
  ``True``, ``Geometry.affine`` maps these indices to RAS millimetres, and ``Geometry.slice_axis``
  names the array axis along which the file's 2-D slices lie (a DICOM series: the axis its images
  are stacked along, in ``ImagePositionPatient`` order; NIfTI: see :func:`read_volume`).
- **2-D images** (PNG/JPG/BMP/TIFF, single-frame DICOM) are ``(C, rows, columns)`` as displayed;
  NPY arrays are taken as stored (``(C, H, W)`` or ``(C, D, H, W)``, slices along the first spatial
  axis). Their orientation is unknown to the reader (``Geometry.oriented`` is ``False``).
- The file's own voxel grid is kept in the :class:`Geometry` (``source_affine``, ``source_shape``,
  ``source_ornt``): :meth:`Geometry.to_source_grid` and :func:`write_nifti` put a map computed on the
  returned array back voxel-for-voxel on the input file's grid.
- A single DICOM image keeps its stored layout and records the patient directions of its rows and
  columns (``Geometry.extra["image_orientation"]``, :func:`~dualattn.data.geometry.edge_labels_from_cosines`).

:func:`read_dicom_series` is the lower-level stacking reader (``(1, slices, rows, columns)`` with the
sorted headers); :func:`read_volume` reorients its output like any other volume.
:func:`radiological_view` turns a slice of a canonical volume into the radiological display
orientation (patient's right on the image's left; anterior, or superior, up).

This module is the entry point (:func:`read_volume`, :func:`read_image`, :func:`image_format`) and reads the
ordinary images (PIL formats, NPY); each medical format has its own module, re-exported here:

================  =========================================================================
``geometry``      :class:`Geometry`, :func:`radiological_view`, the orientation convention
``nifti``         NIfTI reading and :func:`write_nifti`
``nrrd``          NRRD reading
``dicom``         single DICOM files and :func:`read_dicom_series`
================  =========================================================================
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .dicom import ORIENTATION_TOLERANCE, SPACING_TOLERANCE, _dcmread, _read_dicom_file, read_dicom_series
from .errors import DataError
from .geometry import (
    PLANE_NAMES,
    Geometry,
    _identity_geometry,
    _oriented_geometry,
    edge_labels_from_cosines,
    from_radiological_view,
    radiological_view,
)
from .nifti import THICK_SLICE_RATIO, _read_nifti, write_nifti
from .nrrd import _read_nrrd

__all__ = [
    "Geometry",
    "IMAGE_SUFFIXES",
    "MAX_VOXELS",
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE",
    "THICK_SLICE_RATIO",
    "read_image",
    "read_volume",
    "read_dicom_series",
    "write_nifti",
    "image_format",
    "radiological_view",
    "from_radiological_view",
    "edge_labels_from_cosines",
    "equal_channels",
    "PLANE_NAMES",
]

# re-exported for the modules that read them from here
_REEXPORTED = (_dcmread, _oriented_geometry)

logger = logging.getLogger(__name__)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES: tuple[str, ...] = (
    *_PIL_SUFFIXES,
    ".npy",
    ".nii",
    ".nii.gz",
    ".dcm",
    ".dicom",
    ".nrrd",
    ".nhdr",
)
"""File suffixes :func:`read_image` understands (a folder is read as a DICOM series)."""


def image_format(path: str | os.PathLike[str]) -> str:
    """Name the reader for ``path``: ``"pil"``, ``"npy"``, ``"nifti"``, ``"dicom"``, ``"nrrd"``.

    Folders are DICOM series. Files without a known suffix are sniffed for the DICOM preamble.

    Raises:
        DataError: the suffix is unknown and the file is not DICOM.
    """
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return "dicom"
    if name.endswith(".nii") or name.endswith(".nii.gz"):
        return "nifti"
    if name.endswith(".nrrd") or name.endswith(".nhdr"):
        return "nrrd"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith((".dcm", ".dicom")):
        return "dicom"
    if name.endswith(_PIL_SUFFIXES):
        return "pil"
    if p.is_file():
        with open(p, "rb") as fh:
            head = fh.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            return "dicom"
    raise DataError(p, f"unknown image type (known suffixes: {', '.join(IMAGE_SUFFIXES)}, or a DICOM folder)")


def _check_finite(arr: np.ndarray, path: Path) -> np.ndarray:
    bad = ~np.isfinite(arr)
    if bad.any():
        raise DataError(path, f"{int(bad.sum())} NaN/Inf value(s) out of {arr.size}")
    return arr


#: Largest number of voxels a reader decodes (4 GiB as float32): a compressed file (``.nii.gz``,
#: gzip NRRD) whose header declares more is refused before it is inflated (decompression bombs).
MAX_VOXELS = 2**30


def _check_voxels(path: Path, shape: tuple[int, ...]) -> None:
    n = int(np.prod(shape, dtype=object)) if shape else 0
    if n > MAX_VOXELS:
        raise DataError(path, f"header declares shape {shape} = {n} voxels, above the readers' limit of {MAX_VOXELS} "
                              "(dualattn.data.readers.MAX_VOXELS)")


# --------------------------------------------------------------------------- PIL / NPY


def _read_pil(path: Path) -> tuple[np.ndarray, Geometry]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "LA", "P;L"):
                im = im.convert("L")
            elif mode in ("P", "PA", "CMYK", "YCbCr", "RGBA", "RGBX", "HSV", "LAB"):
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"cannot decode image ({exc})") from exc
    arr = arr.astype(np.float32)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr), _identity_geometry(2, "png")


def _check_npy_size(path: Path) -> None:
    """Refuse an NPY whose header promises more bytes than the file holds, before numpy allocates them."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
            offset = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        # numpy parses the header dict with ast: a corrupt header raises SyntaxError/TokenError (a SyntaxError
        # subclass on 3.12, tokenize.TokenError on 3.11 -- caught below).
        raise DataError(path, f"cannot read NPY header ({exc})") from exc
    except Exception as exc:  # tokenize.TokenError and friends from a garbled header
        raise DataError(path, f"cannot read NPY header ({type(exc).__name__}: {exc})") from exc
    if dtype.hasobject:
        return  # refused by np.load(allow_pickle=False) with its own message
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = path.stat().st_size - offset
    if need > have:
        raise DataError(path, f"NPY header promises shape {shape} {dtype} ({need} bytes) but the file holds {have}: truncated or corrupt")


def _read_npy(path: Path) -> tuple[np.ndarray, Geometry]:
    _check_npy_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise DataError(path, f"cannot read NPY array ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise DataError(path, f"NPY must hold a numeric array, got dtype {getattr(arr, 'dtype', None)}")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim not in (3, 4):
        raise DataError(path, f"NPY array must be (H, W), (C, H, W) or (C, D, H, W); got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32), _identity_geometry(arr.ndim - 1, "npy")


# --------------------------------------------------------------------------- public


def read_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read any supported image file (or DICOM series folder) with its geometry.

    Args:
        path: PNG/JPG/BMP/TIFF, NPY, NIfTI (``.nii``/``.nii.gz``), DICOM file or series folder,
            NRRD (``.nrrd``/``.nhdr``).

    Returns:
        ``(array, geometry)``: ``array`` is ``(C, *spatial)`` float32 (C = channels: colour
        samples, NIfTI 4th axis, NRRD non-spatial axis; 1 otherwise), ``geometry`` a
        :class:`Geometry` (identity affine for PNG/NPY). Volumes with a known orientation are
        ``(C, X, Y, Z)`` in closest canonical RAS (module docstring); ``geometry.slice_axis`` is the
        axis the file's slices lie along: for a DICOM series the stacking axis; for NIfTI the header's
        slice dimension (``dim_info``) when set, else the axis whose voxels are clearly the thickest
        (more than :data:`THICK_SLICE_RATIO` times the next), else the axis nearest to
        superior-inferior (axial) -- ``geometry.extra["slice_axis_from"]`` says which rule decided.

    Raises:
        DataError: missing, unreadable, truncated or non-finite file.

    Example:
        >>> arr, geo = read_volume("brain.nii.gz")  # doctest: +SKIP
        >>> arr.shape, geo.spacing, geo.slice_axis   # doctest: +SKIP
        ((1, 240, 240, 155), (1.0, 1.0, 1.0), 2)
    """
    p = Path(path)
    if not p.exists():
        raise DataError(p, "file does not exist")
    fmt = image_format(p)
    if fmt == "pil":
        arr, geo = _read_pil(p)
    elif fmt == "npy":
        arr, geo = _read_npy(p)
    elif fmt == "nifti":
        arr, geo = _read_nifti(p)
    elif fmt == "nrrd":
        arr, geo = _read_nrrd(p)
    elif p.is_dir():
        arr, geo, _ = read_dicom_series(p)
        if arr.shape[1] > 1:
            arr, geo = _oriented_geometry(arr, geo.affine, "dicom", source_slice_axis=0, extra=geo.extra)
    else:
        arr, geo = _read_dicom_file(p)
    if arr.size == 0:
        raise DataError(p, f"image is empty (shape {arr.shape})")
    return _check_finite(arr, p), geo


def equal_channels(array: np.ndarray) -> bool:
    """Whether a multi-channel image holds one image in every channel (a grayscale image saved as RGB).

    Args:
        array: ``(C, *spatial)``.

    Returns:
        ``True`` for ``C > 1`` channels that are all equal, else ``False``.

    Example:
        >>> g = np.arange(6.0).reshape(1, 2, 3)
        >>> equal_channels(np.repeat(g, 3, axis=0)), equal_channels(g), equal_channels(np.stack([g[0], g[0] + 1]))
        (True, False, False)
    """
    arr = np.asarray(array)
    return arr.ndim >= 2 and arr.shape[0] > 1 and bool(np.all(arr == arr[:1]))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as a channels-first float32 array ``(C, *spatial)``.

    Same formats and errors as :func:`read_volume`, without the geometry.

    Example:
        >>> read_image("scan.png").shape  # doctest: +SKIP
        (1, 240, 240)
    """
    return read_volume(path)[0]
