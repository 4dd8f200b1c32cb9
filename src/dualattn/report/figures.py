"""Report figures: heatmap overlays with the ground-truth contour, perturbation curves.

Every figure is drawn with matplotlib's non-interactive Agg canvas (no display, no global
``pyplot`` state) and returned as PNG bytes, so the HTML report can embed it as base64 and the CLI
can write it to disk atomically.

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
    "example_grid_png",
    "curves_png",
    "figure_to_png",
]

#: Colour map of the heatmaps (perceptually uniform, readable when printed in grey).
HEATMAP_CMAP = "inferno"
#: Colour of the ground-truth contour (visible on top of ``inferno``).
CONTOUR_COLOR = "#00e5ff"


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


def _normalize01(arr: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] (a constant image becomes zeros)."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 0:
        return np.zeros_like(arr, dtype=np.float64)
    return (arr - lo) / (hi - lo)


def _draw_overlay(ax: Any, image: np.ndarray, heatmap: np.ndarray | None, mask: np.ndarray | None,
                  *, alpha: float, title: str | None, keep_scale: bool = False) -> Any:
    """Draw the scan, the map and the contour; return the map's image (for a colour bar) or ``None``.

    ``keep_scale``: colour the map by its own values (min to max of the displayed map) rather than
    min-max normalized to [0, 1]; the colours are the same, a colour bar then reads in map units.
    """
    ax.imshow(_normalize01(image), cmap="gray", interpolation="nearest", vmin=0.0, vmax=1.0)
    mappable = None
    if heatmap is not None:
        hm = resize_map(heatmap, image.shape)
        if keep_scale:
            lo, hi = float(np.min(hm)), float(np.max(hm))
            if not hi > lo:
                hi = lo + 1e-12
            mappable = ax.imshow(hm, cmap=HEATMAP_CMAP, alpha=alpha, interpolation="bilinear", vmin=lo, vmax=hi)
        else:
            mappable = ax.imshow(_normalize01(hm), cmap=HEATMAP_CMAP, alpha=alpha, interpolation="bilinear",
                                 vmin=0.0, vmax=1.0)
    if mask is not None and np.any(mask > 0.5):
        m = mask if mask.shape == image.shape else resize_map(mask, image.shape)
        ax.contour(m, levels=[0.5], colors=[CONTOUR_COLOR], linewidths=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)
    return mappable


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


def overlay_png(image: Any, heatmap: Any | None = None, *, mask: Any | None = None, alpha: float = 0.5,
                title: str | None = None, size_inches: float = 3.0, dpi: int = 100, colorbar: bool = False,
                colorbar_label: str = "heatmap", edge_labels: Sequence[str] | None = None,
                caption: str | None = None) -> bytes:
    """One scan with its heatmap blended on top and the ground-truth contour.

    The image is drawn as given, row 0 at the top: orient it before (e.g.
    :func:`dualattn.data.readers.radiological_view`) and say so with ``edge_labels`` and ``caption``.

    Args:
        image: the scan, ``(H, W)`` / ``(C, H, W)`` (see :func:`as_2d`).
        heatmap: the map, any 2-D grid ``(h, w)``; bilinearly upsampled to the image for display and
            min-max normalized per image. ``None`` shows the scan alone.
        mask: ground-truth mask ``(H, W)``; its 0.5 level is drawn as a contour. ``None`` or empty: no contour.
        alpha: opacity of the heatmap in [0, 1].
        title: optional title above the image.
        size_inches: edge of the square image.
        dpi: resolution.
        colorbar: add a colour bar in the map's own units (min to max of the displayed map).
        colorbar_label: the colour bar's label.
        edge_labels: orientation letters ``(top, bottom, left, right)``, e.g. ``("A", "P", "R", "L")``.
        caption: a line of small text under the image (e.g. the display convention).

    Returns:
        PNG bytes.

    Raises:
        ValueError: if ``alpha`` is outside [0, 1], the arrays are not images, or ``edge_labels`` is not
            four strings.

    Example:
        >>> import numpy as np
        >>> png = overlay_png(np.random.rand(16, 16), np.random.rand(4, 4), colorbar=True,
        ...                   edge_labels=("A", "P", "R", "L"), caption="radiological convention")
        >>> png[:4] == b"\\x89PNG"
        True
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = as_2d(image, name="image")
    hm = None if heatmap is None else as_2d(heatmap, name="heatmap")
    mk = None if mask is None else as_2d(mask, name="mask")
    with_bar = bool(colorbar) and hm is not None
    width = size_inches * (1.25 if with_bar else 1.0)
    cap_h = 0.06 if caption else 0.0
    fig = _new_figure(width, size_inches * (1.0 + cap_h), dpi=dpi)
    img_w = 1.0 / 1.25 if with_bar else 1.0
    ax = fig.add_axes((0, cap_h, img_w, (0.92 if title else 1.0) - cap_h))
    mappable = _draw_overlay(ax, img, hm, mk, alpha=alpha, title=title, keep_scale=with_bar)
    if edge_labels is not None:
        _edge_labels(ax, [str(x) for x in edge_labels])
    if with_bar and mappable is not None:
        cax = fig.add_axes((img_w + 0.03, cap_h + 0.1, 0.04, 0.7))
        bar = fig.colorbar(mappable, cax=cax)
        bar.set_label(colorbar_label, fontsize=7)
        bar.ax.tick_params(labelsize=6)
        bar.solids.set_alpha(1.0)
    if caption:
        fig.text(0.01, 0.005, caption, fontsize=6, ha="left", va="bottom")
    return figure_to_png(fig)


