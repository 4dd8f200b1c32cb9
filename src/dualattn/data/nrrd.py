"""NRRD: reading, oriented when the header gives patient-space directions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .geometry import _LPS_TO_RAS, Geometry, _oriented_geometry
from .nifti import _thick_axis

__all__: list[str] = []

_NRRD_DOMAIN_KINDS = {"domain", "space", "time"}
_NRRD_PATIENT_SPACES = {"left-posterior-superior", "lps", "right-anterior-superior", "ras"}


def _read_nrrd(path: Path) -> tuple[np.ndarray, Geometry]:
    import nrrd

    from . import readers as _readers  # the voxel limit, a knob users set there

    try:
        _readers._check_voxels(path, tuple(int(s) for s in nrrd.read_header(str(path)).get("sizes", ())))
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
