r"""Fused two-level exact projection with an analytic backward (used by ``project_exact(..., fused=True)``).

Forward, in probability space on floored maps ``t_k = max(tau_k, tiny)``, ``t_l = max(tau_l, tiny)``::

    T = M t_k                      (block sums, (B, *coarse))
    s = sqrt(t_l) * sqrt(T)        (two square roots: the product of two tiny numbers cannot underflow)
    mu_l = s / sum(s)              (per sample)
    r = mu_l / T
    mu_k = t_k * M^T r             (M^T: copy each coarse value over its block)

Every quantity is a normal floating-point number (``s >= tiny``), so there is no NaN or division by zero,
and the result equals the autograd version in :mod:`dualattn.consistency.projection` and the log-space
:func:`dualattn.consistency.project_exact_log` (same floors). The backward below needs five fine-grid
passes and saves autograd's graph bookkeeping, so forward+backward is faster than autograd's
(measured by ``benchmarks/consistency_speed.py``: docs/consistency.md, "Speed").

Backward (``g_k = dL/dmu_k``, ``g_l = dL/dmu_l``; derived by hand, checked by ``gradcheck``)::

    G     = M (g_k * t_k)                          dL/dr
    g     = g_l + G / T                            total dL/dmu_l
    d     = 0.5 * mu_l * (g - <g, mu_l>)           dL/dlog s, through the normalization
    dt_l  = d / t_l                                ds/dt_l = s / (2 t_l)
    dT    = (d - G * r) / T                        through s and through r = mu_l / T
    dt_k  = g_k * M^T r + M^T dT

and the floors pass gradient only where ``tau > tiny`` (like ``clamp_min``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from dualattn.grids import block_sum, upsample_blocks


class ExactPairFunction(torch.autograd.Function):
    """``(tau_k, tau_l, factors) -> (mu_k, mu_l)`` on compute-dtype (float32/float64) tensors."""

    @staticmethod
    def forward(ctx: Any, tau_k: Tensor, tau_l: Tensor, factors: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        tiny = torch.finfo(tau_k.dtype).tiny
        batch = tau_k.shape[0]
        norm_shape = (batch,) + (1,) * (tau_l.ndim - 1)

        tk = tau_k.clamp_min(tiny)
        tl = tau_l.clamp_min(tiny)
        big_t = block_sum(tk, factors)
        s = torch.sqrt(tl) * torch.sqrt(big_t)
        mu_l = s / s.reshape(batch, -1).sum(1).reshape(norm_shape)
        r = mu_l / big_t
        r_up = upsample_blocks(r, factors, use_matmul=True)
        mu_k = tk * r_up

        ctx.save_for_backward(tk, tl, big_t, mu_l, r, r_up)
        ctx.factors = factors
        # the floors' gradient masks are only needed when something was floored (rare: exact zeros)
        ctx.floored = (
            bool(ctx.needs_input_grad[0]) and bool(tau_k.amin() <= tiny),
            bool(ctx.needs_input_grad[1]) and bool(tau_l.amin() <= tiny),
        )
        return mu_k, mu_l

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_k: Tensor | None, g_l: Tensor | None) -> tuple[Tensor | None, Tensor | None, None]:
        tk, tl, big_t, mu_l, r, r_up = ctx.saved_tensors
        factors = ctx.factors
        tiny = torch.finfo(tk.dtype).tiny
        batch = tk.shape[0]
        norm_shape = (batch,) + (1,) * (tl.ndim - 1)
        floored_k, floored_l = ctx.floored

        big_g = block_sum(g_k * tk, factors) if g_k is not None else None
        if big_g is not None:
            g = big_g / big_t if g_l is None else g_l + big_g / big_t
        else:
            g = g_l if g_l is not None else torch.zeros_like(mu_l)
        c = (g * mu_l).reshape(batch, -1).sum(1).reshape(norm_shape)
        d = 0.5 * mu_l * (g - c)

        grad_l = None
        if ctx.needs_input_grad[1]:
            grad_l = d / tl
            if floored_l:
                grad_l = torch.where(tl > tiny, grad_l, torch.zeros((), dtype=tl.dtype))
        grad_k = None
        if ctx.needs_input_grad[0]:
            d_t = (d - big_g * r) / big_t if big_g is not None else d / big_t
            d_up = upsample_blocks(d_t, factors, use_matmul=True)
            grad_k = torch.addcmul(d_up, g_k, r_up) if g_k is not None else d_up
            if floored_k:
                grad_k = torch.where(tk > tiny, grad_k, torch.zeros((), dtype=tk.dtype))
        return grad_k, grad_l, None


def exact_pair(tau_k: Tensor, tau_l: Tensor, factors: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Apply :class:`ExactPairFunction` (inputs already validated and in a compute dtype)."""
    out = ExactPairFunction.apply(tau_k, tau_l, factors)
    return out[0], out[1]
