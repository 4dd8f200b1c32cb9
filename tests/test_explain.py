"""dualattn.explain: every method against an independent reference, invariances, caller's model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dualattn.explain import explain, list_methods, method_family, minmax_per_channel, normalize_and_pool


@pytest.fixture(autouse=True)
def _one_thread():
    # the machine is shared: one intra-op thread avoids oversubscription (conftest restores it)
    torch.set_num_threads(1)


# ---------------------------------------------------------------- stand-in models
class TinyCNN(nn.Module):
    """Two conv stages (block3 fine, block4 coarse), global pooling, linear head; optionally one
    ReLU module reused by both stages (what DeepLIFT and LRP must be protected from)."""

    def __init__(self, *, spatial_dims: int = 2, in_channels: int = 2, reuse_relu: bool = False) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        act1 = nn.ReLU()
        act2 = act1 if reuse_relu else nn.ReLU()
        self.stage3 = nn.Sequential(conv(in_channels, 4, 3, padding=1, stride=2), act1)
        self.stage4 = nn.Sequential(conv(4, 6, 3, padding=1, stride=2), act2)
        self.pool = pool(1)
        self.fc = nn.Linear(6, 2)
        self.num_classes = 2

    def forward(self, x):
        return self.fc(self.pool(self.stage4(self.stage3(x))).flatten(1))

    def feature_layers(self):
        return {"block3": self.stage3, "block4": self.stage4}


class LinearModel(nn.Module):
    """logits = W x (no bias): IG, LRP-epsilon and IxG all equal x * W[target] exactly."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.lin = nn.Linear(in_features, 2, bias=False)
        self.num_classes = 2

    def forward(self, x):
        return self.lin(self.flat(x))


def _unet(variant: str = "exact", *, spatial_dims: int = 2, in_channels: int = 2, **kw):
    from dualattn.models import create_model

    torch.manual_seed(0)
    if variant == "dual":
        kw.setdefault("img_size", 32 if spatial_dims == 2 else 16)
    return create_model("unet_encoder", variant=variant, features=4, in_channels=in_channels,
                        spatial_dims=spatial_dims, **kw).eval()


# ---------------------------------------------------------------- pooling helpers
def test_minmax_and_pool_hand_computed():
    a = torch.tensor([[[[0.0, 2.0], [4.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]]]])  # (1, 2, 2, 2)
    mm = minmax_per_channel(a)
    torch.testing.assert_close(mm[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    torch.testing.assert_close(mm[0, 1], torch.zeros(2, 2))  # constant channel -> 0
    torch.testing.assert_close(normalize_and_pool(a, (1, 1)), torch.tensor([[[[1.75]]]]))


# ---------------------------------------------------------------- post-hoc vs references
def _manual_gradcam(model, x, layer, target, relu):
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    logits = model(x)
    h.remove()
    a = store["a"]
    g = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)[0]
    w = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)
    cam = (w * a).sum(1, keepdim=True)
    return (torch.relu(cam) if relu else cam).detach()


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("method", ["gradcam", "gradcam_norelu"])
def test_gradcam_equals_manual(method, spatial_dims):
    torch.manual_seed(1)
    model = TinyCNN(spatial_dims=spatial_dims).eval()
    x = torch.randn(3, 2, *([8] * spatial_dims))
    t = torch.tensor([0, 1, 1])
    for block in ("block3", "block4"):
        ours = explain(model, x, method=method, block=block, target=t)
        ref = _manual_gradcam(model, x, model.feature_layers()[block], t, relu=(method == "gradcam"))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_input_x_gradient_equals_manual():
    torch.manual_seed(2)
    model = TinyCNN().eval()
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    t = torch.tensor([1, 0])
    g = torch.autograd.grad(model(x).gather(1, t[:, None]).sum(), x)[0]
    ref = normalize_and_pool((x * g).detach(), (4, 4))
    torch.testing.assert_close(explain(model, x.detach(), method="input_x_gradient", target=t), ref)
    # block4's grid is 2x2
    assert explain(model, x.detach(), method="input_x_gradient", block="block4", target=t).shape == (2, 1, 2, 2)


