"""Select, then predict with a cell-local selector and a threshold mask (issue 22, design 1, second form).

``selector="patch"`` is the U-Net encoder with no 3x3 convolution (1x1 convolutions and 2x max-pools): a cell of
every gated grid reads exactly its own pixels. With the training split's statistics in front of it
(``selector_norm="dataset"``) and ``mask_rule="threshold"`` (a finest cell is shown iff its own potential exceeds
the threshold), the mask of a hiding-test composite is the union of the two images' own masks, cell by cell: a
partner that shows no cell outside the kept ones cannot change a single output bit. Proven here in 2-D and 3-D,
float64, for random weights, statistics, images, partners and kept sets; then the calibration that bounds how often
a healthy partner shows a cell, the empty-mask rule, the options' checks and training.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualattn.models import create_model
from dualattn.models.local import ReceptiveField
from dualattn.models.select_predict import EMPTY_CONFIDENCE, SelectPredictClassifier, cells_to_pixels
from dualattn.train import fit, load_config
from dualattn.train.datamodule import TrainDataModule, build_datasets
from dualattn.train.select_predict import threshold_mil_loss
from dualattn.weights import load_model
from _train_helpers import write_blobs

VARIANT = "select_predict"
SIZES = {2: 32, 3: 16}
THRESHOLD = {"selector": "patch", "selector_norm": "dataset", "mask_rule": "threshold", "predictor_norm": "dataset"}
HYPOTHESIS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


_MODELS: dict[tuple, SelectPredictClassifier] = {}


@torch.no_grad()
def _randomize(m: SelectPredictClassifier) -> None:
    """BatchNorm statistics that are not the identity and gate weights far from their (near-constant) start, so
    that potentials differ from cell to cell and nothing is trivially local."""
    gen = torch.Generator().manual_seed(11)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.3, 0.3, generator=gen)
            mod.running_var.uniform_(0.5, 2.0, generator=gen)
    for p in m.gates.parameters():
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _patch(spatial_dims: int = 2, *, budget: float = 1.0, seed: int = 0, downsample: str = "max"
           ) -> SelectPredictClassifier:
    """A patch/threshold model in float64 with BatchNorm statistics and input statistics that are not the identity
    (so nothing is trivially local) and the threshold at the median of its potentials on random images."""
    key = (spatial_dims, budget, seed, downsample)
    if key not in _MODELS:
        torch.manual_seed(seed)
        m = create_model("unet_encoder", variant=VARIANT, in_channels=2, spatial_dims=spatial_dims, features=4,
                         budget=budget, selector_downsample=downsample, **THRESHOLD).eval().double()
        _randomize(m)
        size = (SIZES[spatial_dims],) * spatial_dims
        m.set_input_statistics([torch.randn(4, 2, *size, dtype=torch.float64) * 2 + 3])
        with torch.no_grad():
            _, phis = m._pass_one(m.selector_input(torch.randn(8, 2, *size, dtype=torch.float64) + 3))
            m.threshold.fill_(float(phis["block3"].median()))
        _MODELS[key] = m
    return _MODELS[key]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("downsample", ["max", "conv"])
def test_patch_selector_cells_read_exactly_their_own_pixels(spatial_dims, downsample):
    """Computed from the layers (``receptive_fields``) and checked by a change: block3 cells see their 4 px,
    block4 cells their 8 px, with max-pools or 2x2 strided convolutions between the stages."""
    m = _patch(spatial_dims, downsample=downsample)
    assert m.backbone.downsample == downsample
    rfs = m.backbone.receptive_fields()
    assert rfs["block3"] == ReceptiveField(size=4, stride=4, offset=0)
    assert rfs["block4"] == ReceptiveField(size=8, stride=8, offset=0)
    size = (SIZES[spatial_dims],) * spatial_dims
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 3
    x2 = x.clone()  # every pixel of block3 cell (1, ...), inside block4 cell (0, ...), changed
    x2[(0, 1, *(slice(4, 8),) * spatial_dims)] += 20.0
    with torch.no_grad():
        _, ref = m._pass_one(m.selector_input(x))
        _, got = m._pass_one(m.selector_input(x2))
    for block, cell in (("block3", (1,) * spatial_dims), ("block4", (0,) * spatial_dims)):
        moved = (got[block] - ref[block])[0] != 0
        if block == "block3":
            assert moved[cell]  # the changed cell moves ...
        moved[cell] = False
        assert not bool(moved.any()), block  # ... and no other potential, not by one bit


@pytest.mark.parametrize("spatial_dims", [2, 3])
@HYPOTHESIS
@given(data=st.data())
def test_a_composites_mask_is_the_union_of_its_parts_and_an_unchanged_mask_leaves_every_bit(spatial_dims, data):
    """The hiding test's composite (``x`` on the kept cells K, the partner ``p`` elsewhere) shows
    ``M(x) | (M(p) & ~K)`` whenever K holds ``M(x)``; when the partner adds no cell, the logits are ``x``'s, bit for
    bit, whatever the partner's pixels (NaN included)."""
    m = _patch(spatial_dims)
    size = (SIZES[spatial_dims],) * spatial_dims
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, *size, generator=gen, dtype=torch.float64) * 2 + 3
    p = torch.randn(1, 2, *size, generator=gen, dtype=torch.float64) * data.draw(st.sampled_from([0.5, 2.0, 8.0])) + 3
    with torch.no_grad():
        sx = m.select(x)
        assert float(sx.potentials["block3"].std()) > 1e-3  # cells differ: the rule is not trivially met
        mx = sx.mask["block3"]
        mp = m.select(p).mask["block3"]
        extra = torch.rand(mx.shape, generator=gen) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))
        kept = mx | extra
        comp = torch.where(cells_to_pixels(kept, size)[:, None], x, p)
        sel = m.select(comp)
        assert torch.equal(sel.mask["block3"], mx | (mp & ~kept))
        if not bool((mp & ~kept).any()):
            assert torch.equal(m(comp), m(x))
        # extreme hidden values obey the same rule; NaN shows no cell (no comparison with NaN holds), so hidden NaN
        # pixels leave every output bit
        wild = torch.full_like(p, data.draw(st.sampled_from([-1e6, 50.0, math.nan])))
        mw = m.select(wild).mask["block3"]
        comp2 = torch.where(cells_to_pixels(kept, size)[:, None], x, wild)
        assert torch.equal(m.select(comp2).mask["block3"], mx | (mw & ~kept))
        if not bool((mw & ~kept).any()):
            assert torch.equal(m(comp2), m(x))
    nan = torch.where(cells_to_pixels(kept, size)[:, None], x, torch.full_like(x, math.nan))
    assert torch.equal(m(nan), m(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_partner_that_shows_nothing_cannot_change_a_bit_though_most_pixels_are_its(spatial_dims):
    """The non-trivial case of the union rule: the threshold calibrated so that the partners show no cell, the kept
    cells exactly the image's mask (a few cells), every other pixel the partner's."""
    torch.manual_seed(7)
    m = create_model("unet_encoder", variant=VARIANT, in_channels=2, spatial_dims=spatial_dims, features=4,
                     **THRESHOLD).eval().double()
    size = (SIZES[spatial_dims],) * spatial_dims
    gen = torch.Generator().manual_seed(8)
    _randomize(m)
    m.set_input_statistics([torch.randn(4, 2, *size, generator=gen, dtype=torch.float64) + 3])
    pool = torch.randn(48, 2, *size, generator=gen, dtype=torch.float64) + 3
    with torch.no_grad():
        _, phis = m._pass_one(m.selector_input(pool))
        order = phis["block3"].flatten(1).amax(1).argsort()
        partners, rest = pool[order[:16]], pool[order[16:]]  # the 16 of lowest largest potential: the partners
        m.calibrate_threshold([(partners, torch.zeros(16, dtype=torch.long))], false_positive_rate=0.0)
        assert not bool(m.select(partners).mask["block3"].any())
        share = m.select(rest).mask["block3"].flatten(1).double().mean(1)
        x = rest[(share > 0) & (share < 0.5)][:16]
        assert x.shape[0] >= 4
        mx = m.select(x).mask["block3"]
        comp = torch.where(cells_to_pixels(mx, size)[:, None], x, partners[: x.shape[0]])
        assert torch.equal(m.select(comp).mask["block3"], mx)
        assert torch.equal(m(comp), m(x))


def test_the_budget_caps_the_threshold_mask_at_the_highest_potentials():
    m = _patch(2, budget=0.05)
    x = torch.randn(3, 2, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3 + 3
    with torch.no_grad():
        sel = m.select(x)
    phi = sel.potentials["block3"].flatten(1)
    cells = sel.mask["block3"].flatten(1)
    cap = math.ceil(0.05 * 64)  # of the 8 x 8 cells
    for b in range(3):
        above = phi[b] > m.threshold
        assert int(cells[b].sum()) == min(cap, int(above.sum()))
        assert bool(above[cells[b]].all())
        if bool(cells[b].any()) and bool((above & ~cells[b]).any()):
            assert float(phi[b][cells[b]].min()) >= float(phi[b][above & ~cells[b]].max())
    assert torch.equal(sel.mask["block4"], torch.nn.functional.max_pool2d(
        sel.mask["block3"][:, None].double(), 2)[:, 0] > 0.5)


def test_an_empty_mask_calls_the_empty_class_at_a_fixed_confidence():
    m = _patch(2)
    x = torch.randn(2, 2, 32, 32, dtype=torch.float64) + 3
    with torch.no_grad():
        m.threshold.fill_(1e9)
        try:
            out = m.forward_with_attention(x)
        finally:
            m.threshold.fill_(0.0)
            _MODELS.clear()
    assert not bool(out.mask["block3"].any())
    torch.testing.assert_close(out.logits.softmax(1)[:, 0], torch.full((2,), EMPTY_CONFIDENCE, dtype=torch.float64))
    three = create_model("unet_encoder", variant=VARIANT, in_channels=1, num_classes=3, features=2, empty_class=2,
                         **THRESHOLD)
    torch.testing.assert_close(three.empty_logits().softmax(0), torch.tensor([0.005, 0.005, 0.99]))
    with pytest.raises(ValueError, match="empty_class must be a class index"):
        create_model("unet_encoder", variant=VARIANT, features=2, empty_class=2, **THRESHOLD)


def test_dataset_normalized_predictor_input_never_reads_a_hidden_pixel():
    m = _patch(2)
    x = torch.randn(2, 2, 32, 32, dtype=torch.float64) + 3
    vis = torch.rand(2, 1, 32, 32) < 0.3
    y = torch.where(vis, x, torch.full_like(x, math.nan))
    a, b = m.predictor_input(x, vis), m.predictor_input(y, vis)
    assert torch.equal(a, b)
    shift, scale = m.input_shift.view(1, 2, 1, 1), m.input_scale.view(1, 2, 1, 1)
    torch.testing.assert_close(a[:, :2], torch.where(vis, (x - shift) / scale, torch.zeros_like(x)))
    assert torch.equal(a[:, 2:], vis.double())


def test_calibration_sets_the_healthy_false_positive_rate():
    m = _patch(2)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 2, 32, 32, generator=gen, dtype=torch.float64) * 2 + 3
    y = torch.arange(40) % 2
    with torch.no_grad():
        _, phis = m._pass_one(m.selector_input(x))
    tops = phis["block3"].flatten(1).amax(1)[y == 0]  # 20 healthy images
    try:
        value = m.calibrate_threshold([(x[:25], y[:25]), (x[25:], y[25:])], false_positive_rate=0.1)
        assert value == float(tops.sort().values[18])  # the 0.9 quantile, next value up: 2 of 20 above it
        with torch.no_grad():
            shown = m.select(x[y == 0]).mask["block3"].flatten(1).any(1)
        assert int(shown.sum()) == 1  # strictly above the 19th of 20: the largest alone
        assert m.calibrate_threshold([(x, y)], false_positive_rate=0.0) == float(tops.max())
        assert not bool(m.select(x[y == 0]).mask["block3"].any())
    finally:
        _MODELS.clear()
    with pytest.raises(ValueError, match="needs images of class 0"):
        m.calibrate_threshold([(x, torch.ones(40, dtype=torch.long))], false_positive_rate=0.1)
    with pytest.raises(ValueError, match="must be below 1"):
        m.calibrate_threshold([(x, y)], false_positive_rate=1.0)
    budget = create_model("unet_encoder", variant=VARIANT, features=2)
    with pytest.raises(ValueError, match="calibrate_threshold is for mask_rule='threshold'"):
        budget.calibrate_threshold([(x, y)], false_positive_rate=0.1)


def test_options_are_checked_with_messages_that_say_what_to_set():
    kw = {"variant": VARIANT, "features": 2}
    with pytest.raises(ValueError, match="needs selector_norm='dataset'"):
        create_model("unet_encoder", **kw, selector="patch", mask_rule="threshold")
    with pytest.raises(ValueError, match="needs gate_bias=True"):
        create_model("unet_encoder", **kw, **THRESHOLD, gate_bias=False)
    with pytest.raises(ValueError, match="mask_rule must be one of budget, threshold"):
        create_model("unet_encoder", **kw, mask_rule="top")
    with pytest.raises(ValueError, match="predictor_norm must be one of visible, dataset"):
        create_model("unet_encoder", **kw, predictor_norm="image")
    with pytest.raises(ValueError, match="has no 3x3 stage"):
        create_model("unet_encoder", **kw, selector="patch", conv3_stages=2)
    with pytest.raises(ValueError, match="downsample must be one of max, conv"):
        create_model("unet_encoder", **kw, **THRESHOLD, selector_downsample="avg")
    with pytest.raises(ValueError, match="selector_downsample is an option of the bounded"):
        create_model("unet_encoder", **kw, selector_downsample="conv")
    with pytest.raises(ValueError, match="selector_features sets the width"):
        create_model("unet_encoder", **kw, selector_features=4)
    wide = create_model("unet_encoder", **kw, **THRESHOLD, selector_features=3)
    assert wide.backbone.channels["block3"] == 12 and wide.predictor.backbone.channels["block3"] == 8


def test_mil_loss_by_hand():
    phi = torch.tensor([[[-2.0, 0.5]], [[1.0, -3.0]]])
    y = torch.tensor([1, 0])
    # lesion image: softplus(-0.5); healthy image: softplus(1.0)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert abs(float(threshold_mil_loss(phi, y)) - expected) < 1e-6
    assert abs(float(threshold_mil_loss(phi, torch.tensor([1, 1]), empty_class=1))
               - (math.log1p(math.exp(0.5)) + math.log1p(math.exp(1.0))) / 2) < 1e-6


def test_training_calibrates_the_threshold_and_saves_it(tmp_path):
    data = write_blobs(tmp_path / "d", n=32)
    cfg = load_config(overrides=[
        f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=8", f"variant={VARIANT}", "max_epochs=2",
        "select_predict.predictor_epochs=1", "select_predict.healthy_fpr=0.25", "select_predict.area_weight=0.5",
        "model_kwargs.features=2", *(f"model_kwargs.{k}={v}" for k, v in THRESHOLD.items())])
    run = fit(cfg, out=tmp_path / "r")
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["select_predict"]["val"]["evalx_gap"])
    model = load_model(run / "last.safetensors").eval()
    assert model.mask_rule == "threshold" and bool(model.input_stats_set)
    saved = float(model.threshold)
    dm = TrainDataModule(build_datasets(cfg), config=cfg)
    pairs = dm.calibration_batches(512, labels=True)
    images = dm.calibration_batches(512)
    assert all(torch.equal(a, b) for (a, _), b in zip(pairs, images))
    assert sum(int(y.numel()) for _, y in pairs) == len(dm.datasets["train"])
    # the saved threshold is the calibration of the saved weights on the training split's healthy images
    assert model.calibrate_threshold(pairs, false_positive_rate=0.25) == pytest.approx(saved, abs=1e-6)
    # `dualattn explain` on one of the scans says what the form showed
    from dualattn.pipelines.scan import explain_scan

    res = explain_scan(sorted((data / "images").iterdir())[0], run=run)
    assert res.method == VARIANT and any(n.startswith("threshold form: ") for n in res.notes)


def test_explaining_a_scan_says_what_the_threshold_form_showed(tmp_path):
    from dualattn.pipelines.scan.run import _threshold_form_note

    m = _patch(2).float()
    x = torch.randn(1, 2, 32, 32) + 3
    try:
        with torch.no_grad():
            m.threshold.fill_(1e9)
            assert "no cell passed the threshold, so the model calls 'healthy'" in _threshold_form_note(m, x, "healthy")
            m.threshold.fill_(-1e9)
            assert _threshold_form_note(m, x, "tumor").startswith("threshold form: 64 of 64 cells shown")
    finally:
        _MODELS.clear()
    assert _threshold_form_note(create_model("unet_encoder", variant=VARIANT, features=2), x[:, :1], "x") is None
