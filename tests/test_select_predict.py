"""Select, then predict (issue 22, design 1): the guarantee proven, the mask's consistency and budget, 2-D and 3-D,
save / load, the selector's warm start, the explain methods, the data pipeline, and training (phases, resume, the
EVAL-X report).

The guarantee: with the mask fixed, the logits are a function of the visible pixels alone, bit for bit, through the
deployed preprocessing (the data pipeline's normalization for this variant, then the model); with the mask
recomputed, the same holds for every change of hidden pixels that leaves the mask unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualattn.data import FolderDataset, FolderWriter
from dualattn.data.transforms import normalize as data_normalize
from dualattn.models import create_model
from dualattn.models.select_predict import (
    SelectPredictClassifier,
    cells_to_pixels,
    coarsen_mask,
    foreground_cells,
    masked_zscore,
    top_cells,
)
from dualattn.train import TrainConfig, fit, load_config
from dualattn.train.recipes import data_normalization
from dualattn.weights import load_model, save_model
from _train_helpers import write_blobs

VARIANT = "select_predict"
#: the deployed preprocessing of this variant (what ``dualattn train`` gives FolderDataset, recorded in config.yaml)
DEPLOYED = data_normalization(TrainConfig(variant=VARIANT))
SIZES = {2: 32, 3: 16}
HYPOTHESIS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _model(spatial_dims: int = 2, *, seed: int = 0, in_channels: int = 2, **kw) -> SelectPredictClassifier:
    torch.manual_seed(seed)
    kw = {"features": 2, "budget": 0.2, **kw}
    return create_model("unet_encoder", variant=VARIANT, in_channels=in_channels, spatial_dims=spatial_dims,
                        **kw).eval()


_MODELS: dict[tuple, SelectPredictClassifier] = {}


def _cached(spatial_dims: int, **kw) -> SelectPredictClassifier:
    key = (spatial_dims, tuple(sorted(kw.items())))
    if key not in _MODELS:
        _MODELS[key] = _model(spatial_dims, **kw)
    return _MODELS[key]


def _image(spatial_dims: int, seed: int, *, channels: int = 2, background: bool = True) -> torch.Tensor:
    """A raw scan: positive intensities on an ellipse-ish foreground, zero background (or noise everywhere)."""
    g = torch.Generator().manual_seed(seed)
    s = SIZES[spatial_dims]
    x = torch.rand((1, channels, *([s] * spatial_dims)), generator=g) * 300 + 50
    if background:
        axes = torch.meshgrid(*[torch.linspace(-1, 1, s)] * spatial_dims, indexing="ij")
        r = sum(a**2 for a in axes)
        x = x * (r < 0.7 + 0.2 * float(torch.rand((), generator=g)))
    return x


def _deployed(x: torch.Tensor) -> torch.Tensor:
    """The per-sample preprocessing FolderDataset applies for this variant."""
    return torch.stack([data_normalize(img, method=DEPLOYED) for img in x])


def _hidden_change(x: torch.Tensor, hidden: torch.Tensor, seed: int, special: list[float], scale: float) -> torch.Tensor:
    """``x`` with its hidden pixels replaced: noise of ``scale``, and some pixels set to the ``special`` values."""
    g = torch.Generator().manual_seed(seed)
    new = torch.randn(x.shape, generator=g) * scale
    if special:
        pick = torch.randint(0, len(special), x.shape, generator=g)
        use = torch.rand(x.shape, generator=g) < 0.3
        new = torch.where(use, torch.tensor(special, dtype=x.dtype)[pick], new)
    return torch.where(hidden.expand_as(x), new, x)


_SPECIAL = st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=4)


# -- the guarantee --------------------------------------------------------------------------------------------------
def test_deployed_preprocessing_reads_no_pixel():
    assert DEPLOYED == "none"  # raw intensities in; the model normalizes on the visible pixels itself


@pytest.mark.parametrize("spatial_dims", [2, 3])
@HYPOTHESIS
@given(seed=st.integers(0, 2**30), share=st.floats(0.02, 1.0), special=_SPECIAL,
       scale=st.sampled_from([0.0, 1.0, 1e3, 1e30]))
def test_logits_bit_identical_when_hidden_pixels_change_mask_fixed(spatial_dims, seed, share, special, scale):
    model = _cached(spatial_dims)
    x = _image(spatial_dims, seed)
    grid = model.backbone.grid_shapes(x.shape[2:])[model.finest_block]
    g = torch.Generator().manual_seed(seed + 1)
    cells = torch.rand((1, *grid), generator=g) < share
    hidden = ~cells_to_pixels(cells, x.shape[2:])[:, None]
    x2 = _hidden_change(x, hidden, seed + 2, special, scale)
    with torch.no_grad():
        a = model.predict_masked(_deployed(x), cells)
        b = model.predict_masked(_deployed(x2), cells)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@HYPOTHESIS
@given(seed=st.integers(0, 2**30), rel=st.floats(1e-7, 1e-1), n_changed=st.integers(1, 40))
def test_logits_bit_identical_when_a_hidden_change_keeps_the_recomputed_mask(spatial_dims, seed, rel, n_changed):
    model = _cached(spatial_dims)
    x = _deployed(_image(spatial_dims, seed))
    with torch.no_grad():
        sel = model.select(x)
        hidden = ~sel.pixels
        idx = torch.nonzero(hidden.expand_as(x).flatten())[:, 0]
        g = torch.Generator().manual_seed(seed)
        chosen = idx[torch.randperm(idx.numel(), generator=g)[:n_changed]]
        x2 = x.flatten().clone()
        x2[chosen] = x2[chosen] * (1 + rel * torch.randn(chosen.numel(), generator=g)) + rel
        x2 = x2.reshape(x.shape)
        again = model.select(x2)
        same = all(torch.equal(sel.mask[b], again.mask[b]) for b in sel.mask)
        if same:  # the mask did not move: the decision cannot have
            assert torch.equal(model(x), model(x2))
        # whether or not it moved, the old mask on the new image decides as before (the mask-fixed guarantee)
        assert torch.equal(model.predict_masked(x2, sel.mask[model.finest_block]), model(x))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_background_change_that_keeps_the_mask_keeps_the_logits(spatial_dims):
    """A case where the recomputed mask provably stays (the hypothesis test may see the mask move)."""
    model = _cached(spatial_dims)
    x = _image(spatial_dims, 7)
    fg_pixels = x.abs().sum(1, keepdim=True) > 0
    x2 = torch.where(fg_pixels, x, torch.full_like(x, 1e-3))  # hidden background, far below the 1st percentile rule
    with torch.no_grad():
        m1, m2 = model.mask(x), model.mask(x2)
        assert all(torch.equal(m1[b], m2[b]) for b in m1)
        assert not torch.equal(x, x2)
        assert torch.equal(model(x), model(x2))


def test_per_image_zscore_would_let_hidden_pixels_in():
    """The control: the datasets' default (z-score per image over every pixel) moves the visible inputs when a
    hidden pixel changes, so the logits are no longer bit-identical (why the deployed preprocessing is 'none')."""
    model = _cached(2)
    x = _image(2, 3)
    grid = model.backbone.grid_shapes(x.shape[2:])[model.finest_block]
    cells = torch.zeros((1, *grid), dtype=torch.bool)
    cells[0, 2:5, 2:5] = True
    hidden = ~cells_to_pixels(cells, x.shape[2:])[:, None]
    x2 = torch.where(hidden, x * 3 + 100, x)
    z = lambda t: torch.stack([data_normalize(img, method="zscore") for img in t])  # noqa: E731
    with torch.no_grad():
        assert not torch.equal(model.predict_masked(z(x), cells), model.predict_masked(z(x2), cells))
        # mathematically the model undoes a per-channel affine map: equal to rounding
        torch.testing.assert_close(model.predict_masked(z(x), cells), model.predict_masked(x, cells),
                                   rtol=1e-4, atol=1e-4)


def test_guarantee_through_the_dataset_files(tmp_path):
    """From files on disk through FolderDataset with the variant's normalization: change hidden pixels in the file."""
    model = _cached(2, in_channels=1)
    x = _image(2, 11, channels=1)[0].numpy()
    grid = model.backbone.grid_shapes(x.shape[1:])[model.finest_block]
    with torch.no_grad():
        cells = model.mask(torch.from_numpy(x)[None])[model.finest_block]
    hidden = ~cells_to_pixels(cells, x.shape[1:])[0].numpy()
    x2 = np.where(hidden[None], np.float32(7.0) * np.sin(np.arange(x.size, dtype=np.float32).reshape(x.shape)), x)
    with FolderWriter(tmp_path / "d", class_names=["no", "yes"]) as w:
        w.add("a", image=x, label=0, patient="a")
        w.add("b", image=x2.astype(np.float32), label=0, patient="b")
    ds = FolderDataset(tmp_path / "d", normalize=DEPLOYED)
    xa, xb = ds[0]["image"][None], ds[1]["image"][None]
    assert tuple(grid) == tuple(cells.shape[1:]) and not torch.equal(xa, xb)
    with torch.no_grad():
        assert torch.equal(model.predict_masked(xa, cells), model.predict_masked(xb, cells))


