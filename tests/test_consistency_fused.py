"""The fused exact projection (analytic backward) against the autograd and log-space paths.

The block helpers it is built on are tested in ``test_grids.py``.
"""

from __future__ import annotations

import pytest
import torch

from dualattn.consistency import marginalize, project_exact, project_exact_log


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)


def softmax_map(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.flatten(1), 1).reshape(logits.shape)


@pytest.mark.parametrize("fine,coarse", [((8, 8), (4, 4)), ((8, 6), (2, 3)), ((4, 4, 4), (2, 2, 1))])
@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_fused_equals_log_space_values_and_gradients(fine, coarse, scale):
    gen = torch.Generator().manual_seed(1)
    lk = torch.randn(3, *fine, dtype=torch.float64, generator=gen) * scale
    lc = torch.randn(3, *coarse, dtype=torch.float64, generator=gen) * scale
    outs, grads = [], []
    for fused in (False, True):
        a = softmax_map(lk).requires_grad_(True)
        b = softmax_map(lc).requires_grad_(True)
        mu_k, mu_l = project_exact(a, b, fused=fused)
        wk = torch.linspace(-1, 1, mu_k.numel(), dtype=torch.float64).reshape(mu_k.shape)
        wl = torch.linspace(2, -1, mu_l.numel(), dtype=torch.float64).reshape(mu_l.shape)
        ((mu_k * wk).sum() + (mu_l * wl).sum()).backward()
        outs.append((mu_k.detach(), mu_l.detach()))
        grads.append((a.grad, b.grad))
    for x, y in zip(outs[0], outs[1]):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-15)
    for x, y in zip(grads[0], grads[1]):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fine,coarse", [((4, 6), (2, 3)), ((2, 4, 2), (1, 2, 1))])
def test_fused_gradcheck(fine, coarse):
    gen = torch.Generator().manual_seed(2)
    a = softmax_map(torch.randn(2, *fine, dtype=torch.float64, generator=gen)).requires_grad_(True)
    b = softmax_map(torch.randn(2, *coarse, dtype=torch.float64, generator=gen)).requires_grad_(True)
    fn = lambda x, y: project_exact(x, y, fused=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b))
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y)[0], (a, b))  # only mu_k used
    assert torch.autograd.gradcheck(lambda x, y: fn(x, y)[1], (a, b))  # only mu_l used
    # off the simplex too (unnormalized positive maps): the analytic backward itself; the public function
    # refuses such maps (they are usually logits by mistake)
    from dualattn.consistency.fused import exact_pair
    from dualattn.grids import block_factors

    pa = (torch.rand(2, *fine, dtype=torch.float64, generator=gen) + 0.1).requires_grad_(True)
    pb = (torch.rand(2, *coarse, dtype=torch.float64, generator=gen) + 0.1).requires_grad_(True)
    factors = block_factors(fine, coarse)
    assert torch.autograd.gradcheck(lambda x, y: exact_pair(x, y, factors), (pa, pb))
    with pytest.raises(ValueError, match="sum to"):
        fn(pa, pb)
    # only one input requiring grad
    assert torch.autograd.gradcheck(lambda x: fn(x, b.detach()), (a,))
    assert torch.autograd.gradcheck(lambda y: fn(a.detach(), y), (b,))


def test_fused_with_exact_zeros_matches_log_space():
    tk = torch.zeros(2, 4, 4, dtype=torch.float64)
    tk[:, :2, :2] = 0.2
    tk[:, 3, 3] = 0.2
    tl = torch.tensor([[[0.0, 0.5], [0.25, 0.25]]] * 2, dtype=torch.float64)
    res = []
    for fused in (False, True):
        a, b = tk.clone().requires_grad_(True), tl.clone().requires_grad_(True)
        mu_k, mu_l = project_exact(a, b, fused=fused)
        (mu_k.pow(2).sum() + (mu_l * torch.arange(4.0, dtype=torch.float64).reshape(2, 2)).sum()).backward()
        res.append((mu_k.detach(), mu_l.detach(), a.grad, b.grad))
        assert bool(torch.isfinite(a.grad).all()) and bool(torch.isfinite(b.grad).all())
        assert bool((a.grad[tk == 0] == 0).all()) and bool((b.grad[tl == 0] == 0).all())
    for x, y in zip(res[0], res[1]):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(marginalize(res[1][0], (2, 2)), res[1][1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_precision_and_extremes(dtype):
    gen = torch.Generator().manual_seed(3)
    lk = (torch.randint(0, 2, (2, 8, 8), generator=gen) * 2 - 1).float() * 1e4
    lc = (torch.randint(0, 2, (2, 4, 4), generator=gen) * 2 - 1).float() * 1e4
    tk = softmax_map(lk).to(dtype).requires_grad_(True)
    tl = softmax_map(lc).to(dtype).requires_grad_(True)
    mu_k, mu_l = project_exact(tk, tl, fused=True)
    assert mu_k.dtype == dtype and mu_l.dtype == dtype
    for m in (mu_k, mu_l):
        mf = m.float()
        assert bool(torch.isfinite(mf).all()) and bool((mf >= 0).all())
        torch.testing.assert_close(mf.flatten(1).sum(1), torch.ones(2), atol=1e-2, rtol=0)
    ref_k, _ = project_exact_log(lk, lc)
    torch.testing.assert_close(mu_k.float(), ref_k.exp(), atol=1e-2, rtol=0)
    (mu_k.float().pow(2).sum() + mu_l.float().pow(2).sum()).backward()
    assert tk.grad.dtype == dtype and bool(torch.isfinite(tk.grad.float()).all())
    assert bool(torch.isfinite(tl.grad.float()).all())


def test_fused_per_sample_independence_bit_identical():
    gen = torch.Generator().manual_seed(4)
    tk = softmax_map(torch.randn(3, 8, 8, generator=gen))
    tl = softmax_map(torch.randn(3, 4, 4, generator=gen))
    tk2, tl2 = tk.clone(), tl.clone()
    tk2[0] = softmax_map(30 * torch.randn(1, 8, 8, generator=gen))[0]
    tl2[0] = 0.0
    tl2[0, 0, 0] = 1.0
    a = project_exact(tk, tl, fused=True)
    b = project_exact(tk2, tl2, fused=True)
    for x, y in zip(a, b):
        assert torch.equal(x[1:], y[1:]) and not torch.equal(x[0], y[0])
