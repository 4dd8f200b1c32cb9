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

:func:`read_dicom_series` is the lower-level stacking reader (``(1, slices, rows, columns)`` with the
sorted headers); :func:`read_volume` reorients its output like any other volume.
:func:`radiological_view` turns a slice of a canonical volume into the radiological display
orientation (patient's right on the image's left; anterior, or superior, up).
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
    "radiological_view",
    "from_radiological_view",
    "PLANE_NAMES",
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


#: Name of the plane cut perpendicular to each canonical RAS axis (``slice_axis`` 0, 1, 2).
PLANE_NAMES: tuple[str, str, str] = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class Geometry:
    """Where an array's voxels lie in space, and how to go back to the file's own voxel grid.

    Attributes:
        affine: ``(4, 4)`` float64 matrix mapping ``(i, j, k, 1)`` spatial indices of the returned
            array (channel axis excluded; 2D arrays use ``k = 0``) to RAS millimetres.
        format: the reader that produced it (``"nifti"``, ``"dicom"``, ``"nrrd"``, ``"png"``,
            ``"npy"``).
        spacing: voxel size along each spatial axis of the returned array, in mm.
        extra: small format-specific details (never patient identifiers).
        oriented: the spatial axes are closest-canonical RAS (see the module docstring); ``False`` for
            images whose orientation the file does not record (PNG, NPY, a single DICOM image).
        slice_axis: the spatial axis of the returned array along which the file's 2-D slices lie
            (``None`` for 2-D images).
        source_affine: the file's own voxel-to-RAS affine (``None`` when the array is the file's grid).
        source_shape: the file's own spatial shape (``None`` likewise).
        source_ornt: per axis of the file's grid, ``(axis of the returned array, +1 or -1 for a flip)``
            (nibabel's ``io_orientation``); ``None`` when the array is the file's grid.
    """

    affine: np.ndarray
    format: str
    spacing: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    oriented: bool = False
    slice_axis: int | None = None
    source_affine: np.ndarray | None = None
    source_shape: tuple[int, ...] | None = None
    source_ornt: tuple[tuple[int, int], ...] | None = None

    def to_source_grid(self, array: np.ndarray) -> np.ndarray:
        """Put ``array`` (``(*spatial)`` or ``(C, *spatial)`` on the returned grid) on the file's own grid.

        The inverse of the reader's reorientation: axes permuted and flipped back, and a 2-D slice
        stored as ``(X, Y, 1)`` gets its singleton axis back. Identity when nothing was reoriented.

        Args:
            array: spatial shape equal to the array :func:`read_volume` returned.

        Returns:
            The same values on the file's grid (a view when possible), spatial shape ``source_shape``.

        Raises:
            ValueError: if ``array``'s spatial shape does not match this geometry.

        Example:
            >>> import numpy as np
            >>> g = Geometry(np.eye(4), "nifti", (1.0, 1.0, 1.0), source_shape=(2, 3, 4),
            ...              source_ornt=((1, 1), (2, -1), (0, 1)))
            >>> g.to_source_grid(np.zeros((4, 2, 3))).shape
            (2, 3, 4)
        """
        arr = np.asarray(array)
        if self.source_ornt is None or self.source_shape is None:
            return arr
        n = len(self.source_ornt)
        canon_shape = [0] * n
        for i, (a, _f) in enumerate(self.source_ornt):
            canon_shape[a] = self.source_shape[i]
        squeezed = [a for a in range(n) if canon_shape[a] == 1]
        lead: tuple[int, ...] = ()
        if arr.shape[-n:] == tuple(canon_shape) and arr.ndim in (n, n + 1):
            lead = arr.shape[:-n]
        elif squeezed and arr.ndim in (n - 1, n) and arr.shape[arr.ndim - (n - 1):] == tuple(
                s for a, s in enumerate(canon_shape) if a != squeezed[0]):
            lead = arr.shape[: arr.ndim - (n - 1)]
            arr = np.expand_dims(arr, len(lead) + squeezed[0])
        else:
            raise ValueError(f"array of shape {arr.shape} does not match this geometry (returned grid "
                             f"{tuple(canon_shape)}, file grid {self.source_shape})")
        k = len(lead)
        arr = arr.transpose(*range(k), *(k + a for a, _f in self.source_ornt))
        for i, (_a, f) in enumerate(self.source_ornt):
            if f < 0:
                arr = np.flip(arr, k + i)
        return arr

    def source_index(self, axis: int, index: int) -> tuple[int, int]:
        """Where slice ``index`` along ``axis`` of the returned array lies in the file's grid.

        Returns:
            ``(axis of the file's grid, index along it)``; ``(axis, index)`` unchanged when the array
            is the file's grid.

        Example:
            >>> import numpy as np
            >>> g = Geometry(np.eye(4), "nifti", (1.0, 1.0, 1.0), source_shape=(2, 3, 4),
            ...              source_ornt=((1, 1), (2, -1), (0, 1)))
            >>> g.source_index(2, 0)  # the file's axis 1 is flipped: its last slice comes first
            (1, 2)
        """
        if self.source_ornt is None or self.source_shape is None:
            return int(axis), int(index)
        for i, (a, f) in enumerate(self.source_ornt):
            if a == axis:
                return i, (int(index) if f > 0 else self.source_shape[i] - 1 - int(index))
        raise ValueError(f"axis {axis} is not a spatial axis of this geometry")


