"""Readers for the medical and ordinary image formats the folder format accepts.

Every reader returns a channels-first ``float32`` array ``(C, *spatial)`` and raises
:class:`~dualattn.data.errors.DataError` naming the file and the problem when the file is missing,
corrupt, truncated, of an unknown type, or holds NaN/Inf values.

Index order: PNG/JPG/NPY/DICOM arrays are ``(rows, columns)`` as displayed (DICOM series add the
slice axis first: ``(slices, rows, columns)``); NIfTI and NRRD arrays keep the file's own
``(x, y, z)`` order, like nibabel and pynrrd. :func:`read_volume` also returns a
:class:`Geometry` whose ``affine`` maps array indices to RAS millimetres, so maps computed on
the array can be written back over the original volume (:func:`write_nifti`).
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = [
    "Geometry",
    "IMAGE_SUFFIXES",
    "read_image",
    "read_volume",
    "read_dicom_series",
    "write_nifti",
    "image_format",
]

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

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Where an array's voxels lie in space.

    Attributes:
        affine: ``(4, 4)`` float64 matrix mapping ``(i, j, k, 1)`` spatial indices (channel axis
            excluded; 2D arrays use ``k = 0``) to RAS millimetres.
        format: the reader that produced it (``"nifti"``, ``"dicom"``, ``"nrrd"``, ``"png"``,
            ``"npy"``).
        spacing: voxel size along each spatial axis in mm.
        extra: small format-specific details (never patient identifiers).
    """

    affine: np.ndarray
    format: str
    spacing: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)


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


def _identity_geometry(ndim: int, fmt: str) -> Geometry:
    return Geometry(affine=np.eye(4), format=fmt, spacing=(1.0,) * ndim)


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


