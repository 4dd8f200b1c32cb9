"""Pure metric functions over batch-first tensors; each returns one value per sample.

Every function here is side-effect free and reads nothing but its arguments. Shapes:

* ``maps``: attribution or attention maps ``(B, 1, *grid)`` (as returned by
  :func:`dualattn.explain.explain`) or ``(B, *grid)``;
* ``masks``: ground-truth masks ``(B, 1, *S)`` or ``(B, *S)`` on the image grid (``S`` may be
  finer than ``grid``); a pixel is foreground when its value is ``> 0.5``.

Maps on a coarser grid than the mask are brought to the mask grid *mass-preservingly*
(:func:`resize_mass`: nearest upsampling divided by the block area), so a map's total mass is
unchanged and the ranking of pixels is that of the cells containing them.

NaN policy: a per-sample value that is undefined returns ``NaN`` for that sample (never an
exception): the segmentation metrics (:func:`iou_at_quantile`, :func:`average_precision`,
:func:`pointing_game`) are NaN for an empty mask; :func:`spearman_rank_correlation` is NaN when
either map is constant. Aggregate with ``torch.nanmean``.

Each metric's label, description and better direction are in :data:`dualattn.evaluate.specs.METRICS`
(:data:`METRIC_DIRECTIONS` is its direction column).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..grids import resize_mass
from .specs import METRICS, Direction

__all__ = [
    "Direction",
    "METRIC_DIRECTIONS",
    "resize_mass",
    "match_mask_grid",
    "iou_at_quantile",
    "activation_precision",
    "average_precision",
    "pointing_game",
    "balanced_accuracy",
    "curve_auc",
    "consistency_kl",
    "spearman_rank_correlation",
    "sharpness",
    "sharpness_in",
]


#: Better direction of every metric this package reports (key = results.json metric name), read off the one
#: metric table :data:`dualattn.evaluate.specs.METRICS`.
METRIC_DIRECTIONS: dict[str, Direction] = {name: spec.direction for name, spec in METRICS.items()}


# --------------------------------------------------------------------------------------------
# shape helpers
# --------------------------------------------------------------------------------------------


def _as_batch_grid(x: Tensor, spatial_dims: int, *, name: str) -> Tensor:
    """Return ``x`` as ``(B, *grid)`` given ``(B, 1, *grid)`` or ``(B, *grid)``."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == spatial_dims + 2:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have one channel, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.dim() == spatial_dims + 1:
        return x
    raise ValueError(
        f"{name} must be (B, 1, *grid) or (B, *grid) with {spatial_dims} spatial dims, "
        f"got shape {tuple(x.shape)}"
    )


def _mask_spatial_dims(masks: Tensor) -> int:
    # masks are (B, 1, *S) with 2 or 3 spatial dims, or (B, *S)
    if masks.dim() in (4, 5) and masks.shape[1] == 1:
        return masks.dim() - 2
    if masks.dim() in (3, 4):
        return masks.dim() - 1
    raise ValueError(f"masks must be (B, 1, *S) or (B, *S) in 2D/3D, got shape {tuple(masks.shape)}")


