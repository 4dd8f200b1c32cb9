"""Report figures: heatmap overlays with the ground-truth contour, perturbation curves.

Every figure is drawn with matplotlib's non-interactive Agg canvas (no display, no global
``pyplot`` state) and returned as PNG bytes, so the HTML report can embed it as base64 and the CLI
can write it to disk atomically.

Maps are coloured on one fixed scale (``scale="uniform"``, the default): each cell's value divided by the
value every cell of a uniform map holds (its mean; ``1/N`` for a distribution over ``N`` cells), on a
logarithmic scale from :data:`UNIFORM_SCALE` ``[0]`` to ``[1]`` times uniform. A uniform map is 1.0
everywhere and so one colour, whatever its size; a map twice as dense somewhere shows 2 there. The old
per-image min-max stretch (``scale="minmax"``) turned a map that varies by 3 % into a black-to-yellow
"hot spot". Overlays also state the map's sharpness (:func:`map_sharpness`, ``exp(entropy) / N``: 1 for a
uniform map, ``1/N`` for a single cell) and warn, drawn on the figure, when it exceeds
:data:`NEAR_UNIFORM` (:func:`near_uniform_warning`).

Example:
    >>> import numpy as np
    >>> from dualattn.report.figures import overlay_png
    >>> png = overlay_png(np.random.rand(32, 32), np.random.rand(8, 8))
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
import logging
from typing import Any, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "as_2d",
    "resize_map",
    "overlay_png",
    "overlay_figure",
    "example_grid_png",
    "example_grid_figures",
    "curves_png",
    "figure_to_png",
    "times_uniform",
    "map_sharpness",
    "near_uniform_warning",
    "uniform_colorbar",
    "NEAR_UNIFORM",
    "UNIFORM_SCALE",
    "SCALES",
]

#: Colour map of the heatmaps (perceptually uniform, readable when printed in grey).
HEATMAP_CMAP = "inferno"
#: Colour of the ground-truth contour (visible on top of ``inferno``).
CONTOUR_COLOR = "#00e5ff"
#: Colour of the marker of the point a tri-planar view cuts through.
MARKER_COLOR = "#39ff14"
#: The fixed colour scale of the maps, in multiples of the uniform value (logarithmic; values outside are
#: drawn in the end colours, and the colour bar says so).
UNIFORM_SCALE: tuple[float, float] = (1.0 / 8.0, 32.0)
#: Sharpness above which a map is called near uniform: the threshold of the demo's and ``evaluate``'s
#: warnings (``dualattn.evaluate.checks.NEAR_UNIFORM``; a test keeps the two equal). At 0.9 the map
#: spreads over 90 % of the grid's "effective" cells: it singles out no region.
NEAR_UNIFORM = 0.9
#: Colour scales of :func:`overlay_png` and :func:`example_grid_png`.
SCALES: tuple[str, ...] = ("uniform", "minmax")


def _new_figure(width: float, height: float, *, dpi: int = 100) -> Any:
    """Return an Agg-backed figure that never touches ``pyplot``'s global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Any, *, dpi: int | None = None) -> bytes:
    """Render a matplotlib figure to PNG bytes.

    Args:
        fig: a ``matplotlib.figure.Figure`` (with an Agg canvas).
        dpi: resolution; the figure's own when ``None``.

    Returns:
        The PNG file's bytes.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return buf.getvalue()


def as_2d(array: Any, *, name: str = "array") -> np.ndarray:
    """Bring an image, mask or map to a 2-D float array ``(H, W)`` for display.

    Accepts numpy arrays or torch tensors of shape ``(H, W)``, ``(1, H, W)``, ``(C, H, W)`` (channels
    averaged) or a 3-D volume ``(1, D, H, W)`` / ``(D, H, W)`` with ``D > 4`` (the slice with the most
    mass of the volume's absolute value is shown).

    Raises:
        ValueError: if the array cannot be read as an image.
    """
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array, dtype=np.float64)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3:
        if arr.shape[0] <= 4:  # channels first
            arr = arr.mean(axis=0)
        else:  # volume (D, H, W): the most informative axial slice
            idx = int(np.argmax(np.abs(arr).reshape(arr.shape[0], -1).sum(axis=1)))
            arr = arr[idx]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (or 1xHxW / CxHxW), got shape {tuple(np.shape(array))}")
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


def resize_map(heatmap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinearly resize a 2-D (or N-D) map to ``shape`` (for display, not for metrics).

    Args:
        heatmap: array ``(h, w)`` (or ``(d, h, w)``).
        shape: target spatial shape, same number of dimensions.

    Returns:
        float64 array of ``shape``.

    Raises:
        ValueError: if the dimensionalities differ or a size is not positive.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != heatmap.ndim:
        raise ValueError(f"cannot resize a map of shape {heatmap.shape} to {shape}: dimensions differ")
    if any(s <= 0 for s in shape):
        raise ValueError(f"target shape must be positive, got {shape}")
    if heatmap.shape == shape:
        return heatmap.copy()
    from scipy.ndimage import zoom

    factors = [t / s for t, s in zip(shape, heatmap.shape)]
    out = zoom(heatmap, factors, order=1, mode="nearest", grid_mode=True)
    # zoom may be off by one on odd factors; crop/pad to the exact target.
    slices = tuple(slice(0, t) for t in shape)
    out = out[slices]
    pad = [(0, t - s) for t, s in zip(shape, out.shape)]
    if any(p[1] > 0 for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def times_uniform(heatmap: Any) -> np.ndarray | None:
    """A map in multiples of the uniform value: each cell divided by the map's mean (``1/N`` for a distribution).

    A uniform map gives 1.0 in every cell; the result is the same on any grid the map is resampled to by
    linear interpolation, so it can be computed before or after resizing for display.

    Args:
        heatmap: a map of any shape (non-negative values; a distribution in practice).

    Returns:
        float64 array of the map's shape, or ``None`` when the map is no density to compare with uniform:
        negative values, a mean that is not positive, or non-finite values.

    Example:
        >>> times_uniform(np.full((2, 2), 0.25)).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
        >>> times_uniform(np.array([[0.5, 0.25], [0.25, 0.0]])).tolist()
        [[2.0, 1.0], [1.0, 0.0]]
    """
    arr = np.asarray(heatmap, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or float(arr.min()) < 0.0:
        return None
    mean = float(arr.mean())
    if not mean > 0.0:
        return None
    return arr / mean


def map_sharpness(heatmap: Any) -> float:
    """``exp(entropy) / N`` of a map: 1 for a uniform map, ``1/N`` for a single cell.

    The same rule as :func:`dualattn.evaluate.metrics.sharpness` (a test checks they agree): the map is made a
    distribution first (a map with negative values shifted to minimum 0; an all-zero map counts as uniform).

    Args:
        heatmap: a map of any shape, on the grid whose cells count (the model's grid, before resizing).

    Returns:
        A float in ``[1/N, 1]``.

    Raises:
        ValueError: an empty map or non-finite values.

    Example:
        >>> round(map_sharpness(np.ones((4, 4))), 6), round(map_sharpness(np.eye(2)), 6)
        (1.0, 0.5)
    """
    x = np.asarray(heatmap, dtype=np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"sharpness needs a non-empty, finite map; got shape {np.shape(heatmap)}")
    x = x - min(float(x.min()), 0.0)
    total = float(x.sum())
    if not total > 0:
        return 1.0
    p = x / total
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    return float(min(1.0, np.exp(entropy) / x.size))


def near_uniform_warning(sharpness: float | None, *, threshold: float = NEAR_UNIFORM) -> str | None:
    """The warning an overlay draws and the CLI prints for a map whose sharpness exceeds ``threshold``.

    Example:
        >>> near_uniform_warning(0.97)
        'near-uniform map (sharpness 0.97 > 0.9): it singles out no region'
        >>> near_uniform_warning(0.4) is None
        True
    """
    if sharpness is None or not sharpness > threshold:
        return None
    return f"near-uniform map (sharpness {sharpness:.2f} > {threshold:g}): it singles out no region"


def _uniform_norm() -> Any:
    from matplotlib.colors import LogNorm

    return LogNorm(vmin=UNIFORM_SCALE[0], vmax=UNIFORM_SCALE[1], clip=True)


def _fraction_label(v: float) -> str:
    return f"1/{round(1 / v):d}" if v < 1 else f"{v:g}"


def uniform_colorbar(fig: Any, cax: Any, mappable: Any, *, fontsize: float = 6.0,
                     label: str = "× uniform (1 = every cell equal)") -> Any:
    """The colour bar of the fixed × uniform scale: ticks at powers of 2, the ends marked as clipped, and a
    line at 1 (the uniform value).

    Args:
        fig: the figure.
        cax: the colour bar's axes.
        mappable: an image drawn with the × uniform scale (:func:`overlay_png`'s heatmap).
        fontsize: tick label size.
        label: the bar's label.

    Returns:
        The ``matplotlib.colorbar.Colorbar``.
    """
    lo, hi = UNIFORM_SCALE
    ticks = [2.0**k for k in range(int(np.round(np.log2(lo))), int(np.round(np.log2(hi))) + 1)]
    bar = fig.colorbar(mappable, cax=cax, ticks=ticks)
    labels = [_fraction_label(t) for t in ticks]
    labels[0], labels[-1] = "≤" + labels[0], "≥" + labels[-1]
    bar.ax.set_yticklabels(labels)
    bar.ax.minorticks_off()
    bar.ax.tick_params(labelsize=fontsize)
    bar.set_label(label, fontsize=fontsize + 1)
    bar.ax.axhline(1.0, color="white", linewidth=1.2)
    bar.ax.axhline(1.0, color="black", linewidth=0.5, linestyle=":")
    if getattr(bar, "solids", None) is not None:
        bar.solids.set_alpha(1.0)
    return bar


def _normalize01(arr: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (a constant image becomes zeros)."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 0:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) / (hi - lo)


def _draw_overlay(ax: Any, image: np.ndarray, heatmap: np.ndarray | None, mask: np.ndarray | None,
                  *, alpha: float, title: str | None, scale: str = "minmax") -> tuple[Any, str]:
    """Draw the scan, the map and the contour; return the map's image (for a colour bar) and the scale used.

    ``scale``: ``"uniform"`` colours the map on the fixed × uniform scale (module docstring), falling back to
    ``"minmax"`` (min to max of the map) for a map that is no density (negative values, zero mean).
    """
    ax.imshow(_normalize01(image), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0)
    mappable = None
    used = scale
    if heatmap is not None:
        ratio = times_uniform(heatmap) if scale == "uniform" else None
        if ratio is not None:
            shown = np.clip(resize_map(ratio, image.shape), *UNIFORM_SCALE)
            mappable = ax.imshow(shown, cmap=HEATMAP_CMAP, alpha=alpha, interpolation="bilinear",
                                 norm=_uniform_norm())
        else:
            used = "minmax"
            hm = resize_map(heatmap, image.shape)
            lo, hi = float(np.min(hm)), float(np.max(hm))
            if not hi > lo:
                hi = lo + 1e-12
            mappable = ax.imshow(hm, cmap=HEATMAP_CMAP, alpha=alpha, interpolation="bilinear", vmin=lo, vmax=hi)
    if mask is not None and np.any(mask > 0.5):
        m = mask if mask.shape == image.shape else resize_map(mask, image.shape)
        ax.contour(m, levels=[0.5], colors=[CONTOUR_COLOR], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return mappable, used


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}; got {scale!r}")


def _edge_labels(ax: Any, labels: Sequence[str]) -> None:
    """Orientation letters (top, bottom, left, right) just inside the image edges."""
    if len(labels) != 4:
        raise ValueError(f"edge_labels must be (top, bottom, left, right), got {labels!r}")
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes,
             "bbox": {"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0}}
    top, bottom, left, right = labels
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def overlay_png(image: Any, heatmap: Any | None = None, **kwargs: Any) -> bytes:
    """:func:`overlay_figure` as PNG bytes (same arguments)."""
    return figure_to_png(overlay_figure(image, heatmap, **kwargs))


def overlay_figure(image: Any, heatmap: Any | None = None, *, mask: Any | None = None, alpha: float = 0.5,
                   title: str | None = None, size_inches: float = 3.0, dpi: int = 100, colorbar: bool = False,
                   colorbar_label: str | None = None, edge_labels: Sequence[str] | None = None,
                   caption: str | None = None, scale: str = "uniform", sharpness: float | None = None,
                   marker: Sequence[float] | None = None) -> Any:
    """One scan with its heatmap blended on top and the ground-truth contour (:func:`overlay_png` draws it).

    The image is drawn as given, row 0 at the top: orient it before (e.g.
    :func:`dualattn.data.readers.radiological_view`) and say so with ``edge_labels`` and ``caption``.
    With a heatmap and ``colorbar=True`` the figure also states the map's sharpness and, for a map sharper
    than :data:`NEAR_UNIFORM` allows, draws the warning of :func:`near_uniform_warning` above the image.

    Args:
        image: the scan, ``(H, W)`` / ``(C, H, W)`` (see :func:`as_2d`).
        heatmap: the map, any 2-D grid ``(h, w)``; bilinearly upsampled to the image for display.
            ``None`` shows the scan alone.
        mask: ground-truth mask ``(H, W)``; its 0.5 level is drawn as a contour. ``None`` or empty: no contour.
        alpha: opacity of the heatmap in [0, 1].
        title: optional title above the image.
        size_inches: edge of the square image.
        dpi: resolution.
        colorbar: add a colour bar (in × uniform for ``scale="uniform"``) and the sharpness line.
        colorbar_label: the colour bar's label (default: what the scale measures).
        edge_labels: orientation letters ``(top, bottom, left, right)``, e.g. ``("A", "P", "R", "L")``.
        caption: a line of small text under the image (e.g. the display convention).
        scale: ``"uniform"`` (default: the fixed × uniform scale of the module docstring) or ``"minmax"``
            (min to max of this map, the old look; a colour bar then reads in map units).
        sharpness: the map's sharpness as computed on the model's grid; default :func:`map_sharpness` of
            ``heatmap`` as given.
        marker: ``(row, column)`` in image pixels to mark with a cross (e.g. the point a tri-planar view
            cuts through).

    Returns:
        A ``matplotlib.figure.Figure`` on an Agg canvas.

    Raises:
        ValueError: if ``alpha`` is outside [0, 1], the arrays are not images, ``edge_labels`` is not four
            strings, or ``scale`` is unknown.

    Example:
        >>> import numpy as np
        >>> png = overlay_png(np.random.rand(16, 16), np.random.rand(4, 4), colorbar=True,
        ...                   edge_labels=("A", "P", "R", "L"), caption="radiological convention")
        >>> png[:4] == b"\\x89PNG"
        True
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_scale(scale)
    img = as_2d(image, name="image")
    hm = None if heatmap is None else as_2d(heatmap, name="heatmap")
    mk = None if mask is None else as_2d(mask, name="mask")
    with_bar = bool(colorbar) and hm is not None
    sharp = None
    if with_bar:
        sharp = float(sharpness) if sharpness is not None else map_sharpness(hm)
    warning = near_uniform_warning(sharp)
    # layout in inches, top to bottom: title, warning banner, image, sharpness line, caption
    line = 0.2
    top = (0.3 if title else 0.05) + (line + 0.05 if warning else 0.0)
    bottom = (line if with_bar else 0.0) + (line if caption else 0.0) + 0.03
    width = size_inches * (1.32 if with_bar else 1.0)
    height = size_inches + top + bottom
    fig = _new_figure(width, height, dpi=dpi)
    img_w = size_inches / width
    ax = fig.add_axes((0, bottom / height, img_w, size_inches / height))
    mappable, used = _draw_overlay(ax, img, hm, mk, alpha=alpha, title=None, scale=scale)
    if title:
        fig.text(img_w / 2, 1 - 0.04 / height, title, fontsize=8, ha="center", va="top")
    if edge_labels is not None:
        _edge_labels(ax, [str(x) for x in edge_labels])
    if marker is not None:
        r, c = (float(v) for v in marker)
        ax.plot([c], [r], marker="+", markersize=14, markeredgewidth=2.2, color="black")
        ax.plot([c], [r], marker="+", markersize=12, markeredgewidth=1.2, color=MARKER_COLOR)
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
    if warning:
        fig.text(img_w / 2, (bottom + size_inches + 0.04) / height, "⚠ " + warning, fontsize=7, ha="center",
                 va="bottom", color="black", fontweight="bold",
                 bbox={"facecolor": "#ffb000", "edgecolor": "#c00000", "linewidth": 1.0, "pad": 2})
    if with_bar and mappable is not None:
        cax = fig.add_axes((img_w + 0.04, (bottom + 0.1 * size_inches) / height, 0.045, 0.75 * size_inches / height))
        if used == "uniform":
            uniform_colorbar(fig, cax, mappable, label=colorbar_label or "× uniform (1 = every cell equal)")
        else:
            bar = fig.colorbar(mappable, cax=cax)
            bar.set_label(colorbar_label or "map value (min to max: not a density)", fontsize=7)
            bar.ax.tick_params(labelsize=6)
            bar.solids.set_alpha(1.0)
        fig.text(0.01, ((line if caption else 0.0) + 0.03) / height,
                 f"sharpness {sharp:.2f} (exp(entropy)/N: 1 = uniform, 1/N = one cell)", fontsize=6.5, ha="left",
                 va="bottom", color="#c00000" if warning else "black", fontweight="bold" if warning else "normal")
    if caption:
        fig.text(0.01, 0.03 / height, caption, fontsize=6, ha="left", va="bottom")
    return fig


def _class_label(value: Any, class_names: Sequence[str] | None) -> str:
    try:
        k = int(value)
    except (TypeError, ValueError):
        return str(value)
    return str(class_names[k]) if class_names and 0 <= k < len(class_names) else str(value)


def example_grid_png(examples: Sequence[Mapping[str, Any]], *, methods: Sequence[str] | None = None,
                     alpha: float = 0.55, cell_inches: float = 1.25, dpi: int = 110,
                     max_columns: int = 8, scale: str = "uniform", colorbar: bool = True,
                     class_names: Sequence[str] | None = None) -> list[bytes]:
    """Grid of example scans (rows) x methods (columns), as in the paper's Figures 4-5.

    Each example is a mapping with ``image`` (``(C, H, W)`` or ``(H, W)``), optional ``mask``
    (``(1, H, W)``, drawn as a contour), ``maps`` (method -> 2-D map ``(h, w)``) and optional ``id``,
    ``label``, ``pred``, ``prob`` used in the row label. The first column is the scan with the contour.
    Wide grids are split into several figures of at most ``max_columns`` method columns so the report
    never needs horizontal scrolling. Every map is coloured on the same fixed × uniform scale (module
    docstring), explained by one colour bar per figure.

    Args:
        examples: the rows.
        methods: column order; default: the union of the examples' map names in first-seen order.
        alpha: heatmap opacity.
        cell_inches: edge of one cell.
        dpi: resolution.
        max_columns: at most this many method columns per figure (>= 1).
        scale: ``"uniform"`` (default) or ``"minmax"`` (each map stretched over its own range).
        colorbar: draw the × uniform colour bar (``scale="uniform"`` only).
        class_names: names of the classes, for the row labels (``label`` and ``pred`` are class indices).

    Returns:
        A list of PNG images (one per chunk of columns); empty when there are no examples.

    Raises:
        ValueError: if ``max_columns < 1``, ``scale`` is unknown or an example has no ``image``.
    """
    return [figure_to_png(fig) for fig in example_grid_figures(
        examples, methods=methods, alpha=alpha, cell_inches=cell_inches, dpi=dpi, max_columns=max_columns,
        scale=scale, colorbar=colorbar, class_names=class_names)]


def example_grid_figures(examples: Sequence[Mapping[str, Any]], *, methods: Sequence[str] | None = None,
                         alpha: float = 0.55, cell_inches: float = 1.25, dpi: int = 110, max_columns: int = 8,
                         scale: str = "uniform", colorbar: bool = True,
                         class_names: Sequence[str] | None = None) -> list[Any]:
    """The figures of :func:`example_grid_png` (same arguments), before they are rendered."""
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    _check_scale(scale)
    if not examples:
        return []
    if methods is None:
        seen: dict[str, None] = {}
        for ex in examples:
            for name in (ex.get("maps") or {}):
                seen.setdefault(str(name), None)
        methods = list(seen)
    methods = list(methods)
    chunks = [methods[i:i + max_columns] for i in range(0, len(methods), max_columns)] or [[]]
    figs = []
    for chunk in chunks:
        ncols = len(chunk) + 1
        nrows = len(examples)
        bar_in = 0.85 if colorbar and scale == "uniform" and chunk else 0.0
        width = cell_inches * ncols + bar_in
        fig = _new_figure(width, cell_inches * nrows + 0.3, dpi=dpi)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        uniform_image = None
        for r, ex in enumerate(examples):
            if "image" not in ex:
                raise ValueError(f"example {r} has no 'image' (keys: {sorted(ex)})")
            img = as_2d(ex["image"], name="image")
            mask = ex.get("mask")
            mk = None if mask is None else as_2d(mask, name="mask")
            label_bits = [str(ex.get("id", f"#{r}"))]
            if ex.get("label") is not None:
                label_bits.append(f"y={_class_label(ex['label'], class_names)}")
            if ex.get("pred") is not None:
                label_bits.append(f"ŷ={_class_label(ex['pred'], class_names)}")
            _draw_overlay(axes[r][0], img, None, mk, alpha=alpha, title="scan" if r == 0 else None)
            axes[r][0].set_ylabel("\n".join(label_bits), fontsize=6)
            maps = ex.get("maps") or {}
            for c, name in enumerate(chunk, start=1):
                ax = axes[r][c]
                hm = maps.get(name)
                if hm is None:
                    ax.set_axis_off()
                    continue
                mappable, used = _draw_overlay(ax, img, as_2d(hm, name=f"map {name}"), mk, alpha=alpha,
                                               title=name if r == 0 else None, scale=scale)
                if used == "uniform":
                    uniform_image = mappable
                elif scale == "uniform":  # no density: say that this panel has its own scale
                    ax.text(0.02, 0.02, "min-max", color="white", fontsize=5, transform=ax.transAxes)
        right = 1.0 - bar_in / width
        fig.subplots_adjust(wspace=0.04, hspace=0.04, right=right - 0.01 if bar_in else 0.98)
        if bar_in and uniform_image is not None:
            cax = fig.add_axes((right + 0.12 * bar_in / width, 0.15, 0.15 * bar_in / width, 0.7))
            uniform_colorbar(fig, cax, uniform_image, fontsize=5.5, label="× uniform")
        figs.append(fig)
    return figs


def curves_png(curves: Mapping[str, Mapping[str, Any]], *, title: str = "Input perturbation",
               xlabel: str = "fraction of least-important pixels removed",
               ylabel: str = "balanced accuracy", width: float = 6.0, height: float = 3.6,
               dpi: int = 110) -> bytes:
    """Perturbation curves (paper Figure 3): one line per method, a band of ± one std over seeds.

    Args:
        curves: method -> ``{"fractions": [...], "mean": [...], "std": [...] (optional), "auc": float
            (optional, shown in the legend)}``. ``"values"`` is accepted for ``"mean"``.
        title, xlabel, ylabel: labels.
        width, height, dpi: figure size.

    Returns:
        PNG bytes.

    Raises:
        ValueError: if a curve's fractions and values differ in length.
    """
    fig = _new_figure(width, height, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    for k, (name, curve) in enumerate(curves.items()):
        x = np.asarray(curve.get("fractions", []), dtype=np.float64)
        y = np.asarray(curve.get("mean", curve.get("values", [])), dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"curve {name!r}: {x.shape[0]} fractions but {y.shape[0]} values")
        if x.size == 0:
            continue
        label = str(name)
        auc = curve.get("auc")
        if isinstance(auc, Mapping):
            auc = auc.get("mean")
        if auc is not None and np.isfinite(float(auc)):
            label += f" ({float(auc):.1f})"
        color = cmap(k % 20)
        style = "-" if k < 10 else "--"
        ax.plot(x, y, style, color=color, label=label, linewidth=1.4)
        std = curve.get("std")
        if std is not None:
            s = np.asarray(std, dtype=np.float64)
            if s.shape == y.shape and np.any(s > 0):
                ax.fill_between(x, y - s, y + s, color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if curves:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                  title="method (AUC)", title_fontsize=7)
    return figure_to_png(fig)
