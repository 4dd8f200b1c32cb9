"""The additive local-evidence model (``unet_encoder``, variant ``additive``; dualattn.models.local) and its maps.

What is proved, 2-D and 3-D, in float64 on fixed random weights (eval mode):
* the decomposition is exact: ``mu * s`` summed over cells and scales is the logit less the bias, against a
  naive per-cell loop; the contribution map on one grid sums to the same; the maps are the exact projection;
* the receptive field is the stated one: the union over inputs of every cell's input-gradient support is its
  computed window (clipped to the image), never more; changing one pixel changes ``s`` and the potentials ``phi``
  only in the cells whose window covers it, and every ``tau`` elsewhere by one common factor;
* gradcheck; batched == one by one; one image never changes another's maps; weights round trip;
* every explainer runs on it; the training pipeline trains it above chance on the blob data.
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from dualattn.consistency import project_exact, project_exact_chain
from dualattn.explain import explain, explain_blocks, list_methods, method_sources, select_sources
from dualattn.grids import block_sum
from dualattn.models import create_model, list_variants
from dualattn.models.base import normalized_entropy
from dualattn.models.local import (
    ADDITIVE_VARIANT,
    ReceptiveField,
    class_weights,
    contribution_map,
    receptive_field,
    scale_contributions,
)

THREE = ["block2", "block3", "block4"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _model(spatial_dims: int = 2, *, features: int = 2, num_classes: int = 2, in_channels: int = 1, seed: int = 0,
           **kw):
    torch.manual_seed(seed)
    model = create_model("unet_encoder", variant="additive", features=features, num_classes=num_classes,
                         in_channels=in_channels, spatial_dims=spatial_dims, **kw)
    # BatchNorm statistics and a bias that are not the identity, so that nothing is trivially exact
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.bias.uniform_(-1.0, 1.0)
    return model.eval()


def _x(shape, seed=1, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- registry, config, weights
def test_registered_as_a_variant_of_unet_encoder_and_rebuilt_from_its_config(tmp_path):
    from dualattn.weights import load_model, save_model

    assert ADDITIVE_VARIANT in list_variants("unet_encoder") and ADDITIVE_VARIANT not in list_variants("resnet18")
    for dims, size in ((2, 32), (3, 16)):
        model = _model(dims, features=3, in_channels=2, blocks=THREE if dims == 3 else ["block3", "block4"],
                       gate_form="cascaded", gate_bias=True, gate_scale=16.0)
        cfg = model.config
        assert cfg["variant"] == "additive" and cfg["name"] == "unet_encoder" and json.loads(json.dumps(cfg)) == cfg
        rebuilt = create_model(**cfg)
        assert type(rebuilt) is type(model) and rebuilt.attention_blocks == model.attention_blocks
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
        path = save_model(model, tmp_path / f"additive{dims}.safetensors", metadata={"epoch": 1})
        loaded = load_model(path).eval()
        x = _x((2, 2, *(size,) * dims), dtype=torch.float32)
        with torch.no_grad():
            a, b = model.float()(x), loaded(x)
        assert torch.equal(a, b)
        assert loaded.config == cfg


def test_option_errors_name_the_value():
    with pytest.raises(ValueError, match="norm='batch'.*'group'"):
        create_model("unet_encoder", variant="additive", norm="group")
    with pytest.raises(ValueError, match="blocks must be one of"):
        create_model("unet_encoder", variant="additive", blocks=["block4", "block3"])
    with pytest.raises(ValueError, match="conv3_stages must be an int in \\[0, 4\\], got 5"):
        create_model("unet_encoder", variant="additive", conv3_stages=5)
    with pytest.raises(ValueError, match="gate_form"):
        create_model("unet_encoder", variant="additive", gate_form="triple")
    model = _model()
    with pytest.raises(ValueError, match="grids do not nest"):
        model(torch.randn(1, 1, 36, 36))
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.randn(1, 1, 32, 32, 32))
    # a plain U-Net encoder's block3 / block4 convolutions are 3x3: its weights do not fit
    baseline = create_model("unet_encoder", features=2)
    with pytest.raises(ValueError, match="shape mismatch.*block3"):
        model.load_backbone_state(baseline.state_dict())
    other = _model(seed=5)
    model.load_backbone_state({f"model.{k}": v for k, v in other.state_dict().items()})
    for name, p in model.named_parameters():
        if not name.startswith("gates."):
            assert torch.equal(p, dict(other.named_parameters())[name]), name


def test_parameters_partition_and_freeze():
    model = _model(features=3)
    names = {n for n, _ in model.named_parameters()}
    gate = {n for n, p in model.named_parameters() if any(p is q for q in model.gate_parameters())}
    backbone = {n for n, p in model.named_parameters() if any(p is q for q in model.backbone_parameters())}
    assert gate | backbone == names and not gate & backbone and gate == {n for n in names if n.startswith("gates.")}
    model.train().freeze_backbone(True)
    assert not any(p.requires_grad for p in model.backbone_parameters()) and not model.backbone.training
    assert all(p.requires_grad for p in model.gate_parameters())
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters()) and model.backbone.training


# ---------------------------------------------------------------- receptive field
def test_receptive_field_walk_hand_computed():
    conv = torch.nn.Conv2d
    assert receptive_field([]) == ReceptiveField(1, 1, 0)
    assert receptive_field([conv(1, 1, 3, padding=1)]) == ReceptiveField(3, 1, -1)
    assert receptive_field([conv(1, 1, 3, padding=1), conv(1, 1, 3, padding=1)]) == ReceptiveField(5, 1, -2)
    assert receptive_field([torch.nn.MaxPool2d(2, 2)], ReceptiveField(5, 1, -2)) == ReceptiveField(6, 2, -2)
    assert receptive_field([conv(1, 1, 3, padding=2, dilation=2, stride=2)]) == ReceptiveField(5, 2, -2)
    with pytest.raises(ValueError, match="no rule for a Linear"):
        receptive_field([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="anisotropic kernel"):
        receptive_field([conv(1, 1, (3, 1))])
    # cells_covering is the brute-force list of windows holding the pixel
    rf = ReceptiveField(16, 4, -6)
    for pixel in range(-8, 40):
        brute = [i for i in range(8) if rf.window(i)[0] <= pixel <= rf.window(i)[1]]
        assert list(rf.cells_covering(pixel, n_cells=8)) == brute


def test_stated_receptive_fields_are_smaller_than_the_plain_encoders():
    plain = create_model("unet_encoder", features=2)
    rf = None
    plain_rf = {}
    for name, stage in plain.backbone.stages.items():
        rf = receptive_field(stage, rf)
        plain_rf[name] = rf
    assert (plain_rf["block3"].size, plain_rf["block4"].size) == (32, 68)  # issue 22: a block3 cell sees 32 px
    for dims in (2, 3):
        got = _model(dims).receptive_fields
        assert got["block3"] == ReceptiveField(16, 4, -6) and got["block4"] == ReceptiveField(20, 8, -6)
    assert create_model("unet_encoder", variant="additive", conv3_stages=1).receptive_fields["block3"].size == 8
    assert create_model("unet_encoder", variant="additive", conv3_stages=3).receptive_fields["block3"].size == 32


def _box(rf: ReceptiveField, cell: tuple[int, ...], spatial: tuple[int, ...]) -> torch.Tensor:
    mask = torch.ones(spatial, dtype=torch.bool)
    for axis, (i, n) in enumerate(zip(cell, spatial)):
        lo, hi = rf.window(i)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[max(lo, 0) : min(hi, n - 1) + 1] = True
        mask &= keep.view([-1 if a == axis else 1 for a in range(len(spatial))])
    return mask


def _bounding_box(support: torch.Tensor) -> torch.Tensor:
    box = torch.ones_like(support)
    for axis in range(support.dim()):
        hit = support.any(dim=tuple(a for a in range(support.dim()) if a != axis)).nonzero().flatten()
        keep = torch.zeros(support.shape[axis], dtype=torch.bool)
        keep[int(hit.min()) : int(hit.max()) + 1] = True
        box &= keep.view([-1 if a == axis else 1 for a in range(support.dim())])
    return box


@pytest.mark.parametrize("spatial_dims,size", [(2, 32), (3, 24)])
def test_receptive_field_equals_the_gradient_support(spatial_dims, size):
    """Every cell's input-gradient support (union over inputs: max-pooling passes one input of four) is inside
    its stated window clipped to the image, and spans it for the cells whose window lies inside the image."""
    model = _model(spatial_dims).double()
    spatial = (size,) * spatial_dims
    x = _x((8 if spatial_dims == 2 else 4, 1, *spatial)).requires_grad_(True)
    out = model.forward_with_evidence(x)
    rfs = model.receptive_fields
    filled = 0
    for block in model.attention_blocks:
        grid = tuple(out.mu[block].shape[1:])
        # 2-D: every cell; 3-D: the first, middle and last cell on every axis (the backward passes are slow)
        axes = [range(g) if spatial_dims == 2 else sorted({0, g // 2, g - 1}) for g in grid]
        for cell in itertools.product(*axes):
            box = _box(rfs[block], cell, spatial)
            inside = all(0 <= rfs[block].window(i)[0] and rfs[block].window(i)[1] < n for i, n in zip(cell, spatial))
            idx = (slice(None), *cell)
            for what, value in (("s", out.evidence[block][(slice(None), slice(None), *cell)].sum()),
                                ("phi", out.potentials[block][idx].sum())):
                (grad,) = torch.autograd.grad(value, x, retain_graph=True)
                support = (grad != 0).any(0).any(0)
                assert not (support & ~box).any(), (block, cell, what)
                if inside:  # the bound is attained: the support reaches both ends of the window on every axis
                    assert torch.equal(_bounding_box(support), box), (block, cell, what)
                    filled += 1
    assert filled >= 2 * 2  # interior cells of both blocks were checked for tightness


@pytest.mark.parametrize("spatial_dims,size", [(2, 32), (3, 16)])
def test_one_pixel_changes_s_and_phi_only_where_a_window_covers_it(spatial_dims, size):
    model = _model(spatial_dims, blocks=THREE).double()
    spatial = (size,) * spatial_dims
    x = _x((1, 1, *spatial))
    rfs = model.receptive_fields
    with torch.no_grad():
        ref = model.forward_with_evidence(x)
        pixels = [(0,) * spatial_dims, (size // 2 - 1,) * spatial_dims, tuple(range(3, 3 + spatial_dims))]
        for pixel in pixels:
            x2 = x.clone()
            x2[(0, 0, *pixel)] += 2.5
            got = model.forward_with_evidence(x2)
            for block in model.attention_blocks:
                grid = tuple(ref.mu[block].shape[1:])
                covering = torch.zeros(grid, dtype=torch.bool)
                ranges = [rfs[block].cells_covering(p, n_cells=g) for p, g in zip(pixel, grid)]
                covering[tuple(torch.tensor(list(r)).view([-1 if a == k else 1 for a in range(spatial_dims)])
                               for k, r in enumerate(ranges))] = True
                s_changed = (got.evidence[block] != ref.evidence[block]).any(1)[0]
                phi_changed = (got.potentials[block] != ref.potentials[block])[0]
                assert s_changed.any() and not (s_changed & ~covering).any(), (pixel, block)
                assert phi_changed.any() and not (phi_changed & ~covering).any(), (pixel, block)
                # tau elsewhere: rescaled by the softmax's one normalizer
                d = (got.tau[block].log() - ref.tau[block].log())[0][~covering]
                if d.numel():
                    assert float((d - d[0]).abs().max()) < 1e-12


# ---------------------------------------------------------------- the exact decomposition
@pytest.mark.parametrize("spatial_dims,size,blocks,num_classes", [
    (2, 32, ["block3", "block4"], 2), (2, 32, THREE, 3), (3, 16, ["block3", "block4"], 2), (3, 16, THREE, 4),
])
def test_contributions_sum_exactly_to_the_logit(spatial_dims, size, blocks, num_classes):
    model = _model(spatial_dims, blocks=blocks, num_classes=num_classes, features=3, gate_scale=8.0).double()
    x = _x((3, 1, *(size,) * spatial_dims))
    with torch.no_grad():
        out = model.forward_with_evidence(x)
    # the maps are the exact projection (the probability-space closed form / chain) of the gates' tau
    taus = [out.tau[b] for b in blocks]
    ref = project_exact(*taus) if len(blocks) == 2 else project_exact_chain(taus)
    for b, mu in zip(blocks, ref):
        torch.testing.assert_close(out.mu[b], mu, rtol=1e-10, atol=1e-14)
    for fine, coarse in zip(blocks[:-1], blocks[1:]):
        f = tuple(a // c for a, c in zip(out.mu[fine].shape[1:], out.mu[coarse].shape[1:]))
        torch.testing.assert_close(block_sum(out.mu[fine], f), out.mu[coarse], rtol=0, atol=1e-14)
    # a naive loop over samples, scales, cells and classes is the logit
    naive = torch.zeros(3, num_classes, dtype=torch.float64)
    for i, b in itertools.product(range(3), blocks):
        mu, s = out.mu[b][i].flatten(), out.evidence[b][i].flatten(1)
        for p in range(mu.numel()):
            naive[i] += mu[p] * s[:, p]
    torch.testing.assert_close(out.logits - out.bias, naive, rtol=0, atol=1e-12)
    for t in range(num_classes):
        target = torch.full((3,), t)
        for contrast in (False, True):
            w = class_weights(num_classes, target, contrast=contrast)
            expected = ((out.logits - out.bias) * w).sum(1)
            per_scale = scale_contributions(out, w)
            torch.testing.assert_close(sum(c.flatten(1).sum(1) for c in per_scale.values()), expected,
                                       rtol=0, atol=1e-12)
            for b in blocks:
                full = contribution_map(out, w, b)
                assert full.shape == out.mu[b].shape
                torch.testing.assert_close(full.flatten(1).sum(1), expected, rtol=0, atol=1e-12)
                torch.testing.assert_close(contribution_map(out, w, b, scales="own"), per_scale[b])


def test_class_weights_hand_computed():
    assert class_weights(2, torch.tensor([1, 0])).tolist() == [[-1.0, 1.0], [1.0, -1.0]]  # the logit difference
    assert class_weights(2, torch.tensor([1]), contrast=False).tolist() == [[0.0, 1.0]]
    assert class_weights(4, torch.tensor([3])).tolist() == [[-1 / 3, -1 / 3, -1 / 3, 1.0]]


def test_contribution_map_shares_a_coarse_cell_by_the_fine_mu_hand_computed():
    """One sample, a 2x2 fine grid under one coarse cell: the fine cell j gets mu_f[j] * (e_f[j] + e_c)."""
    from dualattn.models.local import EvidenceOutput

    mu_f = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]], dtype=torch.float64)
    s_f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [1.0, 1.0]]]], dtype=torch.float64)
    s_c = torch.tensor([[[[5.0]], [[1.0]]]], dtype=torch.float64)
    logits = torch.zeros(1, 2, dtype=torch.float64)
    out = EvidenceOutput(logits, {}, {"f": mu_f, "c": torch.ones(1, 1, 1, dtype=torch.float64)},
                         logits.new_zeros(()), {"f": s_f, "c": s_c}, {}, torch.zeros(2))
    w = class_weights(2, torch.tensor([0]))  # class 0 minus class 1
    got = contribution_map(out, w, "f")
    e_f = torch.tensor([[1.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(got[0], mu_f[0] * (e_f + 4.0))
    torch.testing.assert_close(contribution_map(out, w, "c"), torch.tensor([[[(mu_f[0] * e_f).sum() + 4.0]]],
                                                                             dtype=torch.float64))


@pytest.mark.parametrize("spatial_dims,size", [(2, 16), (3, 8)])
def test_gradcheck_of_the_logits_wrt_the_input(spatial_dims, size):
    model = _model(spatial_dims, gate_scale=4.0).double()
    x = _x((1, 1, *(size,) * spatial_dims)).requires_grad_(True)
    assert torch.autograd.gradcheck(model, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_of_the_contribution_map():
    from dualattn.models.local import EvidenceOutput

    gen = torch.Generator().manual_seed(3)
    s_f = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    s_c = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    lt_f = torch.randn(2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    lt_c = torch.randn(2, 2, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    w = class_weights(3, torch.tensor([2, 0]))

    def fn(s_f, s_c, lt_f, lt_c):
        mu_f, mu_c = project_exact(lt_f.flatten(1).softmax(1).view_as(lt_f), lt_c.flatten(1).softmax(1).view_as(lt_c))
        out = EvidenceOutput(s_f.new_zeros(2, 3), {}, {"f": mu_f, "c": mu_c}, s_f.new_zeros(()),
                             {"f": s_f, "c": s_c}, {}, s_f.new_zeros(3))
        return contribution_map(out, w, "f"), contribution_map(out, w, "c")

    assert torch.autograd.gradcheck(fn, (s_f, s_c, lt_f, lt_c))


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("spatial_dims,size", [(2, 32), (3, 16)])
def test_batched_equals_one_by_one_and_images_are_independent(spatial_dims, size):
    model = _model(spatial_dims).double()
    x = _x((3, 1, *(size,) * spatial_dims))
    w = class_weights(2, torch.tensor([1, 0, 1]))
    with torch.no_grad():
        out = model.forward_with_evidence(x)
        maps = {b: contribution_map(out, w, b) for b in out.mu}
        for i in range(3):
            one = model.forward_with_evidence(x[i : i + 1])
            torch.testing.assert_close(one.logits, out.logits[i : i + 1], rtol=1e-12, atol=1e-12)
            for b in out.mu:
                torch.testing.assert_close(one.mu[b], out.mu[b][i : i + 1], rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(contribution_map(one, w[i : i + 1], b), maps[b][i : i + 1],
                                           rtol=1e-12, atol=1e-12)
        x2 = x.clone()
        x2[0] = _x(x.shape[1:], seed=9)
        other = model.forward_with_evidence(x2)
        for b in out.mu:
            assert torch.equal(other.mu[b][1:], out.mu[b][1:]) and torch.equal(other.evidence[b][1:], out.evidence[b][1:])
            assert not torch.equal(other.mu[b][0], out.mu[b][0])
        assert torch.equal(other.logits[1:], out.logits[1:])


def test_penalty_is_the_sharpness_hinge_of_mu():
    model = _model(entropy_weight=2.0, attention_area=0.25, gate_scale=8.0).double()
    x = _x((2, 1, 32, 32))
    with torch.no_grad():
        out = model.forward_with_evidence(x)
    expected = 2.0 * normalized_entropy([out.mu[b].log() for b in model.attention_blocks], 0.25)
    torch.testing.assert_close(out.penalty.double(), expected.double(), rtol=1e-6, atol=1e-9)
    assert float(_model().double().forward_with_evidence(x).penalty) == 0.0
    att = model.forward_with_attention(x)
    assert torch.equal(att.logits, out.logits) and torch.equal(att.penalty, out.penalty)
    assert all(torch.equal(att.mu[b], out.mu[b]) and torch.equal(att.tau[b], out.tau[b]) for b in out.mu)


# ---------------------------------------------------------------- explainers
def test_the_explain_methods_are_the_models_maps():
    model = _model(features=3, gate_scale=8.0)
    x = _x((3, 1, 32, 32), dtype=torch.float32)
    with torch.no_grad():
        out = model.forward_with_evidence(x)
    pred = out.logits.argmax(1)
    assert {"additive", "additive_contribution", "attention", "cvx"} <= set(list_methods(model))
    for block in ("block3", "block4"):
        mu = explain(model, x, method="additive", block=block)
        assert torch.equal(mu, out.mu[block].unsqueeze(1))
        assert torch.equal(explain(model, x, method="attention", block=block), mu)
        c = explain(model, x, method="additive_contribution", block=block)
        assert c.shape == (3, 1, *out.mu[block].shape[1:])
        sign = pred.double() * 2 - 1  # predicted class minus the other
        margin = sign * ((out.logits[:, 1] - out.bias[1]) - (out.logits[:, 0] - out.bias[0])).double()
        torch.testing.assert_close(c.flatten(1).sum(1).double(), margin, rtol=1e-5, atol=1e-5)
        c1 = explain(model, x, method="additive_contribution", block=block, target=1, contrast=False, scales="own")
        torch.testing.assert_close(c1[:, 0], (out.mu[block] * out.evidence[block][:, 1]))
    with pytest.raises(ValueError, match="variant 'additive', but this model is 'exact'"):
        explain(create_model("unet_encoder", variant="exact", features=2), x, method="additive_contribution")
    with pytest.raises(ValueError, match="block 'block2' has no map"):
        explain(model, x, method="additive", block="block2")
    with pytest.raises(ValueError, match="takes no option"):
        explain(model, x, method="additive", contrast=False)
    with pytest.raises(ValueError, match="scales must be"):
        explain(model, x, method="additive_contribution", scales="some")
    runs = [type("R", (), {"variant": v, "is_vit": False})() for v in ("additive", "exact", "baseline")]
    assert select_sources("additive_contribution", runs, runs[2:]) == runs[:1]
    assert method_sources(["additive", "additive_contribution"], ["baseline", "additive"]) == \
        {"additive": "additive", "additive_contribution": "additive"}


def test_explain_costs_one_forward_and_leaves_the_model_alone():
    model = _model(features=3).train()
    x = _x((2, 1, 32, 32), dtype=torch.float32)
    calls = []
    handle = model.backbone.stages["block1"].register_forward_pre_hook(lambda *a: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for method in ("additive", "additive_contribution"):
            calls.clear()
            explain(model, x, method=method, block="block3")
            assert len(calls) == 1, method
    finally:
        handle.remove()
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("spatial_dims,size", [(2, 32), (3, 16)])
def test_every_explainer_runs(spatial_dims, size):
    model = _model(spatial_dims, features=2, in_channels=2)
    x = _x((2, 2, *(size,) * spatial_dims), dtype=torch.float32)
    methods = ["additive", "additive_contribution", "attention", "cvx", "gradcam", "gradcam_norelu", "lrp", "ig",
               "deeplift", "ixg"]
    grids = {b: tuple(model.forward_with_attention(x).mu[b].shape[1:]) for b in ("block3", "block4")}
    for method in methods:
        kw = {"n_steps": 4} if method == "ig" else {}
        maps = explain_blocks(model, x, method=method, blocks=("block3", "block4"), **kw)
        for b, m in maps.items():
            assert m.shape == (2, 1, *grids[b]) and torch.isfinite(m).all(), (method, b)


def test_lrp_canonizes_and_holds_the_maps_constant():
    from dualattn.explain import describe_lrp_rules

    model = _model(features=2)
    info = describe_lrp_rules(model, _x((1, 1, 32, 32), dtype=torch.float32))
    assert info["canonized"] and sorted(info["maps_held_constant"]) == ["attn_pool.block3", "attn_pool.block4"]
    assert not any(row["gets_relevance"] for row in info["layers"] if row["layer"].startswith("gates."))
    assert all(row["gets_relevance"] for row in info["layers"] if row["layer"].startswith("evidence."))


# ---------------------------------------------------------------- training
def test_trains_through_the_pipeline_above_chance(tmp_path):
    from _train_helpers import write_blobs

    from dualattn.train import fit, load_config, load_run
    from dualattn.train.recipes import SHARP_GATE

    data = write_blobs(tmp_path / "blobs", n=96)
    cfg = load_config(overrides=[f"dataset={data}", "accelerator=cpu", "devices=1", "batch_size=8", "max_epochs=4",
                                 "model_kwargs.features=8", "variant=additive"])
    run = fit(cfg, out=tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_balanced_accuracy"] >= 0.8 and summary["test_balanced_accuracy"] >= 0.7
    model = load_run(run)
    assert model.config["variant"] == "additive" and model.attention_blocks == ("block3", "block4")
    for key, value in SHARP_GATE.items():  # the recipe (dualattn.train.recipes.DESIGN_RECIPES)
        assert model.config[key] == value
    with torch.no_grad():
        out = model.forward_with_evidence(torch.randn(2, 1, 32, 32))
    w = class_weights(2, torch.tensor([1, 1]))
    total = sum(c.flatten(1).sum(1) for c in scale_contributions(out, w).values())
    torch.testing.assert_close(total, (out.logits[:, 1] - out.logits[:, 0]) - (out.bias[1] - out.bias[0]),
                               rtol=1e-5, atol=1e-5)


def test_the_figure_script_refuses_the_sealed_draw(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    import dualattn.data as data
    import dualattn.data._registry as registry
    from dualattn.data.sealed import SEALED_DATA_SEED

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    monkeypatch.delitem(sys.modules, "additive_figure", raising=False)
    import additive_figure

    def boom(*args, **kwargs):
        raise AssertionError("data generated before the sealed seed was refused")

    for module in (data, registry):
        monkeypatch.setattr(module, "make_dataset", boom)
    with pytest.raises(ValueError, match="sealed test draw"):
        additive_figure.main(["--data-seed", str(SEALED_DATA_SEED), "--work", str(tmp_path),
                              "--figure", str(tmp_path / "f.png"), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "f.png").exists()