def match_mask_grid(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Bring ``maps`` to the grid of ``masks`` (mass-preserving) and flatten both.

    Args:
        maps: ``(B, 1, *grid)`` or ``(B, *grid)``.
        masks: ``(B, 1, *S)`` or ``(B, *S)``.

    Returns:
        ``(maps_flat, masks_flat)``, both ``(B, prod(S))``; the mask is boolean (``> 0.5``).
    """
    sd = _mask_spatial_dims(masks)
    m = _as_batch_grid(masks, sd, name="masks")
    a = _as_batch_grid(maps, sd, name="maps")
    if a.shape[0] != m.shape[0]:
        raise ValueError(f"maps batch {a.shape[0]} != masks batch {m.shape[0]}")
    a = a.detach()
    if not a.is_floating_point():
        a = a.float()
    if tuple(a.shape[1:]) != tuple(m.shape[1:]):
        a = resize_mass(a[:, None], m.shape[1:])[:, 0]
    return a.reshape(a.shape[0], -1), (m.detach() > 0.5).reshape(m.shape[0], -1)


# --------------------------------------------------------------------------------------------
# implicit segmentation
# --------------------------------------------------------------------------------------------


def _row_quantile(x: Tensor, q: float) -> Tensor:
    """Per-row ``q`` quantile with linear interpolation (``torch.quantile``'s default), via a sort,
    so that large 3-D volumes (> 16 M voxels, ``torch.quantile``'s limit) work. ``(B, N) -> (B, 1)``."""
    srt = torch.sort(x, dim=1).values
    pos = q * (x.shape[1] - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, x.shape[1] - 1)
    frac = pos - lo
    return (srt[:, lo] + (srt[:, hi] - srt[:, lo]) * frac).unsqueeze(1)


def _top_quantile(maps: Tensor, masks: Tensor, q: float) -> tuple[Tensor, Tensor]:
    """The map's pixels at or above its ``q`` quantile and the mask, both ``(B, N)`` bool on the mask grid."""
    if not (0.0 <= float(q) < 1.0):
        raise ValueError(f"q must be in [0, 1), got {q}")
    a, m = match_mask_grid(maps, masks)
    thr = _row_quantile(a.double(), float(q)).to(a.dtype)
    return a >= thr, m


def iou_at_quantile(maps: Tensor, masks: Tensor, q: float) -> Tensor:
    """IoU between the map's top ``1 - q`` fraction of pixels and the mask (higher is better).

    The map is brought to the mask grid (:func:`match_mask_grid`); per sample the threshold is
    the ``q`` quantile of the map's values (linear interpolation, as ``torch.quantile``) and the
    prediction is ``map >= threshold`` (pixels tied with the threshold are all selected, so a
    binary map equal to the mask scores 1 whenever the mask covers more than ``1 - q``).

    Args:
        maps: ``(B, 1, *grid)`` or ``(B, *grid)``.
        masks: ``(B, 1, *S)`` or ``(B, *S)``.
        q: quantile in ``[0, 1)``; the paper uses 0.975, 0.95 and 0.90.

    Returns:
        ``(B,)`` IoU in ``[0, 1]``; NaN for samples whose mask is empty.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4); m[0, 0, :2, :2] = 1
        >>> iou_at_quantile(m, m, 0.75).item()
        1.0
    """
    pred, m = _top_quantile(maps, masks, q)
    inter = (pred & m).sum(1).double()
    union = (pred | m).sum(1).double()
    iou = inter / union.clamp_min(1)
    return torch.where(m.any(1), iou, torch.full_like(iou, math.nan))


def activation_precision(maps: Tensor, masks: Tensor, q: float = 0.95) -> Tensor:
    """Share of the map's top ``1 - q`` fraction of pixels (voxels) that lie in the mask (higher is better).

    The "activation precision" of prototype networks on brain tumours: of what the map highlights most, how much
    is lesion. The same selection as :func:`iou_at_quantile` (map brought to the mask grid, threshold the ``q``
    quantile, ties selected), scored by precision instead of IoU, so a map that highlights a small part of a
    large lesion is not penalised for the rest. 2-D and 3-D alike.

    Args:
        maps: ``(B, 1, *grid)`` or ``(B, *grid)``.
        masks: ``(B, 1, *S)`` or ``(B, *S)``.
        q: quantile in ``[0, 1)``; default the top 5 %.

    Returns:
        ``(B,)`` precision in ``[0, 1]``; NaN for samples whose mask is empty.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4); m[0, 0, :2, :2] = 1
        >>> a = m.clone(); a[0, 0, 3, 3] = 1   # 4 of the 5 highlighted pixels are in the mask
        >>> activation_precision(a, m, 0.75).item()
        0.8
    """
    pred, m = _top_quantile(maps, masks, q)
    precision = (pred & m).sum(1).double() / pred.sum(1).double().clamp_min(1)
    return torch.where(m.any(1), precision, torch.full_like(precision, math.nan))


def average_precision(maps: Tensor, masks: Tensor) -> Tensor:
    """Average precision of the map's pixel scores against the mask (higher is better).

    Equal to ``sklearn.metrics.average_precision_score(mask.ravel(), map.ravel())`` per
    sample: ``AP = sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (tied scores
    form one threshold).

    Args:
        maps: ``(B, 1, *grid)`` or ``(B, *grid)`` (brought to the mask grid first).
        masks: ``(B, 1, *S)`` or ``(B, *S)``.

    Returns:
        ``(B,)`` AP in ``[0, 1]``; NaN for samples whose mask is empty.
    """
    a, m = match_mask_grid(maps, masks)
    a = a.double()
    out = torch.full((a.shape[0],), math.nan, dtype=torch.float64, device=a.device)
    for i in range(a.shape[0]):
        pos = int(m[i].sum())
        if pos == 0:
            continue
        scores, order = torch.sort(a[i], descending=True, stable=True)
        tp = torch.cumsum(m[i][order].double(), 0)
        # last index of every group of tied scores
        last = torch.ones_like(scores, dtype=torch.bool)
        last[:-1] = scores[1:] != scores[:-1]
        tp = tp[last]
        n_pred = (torch.nonzero(last).flatten() + 1).double()
        precision = tp / n_pred
        recall = tp / pos
        d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
        out[i] = (d_recall * precision).sum()
    return out


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """1 when the map's maximum falls inside the mask, else 0 (higher is better).

    The map is brought to the mask grid first; for a coarse map the maximum is a whole cell,
    and the sample scores 1 when any pixel of that cell (with the maximal value) is foreground.

    Returns:
        ``(B,)`` in ``{0, 1}``; NaN for samples whose mask is empty.
    """
    a, m = match_mask_grid(maps, masks)
    top = a == a.max(dim=1, keepdim=True).values
    hit = (top & m).any(1).double()
    return torch.where(m.any(1), hit, torch.full_like(hit, math.nan))


# --------------------------------------------------------------------------------------------
# classification and curves
# --------------------------------------------------------------------------------------------


def balanced_accuracy(y_true: Tensor, y_pred: Tensor) -> float:
    """Mean per-class recall over the classes present in ``y_true`` (sklearn's definition).

    Args:
        y_true: ``(N,)`` integer labels.
        y_pred: ``(N,)`` integer predictions.

    Returns:
        Balanced accuracy in ``[0, 1]``; NaN when ``y_true`` is empty.
    """
    y_true = torch.as_tensor(y_true).flatten().long()
    y_pred = torch.as_tensor(y_pred).flatten().long()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {tuple(y_true.shape)} != y_pred shape {tuple(y_pred.shape)}")
    if y_true.numel() == 0:
        return math.nan
    recalls = [((y_pred == c) & (y_true == c)).sum().item() / (y_true == c).sum().item() for c in torch.unique(y_true)]
    return float(sum(recalls) / len(recalls))


def curve_auc(fractions: Sequence[float] | Tensor, values: Sequence[float] | Tensor) -> float:
    """Area under a curve by the trapezoid rule, divided by the fraction range, times 100.

    A constant curve at accuracy ``a`` over ``[0, 1]`` scores ``100 a``.

    Args:
        fractions: increasing x values, e.g. ``0, 0.1, ..., 1``.
        values: y values, same length.
    """
    x = torch.as_tensor(fractions, dtype=torch.float64).flatten()
    y = torch.as_tensor(values, dtype=torch.float64).flatten()
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError(f"need >= 2 matching points, got {x.numel()} fractions and {y.numel()} values")
    if not bool((torch.diff(x) > 0).all()):
        raise ValueError(f"fractions must be strictly increasing, got {x.tolist()}")
    return float(100.0 * torch.trapezoid(y, x) / (x[-1] - x[0]))


# --------------------------------------------------------------------------------------------
# map properties
# --------------------------------------------------------------------------------------------


def _to_distribution(x: Tensor) -> Tensor:
    """(B, N) -> per-sample distribution: shift negative maps to min 0, normalize; all-zero -> uniform."""
    x = x.double()
    x = x - torch.clamp(x.min(dim=1, keepdim=True).values, max=0.0)
    s = x.sum(1, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[1])
    return torch.where(s > 0, x / s.clamp_min(1e-300), uniform)


def consistency_kl(fine: Tensor, coarse: Tensor, *, eps: float = 1e-12) -> Tensor:
    """KL(marginalize(fine) || coarse) per sample (lower is better; 0 = consistent).

    ``fine`` is sum-pooled to the grid of ``coarse`` (:func:`resize_mass`), both are
    normalized per sample to distributions (negative maps shifted to min 0), and
    ``sum p log(p / q)`` is returned with ``q`` clamped at ``eps``.

    Args:
        fine: ``(B, *fine_grid)`` or ``(B, 1, *fine_grid)``.
        coarse: ``(B, *coarse_grid)`` or ``(B, 1, *coarse_grid)``, same number of dims as ``fine``.

    Returns:
        ``(B,)`` float64.
    """
    if fine.dim() != coarse.dim() or fine.shape[0] != coarse.shape[0]:
        raise ValueError(f"fine {tuple(fine.shape)} and coarse {tuple(coarse.shape)} must have matching batch and rank")
    if fine.dim() in (4, 5) and fine.shape[1] == 1 and coarse.shape[1] == 1:
        fine, coarse = fine[:, 0], coarse[:, 0]
    marg = resize_mass(fine.detach().double()[:, None], coarse.shape[1:])[:, 0]
    p = _to_distribution(marg.reshape(marg.shape[0], -1))
    qd = _to_distribution(coarse.detach().reshape(coarse.shape[0], -1)).clamp_min(eps)
    terms = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log(qd)), torch.zeros_like(p))
    return terms.sum(1)


def _rank(x: Tensor) -> Tensor:
    """Ranks (1..N) along dim 1 with ties given their average rank, float64."""
    b, n = x.shape
    order = torch.argsort(x, dim=1, stable=True)
    sorted_x = torch.gather(x, 1, order)
    dev = x.device
    ranks = torch.empty(b, n, dtype=torch.float64, device=dev)
    for i in range(b):
        s = sorted_x[i]
        new_group = torch.ones(n, dtype=torch.bool, device=dev)
        new_group[1:] = s[1:] != s[:-1]
        group = torch.cumsum(new_group.long(), 0) - 1
        pos = torch.arange(1, n + 1, dtype=torch.float64, device=dev)
        n_groups = int(group[-1]) + 1
        sums = torch.zeros(n_groups, dtype=torch.float64, device=dev).index_add_(0, group, pos)
        counts = torch.zeros(n_groups, dtype=torch.float64, device=dev).index_add_(0, group, torch.ones_like(pos))
        ranks[i, order[i]] = (sums / counts)[group]
    return ranks


def spearman_rank_correlation(maps_a: Tensor, maps_b: Tensor) -> Tensor:
    """Spearman rank correlation between two maps of each sample (ties: average ranks).

    Used for the model-randomization sanity check (Adebayo et al., 2018): a map that barely
    changes when the model's weights are randomized (high correlation) does not explain the
    model; lower is better there.

    Args:
        maps_a: ``(B, ...)``.
        maps_b: ``(B, ...)`` with the same number of elements per sample.

    Returns:
        ``(B,)`` in ``[-1, 1]``; NaN when either map of a sample is constant.
    """
    a = maps_a.detach().reshape(maps_a.shape[0], -1).double()
    b = maps_b.detach().reshape(maps_b.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"maps_a {tuple(maps_a.shape)} and maps_b {tuple(maps_b.shape)} differ in size")
    ra, rb = _rank(a), _rank(b)
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = torch.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    num = (ra * rb).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.nan))


