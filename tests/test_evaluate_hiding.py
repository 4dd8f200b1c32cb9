"""The hiding test (dualattn.evaluate.hiding) on hand-computed tiny cases."""

from __future__ import annotations

import math

import pytest
import torch

from dualattn.evaluate.hiding import (
    cell_index,
    foreground,
    hiding_metric_names,
    hiding_test,
    kept_pixels,
    match_partners,
)


def test_cell_index_blocks_and_uneven_grids():
    assert cell_index((2, 2), (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert cell_index((2,), (3,)).tolist() == [0, 0, 1]  # floor(i * 2 / 3)
    assert cell_index((1, 2, 2), (1, 2, 2)).reshape(-1).tolist() == [0, 1, 2, 3]


def test_kept_pixels_counts_only_foreground_cells_and_breaks_ties_by_index():
    maps = torch.tensor([[[[9.0, 1.0], [1.0, 1.0]]]])
    fg = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    fg[..., :, 2:] = True  # right half: cells 1 and 3 are foreground, 0 and 2 are not
    kept = kept_pixels(maps, fg, 50.0)[0, 0]
    # candidates: cells 1 and 3 (value 1, 1): keep ceil(0.5 * 2) = 1, the tie goes to cell 1 (lower index);
    # cell 0's high value does not count (it is background)
    assert kept.int().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    # at least one cell, and every cell when nothing is foreground
    assert kept_pixels(maps, fg, 1.0)[0, 0].sum() == 4
    none = kept_pixels(maps, torch.zeros_like(fg), 25.0)[0, 0]
    assert none[:2, :2].all() and none.sum() == 4
    with pytest.raises(ValueError, match="percentage"):
        kept_pixels(maps, fg, 0.0)


def test_foreground_is_per_image_and_channel():
    x = torch.zeros(2, 2, 4, 4)
    x[0, 0, 1, 1] = 5.0  # image 0: one bright pixel in channel 0
    x[1, 1, 2:, 2:] = 1.0  # image 1: a bright square in channel 1
    fg = foreground(x)
    assert fg.shape == (2, 1, 4, 4)
    assert fg[0, 0].sum() == 1 and bool(fg[0, 0, 1, 1])
    assert fg[1, 0].sum() == 4 and bool(fg[1, 0, 2:, 2:].all())


def test_partners_are_healthy_other_patients_with_the_most_overlap():
    fg = torch.zeros(5, 1, 2, 4, dtype=torch.bool)
    fg[0, 0, :, :2] = True           # lesion image, left foreground
    fg[1, 0, :, :2] = True           # healthy, same patient as 0: excluded
    fg[2, 0, :, :3] = True           # healthy, IoU with 0 = 4/6
    fg[3, 0, :, 2:] = True           # healthy, no overlap
    fg[4, 0, :, :2] = True           # lesion image of another patient: not a partner
    labels = [1, 0, 0, 0, 1]
    groups = ["a", "a", "b", "c", "d"]
    p = match_partners(fg, labels, groups, n_partners=3)
    assert p[0].tolist() == [2, 3, -1]
    assert p[1].tolist() == [2, 3, -1]  # a healthy image's partners: healthy images of other patients
    assert p[2].tolist() == [1, 3, -1]


def _quadrant_model(threshold: float = 2.0):
    """logit of class 1 = sum of channel 0 over the top-left 2x2 pixels - threshold."""
    def model(x):
        s = x[:, 0, :2, :2].sum((1, 2))
        return torch.stack([torch.zeros_like(s), s - threshold], dim=1)
    return model


def test_hiding_by_hand_a_map_on_the_evidence_flips_nothing_one_off_it_flips_lesions():
    n = 4
    x = torch.zeros(n, 1, 4, 4)
    x[0, 0, :2, :2] = 1.0  # lesion images 0, 1 carry the evidence in the top-left quadrant (sum 4 > 2)
    x[1, 0, :2, :2] = 1.0
    x[:, 0, 2:, 2:] += 0.5  # every image has some foreground bottom-right
    labels = torch.tensor([1, 1, 0, 0])
    fg = torch.ones(n, 1, 4, 4, dtype=torch.bool)
    partners = torch.tensor([[2, 3], [2, 3], [3, -1], [2, -1]])
    on = torch.tensor([[4.0, 1.0], [1.0, 0.5]]).expand(n, 1, 2, 2)   # top-left cell first
    off = torch.tensor([[0.0, 1.0], [1.0, 4.0]]).expand(n, 1, 2, 2)  # bottom-right cell first
    got_on = hiding_test(_quadrant_model(), x, on, labels, partners=partners, fg=fg, ks=(25,))
    got_off = hiding_test(_quadrant_model(), x, off, labels, partners=partners, fg=fg, ks=(25,))
    # keeping the top-left quadrant keeps the evidence: no flip anywhere
    assert got_on["hidden_swap_flips@25"] == [0.0, 0.0, 0.0, 0.0]
    # ... and swapping it with a healthy partner's (zeros) removes it: both lesion images flip
    assert got_on["kept_swap_flips@25"][:2] == [100.0, 100.0]
    assert all(math.isnan(v) for v in got_on["kept_swap_flips@25"][2:])  # lesion images only
    # keeping the bottom-right quadrant hides the evidence: lesion images flip with every partner
    assert got_off["hidden_swap_flips@25"] == [100.0, 100.0, 0.0, 0.0]
    assert got_off["hidden_swap_flips_lesion@25"][:2] == [100.0, 100.0]
    assert got_off["hidden_swap_flips_healthy@25"][2:] == [0.0, 0.0]
    assert math.isnan(got_off["hidden_swap_flips_healthy@25"][0])
    # Δ log p(predicted class): lesion logits (0, 2) -> (0, -2)
    want = math.log(1 / (1 + math.exp(2))) - math.log(1 / (1 + math.exp(-2)))
    assert got_off["hidden_swap_dlogp@25"][0] == pytest.approx(want)
    assert got_on["hidden_swap_dlogp@25"][2] == pytest.approx(0.0)
    assert set(got_on) == set(hiding_metric_names((25,), ("partner",)))


def test_an_image_without_partner_gets_nan_and_the_road_fill_needs_none():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, :2, :2] = 1.0
    labels = torch.tensor([1, 1])
    on = torch.tensor([[4.0, 1.0], [1.0, 0.5]]).expand(2, 1, 2, 2)
    got = hiding_test(_quadrant_model(), x, on, labels, partners=torch.tensor([[-1], [-1]]),
                      fg=torch.ones(2, 1, 4, 4, dtype=torch.bool), ks=(25,))
    assert all(math.isnan(v) for v in got["hidden_swap_flips@25"])
    road = hiding_test(_quadrant_model(), x, on, labels, fg=torch.ones(2, 1, 4, 4, dtype=torch.bool), ks=(25,),
                       fills=("road",))
    # the kept top-left quadrant is never imputed: no flip; imputing it from the zeros around it flips image 0
    assert road["hidden_road_flips@25"] == [0.0, 0.0]
    assert road["kept_road_flips@25"][0] == 100.0
    with pytest.raises(ValueError, match="partners"):
        hiding_test(_quadrant_model(), x, on, labels, ks=(25,))


def test_swaps_are_made_before_each_models_preprocessing():
    """With ``preprocess`` the swapped pixels are raw: a model that z-scores the whole image reads the hidden
    pixels through its normalization, one that normalizes only what it keeps does not."""
    n = 2
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, :2, :2] = 1.0
    x[1, 0, 2:, 2:] = 9.0  # the partner's hidden region is bright
    labels = torch.tensor([1, 0])
    keep_map = torch.tensor([[4.0, 1.0], [1.0, 0.5]]).expand(n, 1, 2, 2)
    fg = torch.ones(n, 1, 4, 4, dtype=torch.bool)

    def zscore(b):
        flat = b.flatten(1)
        return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).view_as(b)

    model = _quadrant_model(threshold=1.5)
    seen = hiding_test(model, x, keep_map, labels, partners=torch.tensor([[1], [-1]]), fg=fg, ks=(25,),
                       preprocess=zscore)
    blind = hiding_test(model, x, keep_map, labels, partners=torch.tensor([[1], [-1]]), fg=fg, ks=(25,),
                        preprocess=lambda b: b)
    assert blind["hidden_swap_flips@25"][0] == 0.0  # the kept quadrant is unchanged and the model reads only it
    assert seen["hidden_swap_flips@25"][0] == 100.0  # the bright hidden region shifts the z-score of the kept one
