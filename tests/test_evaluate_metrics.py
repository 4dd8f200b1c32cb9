"""Metrics against hand-computed cases and independent references (sklearn, scipy, naive loops)."""

from __future__ import annotations

import math

import numpy as np
from pathlib import Path

import pytest
import torch

from dualattn.evaluate import metrics as M
from dualattn.evaluate.perturbation import (
    RoadFill,
    make_fill,
    make_perturbation,
    perturbation_curve,
    perturbation_predictions,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # shared machine; conftest restores the thread count


# ------------------------------------------------------------------ resize_mass
@pytest.mark.parametrize("grid,size", [((2, 2), (4, 4)), ((3, 5), (7, 10)), ((8, 8), (4, 4)), ((6, 4), (4, 9))])
def test_resize_mass_preserves_mass(grid, size):
    x = torch.rand(3, 1, *grid, dtype=torch.float64)
    y = M.resize_mass(x, size)
    assert y.shape == (3, 1, *size)
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)))


def test_resize_mass_integer_factor_is_nearest_over_area():
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    y = M.resize_mass(x, (4, 6))
    ref = torch.nn.functional.interpolate(x, size=(4, 6), mode="nearest") / 6.0
    torch.testing.assert_close(y, ref)
    # downsampling is sum pooling
    z = torch.rand(2, 1, 4, 4, 4)
    torch.testing.assert_close(M.resize_mass(z, (2, 2, 2)), torch.nn.functional.avg_pool3d(z, 2) * 8)


# ------------------------------------------------------------------ IoU
def test_iou_hand_computed():
    # 4x4 map with values 0..15; q = 0.75 -> threshold at the 0.75 quantile = 11.25 -> top 4 pixels {12..15}
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 3, :2] = 1  # pixels 12, 13
    m[0, 0, 0, 0] = 1  # pixel 0
    # pred = {12,13,14,15}; mask = {0,12,13}; inter=2, union=5
    assert M.iou_at_quantile(a, m, 0.75).item() == pytest.approx(2 / 5)


def test_iou_coarse_map_on_fine_mask():
    # 2x2 map on a 4x4 mask: top cell (1,1) covers pixels rows 2-3, cols 2-3
    a = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 2:, 2:] = 1
    assert M.iou_at_quantile(a, m, 0.75).item() == pytest.approx(1.0)
    m2 = torch.zeros(1, 1, 4, 4)
    m2[0, 0, 3, 3] = 1
    assert M.iou_at_quantile(a, m2, 0.75).item() == pytest.approx(1 / 4)


def test_iou_mask_as_explainer_is_one_and_random_is_chance():
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(16, 1, 32, 32)
    for i in range(16):
        r, c = torch.randint(0, 20, (2,), generator=g)
        masks[i, 0, r : r + 12, c : c + 12] = 1  # 14 % of the image
    for q in (0.975, 0.95, 0.90):
        assert torch.allclose(M.iou_at_quantile(masks, masks, q), torch.ones(16, dtype=torch.float64))
    rand = torch.rand(16, 1, 32, 32, generator=g)
    iou = M.iou_at_quantile(rand, masks, 0.90).mean().item()
    # chance: top 10 % random vs a 14 % mask -> E[inter]/E[union] = 0.014 / (0.1 + 0.14 - 0.014)
    assert iou == pytest.approx(0.014 / 0.226, abs=0.02)


def test_iou_empty_mask_is_nan():
    out = M.iou_at_quantile(torch.rand(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), 0.9)
    assert torch.isnan(out).all()


def test_iou_rejects_bad_q():
    with pytest.raises(ValueError, match="1.5"):
        M.iou_at_quantile(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4), 1.5)


# ------------------------------------------------------------------ AP
def test_ap_hand_computed():
    # scores 0.9(pos) 0.8(neg) 0.7(pos) 0.1(neg): AP = 0.5*1 + 0.5*(2/3)
    a = torch.tensor([[[[0.9, 0.8], [0.7, 0.1]]]])
    m = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert M.average_precision(a, m).item() == pytest.approx(0.5 + 1 / 3)


@pytest.mark.parametrize("ties", [False, True])
def test_ap_equals_sklearn(ties):
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(1)
    maps = torch.rand(6, 1, 4, 4, generator=g)
    if ties:
        maps = (maps * 4).floor()  # many tied scores; also coarse map
    masks = (torch.rand(6, 1, 8, 8, generator=g) > 0.7).float()
    ours = M.average_precision(maps, masks)
    up = M.resize_mass(maps.double(), (8, 8))
    for i in range(6):
        ref = average_precision_score(masks[i].flatten().numpy(), up[i].flatten().numpy())
        assert ours[i].item() == pytest.approx(ref, abs=1e-12)


