"""Grids and blocks: block factors, block sums / upsampling, mass-preserving resize (lowest layer).

A map is a batch-first tensor ``(B, *grid)`` (or ``(B, C, *grid)`` for :func:`resize_mass`). A coarse
grid cell covers a *block* of fine cells; the block factors are one integer per axis
(:func:`block_factors`). :func:`block_sum` (sum-pooling, what ``dualattn.consistency.marginalize``
computes), :func:`upsample_blocks` (its adjoint: copy each coarse cell over its block) and
:func:`block_logsumexp` work on those blocks; :func:`resize_mass` brings a map to any grid while keeping
each sample's total mass (what the evaluation uses to compare maps with masks).

This module imports only torch: every package above it (consistency, models, explain, evaluate) uses
these helpers instead of its own copy.

Speed: on CPU, PyTorch's reductions over small strided dims (``x.view(B, h, 2, w, 2).sum((2, 4))``) and
broadcasting multiplies run far below memory speed; adding the ``f`` slices of each axis and
``index_select`` (or a 0/1 matmul) upsampling are several times faster on small maps
(``benchmarks/consistency_speed.py``, docs/consistency.md). Every function is a plain differentiable
torch op.

Example:
    >>> import torch
    >>> x = torch.arange(16.0).reshape(1, 4, 4)
    >>> factors = block_factors((4, 4), (2, 2))
    >>> block_sum(x, factors).tolist()
    [[[10.0, 18.0], [42.0, 50.0]]]
    >>> upsample_blocks(torch.tensor([[[1.0, 2.0]]]), (1, 2)).tolist()
    [[[1.0, 1.0, 2.0, 2.0]]]
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "block_factors",
    "block_logsumexp",
    "block_sum",
    "resize_mass",
    "upsample_blocks",
]

# above this width the dense 0/1 matmul does more arithmetic than an index_select is worth
_MATMUL_MAX_WIDTH = 512


def block_factors(fine_shape: Sequence[int], coarse_shape: Sequence[int]) -> tuple[int, ...]:
    """Integer block factor per axis so that ``fine = coarse * factor`` on every axis.

    Args:
        fine_shape: spatial shape of the fine grid, e.g. ``(32, 32)``.
        coarse_shape: spatial shape of the coarse grid, e.g. ``(16, 16)``.

    Returns:
        ``(f_1, ..., f_d)`` with ``fine_shape[a] == coarse_shape[a] * f_a``.

    Raises:
        ValueError: naming both shapes when the ranks differ or an axis does not divide.

    Example:
        >>> block_factors((32, 24), (16, 6))
        (2, 4)
    """
    fine = tuple(int(s) for s in fine_shape)
    coarse = tuple(int(s) for s in coarse_shape)
    if len(fine) != len(coarse):
        raise ValueError(f"fine grid {fine} and coarse grid {coarse} have different numbers of axes")
    if any(c <= 0 for c in coarse) or any(f <= 0 for f in fine):
        raise ValueError(f"grid shapes must be positive: fine {fine}, coarse {coarse}")
    if any(f % c for f, c in zip(fine, coarse)):
        raise ValueError(
            f"fine grid {fine} is not an integer multiple of coarse grid {coarse} on every axis "
            "(each coarse cell must cover a whole block of fine cells)"
        )
    return tuple(f // c for f, c in zip(fine, coarse))


def block_sum(x: Tensor, factors: tuple[int, ...]) -> Tensor:
    """Sum each block of ``prod(factors)`` cells: ``(B, *fine) -> (B, *fine // factors)`` (sum-pooling).

    Args:
        x: ``(B, *fine)``.
        factors: one integer per spatial axis dividing it (:func:`block_factors`); not re-checked here,
            this is the hot path of the consistency layer.

    Returns:
        A new tensor (never a view of ``x``, even when every factor is 1).

    Example:
        >>> block_sum(torch.ones(1, 2, 4), (2, 2)).tolist()
        [[[4.0, 4.0]]]
    """
    out = x
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        dim = 1 + axis
        shape = tuple(out.shape)
        view = out.reshape(shape[:dim] + (shape[dim] // f, f) + shape[dim + 1 :])
        acc = view.select(dim + 1, 0) + view.select(dim + 1, 1)
        for k in range(2, f):
            acc = acc + view.select(dim + 1, k)
        out = acc
    return out.clone() if out is x else out


@functools.lru_cache(maxsize=128)
def _repeat_index(n_coarse: int, factor: int, device: torch.device) -> Tensor:
    return torch.div(torch.arange(n_coarse * factor, device=device), factor, rounding_mode="floor")


@functools.lru_cache(maxsize=128)
def _repeat_matrix(n_coarse: int, factor: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0/1 matrix ``(n_coarse, n_coarse * factor)`` with ``x @ P`` repeating each entry ``factor`` times."""
    cols = torch.arange(n_coarse * factor, device=device)
    mat = torch.zeros(n_coarse, n_coarse * factor, dtype=dtype, device=device)
    mat[torch.div(cols, factor, rounding_mode="floor"), cols] = 1
    return mat


def upsample_blocks(x: Tensor, factors: Sequence[int], *, use_matmul: bool = False) -> Tensor:
    """Copy each coarse cell over its block: ``(B, *coarse) -> (B, *(coarse * factors))``.

    The adjoint of :func:`block_sum` (nearest-neighbour upsampling by integer factors).

    Args:
        x: ``(B, *coarse)``.
        factors: one positive integer per spatial axis.
        use_matmul: repeat the innermost axis by a matmul with a cached 0/1 matrix (exact for finite
            inputs: every output is one input times 1 plus zeros; BLAS makes it several times faster than
            a strided gather on CPU). Only for inputs known to be finite, since ``0 * inf`` would spread NaN
            along the row. The other axes (and all axes without it) use ``index_select`` of whole rows.

    Returns:
        A new tensor (never a view of ``x``).

    Raises:
        ValueError: ``factors`` do not match the spatial dims of ``x`` or are not positive.

    Example:
        >>> upsample_blocks(torch.tensor([[[1.0, 2.0]]]), (1, 2)).tolist()
        [[[1.0, 1.0, 2.0, 2.0]]]
    """
    factors = tuple(int(f) for f in factors)
    if len(factors) != x.ndim - 1 or any(f <= 0 for f in factors):
        raise ValueError(f"factors {factors} do not match the spatial dims of shape {tuple(x.shape)}")
    out = x
    last = len(factors) - 1
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        dim = 1 + axis
        n = int(out.shape[dim])
        if use_matmul and axis == last and out.is_floating_point() and n * f <= _MATMUL_MAX_WIDTH:
            mat = _repeat_matrix(n, f, out.dtype, out.device)
            out = (out.reshape(-1, n) @ mat).reshape(out.shape[:-1] + (n * f,))
        else:
            out = out.index_select(dim, _repeat_index(n, f, out.device))
    return out.clone() if out is x else out


def block_logsumexp(x: Tensor, factors: tuple[int, ...]) -> Tensor:
    """``logsumexp`` over each block: ``(B, *fine) -> (B, *fine // factors)`` (max-shifted, any finite range).

    Example:
        >>> block_logsumexp(torch.zeros(1, 2, 4), (2, 2)).exp().tolist()
        [[[4.0, 4.0]]]
    """
    shape: list[int] = [x.shape[0]]
    for n, f in zip(x.shape[1:], factors):
        shape += [n // f, f]
    return torch.logsumexp(x.reshape(shape), dim=tuple(2 + 2 * a for a in range(len(factors))))


def _resize_matrix(n_in: int, n_out: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_out, n_in) matrix whose columns sum to 1: mass-preserving 1-D resize."""
    mat = torch.zeros(n_out, n_in, dtype=dtype, device=device)
    if n_out >= n_in:
        # nearest upsampling (PyTorch's 'nearest': src = floor(dst * n_in / n_out)),
        # each source cell's mass split evenly over the output cells it feeds
        src = torch.div(torch.arange(n_out, device=device) * n_in, n_out, rounding_mode="floor")
        counts = torch.bincount(src, minlength=n_in).to(dtype)
        mat[torch.arange(n_out, device=device), src] = 1.0 / counts[src]
    else:
        # sum pooling into bins: dst = floor(src * n_out / n_in)
        dst = torch.div(torch.arange(n_in, device=device) * n_out, n_in, rounding_mode="floor")
        mat[dst, torch.arange(n_in, device=device)] = 1.0
    return mat


def resize_mass(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resize maps to ``size`` preserving each sample's total mass.

    Along each axis independently: upsampling is nearest-neighbour with each value divided by
    the number of output cells it is copied to (the block area when the factor is an integer);
    downsampling sums the input cells falling into each output cell (sum-pooling). The total
    of every sample is unchanged (exactly, up to float rounding).

    Args:
        maps: ``(B, C, *grid)`` tensor (``C`` channels kept, e.g. ``C = 1``).
        size: target spatial size, one integer per spatial axis.

    Returns:
        ``(B, C, *size)`` tensor in the dtype of ``maps`` (float).

    Raises:
        ValueError: ``size`` does not match the spatial dims of ``maps`` or is not positive.

    Example:
        >>> import torch
        >>> resize_mass(torch.ones(1, 1, 2, 2), (4, 4)).sum().item()
        4.0
    """
    size = tuple(int(s) for s in size)
    spatial = maps.dim() - 2
    if spatial < 1 or len(size) != spatial:
        raise ValueError(f"size {size} does not match the {spatial} spatial dims of maps {tuple(maps.shape)}")
    if any(s < 1 for s in size):
        raise ValueError(f"size must be positive, got {size}")
    out = maps if maps.is_floating_point() else maps.float()
    for axis, n_out in enumerate(size):
        dim = 2 + axis
        n_in = out.shape[dim]
        if n_in == n_out:
            continue
        mat = _resize_matrix(n_in, n_out, dtype=out.dtype, device=out.device)
        out = torch.movedim(torch.movedim(out, dim, -1) @ mat.T, -1, dim)
    return out
