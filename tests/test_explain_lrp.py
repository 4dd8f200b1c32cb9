"""dualattn.explain.lrp: the composite rules against a slow numpy LRP, conservation, canonization, no mutation."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dualattn.explain.lrp as L
from dualattn.explain import explain
from dualattn.explain.lrp import LRP_DESCRIPTION, LRP_RULES, LRPRule, depth_third, describe_lrp_rules, lrp_attribution
from dualattn.explain.posthoc import pixel_attribution
from dualattn.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


G, E, Z = LRPRule("gamma", 0.25), LRPRule("epsilon", 0.25), LRPRule("zero")
#: a composite with every epsilon ~0: relevance is conserved on a bias-free network
CONSERVING = {"input": Z, "lower": G, "middle": Z, "upper": Z}
ALL_ZERO = {"input": Z, "lower": Z, "middle": Z, "upper": Z}


# ---------------------------------------------------------------- a slow numpy LRP
def _conv_matrix(w: np.ndarray, h: int, wd: int, pad: int = 1) -> np.ndarray:
    """Dense matrix of a stride-1 2-D convolution with zero padding (one loop per index)."""
    o_n, c_n, k, _ = w.shape
    a = np.zeros((o_n * h * wd, c_n * h * wd))
    for o in range(o_n):
        for i in range(h):
            for j in range(wd):
                for c in range(c_n):
                    for u in range(k):
                        for v in range(k):
                            ii, jj = i + u - pad, j + v - pad
                            if 0 <= ii < h and 0 <= jj < wd:
                                a[(o * h + i) * wd + j, (c * h + ii) * wd + jj] += w[o, c, u, v]
    return a


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _rule_step(a_in: np.ndarray, mat: np.ndarray, bias: np.ndarray, rel: np.ndarray, rule: LRPRule) -> np.ndarray:
    """Relevance at the input of ``z = mat a + bias`` (Captum's rules: gamma changes the weights, not the bias;
    the stabilizer is ``eps * sign(z')`` with sign(0) = +1)."""
    m = mat + rule.value * np.clip(mat, 0, None) if rule.kind == "gamma" else mat
    eps = rule.value if rule.kind == "epsilon" else 1e-9
    z = m @ a_in + bias
    s = rel / (z + eps * np.where(z >= 0, 1.0, -1.0))
    return a_in * (m.T @ s)


class Chain(nn.Module):
    """conv0 -> BN -> ReLU -> conv1 -> ReLU -> conv2 -> ReLU -> conv3 -> ReLU -> flatten -> fc (5 weight layers:
    input, lower (gamma), middle, upper, upper)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.bn0, self.r0 = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()
        self.conv1, self.r1 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.conv2, self.r2 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.conv3, self.r3 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.flat, self.fc = nn.Flatten(), nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.r1(self.conv1(self.r0(self.bn0(self.conv0(x)))))
        return self.fc(self.flat(self.r3(self.conv3(self.r2(self.conv2(h))))))


def _randomize_bn(model: nn.Module, *, zero_shift: bool = False) -> None:
    """Running statistics and affine parameters as after training (zero_shift: folded biases are 0)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                if zero_shift:
                    m.running_mean.zero_()
                    m.bias.zero_()
                else:
                    m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))


def test_composite_matches_a_slow_numpy_lrp():
    torch.manual_seed(0)
    model = Chain().double().eval()
    _randomize_bn(model)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    t = torch.tensor([2, 0])
    ours = lrp_attribution(model, x, target=t).double()
    # the reference: BN folded by hand, dense matrices, Captum's rule formulas
    bn = model.bn0
    scale = _np(bn.weight) / np.sqrt(_np(bn.running_var) + bn.eps)
    a0 = _conv_matrix(_np(model.conv0.weight), 5, 5) * np.repeat(scale, 25)[:, None]
    b0 = np.repeat((_np(model.conv0.bias) - _np(bn.running_mean)) * scale + _np(bn.bias), 25)
    layers = [(a0, b0)] + [(_conv_matrix(_np(c.weight), 5, 5), np.repeat(_np(c.bias), 25))
                           for c in (model.conv1, model.conv2, model.conv3)]
    layers.append((_np(model.fc.weight), _np(model.fc.bias)))
    roles = ["input", "lower", "middle", "upper", "upper"]
    for i in range(2):
        acts = [_np(x[i]).reshape(-1)]
        for k, (mat, bias) in enumerate(layers):
            z = mat @ acts[-1] + bias
            acts.append(np.maximum(z, 0) if k < len(layers) - 1 else z)
        rel = np.zeros(3)
        rel[t[i]] = acts[-1][t[i]]
        for k in reversed(range(len(layers))):
            rel = _rule_step(acts[k], *layers[k], rel, LRP_RULES[roles[k]])
        np.testing.assert_allclose(ours[i].numpy().reshape(-1), rel, rtol=1e-5, atol=1e-7 * np.abs(rel).max())
    rows = describe_lrp_rules(model, x)["layers"]
    assert [r["role"] for r in rows] == roles
    assert [r["rule"] for r in rows] == [LRP_RULES[r].label for r in roles]
    assert [r["layer"] for r in rows] == ["conv0", "conv1", "conv2", "conv3", "fc"]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.relu(self.conv(x) + x)


