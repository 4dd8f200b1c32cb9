"""Tri-planar views of a 3-D case: three orthogonal planes through the lesion, one row per method.

Index convention: volumes are ``(D, H, W)`` arrays in RAS index order ``(i, j, k)`` -> (towards the
patient's Right, Anterior, Superior): the order a canonical NIfTI reads in (``nibabel.as_closest_canonical``)
and the order of ``synthetic-brain-3d``. Planes are drawn in the **radiological convention**: on the
coronal and axial planes the patient's right is on the image's left; the sagittal plane shows anterior
on the left; superior (coronal, sagittal) and anterior (axial) point up. Each panel's title names the
plane and its index, e.g. ``axial k=23``.

The planes go through the lesion's centroid (:func:`lesion_centroid`, or ``point``); when a method's
map peaks elsewhere (:func:`map_peak`), its row adds the three planes through the peak. Heatmaps on a
coarser grid are shown with nearest-neighbour upsampling (each cell a block, as the model sees it) and
min-max scaled per map; the mask's contour is drawn on every plane.

Example:
    >>> import numpy as np
    >>> from dualattn.report.triplanar import lesion_centroid, map_peak, triplanar_png
    >>> vol = np.random.rand(4, 24, 24, 24); mask = np.zeros((24, 24, 24)); mask[4:9, 10:15, 6:11] = 1
    >>> lesion_centroid(mask)
    (6, 12, 8)
    >>> hm = np.zeros((6, 6, 6)); hm[1, 3, 2] = 1.0
    >>> map_peak(hm, (24, 24, 24))
    (6, 14, 10)
    >>> triplanar_png(vol, {"attention": hm}, mask=mask)[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from .figures import CONTOUR_COLOR, HEATMAP_CMAP, figure_to_png

__all__ = [
    "PLANES",
    "example_pngs",
    "is_volume_example",
    "lesion_centroid",
    "map_peak",
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


def map_peak(heatmap: Any, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel of a ``shape`` volume at the centre of the heatmap's highest cell.

    Args:
        heatmap: ``(d, h, w)`` or ``(1, d, h, w)`` map on any grid (e.g. a gate's); ties: the first
            maximum in C order.
        shape: the volume's ``(D, H, W)``.

    Returns:
        ``(i, j, k)`` with ``i = floor((a + 0.5) * D / d)`` for the peak cell ``a`` (and likewise for
        ``j``, ``k``): the voxel holding the cell's centre.

    Raises:
        ValueError: a map that is not 3-D or not finite, or ``shape`` not three positive ints.

    Example:
        >>> map_peak(np.eye(2)[None].repeat(2, 0), (8, 8, 8))
        (2, 2, 2)
    """
    hm = _as_3d(heatmap, name="heatmap")
    if not np.isfinite(hm).all():
        raise ValueError("heatmap has NaN/Inf values")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive ints (D, H, W); got {shape}")
    cell = np.unravel_index(int(np.argmax(hm)), hm.shape)
    return tuple(int(np.floor((a + 0.5) * s / n)) for a, s, n in zip(cell, shape, hm.shape))  # type: ignore[return-value]


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