def radiological_view(plane: np.ndarray) -> np.ndarray:
    """A slice of a canonical RAS volume in the radiological display orientation.

    ``plane`` is the 2-D cut ``volume[..., k, ...]`` keeping the other two RAS axes in increasing order
    (axial: ``(X, Y)``; coronal: ``(X, Z)``; sagittal: ``(Y, Z)``). The result is ``plane.T[::-1, ::-1]``:
    axial slices with the patient's right on the image's left and anterior up, coronal slices with the
    right on the left and superior up, sagittal slices with anterior on the left and superior up.
    Channels-first planes ``(C, a, b)`` are turned per channel.

    Example:
        >>> import numpy as np
        >>> axial = np.zeros((3, 2)); axial[2, 1] = 1  # most right (X), most anterior (Y)
        >>> np.argwhere(radiological_view(axial)).tolist()  # top row (anterior), left column (right)
        [[0, 0]]
    """
    arr = np.asarray(plane)
    return np.swapaxes(arr, -1, -2)[..., ::-1, ::-1]


def from_radiological_view(image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`radiological_view`: a display-oriented image back to the plane's axis order.

    Example:
        >>> import numpy as np
        >>> x = np.arange(6).reshape(3, 2)
        >>> bool((from_radiological_view(radiological_view(x)) == x).all())
        True
    """
    arr = np.asarray(image)
    return np.swapaxes(arr[..., ::-1, ::-1], -1, -2)


def _canonicalize(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Reorient ``arr`` ``(C, a, b, c)`` with voxel-to-RAS ``affine`` to closest canonical RAS.

    Returns ``(array (C, X, Y, Z), canonical affine, ornt)`` with ``ornt`` as :attr:`Geometry.source_ornt`.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    spatial = arr.shape[1:]
    out = np.stack([apply_orientation(c, ornt) for c in arr])
    new_affine = affine @ inv_ornt_aff(ornt, spatial)
    return (np.ascontiguousarray(out), np.asarray(new_affine, dtype=np.float64),
            tuple((int(a), int(f)) for a, f in ornt))


def _oriented_geometry(arr: np.ndarray, affine: np.ndarray, fmt: str, *, source_slice_axis: int | str | None,
                       extra: dict[str, Any], squeeze_axis: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Canonicalize ``arr`` ``(C, a, b, c)`` and build its :class:`Geometry` (see the module docstring).

    ``source_slice_axis``: the file's slice axis, ``"axial"`` for the file axis nearest to S-I, or ``None``.
    ``squeeze_axis``: a file axis of length 1 to drop after reorienting (a 2-D image stored as ``(X, Y, 1)``).
    """
    source_shape = tuple(int(s) for s in arr.shape[1:])
    lin = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(lin)) or abs(float(np.linalg.det(lin))) < 1e-12:
        # no usable orientation: keep the file's grid, say so
        spacing = tuple(float(np.linalg.norm(lin[:, a])) or 1.0 for a in range(3))
        if squeeze_axis is not None:
            arr = np.take(arr, 0, axis=1 + squeeze_axis)
            spacing = tuple(v for a, v in enumerate(spacing) if a != squeeze_axis)
        axis = None
        if squeeze_axis is None:
            axis = 2 if source_slice_axis in (None, "axial") else int(source_slice_axis)
        return np.ascontiguousarray(arr), Geometry(affine=np.eye(4), format=fmt, spacing=spacing,
                                                   extra={**extra, "orientation": "unknown (singular affine)"},
                                                   slice_axis=axis)
    can, can_affine, ornt = _canonicalize(arr, affine)
    spacing = tuple(float(np.linalg.norm(can_affine[:3, a])) for a in range(3))
    if source_slice_axis == "axial":
        source_slice_axis = next(i for i, (a, _f) in enumerate(ornt) if a == 2)
    slice_axis = None if source_slice_axis is None else ornt[int(source_slice_axis)][0]
    if squeeze_axis is not None:
        single = ornt[squeeze_axis][0]
        keep = [a for a in range(3) if a != single]
        can = np.take(can, 0, axis=1 + single)
        new_affine = np.eye(4)
        new_affine[:3, 0] = can_affine[:3, keep[0]]
        new_affine[:3, 1] = can_affine[:3, keep[1]]
        new_affine[:3, 2] = can_affine[:3, single]
        new_affine[:3, 3] = can_affine[:3, 3]
        can_affine = new_affine
        spacing = tuple(spacing[a] for a in keep)
        slice_axis = None
    geo = Geometry(affine=can_affine, format=fmt, spacing=spacing, extra=extra, oriented=True,
                   slice_axis=slice_axis, source_affine=np.asarray(affine, dtype=np.float64),
                   source_shape=source_shape, source_ornt=ornt)
    return np.ascontiguousarray(can), geo


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
    affine = np.asarray(img.affine, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim == 3:
        arr = arr[None]
    elif arr.ndim >= 4:
        extra_dims = arr.shape[3:]
        arr = arr.reshape(*arr.shape[:3], int(np.prod(extra_dims)))
        arr = np.moveaxis(arr, -1, 0)  # 4th+ dims are channels (time, modality, vector)
    else:
        raise DataError(path, f"NIfTI has unsupported shape {arr.shape}")
    if arr.shape[3] == 1:  # a 2D image stored as (X, Y, 1)
        return _oriented_geometry(arr, affine, "nifti", source_slice_axis=None, extra={}, squeeze_axis=2)
    axis, why = _nifti_slice_axis(img)
    return _oriented_geometry(arr, affine, "nifti", source_slice_axis=axis, extra={"slice_axis_from": why})


def _nifti_slice_axis(img: Any) -> tuple[int | str, str]:
    """The file axis the NIfTI was acquired along, and why (see :func:`read_volume`)."""
    try:
        slice_dim = img.header.get_dim_info()[2]
    except Exception:  # noqa: BLE001 - analyze/MINC headers have no dim_info
        slice_dim = None
    if slice_dim is not None and 0 <= int(slice_dim) < 3:
        return int(slice_dim), "the header's slice dimension (dim_info)"
    return _thick_axis([float(z) for z in img.header.get_zooms()[:3]])


#: A file axis counts as the slice axis by spacing when its voxels are this much thicker than the next.
THICK_SLICE_RATIO = 1.2


def _thick_axis(zooms: Any) -> tuple[int | str, str]:
    """The axis with clearly the largest spacing, else ``"axial"`` (the file axis nearest to S-I)."""
    z = [abs(float(v)) for v in zooms]
    order = sorted(range(3), key=lambda a: z[a], reverse=True)
    if z[order[0]] > THICK_SLICE_RATIO * z[order[1]]:
        return order[0], "the axis with the largest voxel spacing"
    return "axial", "the axis nearest to superior-inferior (no slice dimension in the header, no thick slices)"


def write_nifti(
    path: str | os.PathLike[str], array: np.ndarray, *, geometry: Geometry | None = None
) -> Path:
    """Write ``array`` ``(*spatial)`` or ``(C, *spatial)`` as NIfTI atomically (``.nii`` or ``.nii.gz``).

    With the :class:`Geometry` of :func:`read_volume`, ``array`` lies on the grid the reader returned and
    is written on the input file's own grid (:meth:`Geometry.to_source_grid`, the file's affine): the
    result overlays the input voxel for voxel in any viewer.

    Args:
        path: destination; ``.gz`` suffix means gzip-compressed.
        array: 2D/3D spatial array, or channels-first (channels go to the 4th NIfTI axis).
        geometry: voxel-to-RAS geometry, e.g. from :func:`read_volume`; identity when ``None``.

    Example:
        >>> arr, geo = read_volume("brain.nii.gz")          # doctest: +SKIP
        >>> write_nifti("map.nii.gz", arr[0] > 0, geometry=geo)  # same grid as brain.nii.gz  # doctest: +SKIP

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    import nibabel as nib

    from .._io import atomic_write_bytes

    arr = np.asarray(array, dtype=np.float32)
    if geometry is not None and geometry.source_ornt is not None and geometry.source_affine is not None:
        arr = np.asarray(geometry.to_source_grid(arr), dtype=np.float32)  # the input file's own grid
        if arr.ndim == 4:
            arr = np.moveaxis(arr, 0, -1)
        affine = geometry.source_affine
    else:
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
_NRRD_PATIENT_SPACES = {"left-posterior-superior", "lps", "right-anterior-superior", "ras"}


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
            if spatial == 3 and space in _NRRD_PATIENT_SPACES:
                axis, why = _thick_axis(spacing)
                return _oriented_geometry(arr, affine, "nrrd", source_slice_axis=axis,
                                          extra={"slice_axis_from": why})
    return np.ascontiguousarray(arr), Geometry(affine=affine, format="nrrd", spacing=tuple(spacing),
                                               slice_axis=0 if spatial == 3 else None)


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
        if ds.get("ImageOrientationPatient") is not None:
            return _oriented_geometry(arr, _LPS_TO_RAS @ affine, "dicom", source_slice_axis=0,
                                      extra={"modality": str(ds.get("Modality", "")), "slices": int(arr.shape[1])})
    geo = Geometry(affine=_LPS_TO_RAS @ affine, format="dicom", spacing=spacing,
                   extra={"modality": str(ds.get("Modality", ""))}, slice_axis=0 if arr.ndim == 4 else None)
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


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as a channels-first float32 array ``(C, *spatial)``.

    Same formats and errors as :func:`read_volume`, without the geometry.

    Example:
        >>> read_image("scan.png").shape  # doctest: +SKIP
        (1, 240, 240)
    """
    return read_volume(path)[0]