class Residual(nn.Module):
    """conv0 -> ReLU -> [relu(conv(h) + h)] -> convA -> ReLU -> convB -> ReLU -> convC -> ReLU -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.r0 = nn.Conv2d(1, 2, 3, padding=1), nn.ReLU()
        self.block = _Block()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(3))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(3))
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.block(self.r0(self.conv0(x)))
        for conv, act in zip(self.convs, self.acts):
            h = act(conv(h))
        return self.fc(h.flatten(1))


def test_residual_sum_is_split_in_proportion_and_matches_numpy():
    torch.manual_seed(1)
    model = Residual().double().eval()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 0])
    ours = lrp_attribution(model, x, target=t).double()
    mats = [(_conv_matrix(_np(c.weight), 4, 4), np.repeat(_np(c.bias), 16))
            for c in (model.conv0, model.block.conv, *model.convs)]
    fc = (_np(model.fc.weight), _np(model.fc.bias))
    # roles of the 6 weight layers: input, lower (feeds the sum: the middle rule), middle, middle, upper, upper
    rules = [LRP_RULES["input"], LRP_RULES["middle"], LRP_RULES["middle"], LRP_RULES["middle"], Z, Z]
    for i in range(2):
        a0 = _np(x[i]).reshape(-1)
        h0 = np.maximum(mats[0][0] @ a0 + mats[0][1], 0)
        z1 = mats[1][0] @ h0 + mats[1][1]
        s1 = z1 + h0
        hs = [np.maximum(s1, 0)]
        for mat, bias in mats[2:]:
            hs.append(np.maximum(mat @ hs[-1] + bias, 0))
        logits = fc[0] @ hs[-1] + fc[1]
        rel = np.zeros(2)
        rel[t[i]] = logits[t[i]]
        rel = _rule_step(hs[-1], *fc, rel, rules[5])
        for k in (4, 3, 2):
            rel = _rule_step(hs[k - 2], *mats[k], rel, rules[k])
        # the sum: relevance split in proportion to its two inputs (LRP-0)
        q = rel / (s1 + 1e-9 * np.where(s1 >= 0, 1.0, -1.0))
        rel_h0 = _rule_step(h0, *mats[1], z1 * q, rules[1]) + h0 * q
        rel = _rule_step(a0, *mats[0], rel_h0, rules[0])
        np.testing.assert_allclose(ours[i].numpy().reshape(-1), rel, rtol=1e-5, atol=1e-7 * np.abs(rel).max())
    info = describe_lrp_rules(model, x)
    assert info["residual_sums"] == ["block"]
    assert [r["role"] for r in info["layers"]] == ["input", "lower", "middle", "middle", "upper", "upper"]
    assert info["layers"][1]["note"] and info["layers"][1]["rule"] == LRP_RULES["middle"].label


class GroupNormChain(nn.Module):
    """conv0 -> ReLU -> conv1 -> GroupNorm(2 groups) -> ReLU -> conv2 -> ReLU -> conv3 -> ReLU -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.r0 = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()
        self.conv1, self.gn, self.r1 = nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU()
        self.conv2, self.r2 = nn.Conv2d(4, 2, 3, padding=1), nn.ReLU()
        self.conv3, self.r3 = nn.Conv2d(2, 2, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.r1(self.gn(self.conv1(self.r0(self.conv0(x)))))
        return self.fc(self.r3(self.conv3(self.r2(self.conv2(h)))).flatten(1))


def test_group_norm_scale_is_held_constant_and_matches_numpy():
    """A GroupNorm is not folded: LRP-0 through it with its scale 1/sigma held constant (the centering is a
    linear map), the conv before it takes the middle rule; checked against dense matrices by hand."""
    torch.manual_seed(4)
    model = GroupNormChain().double().eval()
    with torch.no_grad():
        model.gn.weight.copy_(torch.tensor([0.7, 1.3, 0.9, 1.6]))
        model.gn.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.05]))
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ours = lrp_attribution(model, x, target=t).double()
    mats = [(_conv_matrix(_np(c.weight), 4, 4), np.repeat(_np(c.bias), 16))
            for c in (model.conv0, model.conv1, model.conv2, model.conv3)]
    fc = (_np(model.fc.weight), _np(model.fc.bias))
    gamma, beta = np.repeat(_np(model.gn.weight), 16), np.repeat(_np(model.gn.bias), 16)
    groups = np.repeat(np.arange(2), 32)  # 2 channels x 16 positions per group
    center = np.eye(64) - (groups[:, None] == groups[None, :]) / 32.0
    rules = [LRP_RULES["input"], LRP_RULES["middle"], LRP_RULES["middle"], Z, Z]
    for i in range(2):
        a0 = _np(x[i]).reshape(-1)
        h0 = np.maximum(mats[0][0] @ a0 + mats[0][1], 0)
        z1 = mats[1][0] @ h0 + mats[1][1]
        zc = center @ z1
        sigma = np.sqrt(np.array([zc[groups == g].var() for g in groups]) + model.gn.eps)
        y = zc / sigma * gamma + beta
        h1 = np.maximum(y, 0)
        h2 = np.maximum(mats[2][0] @ h1 + mats[2][1], 0)
        h3 = np.maximum(mats[3][0] @ h2 + mats[3][1], 0)
        logits = fc[0] @ h3 + fc[1]
        np.testing.assert_allclose(logits, _np(model(x[i : i + 1])[0]), rtol=1e-10)
        rel = np.zeros(2)
        rel[t[i]] = logits[t[i]]
        rel = _rule_step(h3, *fc, rel, rules[4])
        rel = _rule_step(h2, *mats[3], rel, rules[3])
        rel = _rule_step(h1, *mats[2], rel, rules[2])
        # the norm: LRP-0 on y = J z + beta with J = diag(gamma / sigma) @ center (sigma a constant)
        jac = (gamma / sigma)[:, None] * center
        rel = z1 * (jac.T @ (rel / (y + 1e-9 * np.where(y >= 0, 1.0, -1.0))))
        rel = _rule_step(h0, *mats[1], rel, rules[1])
        rel = _rule_step(a0, *mats[0], rel, rules[0])
        np.testing.assert_allclose(ours[i].numpy().reshape(-1), rel, rtol=1e-5, atol=1e-7 * np.abs(rel).max())
    info = describe_lrp_rules(model, x)
    assert info["canonized"] and info["norms_detached"] == ["gn"] and info["batchnorm_folded"] == []
    assert [r["role"] for r in info["layers"]] == ["input", "lower", "middle", "upper", "upper"]
    assert "GroupNorm" in info["layers"][1]["note"] and info["layers"][1]["rule"] == LRP_RULES["middle"].label


