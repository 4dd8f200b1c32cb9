r"""Consistency between fine and coarse attention maps: marginals, dual reparameterization, exact projection.

This module is the mathematical core of dualattn (Ron, Weiler-Sagie, Hazan, ICML 2022, and our
extensions). Attention maps are tensors ``(B, *grid)`` -- ``(B, H, W)`` in 2D, ``(B, D, H, W)`` in 3D --
and every sample is a probability distribution over its grid. A coarse grid cell ``i`` covers the block
``N(i)`` of fine cells; block factors are integers per axis derived from the two shapes (a fine axis that
is not an integer multiple of the coarse axis raises :class:`ValueError` naming both shapes -- there is no
edge-block rule).

Problem (paper Eq. 4). Given a fine map ``tau_k`` and a coarse map ``tau_l``, the consistent pair is

.. math::

    \min_{\mu_k, \mu_l \in \Delta}\; KL(\mu_k \| \tau_k) + KL(\mu_l \| \tau_l)
    \quad\text{s.t.}\quad \mu_l = M \mu_k ,

where ``M`` sums each block (:func:`marginalize`). The paper solves it through a learned dual witness
(:func:`reparameterize`, :class:`GlobalWitness`, :class:`AmortizedWitness`, :func:`dual_penalty`); we
also give its closed-form optimum (:func:`project_exact`) and that of an M-level chain of nested grids
(:func:`project_exact_chain`), derived in :func:`project_exact_chain_log`. :func:`solve_cvx` is the
conic-solver reference used by the tests and by the paper's "CVX" baseline.

Everything is computed per sample (no normalization couples two images of a batch), on maps floored at
the dtype's smallest normal number, either in log space (log-softmax / block logsumexp) or in probability
space with every intermediate provably a normal float, so that very peaked maps, exact zeros, logits of
+-1e4 and half precision never give NaN; in float32 internally when the input is float16/bfloat16
(outputs keep the input dtype).

Example:
    >>> import torch
    >>> from dualattn.consistency import project_exact, marginalize
    >>> tau_k = torch.softmax(torch.randn(2, 8 * 8), -1).reshape(2, 8, 8)
    >>> tau_l = torch.softmax(torch.randn(2, 4 * 4), -1).reshape(2, 4, 4)
    >>> mu_k, mu_l = project_exact(tau_k, tau_l)
    >>> bool(torch.allclose(marginalize(mu_k, (4, 4)), mu_l, atol=1e-6))
    True
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from dualattn._consistency_blocks import block_sum, upsample

logger = logging.getLogger(__name__)

__all__ = [
    "AmortizedWitness",
    "GlobalWitness",
    "block_factors",
    "consistency_objective",
    "dual_penalty",
    "kl_consistency",
    "kl_divergence",
    "kl_divergence_log",
    "log_marginalize",
    "marginalize",
    "project_exact",
    "project_exact_chain",
    "project_exact_chain_log",
    "project_exact_log",
    "reparameterize",
    "reparameterize_log",
    "solve_cvx",
    "solve_cvx_chain",
    "upsample_blocks",
]

_REDUCTIONS = ("none", "mean", "sum")


# --------------------------------------------------------------------------------------------------
# shapes, dtypes and block views
# --------------------------------------------------------------------------------------------------


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


def _blocks_view(x: Tensor, coarse: tuple[int, ...], factors: tuple[int, ...]) -> Tensor:
    """``(B, *fine) -> (B, c_1, f_1, ..., c_d, f_d)`` (a view when ``x`` is contiguous)."""
    shape: list[int] = [x.shape[0]]
    for c, f in zip(coarse, factors):
        shape += [c, f]
    return x.reshape(shape)


def _block_dims(ndim_spatial: int) -> tuple[int, ...]:
    return tuple(2 + 2 * a for a in range(ndim_spatial))


def upsample_blocks(x: Tensor, factors: Sequence[int]) -> Tensor:
    """Copy each coarse cell over its block: ``(B, *coarse) -> (B, *(coarse * factors))``.

    The adjoint of :func:`marginalize` (nearest-neighbour upsampling by integer factors).

    Example:
        >>> upsample_blocks(torch.tensor([[[1.0, 2.0]]]), (1, 2)).tolist()
        [[[1.0, 1.0, 2.0, 2.0]]]
    """
    factors = tuple(int(f) for f in factors)
    if len(factors) != x.ndim - 1 or any(f <= 0 for f in factors):
        raise ValueError(f"factors {factors} do not match the spatial dims of shape {tuple(x.shape)}")
    return upsample(x, factors, use_matmul=False)


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


# --------------------------------------------------------------------------------------------------
# marginals
# --------------------------------------------------------------------------------------------------


def marginalize(tau_fine: Tensor, coarse_shape: Sequence[int]) -> Tensor:
    """Sum-pool a fine map onto a coarse grid: ``marg(tau)[i] = sum_{j in N(i)} tau[j]`` (mass-preserving).

    Args:
        tau_fine: ``(B, *fine)`` map (any non-negative values; probabilities in practice).
        coarse_shape: the coarse spatial shape ``(*coarse)`` (or the full ``(B, *coarse)``); every fine axis
            must be an integer multiple of the coarse one.

    Returns:
        ``(B, *coarse)`` block sums, in ``tau_fine``'s dtype (summed in float32 for half precision).

    Raises:
        ValueError: naming both shapes when they do not divide.

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
    x = _blocks_view(_up(log_tau_fine), coarse, factors)
    return torch.logsumexp(x, dim=_block_dims(len(coarse))).to(log_tau_fine.dtype)