def test_no_selector_feature_reaches_the_predictor():
    """With the mask fixed, the selector's weights do not matter, and the input gradient is zero where hidden."""
    model = _model(2, seed=1)
    x = _image(2, 5)
    with torch.no_grad():
        cells = model.mask(x)[model.finest_block]
        before = model.predict_masked(x, cells)
        for p in model.selector_parameters():
            p.normal_()
        assert torch.equal(model.predict_masked(x, cells), before)
    xg = x.clone().requires_grad_(True)
    model.predict_masked(xg, cells)[:, 1].sum().backward()
    hidden = ~cells_to_pixels(cells, x.shape[2:])[:, None].expand_as(x)
    assert xg.grad[hidden].abs().max() == 0 and xg.grad[~hidden].abs().max() > 0


# -- the mask -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("selector", ["exact", "multilevel"])
def test_mask_consistent_across_scales_and_top_k_of_the_finest_mu(spatial_dims, selector):
    model = _model(spatial_dims, selector=selector, features=2)
    x = torch.cat([_image(spatial_dims, s) for s in range(3)])
    with torch.no_grad():
        sel = model.select(x)
    blocks = model.attention_blocks
    assert len(blocks) == (3 if selector == "multilevel" else 2)
    for fine, coarse in zip(blocks[:-1], blocks[1:]):
        f, c = sel.mask[fine], sel.mask[coarse]
        fac = [a // b for a, b in zip(f.shape[1:], c.shape[1:])]
        for b in range(x.shape[0]):  # naive: every coarse cell against its block of fine cells
            for idx in np.ndindex(*c.shape[1:]):
                block = f[(b, *[slice(i * k, (i + 1) * k) for i, k in zip(idx, fac)])]
                assert bool(c[(b, *idx)]) == bool(block.any())
    # the finest mask: the kept candidates are the highest mu (a naive sort per sample)
    fine = blocks[0]
    for b in range(x.shape[0]):
        mu = sel.mu[fine][b].flatten().tolist()
        cand = sel.candidates[b].flatten().tolist()
        order = sorted((i for i in range(len(mu)) if cand[i]), key=lambda i: (-mu[i], i))
        expect = set(order[: int(sel.kept[b])])
        assert set(torch.nonzero(sel.mask[fine][b].flatten())[:, 0].tolist()) == expect


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**30), budget=st.floats(0.01, 1.0), spatial_dims=st.sampled_from([2, 3]))
def test_budget_respected(seed, budget, spatial_dims):
    model = _cached(spatial_dims)
    model.budget = budget  # the same architecture at another budget
    try:
        x = _image(spatial_dims, seed)
        with torch.no_grad():
            sel = model.select(x)
    finally:
        model.budget = 0.2
    fine = sel.mask[model.finest_block]
    n_fg = int(sel.candidates.sum())
    expected = max(1, math.ceil(budget * n_fg - 1e-9))
    assert int(fine.sum()) == int(sel.kept[0]) == min(expected, n_fg)
    assert not bool((fine & ~sel.candidates).any())  # only foreground cells are shown
    assert int(fine.sum()) <= max(1, math.ceil(budget * n_fg))


