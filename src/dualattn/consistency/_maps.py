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


#: Largest ``|sum - 1|`` of a probability map per sample, and largest negative value, accepted: rounding
#: in half precision (or in maps cast up from it) stays well inside; raw logits and unnormalized maps
#: miss by far more. (The projections and the reparameterization are invariant to each map's scale: a map
#: within the tolerance gets the normalized map's answer.)
SUM_TOLERANCE = 0.05


def _channel_hint(name: str, shape: tuple[int, ...]) -> str:
    """The sentence telling the caller to drop a channel axis, when ``shape`` has one (axis 1 of size 1)."""
    if len(shape) in (4, 5) and shape[1] == 1:
        return (f"; {name} {shape} looks like a map with a channel axis (an explainer's (B, 1, *grid)): squeeze "
                f"it first ({name}[:, 0])")
    return ""


def _check_map(x: Tensor, name: str) -> None:
    """A map ``(B, *grid)``: a floating-point tensor with 2 or 3 grid axes.

    A 2-D map with its channel axis kept, ``(B, 1, H, W)``, reads as a 3-D grid of depth 1; the functions
    here give it the 2-D map's answer when every map of the call has that form, and refuse it with a hint
    to squeeze the channel axis when it meets a ``(B, h, w)`` partner or grid shape (:func:`_check_pair`,
    :func:`_check_chain`, :func:`_coarse_spatial`). A 5-D ``(B, 1, D, H, W)`` is refused here.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.ndim not in (3, 4):
        raise ValueError(
            f"{name} must be a map (B, H, W) or (B, D, H, W); got shape {shape} ({x.ndim} dims)"
            + _channel_hint(name, shape)
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_distributions(*maps: tuple[Tensor, str], log_twin: str | None = None) -> None:
    """Every sample of every map a distribution: non-negative, summing to 1 within :data:`SUM_TOLERANCE`.

    Cheap enough for every training step: per map one per-sample sum and one minimum, read back to the host
    (on an accelerator gathered first: one host synchronisation for all the maps of a call); the message is
    built only when a check fails. Non-finite values pass through unchecked: a NaN/Inf batch is the
    training loop's to skip (``dualattn.train``), not an argument error.

    Args:
        *maps: ``(map, argument name)`` pairs, shapes already checked by :func:`_check_map`.
        log_twin: the function taking log-probabilities or logits instead, named in the message.

    Raises:
        ValueError: negative values or sums away from 1, naming the argument and saying what was expected.
    """
    if any(x.numel() == 0 for x, _name in maps):
        maps = tuple((x, name) for x, name in maps if x.numel() > 0)
        if not maps:
            return
    sums, lows = [], []
    for x, _name in maps:  # two reductions per map
        xd = x.detach()
        if xd.dtype in (torch.float16, torch.bfloat16):
            xd = xd.float()
        sums.append(xd.sum(_GRID_DIMS[xd.ndim]))
        lows.append(xd.amin())
    rows, mins = _read_back(sums, lows, gather=sums[0].device.type != "cpu")
    tol = SUM_TOLERANCE
    every = rows[0] if len(rows) == 1 else [v for row in rows for v in row]
    if min(mins) >= -tol and 1.0 - tol <= min(every) and max(every) <= 1.0 + tol:
        return  # the common case; a NaN fails a comparison and is sorted out below
    for (_x, name), row, low in zip(maps, rows, mins):
        off = [v for v in row if math.isfinite(v) and abs(v - 1.0) > tol]
        negative = math.isfinite(low) and low < -tol
        if not off and not negative:
            continue
        hint = f"pass log-probabilities or raw logits to {log_twin} instead, or " if log_twin else ""
        expected = (f"{name} must hold probabilities, each sample a distribution over its grid (non-negative, "
                    f"summing to 1 within {tol:g})")
        if negative:
            raise ValueError(f"{expected}; it has negative values (min {low:.4g}): raw logits? {hint}"
                             "apply a softmax over the grid first")
        finite = [v for v in row if math.isfinite(v)]
        raise ValueError(f"{expected}; its samples sum to {min(finite):.6g} .. {max(finite):.6g}: raw logits or an "
                         f"unnormalized map? {hint}normalize each sample (divide by its sum, or a softmax over the "
                         "grid)")


def _read_back(sums: list[Tensor], lows: list[Tensor], *, gather: bool) -> tuple[list[list[float]], list[float]]:
    """The per-sample sums and the minima as Python floats.

    ``gather`` (an accelerator): concatenated first and read in one host synchronisation. On the CPU a read
    is no synchronisation, and reading each small tensor is cheaper than concatenating them.
    """
    if not gather:
        return [t.tolist() for t in sums], [t.item() for t in lows]
    flat = torch.cat((*sums, torch.stack(lows).to(sums[0].dtype))).tolist()
    rows, pos = [], 0
    for t in sums:
        rows.append(flat[pos:pos + t.numel()])
        pos += t.numel()
    return rows, flat[pos:]


#: the grid axes of a batch-first tensor of each rank
_GRID_DIMS = {n: tuple(range(1, n)) for n in range(2, 9)}


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
            f"with shape {tuple(x.shape)}" + (_channel_hint(name, tuple(x.shape)) if len(shape) < spatial else "")
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
        big, big_name = (fine, fine_name) if fine.ndim > coarse.ndim else (coarse, coarse_name)
        raise ValueError(
            f"{fine_name} shape {tuple(fine.shape)} and {coarse_name} shape {tuple(coarse.shape)} "
            "have different numbers of dims" + _channel_hint(big_name, tuple(big.shape))
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
            big, k = (a, m) if a.ndim > b.ndim else (b, m + 1)
            raise ValueError(
                f"{name}[{m}] shape {tuple(a.shape)} and {name}[{m + 1}] shape {tuple(b.shape)} "
                "differ in batch size or number of dims"
                + (_channel_hint(f"{name}[{k}]", tuple(big.shape)) if a.ndim != b.ndim else "")
            )
        factors.append(block_factors(a.shape[1:], b.shape[1:]))
    return factors
