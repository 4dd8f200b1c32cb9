"""The hiding test: can the model get around what its map hides?

A map claims "the decision rests here". Keep the top ``k`` % of the map's foreground cells, replace every
other pixel (the hidden cells and the background) with the same pixels of a healthy test image, and run the
model again: a model that uses only what its map shows keeps its prediction. Swapping the *kept* cells
instead, on lesion images, shows whether the model uses them at all (it should flip). Per image and ``k``
(DESIGN.md section 2; issue "the ruler, second edition"):

* ``hidden_swap_flips@k`` -- share of partners whose swap of the hidden pixels flips the prediction (x100;
  lower is better), on every image; ``..._lesion@k`` on the images of a non-healthy class alone and
  ``..._healthy@k`` on healthy images alone (the seam's own effect: a healthy image patched with another
  healthy image should not flip -- the floor);
* ``hidden_swap_dlogp@k`` -- mean change of ``log p(predicted class)`` under that swap (0 is best);
* ``kept_swap_flips@k`` -- share of partners whose swap of the *kept* cells flips the prediction, on lesion
  images (higher: the model does use what the map shows);
* the same with ROAD's noisy linear imputation instead of a partner (``hidden_road_flips@k``,
  ``kept_road_flips@k``, ...) for data without registered partners (real 2-D MRI).

Partners (:func:`match_partners`) are healthy test images of *other* patients whose foreground overlaps the
image's most (IoU of the foreground masks), so a swap makes no chimera: a left hemisphere half is patched
with left halves, never mirrored. Every image gets up to ``n_partners`` of them; its value is the mean over
its partners, so the partner draw is part of each image's value and the patient bootstrap
(:mod:`dualattn.evaluate.intervals`) resamples it with the image.

Foreground (:func:`foreground`): pixels where some channel rises above the image's own background (its 1st
percentile) by more than ``rel_threshold`` of its 1st-99th percentile range. A foreground *cell* is a cell of
the map's grid whose pixels are at least half foreground; ``k`` % of those cells (at least one) are kept,
ranked by the map's value (ties: the lower flat index first). A fixed share, not a mass threshold: the 90 %
mass of a pixel explainer covers most of the image and would pass trivially.

Everything is computed on the images as the model takes them (the evaluation's fitted test images).

Example:
    >>> import torch
    >>> maps = torch.tensor([[[[4.0, 3.0], [2.0, 1.0]]]])
    >>> kept_pixels(maps, torch.ones(1, 1, 4, 4, dtype=torch.bool), 25.0)[0, 0].int().tolist()
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..explain import eval_mode
from .perturbation import RoadFill

__all__ = [
    "HIDING_KS",
    "HIDING_FILLS",
    "foreground",
    "match_partners",
    "cell_index",
    "candidate_cells",
    "kept_pixels",
    "lesion_oracle_maps",
    "hiding_test",
    "hiding_metric_names",
]

#: the kept shares of the foreground cells (percent)
HIDING_KS: tuple[int, ...] = (10, 20, 35)
#: what replaces the swapped pixels: a matched healthy partner's pixels, or ROAD's imputation
HIDING_FILLS: tuple[str, ...] = ("partner", "road")


def foreground(images: Tensor, *, rel_threshold: float = 0.05) -> Tensor:
    """``(B, 1, *S)`` bool: where some channel exceeds its 1st percentile by ``rel_threshold`` of its
    1st-99th percentile range (per image and channel)."""
    if images.dim() < 3:
        raise ValueError(f"images must be (B, C, *S), got {tuple(images.shape)}")
    flat = images.detach().float().flatten(2)
    lo = torch.quantile(flat, 0.01, dim=2, keepdim=True)
    hi = torch.quantile(flat, 0.99, dim=2, keepdim=True)
    fg = (flat > lo + rel_threshold * (hi - lo)) & (hi > lo)
    return fg.any(dim=1, keepdim=True).reshape(images.shape[0], 1, *images.shape[2:])


def match_partners(fg: Tensor, labels: Sequence[int] | Tensor, groups: Sequence[Any], *, n_partners: int = 5,
                   healthy_class: int = 0) -> Tensor:
    """For every image, up to ``n_partners`` healthy images of other patients with the most overlapping
    foreground.

    Args:
        fg: ``(N, 1, *S)`` bool foreground masks (:func:`foreground`).
        labels: ``(N,)`` classes; partners come from ``healthy_class``.
        groups: ``(N,)`` patient ids; an image is never its own patient's partner.
        n_partners: partners per image.

    Returns:
        ``(N, n_partners)`` int64 indices, best first, ``-1`` where fewer candidates exist.
    """
    n = fg.shape[0]
    y = torch.as_tensor(labels).long().reshape(-1)
    if y.shape[0] != n or len(groups) != n:
        raise ValueError(f"labels ({y.shape[0]}) and groups ({len(groups)}) must have one entry per image ({n})")
    if n_partners < 1:
        raise ValueError(f"n_partners must be >= 1, got {n_partners}")
    f = fg.reshape(n, -1).double()
    inter = f @ f.T
    area = f.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp_min(1.0)
    g = [str(x) for x in groups]
    same = torch.tensor([[gi == gj for gj in g] for gi in g])
    ok = (y == healthy_class)[None, :].expand(n, n) & ~same
    score = torch.where(ok, iou, torch.full_like(iou, -1.0))
    # best IoU first; ties by the lower index (a stable sort of -score)
    order = torch.argsort(-score, dim=1, stable=True)[:, :n_partners]
    picked = torch.gather(ok, 1, order)
    out = torch.where(picked, order, torch.full_like(order, -1))
    if out.shape[1] < n_partners:
        out = torch.cat([out, torch.full((n, n_partners - out.shape[1]), -1, dtype=out.dtype)], dim=1)
    return out


def cell_index(grid: Sequence[int], size: Sequence[int]) -> Tensor:
    """``(*size)`` int64: the flat index of the map cell each pixel falls in (pixel ``i`` of an axis of
    length ``S`` lies in cell ``floor(i * g / S)``; exact blocks when ``g`` divides ``S``)."""
    if len(grid) != len(size):
        raise ValueError(f"grid {tuple(grid)} and image size {tuple(size)} differ in dimensionality")
    axes = [torch.div(torch.arange(s) * g, s, rounding_mode="floor") for g, s in zip(grid, size)]
    mesh = torch.meshgrid(*axes, indexing="ij")
    idx = torch.zeros(tuple(size), dtype=torch.int64)
    for ax, g in zip(mesh, grid):
        idx = idx * int(g) + ax
    return idx


def candidate_cells(fg: Tensor, grid: Sequence[int]) -> Tensor:
    """``(B, prod(grid))`` bool: the map cells at least half of whose pixels are foreground (every cell of an image
    without any) -- the cells the hiding test ranks and the foreground sharpness is measured on.

    Args:
        fg: ``(B, 1, *S)`` bool foreground.
        grid: the map's grid.
    """
    b, size = fg.shape[0], tuple(fg.shape[2:])
    n_cells = math.prod(grid)
    cid = cell_index(tuple(grid), size).reshape(-1).to(fg.device)
    pix = fg.reshape(b, -1).double()
    per_cell = torch.zeros(b, n_cells, dtype=torch.float64, device=fg.device).index_add_(1, cid, pix)
    area = torch.bincount(cid, minlength=n_cells).double().clamp_min(1.0)
    cand = per_cell / area >= 0.5
    return torch.where(cand.any(1, keepdim=True), cand, torch.ones_like(cand))


def kept_pixels(maps: Tensor, fg: Tensor, k: float) -> Tensor:
    """``(B, 1, *S)`` bool: the pixels of the top ``k`` % of each map's foreground cells.

    Args:
        maps: ``(B, 1, *grid)`` importance maps.
        fg: ``(B, 1, *S)`` bool foreground (cells with at least half their pixels in it are candidates; when
            an image has none, every cell is).
        k: percent of the candidate cells kept (``ceil``, at least one).
    """
    if not 0.0 < float(k) <= 100.0:
        raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
    b, grid, size = maps.shape[0], tuple(maps.shape[2:]), tuple(fg.shape[2:])
    n_cells = math.prod(grid)
    cid = cell_index(grid, size).reshape(-1).to(fg.device)
    cand = candidate_cells(fg, grid)
    values = maps.detach().reshape(b, -1).double()
    score = torch.where(cand, values, torch.full_like(values, -math.inf))
    order = torch.argsort(-score, dim=1, stable=True)
    n_keep = torch.ceil(cand.sum(1).double() * float(k) / 100.0).clamp_min(1).long()
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n_cells, device=order.device).expand(b, n_cells).contiguous())
    kept_cells = (rank < n_keep[:, None]) & cand
    return torch.gather(kept_cells, 1, cid.expand(b, -1)).reshape(b, 1, *size)


def lesion_oracle_maps(masks: Tensor, has_mask: Tensor, grid: Sequence[int], *, scale_cells: float = 2.0) -> Tensor:
    """The dilated-lesion oracle, ``(N, 1, *grid)``: what a map that shows exactly the lesion (and then its
    surroundings) would score in the hiding test.

    Per cell: the share of its pixels in the mask (1 inside the lesion) plus ``1e-3 * exp(-d / scale_cells)``
    with ``d`` the distance in cells to the nearest lesion cell, so keeping more cells grows the kept region
    around the lesion (a dilation) instead of picking arbitrary ties. An image without a (non-empty) mask gets
    a centred ``exp(-d / scale)`` from the grid's centre (it has no lesion to show). Normalized to sum 1.
    """
    n = masks.shape[0]
    g = tuple(int(v) for v in grid)
    size = tuple(masks.shape[2:])
    cid = cell_index(g, size).reshape(-1)
    n_cells = math.prod(g)
    pix = (masks.reshape(n, -1) > 0.5).double()
    inside = torch.zeros(n, n_cells, dtype=torch.float64).index_add_(1, cid, pix)
    inside = inside / torch.bincount(cid, minlength=n_cells).double().clamp_min(1.0)
    coords = torch.stack(torch.meshgrid(*[torch.arange(v, dtype=torch.float64) for v in g], indexing="ij"),
                         dim=-1).reshape(n_cells, len(g))
    dist = torch.cdist(coords, coords)  # (cells, cells)
    lesion = (inside > 0) & has_mask.reshape(n, 1).bool()
    big = torch.full_like(dist, math.inf)
    d = torch.where(lesion[:, None, :], dist.expand(n, -1, -1), big).amin(dim=2)  # (N, cells)
    centre = torch.tensor([(v - 1) / 2 for v in g], dtype=torch.float64)
    d_centre = (coords - centre).norm(dim=1).expand(n, -1)
    none = ~lesion.any(dim=1, keepdim=True)
    d = torch.where(none, d_centre, d)
    value = inside * (~none) + 1e-3 * torch.exp(-d / float(scale_cells))
    value = value / value.sum(dim=1, keepdim=True)
    return value.float().reshape(n, 1, *g)


def hiding_metric_names(ks: Sequence[int], fills: Sequence[str]) -> list[str]:
    """The metric keys :func:`hiding_test` returns for ``ks`` and ``fills``."""
    out = []
    for fill in fills:
        tag = "swap" if fill == "partner" else "road"
        for k in ks:
            out += [f"hidden_{tag}_flips@{k}", f"hidden_{tag}_flips_lesion@{k}", f"hidden_{tag}_flips_healthy@{k}",
                    f"hidden_{tag}_dlogp@{k}", f"kept_{tag}_flips@{k}"]
    return out


@torch.no_grad()
def _outputs(models: Sequence[Callable[[Tensor], Tensor]], x: Tensor, batch_size: int, device: Any,
             preprocess: Sequence[Callable[[Tensor], Tensor] | None] | None = None) -> list[Tensor]:
    outs: list[list[Tensor]] = [[] for _ in models]
    prep = list(preprocess) if preprocess is not None else [None] * len(models)
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size]
        for j, m in enumerate(models):
            inp = xb if prep[j] is None else prep[j](xb)
            outs[j].append(m(inp.to(device)).float().log_softmax(1).cpu())
    return [torch.cat(o) for o in outs]


def hiding_test(
    model: nn.Module | Callable[[Tensor], Tensor] | Sequence[nn.Module | Callable[[Tensor], Tensor]],
    images: Tensor,
    maps: Tensor,
    labels: Tensor,
    *,
    partners: Tensor | None = None,
    fg: Tensor | None = None,
    ks: Sequence[int] = HIDING_KS,
    fills: Sequence[str] = ("partner",),
    healthy_class: int = 0,
    batch_size: int = 64,
    device: Any = "cpu",
    seed: int = 0,
    preprocess: Callable[[Tensor], Tensor] | Sequence[Callable[[Tensor], Tensor] | None] | None = None,
) -> dict[str, list[float]] | list[dict[str, list[float]]]:
    """Per-image hiding-test values of one set of maps on one model (see the module docstring).

    Args:
        model: ``images -> logits`` (put in eval mode here), or a list of models: each sees the same swapped
            images (made once).
        images: ``(N, C, *S)`` the test images as the model takes them.
        maps: ``(N, 1, *grid)``, one map per image.
        labels: ``(N,)`` true classes (which images are lesion / healthy).
        partners: ``(N, n)`` partner indices into ``images`` (``-1``: none), from :func:`match_partners`;
            required for the ``"partner"`` fill.
        fg: ``(N, 1, *S)`` foreground; default :func:`foreground` of ``images``.
        ks: kept shares (percent of the foreground cells).
        fills: ``"partner"`` and/or ``"road"``.
        healthy_class: the class whose images are the healthy partners and the floor.
        batch_size, device: model calls.
        seed: ROAD's noise.
        preprocess: what turns (swapped) ``images`` into a model's input (one per model for a list), e.g. a
            per-sample normalization: the swaps are then made before it, as the deployed pipeline would see a
            scan whose hidden region was another patient's. ``None``: ``images`` are the models' input.

    Returns:
        metric -> ``(N,)`` list (NaN where the metric does not apply to an image, e.g. ``_lesion`` on a
        healthy image, or no partner), x100 for flips; a list of those for a list of models.
    """
    many = isinstance(model, (list, tuple))
    models = list(model) if many else [model]
    preps = (list(preprocess) if isinstance(preprocess, (list, tuple)) else [preprocess] * len(models))
    if len(preps) != len(models):
        raise ValueError(f"preprocess must give one function per model ({len(models)}), got {len(preps)}")
    bad = [f for f in fills if f not in HIDING_FILLS]
    if bad or not fills:
        raise ValueError(f"fills must be among {HIDING_FILLS}, got {list(fills)}")
    n = images.shape[0]
    if maps.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"images ({n}), maps ({maps.shape[0]}) and labels ({labels.shape[0]}) must match")
    if "partner" in fills and partners is None:
        raise ValueError("the partner fill needs partners (match_partners)")
    fg = foreground(images) if fg is None else fg
    y = labels.long().cpu()
    lesion = y != healthy_class
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    outs: list[dict[str, list[float]]] = [{} for _ in models]
    with contextlib.ExitStack() as stack:
        for m in models:
            if isinstance(m, nn.Module):
                stack.enter_context(eval_mode(m))
        base = _outputs(models, images, batch_size, device, preps)
        pred0 = [b.argmax(1) for b in base]
        logp0 = [b.gather(1, p[:, None])[:, 0].double() for b, p in zip(base, pred0)]
        road = RoadFill(seed=seed) if "road" in fills else None
        for k in ks:
            keep = kept_pixels(maps, fg, float(k))
            for fill in fills:
                tag = "swap" if fill == "partner" else "road"
                per_model = _swaps(models, images, keep, pred0, logp0, fill, partners, road, batch_size, device, preps)
                for out, (flips_h, dlogp_h, flips_k) in zip(outs, per_model):
                    out[f"hidden_{tag}_flips@{k}"] = (100.0 * flips_h).tolist()
                    out[f"hidden_{tag}_flips_lesion@{k}"] = torch.where(lesion, 100.0 * flips_h, nan).tolist()
                    out[f"hidden_{tag}_flips_healthy@{k}"] = torch.where(~lesion, 100.0 * flips_h, nan).tolist()
                    out[f"hidden_{tag}_dlogp@{k}"] = dlogp_h.tolist()
                    out[f"kept_{tag}_flips@{k}"] = torch.where(lesion, 100.0 * flips_k, nan).tolist()
    return outs if many else outs[0]


def _swaps(models, images, keep, pred0, logp0, fill, partners, road, batch_size, device, preps):
    """Per model, the mean over partners (or one ROAD draw) of: flips when hiding, Δlog p when hiding, flips
    when swapping the kept pixels. ``(N,)`` float64 each, NaN where an image has no partner."""
    n = images.shape[0]
    if fill == "road":
        hidden = torch.cat([road(images[i:i + batch_size], ~keep[i:i + batch_size])
                            for i in range(0, n, batch_size)])
        kept = torch.cat([road(images[i:i + batch_size], keep[i:i + batch_size]) for i in range(0, n, batch_size)])
        ohs, oks = _outputs(models, hidden, batch_size, device, preps), _outputs(models, kept, batch_size, device, preps)
        return [((oh.argmax(1) != p0).double(), oh.gather(1, p0[:, None])[:, 0].double() - l0,
                 (ok.argmax(1) != p0).double()) for oh, ok, p0, l0 in zip(ohs, oks, pred0, logp0)]
    sums = [torch.zeros(3, n, dtype=torch.float64) for _ in models]
    count = torch.zeros(n, dtype=torch.float64)
    for j in range(partners.shape[1]):
        idx = partners[:, j]
        has = idx >= 0
        if not bool(has.any()):
            continue
        rows = torch.nonzero(has).flatten()
        x, kp, other = images[rows], keep[rows], images[idx[rows]]
        ohs = _outputs(models, torch.where(kp, x, other), batch_size, device, preps)
        oks = _outputs(models, torch.where(kp, other, x), batch_size, device, preps)
        for m, (oh, ok) in enumerate(zip(ohs, oks)):
            p0 = pred0[m][rows]
            sums[m][0, rows] += (oh.argmax(1) != p0).double()
            sums[m][1, rows] += oh.gather(1, p0[:, None])[:, 0].double() - logp0[m][rows]
            sums[m][2, rows] += (ok.argmax(1) != p0).double()
        count[rows] += 1
    denom = count.where(count > 0, torch.full_like(count, math.nan))
    return [tuple(sm[i] / denom for i in range(3)) for sm in sums]