@pytest.mark.parametrize("method", ["integrated_gradients", "lrp", "input_x_gradient", "deeplift"])
def test_linear_model_attributions_are_x_times_w(method):
    torch.manual_seed(3)
    model = LinearModel(2 * 6 * 6)
    x = torch.randn(3, 2, 6, 6)
    t = torch.tensor([0, 1, 0])
    w = model.lin.weight.detach()[t].reshape(3, 2, 6, 6)
    ref = normalize_and_pool(x * w, (3, 3))
    ours = explain(model, x, method=method, target=t, grid=(3, 3))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks:UserWarning")
@pytest.mark.parametrize("method", ["deeplift", "lrp"])
def test_reused_relu_is_split(method):
    """A ReLU module used twice gives the same attribution as separate ReLUs (Captum alone would not)."""
    torch.manual_seed(4)
    reused = TinyCNN(reuse_relu=True).eval()
    separate = TinyCNN(reuse_relu=False).eval()
    separate.load_state_dict(reused.state_dict())
    x = torch.randn(4, 2, 8, 8)
    t = torch.tensor([0, 1, 0, 1])
    torch.testing.assert_close(
        explain(reused, x, method=method, target=t), explain(separate, x, method=method, target=t)
    )
    # and separate ReLUs give Captum's own DeepLIFT / LRP result (LRP: the composite set by hand on the
    # three weight layers -- input: epsilon 0.25, middle: epsilon 0.25, upper: LRP-0; pooling LRP-0)
    from captum.attr import LRP, DeepLift
    from captum.attr._utils.lrp_rules import EpsilonRule

    ref_model = copy.deepcopy(separate)
    xr = x.clone().requires_grad_(True)
    if method == "deeplift":
        raw = DeepLift(ref_model).attribute(xr, baselines=torch.zeros_like(x), target=t)
    else:
        ref_model.stage3[0].rule = EpsilonRule(epsilon=0.25)
        ref_model.stage4[0].rule = EpsilonRule(epsilon=0.25)
        ref_model.fc.rule = EpsilonRule(epsilon=1e-9)
        ref_model.pool.rule = EpsilonRule(epsilon=1e-9)
        raw = LRP(ref_model).attribute(xr, target=t)
    torch.testing.assert_close(explain(separate, x, method=method, target=t), normalize_and_pool(raw.detach(), (4, 4)))


def test_target_defaults_to_prediction():
    torch.manual_seed(5)
    model = TinyCNN().eval()
    x = torch.randn(4, 2, 8, 8)
    pred = model(x).argmax(1)
    torch.testing.assert_close(explain(model, x, method="gradcam_norelu"), explain(model, x, method="gradcam_norelu", target=pred))
    with pytest.raises(ValueError, match="target"):
        explain(model, x, method="gradcam", target=[0, 1])
    with pytest.raises(ValueError, match="5"):
        explain(model, x, method="gradcam", target=5)


# ---------------------------------------------------------------- attention maps and cvx
def test_attention_methods_return_the_models_maps():
    x = torch.randn(2, 2, 32, 32)
    ex = _unet("exact")
    out = ex.forward_with_attention(x)
    for b in ("block3", "block4"):
        torch.testing.assert_close(explain(ex, x, method="exact", block=b)[:, 0], out.mu[b])
        torch.testing.assert_close(explain(ex, x, method="attention", block=b)[:, 0], out.mu[b])
    un = _unet("unconstrained")
    out = un.forward_with_attention(x)
    torch.testing.assert_close(explain(un, x, method="unconstrained", block="block4")[:, 0], out.tau["block4"])
    with pytest.raises(ValueError, match="unconstrained"):
        explain(un, x, method="exact")
    with pytest.raises(ValueError, match="block4"):
        explain(_unet("tau_l"), x, method="tau_l", block="block3")