@pytest.mark.parametrize("k", [10, 20, 35])
def test_mask_is_the_hiding_tests_kept_region_of_mu(k):
    """The model shows exactly what the evaluation's hiding test keeps of its map at k = 100 x budget."""
    from dualattn.evaluate.hiding import foreground, kept_pixels

    model = _model(2, budget=k / 100)
    x = torch.cat([_image(2, s) for s in range(4)])
    with torch.no_grad():
        sel = model.select(x)
    kept = kept_pixels(sel.log_mu[model.finest_block][:, None], foreground(x), float(k))
    assert torch.equal(kept, sel.pixels)


def test_foreground_cells_match_the_hiding_rule():
    from dualattn.evaluate.hiding import cell_index, foreground

    x = torch.cat([_image(2, s) for s in range(3)])
    grid = (8, 8)
    fg = foreground(x).reshape(3, -1).double()
    cid = cell_index(grid, x.shape[2:]).reshape(-1)
    share = torch.zeros(3, 64, dtype=torch.float64).index_add_(1, cid, fg) / torch.bincount(cid).double()
    assert torch.equal(foreground_cells(x, grid).reshape(3, -1), share >= 0.5)


def test_helpers_on_hand_made_cases():
    scores = torch.tensor([[[3.0, 1.0], [2.0, 2.0]]])
    cand = torch.tensor([[[True, True], [True, False]]])
    assert top_cells(scores, cand, torch.tensor([2]))[0].tolist() == [[True, False], [True, False]]
    fine = torch.zeros(1, 4, 4, dtype=torch.bool)
    fine[0, 3, 0] = True
    assert coarsen_mask(fine, (2, 2))[0].tolist() == [[False, False], [True, False]]
    x = torch.tensor([[[[1.0, 3.0], [float("nan"), 5.0]]]])
    vis = torch.tensor([[[[True, True], [False, False]]]])
    assert masked_zscore(x, vis)[0, 0].tolist() == [[-1.0, 1.0], [0.0, 0.0]]


