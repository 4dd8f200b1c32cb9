"""Tri-planar views of a 3-D case: three orthogonal planes through the lesion, one row per method.

Index convention: volumes are ``(D, H, W)`` arrays in RAS index order ``(i, j, k)`` -> (towards the
patient's Right, Anterior, Superior): the order a canonical NIfTI reads in (``nibabel.as_closest_canonical``)
and the order of ``synthetic-brain-3d``. Planes are drawn in the **radiological convention**: on the
coronal and axial planes the patient's right is on the image's left; the sagittal plane shows anterior
on the left; superior (coronal, sagittal) and anterior (axial) point up. Each panel's title names the
plane and its index, e.g. ``axial k=23``.

The planes go through the lesion's centroid (:func:`lesion_centroid`, or ``point``); when a method's
map peaks elsewhere (:func:`map_peak`), a second row for that map shows the three planes through the peak
(``show_peaks=False`` leaves it out). Every panel holds a plane: no empty half-rows. Heatmaps on a coarser
grid are shown with nearest-neighbour upsampling (each cell a block, as the model sees it) on the fixed
× uniform colour scale of :mod:`dualattn.report.figures` (each voxel's value divided by the map's mean over
the volume; one colour bar per figure), so a uniform map is one colour. Panel titles number the planes
from 1 (``axial 20/28``: plane 20 of 28); the mask's contour is drawn on every plane.

Example:
    >>> import numpy as np
    >>> from dualattn.report.triplanar import lesion_centroid, map_peak, triplanar_png
    >>> vol = np.random.rand(4, 24, 24, 24); mask = np.zeros((24, 24, 24)); mask[4:9, 10:15, 6:11] = 1
    >>> lesion_centroid(mask)
    (6, 12, 8)
    >>> hm = np.zeros((6, 6, 6)); hm[1, 3, 2] = 1.0
    >>> map_peak(hm, (24, 24, 24))
    (6, 14, 10)
    >>> peak_in_slice(upsample_nearest(hm, (24, 24, 24)), axis=2, index=3)  # the flat plane k=3: its centre
    (11, 11, 3)
    >>> triplanar_png(vol, {"attention": hm}, mask=mask)[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import (
    CONTOUR_COLOR,
    HEATMAP_CMAP,
    MARKER_COLOR,
    UNIFORM_SCALE,
    _class_label,
    _uniform_norm,
    figure_to_png,
    times_uniform,
    uniform_colorbar,
)

__all__ = [
    "PLANES",
    "example_pngs",
    "is_volume_example",
    "lesion_centroid",
    "map_peak",
    "peak_in_slice",
    "reorient_to_ras",
    "triplanar_figure",
    "triplanar_png",
    "upsample_nearest",
]

logger = logging.getLogger(__name__)

#: The three planes, in column order: (name, fixed axis, index letter).
PLANES: tuple[tuple[str, int, str], ...] = (("sagittal", 0, "i"), ("coronal", 1, "j"), ("axial", 2, "k"))


def _as_3d(array: Any, *, name: str) -> np.ndarray:
    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (D, H, W) or (1, D, H, W); got shape {arr.shape}")
    return arr


def lesion_centroid(mask: Any) -> tuple[int, int, int]:
    """Voxel index nearest the centroid of a binary 3-D mask.

    Args:
        mask: ``(D, H, W)`` or ``(1, D, H, W)``; voxels > 0.5 are the lesion.

    Returns:
        ``(i, j, k)``: the mean index of the lesion's voxels along each axis, rounded half up.

    Raises:
        ValueError: not 3-D, or an empty mask.

    Example:
        >>> m = np.zeros((9, 9, 9)); m[2:5, 3:8, 0:1] = 1
        >>> lesion_centroid(m)
        (3, 5, 0)
    """
    m = _as_3d(mask, name="mask") > 0.5
    if not m.any():
        raise ValueError("mask is empty: a lesion centroid needs at least one voxel > 0.5")
    idx = np.argwhere(m).mean(axis=0)
    return tuple(int(np.floor(v + 0.5)) for v in idx)  # type: ignore[return-value]


def _central_argmax(values: np.ndarray) -> tuple[int, ...]:
    """Index of the maximum of ``values``; ties (cells within 1e-9 relative of the maximum) go to the one
    nearest the array's centre of mass (a flat map: its centre), then to the first in C order."""
    v = np.asarray(values, dtype=np.float64)
    top = float(v.max())
    ties = np.argwhere(v >= top - 1e-9 * max(abs(top), 1e-300))
    if len(ties) == 1:
        return tuple(int(a) for a in ties[0])
    w = v - min(float(v.min()), 0.0)
    total = float(w.sum())
    grids = np.indices(v.shape, dtype=np.float64)
    centre = (np.array([(g * w).sum() / total for g in grids]) if total > 0
              else (np.array(v.shape, dtype=np.float64) - 1) / 2)
    best = int(np.argmin(((ties - centre) ** 2).sum(axis=1)))
    return tuple(int(a) for a in ties[best])