def test_cvx_is_the_exact_projection_and_consistent():
    from dualattn.consistency import marginalize, project_exact

    x = torch.randn(3, 2, 32, 32)
    un = _unet("unconstrained")
    out = un.forward_with_attention(x)
    mk, ml = project_exact(out.tau["block3"].double(), out.tau["block4"].double())
    f = explain(un, x, method="cvx", block="block3")[:, 0]
    c = explain(un, x, method="cvx", block="block4")[:, 0]
    torch.testing.assert_close(f, mk.float())
    torch.testing.assert_close(c, ml.float())
    torch.testing.assert_close(marginalize(f.double(), c.shape[1:]), c.double(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(f.sum((1, 2)), torch.ones(3))


@pytest.mark.cvx
def test_cvx_closed_form_matches_solver():
    pytest.importorskip("cvxpy")
    x = torch.randn(1, 2, 16, 16)
    un = _unet("unconstrained")
    for b in ("block3", "block4"):
        closed = explain(un, x, method="cvx", block=b)
        solved = explain(un, x, method="cvx", block=b, solver="cvxpy")
        torch.testing.assert_close(closed, solved, atol=2e-5, rtol=1e-3)


def test_vit_maps_equal_the_models():
    from dualattn.models import create_model

    torch.manual_seed(0)
    vit = create_model("vit_tiny", img_size=16, patch_size=8, num_layers=2, hidden_size=16, mlp_dim=16,
                       num_heads=2).eval()
    x = torch.randn(2, 1, 16, 16)
    maps = vit.vit_attention_maps(x)
    torch.testing.assert_close(explain(vit, x, method="vit_attention")[:, 0], maps["last"])
    torch.testing.assert_close(explain(vit, x, method="vit_rollout")[:, 0], maps["rollout"])
    assert "vit_rollout" in list_methods(vit) and "gradcam" not in list_methods(vit)
    assert explain(vit, x, method="random").shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="ViT"):
        explain(_unet("baseline"), torch.randn(1, 2, 32, 32), method="vit_rollout")


# ---------------------------------------------------------------- references
def test_raw_channel_and_random():
    x = torch.randn(3, 2, 32, 32)
    model = _unet("baseline")
    raw = explain(model, x, method="raw_channel_1", block="block4")
    torch.testing.assert_close(raw, normalize_and_pool(x[:, 1:2], (4, 4)))
    r0 = explain(model, x, method="random")
    assert r0.shape == (3, 1, 8, 8) and float(r0.min()) >= 0 and float(r0.max()) < 1
    torch.testing.assert_close(r0, explain(model, x, method="random"))  # seeded
    assert not torch.equal(r0, explain(model, x, method="random", seed=1))
    with pytest.raises(ValueError, match="channel 2"):
        explain(model, x, method="raw_channel_2")


# ---------------------------------------------------------------- every method, invariances
def _all_methods(model, in_channels):
    return list_methods(model, in_channels=in_channels)


@pytest.mark.parametrize("variant,spatial_dims", [("exact", 2), ("dual", 2), ("exact", 3), ("multilevel", 3)])
def test_every_method_runs_2d_3d(variant, spatial_dims):
    model = _unet(variant, spatial_dims=spatial_dims)
    size = 32 if spatial_dims == 2 else 16
    x = torch.randn(2, 2, *([size] * spatial_dims))
    methods = _all_methods(model, 2)
    assert {"gradcam", "lrp", "deeplift", "integrated_gradients", "cvx", variant, "random"} <= set(methods)
    for method in methods:
        for block in ("block3", "block4"):
            kw = {"n_steps": 4} if method == "integrated_gradients" else {}
            m = explain(model, x, method=method, block=block, **kw)
            grid = model.forward_with_attention(x).tau[block].shape[1:]
            assert m.shape == (2, 1, *grid), (method, block)
            assert torch.isfinite(m).all(), (method, block)


def _snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()
        ],
        "attrs": [sorted(k for k in vars(m) if k in ("rule", "activations", "activation")) for m in model.modules()],
        "modules": [type(m) for m in model.modules()],
    }


