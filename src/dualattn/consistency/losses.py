"""Divergences and consistency losses: KL per sample, the dual penalty (Eq. 6), the direct KL loss, Eq. 4's objective."""

from __future__ import annotations

import math  # noqa: F401  (used by the doctests)
from typing import Sequence

import torch
from torch import Tensor

from dualattn.grids import block_sum

from ._maps import (
    _channel_hint,
    _check_distributions,
    _check_lam,
    _check_pair,
    _check_reduction,
    _check_weights,
    _log_of,
    _reduce,
    _up,
)

__all__ = ["consistency_objective", "dual_penalty", "kl_consistency", "kl_divergence", "kl_divergence_log"]


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
        >>> from dualattn.consistency import marginalize
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

    Raises:
        ValueError: shapes that differ or are not batch-first; maps that are not probabilities per sample
            (log-probabilities belong in :func:`kl_divergence_log`).

    Example:
        >>> p = torch.tensor([[0.5, 0.5]]); q = torch.tensor([[0.25, 0.75]])
        >>> round(kl_divergence(p, q).item(), 6) == round(0.5 * math.log(2) + 0.5 * math.log(2 / 3), 6)
        True
    """
    _check_reduction(reduction)
    if p.shape != q.shape:
        big, big_name = (p, "p") if p.ndim > q.ndim else (q, "q")
        raise ValueError(f"p shape {tuple(p.shape)} and q shape {tuple(q.shape)} differ"
                         + (_channel_hint(big_name, tuple(big.shape)) if p.ndim != q.ndim else ""))
    if p.ndim < 2:
        raise ValueError(f"p must be batch-first (B, *grid), got shape {tuple(p.shape)}")
    if not (p.is_floating_point() and q.is_floating_point()):
        raise ValueError(f"p and q must be floating-point tensors, got dtypes {p.dtype} and {q.dtype}")
    _check_distributions((p, "p"), (q, "q"), log_twin="kl_divergence_log")
    return _kl(p, q, reduction)


def _kl(p: Tensor, q: Tensor, reduction: str) -> Tensor:
    """:func:`kl_divergence` on checked maps."""
    pp, qq = _up(p), _up(q)
    tiny = torch.finfo(pp.dtype).tiny
    # p * log(max(p, tiny)) is 0 at p == 0 with the finite slope log(tiny) there (xlogy's is -inf)
    kl = (pp * (torch.log(pp.clamp_min(tiny)) - torch.log(qq.clamp_min(tiny)))).flatten(1).sum(1)
    return _reduce(kl, reduction)


def dual_penalty(tau_fine: Tensor, tau_coarse: Tensor, lam: Tensor, *, reduction: str = "mean") -> Tensor:
    """The paper's Eq. 6 penalty without alpha: ``KL(mu_l || marginalize(mu_k))`` with ``mu = reparameterize(...)``.

    Zero iff ``lam`` is an optimal dual witness (then the reparameterized pair is the exact optimum);
    the caller multiplies by alpha (the paper's :data:`dualattn.models.PAPER_ALPHA`) and adds it to the
    classification loss.

    Computed on the coarse grid only: every fine cell of block ``i`` is scaled by the same ``exp(-lam_i)``,
    so ``marginalize(mu_k) = softmax(log T - lam)`` with ``T = marginalize(tau_k)``, and the penalty is
    ``KL(log_softmax(log tau_l + lam) || log_softmax(log T - lam))`` -- one block sum on the fine grid
    (faster than reparameterizing the fine map first, docs/consistency.md "Speed"; equal to it, as the
    tests check).

    Args:
        tau_fine: ``(B, *fine)`` fine map.
        tau_coarse: ``(B, *coarse)`` coarse map.
        lam: ``(B, *coarse)`` or ``(*coarse)`` multipliers (e.g. from :class:`GlobalWitness`).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` -> ``(B,)``.

    Returns:
        The penalty (float32 for half inputs).

    Example:
        >>> from dualattn.consistency import marginalize
        >>> tau_k = torch.softmax(torch.randn(2, 64), -1).reshape(2, 8, 8)
        >>> tau_l = torch.softmax(torch.randn(2, 16), -1).reshape(2, 4, 4)
        >>> lam = 0.5 * (marginalize(tau_k, (4, 4)).log() - tau_l.log())  # the optimal witness
        >>> bool(dual_penalty(tau_k, tau_l, lam) < 1e-6)
        True
    """
    _check_reduction(reduction)
    factors = _check_pair(tau_fine, tau_coarse, "tau_fine", "tau_coarse")
    lam = _check_lam(lam, tau_coarse)
    _check_distributions((tau_fine, "tau_fine"), (tau_coarse, "tau_coarse"))
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
    _check_distributions((tau_fine, "tau_fine"), (tau_coarse, "tau_coarse"))
    marg = block_sum(_up(tau_fine), factors)
    tc = _up(tau_coarse)
    if reverse:
        return _kl(marg, tc, reduction)
    return _kl(tc, marg, reduction)