def test_detached_scale_norm_is_the_norm_forward_with_a_constant_scale():
    torch.manual_seed(5)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for norm in (nn.GroupNorm(3, 6), nn.InstanceNorm3d(6, affine=True), nn.GroupNorm(1, 6, affine=False)):
        norm = norm.double()
        if getattr(norm, "weight", None) is not None:
            with torch.no_grad():
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_()
        mine = L.DetachedScaleNorm.from_norm(norm)
        torch.testing.assert_close(mine(x), norm(x), rtol=1e-12, atol=1e-12)
        # the backward: the scale is a constant, the centering is not
        groups = mine.groups
        xr = x.detach().reshape(2, groups, -1)
        sigma = (xr.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        w = torch.randn_like(x)
        (g,) = torch.autograd.grad((mine(x) * w).sum(), x)
        weight = norm.weight if norm.affine else torch.ones(6, dtype=torch.float64)
        ww = (w * weight.reshape(1, 6, 1, 1, 1)).reshape(2, groups, -1)
        expected = ((ww - ww.mean(-1, keepdim=True)) / sigma).reshape(x.shape)
        torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("name,spatial_dims", [("unet_encoder", 2), ("unet_encoder", 3), ("resnet18", 2),
                                               ("resnet18", 3)])
def test_relevance_is_conserved_through_per_sample_norms(name, spatial_dims, norm):
    """GroupNorm / InstanceNorm with zero bias (their mean subtraction is linear): the input relevance sums to
    the target logit; without holding the scale constant it does not."""
    torch.manual_seed(2)
    kw = {"features": 4} if name == "unet_encoder" else {"features": 4, "stem": "small"}
    model = create_model(name, spatial_dims=spatial_dims, norm=norm, **kw).double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=torch.float64))
        model.fc.bias.zero_()
    size = 32 if name == "unet_encoder" else 16  # more than one position at the last stage
    x = torch.randn(2, 1, *([size] * spatial_dims), dtype=torch.float64)
    t = torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rel = lrp_attribution(model, x, target=t, rules=CONSERVING).double()
    with torch.no_grad():
        logit = model(x).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-5, atol=1e-6 * float(logit.abs().max()))
    info = describe_lrp_rules(model, x)
    n_norms = sum(isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)) for m in model.modules())
    assert info["canonized"] and len(info["norms_detached"]) == n_norms and not info["batchnorm_folded"]
    if spatial_dims == 2:  # the gradient through the statistics breaks conservation
        import unittest.mock

        with unittest.mock.patch.object(L, "detach_norm_scales", lambda model: []):
            plain = lrp_attribution(model, x, target=t, rules=CONSERVING).double()
        gap = (plain.flatten(1).sum(1) - logit).abs() / logit.abs()
        assert float(gap.max()) > 0.05


