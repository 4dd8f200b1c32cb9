r"""Control maps, scored like any method: how much of a map's score needs no image, or no learning.

* ``prior``: the ``dual`` model's image-independent map. Its feature-weighting maps are
  (:mod:`dualattn.models.base`, Theorem 3.1)

  .. math::

      \mu_k[j] \propto \tau_k[j]\, e^{-\lambda_{i(j)}} \ \text{(fine block)}, \qquad
      \mu_l[i] \propto \tau_l[i]\, e^{\lambda_i} \ \text{(coarse block)},

  with ``lambda`` the witness's multipliers (one per coarse cell; on the fine grid each fine cell
  takes its coarse cell's ``lambda``). The prior at a block is that block's factor alone,
  ``exp(-lambda)`` (fine) or ``exp(lambda)`` (coarse), normalized to sum 1 per image. With the
  global witness ``lambda`` is one learned parameter: the prior is the same for every image. With the
  amortized witness ``lambda`` depends on the image: the prior is the mean over a *population* of
  images of their normalized factors -- by default the images passed, so a batch's prior depends on
  the whole batch; the evaluation passes ``population=`` every test image, so the prior is the
  test-set mean, the same for every batch.
* ``dual_tau``: the ``dual`` model's gate map ``tau`` at the block, before the reparameterization
  (what the gate alone finds).
* ``center``: a centered isotropic Gaussian on the block's grid whose one-sigma disk (2-D) or ball
  (3-D) has the lesions' mean area: ``pi sigma^2 = f N`` (2-D), ``4/3 pi sigma^3 = f N`` (3-D), with
  ``N`` the grid's cells and ``f = lesion_fraction`` the mean lesion area as a fraction of the image
  (default :data:`DEFAULT_LESION_FRACTION`; the evaluation passes the value measured on the train
  split's masks). Distances are in grid cells (square cells); the centre is the grid's centre
  ``(n - 1) / 2`` per axis. Normalized to sum 1. It ignores the model except for its grid.

``raw_channel_<k>`` and ``random`` (:mod:`dualattn.explain.reference`) are controls too.

Example:
    >>> import torch
    >>> from dualattn.models import create_model
    >>> model = create_model("unet_encoder", variant="dual", features=4, img_size=32)
    >>> x = torch.randn(2, 1, 32, 32)
    >>> prior_map(model, x, block="block3").shape   # uniform: the witness starts at lambda = 0
    torch.Size([2, 1, 8, 8])
    >>> m = center_map(x, grid=(5, 5), lesion_fraction=3.141592653589793 / 25)  # sigma = 1 cell
    >>> round(float(m[0, 0, 2, 3] / m[0, 0, 2, 2]), 4)   # exp(-1/2)
    0.6065
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..grids import block_factors, upsample_blocks
from ._state import eval_mode
from .attention import model_variant

__all__ = [
    "DEFAULT_LESION_FRACTION",
    "center_map",
    "center_sigma",
    "dual_tau_map",
    "prior_map",
    "witness_factors",
]

logger = logging.getLogger(__name__)

#: ``center``'s default mean lesion area, as a fraction of the image.
DEFAULT_LESION_FRACTION = 0.05

#: Images per forward when a population is averaged.
_CHUNK = 64


def _dual_model(model: nn.Module, method: str) -> tuple[str, str]:
    """The (fine, coarse) gated blocks of a ``dual`` model; ValueError for any other model."""
    variant = model_variant(model)
    if variant is not None and variant != "dual":
        raise ValueError(f"method {method!r} explains a 'dual' model, but this model is {variant!r}")
    blocks = tuple(getattr(model, "attention_blocks", ()) or ())
    if getattr(model, "witness", None) is None or len(blocks) != 2 or not hasattr(model, "forward_with_attention"):
        raise ValueError(f"method {method!r} needs a 'dual' model with a witness and two gated blocks")
    return blocks[0], blocks[1]


def _per_sample_softmax(logits: Tensor) -> Tensor:
    return torch.softmax(logits.flatten(1).double(), dim=1).reshape(logits.shape)


def witness_factors(model: nn.Module, images: Tensor, *, block: str) -> Tensor:
    """The normalized image-independent factor of ``block`` for each image: ``(B, *grid)``, float64.

    ``softmax(-lambda upsampled to the fine grid)`` at the fine block, ``softmax(lambda)`` at the
    coarse one (module docstring), ``lambda`` being what ``model.witness`` returns in a forward pass of
    ``images`` (eval mode, no gradient; the model's mode and hooks are restored).

    Raises:
        ValueError: not a ``dual`` model, or ``block`` is not one of its two gated blocks.
    """
    fine, coarse = _dual_model(model, "prior")
    if block not in (fine, coarse):
        raise ValueError(f"block {block!r} has no attention map in this model; blocks with maps: {[fine, coarse]}")
    seen: list[Tensor] = []
    handle = model.witness.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        with torch.no_grad(), eval_mode(model):
            out = model.forward_with_attention(images.detach())
    finally:
        handle.remove()
    if not seen:  # pragma: no cover - the dual forward always calls its witness
        raise RuntimeError("the dual model's witness was not called")
    lam = seen[-1]
    if block == coarse:
        return _per_sample_softmax(lam)
    factors = block_factors(out.tau[fine].shape[1:], lam.shape[1:])
    return _per_sample_softmax(-upsample_blocks(lam, factors))


def prior_map(model: nn.Module, images: Tensor, *, block: str, population: Tensor | None = None) -> Tensor:
    """The ``dual`` model's image-independent map at ``block`` (module docstring), ``(B, 1, *grid)``.

    Args:
        model: a ``dual`` model (global or amortized witness).
        images: ``(B, C, *S)``; the result has one (identical) map per image.
        population: ``(N, C, *S)``, the images whose factors are averaged for an amortized witness
            (default ``images``); ignored by the global witness, whose factor is the same for every
            image. Processed in chunks of 64 images.

    Returns:
        ``(B, 1, *grid)`` float32 on the images' device, each map summing to 1, all equal.

    Raises:
        ValueError: not a ``dual`` model, a block it does not gate, or an empty population.
    """
    _dual_model(model, "prior")
    pop = images if population is None else population
    if not isinstance(pop, Tensor) or pop.dim() != images.dim() or pop.shape[0] == 0:
        shape = tuple(pop.shape) if isinstance(pop, Tensor) else type(pop).__name__
        raise ValueError(f"population must be a non-empty (N, C, *S) tensor like the images, got {shape}")
    if getattr(model, "witness_kind", None) == "global":
        pop = pop[:1]  # one learned lambda: every image has the same factor
    sums = [
        witness_factors(model, pop[start : start + _CHUNK].to(images.device), block=block).sum(0)
        for start in range(0, pop.shape[0], _CHUNK)
    ]
    mean = (torch.stack(sums).sum(0) / pop.shape[0]).float()
    mean = mean / mean.sum()
    return mean.unsqueeze(0).unsqueeze(0).expand(images.shape[0], 1, *mean.shape).clone().to(images.device)


def dual_tau_map(model: nn.Module, images: Tensor, *, block: str) -> Tensor:
    """The ``dual`` model's gate map ``tau`` at ``block``, before the reparameterization: ``(B, 1, *grid)``.

    Raises:
        ValueError: not a ``dual`` model, or a block it does not gate.
    """
    fine, coarse = _dual_model(model, "dual_tau")
    with torch.no_grad(), eval_mode(model):
        out = model.forward_with_attention(images.detach())
    if block not in out.tau:
        raise ValueError(f"block {block!r} has no attention map in this model; blocks with maps: {[fine, coarse]}")
    return out.tau[block].detach().float().unsqueeze(1)


def center_sigma(grid: Sequence[int], lesion_fraction: float) -> float:
    """Sigma (in grid cells) of ``center``: its one-sigma ball has ``lesion_fraction`` of the grid's cells.

    ``V_d sigma^d = f N`` with ``V_d = pi^(d/2) / Gamma(d/2 + 1)`` (``pi`` in 2-D, ``4/3 pi`` in 3-D).

    Example:
        >>> round(center_sigma((10, 10), math.pi / 100), 6)   # a disk of area pi: sigma = 1
        1.0

    Raises:
        ValueError: an empty grid or a fraction outside ``(0, 1]``.
    """
    grid = tuple(int(g) for g in grid)
    if not grid or any(g < 1 for g in grid):
        raise ValueError(f"grid must be positive sizes, got {grid}")
    number = isinstance(lesion_fraction, (int, float)) and not isinstance(lesion_fraction, bool)
    if not number or not 0 < lesion_fraction <= 1:
        raise ValueError(f"lesion_fraction must be a number in (0, 1], got {lesion_fraction!r}")
    d = len(grid)
    unit_ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
    return (lesion_fraction * math.prod(grid) / unit_ball) ** (1 / d)


def center_map(images: Tensor, *, grid: Sequence[int], lesion_fraction: float = DEFAULT_LESION_FRACTION) -> Tensor:
    """The ``center`` control: a centered isotropic Gaussian on ``grid`` (module docstring), ``(B, 1, *grid)``.

    Args:
        images: ``(B, C, *S)`` (only their number and device are used).
        grid: the block's grid.
        lesion_fraction: mean lesion area as a fraction of the image, in ``(0, 1]``.

    Returns:
        ``(B, 1, *grid)`` float32, each map summing to 1, peaked at the grid's centre.
    """
    sigma = center_sigma(grid, lesion_fraction)
    axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in grid]
    sq = sum(a.reshape([-1 if k == j else 1 for k in range(len(axes))]) ** 2 for j, a in enumerate(axes))
    g = torch.exp(-sq / (2 * sigma**2))
    g = (g / g.sum()).float()
    return g.expand(images.shape[0], 1, *g.shape).clone().to(images.device)