def test_pointing_game():
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 1, 1] = 1
    a[1, 0, 3, 3] = 1
    m = torch.zeros(2, 1, 4, 4)
    m[:, 0, :2, :2] = 1
    assert M.pointing_game(a, m).tolist() == [1.0, 0.0]
    assert math.isnan(M.pointing_game(a, torch.zeros(2, 1, 4, 4))[0].item())


# ------------------------------------------------------------------ classification / curves
def test_balanced_accuracy_equals_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (50,), generator=g)
    p = torch.randint(0, 3, (50,), generator=g)
    assert M.balanced_accuracy(y, p) == pytest.approx(balanced_accuracy_score(y.numpy(), p.numpy()))


def test_curve_auc():
    assert M.curve_auc([0, 0.5, 1], [1, 1, 1]) == pytest.approx(100)
    assert M.curve_auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(50)
    with pytest.raises(ValueError):
        M.curve_auc([0, 0, 1], [1, 1, 1])


def _naive_curve(clf, images, labels, maps, fractions, order, fill):
    """Slow reference: for every fraction and image, mark the pixels to remove one by one in rank
    order, then fill that one image."""
    from sklearn.metrics import balanced_accuracy_score

    b, c, h, w = images.shape
    up = M.resize_mass(maps.double(), (h, w))
    accs = []
    for f in fractions:
        preds = []
        for i in range(b):
            removed = torch.zeros(1, 1, h, w, dtype=torch.bool)
            vals = up[i, 0].flatten().tolist()
            idx = sorted(range(h * w), key=lambda j: (vals[j], j) if order == "least_first" else (-vals[j], j))
            for j in idx[: int(round(f * h * w))]:
                removed[0, 0, j // w, j % w] = True
            img = fill(images[i : i + 1], removed)
            preds.append(int(clf(img).argmax(1)))
        accs.append(balanced_accuracy_score(labels.numpy(), np.array(preds)))
    return accs


def _replacement_fill(kind):
    """The fill written out from the replacement interface: removed pixels take ``replacement(image)``."""
    repl = make_perturbation(kind)
    return lambda x, removed: torch.where(removed, repl(x), x)


@pytest.mark.parametrize("order", ["least_first", "most_first"])
@pytest.mark.parametrize("kind", ["zero", "mean", "background", "blur", "road"])
def test_perturbation_curve_equals_naive_loop(order, kind):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(6, 2, 6, 6, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    maps = torch.rand(6, 1, 3, 3, generator=g)
    lin = torch.nn.Linear(72, 2)
    torch.nn.init.normal_(lin.weight, generator=g)

    def clf(x):
        return lin(x.flatten(1))

    fr = (0.0, 0.25, 0.5, 0.75, 1.0)
    if kind == "road":  # with its noise: an image's fill does not depend on its batch
        fill, ref_fill = RoadFill(seed=4), RoadFill(seed=4)
    else:
        fill, ref_fill = kind, _replacement_fill(kind)
    curve = perturbation_curve(clf, images, labels, maps, fractions=fr, order=order, fill=fill)
    ref = _naive_curve(clf, images, labels, maps, fr, order, ref_fill)
    assert curve.balanced_accuracy == pytest.approx(tuple(ref))
    assert curve.auc == pytest.approx(M.curve_auc(fr, ref))


@pytest.mark.parametrize("kind", ["zero", "blur"])
def test_perturbation_keyword_still_accepted(kind):
    g = torch.Generator().manual_seed(8)
    images, maps = torch.randn(4, 2, 6, 6, generator=g), torch.rand(4, 1, 3, 3, generator=g)
    clf = torch.nn.Linear(72, 3)
    fr = (0.0, 0.3, 0.6, 1.0)
    new = perturbation_predictions(lambda x: clf(x.flatten(1)), images, maps, fractions=fr, fill=kind)
    old = perturbation_predictions(lambda x: clf(x.flatten(1)), images, maps, fractions=fr, perturbation=kind)
    replacement = perturbation_predictions(
        lambda x: clf(x.flatten(1)), images, maps, fractions=fr, perturbation=make_perturbation(kind)
    )
    assert torch.equal(new, old) and torch.equal(new, replacement)
    with pytest.raises(ValueError, match="not both"):
        perturbation_predictions(clf, images, maps, fill=kind, perturbation=kind)


def test_perturbation_all_channels_and_orders():
    # at fraction 1 every pixel of every channel is removed: the default fill ("mean") gives each
    # image's own per-channel mean, "zero" gives 0
    images = torch.rand(3, 3, 4, 4) + 1
    maps = torch.rand(3, 1, 4, 4)
    seen = []

    def clf(x):
        seen.append(x.clone())
        return torch.zeros(x.shape[0], 2)

    for order in ("least_first", "most_first"):
        seen.clear()
        perturbation_predictions(clf, images, maps, fractions=(0.0, 1.0), order=order)
        assert torch.equal(seen[0], images)
        torch.testing.assert_close(seen[1], images.mean((2, 3), keepdim=True).expand_as(images))
        seen.clear()
        perturbation_predictions(clf, images, maps, fractions=(0.0, 1.0), order=order, fill="zero")
        assert torch.equal(seen[0], images) and torch.equal(seen[1], torch.zeros_like(images))


def test_blur_of_constant_is_constant_3d():
    x = torch.full((2, 1, 5, 6, 7), 3.0)
    torch.testing.assert_close(make_perturbation("blur", sigma=1.5)(x), x)


# ------------------------------------------------------------------ consistency / sanity / sharpness
def test_consistency_kl_hand_computed():
    fine = torch.zeros(1, 4, 4)
    fine[0, :2, :2] = 0.25  # all mass in coarse cell (0,0)
    coarse = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    assert M.consistency_kl(fine, coarse).item() == pytest.approx(math.log(2))
    coarse2 = M.resize_mass(fine[:, None], (2, 2))[:, 0]
    assert M.consistency_kl(fine, coarse2).item() == pytest.approx(0.0, abs=1e-12)


def test_spearman_equals_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(4)
    a = (torch.rand(5, 1, 6, 6, generator=g) * 5).floor()  # ties
    b = torch.rand(5, 1, 6, 6, generator=g)
    ours = M.spearman_rank_correlation(a, b)
    for i in range(5):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-12)
    assert math.isnan(M.spearman_rank_correlation(torch.ones(1, 9), torch.rand(1, 9))[0].item())


def test_sharpness():
    u = torch.ones(1, 1, 4, 4)
    spike = torch.zeros(1, 1, 4, 4)
    spike[0, 0, 0, 0] = 1
    half = torch.zeros(1, 1, 4, 4)
    half[0, 0, :2] = 1
    assert M.sharpness(u).item() == pytest.approx(1.0)
    assert M.sharpness(spike).item() == pytest.approx(1 / 16)
    assert M.sharpness(half).item() == pytest.approx(0.5)


def test_sharpness_in_the_foreground_by_hand():
    """exp(entropy)/n over the given cells only: a map flat on the tissue scores 1 however much background it
    leaves out; a spike on one of four tissue cells 1/4; negative maps shifted within the cells."""
    cells = torch.tensor([[True, True, True, True, False, False, False, False]])
    flat = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    spike = torch.tensor([[0.0, 3.0, 0.0, 0.0, 9.0, 9.0, 9.0, 9.0]])
    assert M.sharpness(flat).item() == pytest.approx(0.5)
    assert M.sharpness_in(flat, cells).item() == pytest.approx(1.0)
    assert M.sharpness_in(spike, cells).item() == pytest.approx(0.25)  # the background's 9s do not count
    # two of four cells at 1, two at 0 after the shift of -1: exp(ln 2) / 4
    assert M.sharpness_in(torch.tensor([[-1.0, 0.0, 0.0, -1.0, 5.0, 5, 5, 5]]), cells).item() == pytest.approx(0.5)
    assert M.sharpness_in(torch.zeros(1, 8), cells).item() == pytest.approx(1.0)  # all zero: uniform
    with pytest.raises(ValueError, match="at least one cell"):
        M.sharpness_in(flat, torch.zeros(1, 8, dtype=torch.bool))


def test_map_scores_report_the_foreground_sharpness_on_the_hiding_tests_cells():
    from dualattn.evaluate.hiding import candidate_cells, foreground
    from dualattn.evaluate.scoring import map_scores
    from dualattn.evaluate.testset import TestSet

    gen = torch.Generator().manual_seed(0)
    raw = torch.zeros(3, 1, 16, 16)
    raw[:, :, 4:12, 2:14] = 1.0 + torch.rand(3, 1, 8, 12, generator=gen)  # tissue in the middle
    maps = torch.rand(3, 1, 4, 4, generator=gen)
    test = TestSet(images=raw, labels=torch.tensor([0, 1, 0]), masks=torch.zeros(3, 1, 16, 16),
                   has_mask=torch.zeros(3, dtype=torch.bool), ids=["a", "b", "c"], root=Path("."),
                   class_names=["no", "yes"], raw_images=raw)
    cells = candidate_cells(foreground(raw), (4, 4))
    assert 0 < int(cells[0].sum()) < 16
    got = map_scores(maps, test)["metrics"]["sharpness_fg"]
    assert got == pytest.approx(float(M.sharpness_in(maps, cells).mean()))


# ------------------------------------------------------------------ 3D and removal masks
def test_ap_and_iou_3d_match_references():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(5)
    maps = torch.rand(2, 1, 2, 3, 3, generator=g)
    masks = (torch.rand(2, 1, 4, 6, 6, generator=g) > 0.6).float()
    up = M.resize_mass(maps.double(), (4, 6, 6))
    torch.testing.assert_close(up.sum((1, 2, 3, 4)), maps.double().sum((1, 2, 3, 4)))
    ap = M.average_precision(maps, masks)
    for i in range(2):
        ref = average_precision_score(masks[i].flatten().numpy(), up[i].flatten().numpy())
        assert ap[i].item() == pytest.approx(ref, abs=1e-12)
        thr = np.quantile(up[i].flatten().numpy(), 0.9)
        pred = up[i].flatten().numpy() >= thr
        m = masks[i].flatten().numpy() > 0.5
        assert M.iou_at_quantile(maps, masks, 0.9)[i].item() == pytest.approx((pred & m).sum() / (pred | m).sum())


@pytest.mark.parametrize("order", ["least_first", "most_first"])
def test_removal_masks_3d(order):
    from dualattn.evaluate.perturbation import removal_masks

    g = torch.Generator().manual_seed(6)
    maps = torch.rand(2, 1, 3, 4, 5, generator=g)
    fr = (0.0, 0.3, 1.0)
    rm = removal_masks(maps, (3, 4, 5), fr, order=order)
    assert rm.shape == (3, 2, 1, 3, 4, 5)
    for j, f in enumerate(fr):
        k = int(round(f * 60))
        for i in range(2):
            assert int(rm[j, i].sum()) == k
            if 0 < k < 60:
                removed = maps[i][rm[j, i]]
                kept = maps[i][~rm[j, i]]
                if order == "least_first":
                    assert removed.max() <= kept.min()
                else:
                    assert removed.min() >= kept.max()


def test_argument_errors_name_the_value():
    with pytest.raises(ValueError, match="most"):
        perturbation_predictions(lambda x: x, torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), order="most")
    with pytest.raises(ValueError, match="sparkle"):
        make_perturbation("sparkle")
    with pytest.raises(ValueError, match="sparkle"):
        make_fill("sparkle")
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        M.resize_mass(torch.rand(1, 1, 4, 4), (1, 2, 3))
    with pytest.raises(ValueError, match="batch"):
        M.iou_at_quantile(torch.rand(2, 1, 4, 4), torch.ones(3, 1, 4, 4), 0.9)


