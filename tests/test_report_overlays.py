"""Honest overlays: the fixed × uniform colour scale (a flat map looks flat), the sharpness line and the
near-uniform warning drawn on the figure, class names in the example grid."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dualattn.report import figures


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.texts)


def _map_image(fig):
    """The heatmap layer of an overlay (the second image of the first axes)."""
    return fig.axes[0].get_images()[1]


def test_times_uniform_hand_computed():
    np.testing.assert_allclose(figures.times_uniform(np.full((3, 5), 1 / 15)), 1.0)
    np.testing.assert_allclose(figures.times_uniform(np.array([[0.5, 0.25], [0.25, 0.0]])), [[2, 1], [1, 0]])
    # the ratio does not depend on the total mass (a slice of a volume's map) or on the grid size
    np.testing.assert_allclose(figures.times_uniform(np.full((64, 64), 7.0)), 1.0)
    assert figures.times_uniform(np.array([[1.0, -0.5]])) is None  # signed: no density
    assert figures.times_uniform(np.zeros((2, 2))) is None


@pytest.mark.parametrize("seed", range(4))
def test_map_sharpness_equals_the_evaluation_metric(seed):
    import torch

    from dualattn.evaluate.metrics import sharpness

    rng = np.random.default_rng(seed)
    maps = [rng.random((8, 8)) ** (1 + 5 * seed), rng.standard_normal((4, 6)), np.zeros((3, 3)), np.eye(5)]
    for m in maps:
        ref = float(sharpness(torch.from_numpy(m)[None])[0])
        assert figures.map_sharpness(m) == pytest.approx(ref, rel=1e-12)


def test_near_uniform_threshold_is_the_evaluation_warning_threshold():
    from dualattn.evaluate.checks import NEAR_UNIFORM

    assert figures.NEAR_UNIFORM == NEAR_UNIFORM
    assert figures.near_uniform_warning(0.97) == ("near-uniform map (sharpness 0.97 > 0.9): it singles out "
                                                  "no region")
    assert figures.near_uniform_warning(0.9) is None and figures.near_uniform_warning(None) is None


def test_a_flat_map_is_one_colour_and_a_peaked_map_is_not():
    """The issue's case: a map within +-3 % of uniform was stretched from black to yellow. On the fixed scale
    it spans about 1 % of the colour range; the old min-max scale spans all of it."""
    rng = np.random.default_rng(0)
    flat = np.full((16, 16), 1 / 256) * (1 + 0.03 * np.clip(rng.standard_normal((16, 16)), -1, 1))
    flat /= flat.sum()
    image = np.zeros((64, 64))
    fig = figures.overlay_figure(image, flat, colorbar=True, alpha=1.0)
    layer = _map_image(fig)
    assert (layer.norm.vmin, layer.norm.vmax) == figures.UNIFORM_SCALE
    shown = np.asarray(layer.get_array())
    np.testing.assert_allclose(shown, 1.0, atol=0.035)  # ~1.0 x uniform everywhere
    span = np.log(shown.max() / shown.min()) / np.log(figures.UNIFORM_SCALE[1] / figures.UNIFORM_SCALE[0])
    assert span < 0.015
    # the PNG: the image region is one colour (up to a few levels), while min-max paints it in every colour
    rgb = _decode_png(figures.overlay_png(image, flat, alpha=1.0, size_inches=2.0))
    rgb_old = _decode_png(figures.overlay_png(image, flat, alpha=1.0, size_inches=2.0, scale="minmax"))
    h, w = rgb.shape[:2]
    core = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    assert np.ptp(rgb[core].reshape(-1, 3), axis=0).max() < 25
    assert np.ptp(rgb_old[core].reshape(-1, 3), axis=0).max() > 150
    # a peaked map reaches the top of the scale where it peaks and stays dark elsewhere
    peaked = np.full((16, 16), 0.5 / 255)
    peaked[3, 12] = 0.5
    shown = np.asarray(_map_image(figures.overlay_figure(image, peaked, colorbar=True)).get_array())
    assert shown.max() == pytest.approx(figures.UNIFORM_SCALE[1]) and np.median(shown) < 1.0


def test_colour_bar_is_labelled_in_times_uniform_with_clipped_ends():
    fig = figures.overlay_figure(np.zeros((32, 32)), np.full((4, 4), 1 / 16), colorbar=True)
    bar_ax = fig.axes[1]
    labels = [t.get_text() for t in bar_ax.get_yticklabels()]
    assert labels == ["≤1/8", "1/4", "1/2", "1", "2", "4", "8", "16", "≥32"]
    assert "× uniform" in bar_ax.get_ylabel()


def test_sharpness_line_and_near_uniform_warning_are_drawn():
    image = np.zeros((32, 32))
    flat = np.full((8, 8), 1 / 64)
    text = _texts(figures.overlay_figure(image, flat, colorbar=True, title="t"))
    assert "sharpness 1.00 (exp(entropy)/N" in text
    assert "⚠ near-uniform map (sharpness 1.00 > 0.9): it singles out no region" in text
    peaked = np.zeros((8, 8))
    peaked[2, 2] = 1.0
    text = _texts(figures.overlay_figure(image, peaked, colorbar=True))
    assert "sharpness 0.02" in text and "near-uniform" not in text
    # a sharpness given by the caller (the model grid's) wins over the one of the displayed map
    text = _texts(figures.overlay_figure(image, peaked, colorbar=True, sharpness=0.95))
    assert "sharpness 0.95" in text and "near-uniform map (sharpness 0.95 > 0.9)" in text


def test_signed_maps_fall_back_to_their_own_range_and_say_so():
    fig = figures.overlay_figure(np.zeros((16, 16)), np.array([[1.0, -1.0], [0.5, 0.0]]), colorbar=True)
    assert "not a density" in fig.axes[1].get_ylabel()
    with pytest.raises(ValueError, match="scale must be one of"):
        figures.overlay_png(np.zeros((4, 4)), np.ones((2, 2)), scale="log")


def test_marker_is_drawn_where_asked():
    fig = figures.overlay_figure(np.zeros((20, 30)), np.ones((4, 4)) / 16, marker=(5, 7))
    xs = {tuple(line.get_xydata()[0]) for line in fig.axes[0].get_lines()}
    assert xs == {(7.0, 5.0)}


def test_example_grid_shares_one_scale_and_names_the_classes():
    rng = np.random.default_rng(1)
    flat = np.full((4, 4), 1 / 16)
    ex = [{"image": rng.random((1, 16, 16)), "maps": {"exact": flat, "gradcam": rng.random((4, 4))}, "label": 1,
           "pred": 0, "id": "case7"}]
    (fig,) = figures.example_grid_figures(ex, class_names=["healthy", "tumor"])
    assert fig.axes[0].get_ylabel() == "case7\ny=tumor\nŷ=healthy"
    layers = [a.get_images()[1] for a in fig.axes[1:3]]
    assert {(im.norm.vmin, im.norm.vmax) for im in layers} == {figures.UNIFORM_SCALE}
    np.testing.assert_allclose(np.asarray(layers[0].get_array()), 1.0)
    assert [t.get_text() for t in fig.axes[-1].get_yticklabels()][3] == "1"  # the colour bar
    (old,) = figures.example_grid_figures(ex, scale="minmax")
    assert old.axes[0].get_ylabel() == "case7\ny=1\nŷ=0" and len(old.axes) == 3  # no colour bar