def map_peak(heatmap: Any, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel of a ``shape`` volume at the centre of the heatmap's highest cell.

    Args:
        heatmap: ``(d, h, w)`` or ``(1, d, h, w)`` map on any grid (e.g. a gate's); ties: the highest cell
            nearest the map's centre of mass (a uniform map: its centre, not a corner), then the first in
            C order.
        shape: the volume's ``(D, H, W)``.

    Returns:
        ``(i, j, k)`` with ``i = floor((a + 0.5) * D / d)`` for the peak cell ``a`` (and likewise for
        ``j``, ``k``): the voxel holding the cell's centre.

    Raises:
        ValueError: a map that is not 3-D or not finite, or ``shape`` not three positive ints.

    Example:
        >>> map_peak(np.eye(2)[None].repeat(2, 0), (8, 8, 8))
        (2, 2, 2)
        >>> map_peak(np.ones((3, 3, 3)), (9, 9, 9))  # flat: the centre
        (4, 4, 4)
    """
    hm = _as_3d(heatmap, name="heatmap")
    if not np.isfinite(hm).all():
        raise ValueError("heatmap has NaN/Inf values")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (D, H, W); got {shape}")
    cell = _central_argmax(hm)
    return tuple(int(np.floor((a + 0.5) * s / n)) for a, s, n in zip(cell, shape, hm.shape))  # type: ignore[return-value]


def peak_in_slice(heatmap: Any, *, axis: int, index: int) -> tuple[int, int, int]:
    """The voxel where a map on the volume's grid peaks within one slice (the point a tri-planar view of that
    slice cuts through).

    Args:
        heatmap: ``(D, H, W)`` map on the volume's grid.
        axis: the axis the slice is cut along (0, 1 or 2).
        index: the slice's index along ``axis``.

    Returns:
        ``(i, j, k)`` with ``index`` on ``axis`` and, on the other two axes, the slice's highest voxel (ties:
        nearest the slice's centre of mass, as :func:`map_peak`).

    Raises:
        ValueError: a map that is not 3-D or not finite, an axis or index out of range.
    """
    hm = _as_3d(heatmap, name="heatmap")
    if not np.isfinite(hm).all():
        raise ValueError("heatmap has NaN/Inf values")
    if int(axis) not in (0, 1, 2) or not 0 <= int(index) < hm.shape[int(axis)]:
        raise ValueError(f"slice {index} along axis {axis} is outside a map of shape {hm.shape}")
    rest = list(_central_argmax(np.take(hm, int(index), axis=int(axis))))
    rest.insert(int(axis), int(index))
    return tuple(rest)  # type: ignore[return-value]


def upsample_nearest(heatmap: Any, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 3-D map to ``shape`` (voxel ``v`` takes cell ``floor((v + 0.5) * n / S)``).

    Example:
        >>> upsample_nearest(np.arange(2.0).reshape(2, 1, 1), (4, 1, 2))[:, 0, 0].tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    hm = _as_3d(heatmap, name="heatmap")
    idx = [np.minimum(((np.arange(s) + 0.5) * n / s).astype(int), n - 1) for s, n in zip(shape, hm.shape)]
    return hm[np.ix_(*idx)]


def reorient_to_ras(array: Any, affine: Any) -> np.ndarray:
    """Flip / permute the last three axes of ``array`` so that its indices run towards R, A, S.

    Args:
        array: ``(..., X, Y, Z)`` (e.g. ``(C, X, Y, Z)`` from ``dualattn.data.read_volume``).
        affine: the ``4 x 4`` voxel-to-RAS affine of those three axes (``Geometry.affine``).

    Returns:
        A view / copy in RAS index order (what :func:`triplanar_png` expects).

    Raises:
        ValueError: ``array`` with fewer than three axes or a ``4 x 4`` affine that is not one.

    Example:
        >>> lps = np.diag([-1.0, -1.0, 1.0, 1.0])
        >>> reorient_to_ras(np.arange(8.0).reshape(2, 2, 2), lps)[0, 0].tolist()
        [6.0, 7.0]
    """
    from nibabel.orientations import apply_orientation, io_orientation

    arr = np.asarray(array)
    aff = np.asarray(affine, dtype=np.float64)
    if arr.ndim < 3 or aff.shape != (4, 4):
        raise ValueError(f"need an array with >= 3 axes and a 4 x 4 affine; got {arr.shape} and {aff.shape}")
    ornt = io_orientation(aff)
    lead = arr.shape[:-3]
    flat = arr.reshape(-1, *arr.shape[-3:])
    out = np.stack([apply_orientation(v, ornt) for v in flat])
    return out.reshape(*lead, *out.shape[1:])


def _plane(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2-D plane to display (rows top->bottom, columns left->right) in the radiological convention."""
    sl = np.take(vol, index, axis=axis)  # sagittal (j, k), coronal (i, k), axial (i, j)
    # transpose: rows = the later axis (k, or j for axial), flipped so superior / anterior is up; columns
    # flipped: anterior (sagittal) or the patient's right (coronal, axial: high i) on the left
    return sl.T[::-1, ::-1]


def _norm01(a: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(a)), float(np.max(a))
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


#: The display aspect (pixel height / width) of each plane from the voxel spacing (i, j, k): sagittal shows
#: (k rows, j columns), coronal (k, i), axial (j, i).
def _aspects(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    sx, sy, sz = (float(v) for v in spacing)
    if min(sx, sy, sz) <= 0 or not all(np.isfinite((sx, sy, sz))):
        raise ValueError(f"spacing must be three positive numbers; got {tuple(spacing)}")
    return (sz / sy, sz / sx, sy / sx)


def triplanar_figure(
    volume: Any,
    heatmaps: Mapping[str, Any],
    *,
    mask: Any | None = None,
    point: Sequence[int] | None = None,
    channel: int = -1,
    alpha: float = 0.5,
    panel_inches: float = 1.6,
    show_peaks: bool = True,
    spacing: Sequence[float] | None = None,
    plane_notes: Mapping[int, str] | None = None,
    oriented: bool = True,
    colorbar: bool = True,
) -> Any:
    """The tri-planar figure (a ``matplotlib.figure.Figure`` on an Agg canvas); see :func:`triplanar_png`."""
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim == 4:
        if not -vol.shape[0] <= channel < vol.shape[0]:
            raise ValueError(f"channel={channel!r} out of range for a volume with {vol.shape[0]} channels")
        vol = vol[channel]
    if vol.ndim != 3:
        raise ValueError(f"volume must be (C, D, H, W) or (D, H, W); got shape {np.shape(volume)}")
    if not heatmaps:
        raise ValueError("heatmaps is empty: give at least one {name: (d, h, w) map}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    aspects = _aspects(spacing)
    shape = vol.shape
    m = None
    if mask is not None:
        m = _as_3d(mask, name="mask")
        if m.shape != shape:
            raise ValueError(f"mask shape {m.shape} differs from the volume's {shape}")
        m = (m > 0.5).astype(np.float64)
    if point is None:
        point = lesion_centroid(m) if m is not None and m.any() else tuple(s // 2 for s in shape)
    point = tuple(int(p) for p in point)
    if len(point) != 3 or any(not 0 <= p < s for p, s in zip(point, shape)):
        raise ValueError(f"point {point} must be three indices inside the volume {shape}")
    maps = {str(k): upsample_nearest(v, shape) for k, v in heatmaps.items()}
    peaks = {str(k): map_peak(v, shape) for k, v in heatmaps.items()}
    # one row per (map, point): the given point, then the map's peak where it lies elsewhere
    rows: list[tuple[str, tuple[int, ...], bool]] = []
    for name, hm in maps.items():
        rows.append((name, point, False))
        flat = float(hm.max()) - float(hm.min()) <= 1e-12 * max(abs(float(hm.max())), 1e-300)
        if show_peaks and peaks[name] != point and not flat:  # a constant map has no peak to show
            rows.append((name, peaks[name], True))
    img = _norm01(vol)
    ratios = {name: times_uniform(hm) for name, hm in maps.items()}

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bar_in = 0.75 if colorbar and any(r is not None for r in ratios.values()) else 0.0
    width = panel_inches * 3 + 0.35 + bar_in
    notes = dict(plane_notes or {})
    head = 0.45 + (0.15 if any(notes.values()) else 0.0)
    fig = Figure(figsize=(width, panel_inches * len(rows) + head), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    shown = None
    for r, (name, pt, is_peak) in enumerate(rows):
        hm, ratio = maps[name], ratios[name]
        for c, (plane, axis, letter) in enumerate(PLANES):
            ax = axes[r, c]
            ax.imshow(_plane(img, axis, pt[axis]), cmap="gray", interpolation="nearest", aspect=aspects[c])
            if ratio is not None:
                shown = ax.imshow(np.clip(_plane(ratio, axis, pt[axis]), *UNIFORM_SCALE), cmap=HEATMAP_CMAP,
                                  alpha=alpha, norm=_uniform_norm(), interpolation="nearest", aspect=aspects[c])
            else:  # no density: its own min-max, said on the panel
                ax.imshow(_plane(_norm01(hm), axis, pt[axis]), cmap=HEATMAP_CMAP, alpha=alpha, vmin=0, vmax=1,
                          interpolation="nearest", aspect=aspects[c])
                ax.text(0.98, 0.02, "min-max", color="white", fontsize=5, ha="right", transform=ax.transAxes)
            if m is not None:
                pm = _plane(m, axis, pt[axis])
                if pm.any() and pm.min() < 1:
                    ax.contour(pm, levels=[0.5], colors=CONTOUR_COLOR, linewidths=0.8)
            # where the other two planes cross this one (the point, in display coordinates)
            others = [a for a in range(3) if a != axis]
            rr = shape[others[1]] - 1 - pt[others[1]]
            cc = shape[others[0]] - 1 - pt[others[0]]
            ax.plot([cc], [rr], marker="+", markersize=7, markeredgewidth=1.0, color=MARKER_COLOR)
            title = f"{plane} {pt[axis] + 1}/{shape[axis]}" + (" (peak)" if is_peak else "")
            if notes.get(axis):
                title += f"\n{notes[axis]}"
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if oriented:
                ax.text(0.02, 0.02, "A" if axis == 0 else "R", color="white", fontsize=6, transform=ax.transAxes)
            if c == 0:
                ax.set_ylabel(name + ("\n(its peak)" if is_peak else ""), fontsize=8)
    right = 1.0 - bar_in / width
    fig.subplots_adjust(left=0.35 / width, right=right - 0.01, top=1 - head / fig.get_figheight(), bottom=0.02,
                        wspace=0.05, hspace=0.3)
    if bar_in and shown is not None:
        cax = fig.add_axes((right + 0.12 * bar_in / width, 0.12, 0.15 * bar_in / width, 0.7))
        uniform_colorbar(fig, cax, shown, fontsize=5.5, label="× uniform")
    fig.suptitle("radiological convention: patient's right on the image's left" if oriented else
                 "drawn as stored: the file records no patient orientation", fontsize=7)
    return fig


def triplanar_png(
    volume: Any,
    heatmaps: Mapping[str, Any],
    *,
    mask: Any | None = None,
    point: Sequence[int] | None = None,
    channel: int = -1,
    alpha: float = 0.5,
    show_peaks: bool = True,
    spacing: Sequence[float] | None = None,
    plane_notes: Mapping[int, str] | None = None,
    oriented: bool = True,
) -> bytes:
    """PNG of three orthogonal planes through the lesion (and through each map's peak), one row per map and point.

    Args:
        volume: ``(C, D, H, W)`` (``channel`` is shown; default the last, FLAIR in BraTS order) or
            ``(D, H, W)``, RAS index order (module docstring).
        heatmaps: method name -> ``(d, h, w)`` map (any grid dividing the volume or not: nearest upsampling).
        mask: optional ``(D, H, W)`` / ``(1, D, H, W)`` lesion mask; its contour is drawn on every plane.
        point: the planes' ``(i, j, k)``; default :func:`lesion_centroid` of ``mask``, else the centre voxel.
            A cross marks it on every plane.
        channel: the volume channel shown.
        alpha: heatmap opacity.
        show_peaks: add a row through a map's peak where it is not ``point``.
        spacing: voxel size along ``(i, j, k)`` (e.g. ``Geometry.spacing``), so planes keep their proportions.
        plane_notes: axis -> a second title line for that plane (e.g. a DICOM instance number).
        oriented: the volume is RAS (letters and the radiological caption); ``False``: drawn as stored.

    Returns:
        PNG bytes: 3 columns (sagittal, coronal, axial); one row per map through ``point`` and, with
        ``show_peaks``, one more for each map whose peak lies elsewhere.

    Raises:
        ValueError: bad shapes, an empty ``heatmaps``, a point outside the volume, ``alpha`` outside [0, 1],
            a bad ``spacing``.
    """
    return figure_to_png(triplanar_figure(volume, heatmaps, mask=mask, point=point, channel=channel, alpha=alpha,
                                          show_peaks=show_peaks, spacing=spacing, plane_notes=plane_notes,
                                          oriented=oriented))


def is_volume_example(example: Mapping[str, Any]) -> bool:
    """Whether a report example (``image`` ``(C, *S)``, as ``examples.npz`` stores it) is a 3-D volume.

    Example:
        >>> is_volume_example({"image": np.zeros((4, 8, 8, 8))}), is_volume_example({"image": np.zeros((4, 8, 8))})
        (True, False)
    """
    return np.ndim(example.get("image")) == 4


def example_pngs(
    examples: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str] | None = None,
    max_rows: int = 8,
    class_names: Sequence[str] | None = None,
) -> list[tuple[str, bytes]]:
    """Tri-planar PNGs of the report's 3-D examples (the form :func:`dualattn.report.figures.example_grid_png` takes).

    Args:
        examples: mappings with ``image`` ``(C, D, H, W)``, optional ``mask`` ``(1, D, H, W)``, ``maps``
            (method -> ``(d, h, w)``), optional ``id``, ``label``, ``pred``.
        methods: row order; default each example's maps in their order.
        max_rows: methods per figure (an example with more maps gets several figures).
        class_names: names of the classes, for the captions (``label`` and ``pred`` are class indices).

    Returns:
        ``[(caption, png), ...]``: per example, per chunk of at most ``max_rows`` methods; the caption
        names the example, its label / prediction and the planes' point.

    Raises:
        ValueError: ``max_rows < 1``; an example that is not 3-D.
    """
    if int(max_rows) < 1:
        raise ValueError(f"max_rows must be >= 1; got {max_rows!r}")
    out: list[tuple[str, bytes]] = []
    for r, ex in enumerate(examples):
        if not is_volume_example(ex):
            raise ValueError(f"example {r} is not a 3-D volume: image shape {np.shape(ex.get('image'))}")
        maps = dict(ex.get("maps") or {})
        names = [m for m in (methods if methods is not None else list(maps)) if m in maps]
        if not names:
            continue
        mask = ex.get("mask")
        has_lesion = mask is not None and bool((np.asarray(mask) > 0.5).any())
        point = lesion_centroid(mask) if has_lesion else None
        bits = [str(ex.get("id", f"#{r}"))]
        if ex.get("label") is not None:
            bits.append(f"y={_class_label(ex['label'], class_names)}")
        if ex.get("pred") is not None:
            bits.append(f"ŷ={_class_label(ex['pred'], class_names)}")
        where = f"lesion centroid (i, j, k) = {point}" if point is not None else "centre of the volume (no lesion mask)"
        for start in range(0, len(names), int(max_rows)):
            chunk = names[start : start + int(max_rows)]
            png = triplanar_png(ex["image"], {m: maps[m] for m in chunk}, mask=mask if has_lesion else None)
            out.append((f"{', '.join(bits)}: planes through the {where}", png))
    return out