# ---------------------------------------------------------------- conservation on the package's backbones
def _backbone(name: str, spatial_dims: int, *, zero_shift: bool) -> nn.Module:
    torch.manual_seed(2)
    kw = {"features": 4} if name == "unet_encoder" else {"features": 4, "stem": "small"}
    model = create_model(name, spatial_dims=spatial_dims, **kw).double().eval()
    _randomize_bn(model, zero_shift=zero_shift)
    if zero_shift:
        with torch.no_grad():
            model.fc.bias.zero_()
    return model


@pytest.mark.parametrize("name,spatial_dims", [("unet_encoder", 2), ("unet_encoder", 3), ("resnet18", 2),
                                               ("resnet18", 3), ("resnet50", 2)])
def test_relevance_is_conserved_without_biases(name, spatial_dims):
    """Bias-free (BatchNorm without shift, head without bias), epsilons ~0, gamma in the lower third: the
    input relevance sums to the target logit -- through folded BatchNorm, max-pooling and residual sums."""
    model = _backbone(name, spatial_dims, zero_shift=True)
    size = 16 if spatial_dims == 2 or name == "unet_encoder" else 8  # the U-Net halves the grid 4 times
    x = torch.randn(2, 1, *([size] * spatial_dims), dtype=torch.float64)
    t = torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # canonization must succeed
        rel = lrp_attribution(model, x, target=t, rules=CONSERVING).double()
    with torch.no_grad():
        logit = model(x).gather(1, t[:, None]).squeeze(1)
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-5, atol=1e-6 * float(logit.abs().max()))
    info = describe_lrp_rules(model, x)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert info["canonized"] and len(info["batchnorm_folded"]) == n_bn
    assert bool(info["residual_sums"]) == name.startswith("resnet")
    if name.startswith("resnet"):
        assert any(r["note"] for r in info["layers"])  # the convs feeding a sum do not take gamma


def test_plain_residual_sums_break_conservation(monkeypatch):
    """Without splitting the sums, the relevance of every residual sum goes to both branches."""
    model = _backbone("resnet18", 2, zero_shift=True)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    t = torch.tensor([0, 1])
    with torch.no_grad():
        logit = model(x).gather(1, t[:, None]).squeeze(1)
    monkeypatch.setattr(L, "split_residual_sums", lambda model, example: [])
    rel = lrp_attribution(model, x, target=t, rules=CONSERVING).double()
    gap = (rel.flatten(1).sum(1) - logit).abs() / logit.abs()
    assert float(gap.min()) > 0.05


