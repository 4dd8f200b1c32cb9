"""ROAD's noisy linear imputation (Rong et al., ICML 2022), batched in torch for 2-D and 3-D images.

"Remove and debias" (ROAD) fills the removed pixels of a perturbation curve so that their values
carry no information about *which* pixels were removed: every removed pixel takes the weighted
mean of its neighbours, known pixels keep their values, and a little Gaussian noise is added to
the imputed pixels.

**The system.** For each image and channel, with ``U`` the removed pixels, every ``i in U``
satisfies ``sum_j w_ij (x_i - x_j) = 0`` over its in-bounds neighbours ``j`` (removed or known).
With the degree ``d_i = sum_j w_ij`` this reads ``A x_U = b`` with ``A = D_U - W_UU`` and
``b_i = sum_{j known} w_ij x_j``: a principal block of the weighted graph Laplacian of the pixel
grid, symmetric because ``w_ij = w_ji``. The solution is a convex combination of the known
pixels (discrete maximum principle), so it stays within their range.

**Neighbour weights.** ROAD's 2-D weights are 1/6 for the 4 direct and 1/12 for the 4 diagonal
neighbours: the 3x3 binomial kernel ``[1, 2, 1] x [1, 2, 1]`` without its centre, normalized to
sum 1. The 3-D analogue used here is the 3x3x3 binomial kernel without its centre: 1/14 for the 6
face, 1/28 for the 12 edge and 1/56 for the 8 corner neighbours (ratio 4 : 2 : 1, the same
halving per extra axis of offset as in 2-D; see :func:`neighbour_weights`). The kernel being
separable, the mat-vec costs one 3-tap pass per axis.

**When is it solvable.** Every neighbour weight is positive and the pixel grid is connected, so
each connected component of ``U`` touches a known pixel unless ``U`` is the whole image; then its
block of ``A`` is irreducibly diagonally dominant, hence positive definite. The one singular case,
*every* pixel removed (no known value in the image), is special-cased: the removed pixels take
the image's own per-channel mean (what the ``mean`` fill gives), plus the noise.

**The solver.** Conjugate gradients on all images and channels of a batch at once, in the images'
dtype (float32 images are solved in float32, float64 in float64). Values are centred on the mean
of the known pixels first (the solution is shift-equivariant). Each system stops once
``||b - A x||_2 <= tol * max|x_known - mean| * ||d_U||_2`` (the residual relative to the
largest right-hand side its known values could produce) or after ``max_iter`` iterations
(a warning names the systems left unconverged); finished systems leave the batch.

**Noise.** ``noise_std * N(0, 1)``, one draw per pixel and channel of the whole batch from
``generator`` (independent of the mask, so the noise a pixel gets does not depend on which other
pixels are removed), added to the imputed pixels only. ROAD's default is 0.01 in the units of
images normalized to unit variance; dualattn's images are z-scored per image and channel, so
0.01 is 1 % of each image's own standard deviation.
"""

from __future__ import annotations

import itertools
import logging

import torch
from torch import Tensor

from .._checks import check_number, check_positive_int

__all__ = ["MAX_ITER", "NOISE_STD", "TOL", "neighbour_weights", "road_impute"]

logger = logging.getLogger(__name__)

#: ROAD's noise (absolute, in the images' units; dualattn's images are z-scored)
NOISE_STD: float = 0.01
#: default relative residual at which a system stops: small enough that the solver's error stays
#: far below the noise in float32 (tests/test_evaluate_fills.py checks it against a dense solve)
TOL: float = 1e-7
#: default cap on the conjugate-gradient iterations
MAX_ITER: int = 2000