# -- shapes, batches, weights ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_batched_equals_one_by_one_and_output_contract(spatial_dims):
    model = _cached(spatial_dims)
    x = torch.cat([_image(spatial_dims, s) for s in range(3)])
    with torch.no_grad():
        out = model.forward_with_attention(x)
        for i in range(3):
            one = model.forward_with_attention(x[i:i + 1])
            torch.testing.assert_close(one.logits, out.logits[i:i + 1], rtol=1e-5, atol=1e-5)
            for b in out.mask:
                assert torch.equal(one.mask[b], out.mask[b][i:i + 1])
                torch.testing.assert_close(one.mu[b], out.mu[b][i:i + 1], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(model(x), out.logits)
    assert out.logits.shape == (3, 2) and set(out.mu) == set(out.tau) == set(out.mask) == set(model.attention_blocks)
    for mu in out.mu.values():
        torch.testing.assert_close(mu.flatten(1).sum(1), torch.ones(3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_save_load_and_config_rebuild(tmp_path, spatial_dims):
    model = _model(spatial_dims, budget=0.3, selector="multilevel" if spatial_dims == 2 else "exact",
                   predictor_features=3, img_size=SIZES[spatial_dims])
    assert model.config["variant"] == VARIANT and model.config["budget"] == 0.3
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path).eval()
    x = torch.cat([_image(spatial_dims, s) for s in range(2)])
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.config == model.config and again.img_size == (SIZES[spatial_dims],) * spatial_dims
    rebuilt = create_model(**{k: v for k, v in model.config.items() if k != "name"}, name=model.config["name"])
    assert type(rebuilt) is SelectPredictClassifier and rebuilt.attention_blocks == model.attention_blocks


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="budget"):
        _model(2, budget=0.0)
    with pytest.raises(ValueError, match="selector"):
        _model(2, selector="dual")
    with pytest.raises(ValueError, match="mask must be"):
        _cached(2).predict_masked(_image(2, 0), torch.ones(1, 3, 3, 3, dtype=torch.bool))


def test_selector_starts_from_an_exact_run():
    """The selector is an exact model's pass 1: loaded from one, its maps are that model's on z-scored images."""
    torch.manual_seed(3)
    kw = {"features": 2, "gate_form": "cascaded", "gate_bias": True, "gate_scale": 4.0}
    exact = create_model("unet_encoder", variant="exact", in_channels=2, exact_mode="hybrid", **kw).eval()
    for g in exact.gates.values():  # non-uniform maps
        torch.nn.init.normal_(g.u.weight)
    model = create_model("unet_encoder", variant=VARIANT, in_channels=2, **kw).eval()
    model.load_backbone_state(exact.state_dict())
    x = torch.cat([_image(2, s) for s in range(2)])
    with torch.no_grad():
        ref = exact.forward_with_attention(masked_zscore(x))
        sel = model.select(x)
    for b in ("block3", "block4"):
        torch.testing.assert_close(sel.mu[b], ref.mu[b], rtol=1e-5, atol=1e-7)
    single = create_model("unet_encoder", variant=VARIANT, in_channels=2, features=2)
    with pytest.raises(ValueError, match="gate_form"):
        single.load_backbone_state(exact.state_dict())


def test_predictor_starts_from_a_baseline_run():
    """From a baseline's weights the predictor is that classifier on the visible pixels (the mask channel starts at
    zero): with every pixel visible it is the baseline on the per-image z-scored image."""
    torch.manual_seed(4)
    base = create_model("unet_encoder", variant="baseline", in_channels=2, features=2).eval()
    model = _model(2, seed=5)
    model.load_backbone_state(base.state_dict())
    first = model.predictor.state_dict()["backbone.stages.block1.0.weight"]
    assert torch.equal(first[:, :2], base.state_dict()["backbone.stages.block1.0.weight"])
    assert first[:, 2].abs().max() == 0
    x = torch.cat([_image(2, s, background=False) for s in range(2)])
    grid = model.backbone.grid_shapes(x.shape[2:])[model.finest_block]
    with torch.no_grad():
        full = model.predict_masked(x, torch.ones((2, *grid), dtype=torch.bool))
        torch.testing.assert_close(full, base(masked_zscore(x)), rtol=1e-4, atol=1e-5)
    other = _model(2, seed=5, predictor_features=3)  # another width: the predictor keeps its initialisation
    before = {k: v.clone() for k, v in other.predictor.state_dict().items()}
    other.load_backbone_state(base.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.predictor.state_dict().items())


# -- explain --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", ["block3", "block4"])
def test_explain_methods(block):
    from dualattn.explain import explain, list_methods

    model = _cached(2)
    x = torch.cat([_image(2, s) for s in range(3)])
    assert {"select_predict", "select_predict_mask", "attention"} <= set(list_methods(model))
    ranked = explain(model, x, method="select_predict", block=block)
    hard = explain(model, x, method="select_predict_mask", block=block)
    with torch.no_grad():
        sel = model.select(x)
    mask, mu = sel.mask[block], sel.log_mu[block]
    torch.testing.assert_close(ranked.flatten(1).sum(1), torch.ones(3))
    for b in range(3):
        r, m, u = ranked[b, 0].flatten(), mask[b].flatten(), mu[b].flatten()
        if bool((~m).any()):
            assert r[m].min() > r[~m].max()  # every visible cell above every hidden one
        assert r.unique().numel() >= u.unique().numel()  # no ties where mu has none (AP needs no tie rule)
        for part in (m, ~m):  # mu's order inside each set
            assert torch.equal(torch.argsort(r[part], stable=True), torch.argsort(u[part], stable=True))
        assert torch.equal(hard[b, 0].flatten() > 0, m)
        torch.testing.assert_close(hard[b, 0].flatten()[m], torch.full((int(m.sum()),), 1 / float(m.sum())))
    other = create_model("unet_encoder", variant="exact", in_channels=2, features=2)
    with pytest.raises(ValueError, match="select_predict"):
        explain(other, x, method="select_predict")


# -- training -------------------------------------------------------------------------------------------------------
def _cfg(data: Path, *extra: str) -> TrainConfig:
    return load_config(overrides=[f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=8",
                                  "model_kwargs.features=4", f"variant={VARIANT}", *extra])


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return write_blobs(tmp_path_factory.mktemp("blobs"), n=96)


@pytest.fixture(scope="module")
def trained(blobs, tmp_path_factory) -> Path:
    cfg = _cfg(blobs, "max_epochs=16", "select_predict.predictor_epochs=8")
    return fit(cfg, out=tmp_path_factory.mktemp("runs") / "sp")


def test_training_reaches_above_chance_and_reports_the_evalx_gap(trained):
    summary = json.loads((trained / "summary.json").read_text())
    cfg = load_config(trained / "config.yaml")
    assert cfg.normalize == "none" and cfg.variant == VARIANT  # the deployed preprocessing is recorded
    assert summary["test_balanced_accuracy"] > 0.7 and summary["val_balanced_accuracy"] > 0.7
    report = summary["select_predict"]
    assert report["predictor_epochs"] == 8 and report["selector_epochs"] == 8
    for split in ("val", "test"):
        r = report[split]
        assert r["evalx_gap"] == pytest.approx(r["balanced_accuracy_selector"] - r["balanced_accuracy_random"])
        assert 0 <= r["balanced_accuracy_mask_only"] <= 1 and r["n"] > 0
        assert r["kept_foreground_share"] == pytest.approx(0.2, abs=0.02)
    assert report["test"]["balanced_accuracy_selector"] == pytest.approx(summary["test_balanced_accuracy"])
    assert report["test"]["evalx_gap"] > 0  # the selector's masks beat random ones of the same size
    assert report["test"]["lesion_pixels_shown"] > 0.3  # it finds the squares (20 % of the cells shown)


def test_trained_run_rebuilds_and_explains(trained, blobs):
    from dualattn.explain import explain
    from dualattn.runs import RunDir

    run = RunDir(trained)
    assert run.variant == VARIANT
    model = run.load_model()
    ds = FolderDataset(blobs, split="test", normalize=run.config["normalize"])
    x = torch.stack([ds[i]["image"] for i in range(4)])
    assert explain(model, x, method="select_predict").shape == (4, 1, 8, 8)


def test_phases_resume_bit_identically(tmp_path):
    data = write_blobs(tmp_path / "d", n=24)
    straight = fit(_cfg(data, "max_epochs=3", "select_predict.predictor_epochs=1", "model_kwargs.features=2"),
                   out=tmp_path / "straight")
    fit(_cfg(data, "max_epochs=1", "select_predict.predictor_epochs=1", "model_kwargs.features=2"),
        out=tmp_path / "resumed")
    resumed = fit(_cfg(data, "max_epochs=3", "select_predict.predictor_epochs=1", "model_kwargs.features=2"),
                  out=tmp_path / "resumed", resume=True)
    a, b = (load_model(p / "last.safetensors").state_dict() for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [(p / "metrics.csv").read_text().splitlines() for p in (straight, resumed)]
    assert [r.split(",")[:-1] for r in rows[0]] == [r.split(",")[:-1] for r in rows[1]]  # all but the epoch time


def test_phase_one_moves_only_the_predictor_and_the_selector_head(tmp_path):
    """Phase 1 without the selector's pretraining leaves the selector exactly as it started."""
    from dualattn.train.run import build_model

    data = write_blobs(tmp_path / "d", n=24)
    cfg = _cfg(data, "max_epochs=1", "select_predict.predictor_epochs=1", "select_predict.selector_pretrain=false",
               "model_kwargs.features=2")
    torch.manual_seed(0)
    run = fit(cfg, out=tmp_path / "r")
    after = load_model(run / "last.safetensors").state_dict()
    from dualattn.train.datamodule import seed_all

    seed_all(cfg.seed)
    start = build_model(cfg, in_channels=1, num_classes=2, spatial_dims=2, img_size=(32, 32)).state_dict()
    moved = {k for k in after if not torch.equal(after[k], start[k])}
    assert moved and all(k.startswith("predictor.") for k in moved)


def test_options_are_checked():
    from dualattn.train.select_predict import SelectPredictOptions

    with pytest.raises(ValueError, match="valid: predictor_epochs"):
        SelectPredictOptions.from_config(TrainConfig(variant=VARIANT, select_predict={"epochs": 3}))
    with pytest.raises(ValueError, match="budget_low"):
        SelectPredictOptions.from_config(TrainConfig(variant=VARIANT, select_predict={"budget_low": 0.5,
                                                                                       "budget_high": 0.1}))
    opts = SelectPredictOptions.from_config(TrainConfig(variant=VARIANT, max_epochs=10))
    assert opts.phase1_epochs == 5 and opts.temperature(5) == 1.0 and opts.temperature(9) == pytest.approx(0.1)


def test_random_masks_are_blobs_of_the_asked_size():
    from dualattn.train.select_predict import random_blob_masks

    cand = torch.ones(64, 16, 16, dtype=torch.bool)
    cand[:, :, :4] = False
    kept = torch.randint(5, 80, (64,), generator=torch.Generator().manual_seed(0))
    masks = random_blob_masks(cand, kept, generator=torch.Generator().manual_seed(1))
    assert torch.equal(masks.flatten(1).sum(1), kept) and not bool((masks & ~cand).any())
    # blob-like: far fewer boundary edges than the same number of cells scattered at random
    def edges(m: torch.Tensor) -> float:
        return float((m[:, 1:] != m[:, :-1]).sum() + (m[:, :, 1:] != m[:, :, :-1]).sum())

    scattered = top_cells(torch.rand(64, 16, 16, generator=torch.Generator().manual_seed(2)), cand, kept)
    assert edges(masks) < 0.6 * edges(scattered)
    # and the mask's cells carry no class: they are drawn from the image's foreground only (no label is read)
    assert masks.shape == cand.shape


def test_swap_objective_trains(tmp_path):
    data = write_blobs(tmp_path / "d", n=24)
    run = fit(_cfg(data, "max_epochs=2", "select_predict.predictor_epochs=1", "select_predict.swap_weight=1.0",
                   "model_kwargs.features=2"), out=tmp_path / "r")
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and all(math.isfinite(float(v)) for v in rows[-1].split(",")[1:4])


def test_training_in_3d(tmp_path):
    rng = np.random.default_rng(0)
    with FolderWriter(tmp_path / "d3", class_names=["no", "yes"]) as w:
        for i in range(16):
            img = rng.normal(0, 1, (1, 16, 16, 16)).astype(np.float32) + 5
            if i % 2:
                img[0, 4:9, 4:9, 4:9] += 4
            w.add(f"v{i}", image=img, label=i % 2, patient=f"p{i}")
    run = fit(_cfg(tmp_path / "d3", "max_epochs=2", "select_predict.predictor_epochs=1", "model_kwargs.features=2",
                   "split_fractions=[0.5,0.25,0.25]"), out=tmp_path / "r3")
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["select_predict"]["val"]["evalx_gap"])
    model = load_model(run / "best.safetensors").eval()
    assert model.spatial_dims == 3 and model.mask(torch.rand(1, 1, 16, 16, 16))["block4"].shape == (1, 2, 2, 2)


def test_explain_scan_gives_the_model_raw_intensities(trained, blobs, tmp_path):
    """`dualattn explain` prepares a scan the way the run was trained: raw intensities (the run's normalize)."""
    from dualattn.pipelines.scan import explain_scan
    from dualattn.runs import RunDir

    run = RunDir(trained)
    assert run.input_normalization == "none"
    scan = np.load(blobs / "images" / "img001.npy") * 10 + 3  # a scanner's own scale
    np.save(tmp_path / "scan.npy", scan)
    res = explain_scan(tmp_path / "scan.npy", run=trained)
    assert res.method == VARIANT  # the run's own map by default
    with torch.no_grad():
        probs = torch.softmax(run.model(torch.from_numpy(scan)[None]), dim=1)[0]
    assert res.probabilities == pytest.approx(probs.tolist(), abs=1e-6)


def test_sanity_benchmark_refuses_the_sealed_draw(tmp_path, monkeypatch):
    import sys

    import dualattn.data as data
    from dualattn.data.sealed import SEALED_DATA_SEED

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.setattr(data, "make_dataset", lambda *a, **k: pytest.fail("data generated before the refusal"))
    sys.modules.pop("select_predict_sanity", None)
    import select_predict_sanity as bench

    with pytest.raises(ValueError, match="sealed"):
        bench.main(["--data-seed", str(SEALED_DATA_SEED), "--work", str(tmp_path), "--out", str(tmp_path / "o.json")])
    assert not (tmp_path / "o.json").exists()


# -- the bounded-receptive-field selector (selector="local") and dataset statistics --------------------------------
def _local(spatial_dims: int = 2, *, norm: str = "dataset", seed: int = 0) -> SelectPredictClassifier:
    torch.manual_seed(seed)
    m = create_model("unet_encoder", variant=VARIANT, in_channels=2, spatial_dims=spatial_dims, features=2,
                     budget=0.2, selector="local", selector_norm=norm).eval().double()
    with torch.no_grad():
        for mod in m.modules():  # statistics that are not the identity, so nothing is trivially local
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
    if norm == "dataset":
        m.set_input_statistics([torch.randn(4, 2, *(SIZES[spatial_dims],) * spatial_dims, dtype=torch.float64) + 3])
    return m


def test_local_selector_builds_in_2d_and_3d_and_only_on_the_unet_encoder():
    for dims in (2, 3):
        m = _local(dims)
        x = torch.randn(2, 2, *(SIZES[dims],) * dims, dtype=torch.float64)
        out = m.forward_with_attention(x)
        assert out.logits.shape == (2, 2) and set(out.mask) == {"block3", "block4"}
        assert type(m.backbone).__name__ == "LocalUNetEncoder" and m.selector_kind == "local"
    with pytest.raises(ValueError, match="bounded receptive field"):
        create_model("resnet18", variant=VARIANT, in_channels=2, selector="local")
    with pytest.raises(ValueError, match="selector_norm must be one of image, dataset"):
        create_model("unet_encoder", variant=VARIANT, in_channels=2, features=2, selector_norm="batch")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_local_selector_with_dataset_statistics_reads_only_each_cells_window(spatial_dims):
    """A pixel moves the potential of exactly the cells whose window covers it; every other cell's tau changes by
    the softmax's one common factor, so their order (and the mask among them) cannot change. With per-image
    z-scoring the same change reaches every cell (the reason for ``selector_norm="dataset"``)."""
    size = 32  # a window (16 / 20 px) smaller than the image, so that some cells do not cover the pixel
    rfs = _local(spatial_dims).backbone.receptive_fields()
    x = torch.randn(1, 2, *(size,) * spatial_dims, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    pixel = (2,) * spatial_dims
    x2 = x.clone()
    x2[(0, 1, *pixel)] += 4.0
    for norm, local in (("dataset", True), ("image", False)):
        m = _local(spatial_dims, norm=norm)
        with torch.no_grad():
            _, ref = m._pass_one(m.selector_input(x))
            _, got = m._pass_one(m.selector_input(x2))
        for block in ("block3", "block4"):
            grid = tuple(ref[block].shape[1:])
            covering = torch.zeros(grid, dtype=torch.bool)
            ranges = [rfs[block].cells_covering(p, n_cells=g) for p, g in zip(pixel, grid)]
            covering[tuple(torch.tensor(list(r)).view([-1 if a == k else 1 for a in range(spatial_dims)])
                           for k, r in enumerate(ranges))] = True
            d = (got[block] - ref[block])[0][~covering]
            assert d.numel() > 0
            spread = float((d - d[0]).abs().max())
            if local:
                assert spread < 1e-12, block
            else:
                assert spread > 1e-6, block


def test_set_input_statistics_is_the_pixel_mean_and_deviation_and_checks_its_input():
    m = create_model("unet_encoder", variant=VARIANT, in_channels=2, features=2, selector="local",
                     selector_norm="dataset")
    assert not bool(m.input_stats_set)
    a = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]], [[1.0, 1.0], [1.0, 3.0]]]])  # (1, 2, 2, 2)
    b = torch.tensor([[[[8.0, 8.0], [8.0, 8.0]], [[3.0, 3.0], [3.0, 3.0]]]])
    m.set_input_statistics([a, b])
    # channel 0: 0 2 4 6 8 8 8 8 -> mean 5.5, population variance (0+4+16+36+4*64)/8 - 30.25 = 8.75
    torch.testing.assert_close(m.input_shift, torch.tensor([5.5, 2.25]))
    torch.testing.assert_close(m.input_scale, torch.tensor([8.75, 0.9375]).sqrt())
    assert bool(m.input_stats_set)
    torch.testing.assert_close(m.selector_input(a)[0, 0, 0, 0], torch.tensor(-5.5 / 8.75 ** 0.5))
    with pytest.raises(ValueError, match=r"expected images \(B, 2, \*S\)"):
        m.set_input_statistics([torch.zeros(1, 3, 2, 2)])
    with pytest.raises(ValueError, match="constant or non-finite channel"):
        m.set_input_statistics([torch.ones(2, 2, 4, 4)])
    with pytest.raises(ValueError, match="selector_norm='dataset'"):
        _model().set_input_statistics([a])


