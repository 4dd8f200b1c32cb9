"""Validation, compute dtype and log floors shared by the consistency functions (private).

Every public function of :mod:`dualattn.consistency` checks its maps here, computes half-precision inputs
in float32 (:func:`_up`) and floors maps at the dtype's smallest normal number, in probability space
(:func:`_log_of`) or in log space (:func:`_shifted`), so that both spaces give the same finite answer.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from dualattn.grids import block_factors

_REDUCTIONS = ("none", "mean", "sum")


def _check_map(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be a map (B, H, W) or (B, D, H, W); got shape {tuple(x.shape)} ({x.ndim} dims)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 are computed in float32; float32/float64 as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _up(x: Tensor) -> Tensor:
    return x.to(_compute_dtype(x.dtype))


def _coarse_spatial(x: Tensor, coarse_shape: Sequence[int], name: str) -> tuple[int, ...]:
    """Accept a coarse spatial shape ``(*coarse)`` or a full one ``(B, *coarse)``."""
    try:
        shape = tuple(int(s) for s in coarse_shape)
    except TypeError as exc:
        raise ValueError(f"coarse_shape must be a sequence of ints, got {coarse_shape!r}") from exc
    spatial = x.ndim - 1
    if len(shape) == spatial + 1:
        if shape[0] != x.shape[0]:
            raise ValueError(
                f"coarse_shape {shape} has batch size {shape[0]} but {name} has shape {tuple(x.shape)}"
            )
        shape = shape[1:]
    if len(shape) != spatial:
        raise ValueError(
            f"coarse_shape {tuple(coarse_shape)} does not match the {spatial} spatial dims of {name} "
            f"with shape {tuple(x.shape)}"
        )
    return shape


def _flat_lse(x: Tensor) -> Tensor:
    """logsumexp over all grid positions per sample, keeping dims for broadcasting."""
    return torch.logsumexp(x.flatten(1), dim=1).reshape((x.shape[0],) + (1,) * (x.ndim - 1))


def _shifted(x: Tensor) -> Tensor:
    """Compute-dtype log map, log-normalized per sample and floored at ``log(finfo.tiny)``.

    The projections are invariant to the normalizing shift; it keeps the large cells near 0 so that float32
    keeps their precision for logits of magnitude 1e4. The floor (-87.3 in float32, -708.4 in float64) is
    the log-space twin of the floor :func:`project_exact` applies to probabilities: cells with less mass
    than the smallest normal number (``-inf`` included) count as having exactly that much, so that disjoint
    supports of the two maps still give a finite, well-defined answer (the same in both spaces) and finite
    gradients.
    """
    x = _up(x)
    x = torch.log_softmax(x.flatten(1), dim=1).reshape(x.shape)
    return x.clamp_min(math.log(torch.finfo(x.dtype).tiny))


def _log_of(tau: Tensor) -> Tensor:
    """log of a probability map in its compute dtype; exact zeros are floored at the smallest normal."""
    t = _up(tau)
    return torch.log(t.clamp_min(torch.finfo(t.dtype).tiny))


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x


def _check_pair(fine: Tensor, coarse: Tensor, fine_name: str, coarse_name: str) -> tuple[int, ...]:
    _check_map(fine, fine_name)
    _check_map(coarse, coarse_name)
    if fine.ndim != coarse.ndim:
        raise ValueError(
            f"{fine_name} shape {tuple(fine.shape)} and {coarse_name} shape {tuple(coarse.shape)} "
            "have different numbers of dims"
        )
    if fine.shape[0] != coarse.shape[0]:
        raise ValueError(
            f"batch sizes differ: {fine_name} shape {tuple(fine.shape)}, {coarse_name} shape {tuple(coarse.shape)}"
        )
    return block_factors(fine.shape[1:], coarse.shape[1:])


def _check_lam(lam: Tensor, coarse: Tensor) -> Tensor:
    if not isinstance(lam, Tensor):
        raise ValueError(f"lam must be a torch.Tensor, got {type(lam).__name__}")
    if tuple(lam.shape) == tuple(coarse.shape[1:]):
        lam = lam.unsqueeze(0).expand(coarse.shape)
    if tuple(lam.shape) != tuple(coarse.shape):
        raise ValueError(
            f"lam shape {tuple(lam.shape)} must be (B, *coarse) = {tuple(coarse.shape)} or (*coarse)"
        )
    return lam


def _check_weights(weights: Sequence[float] | None, m_levels: int) -> list[float] | None:
    if weights is None:
        return None
    w = [float(v) for v in weights]
    if len(w) != m_levels:
        raise ValueError(f"weights {tuple(weights)} must have one entry per level ({m_levels})")
    if any(not math.isfinite(v) or v <= 0 for v in w):
        raise ValueError(f"weights must be finite and > 0, got {tuple(weights)}")
    return w


def _check_chain(maps: Sequence[Tensor], name: str) -> list[tuple[int, ...]]:
    maps = list(maps)
    if len(maps) < 2:
        raise ValueError(f"{name} needs at least 2 levels (finest first), got {len(maps)}")
    for m, t in enumerate(maps):
        _check_map(t, f"{name}[{m}]")
    factors = []
    for m in range(len(maps) - 1):
        a, b = maps[m], maps[m + 1]
        if a.ndim != b.ndim or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"{name}[{m}] shape {tuple(a.shape)} and {name}[{m + 1}] shape {tuple(b.shape)} "
                "differ in batch size or number of dims"
            )
        factors.append(block_factors(a.shape[1:], b.shape[1:]))
    return factors