def triplanar_figure(
    volume: Any,
    heatmaps: Mapping[str, Any],
    *,
    mask: Any | None = None,
    point: Sequence[int] | None = None,
    channel: int = -1,
    alpha: float = 0.5,
    panel_inches: float = 1.6,
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
    peaks = {k: map_peak(v, shape) for k, v in heatmaps.items()}
    peaks = {str(k): p for k, p in peaks.items()}
    any_off = any(p != point for p in peaks.values())
    ncols = 6 if any_off else 3
    img = _norm01(vol)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_inches * ncols, panel_inches * len(maps) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(maps), ncols, squeeze=False)
    for r, (name, hm) in enumerate(maps.items()):
        hm01 = _norm01(hm)
        sets = [(point, "lesion")] + ([(peaks[name], "peak")] if any_off else [])
        for s, (pt, tag) in enumerate(sets):
            if tag == "peak" and pt == point:
                for c in range(3):
                    ax = axes[r, 3 + c]
                    ax.set_axis_off()
                ax = axes[r, 4]
                ax.text(0.5, 0.5, "peak at the lesion centroid", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes)
                continue
            for c, (plane, axis, letter) in enumerate(PLANES):
                ax = axes[r, 3 * s + c]
                ax.imshow(_plane(img, axis, pt[axis]), cmap="gray", interpolation="nearest")
                ax.imshow(_plane(hm01, axis, pt[axis]), cmap=HEATMAP_CMAP, alpha=alpha, vmin=0, vmax=1,
                          interpolation="nearest")
                if m is not None:
                    pm = _plane(m, axis, pt[axis])
                    if pm.any() and pm.min() < 1:
                        ax.contour(pm, levels=[0.5], colors=CONTOUR_COLOR, linewidths=0.8)
                ax.set_title(f"{plane} {letter}={pt[axis]}" + (" (peak)" if tag == "peak" else ""), fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(0.02, 0.02, "A" if axis == 0 else "R", color="white", fontsize=6, transform=ax.transAxes)
                if c == 0 and s == 0:
                    ax.set_ylabel(name, fontsize=8)
    fig.suptitle("radiological convention: patient's right on the image's left", fontsize=7)
    return fig


def triplanar_png(
    volume: Any,
    heatmaps: Mapping[str, Any],
    *,
    mask: Any | None = None,
    point: Sequence[int] | None = None,
    channel: int = -1,
    alpha: float = 0.5,
) -> bytes:
    """PNG of three orthogonal planes through the lesion (and through each map's peak), one row per method.

    Args:
        volume: ``(C, D, H, W)`` (``channel`` is shown; default the last, FLAIR in BraTS order) or
            ``(D, H, W)``, RAS index order (module docstring).
        heatmaps: method name -> ``(d, h, w)`` map (any grid dividing the volume or not: nearest upsampling).
        mask: optional ``(D, H, W)`` / ``(1, D, H, W)`` lesion mask; its contour is drawn on every plane.
        point: the planes' ``(i, j, k)``; default :func:`lesion_centroid` of ``mask``, else the centre voxel.
        channel: the volume channel shown.
        alpha: heatmap opacity.

    Returns:
        PNG bytes: ``len(heatmaps)`` rows; 3 columns (sagittal, coronal, axial through ``point``), or 6
        when some map peaks elsewhere (the three planes through that map's peak on its row).

    Raises:
        ValueError: bad shapes, an empty ``heatmaps``, a point outside the volume, ``alpha`` outside [0, 1].
    """
    return figure_to_png(triplanar_figure(volume, heatmaps, mask=mask, point=point, channel=channel, alpha=alpha))


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
) -> list[tuple[str, bytes]]:
    """Tri-planar PNGs of the report's 3-D examples (the form :func:`dualattn.report.figures.example_grid_png` takes).

    Args:
        examples: mappings with ``image`` ``(C, D, H, W)``, optional ``mask`` ``(1, D, H, W)``, ``maps``
            (method -> ``(d, h, w)``), optional ``id``, ``label``, ``pred``.
        methods: row order; default each example's maps in their order.
        max_rows: methods per figure (an example with more maps gets several figures).

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
            bits.append(f"y={ex['label']}")
        if ex.get("pred") is not None:
            bits.append(f"ŷ={ex['pred']}")
        where = f"lesion centroid (i, j, k) = {point}" if point is not None else "centre of the volume (no lesion mask)"
        for start in range(0, len(names), int(max_rows)):
            chunk = names[start : start + int(max_rows)]
            png = triplanar_png(ex["image"], {m: maps[m] for m in chunk}, mask=mask if has_lesion else None)
            out.append((f"{', '.join(bits)}: planes through the {where}", png))
    return out