# ---------------------------------------------------------------- not Input x Gradient any more
@pytest.mark.parametrize("name", ["unet_encoder", "resnet18"])
def test_lrp_is_not_input_x_gradient(name):
    model = _backbone(name, 2, zero_shift=False).float()
    x = torch.randn(4, 1, 32, 32)
    t = torch.tensor([0, 1, 0, 1])
    lrp = pixel_attribution(model, x, method="lrp", target=t)
    ixg = pixel_attribution(model, x, method="input_x_gradient", target=t)
    for i in range(4):
        corr = float(torch.corrcoef(torch.stack([lrp[i].flatten(), ixg[i].flatten()]))[0, 1])
        assert corr < 0.9, (i, corr)
    maps = explain(model, x, method="lrp", target=t), explain(model, x, method="ixg", target=t)
    assert float((maps[0] - maps[1]).norm() / maps[1].norm()) > 0.1
    # LRP-0 everywhere (canonized) is Input x Gradient: the difference comes from the rules
    zero = lrp_attribution(model, x, target=t, rules=ALL_ZERO)
    torch.testing.assert_close(zero, ixg, rtol=1e-3, atol=1e-5 * float(ixg.abs().max()))


# ---------------------------------------------------------------- the caller's model, the fallback
def _state(model: nn.Module) -> dict:
    return {
        "sd": {k: v.clone() for k, v in model.state_dict().items()},
        "types": [type(m) for m in model.modules()],
        "forward": [("forward" in vars(m)) for m in model.modules()],
        "rules": [hasattr(m, "rule") for m in model.modules()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


@pytest.mark.parametrize("name,spatial_dims", [("unet_encoder", 2), ("resnet18", 2), ("resnet18", 3)])
def test_callers_model_is_not_mutated(name, spatial_dims):
    model = _backbone(name, spatial_dims, zero_shift=False).float()
    model.train()
    x = torch.randn(2, 1, *([16 if spatial_dims == 2 else 8] * spatial_dims))
    before = _state(model)
    lrp_attribution(model, x, target=torch.tensor([0, 1]))
    describe_lrp_rules(model, x)
    after = _state(model)
    assert before["types"] == after["types"] and before["forward"] == after["forward"]
    assert before["rules"] == after["rules"] and before["hooks"] == after["hooks"]
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    for k in before["sd"]:
        assert torch.equal(before["sd"][k], after["sd"][k]), k


class _ConvReadTwice(nn.Module):
    """The conv's output feeds its BatchNorm *and* a functional sum: folding would change the function."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):  # noqa: ANN001, ANN201
        z = self.conv(x)
        return self.fc((self.relu(self.bn(z)) + z).mean((2, 3)))


def test_a_canonization_that_changes_the_logits_falls_back():
    torch.manual_seed(3)
    model = _ConvReadTwice().eval()
    _randomize_bn(model)
    x = torch.randn(2, 1, 6, 6)
    with pytest.warns(RuntimeWarning, match="does not reproduce the model's logits"):
        info = describe_lrp_rules(model, x)
    assert not info["canonized"] and info["batchnorm_folded"] == []
    with pytest.warns(RuntimeWarning):
        rel = lrp_attribution(model, x, target=torch.tensor([0, 1]))
    assert torch.isfinite(rel).all()


def test_fold_batchnorm_keeps_the_function():
    import copy

    model = _backbone("resnet18", 3, zero_shift=False).float()
    x = torch.randn(2, 1, 8, 8, 8)
    clone = copy.deepcopy(model)
    pairs = L.fold_batchnorm(clone, x[:1])
    assert len(pairs) == 20 and not any(isinstance(m, nn.BatchNorm3d) for m in clone.modules())
    torch.testing.assert_close(clone(x), model(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the composite as data
def test_depth_thirds_and_rules_as_data():
    assert [depth_third(i, 11) for i in range(11)] == ["lower"] * 4 + ["middle"] * 3 + ["upper"] * 4
    assert [depth_third(i, 3) for i in range(3)] == ["lower", "middle", "upper"]
    assert depth_third(0, 1) == "upper"
    with pytest.raises(ValueError, match="layer index 3 out of range for 3"):
        depth_third(3, 3)
    assert set(LRP_RULES) == {"input", "lower", "middle", "upper"}
    assert LRP_RULES["lower"] == LRPRule("gamma", 0.25) and LRP_RULES["upper"].label == "LRP-0 (epsilon=1e-9)"
    assert "gamma (gamma=0.25)" in LRP_DESCRIPTION and "BatchNorm folded" in LRP_DESCRIPTION
    with pytest.raises(TypeError):
        LRP_RULES["lower"] = Z  # read-only
    with pytest.raises(ValueError, match="unknown LRP rule kind 'beta'"):
        LRPRule("beta")
    with pytest.raises(ValueError, match="needs a value >= 0, got -1"):
        LRPRule("epsilon", -1)
    with pytest.raises(ValueError, match="rules must map each of"):
        lrp_attribution(Chain().eval(), torch.randn(1, 1, 5, 5), target=torch.tensor([0]), rules={"lower": G})


def test_describe_the_unet_encoder():
    model = _backbone("unet_encoder", 2, zero_shift=False).float()
    info = describe_lrp_rules(model, torch.randn(1, 1, 32, 32))
    json.dumps(info)
    roles = [r["role"] for r in info["layers"]]
    assert roles == ["input"] + ["lower"] * 3 + ["middle"] * 3 + ["upper"] * 4
    assert info["layers"][-1]["layer"] == "fc" and not any(r["note"] for r in info["layers"])
    assert len(info["batchnorm_folded"]) == 10 and info["residual_sums"] == [] and info["canonized"]
    assert info["rules"]["lower"] == "gamma (gamma=0.25)" and info["description"] == LRP_DESCRIPTION


# ---------------------------------------------------------------- gated models: the signal-take-all gate rule
GATED_CASES = [(v, None) for v in ("tau_k", "tau_l", "unconstrained", "dual", "kl", "kl_reverse")] + [
    (v, mode) for v in ("exact", "multilevel") for mode in ("two_pass", "pool", "hybrid")
]


def _gated(name: str, spatial_dims: int, variant: str, mode: str | None, *, size: int) -> nn.Module:
    """A gated model, bias-free (BatchNorm without shift, heads without bias), with peaked maps (gates' ``u``
    scaled up) and a dual witness away from zero, in float64."""
    torch.manual_seed(2)
    kw = {"features": 4} if name == "unet_encoder" else {"features": 4, "stem": "small"}
    if mode is not None:
        kw["exact_mode"] = mode
    if variant == "dual":
        kw["img_size"] = size
    model = create_model(name, variant=variant, spatial_dims=spatial_dims, **kw).double().eval()
    _randomize_bn(model, zero_shift=True)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for head in ("fc", "attn_fc"):
            if hasattr(model, head):
                getattr(model, head).bias.zero_()
        for gate in model.gates.values():
            gate.u.weight.mul_(20.0)
        if model.witness is not None and hasattr(model.witness, "lam"):
            model.witness.lam.copy_(0.5 * torch.randn(model.witness.lam.shape, generator=g, dtype=torch.float64))
    return model


def _uniform(log_w: torch.Tensor) -> bool:
    return bool(torch.allclose(log_w.exp(), torch.full_like(log_w, 1.0 / log_w[0].numel()), rtol=0.05))


@pytest.mark.parametrize("variant,mode", GATED_CASES)
@pytest.mark.parametrize("name,spatial_dims", [("unet_encoder", 2), ("unet_encoder", 3), ("resnet18", 2),
                                               ("resnet18", 3)])
def test_relevance_is_conserved_through_the_gates(name, spatial_dims, variant, mode):
    """Bias-free, epsilons ~0, gamma in the lower third: on every gated variant and exact_mode the input relevance
    sums to the target logit -- through every product of features and map (the map a constant weighting), the
    attention-pooling head and the hybrid's sum of two heads."""
    size = 32 if spatial_dims == 2 else 16
    model = _gated(name, spatial_dims, variant, mode, size=size)
    x = torch.randn(2, 1, *([size] * spatial_dims), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0, 1])
    with torch.no_grad():
        out = model.forward_with_attention(x)
    logit = out.logits.gather(1, t[:, None]).squeeze(1)
    weights = out.mu or out.tau
    assert not any(_uniform(torch.log(w)) for w in weights.values())  # the gates do weight the features
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # canonization must succeed
        rel = lrp_attribution(model, x, target=t, rules=CONSERVING).double()
    torch.testing.assert_close(rel.flatten(1).sum(1), logit, rtol=1e-5, atol=1e-6 * float(logit.abs().max()))


@pytest.mark.parametrize("variant,mode", GATED_CASES)
def test_every_product_of_features_and_map_is_a_feature_weighting(variant, mode):
    """Holding every FeatureWeighting's map constant cuts every path from the gates (and the witness) to the
    logits: no product of features and map is written outside one. The model itself still differentiates
    through the gates (what the gradient explainers see)."""
    import copy

    from dualattn.models import FeatureWeighting

    model = _gated("unet_encoder", 2, variant, mode, size=32)
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64)
    calls: list[str] = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: calls.append(n))
               for n, m in model.named_modules() if isinstance(m, FeatureWeighting)]
    model(x)
    for h in handles:
        h.remove()
    blocks = model.attention_blocks
    expected = {None: ["weighting"], "two_pass": ["weighting"], "pool": ["attn_pool"],
                "hybrid": ["attn_pool", "weighting"]}[mode]
    assert calls == [f"{kind}.{b}" for kind in expected for b in blocks]
    map_params = [p for n, p in model.named_parameters() if n.startswith(("gates.", "witness."))]
    assert map_params
    grads = torch.autograd.grad(model(x).sum(), map_params, allow_unused=True)
    assert all(g is not None for g in grads)
    held = copy.deepcopy(model)
    names = L.hold_maps_constant(held)
    assert sorted(names) == sorted(calls)
    assert not any(isinstance(m, FeatureWeighting) for m in held.modules())
    held_params = [p for n, p in held.named_parameters() if n.startswith(("gates.", "witness."))]
    with torch.no_grad():
        assert torch.equal(held(x), model(x))
    assert all(g is None for g in torch.autograd.grad(held(x).sum(), held_params, allow_unused=True))


