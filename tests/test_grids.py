"""dualattn.grids: block factors, block sums / upsampling and block logsumexp against naive loops.

``resize_mass`` is tested with the metrics that use it (``test_evaluate_metrics.py``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dualattn import consistency
from dualattn.grids import block_factors, block_logsumexp, block_sum, upsample_blocks


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread-pool overhead dominates on the shared 2-core machine (conftest restores it)."""
    torch.set_num_threads(1)


FACTOR_CASES = [((4, 6), (2, 3)), ((8, 8), (4, 4)), ((6, 6), (3, 1)), ((4, 2, 6), (2, 1, 3)), ((3, 3), (1, 1))]


@pytest.mark.parametrize("fine,factors", FACTOR_CASES)
def test_block_helpers_match_naive_loops(fine, factors):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *fine, dtype=torch.float64, generator=gen)
    coarse = tuple(f // k for f, k in zip(fine, factors))
    expected = torch.zeros(2, *coarse, dtype=torch.float64)
    for idx in itertools.product(*[range(f) for f in fine]):
        parent = tuple(i // k for i, k in zip(idx, factors))
        expected[(slice(None), *parent)] += x[(slice(None), *idx)]
    got = block_sum(x, factors)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    assert got.data_ptr() != x.data_ptr()
    y = torch.randn(2, *coarse, dtype=torch.float64, generator=gen)
    up = upsample_blocks(y, factors, use_matmul=True)
    for idx in itertools.product(*[range(f) for f in fine]):
        parent = tuple(i // k for i, k in zip(idx, factors))
        assert up[(slice(None), *idx)].tolist() == y[(slice(None), *parent)].tolist()
    # adjointness
    torch.testing.assert_close((block_sum(x, factors) * y).sum(), (x * upsample_blocks(y, factors, use_matmul=True)).sum())


def test_public_upsample_keeps_non_finite_values_local():
    x = torch.tensor([[[1.0, float("inf"), 2.0]]])
    up = upsample_blocks(x, (1, 2))
    assert up.tolist() == [[[1.0, 1.0, float("inf"), float("inf"), 2.0, 2.0]]]
    # the fast matmul path is exact on finite values
    y = torch.randn(2, 3, 5, dtype=torch.float64)
    assert torch.equal(upsample_blocks(y, (2, 3), use_matmul=True), upsample_blocks(y, (2, 3)))


@pytest.mark.parametrize("fine,factors", FACTOR_CASES)
def test_block_logsumexp_is_the_log_of_the_block_sum(fine, factors):
    x = torch.randn(2, *fine, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(block_logsumexp(x, factors), block_sum(x.exp(), factors).log(), rtol=1e-12, atol=1e-12)


def test_block_factors_and_upsample_reject_bad_shapes():
    assert block_factors((32, 24), (16, 6)) == (2, 4)
    with pytest.raises(ValueError, match=r"\(9, 9\) is not an integer multiple of coarse grid \(4, 4\)"):
        block_factors((9, 9), (4, 4))
    with pytest.raises(ValueError, match="different numbers of axes"):
        block_factors((4, 4), (2, 2, 1))
    with pytest.raises(ValueError, match="factors"):
        upsample_blocks(torch.ones(1, 2, 2), (2,))
    with pytest.raises(ValueError, match="factors"):
        upsample_blocks(torch.ones(1, 2, 2), (2, 0))


def test_consistency_reexports_the_grid_helpers():
    assert consistency.block_factors is block_factors and consistency.upsample_blocks is upsample_blocks
