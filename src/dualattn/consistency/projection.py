"""Exact projection: the closed-form optimum of the paper's Eq. 4, for two levels and M-level chains."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dualattn.grids import block_sum, upsample_blocks

from ._maps import _check_chain, _check_distributions, _check_pair, _check_weights, _log_of, _shifted, _up
from .fused import exact_pair

__all__ = ["project_exact", "project_exact_chain", "project_exact_chain_log", "project_exact_log"]


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
        # reaches 0 and LSE = log(block_sum(exp(h))) needs no max-shift (faster than logsumexp on CPU).
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
        out.append(upsample_blocks(out[-1] - lses[m], factors[m], use_matmul=True) + hs[m])
    out.reverse()
    return out


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
        ValueError: fewer than 2 levels, non-nesting shapes (naming both), bad weights, a map with a channel
            axis ``(B, 1, H, W)``. Values are not checked: any real logits are valid input.

    Example:
        >>> from dualattn.consistency import marginalize
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

    Raises:
        ValueError: as :func:`project_exact` (logits belong in :func:`project_exact_chain_log`).

    Example:
        >>> taus = [torch.softmax(torch.randn(1, s * s), -1).reshape(1, s, s) for s in (8, 4, 2)]
        >>> mus = project_exact_chain(taus)
        >>> [tuple(m.shape) for m in mus]
        [(1, 8, 8), (1, 4, 4), (1, 2, 2)]
    """
    factors = _check_chain(taus, "taus")
    w = _check_weights(weights, len(taus))
    _check_distributions(*((t, f"taus[{m}]") for m, t in enumerate(taus)), log_twin="project_exact_chain_log")
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

    Raises:
        ValueError: as :func:`project_exact_chain_log` (shapes only: any real logits are valid input).

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
            backward (:mod:`dualattn.consistency.fused`; same floors, same values, gradients equal to
            rounding, verified by ``gradcheck``): faster forward+backward (docs/consistency.md, "Speed"),
            not twice differentiable.

    Returns:
        ``mu_fine (B, *fine)`` and ``mu_coarse (B, *coarse)`` in the input dtypes.

    Raises:
        ValueError: batch sizes, ranks or non-dividing grid shapes (naming both shapes); a map with a
            channel axis ``(B, 1, H, W)``; maps that are not probabilities per sample (negative values, NaN,
            sums away from 1 beyond ``SUM_TOLERANCE``: raw logits belong in :func:`project_exact_log`).

    Example:
        >>> tau_k = torch.tensor([[[0.1, 0.3], [0.2, 0.4]]]); tau_l = torch.ones(1, 1, 1)
        >>> mu_k, mu_l = project_exact(tau_k, tau_l)
        >>> [round(v, 4) for v in mu_k.flatten().tolist()], mu_l.item()
        ([0.1, 0.3, 0.2, 0.4], 1.0)
    """
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    _check_distributions((tau_fine, "tau_fine"), (tau_coarse, "tau_coarse"), log_twin="project_exact_log")
    if fused:
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
    mu_k = tk * upsample_blocks(mu_l / big_t, factors, use_matmul=True)
    return mu_k, mu_l