def test_row_quantile_equals_torch_quantile():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 101, dtype=torch.float64, generator=g)
    x[1, :50] = 0.5  # ties
    for q in (0.0, 0.9, 0.95, 0.975, 0.999):
        torch.testing.assert_close(M._row_quantile(x, q), torch.quantile(x, q, dim=1, keepdim=True))


# --------------------------------------------------------------------------- activation precision


@pytest.mark.parametrize(
    "cells, q, expected",
    [
        # 4 of the 5 top pixels (value 1) inside the 2x2 mask
        ([(0, 0), (0, 1), (1, 0), (1, 1), (3, 3)], 0.75, 0.8),
        # the top pixels exactly the mask
        ([(0, 0), (0, 1), (1, 0), (1, 1)], 0.75, 1.0),
        # every highlighted pixel outside the mask
        ([(3, 3), (3, 2)], 0.875, 0.0),
    ],
)
def test_activation_precision_hand_cases(cells, q, expected):
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1
    amap = torch.zeros(1, 1, 4, 4)
    for r, c in cells:
        amap[0, 0, r, c] = 1
    assert M.activation_precision(amap, mask, q).item() == pytest.approx(expected, abs=1e-12)


def test_activation_precision_matches_a_naive_loop_2d_and_3d():
    gen = torch.Generator().manual_seed(0)
    for shape, grid in (((3, 1, 16, 16), (4, 4)), ((2, 1, 8, 8, 8), (4, 4, 4))):
        masks = (torch.rand(shape, generator=gen) > 0.7).float()
        maps = torch.rand((shape[0], 1, *grid), generator=gen)
        got = M.activation_precision(maps, masks, 0.9)
        up = M.resize_mass(maps.double(), shape[2:])
        for i in range(shape[0]):
            v = up[i].flatten().numpy()
            thr = np.quantile(v, 0.9)
            top = v >= thr
            want = (top & (masks[i].flatten().numpy() > 0.5)).sum() / top.sum()
            assert got[i].item() == pytest.approx(want, abs=1e-9)
    empty = M.activation_precision(torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 8, 8), 0.9)
    assert math.isnan(empty.item())  # the NaN policy of the segmentation metrics
    with pytest.raises(ValueError, match="q must be"):
        M.activation_precision(torch.rand(1, 1, 4, 4), torch.ones(1, 1, 4, 4), 1.0)
