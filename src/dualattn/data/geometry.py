"""Where an array's voxels lie: :class:`Geometry`, the one orientation convention, the radiological view.

Axis convention (one for every format :func:`dualattn.data.read_volume` reads):

- **Volumes with a known patient orientation** (NIfTI, NRRD with space directions, DICOM series and
  multi-frame DICOM) are returned as ``(C, X, Y, Z)`` in *closest canonical RAS* order, as nibabel's
  ``as_closest_canonical`` gives: the index along axis 0 grows towards the patient's right (R),
  along axis 1 towards anterior (A), along axis 2 towards superior (S) (each axis is the file's
  voxel axis nearest to that direction; oblique volumes are not resampled). ``Geometry.oriented`` is
  ``True``, ``Geometry.affine`` maps these indices to RAS millimetres, and ``Geometry.slice_axis``
  names the array axis along which the file's 2-D slices lie.
- **2-D images** (PNG/JPG/BMP/TIFF, single-frame DICOM) are ``(C, rows, columns)`` as displayed;
  NPY arrays are taken as stored. Their orientation is unknown to the reader (``Geometry.oriented`` is
  ``False``); a single DICOM image records the patient directions of its rows and columns
  (``Geometry.extra["image_orientation"]``, :func:`edge_labels_from_cosines`).
- The file's own voxel grid is kept in the :class:`Geometry` (``source_affine``, ``source_shape``,
  ``source_ornt``): :meth:`Geometry.to_source_grid` puts a map computed on the returned array back
  voxel-for-voxel on the input file's grid.

:func:`radiological_view` turns a slice of a canonical volume into the radiological display orientation
(patient's right on the image's left; anterior, or superior, up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Geometry", "PLANE_NAMES", "edge_labels_from_cosines", "from_radiological_view", "radiological_view"]

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


def _identity_geometry(ndim: int, fmt: str) -> Geometry:
    return Geometry(affine=np.eye(4), format=fmt, spacing=(1.0,) * ndim)


#: The patient direction each LPS axis grows towards, and the opposite one (DICOM's patient coordinates).
_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def _direction_letters(vector: Sequence[float], *, min_share: float = 0.2) -> str:
    """The patient directions (LPS) a unit vector points to, strongest first, e.g. ``"PS"`` for a tilted axis."""
    v = np.asarray(vector, dtype=np.float64)
    order = np.argsort(-np.abs(v))
    return "".join(_LPS_LETTERS[a][0 if v[a] > 0 else 1] for a in order if abs(v[a]) >= min_share) or "?"


def edge_labels_from_cosines(row_cosine: Sequence[float], column_cosine: Sequence[float]) -> tuple[str, str, str, str]:
    """Orientation letters (top, bottom, left, right) of a DICOM image drawn as stored.

    DICOM's ``ImageOrientationPatient`` gives, in the patient's LPS coordinates, the direction in which the
    column index grows (``row_cosine``: along a row, to the image's right) and the one in which the row
    index grows (``column_cosine``: down a column). An oblique direction gets the letters of every axis
    it leans into by at least 0.2 (about 12 degrees), strongest first, as viewers write them.

    Args:
        row_cosine: the first three values of ``ImageOrientationPatient``.
        column_cosine: the last three.

    Returns:
        ``(top, bottom, left, right)``, e.g. ``("A", "P", "R", "L")`` for a standard axial image.

    Example:
        >>> edge_labels_from_cosines([1, 0, 0], [0, 1, 0])  # axial, as scanners store it
        ('A', 'P', 'R', 'L')
        >>> edge_labels_from_cosines([0, 1, 0], [0, 0, -1])  # sagittal
        ('S', 'I', 'A', 'P')
    """
    rc = np.asarray(row_cosine, dtype=np.float64)
    cc = np.asarray(column_cosine, dtype=np.float64)
    if rc.shape != (3,) or cc.shape != (3,) or not (np.all(np.isfinite(rc)) and np.all(np.isfinite(cc))):
        raise ValueError(f"direction cosines must be two finite 3-vectors; got {rc.tolist()} and {cc.tolist()}")
    return (_direction_letters(-cc), _direction_letters(cc), _direction_letters(-rc), _direction_letters(rc))
