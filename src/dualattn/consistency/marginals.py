"""Marginals: sum-pool a fine map onto a coarse grid, in probability or log space."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dualattn.grids import block_factors, block_logsumexp, block_sum

from ._maps import _check_map, _coarse_spatial, _up

__all__ = ["log_marginalize", "marginalize"]


def marginalize(tau_fine: Tensor, coarse_shape: Sequence[int]) -> Tensor:
    """Sum-pool a fine map onto a coarse grid: ``marg(tau)[i] = sum_{j in N(i)} tau[j]`` (mass-preserving).

    Args:
        tau_fine: ``(B, *fine)`` map: probabilities in practice, but sum-pooling is linear, so any real values
            are accepted and not checked (log-probabilities belong in :func:`log_marginalize`).
        coarse_shape: the coarse spatial shape ``(*coarse)`` (or the full ``(B, *coarse)``); every fine axis
            must be an integer multiple of the coarse one.

    Returns:
        ``(B, *coarse)`` block sums, in ``tau_fine``'s dtype (summed in float32 for half precision).

    Raises:
        ValueError: naming both shapes when they do not divide; a ``(B, 1, H, W)`` map with a 2-D
            ``coarse_shape`` (the message says to squeeze the channel axis).

    Example:
        >>> marginalize(torch.arange(16.0).reshape(1, 4, 4), (2, 2)).tolist()
        [[[10.0, 18.0], [42.0, 50.0]]]
    """
    _check_map(tau_fine, "tau_fine")
    coarse = _coarse_spatial(tau_fine, coarse_shape, "tau_fine")
    factors = block_factors(tau_fine.shape[1:], coarse)
    return block_sum(_up(tau_fine), factors).to(tau_fine.dtype)


def log_marginalize(log_tau_fine: Tensor, coarse_shape: Sequence[int]) -> Tensor:
    """Marginalize in log space: ``logsumexp`` over each block (same block rule as :func:`marginalize`).

    Args:
        log_tau_fine: ``(B, *fine)`` log-probabilities (or unnormalized log-potentials).
        coarse_shape: coarse spatial shape ``(*coarse)`` (or ``(B, *coarse)``).

    Returns:
        ``(B, *coarse)`` ``log sum_{j in N(i)} exp(log_tau_fine[j])``.

    Example:
        >>> log_marginalize(torch.zeros(1, 2, 4), (1, 2)).exp().tolist()
        [[[4.0, 4.0]]]
    """
    _check_map(log_tau_fine, "log_tau_fine")
    coarse = _coarse_spatial(log_tau_fine, coarse_shape, "log_tau_fine")
    factors = block_factors(log_tau_fine.shape[1:], coarse)
    return block_logsumexp(_up(log_tau_fine), factors).to(log_tau_fine.dtype)