def _assert_same(a, b):
    assert a["training"] == b["training"]
    assert a["requires_grad"] == b["requires_grad"]
    assert a["hooks"] == b["hooks"]
    assert a["attrs"] == b["attrs"]
    assert a["modules"] == b["modules"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for ga, gb in zip(a["grad"], b["grad"]):
        assert (ga is None and gb is None) or torch.equal(ga, gb)


def test_callers_model_untouched():
    model = _unet("exact")
    model.train()
    model.backbone.stages["block1"].eval()  # mixed modes must come back as they were
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    x = torch.randn(2, 2, 32, 32)
    before = _snapshot(model)
    for method in _all_methods(model, 2):
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        explain(model, x, method=method, block="block3", **kw)
        _assert_same(before, _snapshot(model))


def test_batched_equals_one_by_one():
    model = _unet("exact")
    x = torch.randn(3, 2, 32, 32)
    x1 = x.clone()
    for method in _all_methods(model, 2):
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        batched = explain(model, x, method=method, block="block3", target=torch.tensor([0, 1, 1]), **kw)
        single = torch.cat([explain(model, x[i : i + 1], method=method, block="block3", target=[t], **kw)
                            for i, t in enumerate((0, 1, 1))])
        scale = single.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(batched / scale, single / scale, atol=2e-5, rtol=1e-4, msg=method)
    assert torch.equal(x, x1)  # inputs not mutated


def test_changing_one_image_leaves_the_others():
    model = _unet("exact")
    x = torch.randn(2, 2, 32, 32)
    y = x.clone()
    y[0] = torch.randn(2, 32, 32)
    for method in ("exact", "gradcam", "lrp"):
        torch.testing.assert_close(explain(model, x, method=method, target=[0, 1])[1],
                                   explain(model, y, method=method, target=[0, 1])[1], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- errors and listing
def test_errors_and_listing():
    model = _unet("exact")
    x = torch.randn(1, 2, 32, 32)
    with pytest.raises(ValueError, match="nope"):
        explain(model, x, method="nope")
    with pytest.raises(ValueError, match="n_steps"):
        explain(model, x, method="gradcam", n_steps=3)
    with pytest.raises(ValueError, match="images"):
        explain(model, torch.randn(2, 32, 32), method="exact")
    with pytest.raises(ValueError, match="block9"):
        explain(model, x, method="gradcam", block="block9")
    assert method_family("raw_channel_3") == "control" and method_family("cvx") == "cvx"
    names = list_methods(in_channels=2)
    assert {"tau_k", "exact", "cvx", "gradcam_norelu", "vit_rollout", "raw_channel_1", "random"} <= set(names)
    assert "cvx" not in list_methods(_unet("baseline"))


def test_vit_methods_3d():
    from dualattn.models import create_model

    torch.manual_seed(0)
    vit = create_model("vit_tiny", spatial_dims=3, img_size=16, patch_size=8, num_layers=2, hidden_size=16,
                       mlp_dim=16, num_heads=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    for method in list_methods(vit):
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        m = explain(vit, x, method=method, **kw)
        assert m.shape == (2, 1, 2, 2, 2) and torch.isfinite(m).all(), method


def test_aliases():
    model = TinyCNN().eval()
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(explain(model, x, method="ixg", target=0), explain(model, x, method="input_x_gradient", target=0))
    torch.testing.assert_close(explain(model, x, method="ig", target=0, n_steps=4),
                               explain(model, x, method="integrated_gradients", target=0, n_steps=4))


def test_vit_model_untouched():
    from dualattn.models import create_model

    torch.manual_seed(0)
    vit = create_model("vit_tiny", img_size=16, patch_size=8, num_layers=2, hidden_size=16, mlp_dim=16, num_heads=2)
    vit.train()
    x = torch.randn(2, 1, 16, 16)
    before = _snapshot(vit)
    for method in list_methods(vit):
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        explain(vit, x, method=method, **kw)
        _assert_same(before, _snapshot(vit))