def test_local_selector_warm_starts_its_3x3_stages_and_the_predictor_from_a_baseline():
    torch.manual_seed(1)
    base = create_model("unet_encoder", variant="baseline", in_channels=2, features=2)
    m = _local(2).float()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.load_backbone_state(base.state_dict())
    sd, bsd = m.state_dict(), base.state_dict()
    for k, v in sd.items():
        if k.startswith("backbone.stages.block1") or k.startswith("backbone.stages.block2"):
            assert torch.equal(v, bsd[k]), k  # the 3x3 stages it shares with the plain encoder
        elif k.startswith("backbone.stages.block3.0.weight"):
            assert v.shape != bsd[k].shape and torch.equal(v, before[k])  # 1x1: left at initialisation
    assert torch.equal(sd["predictor.head.weight"] if "predictor.head.weight" in sd else sd["predictor.fc.weight"],
                       bsd["head.weight"] if "head.weight" in bsd else bsd["fc.weight"])
    assert torch.equal(m.input_shift, before["input_shift"])  # the statistics are not the run's to give


def test_training_sets_the_dataset_statistics_from_the_raw_training_images(blobs, tmp_path):
    cfg = _cfg(blobs, "max_epochs=1", "select_predict.predictor_epochs=1", "model_kwargs.features=2",
               "model_kwargs.selector=local", "model_kwargs.selector_norm=dataset")
    run = fit(cfg, out=tmp_path / "sp_local")
    model = load_model(run / "best.safetensors")
    assert model.selector_kind == "local" and bool(model.input_stats_set)
    train = FolderDataset(blobs, split="train", seed=cfg.split_seed, fractions=tuple(cfg.split_fractions),
                          normalize=DEPLOYED)
    x = torch.stack([train[i]["image"] for i in range(len(train))]).double()
    torch.testing.assert_close(model.input_shift.double(), x.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.input_scale.double(), x.std(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-5)