def _lse_blocks(x: Tensor, coarse: tuple[int, ...], factors: tuple[int, ...]) -> Tensor:
    return torch.logsumexp(_blocks_view(x, coarse, factors), dim=_block_dims(len(coarse)))


# --------------------------------------------------------------------------------------------------
# dual reparameterization (Theorem 3.1)
# --------------------------------------------------------------------------------------------------


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


def reparameterize_log(log_tau_fine: Tensor, log_tau_coarse: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Log-space :func:`reparameterize`: ``(log mu_fine, log mu_coarse)`` from log maps and ``lam``.

    Args:
        log_tau_fine: ``(B, *fine)`` log-probabilities (or unnormalized log-potentials).
        log_tau_coarse: ``(B, *coarse)`` likewise.
        lam: ``(B, *coarse)`` or ``(*coarse)`` dual multipliers, one per coarse cell.

    Returns:
        ``log_mu_fine (B, *fine)`` and ``log_mu_coarse (B, *coarse)``, each log-normalized per sample.
    """
    factors = _check_pair(log_tau_fine, log_tau_coarse, "log_tau_fine", "log_tau_coarse")
    lam = _check_lam(lam, log_tau_coarse)
    dtype = log_tau_fine.dtype
    lf, lc, lm = _shifted(log_tau_fine), _shifted(log_tau_coarse), _up(lam)
    zc = lc + lm
    zf = lf - upsample(lm, factors, use_matmul=False)
    return (zf - _flat_lse(zf)).to(dtype), (zc - _flat_lse(zc)).to(log_tau_coarse.dtype)


def reparameterize(tau_fine: Tensor, tau_coarse: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    r"""The paper's dual reparameterization (Theorem 3.1) given multipliers ``lam``.

    .. math::

        \mu_l[i] \propto \tau_l[i]\, e^{\lambda_i}, \qquad
        \mu_k[j] \propto \tau_k[j]\, e^{-\lambda_i} \quad (j \in N(i)),

    each normalized over its grid per sample. The pair is the optimum of Eq. 4 iff
    ``marginalize(mu_k) == mu_l``; :func:`dual_penalty` measures how far from that it is.
    Stationarity of the Lagrangian ``KL(mu_k||tau_k) + KL(mu_l||tau_l) + <lam, M mu_k - mu_l>`` gives
    ``log mu_k = log tau_k - M^T lam + c_k`` and ``log mu_l = log tau_l + lam + c_l``, which is this map.

    Args:
        tau_fine: ``(B, *fine)`` fine attention map (distribution per sample).
        tau_coarse: ``(B, *coarse)`` coarse attention map.
        lam: ``(B, *coarse)`` (per sample) or ``(*coarse)`` (shared) multipliers.

    Returns:
        ``mu_fine (B, *fine)`` and ``mu_coarse (B, *coarse)``, distributions per sample, input dtypes.

    Example:
        >>> tau_k = torch.full((1, 4, 4), 1 / 16); tau_l = torch.full((1, 2, 2), 0.25)
        >>> mu_k, mu_l = reparameterize(tau_k, tau_l, torch.zeros(1, 2, 2))
        >>> bool(torch.allclose(mu_k, tau_k)) and bool(torch.allclose(mu_l, tau_l))
        True
    """
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    lam = _check_lam(lam, tau_coarse)
    # Fine map without a transcendental function on the fine grid: every cell of block i gets the same
    # factor exp(c_i), c = -lam - logsumexp(log T - lam) with T = marginalize(t_k), so that
    # sum_{j in N(i)} mu_k[j] = T_i exp(c_i) = softmax(log T - lam)_i <= 1, hence exp(c_i) <= 1 / T_i
    # <= 1 / tiny never overflows; it underflows only for blocks whose mass is below float precision.
    tk = _up(tau_fine)
    tk = tk.clamp_min(torch.finfo(tk.dtype).tiny)
    lm = _up(lam)
    z = torch.log(block_sum(tk, factors)) - lm
    c = -lm - torch.logsumexp(z.flatten(1), dim=1).reshape((z.shape[0],) + (1,) * (z.ndim - 1))
    mu_k = tk * upsample(torch.exp(c), factors)
    zc = _log_of(tau_coarse) + lm
    mu_l = torch.softmax(zc.flatten(1), dim=1).reshape(zc.shape)
    return mu_k.to(tau_fine.dtype), mu_l.to(tau_coarse.dtype)


# --------------------------------------------------------------------------------------------------
# exact projection: two levels and M-level chains
# --------------------------------------------------------------------------------------------------


def _chain_core(logs: list[Tensor], factors: list[tuple[int, ...]], weights: list[float] | None) -> list[Tensor]:
    """Upward/downward recursion of :func:`project_exact_chain_log` on compute-dtype log maps."""
    m_levels = len(logs)
    if weights is None:
        cum = [float(m + 1) for m in range(m_levels)]
        w = [1.0] * m_levels
    else:
        w = list(weights)
        cum = []
        acc = 0.0
        for wm in w:
            acc += wm
            cum.append(acc)
    hs = [logs[0]]
    lses: list[Tensor] = []
    for m in range(m_levels - 1):
        # Inputs are log-normalized and floored: log tau in [log tiny, 0]. By induction every h_m lies in
        # [log tiny, sum of log block sizes] (h_{m+1} is a convex combination of log tau_{m+1} and a block
        # LSE of h_m, which is >= the block max and <= max + log f), so exp(h_m) neither overflows nor
        # reaches 0 and LSE = log(block_sum(exp(h))) needs no max-shift (and is ~3x faster on CPU).
        lse = torch.log(block_sum(torch.exp(hs[m]), factors[m]))
        lses.append(lse)
        if weights is None:
            h = (logs[m + 1] + cum[m] * lse) / cum[m + 1]
        else:
            h = (w[m + 1] * logs[m + 1] + cum[m] * lse) / cum[m + 1]
        hs.append(h)
    top = hs[-1]
    out: list[Tensor] = [torch.log_softmax(top.flatten(1), dim=1).reshape(top.shape)]
    for m in range(m_levels - 2, -1, -1):
        out.append(upsample(out[-1] - lses[m], factors[m]) + hs[m])
    out.reverse()
    return out


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


def project_exact_chain_log(
    log_taus: Sequence[Tensor], weights: Sequence[float] | None = None
) -> list[Tensor]:
    r"""Exact consistent maps for a chain of M >= 2 nested grids, in log space.

    Problem. Levels ``m = 0`` (finest) ... ``M-1`` (coarsest); each cell of level ``m+1`` covers a block of
    cells of level ``m``. Find distributions ``mu_m`` minimizing ``sum_m w_m KL(mu_m || tau_m)`` subject to
    ``mu_{m+1} = marginalize(mu_m)`` for all ``m`` (``w_m > 0``; default all 1).

    Recursion. Let ``W_m = w_0 + ... + w_m`` and ``LSE_c(x) = log sum_{d child of c} exp(x_d)``::

        upward:    h_0 = log tau_0,   h_{m+1} = (w_{m+1} log tau_{m+1} + W_m LSE(h_m)) / W_{m+1}
        top:       log mu_{M-1} = h_{M-1} - logsumexp(h_{M-1})
        downward:  log mu_m[d] = log mu_{m+1}[parent(d)] - LSE(h_m)[parent(d)] + h_m[d]

    With unit weights ``W_m = m + 1``; for ``M = 2`` this is ``mu_l ∝ sqrt(tau_l * marg(tau_k))`` and
    ``mu_k[j] = tau_k[j] mu_l[i] / marg(tau_k)[i]`` (:func:`project_exact`).

    Proof. The constraints make every level a function of ``mu_0``: ``mu_m[c]`` is the mass of the
    fine cells under ``c``. Dynamic programming over the tree of cells: let ``V_m(c, s)`` be the least
    value of the terms of levels ``0..m`` inside the subtree of a level-``m`` cell ``c`` carrying mass
    ``s >= 0``. Claim: ``V_m(c, s) = W_m (s log s - s h_m[c])``. For ``m = 0`` it is the term
    ``w_0 s log(s / tau_0[c])`` itself. Step: a level-``(m+1)`` cell with mass ``s`` splits it over its
    children ``d`` as ``s_d >= 0``, ``sum_d s_d = s``, costing
    ``w_{m+1} s log(s / tau_{m+1}[c]) + W_m sum_d (s_d log s_d - s_d h_m[d])``. The inner minimum (Gibbs'
    variational principle: ``min_{p in simplex} sum p (log p - x) = -logsumexp(x)``, scaled by ``s``) is
    attained at ``s_d = s softmax_d(h_m)`` with value ``W_m (s log s - s LSE_c(h_m))``. Adding the level
    term gives ``W_{m+1} s log s - s (w_{m+1} log tau_{m+1}[c] + W_m LSE_c(h_m))
    = W_{m+1}(s log s - s h_{m+1}[c])``, the claim. At the top the masses form a distribution, and
    ``min_{mu in simplex} W_{M-1} sum_c (mu_c log mu_c - mu_c h_{M-1}[c])`` is attained at
    ``softmax(h_{M-1})`` (top); the optimal splits give the downward pass. Every step is a strict
    minimization of a strictly convex function, so the optimum is unique. The formulas are invariant to
    rescaling any ``tau_m`` (each ``h_m`` shifts by a constant that the softmaxes remove), so inputs may
    be unnormalized log-potentials (logits). Verified against a conic solver in the tests
    (:func:`solve_cvx_chain`, 2-4 levels, 2D and 3D, weighted).

    Args:
        log_taus: ``[log tau_0 (B, *g_0), ..., log tau_{M-1} (B, *g_{M-1})]``, finest first.
        weights: optional ``w_0..w_{M-1}`` (finite, > 0).

    Returns:
        ``[log mu_0, ..., log mu_{M-1}]`` with the input shapes and dtypes (float32 math for half inputs).

    Raises:
        ValueError: fewer than 2 levels, non-nesting shapes (naming both), bad weights.

    Example:
        >>> logs = [torch.randn(2, 8, 8), torch.randn(2, 4, 4), torch.randn(2, 2, 2)]
        >>> mus = [x.exp() for x in project_exact_chain_log(logs)]
        >>> bool(torch.allclose(marginalize(mus[1], (2, 2)), mus[2], atol=1e-6))
        True
    """
    factors = _check_chain(log_taus, "log_taus")
    w = _check_weights(weights, len(log_taus))
    out = _chain_core([_shifted(t) for t in log_taus], factors, w)
    return [o.to(t.dtype) for o, t in zip(out, log_taus)]


def project_exact_chain(taus: Sequence[Tensor], weights: Sequence[float] | None = None) -> list[Tensor]:
    """Exact consistent maps for M >= 2 nested attention maps (finest first); see :func:`project_exact_chain_log`.

    Args:
        taus: ``[tau_0 (B, *g_0), ..., tau_{M-1}]`` probability maps, finest first; exact zeros are floored
            at the dtype's smallest normal number so that logs and gradients stay finite.
        weights: optional positive weights ``w_m`` of the KL terms.

    Returns:
        ``[mu_0, ..., mu_{M-1}]``, distributions per sample with ``marginalize(mu_m) == mu_{m+1}``.

    Example:
        >>> taus = [torch.softmax(torch.randn(1, s * s), -1).reshape(1, s, s) for s in (8, 4, 2)]
        >>> mus = project_exact_chain(taus)
        >>> [tuple(m.shape) for m in mus]
        [(1, 8, 8), (1, 4, 4), (1, 2, 2)]
    """
    factors = _check_chain(taus, "taus")
    w = _check_weights(weights, len(taus))
    out = _chain_core([_log_of(t) for t in taus], factors, w)
    return [o.exp().to(t.dtype) for o, t in zip(out, taus)]


def project_exact_log(log_tau_fine: Tensor, log_tau_coarse: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form optimum of Eq. 4 in log space (two levels); see :func:`project_exact`.

    Args:
        log_tau_fine: ``(B, *fine)`` log-probabilities or unnormalized logits (the result is invariant to
            adding a per-sample constant).
        log_tau_coarse: ``(B, *coarse)`` likewise.

    Returns:
        ``log_mu_fine (B, *fine)`` and ``log_mu_coarse (B, *coarse)``, log-normalized per sample.

    Example:
        >>> lf, lc = project_exact_log(torch.zeros(1, 4, 4), torch.zeros(1, 2, 2))
        >>> bool(torch.allclose(lf.exp(), torch.full((1, 4, 4), 1 / 16)))
        True
    """
    factors = _check_pair(log_tau_fine, log_tau_coarse, "log_tau_fine", "log_tau_coarse")
    lf, lc = _chain_core([_shifted(log_tau_fine), _shifted(log_tau_coarse)], [factors], None)
    return lf.to(log_tau_fine.dtype), lc.to(log_tau_coarse.dtype)


def project_exact(tau_fine: Tensor, tau_coarse: Tensor, *, fused: bool = False) -> tuple[Tensor, Tensor]:
    r"""The exact consistent pair: closed-form optimum of the paper's Eq. 4.

    .. math::

        T = \mathrm{marg}(\tau_k),\qquad \mu_l = \frac{\sqrt{\tau_l T}}{\sum \sqrt{\tau_l T}},\qquad
        \mu_k[j] = \tau_k[j]\,\frac{\mu_l[i]}{T[i]}\quad (j \in N(i)).

    Proof sketch (full M-level proof in :func:`project_exact_chain_log`): for fixed block masses
    ``s_i`` the best ``mu_k`` inside block ``i`` is ``tau_k`` rescaled to mass ``s_i`` (KL is minimized by
    the proportional split), leaving ``sum_i s_i log(s_i / T_i) + s_i log(s_i / tau_l[i])
    = 2 sum_i s_i log(s_i / sqrt(T_i tau_l[i]))``, minimized over the simplex by ``s ∝ sqrt(T tau_l)``.
    Equivalently the dual witness of Theorem 3.1 is ``lambda_i = 0.5 log(T_i / tau_l[i]) + const``, at which
    :func:`reparameterize` returns this pair and :func:`dual_penalty` is zero.

    Computed per sample on maps floored at the smallest normal number, in probability space with every
    intermediate a normal float (see ``_exact_pair_autograd``; :func:`project_exact_log` is the log-space
    twin, equal to rounding); twice differentiable; the marginal violation ``marginalize(mu_k) - mu_l``
    is zero to float precision.

    Args:
        tau_fine: ``(B, *fine)`` fine map (distribution per sample); 2D ``(B, H, W)`` or 3D ``(B, D, H, W)``.
        tau_coarse: ``(B, *coarse)`` coarse map; every fine axis an integer multiple of the coarse one.
        fused: the same probability-space function as a custom autograd function with a hand-derived
            backward (``dualattn._consistency_fused``; same floors, same values, gradients equal to rounding,
            verified by ``gradcheck``): about 1.35x faster forward+backward on CPU, not twice
            differentiable.

    Returns:
        ``mu_fine (B, *fine)`` and ``mu_coarse (B, *coarse)`` in the input dtypes.

    Raises:
        ValueError: batch sizes, ranks or non-dividing grid shapes (naming both shapes).

    Example:
        >>> tau_k = torch.tensor([[[0.1, 0.3], [0.2, 0.4]]]); tau_l = torch.ones(1, 1, 1)
        >>> mu_k, mu_l = project_exact(tau_k, tau_l)
        >>> [round(v, 4) for v in mu_k.flatten().tolist()], mu_l.item()
        ([0.1, 0.3, 0.2, 0.4], 1.0)
    """
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    if fused:
        from dualattn._consistency_fused import exact_pair

        mu_k, mu_l = exact_pair(_up(tau_fine), _up(tau_coarse), factors)
    else:
        mu_k, mu_l = _exact_pair_autograd(_up(tau_fine), _up(tau_coarse), factors)
    return mu_k.to(tau_fine.dtype), mu_l.to(tau_coarse.dtype)


def _exact_pair_autograd(tau_k: Tensor, tau_l: Tensor, factors: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The closed form in probability space with plain (twice-differentiable) autograd ops.

    On maps floored at ``tiny`` every intermediate is a normal float: ``T >= tiny``,
    ``s = sqrt(t_l) sqrt(T) >= tiny`` (two roots, so no product of two tiny numbers underflows),
    ``mu_l <= 1`` and ``r = mu_l / T <= 1 / tiny < finfo.max``. Equal to the log-space path (same floors)
    to rounding, with no transcendental function on the fine grid.
    """
    tiny = torch.finfo(tau_k.dtype).tiny
    tk = tau_k.clamp_min(tiny)
    tl = tau_l.clamp_min(tiny)
    big_t = block_sum(tk, factors)
    s = torch.sqrt(tl) * torch.sqrt(big_t)
    mu_l = s / s.flatten(1).sum(1).reshape((s.shape[0],) + (1,) * (s.ndim - 1))
    mu_k = tk * upsample(mu_l / big_t, factors)
    return mu_k, mu_l


def consistency_objective(
    mus: Sequence[Tensor], taus: Sequence[Tensor], weights: Sequence[float] | None = None
) -> Tensor:
    """``sum_m w_m KL(mu_m || tau_m)`` per sample -- the objective of Eq. 4 (and of its M-level chain).

    Args:
        mus: candidate maps, one per level.
        taus: attention maps, same shapes.
        weights: optional positive weights (default 1).

    Returns:
        ``(B,)`` objective values (float32 for half inputs).

    Example:
        >>> tau = torch.full((1, 2, 2), 0.25)
        >>> consistency_objective([tau, marginalize(tau, (1, 1))], [tau, torch.ones(1, 1, 1)]).tolist()
        [0.0]
    """
    if len(mus) != len(taus):
        raise ValueError(f"got {len(mus)} maps mu but {len(taus)} maps tau")
    w = _check_weights(weights, len(mus)) or [1.0] * len(mus)
    if not mus:
        raise ValueError("mus and taus must hold at least one map each")
    terms = [wm * kl_divergence(mu, tau) for wm, mu, tau in zip(w, mus, taus)]
    return torch.stack(terms, 0).sum(0)


# --------------------------------------------------------------------------------------------------
# divergences and penalties
# --------------------------------------------------------------------------------------------------


def kl_divergence_log(log_p: Tensor, log_q: Tensor, *, reduction: str = "none") -> Tensor:
    """``KL(p || q) = sum p (log p - log q)`` per sample from log-probabilities (``0 log 0 = 0``).

    Args:
        log_p: ``(B, *grid)`` log-probabilities.
        log_q: same shape.
        reduction: ``"none"`` -> ``(B,)``, ``"mean"`` or ``"sum"`` -> scalar.

    Returns:
        KL per sample (or reduced), float32 for half-precision inputs.
    """
    _check_reduction(reduction)
    if log_p.shape != log_q.shape:
        raise ValueError(f"log_p shape {tuple(log_p.shape)} and log_q shape {tuple(log_q.shape)} differ")
    lp, lq = _up(log_p), _up(log_q)
    p = lp.exp()
    # where p == 0 the term is 0 even if log q is -inf
    diff = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
    kl = (p * diff).flatten(1).sum(1)
    return _reduce(kl, reduction)


def kl_divergence(p: Tensor, q: Tensor, *, reduction: str = "none") -> Tensor:
    """``KL(p || q) = sum_j p_j log(p_j / q_j)`` per sample over all grid positions.

    ``0 log 0 = 0``; ``q`` is floored at the dtype's smallest normal number so that a zero of ``q``
    under mass of ``p`` gives a large finite value instead of ``inf``.

    Args:
        p: ``(B, *grid)`` distributions per sample.
        q: same shape.
        reduction: ``"none"`` -> ``(B,)``, ``"mean"`` or ``"sum"`` -> scalar.

    Returns:
        KL per sample (or reduced), float32 for half-precision inputs, else the input dtype.

    Example:
        >>> p = torch.tensor([[0.5, 0.5]]); q = torch.tensor([[0.25, 0.75]])
        >>> round(kl_divergence(p, q).item(), 6) == round(0.5 * math.log(2) + 0.5 * math.log(2 / 3), 6)
        True
    """
    _check_reduction(reduction)
    if p.shape != q.shape:
        raise ValueError(f"p shape {tuple(p.shape)} and q shape {tuple(q.shape)} differ")
    if p.ndim < 2:
        raise ValueError(f"p must be batch-first (B, *grid), got shape {tuple(p.shape)}")
    pp, qq = _up(p), _up(q)
    tiny = torch.finfo(pp.dtype).tiny
    # p * log(max(p, tiny)) is 0 at p == 0 with the finite slope log(tiny) there (xlogy's is -inf)
    kl = (pp * (torch.log(pp.clamp_min(tiny)) - torch.log(qq.clamp_min(tiny)))).flatten(1).sum(1)
    return _reduce(kl, reduction)


def dual_penalty(tau_fine: Tensor, tau_coarse: Tensor, lam: Tensor, *, reduction: str = "mean") -> Tensor:
    """The paper's Eq. 6 penalty without alpha: ``KL(mu_l || marginalize(mu_k))`` with ``mu = reparameterize(...)``.

    Zero iff ``lam`` is an optimal dual witness (then the reparameterized pair is the exact optimum);
    the caller multiplies by alpha (the paper: 10) and adds it to the classification loss.

    Computed on the coarse grid only: every fine cell of block ``i`` is scaled by the same ``exp(-lam_i)``,
    so ``marginalize(mu_k) = softmax(log T - lam)`` with ``T = marginalize(tau_k)``, and the penalty is
    ``KL(log_softmax(log tau_l + lam) || log_softmax(log T - lam))`` -- one block sum on the fine grid
    (3x faster than reparameterizing the fine map first; equal to it, as the tests check).

    Args:
        tau_fine: ``(B, *fine)`` fine map.
        tau_coarse: ``(B, *coarse)`` coarse map.
        lam: ``(B, *coarse)`` or ``(*coarse)`` multipliers (e.g. from :class:`GlobalWitness`).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` -> ``(B,)``.

    Returns:
        The penalty (float32 for half inputs).

    Example:
        >>> tau_k = torch.softmax(torch.randn(2, 64), -1).reshape(2, 8, 8)
        >>> tau_l = torch.softmax(torch.randn(2, 16), -1).reshape(2, 4, 4)
        >>> lam = 0.5 * (marginalize(tau_k, (4, 4)).log() - tau_l.log())  # the optimal witness
        >>> bool(dual_penalty(tau_k, tau_l, lam) < 1e-6)
        True
    """
    _check_reduction(reduction)
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    lam = _check_lam(lam, tau_coarse)
    tk = _up(tau_fine)
    log_t = torch.log(block_sum(tk.clamp_min(torch.finfo(tk.dtype).tiny), factors))
    lm = _up(lam)
    zc = _log_of(tau_coarse) + lm
    zm = log_t - lm
    log_c = torch.log_softmax(zc.flatten(1), dim=1)
    log_m = torch.log_softmax(zm.flatten(1), dim=1)
    return kl_divergence_log(log_c, log_m, reduction=reduction)


def kl_consistency(
    tau_fine: Tensor, tau_coarse: Tensor, *, reverse: bool = False, reduction: str = "mean"
) -> Tensor:
    """Direct consistency loss (lambda = 0): ``KL(tau_l || marg(tau_k))``, or ``KL(marg(tau_k) || tau_l)``.

    Args:
        tau_fine: ``(B, *fine)`` fine map.
        tau_coarse: ``(B, *coarse)`` coarse map.
        reverse: use ``KL(marginalize(tau_fine) || tau_coarse)`` instead.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` -> ``(B,)``.

    Returns:
        The loss (float32 for half inputs).

    Example:
        >>> tau_k = torch.full((1, 2, 2), 0.25); tau_l = torch.tensor([[[0.75, 0.25]]])
        >>> round(kl_consistency(tau_k, tau_l).item(), 6) == round(0.75 * math.log(1.5) + 0.25 * math.log(0.5), 6)
        True
    """
    _check_reduction(reduction)
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    marg = block_sum(_up(tau_fine), factors)
    tc = _up(tau_coarse)
    if reverse:
        return kl_divergence(marg, tc, reduction=reduction)
    return kl_divergence(tc, marg, reduction=reduction)


# --------------------------------------------------------------------------------------------------
# dual witnesses
# --------------------------------------------------------------------------------------------------


class GlobalWitness(nn.Module):
    """One learned multiplier per coarse cell, shared by all samples (what the paper's public code does).

    Args:
        coarse_shape: the coarse grid ``(h, w)`` or ``(d, h, w)``.

    The parameter ``lam`` starts at 0 (``reparameterize`` then returns the maps unchanged).

    Example:
        >>> w = GlobalWitness((4, 4))
        >>> tuple(w(torch.zeros(3, 8, 4, 4)).shape)
        (3, 4, 4)
    """

    def __init__(self, coarse_shape: Sequence[int]) -> None:
        super().__init__()
        try:
            shape = tuple(int(s) for s in coarse_shape)
        except TypeError as exc:
            raise ValueError(f"coarse_shape must be a sequence of ints, got {coarse_shape!r}") from exc
        if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
            raise ValueError(f"coarse_shape must be 2 or 3 positive ints, got {coarse_shape!r}")
        self.coarse_shape = shape
        self.lam = nn.Parameter(torch.zeros(shape))

    def forward(self, features: Tensor) -> Tensor:
        """Broadcast the shared multipliers over the batch of ``features`` (any tensor, batch first).

        Returns:
            ``(B, *coarse)`` (an expanded view of the parameter).
        """
        if not isinstance(features, Tensor) or features.ndim < 1:
            raise ValueError("features must be a tensor with the batch size first")
        return self.lam.unsqueeze(0).expand((features.shape[0],) + self.coarse_shape)

    def extra_repr(self) -> str:
        return f"coarse_shape={self.coarse_shape}"


class AmortizedWitness(nn.Module):
    """A shallow conv head predicting one multiplier per coarse cell and sample (what the paper's text describes).

    ``conv kxk (C -> hidden) -> ReLU -> conv 1x1 (hidden -> 1)``; the last conv starts at zero so that
    the initial witness is ``lam = 0`` like :class:`GlobalWitness`.

    Args:
        in_channels: channels ``C`` of the coarse feature map.
        spatial_dims: 2 or 3.
        hidden: channels of the hidden layer.
        kernel_size: odd size of the first conv (``padding = kernel_size // 2`` keeps the grid).

    Example:
        >>> w = AmortizedWitness(8)
        >>> tuple(w(torch.randn(2, 8, 4, 4)).shape)
        (2, 4, 4)
    """

    def __init__(self, in_channels: int, *, spatial_dims: int = 2, hidden: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.hidden = hidden
        self.conv1 = conv(in_channels, hidden, kernel_size, padding=kernel_size // 2)
        self.act = nn.ReLU()
        self.conv2 = conv(hidden, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C, *coarse) -> lam (B, *coarse)``."""
        if not isinstance(features, Tensor) or features.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"features must be (B, C, *grid) with {self.spatial_dims} spatial dims, "
                f"got shape {tuple(getattr(features, 'shape', ()))}"
            )
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features have {features.shape[1]} channels, expected in_channels={self.in_channels}")
        return self.conv2(self.act(self.conv1(features))).squeeze(1)


# --------------------------------------------------------------------------------------------------
# conic-solver reference (optional dependency)
# --------------------------------------------------------------------------------------------------


def solve_cvx(tau_fine: Tensor, tau_coarse: Tensor, **solver_kwargs: object) -> tuple[Tensor, Tensor]:
    """Reference solution of Eq. 4 with cvxpy (exponential cone), one problem per sample.

    Slow (a conic solve per image); used by the tests and as the paper's "CVX" post-hoc baseline.
    Needs the optional extra ``cvx`` (``pip install 'dualattn[cvx]'``).

    Args:
        tau_fine: ``(B, *fine)`` fine map.
        tau_coarse: ``(B, *coarse)`` coarse map.
        **solver_kwargs: passed to ``cvxpy.Problem.solve`` (default: Clarabel at tight tolerances).

    Returns:
        ``(mu_fine, mu_coarse)`` detached, in the input dtypes, on the input device.

    Example:
        >>> tau_k = torch.softmax(torch.randn(1, 16, dtype=torch.float64), -1).reshape(1, 4, 4)
        >>> tau_l = torch.softmax(torch.randn(1, 4, dtype=torch.float64), -1).reshape(1, 2, 2)
        >>> mu_k, _ = solve_cvx(tau_k, tau_l)  # doctest: +SKIP
        >>> bool((mu_k - project_exact(tau_k, tau_l)[0]).abs().max() < 1e-6)  # doctest: +SKIP
        True
    """
    from dualattn._consistency_cvx import solve_chain_numpy

    _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    mus = solve_chain_numpy([tau_fine, tau_coarse], None, solver_kwargs)
    return mus[0], mus[1]


def solve_cvx_chain(
    taus: Sequence[Tensor], weights: Sequence[float] | None = None, **solver_kwargs: object
) -> list[Tensor]:
    """Reference solution of the M-level chain problem (see :func:`project_exact_chain_log`) with cvxpy.

    Args:
        taus: ``[tau_0, ..., tau_{M-1}]`` finest first.
        weights: optional positive weights of the KL terms.
        **solver_kwargs: passed to ``cvxpy.Problem.solve``.

    Returns:
        ``[mu_0, ..., mu_{M-1}]`` detached, in the input dtypes.
    """
    from dualattn._consistency_cvx import solve_chain_numpy

    _check_chain(taus, "taus")
    w = _check_weights(weights, len(taus))
    return solve_chain_numpy(list(taus), w, solver_kwargs)
