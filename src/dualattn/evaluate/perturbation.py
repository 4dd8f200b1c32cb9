"""Input-perturbation curves: remove a growing fraction of pixels in the order a map ranks them.

The paper's protocol (DESIGN.md §2): rank the pixels of each image by *ascending* importance
(``order="least_first"``), replace the least important fraction ``f`` of pixels (all channels)
by a perturbation value, feed the perturbed images to a fixed classifier (the baseline) and
record the balanced accuracy per fraction; a faithful map keeps accuracy high, so a higher
area under that curve is better. ``order="most_first"`` removes the most important pixels
first (deletion); there a faster drop, a lower AUC, is better. Both orders share one loop.

The perturbation value is injectable: ``"zero"``, ``"mean"`` (per-sample, per-channel image
mean), ``"blur"`` (Gaussian-blurred image) or any callable ``images -> replacement`` of the
same shape.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..explain import eval_mode
from ..grids import resize_mass
from .metrics import balanced_accuracy, curve_auc

__all__ = [
    "PerturbationCurve",
    "make_perturbation",
    "removal_masks",
    "perturbation_predictions",
    "perturbation_curve",
    "DEFAULT_FRACTIONS",
]

logger = logging.getLogger(__name__)

#: 0, 0.1, ..., 1.0
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(i / 10, 2) for i in range(11))

Perturbation = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PerturbationCurve:
    """Balanced accuracy per removed fraction and the curve's AUC (x100)."""

    fractions: tuple[float, ...]
    balanced_accuracy: tuple[float, ...]
    auc: float
    order: str


def _gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur over every spatial axis, reflect padding, per channel."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    spatial = images.dim() - 2
    out = images
    b, c = images.shape[:2]
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}[spatial]
    for axis in range(spatial):
        shape = [1] * spatial
        shape[axis] = k.numel()
        weight = k.reshape(1, 1, *shape).repeat(c, 1, *([1] * spatial))
        pad = [0] * (2 * spatial)
        # F.pad takes pads from the last axis backwards
        pos = 2 * (spatial - 1 - axis)
        n = out.shape[2 + axis]
        r = min(radius, n - 1)
        pad[pos] = pad[pos + 1] = r
        mode = "reflect" if r > 0 else "constant"
        padded = torch.nn.functional.pad(out, pad, mode=mode) if r > 0 else out
        if r < radius:  # axis too short for the full kernel: crop the kernel
            sl = [slice(None)] * (2 + spatial)
            sl[2 + axis] = slice(radius - r, radius + r + 1)
            weight = weight[tuple(sl)]
            weight = weight / weight.sum(dim=tuple(range(2, 2 + spatial)), keepdim=True)
        out = conv(padded, weight, groups=c)
    return out.reshape(b, c, *images.shape[2:])


