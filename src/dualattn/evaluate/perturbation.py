"""Input-perturbation curves: remove a growing fraction of pixels in the order a map ranks them.

The paper's protocol (DESIGN.md §2): rank the pixels of each image by *ascending* importance
(``order="least_first"``), replace the least important fraction ``f`` of pixels (all channels)
by a fill, feed the perturbed images to a fixed classifier (the baseline) and
record the balanced accuracy per fraction; a faithful map keeps accuracy high, so a higher
area under that curve is better. ``order="most_first"`` removes the most important pixels
first (deletion); there a faster drop, a lower AUC, is better. Both orders share one loop.

What the removed pixels become is a *fill*, injected as a name or a callable
``fill(images (B, C, *S), removed (B, 1, *S) bool) -> images`` that replaces the removed pixels
(all channels) and keeps the others. The fill decides how a curve ranks the maps (pixel methods
that multiply by the input give no relevance to empty background, so a fill that equals the
background flatters them), so :data:`FILLS` names four, computed per image and channel:

* ``"mean"``: the image's own mean (over all its pixels). dualattn's images are z-scored per
  image and channel, so this is also ``"zero"``, the value used before fills had names (still
  accepted: 0 in every channel);
* ``"background"``: the image's own background intensity, its 1st percentile
  (:data:`BACKGROUND_PERCENTILE`; linear interpolation between order statistics, as numpy's
  default);
* ``"blur"``: a Gaussian-blurred copy of the image (``sigma`` = 2 px, reflect padding);
* ``"road"``: ROAD's noisy linear imputation (Rong et al., ICML 2022): each removed pixel the
  weighted mean of its neighbours, plus Gaussian noise (:func:`dualattn.evaluate.road.road_impute`).
  It depends on which pixels are removed, the first three do not.

Every fill is a pure function of ``(images, removed)`` and fills each image on its own: another
image in the batch never changes it. ``"road"`` draws its noise from a new generator seeded with
``seed`` on every call (:class:`RoadFill`), so the same inputs give the same output.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_number, check_positive_int
from ..explain import eval_mode
from ..grids import resize_mass
from .metrics import balanced_accuracy, curve_auc
from .road import MAX_ITER, NOISE_STD, TOL, road_impute

__all__ = [
    "BACKGROUND_PERCENTILE",
    "DEFAULT_FRACTIONS",
    "FILLS",
    "Fill",
    "PerturbationCurve",
    "ReplacementFill",
    "RoadFill",
    "make_fill",
    "make_perturbation",
    "perturbation_curve",
    "perturbation_outputs",
    "perturbation_predictions",
    "removal_masks",
]

logger = logging.getLogger(__name__)

#: 0, 0.1, ..., 1.0
DEFAULT_FRACTIONS: tuple[float, ...] = tuple(round(i / 10, 2) for i in range(11))

#: the named fills of the removed pixels (``"zero"`` is also accepted: the z-scored ``"mean"``)
FILLS: tuple[str, ...] = ("mean", "background", "blur", "road")
#: the percentile of an image's own intensities taken as its background (``"background"`` fill)
BACKGROUND_PERCENTILE: float = 1.0

#: ``images (B, C, *S) -> replacement values (B, C, *S)``: a map-independent replacement
Perturbation = Callable[[Tensor], Tensor]
#: ``fill(images (B, C, *S), removed (B, 1, *S) bool) -> images with the removed pixels replaced``
Fill = Callable[[Tensor, Tensor], Tensor]


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


def _per_channel_percentile(images: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile of every image and channel, ``(B, C, 1, ...)``; numpy's linear method."""
    flat = images.flatten(2)
    n = flat.shape[2]
    pos = q / 100.0 * (n - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    v_lo = torch.kthvalue(flat, lo + 1, dim=2).values
    v_hi = v_lo if hi == lo else torch.kthvalue(flat, hi + 1, dim=2).values
    out = v_lo + (pos - lo) * (v_hi - v_lo)
    return out.reshape(*images.shape[:2], *([1] * (images.dim() - 2)))


def _check_removed(images: Tensor, removed: Tensor) -> None:
    ok = (
        torch.is_tensor(removed) and removed.dtype == torch.bool and removed.dim() == images.dim()
        and removed.shape[0] == images.shape[0] and removed.shape[1] in (1, images.shape[1])
        and removed.shape[2:] == images.shape[2:]
    )
    if not ok:
        raise ValueError(
            f"removed must be a bool tensor of shape (B, 1, *S) for images {tuple(images.shape)}, got "
            f"{tuple(getattr(removed, 'shape', ()))} {getattr(removed, 'dtype', type(removed).__name__)}"
        )


class ReplacementFill:
    """A fill whose removed pixels take a map-independent replacement image (mean, background, blur).

    ``fill(images, removed) = where(removed, replacement(images), images)``; :func:`perturbation_predictions`
    computes ``replacement(images)`` once for all fractions.

    Args:
        replacement: ``images (B, C, *S) -> replacement values (B, C, *S)``.
        name: shown in ``repr``.
    """

    def __init__(self, replacement: Perturbation, name: str = "custom") -> None:
        if not callable(replacement):
            raise ValueError(f"replacement must be callable, got {type(replacement).__name__}")
        self.replacement = replacement
        self.name = name

    def __call__(self, images: Tensor, removed: Tensor) -> Tensor:
        _check_removed(images, removed)
        repl = self.replacement(images)
        if tuple(repl.shape) != tuple(images.shape):
            raise ValueError(f"fill {self.name!r} returned shape {tuple(repl.shape)}, expected {tuple(images.shape)}")
        return torch.where(removed, repl, images)

    def __repr__(self) -> str:
        return f"ReplacementFill({self.name!r})"


class RoadFill:
    """ROAD's noisy linear imputation as a fill (:func:`dualattn.evaluate.road.road_impute`).

    The noise is one field ``noise_std * N(0, 1)`` of shape ``(C, *S)``, drawn on every call from
    a new CPU generator seeded with ``seed`` and shared by every image of the batch: an image's
    fill depends on that image and its removed pixels only, never on the batch it comes in (so
    the batch size does not change a curve), and a pixel gets the same noise at every fraction.

    Args:
        noise_std: standard deviation of the noise on the imputed pixels (>= 0).
        seed: seed of the noise.
        tol, max_iter: the conjugate-gradient stopping rule (see :func:`road_impute`).
    """

    def __init__(
        self, *, noise_std: float = NOISE_STD, seed: int = 0, tol: float = TOL, max_iter: int = MAX_ITER
    ) -> None:
        self.noise_std = check_number("noise_std", noise_std, low=0.0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.tol = check_number("tol", tol, low=0.0, low_inclusive=False)
        self.max_iter = check_positive_int("max_iter", max_iter)
        self.name = "road"

    def __call__(self, images: Tensor, removed: Tensor) -> Tensor:
        _check_removed(images, removed)
        out = road_impute(images, removed, noise_std=0.0, tol=self.tol, max_iter=self.max_iter)
        if self.noise_std > 0 and bool(removed.any()):
            gen = torch.Generator().manual_seed(self.seed)
            dt = torch.float64 if images.dtype == torch.float64 else torch.float32
            noise = torch.randn(tuple(images.shape[1:]), generator=gen, dtype=dt)
            noise = (self.noise_std * noise).to(device=images.device, dtype=images.dtype)
            out = torch.where(removed, out + noise, out)
        return out

    def __repr__(self) -> str:
        return f"RoadFill(noise_std={self.noise_std}, seed={self.seed}, tol={self.tol}, max_iter={self.max_iter})"


def make_perturbation(kind: str | Perturbation, *, sigma: float = 2.0) -> Perturbation:
    """The replacement ``images (B, C, *S) -> values (B, C, *S)`` of a map-independent fill.

    Kept for callers of the replacement interface; :func:`make_fill` is the general one.

    Args:
        kind: ``"zero"``, ``"mean"``, ``"background"``, ``"blur"`` (see the module doc) or a
            callable, returned unchanged.
        sigma: blur width in pixels (``"blur"`` only).
    """
    if callable(kind):
        return kind
    if kind == "zero":
        return torch.zeros_like
    if kind == "mean":
        return lambda images: images.mean(dim=tuple(range(2, images.dim())), keepdim=True).expand_as(images)
    if kind == "background":
        return lambda images: _per_channel_percentile(images, BACKGROUND_PERCENTILE).expand_as(images)
    if kind == "blur":
        sigma = check_number("sigma", sigma, low=0.0, low_inclusive=False)
        return lambda images: _gaussian_blur(images, float(sigma))
    raise ValueError(f"unknown perturbation {kind!r}; use 'zero', 'mean', 'background', 'blur' or a callable")


def make_fill(
    kind: str | Fill, *, sigma: float = 2.0, noise_std: float = NOISE_STD, seed: int = 0
) -> Fill:
    """Return a fill ``(images (B, C, *S), removed (B, 1, *S) bool) -> images`` (see the module doc).

    Args:
        kind: one of :data:`FILLS` (``"mean"``, ``"background"``, ``"blur"``, ``"road"``), ``"zero"``,
            or a fill callable, returned unchanged.
        sigma: blur width in pixels (``"blur"``).
        noise_std: standard deviation of ROAD's noise (``"road"``).
        seed: seed of ROAD's noise (``"road"``).

    Example:
        >>> import torch
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> removed = torch.tensor([[[[True, False], [False, False]]]])
        >>> make_fill("mean")(x, removed)
        tensor([[[[1.5000, 1.0000],
                  [2.0000, 3.0000]]]])
    """
    if callable(kind):
        return kind
    if kind == "road":
        return RoadFill(noise_std=noise_std, seed=seed)
    if kind in ("zero", "mean", "background", "blur"):
        return ReplacementFill(make_perturbation(kind, sigma=sigma), kind)
    raise ValueError(f"unknown fill {kind!r}; use one of {', '.join(FILLS)}, 'zero' or a callable")


def _resolve_fill(fill: str | Fill | None, perturbation: str | Perturbation | None) -> Fill:
    """``fill`` or the legacy ``perturbation`` (a name or a replacement callable); ``"mean"`` when neither."""
    if perturbation is not None:
        if fill is not None:
            raise ValueError(f"give fill or perturbation, not both (got fill={fill!r}, perturbation={perturbation!r})")
        if callable(perturbation):
            return ReplacementFill(perturbation)
        return make_fill(perturbation)
    return make_fill("mean" if fill is None else fill)


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
def perturbation_outputs(
    classifier: nn.Module | Callable[[Tensor], Tensor] | Sequence[nn.Module | Callable[[Tensor], Tensor]],
    images: Tensor,
    maps: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "least_first",
    fill: str | Fill | None = None,
    perturbation: str | Perturbation | None = None,
) -> Tensor | list[Tensor]:
    """Log-probabilities of ``classifier`` on the perturbed images at every fraction.

    The classifier is called as given (put it in eval mode yourself; :func:`perturbation_curve`
    and :mod:`dualattn.evaluate.runner` do). Several classifiers (a list) see the *same* perturbed images,
    made once (ROAD's imputation is the expensive part; it depends on the images and the map, not on the
    model).

    Args:
        classifier: ``images (B, C, *S) -> logits (B, K)``, or a list of them.
        images: ``(B, C, *S)``.
        maps: ``(B, 1, *grid)`` importance maps (any grid; brought to ``S``).
        fractions: removed fractions (strictly increasing in ``[0, 1]``).
        order: ``"least_first"`` (the paper's) or ``"most_first"``.
        fill: a name of :data:`FILLS`, ``"zero"`` or a fill callable (:func:`make_fill`);
            ``None``: ``"mean"``.
        perturbation: the former keyword: a name or a replacement callable ``images -> values``
            (:func:`make_perturbation`); give it or ``fill``, not both.

    Returns:
        ``(B, F, K)`` float32 log-softmax outputs (a list of them, one per classifier, for a list).
    """
    many = isinstance(classifier, (list, tuple))
    models = list(classifier) if many else [classifier]
    if images.dim() < 3:
        raise ValueError(f"images must be (B, C, *S), got shape {tuple(images.shape)}")
    if maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps batch {maps.shape[0]} != images batch {images.shape[0]}")
    fr = _check_fractions(fractions)
    rank = _removal_rank(maps, images.shape[2:], order)  # masks made one fraction at a time (3-D memory)
    n = rank[0].numel()
    fill_fn = _resolve_fill(fill, perturbation)
    replacement = None
    if isinstance(fill_fn, ReplacementFill):  # map-independent: one replacement for every fraction
        replacement = fill_fn.replacement(images)
        if tuple(replacement.shape) != tuple(images.shape):
            raise ValueError(
                f"fill {fill_fn.name!r} returned shape {tuple(replacement.shape)}, expected {tuple(images.shape)}"
            )
    outs: list[list[Tensor]] = [[] for _ in models]
    for f in fr:
        removed = rank < int(round(f * n))
        if replacement is not None:
            perturbed = torch.where(removed, replacement, images)
        else:
            perturbed = fill_fn(images, removed)
            if tuple(perturbed.shape) != tuple(images.shape):
                raise ValueError(f"fill returned shape {tuple(perturbed.shape)}, expected {tuple(images.shape)}")
        for j, model in enumerate(models):
            outs[j].append(model(perturbed).float().log_softmax(dim=1))
    stacked = [torch.stack(o, dim=1) for o in outs]
    return stacked if many else stacked[0]


@torch.no_grad()
def perturbation_predictions(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    maps: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "least_first",
    fill: str | Fill | None = None,
    perturbation: str | Perturbation | None = None,
) -> Tensor:
    """Predicted class of ``classifier`` on the perturbed images at every fraction: the argmax of
    :func:`perturbation_outputs` (same arguments).

    Returns:
        ``(B, F)`` int64 predictions.
    """
    return perturbation_outputs(classifier, images, maps, fractions=fractions, order=order, fill=fill,
                                perturbation=perturbation).argmax(dim=2)


def perturbation_curve(
    classifier: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    maps: Tensor,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    order: str = "least_first",
    fill: str | Fill | None = None,
    perturbation: str | Perturbation | None = None,
) -> PerturbationCurve:
    """Balanced accuracy per removed fraction and its AUC x100 (one batch; see the module doc).

    ``least_first``: higher AUC is better; ``most_first``: lower is better. ``fill`` and
    ``perturbation`` as in :func:`perturbation_predictions`.

    Example:
        >>> import torch
        >>> clf = lambda x: torch.stack([-x.sum((1, 2, 3)), x.sum((1, 2, 3))], 1)
        >>> x = torch.rand(4, 1, 8, 8); y = torch.ones(4, dtype=torch.long)
        >>> perturbation_curve(clf, x, y, x, fractions=(0.0, 0.5, 1.0), fill="zero").balanced_accuracy
        (1.0, 1.0, 0.0)
    """
    fr = _check_fractions(fractions)
    ctx = eval_mode(classifier) if isinstance(classifier, nn.Module) else contextlib.nullcontext()
    with ctx:
        preds = perturbation_predictions(
            classifier, images, maps, fractions=fr, order=order, fill=fill, perturbation=perturbation
        )
    acc = tuple(balanced_accuracy(labels, preds[:, j]) for j in range(len(fr)))
    return PerturbationCurve(fractions=fr, balanced_accuracy=acc, auc=curve_auc(fr, acc), order=order)