def sharpness(maps: Tensor) -> Tensor:
    """exp(entropy) / N of each map: 1 for a uniform map, 1/N for a single spike.

    The effective fraction of the grid a map spreads over, so a collapsed attention map shows
    at a glance. Maps are made distributions per sample first (negative maps shifted to min 0;
    an all-zero map counts as uniform). Descriptive: neither direction is better.

    Args:
        maps: ``(B, ...)``, e.g. ``(B, 1, *grid)``.

    Returns:
        ``(B,)`` float64 in ``[1/N, 1]``.
    """
    x = maps.detach().reshape(maps.shape[0], -1)
    p = _to_distribution(x)
    ent = -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(1)
    return torch.exp(ent) / p.shape[1]


def sharpness_in(maps: Tensor, cells: Tensor) -> Tensor:
    """:func:`sharpness` of each map restricted to its ``cells`` (e.g. the foreground cells): the map made a
    distribution over those cells only, ``exp(entropy) / n`` with ``n`` their number -- a map that is flat on the
    tissue scores 1 however much background it leaves out.

    Args:
        maps: ``(B, ...)`` with ``N`` values per sample.
        cells: ``(B, N)`` bool, at least one per sample.

    Returns:
        ``(B,)`` float64 in ``[1/n, 1]``.

    Example:
        >>> m = torch.tensor([[4.0, 4.0, 0.0, 0.0]])
        >>> float(sharpness(m)), float(sharpness_in(m, torch.tensor([[True, True, False, False]])))
        (0.5, 1.0)
    """
    x = maps.detach().reshape(maps.shape[0], -1).double()
    keep = cells.reshape(x.shape).bool()
    if not bool(keep.any(1).all()):
        raise ValueError("sharpness_in needs at least one cell per map")
    x = x - torch.clamp(torch.where(keep, x, torch.full_like(x, math.inf)).min(1, keepdim=True).values, max=0.0)
    x = torch.where(keep, x, torch.zeros_like(x))
    total = x.sum(1, keepdim=True)
    n = keep.sum(1, keepdim=True).double()
    p = torch.where(total > 0, x / total.clamp_min(1e-300), keep.double() / n)
    ent = -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(1)
    return torch.exp(ent) / n[:, 0]