def example_grid_png(examples: Sequence[Mapping[str, Any]], *, methods: Sequence[str] | None = None,
                     alpha: float = 0.55, cell_inches: float = 1.25, dpi: int = 110,
                     max_columns: int = 8) -> list[bytes]:
    """Grid of example scans (rows) x methods (columns), as in the paper's Figures 4-5.

    Each example is a mapping with ``image`` (``(C, H, W)`` or ``(H, W)``), optional ``mask``
    (``(1, H, W)``, drawn as a contour), ``maps`` (method -> 2-D map ``(h, w)``) and optional ``id``,
    ``label``, ``pred``, ``prob`` used in the row label. The first column is the scan with the contour.
    Wide grids are split into several figures of at most ``max_columns`` method columns so the report
    never needs horizontal scrolling.

    Args:
        examples: the rows.
        methods: column order; default: the union of the examples' map names in first-seen order.
        alpha: heatmap opacity.
        cell_inches: edge of one cell.
        dpi: resolution.
        max_columns: at most this many method columns per figure (>= 1).

    Returns:
        A list of PNG images (one per chunk of columns); empty when there are no examples.

    Raises:
        ValueError: if ``max_columns < 1`` or an example has no ``image``.
    """
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
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
    pngs = []
    for chunk in chunks:
        ncols = len(chunk) + 1
        nrows = len(examples)
        fig = _new_figure(cell_inches * ncols, cell_inches * nrows + 0.3, dpi=dpi)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        for r, ex in enumerate(examples):
            if "image" not in ex:
                raise ValueError(f"example {r} has no 'image' (keys: {sorted(ex)})")
            img = as_2d(ex["image"], name="image")
            mask = ex.get("mask")
            mk = None if mask is None else as_2d(mask, name="mask")
            label_bits = [str(ex.get("id", f"#{r}"))]
            if ex.get("label") is not None:
                label_bits.append(f"y={ex['label']}")
            if ex.get("pred") is not None:
                label_bits.append(f"ŷ={ex['pred']}")
            _draw_overlay(axes[r][0], img, None, mk, alpha=alpha, title="scan" if r == 0 else None)
            axes[r][0].set_ylabel("\n".join(label_bits), fontsize=6)
            maps = ex.get("maps") or {}
            for c, name in enumerate(chunk, start=1):
                ax = axes[r][c]
                hm = maps.get(name)
                if hm is None:
                    ax.set_axis_off()
                    continue
                _draw_overlay(ax, img, as_2d(hm, name=f"map {name}"), mk, alpha=alpha,
                              title=name if r == 0 else None)
        fig.subplots_adjust(wspace=0.04, hspace=0.04)
        pngs.append(figure_to_png(fig))
    return pngs


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