def test_constant_map_weighting_is_the_weighting_with_the_map_detached():
    from dualattn.models import FeatureWeighting

    torch.manual_seed(6)
    v = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    log_w = torch.randn(2, 4, 5, 6).flatten(1).log_softmax(1).view(2, 4, 5, 6).requires_grad_(True)
    for pool in (False, True):
        mine, theirs = L.ConstantMapWeighting.from_weighting(FeatureWeighting(pool=pool)), FeatureWeighting(pool=pool)
        assert mine.pool is pool
        out = mine(v, log_w)
        assert torch.equal(out, theirs(v, log_w))
        assert out.shape == ((2, 3) if pool else (2, 3, 4, 5, 6))
        gv, gw = torch.autograd.grad(out.sum(), (v, log_w), allow_unused=True)
        assert gw is None
        scale = 1.0 if pool else 4 * 5 * 6
        torch.testing.assert_close(gv, (scale * log_w.exp()).unsqueeze(1).expand_as(v))


def test_describe_reports_the_gate_rule():
    model = _gated("unet_encoder", 2, "dual", None, size=32).float()
    info = describe_lrp_rules(model, torch.randn(1, 1, 32, 32))
    json.dumps(info)
    assert info["maps_held_constant"] == ["weighting.block3", "weighting.block4"]
    assert info["gate_rule"] == L.GATE_RULE and L.GATE_RULE in info["description"]
    assert "signal-take-all" in L.GATE_RULE and "signal-take-all" in LRP_DESCRIPTION
    off = [r["layer"] for r in info["layers"] if not r["gets_relevance"]]
    assert off == ["gates.block3.U", "gates.block3.u", "gates.block4.U", "gates.block4.u"]
    two_pass = describe_lrp_rules(_gated("unet_encoder", 2, "exact", "two_pass", size=32).float(),
                                  torch.randn(1, 1, 32, 32))
    off = {r["layer"] for r in two_pass["layers"] if not r["gets_relevance"]}
    # the first pass's block4 (copies.0) only computes the coarse gate's map
    assert off == {"gates.block3.U", "gates.block3.u", "gates.block4.U", "gates.block4.u",
                   "backbone.stages.block4.1.copies.0", "backbone.stages.block4.4.copies.0"}
    base = describe_lrp_rules(_backbone("unet_encoder", 2, zero_shift=False).float(), torch.randn(1, 1, 32, 32))
    assert base["maps_held_constant"] == [] and all(r["gets_relevance"] for r in base["layers"])