# --------------------------------------------------------------------------- NIfTI


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        kind = np.dtype(img.get_data_dtype()).kind
        if kind not in "biuf":  # complex would be cast silently, dropping the imaginary part; RGB is structured
            raise DataError(path, f"NIfTI data type {img.get_data_dtype()} is not a real-valued number type")
        _check_voxels(path, tuple(img.shape))
        arr = np.asarray(img.dataobj, dtype=np.float32)
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise DataError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    zooms = tuple(float(z) for z in img.header.get_zooms())
    affine = np.asarray(img.affine, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
        spatial = 2
    elif arr.ndim == 3:
        if arr.shape[2] == 1:  # a 2D image stored as (X, Y, 1)
            arr = arr[None, :, :, 0]
            spatial = 2
        else:
            arr = arr[None]
            spatial = 3
    elif arr.ndim >= 4:
        extra = arr.shape[3:]
        arr = arr.reshape(*arr.shape[:3], int(np.prod(extra)))
        arr = np.moveaxis(arr, -1, 0)  # 4th+ dims are channels (time, modality, vector)
        if arr.shape[3] == 1:
            arr = arr[..., 0]
            spatial = 2
        else:
            spatial = 3
    else:
        raise DataError(path, f"NIfTI has unsupported shape {arr.shape}")
    geo = Geometry(affine=affine, format="nifti", spacing=zooms[:spatial])
    return np.ascontiguousarray(arr), geo


def write_nifti(
    path: str | os.PathLike[str], array: np.ndarray, *, geometry: Geometry | None = None
) -> Path:
    """Write ``array`` ``(*spatial)`` or ``(C, *spatial)`` as NIfTI atomically (``.nii`` or ``.nii.gz``).

    Args:
        path: destination; ``.gz`` suffix means gzip-compressed.
        array: 2D/3D spatial array, or channels-first (channels go to the 4th NIfTI axis).
        geometry: voxel-to-RAS geometry, e.g. from :func:`read_volume`; identity when ``None``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import nibabel as nib

    from .._io import atomic_write_bytes

    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 4 or (arr.ndim == 3 and geometry is not None and len(geometry.spacing) == 2):
        arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3:
            arr = arr[:, :, None, :]
    if arr.ndim == 2:
        arr = arr[:, :, None]  # 2D images are stored as (X, Y, 1)
    affine = np.eye(4) if geometry is None else geometry.affine
    data = nib.Nifti1Image(arr, affine).to_bytes()
    target = Path(path)
    if target.name.lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(target, data)
    return target


# --------------------------------------------------------------------------- NRRD

_NRRD_DOMAIN_KINDS = {"domain", "space", "time"}


def _read_nrrd(path: Path) -> tuple[np.ndarray, Geometry]:
    import nrrd

    try:
        _check_voxels(path, tuple(int(s) for s in nrrd.read_header(str(path)).get("sizes", ())))
        data, header = nrrd.read(str(path))
    except DataError:
        raise
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, EOFError...
        raise DataError(path, f"cannot read NRRD ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(data, dtype=np.float32)
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * arr.ndim)]
    channel_axes = [i for i, k in enumerate(kinds) if k not in _NRRD_DOMAIN_KINDS and k != "none"]
    if len(channel_axes) > 1:
        raise DataError(path, f"NRRD has more than one non-spatial axis (kinds {kinds})")
    if channel_axes:
        arr = np.moveaxis(arr, channel_axes[0], 0)
    else:
        arr = arr[None]
    spatial = arr.ndim - 1
    if spatial not in (2, 3):
        raise DataError(path, f"NRRD must be 2D or 3D (plus channels); got shape {data.shape}")
    affine = np.eye(4)
    spacing = [1.0] * spatial
    directions = header.get("space directions")
    if directions is not None:
        dirs = [np.asarray(d, dtype=np.float64) for d in directions]
        dirs = [d for d in dirs if d.ndim == 1 and np.all(np.isfinite(d))]
        if len(dirs) == spatial:
            dim = len(dirs[0])
            for a, d in enumerate(dirs):
                affine[:dim, a] = d
                spacing[a] = float(np.linalg.norm(d))
            origin = header.get("space origin")
            if origin is not None:
                affine[: len(origin), 3] = np.asarray(origin, dtype=np.float64)
            space = str(header.get("space", "")).lower()
            if space in ("left-posterior-superior", "lps"):
                affine = _LPS_TO_RAS @ affine
    return np.ascontiguousarray(arr), Geometry(affine=affine, format="nrrd", spacing=tuple(spacing))


# --------------------------------------------------------------------------- DICOM


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
    geo = Geometry(affine=_LPS_TO_RAS @ affine, format="dicom", spacing=spacing, extra={"modality": str(ds.get("Modality", ""))})
    return np.ascontiguousarray(arr), geo


def read_dicom_series(folder: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry, list[Any]]:
    """Read a folder holding one DICOM series as a volume.

    Slices are ordered by their position along the slice normal (``ImagePositionPatient`` projected
    on ``row x column`` cosines), falling back to ``InstanceNumber``; the file-system order never
    matters. Files that are not DICOM (e.g. ``DICOMDIR``-less junk such as ``.txt``) are skipped.

    Args:
        folder: directory with one ``.dcm`` file per slice (any file names).

    Returns:
        ``(array (1, D, rows, cols) float32 with rescale applied, geometry, datasets)`` where
        ``datasets`` are the sorted pydicom headers (pixel data released).

    Raises:
        DataError: no DICOM file, several series, inconsistent slice sizes, corrupt pixel data.
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
    rc, cc, _, (dr, dc) = _dicom_slice_affine(entries[0][1])
    normal = np.cross(rc, cc)

    def key(item: tuple[Path, Any]) -> tuple[float, float, str]:
        ds = item[1]
        ipp = ds.get("ImagePositionPatient")
        along = float(np.dot(normal, [float(v) for v in ipp])) if ipp is not None else 0.0
        return (along, float(ds.get("InstanceNumber", 0) or 0), item[0].name)

    entries.sort(key=key)
    slices = []
    for f, ds in entries:
        px = _dicom_pixels(ds, f)
        if px.ndim != 2:
            raise DataError(f, f"series slices must be single-frame grayscale; got pixel shape {px.shape}")
        if slices and px.shape != slices[0].shape:
            raise DataError(f, f"slice shape {px.shape} differs from the series' {slices[0].shape}")
        slices.append(px)
        if "PixelData" in ds:
            del ds.PixelData
    vol = np.stack(slices)[None]
    first = _dicom_slice_affine(entries[0][1])[2]
    last = _dicom_slice_affine(entries[-1][1])[2]
    n = len(entries)
    if n > 1 and np.linalg.norm(last - first) > 0:
        step = (last - first) / (n - 1)
    else:
        thick = float(entries[0][1].get("SliceThickness", 1.0) or 1.0)
        step = normal * thick
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = cc * dr
    affine[:3, 2] = rc * dc
    affine[:3, 3] = first
    geo = Geometry(
        affine=_LPS_TO_RAS @ affine,
        format="dicom",
        spacing=(float(np.linalg.norm(step)), dr, dc),
        extra={"modality": str(entries[0][1].get("Modality", "")), "slices": n},
    )
    return np.ascontiguousarray(vol), geo, [ds for _, ds in entries]


# --------------------------------------------------------------------------- public


def read_volume(path: str | os.PathLike[str]) -> tuple[np.ndarray, Geometry]:
    """Read any supported image file (or DICOM series folder) with its geometry.

    Args:
        path: PNG/JPG/BMP/TIFF, NPY, NIfTI (``.nii``/``.nii.gz``), DICOM file or series folder,
            NRRD (``.nrrd``/``.nhdr``).

    Returns:
        ``(array, geometry)``: ``array`` is ``(C, *spatial)`` float32 (C = channels: colour
        samples, NIfTI 4th axis, NRRD non-spatial axis; 1 otherwise), ``geometry`` a
        :class:`Geometry` (identity affine for PNG/NPY).

    Raises:
        DataError: missing, unreadable, truncated or non-finite file.

    Example:
        >>> arr, geo = read_volume("brain.nii.gz")  # doctest: +SKIP
        >>> arr.shape, geo.spacing                   # doctest: +SKIP
        ((1, 240, 240, 155), (1.0, 1.0, 1.0))
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
    else:
        arr, geo = _read_dicom_file(p)
    if arr.size == 0:
        raise DataError(p, f"image is empty (shape {arr.shape})")
    return _check_finite(arr, p), geo


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as a channels-first float32 array ``(C, *spatial)``.

    Same formats and errors as :func:`read_volume`, without the geometry.

    Example:
        >>> read_image("scan.png").shape  # doctest: +SKIP
        (1, 240, 240)
    """
    return read_volume(path)[0]