def make_perturbation(kind: str | Perturbation, *, sigma: float = 2.0) -> Perturbation:
    """Return a callable ``images (B, C, *S) -> replacement values (B, C, *S)``.

    Args:
        kind: ``"zero"``, ``"mean"`` (per-sample, per-channel mean), ``"blur"`` (Gaussian blur
            with ``sigma`` pixels) or a callable, returned unchanged.
        sigma: blur width in pixels (``"blur"`` only).
    """
    if callable(kind):
        return kind
    if kind == "zero":
        return torch.zeros_like
    if kind == "mean":
        return lambda images: images.mean(dim=tuple(range(2, images.dim())), keepdim=True).expand_as(images)
    if kind == "blur":
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        return lambda images: _gaussian_blur(images, float(sigma))
    raise ValueError(f"unknown perturbation {kind!r}; use 'zero', 'mean', 'blur' or a callable")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) < 2 or any(not (0.0 <= f <= 1.0) for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise ValueError(f"fractions must be >= 2 strictly increasing values in [0, 1], got {fr}")
    return fr


def _removal_rank(maps: Tensor, size: Sequence[int], order: str) -> Tensor:
    """Rank (0 = removed first) of every pixel of the map brought to ``size``: ``(B, 1, *size)`` int64."""
    if order not in ("least_first", "most_first"):
        raise ValueError(f"order must be 'least_first' or 'most_first', got {order!r}")
    if maps.dim() != len(size) + 2 or maps.shape[1] != 1:
        raise ValueError(f"maps must be (B, 1, *grid) with {len(size)} spatial dims, got {tuple(maps.shape)}")
    a = resize_mass(maps.detach().double(), size)
    b = a.shape[0]
    flat = a.reshape(b, -1)
    n = flat.shape[1]
    idx = torch.argsort(flat, dim=1, descending=(order == "most_first"), stable=True)
    position = torch.empty_like(idx)
    position.scatter_(1, idx, torch.arange(n, device=idx.device).expand(b, n).contiguous())
    return position.reshape(b, 1, *size)


def removal_masks(maps: Tensor, size: Sequence[int], fractions: Sequence[float], *, order: str) -> Tensor:
    """Boolean masks of the pixels removed at each fraction.

    The map is brought to the image grid (``size``) mass-preservingly; pixels are ranked by
    ascending value (``"least_first"``) or descending value (``"most_first"``), ties broken by
    flat pixel index; the first ``round(f * N)`` pixels are removed.

    Args:
        maps: ``(B, 1, *grid)``.
        size: image spatial size ``S``.
        fractions: removed fractions.
        order: ``"least_first"`` or ``"most_first"``.

    Returns:
        ``(F, B, 1, *S)`` boolean.
    """
    fr = _check_fractions(fractions)
    rank = _removal_rank(maps, size, order)
    n = rank[0].numel()
    return torch.stack([rank < int(round(f * n)) for f in fr])


@torch.no_grad()
def perturbation_predictions(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "least_first",
    perturbation: str | Perturbation = "zero",
) -> Tensor:
    """Predicted class of ``classifier`` on the perturbed images at every fraction.

    The classifier is called as given (put it in eval mode yourself; :func:`perturbation_curve`
    and :mod:`dualattn.evaluate.runner` do).

    Args:
        classifier: ``images (B, C, *S) -> logits (B, K)``.
        images: ``(B, C, *S)``.
        maps: ``(B, 1, *grid)`` importance maps (any grid; brought to ``S``).
        fractions: removed fractions (strictly increasing in ``[0, 1]``).
        order: ``"least_first"`` (the paper's) or ``"most_first"``.
        perturbation: see :func:`make_perturbation`.

    Returns:
        ``(B, F)`` int64 predictions.
    """
    if images.dim() < 3:
        raise ValueError(f"images must be (B, C, *S), got shape {tuple(images.shape)}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps batch {maps.shape[0]} != images batch {images.shape[0]}")
    fr = _check_fractions(fractions)
    rank = _removal_rank(maps, images.shape[2:], order)  # masks made one fraction at a time (3-D memory)
    n = rank[0].numel()
    replacement = make_perturbation(perturbation)(images)
    if replacement.shape != images.shape:
        raise ValueError(f"perturbation returned shape {tuple(replacement.shape)}, expected {tuple(images.shape)}")
    preds = []
    for f in fr:
        logits = classifier(torch.where(rank < int(round(f * n)), replacement, images))
        preds.append(logits.argmax(dim=1))
    return torch.stack(preds, dim=1)


def perturbation_curve(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    maps: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "least_first",
    perturbation: str | Perturbation = "zero",
) -> PerturbationCurve:
    """Balanced accuracy per removed fraction and its AUC x100 (one batch; see the module doc).

    ``least_first``: higher AUC is better; ``most_first``: lower is better.

    Example:
        >>> import torch
        >>> clf = lambda x: torch.stack([-x.sum((1, 2, 3)), x.sum((1, 2, 3))], 1)
        >>> x = torch.rand(4, 1, 8, 8); y = torch.ones(4, dtype=torch.long)
        >>> perturbation_curve(clf, x, y, x, fractions=(0.0, 0.5, 1.0)).balanced_accuracy
        (1.0, 1.0, 0.0)
    """
    fr = _check_fractions(fractions)
    ctx = eval_mode(classifier) if isinstance(classifier, nn.Module) else contextlib.nullcontext()
    with ctx:
        preds = perturbation_predictions(
            classifier, images, maps, fractions=fr, order=order, perturbation=perturbation
        )
    acc = tuple(balanced_accuracy(labels, preds[:, j]) for j in range(len(fr)))
    return PerturbationCurve(fractions=fr, balanced_accuracy=acc, auc=curve_auc(fr, acc), order=order)
