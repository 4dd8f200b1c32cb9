"""The perturbation fills (mean, background, blur, ROAD) against independent references.

ROAD's imputation is checked against a dense solve of the same linear system, built here pixel by
pixel from the neighbour weights written out by hand (ROAD's 1/6 and 1/12 in 2-D; 1/14, 1/28 and
1/56 for face, edge and corner neighbours in 3-D).
"""

from __future__ import annotations

import doctest
import itertools
import logging

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from dualattn.evaluate import perturbation as P
from dualattn.evaluate import road as R
from dualattn.evaluate.perturbation import FILLS, make_fill, perturbation_curve, perturbation_predictions
from dualattn.evaluate.road import neighbour_weights, road_impute

#: neighbour weight by the number of non-zero offset axes, written out by hand
WEIGHTS = {2: {1: 1 / 6, 2: 1 / 12}, 3: {1: 1 / 14, 2: 1 / 28, 3: 1 / 56}}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # shared machine; conftest restores the thread count


def _dense_road(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Reference: for every removed pixel i, sum_j w_ij (x_i - x_j) = 0 over its in-bounds
    neighbours, assembled densely and solved by scipy.linalg.solve. ``x``, ``removed``: ``S``."""
    shape = x.shape
    if removed.all():  # the singular case, special-cased by road_impute: the image's mean
        return np.full_like(x, x.mean())
    w = WEIGHTS[len(shape)]
    unknown = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    for p, i in unknown.items():
        for off in itertools.product((-1, 0, 1), repeat=len(shape)):
            q = tuple(c + o for c, o in zip(p, off))
            if not any(off) or any(c < 0 or c >= s for c, s in zip(q, shape)):
                continue
            wij = w[sum(o != 0 for o in off)]
            a[i, i] += wij
            if q in unknown:
                a[i, unknown[q]] -= wij
            else:
                b[i] += wij * x[q]
    out = x.copy()
    if unknown:
        sol = scipy.linalg.solve(a, b, assume_a="pos")
        for p, i in unknown.items():
            out[p] = sol[i]
    return out


def _smooth_mask(b: int, size: tuple[int, ...], frac: float, g: torch.Generator) -> torch.Tensor:
    """Contiguous removed regions, as a smooth map ranks them: ``(b, 1, *size)`` bool, ``frac`` removed."""
    z = torch.randn(b, 1, *[3] * len(size), generator=g, dtype=torch.float64)
    z = F.interpolate(z, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)
    k = int(round(frac * z[0].numel()))
    rank = z.flatten(1).argsort(1).argsort(1)
    return (rank < k).reshape(b, 1, *size)


# ------------------------------------------------------------------ ROAD: the linear system
def test_neighbour_weights_are_roads_and_the_3d_analogue():
    w2, w3 = neighbour_weights(2), neighbour_weights(3)
    assert w2.sum().item() == pytest.approx(1.0) and w3.sum().item() == pytest.approx(1.0)
    for w, sd in ((w2, 2), (w3, 3)):
        for off in itertools.product(range(3), repeat=sd):
            k = sum(o != 1 for o in off)
            assert w[off].item() == pytest.approx(0.0 if k == 0 else WEIGHTS[sd][k])


@pytest.mark.parametrize(
    "size,frac,seed",
    [((5, 7), 0.5, 0), ((6, 6), 0.9, 1), ((1, 8), 0.5, 2), ((8, 5), 0.2, 3),
     ((3, 4, 5), 0.5, 4), ((4, 4, 4), 0.85, 5), ((2, 3, 6), 0.3, 6)],
)
def test_road_equals_dense_solve(size, frac, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 2, *size, generator=g, dtype=torch.float64)
    removed = torch.rand(3, 1, *size, generator=g) < frac
    removed[0, 0].view(-1)[0] = True  # at least one removed and one known pixel per image
    removed[0, 0].view(-1)[-1] = False
    out = road_impute(x, removed, noise_std=0.0, tol=1e-12)
    for i in range(3):
        for c in range(2):
            ref = _dense_road(x[i, c].numpy(), removed[i, 0].numpy())
            np.testing.assert_allclose(out[i, c].numpy(), ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("size", [(48, 48), (12, 12, 12)])
def test_road_default_tolerance_float32_is_far_below_the_noise(size):
    # large contiguous holes (the hardest systems); float32 images are solved in float32
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 2, *size, generator=g, dtype=torch.float64)
    removed = _smooth_mask(2, size, 0.9, g)
    out = road_impute(x.float(), removed, noise_std=0.0)
    assert out.dtype == torch.float32
    for i in range(2):
        ref = _dense_road(x[i, 0].numpy(), removed[i, 0].numpy())
        assert np.abs(out[i, 0].double().numpy() - ref).max() < 0.1 * R.NOISE_STD


def test_road_hand_case_one_removed_pixel():
    # centre of a 3x3 image: weights 1/6 (direct), 1/12 (diagonal), all 8 neighbours in bounds
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 5.0], [6.0, 7.0, 8.0]], dtype=torch.float64)[None, None]
    removed = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    removed[0, 0, 1, 1] = True
    expected = (2 + 4 + 5 + 7) / 6 + (1 + 3 + 6 + 8) / 12
    assert road_impute(x, removed, noise_std=0.0, tol=1e-12)[0, 0, 1, 1].item() == pytest.approx(expected)
    # a corner: 2 direct + 1 diagonal neighbour, weights renormalized by the degree 5/12
    removed = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    removed[0, 0, 0, 0] = True
    expected = ((2 + 4) / 6 + 100 / 12) / (5 / 12)
    assert road_impute(x, removed, noise_std=0.0, tol=1e-12)[0, 0, 0, 0].item() == pytest.approx(expected)


@pytest.mark.parametrize("size", [(9, 11), (4, 5, 6)])
def test_road_is_a_convex_combination_and_keeps_known_pixels(size):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3, *size, generator=g, dtype=torch.float64) * 5 + 2
    removed = _smooth_mask(4, size, 0.6, g)
    out = road_impute(x, removed, noise_std=0.0, tol=1e-10)
    keep = ~removed.expand_as(x)
    assert torch.equal(out[keep], x[keep])
    for i in range(4):
        for c in range(3):
            known = x[i, c][keep[i, c]]
            imputed = out[i, c][~keep[i, c]]
            assert imputed.min() >= known.min() - 1e-9 and imputed.max() <= known.max() + 1e-9


def test_road_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 2, 10, 12, generator=g, dtype=torch.float64)
    removed = _smooth_mask(5, (10, 12), 0.7, g)
    batched = road_impute(x, removed, noise_std=0.0, tol=1e-11)
    for i in range(5):
        single = road_impute(x[i : i + 1], removed[i : i + 1], noise_std=0.0, tol=1e-11)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=0, atol=1e-9)


@pytest.mark.parametrize("dims", [2, 3])
def test_road_chunk_size_does_not_change_the_fill(dims, monkeypatch):
    # the chunk size is a speed setting only (cache-sized chunks): each system is solved on its own
    g = torch.Generator().manual_seed(4)
    size = (12,) * dims
    x = torch.randn(6, 3, *size, generator=g)
    removed = torch.rand(6, 1, *size, generator=g) < torch.linspace(0.1, 0.9, 6).view(6, *([1] * (dims + 1)))
    monkeypatch.setattr(R, "_CHUNK_ELEMENTS", 1 << 23)
    whole = road_impute(x, removed, noise_std=0.0)
    for elements in (1, 2 * 12**dims, 5 * 12**dims):
        monkeypatch.setattr(R, "_CHUNK_ELEMENTS", elements)
        assert torch.equal(road_impute(x, removed, noise_std=0.0), whole)


def test_road_per_channel_masks():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 3, 6, 7, generator=g) < 0.5
    out = road_impute(x, removed, noise_std=0.0, tol=1e-12)
    for i in range(2):
        for c in range(3):
            ref = _dense_road(x[i, c].numpy(), removed[i, c].numpy())
            np.testing.assert_allclose(out[i, c].numpy(), ref, atol=1e-8, rtol=0)


# ------------------------------------------------------------------ ROAD: noise and edge cases
def test_road_noise_is_seeded_and_only_on_removed_pixels():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 2, 32, 32, generator=g)
    removed = _smooth_mask(4, (32, 32), 0.5, g)
    clean = road_impute(x, removed, noise_std=0.0)
    a = road_impute(x, removed, noise_std=0.05, generator=torch.Generator().manual_seed(3))
    b = road_impute(x, removed, noise_std=0.05, generator=torch.Generator().manual_seed(3))
    other = road_impute(x, removed, noise_std=0.05, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, other)
    keep = ~removed.expand_as(x)
    assert torch.equal(a[keep], x[keep])
    noise = (a - clean)[~keep]
    assert noise.numel() == 4 * 2 * 512
    assert abs(noise.mean().item()) < 0.05 * 4 / noise.numel() ** 0.5
    assert noise.std().item() == pytest.approx(0.05, rel=0.05)
    # the default generator is seeded too: a pure function of the inputs
    assert torch.equal(road_impute(x, removed), road_impute(x, removed))


def test_road_noise_of_a_pixel_does_not_depend_on_the_mask():
    # both masks remove pixel (0, :, 3, 3); it gets the same noise (common random numbers)
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    m1 = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    m1[..., 2:5, 2:5] = True
    m2 = torch.zeros_like(m1)
    m2[..., 3, 3] = True
    n1 = road_impute(x, m1, noise_std=0.1) - road_impute(x, m1, noise_std=0.0)
    n2 = road_impute(x, m2, noise_std=0.1) - road_impute(x, m2, noise_std=0.0)
    torch.testing.assert_close(n1[..., 3, 3], n2[..., 3, 3])
    assert (n1[..., 3, 3].abs() > 0).all()


def test_road_nothing_removed_is_unchanged_and_everything_removed_is_the_mean():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(3, 2, 5, 6, generator=g) * 3 + 1
    removed = torch.zeros(3, 1, 5, 6, dtype=torch.bool)
    assert torch.equal(road_impute(x, removed), x)
    removed[1] = True  # image 1 entirely removed; images 0 and 2 untouched
    out = road_impute(x, removed, noise_std=0.0)
    assert torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    torch.testing.assert_close(out[1], x[1].mean((1, 2), keepdim=True).expand(2, 5, 6))
    noisy = road_impute(x, removed, noise_std=0.01)
    assert 0 < (noisy[1] - out[1]).abs().max() < 0.1


def test_road_warns_when_max_iter_is_reached(caplog):
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64)
    removed = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    removed[..., 4:28, 4:28] = True
    with caplog.at_level(logging.WARNING, logger="dualattn.evaluate.road"):
        road_impute(x, removed, noise_std=0.0, max_iter=2)
    assert "did not reach" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dualattn.evaluate.road"):
        road_impute(x, removed, noise_std=0.0)
    assert caplog.text == ""


def test_road_argument_errors_name_the_value():
    x = torch.rand(2, 1, 4, 4)
    ok = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(2, 1, 3, 4\)"):
        road_impute(x, torch.zeros(2, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="float32"):
        road_impute(x, ok.float())
    with pytest.raises(ValueError, match="-0.1"):
        road_impute(x, ok, noise_std=-0.1)
    with pytest.raises(ValueError, match="tol"):
        road_impute(x, ok, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        road_impute(x, ok, max_iter=0)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        road_impute(torch.rand(2, 4), ok)
    with pytest.raises(ValueError, match="spatial_dims"):
        neighbour_weights(4)


# ------------------------------------------------------------------ the four fills
def test_fills_are_named():
    assert FILLS == ("mean", "background", "blur", "road")
    for kind in (*FILLS, "zero"):
        fill = make_fill(kind)
        assert callable(fill) and fill.name == kind


def test_mean_fill_is_the_per_channel_mean():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(3, 2, 5, 5, generator=g) + torch.tensor([0.0, 4.0]).view(1, 2, 1, 1)
    removed = torch.rand(3, 1, 5, 5, generator=g) < 0.5
    out = make_fill("mean")(x, removed)
    for i in range(3):
        for c in range(2):
            expected = torch.where(removed[i, 0], x[i, c].mean(), x[i, c])
            torch.testing.assert_close(out[i, c], expected)


def test_mean_fill_of_z_scored_images_equals_zero_fill():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)
    x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)
    removed = torch.rand(3, 1, 6, 6, generator=g) < 0.5
    torch.testing.assert_close(make_fill("mean")(x, removed), make_fill("zero")(x, removed))


def test_background_fill_hand_case():
    # channel 0: 0, 1, ..., 99 -> 1st percentile 0.99 (linear interpolation); channel 1: 10x that
    x = torch.arange(100.0, dtype=torch.float64).reshape(1, 1, 10, 10)
    x = torch.cat([x, 10 * x.flip(-1)], dim=1)
    removed = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    removed[..., 5:, :] = True
    out = make_fill("background")(x, removed)
    assert torch.equal(out[..., :5, :], x[..., :5, :])
    assert torch.all(out[0, 0, 5:] == 0.99) and torch.allclose(out[0, 1, 5:], torch.tensor(9.9, dtype=torch.float64))


@pytest.mark.parametrize("size", [(7, 9), (3, 4, 5), (1, 1)])
def test_background_fill_equals_numpy_percentile(size):
    g = torch.Generator().manual_seed(15)
    x = torch.randn(4, 3, *size, generator=g, dtype=torch.float64)
    removed = torch.ones(4, 1, *size, dtype=torch.bool)
    out = make_fill("background")(x, removed)
    for i in range(4):
        for c in range(3):
            ref = np.percentile(x[i, c].numpy(), P.BACKGROUND_PERCENTILE)
            assert torch.allclose(out[i, c], torch.tensor(ref, dtype=torch.float64))


def test_blur_fill_is_the_blurred_image_on_removed_pixels():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(2, 2, 12, 12, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 1, 12, 12, generator=g) < 0.5
    out = make_fill("blur", sigma=1.5)(x, removed)
    # reference: scipy's Gaussian filter with the same truncation (radius ceil(3 sigma)) and
    # reflect padding without the edge sample (scipy's "mirror")
    from scipy.ndimage import gaussian_filter

    for i in range(2):
        for c in range(2):
            ref = gaussian_filter(x[i, c].numpy(), 1.5, mode="mirror", truncate=3.0)
            expected = np.where(removed[i, 0].numpy(), ref, x[i, c].numpy())
            np.testing.assert_allclose(out[i, c].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("kind", [*FILLS, "zero"])
@pytest.mark.parametrize("size", [(8, 8), (4, 5, 6)])
def test_fills_keep_known_pixels_and_do_nothing_without_removal(kind, size):
    g = torch.Generator().manual_seed(17)
    x = torch.randn(3, 2, *size, generator=g)
    fill = make_fill(kind)
    assert torch.equal(fill(x, torch.zeros(3, 1, *size, dtype=torch.bool)), x)
    removed = torch.rand(3, 1, *size, generator=g) < 0.4
    out = fill(x, removed)
    keep = ~removed.expand_as(x)
    assert out.shape == x.shape and torch.equal(out[keep], x[keep])
    assert not torch.equal(out, x)


@pytest.mark.parametrize("kind", [*FILLS, "zero"])
def test_one_image_never_changes_another_images_fill(kind):
    g = torch.Generator().manual_seed(18)
    x = torch.randn(3, 2, 10, 10, generator=g)
    removed = _smooth_mask(3, (10, 10), 0.5, g)
    fill = make_fill(kind)
    out = fill(x, removed)
    x2, removed2 = x.clone(), removed.clone()
    x2[1] = torch.randn(2, 10, 10, generator=g) * 10
    removed2[1] = ~removed2[1]
    out2 = fill(x2, removed2)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[2], out2[2])
    assert torch.equal(x[1], x.clone()[1])  # inputs not mutated
    assert torch.equal(fill(x, removed), out)  # deterministic


def test_fill_inputs_are_not_mutated():
    x = torch.randn(2, 2, 8, 8)
    removed = torch.rand(2, 1, 8, 8) < 0.5
    x0, r0 = x.clone(), removed.clone()
    for kind in FILLS:
        make_fill(kind)(x, removed)
    assert torch.equal(x, x0) and torch.equal(removed, r0)


def test_road_fill_seed_and_noise():
    g = torch.Generator().manual_seed(21)
    x = torch.randn(3, 2, 16, 16, generator=g)
    removed = _smooth_mask(3, (16, 16), 0.5, g)
    a, b = make_fill("road", seed=1)(x, removed), make_fill("road", seed=1)(x, removed)
    c = make_fill("road", seed=2)(x, removed)
    assert torch.equal(a, b) and not torch.equal(a, c)
    clean = make_fill("road", noise_std=0.0)(x, removed)
    torch.testing.assert_close(clean, road_impute(x, removed, noise_std=0.0))
    keep = ~removed.expand_as(x)
    assert torch.equal(a[keep], x[keep])
    noise = (make_fill("road", noise_std=0.2)(x, removed) - clean)[~keep]
    assert noise.std().item() == pytest.approx(0.2, rel=0.1)


def test_road_fill_batched_equals_one_by_one_with_noise():
    # the noise field is shared by the images of a batch: batch size and order change nothing
    g = torch.Generator().manual_seed(22)
    x = torch.randn(4, 2, 12, 12, generator=g)
    removed = _smooth_mask(4, (12, 12), 0.6, g)
    fill = make_fill("road", seed=5)
    batched = fill(x, removed)
    for i in range(4):
        torch.testing.assert_close(batched[i : i + 1], fill(x[i : i + 1], removed[i : i + 1]), rtol=0, atol=1e-5)
    rev = fill(x.flip(0), removed.flip(0)).flip(0)
    torch.testing.assert_close(batched, rev, rtol=0, atol=1e-5)


def test_fill_errors_name_the_value():
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="sparkle"):
        make_fill("sparkle")
    with pytest.raises(ValueError, match="sigma"):
        make_fill("blur", sigma=0.0)
    with pytest.raises(ValueError, match="noise_std"):
        make_fill("road", noise_std=-1.0)
    with pytest.raises(ValueError, match="seed"):
        make_fill("road", seed=1.5)
    for kind in FILLS:
        with pytest.raises(ValueError, match=r"\(2, 1, 4, 5\)"):
            make_fill(kind)(x, torch.zeros(2, 1, 4, 5, dtype=torch.bool))


# ------------------------------------------------------------------ fills in the perturbation curve
@pytest.mark.parametrize("kind", FILLS)
@pytest.mark.parametrize("size", [(8, 8), (4, 6, 6)])
def test_curve_with_every_fill_fraction_zero_unchanged(kind, size):
    g = torch.Generator().manual_seed(19)
    x = torch.randn(4, 2, *size, generator=g)
    maps = torch.rand(4, 1, *[s // 2 for s in size], generator=g)
    seen = []

    def clf(images):
        seen.append(images.clone())
        return images.flatten(1)[:, :3]

    for order in ("least_first", "most_first"):
        seen.clear()
        preds = perturbation_predictions(clf, x, maps, fractions=(0.0, 0.5, 1.0), order=order, fill=kind)
        assert preds.shape == (4, 3)
        assert torch.equal(seen[0], x)
        removed = P.removal_masks(maps, size, (0.0, 0.5), order=order)[1]
        torch.testing.assert_close(seen[1], make_fill(kind)(x, removed))
    labels = torch.tensor([0, 1, 2, 0])
    curve = perturbation_curve(clf, x, labels, maps, fractions=(0.0, 0.5, 1.0), fill=kind)
    assert len(curve.balanced_accuracy) == 3


def test_road_fill_depends_on_the_map_the_others_on_the_image_only():
    # same removed set through two maps of equal ranking -> same images; a map-independent fill
    # gives removed pixels values that do not depend on which others were removed, ROAD does not
    g = torch.Generator().manual_seed(20)
    x = torch.randn(1, 1, 12, 12, generator=g, dtype=torch.float64)
    m1 = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    m1[..., 4:8, 4:8] = True
    m2 = m1.clone()
    m2[..., 4:8, 8:10] = True
    for kind in ("mean", "background", "blur"):
        fill = make_fill(kind)
        assert torch.equal(fill(x, m1)[m1], fill(x, m2)[m1])
    road = make_fill("road", noise_std=0.0)
    assert not torch.allclose(road(x, m1)[m1], road(x, m2)[m1])


def test_module_examples_run():
    for module in (P, R):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__
