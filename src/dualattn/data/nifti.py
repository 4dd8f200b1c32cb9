"""NIfTI: reading (with the slice axis the file was acquired along) and writing maps back on a file's grid."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .geometry import Geometry, _oriented_geometry

__all__ = ["THICK_SLICE_RATIO", "write_nifti"]


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    from . import readers as _readers  # the voxel limit, a knob users set there

    try:
        img = nib.load(str(path))
        kind = np.dtype(img.get_data_dtype()).kind
        if kind not in "biuf":  # complex would be cast silently, dropping the imaginary part; RGB is structured
            raise DataError(path, f"NIfTI data type {img.get_data_dtype()} is not a real-valued number type")
        _readers._check_voxels(path, tuple(img.shape))
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