def test_the_gate_rule_leaves_the_baseline_alone(monkeypatch):
    from dualattn.models import FeatureWeighting

    model = _backbone("unet_encoder", 2, zero_shift=False).float()
    assert not any(isinstance(m, FeatureWeighting) for m in model.modules())
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([0, 1])
    ours = lrp_attribution(model, x, target=t)
    monkeypatch.setattr(L, "hold_maps_constant", lambda model: [])
    assert torch.equal(ours, lrp_attribution(model, x, target=t))


@pytest.mark.parametrize("variant,mode", GATED_CASES)
def test_lrp_on_gated_models_batched_equals_one_by_one(variant, mode):
    model = _gated("unet_encoder", 2, variant, mode, size=32).float()
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0, 1, 1])
    x1 = x.clone()
    batched = explain(model, x, method="lrp", target=t)
    single = torch.cat([explain(model, x[i : i + 1], method="lrp", target=t[i : i + 1]) for i in range(3)])
    scale = single.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(batched / scale, single / scale, atol=2e-5, rtol=1e-4)
    assert torch.equal(x, x1)


@pytest.mark.parametrize("variant,mode", [("dual", None), ("exact", "two_pass"), ("exact", "hybrid"),
                                          ("multilevel", "pool")])
def test_callers_gated_model_is_not_mutated(variant, mode):
    from dualattn.models import FeatureWeighting

    model = _gated("unet_encoder", 2, variant, mode, size=32).float()
    model.train()
    x = torch.randn(2, 1, 32, 32)
    before = _state(model)
    lrp_attribution(model, x, target=torch.tensor([0, 1]))
    describe_lrp_rules(model, x)
    after = _state(model)
    assert before["types"] == after["types"] and before["forward"] == after["forward"]
    assert FeatureWeighting in after["types"] and L.ConstantMapWeighting not in after["types"]
    assert before["rules"] == after["rules"] and before["hooks"] == after["hooks"]
    assert before["training"] == after["training"] and before["requires_grad"] == after["requires_grad"]
    for k in before["sd"]:
        assert torch.equal(before["sd"][k], after["sd"][k]), k