def neighbour_weights(spatial_dims: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """ROAD's neighbour weights as a ``(3,) * spatial_dims`` kernel with a zero centre, summing to 1.

    The binomial kernel ``[1, 2, 1]`` along every axis without its centre: in 2-D 1/6 (direct)
    and 1/12 (diagonal), ROAD's weights; in 3-D 1/14 (face), 1/28 (edge) and 1/56 (corner).

    Args:
        spatial_dims: 2 or 3.
        dtype: of the returned kernel.

    Example:
        >>> w = neighbour_weights(2)
        >>> round(float(w[0, 1]) * 6, 12), round(float(w[0, 0]) * 12, 12), float(w[1, 1])
        (1.0, 1.0, 0.0)
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    w = torch.zeros((3,) * spatial_dims, dtype=torch.float64)
    for offset in itertools.product(range(3), repeat=spatial_dims):
        if offset != (1,) * spatial_dims:
            w[offset] = float(2 ** sum(o == 1 for o in offset))
    return (w / w.sum()).to(dtype)


def _binomial_sum(q: Tensor) -> Tensor:
    """``[1, 2, 1]`` along every spatial axis of ``(N, 1, *S)``, zero outside the image (no centre removed)."""
    out = q
    for ax in range(2, q.dim()):
        n = out.shape[ax]
        s = out * 2
        if n > 1:
            s.narrow(ax, 1, n - 1).add_(out.narrow(ax, 0, n - 1))
            s.narrow(ax, 0, n - 1).add_(out.narrow(ax, 1, n - 1))
        out = s
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def _per_system(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _conjugate_gradient(
    b: Tensor, unknown: Tensor, diag: Tensor, inv_norm: float, thr: Tensor, max_iter: int
) -> tuple[Tensor, int, Tensor]:
    """Solve ``unknown * (diag * x - inv_norm * binomial_sum(x)) = b`` for ``x`` supported on ``unknown``.

    ``b``, ``unknown``: ``(N, 1, *S)``; ``diag``: ``(1, 1, *S)``; ``thr``: ``(N,)`` residual norms to reach.
    Returns the solution, the iterations run and the final residual norm of every system.
    """
    n = b.shape[0]
    x_out = torch.zeros_like(b)
    res_out = torch.zeros(n, dtype=b.dtype, device=b.device)
    idx = torch.arange(n, device=b.device)
    u = unknown
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = _dot(r, r)
    thr2 = thr * thr
    it = 0
    while True:
        done = rr <= thr2
        if it >= max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            x_out[idx[done]] = x[done]
            res_out[idx[done]] = rr[done].sqrt()
            keep = ~done
            if not bool(keep.any()):
                return x_out, it, res_out
            idx, u, x, r, p, rr, thr2 = (t[keep] for t in (idx, u, x, r, p, rr, thr2))
        # in place, fused where torch has it: each iteration streams the batch ~12 times instead of ~20
        ap = _binomial_sum(p).mul_(-inv_norm).addcmul_(diag, p).mul_(u)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap, torch.zeros_like(pap))
        x.addcmul_(_per_system(alpha, x), p)
        r.addcmul_(_per_system(alpha, r), ap, value=-1.0)
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr, torch.zeros_like(rr))
        p = p.mul_(_per_system(beta, p)).add_(r)
        rr = rr_new
        it += 1


#: systems (image x channel) are solved in chunks of at most this many pixels: bounds the memory, and keeps
#: the solver's working set (about six tensors of the chunk's size) in a CPU's L2/L3 cache. Each system
#: is solved on its own (the result does not depend on the chunk): on 2 cores 2^18 solved the 3-D
#: evaluation's systems 1.9x faster than 2^23, 2-D ones as fast (benchmarks/road_speed.py)
_CHUNK_ELEMENTS = 1 << 18


def _impute(x0: Tensor, removed: Tensor, *, tol: float, max_iter: int) -> Tensor:
    """Noise-free imputation of ``(N, 1, *S)`` systems (one per image and channel); ``removed`` bool."""
    spatial = tuple(x0.shape[2:])
    sd = len(spatial)
    dt = x0.dtype
    u = removed.to(dt)
    known = 1.0 - u
    dims = tuple(range(1, x0.dim()))

    # A = D_U - W_UU with W = (binomial - centre) / norm; diag = degree + centre / norm
    centre, norm = float(2**sd), float(4**sd - 2**sd)
    ones = torch.ones((1, 1, *spatial), dtype=dt, device=x0.device)
    degree = (_binomial_sum(ones) - centre * ones) / norm
    diag = degree + centre / norm

    n_known = known.sum(dims)
    mean_known = (x0 * known).sum(dims) / n_known.clamp_min(1.0)
    xc = (x0 - _per_system(mean_known, x0)) * known
    rhs = u * ((_binomial_sum(xc) - centre * xc) / norm)
    scale = xc.abs().amax(dim=dims) * (degree * u).flatten(1).norm(dim=1)
    sol, _, res = _conjugate_gradient(rhs, u, diag, 1.0 / norm, tol * scale, max_iter)
    bad = res > tol * scale
    if bool(bad.any()):
        worst = float((res[bad] / scale[bad]).max())
        logger.warning(
            "road_impute: %d of %d systems did not reach tol=%g in max_iter=%d iterations "
            "(worst relative residual %.3g)", int(bad.sum()), x0.shape[0], tol, max_iter, worst,
        )
    imputed = sol + _per_system(mean_known, sol)
    # nothing known in the image: the image's own per-channel mean
    none_known = n_known == 0
    if bool(none_known.any()):
        imputed = torch.where(_per_system(none_known, imputed), x0.mean(dim=dims, keepdim=True), imputed)
    return imputed


def road_impute(
    images: Tensor,
    removed: Tensor,
    *,
    noise_std: float = NOISE_STD,
    generator: torch.Generator | None = None,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> Tensor:
    """Replace the removed pixels by ROAD's noisy linear imputation (see the module doc).

    Args:
        images: ``(B, C, *S)`` float, 2 or 3 spatial dims.
        removed: ``(B, 1, *S)`` (shared by all channels) or ``(B, C, *S)`` bool; True = removed.
        noise_std: standard deviation of the Gaussian noise added to the imputed pixels (>= 0).
        generator: source of the noise; ``None`` uses a new CPU generator seeded with 0, so that
            the result is a deterministic function of the inputs.
        tol: relative residual at which a system stops (> 0; see the module doc).
        max_iter: conjugate-gradient iterations at most.

    Returns:
        ``(B, C, *S)``, the images' dtype: known pixels unchanged, removed ones imputed (+ noise).
        An image with nothing removed is returned unchanged; one with everything removed takes
        its per-channel mean (+ noise).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 6.0]]]])
        >>> removed = torch.zeros(1, 1, 3, 3, dtype=torch.bool); removed[0, 0, 1, 1] = True
        >>> round(road_impute(x, removed, noise_std=0.0)[0, 0, 1, 1].item(), 6)  # 6/12: one diagonal neighbour
        0.5
    """
    if not torch.is_tensor(images) or images.dim() not in (4, 5) or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (B, C, *S) with 2 or 3 spatial dims, got "
            f"{tuple(getattr(images, 'shape', ()))} {getattr(images, 'dtype', type(images).__name__)}"
        )
    b, c = images.shape[:2]
    spatial = tuple(images.shape[2:])
    if (
        not torch.is_tensor(removed)
        or removed.dtype != torch.bool
        or removed.dim() != images.dim()
        or removed.shape[0] != b
        or removed.shape[1] not in (1, c)
        or tuple(removed.shape[2:]) != spatial
    ):
        raise ValueError(
            f"removed must be a bool tensor (B, 1 or C, *S) = ({b}, 1 or {c}, {', '.join(map(str, spatial))}), "
            f"got {tuple(getattr(removed, 'shape', ()))} {getattr(removed, 'dtype', type(removed).__name__)}"
        )
    noise_std = check_number("noise_std", noise_std, low=0.0)
    tol = check_number("tol", tol, low=0.0, low_inclusive=False)
    max_iter = check_positive_int("max_iter", max_iter)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")

    removed = removed.to(images.device).expand(b, c, *spatial)
    if not bool(removed.any()):
        return images.clone()
    dt = images.dtype if images.dtype == torch.float64 else torch.float32
    x0 = images.detach().to(dt).reshape(b * c, 1, *spatial)
    u = removed.reshape(b * c, 1, *spatial)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, x0[0].numel()))
    imputed = torch.cat([
        _impute(x0[s : s + per_chunk], u[s : s + per_chunk], tol=tol, max_iter=max_iter)
        for s in range(0, b * c, per_chunk)
    ])
    imputed = imputed.reshape(b, c, *spatial)
    if noise_std > 0:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        noise = torch.randn((b, c, *spatial), generator=gen, dtype=dt, device=gen.device)
        imputed = imputed + noise_std * noise.to(imputed.device)
    return torch.where(removed, imputed.to(images.dtype), images)