def test_gradient_explainers_still_differentiate_through_the_gates():
    """Only LRP's private copy holds the maps constant: Input x Gradient is the real model's gradient, gate path
    included (it differs from the gradient with the maps held constant)."""
    import copy

    model = _gated("unet_encoder", 2, "dual", None, size=32).float()
    x = torch.randn(2, 1, 32, 32)
    t = torch.tensor([0, 1])
    ixg = pixel_attribution(model, x, method="input_x_gradient", target=t)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr).gather(1, t[:, None]).sum(), xr)
    torch.testing.assert_close(ixg, x * g)
    held = copy.deepcopy(model)
    L.hold_maps_constant(held)
    xr = x.clone().requires_grad_(True)
    (g_held,) = torch.autograd.grad(held(xr).gather(1, t[:, None]).sum(), xr)
    assert float((g - g_held).norm() / g.norm()) > 0.01


@pytest.mark.parametrize("variant", ["dual", "exact", "multilevel"])
def test_gated_backbones_take_the_baselines_composite(variant):
    """Depth thirds count only the layers relevance reaches: the gates' convolutions (which compute a map held
    constant) take no role, so every backbone layer of a gated model has the role it has in the baseline."""
    from dualattn.explain.lrp import describe_lrp_rules
    from dualattn.models import create_model

    torch.manual_seed(0)
    x = torch.randn(1, 4, 32, 32)
    base = describe_lrp_rules(create_model("unet_encoder", variant="baseline", in_channels=4, features=4).eval(), x)
    kw = {"img_size": 32} if variant == "dual" else {}
    gated = describe_lrp_rules(create_model("unet_encoder", variant=variant, in_channels=4, features=4, **kw).eval(), x)
    import re

    base_roles = {r["layer"]: r["role"] for r in base["layers"]}
    # a layer run twice (exact's two passes) is split into copies; the one relevance reaches keeps the role
    for r in gated["layers"]:
        r["layer"] = re.sub(r"\.copies\.\d+$", "", r["layer"])
    shared = [r for r in gated["layers"] if r["layer"] in base_roles and r["gets_relevance"]]
    assert len(shared) >= len(base_roles) - 1  # every backbone layer (and the head)
    assert all(r["role"] == base_roles[r["layer"]] for r in shared), [
        (r["layer"], r["role"], base_roles[r["layer"]]) for r in shared if r["role"] != base_roles[r["layer"]]]
    assert all(r["role"] == "none" for r in gated["layers"] if not r["gets_relevance"])
