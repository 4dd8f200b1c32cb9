"""dualattn.models: every backbone x variant x (2D, 3D), maps, consistency, the sharpness term.

References are independent: the closed form of the exact projection written as a naive loop, the
consistency module's reparameterization, torchvision's published ResNet parameter counts, a hand
count of the U-Net encoder, a hand-written GradCAM, DeepLIFT's summation-to-delta property.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from dualattn.models import (
    CNN_VARIANTS,
    GATED_BLOCKS,
    PAPER_ALPHA,
    PENALTY_VARIANTS,
    count_parameters,
    create_model,
    list_models,
    list_variants,
)
from dualattn.models.base import normalized_entropy

CNNS = {"unet_encoder": 4, "resnet18": 4, "resnet50": 2}  # backbone -> tiny width for tests
PENALIZED = {"dual", "kl", "kl_reverse"}
WITH_MU = {"dual", "exact", "multilevel"}


def _size(name: str, spatial_dims: int) -> int:
    if name == "unet_encoder" or spatial_dims == 3:
        return 32 if spatial_dims == 2 else 16
    return 64


def _make(name: str, variant: str, spatial_dims: int = 2, **kw):
    size = _size(name, spatial_dims)
    kw.setdefault("img_size", size)
    if name.startswith("resnet") and spatial_dims == 3:
        kw.setdefault("stem", "small")  # 16^3 -> block3 4^3, block4 2^3 (the ImageNet stem is tested in 2D)
    model = create_model(name, variant=variant, features=CNNS[name], spatial_dims=spatial_dims, **kw)
    x = torch.randn(3, 1, *(size,) * spatial_dims, generator=torch.Generator().manual_seed(1))
    return model, x


def _assert_distribution(m: torch.Tensor) -> None:
    flat = m.flatten(1)
    assert torch.all(flat >= 0)
    torch.testing.assert_close(flat.sum(1), torch.ones(flat.shape[0]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- registry


def test_registry_lists_and_rejects_unknown_names():
    assert {"unet_encoder", "resnet18", "resnet50", "vit_b16", "vit_small", "vit_tiny"} <= set(list_models())
    assert list_variants() == list(CNN_VARIANTS) == list(GATED_BLOCKS)
    assert list_variants("vit_small") == ["baseline"]
    with pytest.raises(ValueError, match="unet_encoder"):
        create_model("unet")
    with pytest.raises(ValueError, match="multilevel"):
        create_model("resnet18", variant="exactly")
    with pytest.raises(ValueError, match="baseline"):
        create_model("vit_tiny", variant="dual")
    with pytest.raises(ValueError, match="spatial_dims=4"):
        create_model("unet_encoder", spatial_dims=4)
    with pytest.raises(ValueError, match="witness"):
        create_model("unet_encoder", variant="dual", witness="local", img_size=32)
    with pytest.raises(ValueError, match="img_size"):
        create_model("unet_encoder", variant="dual")  # the global witness needs the grid
    with pytest.raises(ValueError, match="features"):
        create_model("unet_encoder", features=0)
    with pytest.raises(ValueError, match="alpha"):
        create_model("unet_encoder", variant="kl", alpha=-1.0)


def test_create_model_alone_builds_the_papers_gate_and_alpha():
    """Models hold architecture only: no recipe is applied by create_model."""
    assert PAPER_ALPHA == 10.0 and set(PENALTY_VARIANTS) == {"dual", "kl", "kl_reverse"}
    for variant in PENALTY_VARIANTS:
        model = create_model("unet_encoder", variant=variant, features=2, img_size=32)
        assert model.alpha == PAPER_ALPHA and model.entropy_weight == 0.0 and model.attention_area is None
        assert all(g.scale == 1.0 for g in model.gates.values())
        assert all(float(g.u.weight.abs().sum()) > 0 for g in model.gates.values())  # not zero-initialised


# --------------------------------------------------------------------- every backbone x variant


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("variant", CNN_VARIANTS)
@pytest.mark.parametrize("name", list(CNNS))
def test_forward_backward_maps(name, variant, spatial_dims):
    torch.manual_seed(0)
    model, x = _make(name, variant, spatial_dims)
    out = model.forward_with_attention(x)
    assert out.logits.shape == (3, 2)
    assert set(out.tau) == set(GATED_BLOCKS[variant]) == set(model.attention_blocks)
    assert set(out.mu) == (set(GATED_BLOCKS[variant]) if variant in WITH_MU else set())
    grids = model.backbone.grid_shapes(x.shape[2:])
    for block, tau in out.tau.items():
        assert tau.shape == (3, *grids[block])
        _assert_distribution(tau)
    for mu in out.mu.values():
        _assert_distribution(mu)
    assert out.penalty.dim() == 0
    if variant in PENALIZED:
        assert out.penalty.item() >= -1e-6
    else:
        assert out.penalty.item() == 0.0
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1, 1])) + out.penalty
    assert torch.isfinite(loss)
    loss.backward()
    for p in model.gate_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate_parameters()) or not model.attention_blocks
    # forward() returns the same logits, nothing else
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_with_attention(x).logits)


def _naive_exact(tau_f: np.ndarray, tau_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of Eq. 4 for one sample, by loops: mu_l ∝ sqrt(tau_l * T), mu_k = tau_k * mu_l / T."""
    fh, fw = tau_f.shape
    ch, cw = tau_c.shape
    bh, bw = fh // ch, fw // cw
    t = np.zeros((ch, cw))
    for i in range(fh):
        for j in range(fw):
            t[i // bh, j // bw] += tau_f[i, j]
    mu_c = np.sqrt(tau_c * t)
    mu_c /= mu_c.sum()
    mu_f = np.zeros_like(tau_f)
    for i in range(fh):
        for j in range(fw):
            mu_f[i, j] = tau_f[i, j] * mu_c[i // bh, j // bw] / t[i // bh, j // bw]
    return mu_f, mu_c


def _marginal(fine: torch.Tensor, coarse_shape) -> torch.Tensor:
    factors = [f // c for f, c in zip(fine.shape[1:], coarse_shape)]
    pool = F.avg_pool2d if fine.dim() == 3 else F.avg_pool3d
    return pool(fine.unsqueeze(1).double(), factors).squeeze(1) * math.prod(factors)


@pytest.mark.parametrize("exact_mode", ["two_pass", "pool", "hybrid"])
@pytest.mark.parametrize("name", ["unet_encoder", "resnet18"])
def test_exact_maps_are_the_closed_form_and_consistent(name, exact_mode):
    torch.manual_seed(0)
    model, x = _make(name, "exact", exact_mode=exact_mode)
    with torch.no_grad():
        for gate in model.gates.values():  # sharpen the gates so the check is not trivially uniform
            gate.u.weight.mul_(30.0)
        out = model.forward_with_attention(x)
    mu_k, mu_l = out.mu["block3"], out.mu["block4"]
    torch.testing.assert_close(_marginal(mu_k, mu_l.shape[1:]), mu_l.double(), atol=1e-6, rtol=0)
    for b in range(x.shape[0]):
        ref_f, ref_c = _naive_exact(out.tau["block3"][b].double().numpy(), out.tau["block4"][b].double().numpy())
        np.testing.assert_allclose(mu_k[b].numpy(), ref_f, atol=1e-6)
        np.testing.assert_allclose(mu_l[b].numpy(), ref_c, atol=1e-6)


def test_multilevel_maps_are_pairwise_consistent_and_match_chain_projection():
    from dualattn.consistency import project_exact_chain

    torch.manual_seed(0)
    model, x = _make("unet_encoder", "multilevel")
    with torch.no_grad():
        for gate in model.gates.values():
            gate.u.weight.mul_(30.0)
        out = model.forward_with_attention(x)
    blocks = ["block2", "block3", "block4"]
    for fine, coarse in zip(blocks[:-1], blocks[1:]):
        torch.testing.assert_close(
            _marginal(out.mu[fine], out.mu[coarse].shape[1:]), out.mu[coarse].double(), atol=1e-6, rtol=0
        )
    ref = project_exact_chain([out.tau[b].double() for b in blocks])
    for b, r in zip(blocks, ref):
        torch.testing.assert_close(out.mu[b].double(), r, atol=1e-6, rtol=0)


@pytest.mark.parametrize("witness", ["global", "amortized"])
def test_dual_maps_are_the_reparameterization_and_penalty_is_eq6(witness):
    from dualattn.consistency import dual_penalty, reparameterize

    torch.manual_seed(0)
    model, x = _make("unet_encoder", "dual", witness=witness, alpha=10.0)
    with torch.no_grad():
        if witness == "global":
            model.witness.lam.normal_()
        out = model.forward_with_attention(x)
        feats = {}
        hooks = [model.backbone.stages["block3"].register_forward_hook(lambda m, i, o: feats.setdefault("v", o))]
        model.forward_with_attention(x)
        hooks[0].remove()
        coarse = out.tau["block4"].shape[1:]
        if witness == "global":
            lam = model.witness.lam.expand(x.shape[0], *coarse)
        else:
            lam = model.witness(F.adaptive_avg_pool2d(feats["v"], coarse))
    ref_k, ref_l = reparameterize(out.tau["block3"], out.tau["block4"], lam)
    torch.testing.assert_close(out.mu["block3"], ref_k, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.mu["block4"], ref_l, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.penalty, 10.0 * dual_penalty(out.tau["block3"], out.tau["block4"], lam))


@pytest.mark.parametrize("reverse", [False, True])
def test_kl_penalty_matches_direct_kl(reverse):
    torch.manual_seed(0)
    model, x = _make("resnet18", "kl_reverse" if reverse else "kl", alpha=3.0)
    with torch.no_grad():
        for gate in model.gates.values():
            gate.u.weight.mul_(20.0)
        out = model.forward_with_attention(x)
    tk, tl = out.tau["block3"].double(), out.tau["block4"].double()
    marg = _marginal(tk, tl.shape[1:])
    p, q = (marg, tl) if reverse else (tl, marg)
    ref = (p * (p.log() - q.log())).flatten(1).sum(1).mean()
    torch.testing.assert_close(out.penalty.double(), 3.0 * ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("witness", ["global", "amortized"])
def test_dual_penalty_decreases_on_a_toy_batch(witness):
    torch.manual_seed(0)
    model, x = _make("unet_encoder", "dual", witness=witness, alpha=10.0)
    y = torch.tensor([0, 1, 1])
    with torch.no_grad():
        for gate in model.gates.values():
            gate.u.weight.mul_(20.0)  # start inconsistent
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    first = None
    for _ in range(15):
        out = model.forward_with_attention(x)
        first = out.penalty.item() if first is None else first
        loss = F.cross_entropy(out.logits, y) + out.penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model.forward_with_attention(x).penalty.item()
    assert first > 1e-3
    assert last < 0.5 * first


# ------------------------------------------------------------------------ scaling and invariance


@pytest.mark.parametrize("variant", ["tau_k", "unconstrained", "dual", "kl", "exact", "multilevel"])
def test_uniform_gates_reproduce_the_baseline(variant):
    """N*tau weighting: with uniform maps a gated model on a baseline's weights is the baseline."""
    torch.manual_seed(0)
    base, x = _make("unet_encoder", "baseline")
    model, _ = _make("unet_encoder", variant)
    model.load_backbone_state(base.state_dict())
    with torch.no_grad():
        for gate in model.gates.values():
            gate.u.weight.zero_()  # phi = 0 -> tau uniform
    base.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["baseline", "dual", "exact", "multilevel"])
def test_samples_are_independent_and_batching_does_not_matter(variant):
    torch.manual_seed(0)
    model, x = _make("resnet18", variant, witness="amortized") if variant == "dual" else _make("resnet18", variant)
    model.eval()
    with torch.no_grad():
        full = model.forward_with_attention(x)
        x2 = x.clone()
        x2[0] = torch.randn_like(x2[0])
        changed = model.forward_with_attention(x2)
        single = model.forward_with_attention(x[1:2])
    torch.testing.assert_close(changed.logits[1:], full.logits[1:])
    torch.testing.assert_close(single.logits, full.logits[1:2], atol=1e-5, rtol=1e-5)
    for b in full.tau:
        torch.testing.assert_close(changed.tau[b][1:], full.tau[b][1:])
        torch.testing.assert_close(single.tau[b], full.tau[b][1:2], atol=1e-6, rtol=1e-5)
    for b in full.mu:
        torch.testing.assert_close(changed.mu[b][1:], full.mu[b][1:])


def test_input_errors_name_the_shape():
    model, _ = _make("unet_encoder", "exact")
    with pytest.raises(ValueError, match=r"\(2, 1, 32\)"):
        model.forward_with_attention(torch.randn(2, 1, 32))
    with pytest.raises(ValueError, match="integer multiple"):
        model.forward_with_attention(torch.randn(1, 1, 36, 36))  # block3 9x9, block4 4x4
    dual, _ = _make("unet_encoder", "dual", img_size=32)
    with pytest.raises(ValueError, match="img_size"):
        dual.forward_with_attention(torch.randn(1, 1, 64, 64))


# ------------------------------------------------------------------- config, freezing, loading


@pytest.mark.parametrize(
    "name,kw",
    [
        ("unet_encoder", {"variant": "dual", "witness": "amortized", "alpha": 2.5, "features": 4}),
        ("resnet18", {"variant": "exact", "exact_mode": "pool", "stem": "small", "features": 4, "spatial_dims": 3}),
        ("resnet50", {"variant": "multilevel", "features": 2, "gate_embed": 8, "in_channels": 4}),
        ("vit_tiny", {"img_size": 32, "patch_size": 8, "num_layers": 2}),
    ],
)
def test_config_round_trip(name, kw):
    model = create_model(name, **kw)
    cfg = model.config
    assert json.loads(json.dumps(cfg)) == cfg
    again = create_model(**cfg)
    assert again.config == cfg
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == shapes
    cfg["variant"] = "nonsense"
    assert model.config["variant"] == kw.get("variant", "baseline")  # config is a copy


def test_freeze_backbone_trains_only_gates_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model, x = _make("unet_encoder", "dual", witness="global")
    model.freeze_backbone()
    assert model.backbone_frozen
    backbone = {id(p) for p in model.backbone_parameters()}
    gates = {id(p) for p in model.gate_parameters()}
    assert backbone and gates and not backbone & gates
    assert backbone | gates == {id(p) for p in model.parameters()}
    assert all(not p.requires_grad for p in model.backbone_parameters())
    assert all(p.requires_grad for p in model.gate_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.", "fc."))}
    model.train()
    assert not model.backbone.training and model.gates.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model.forward_with_attention(x)
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 1])) + out.penalty).backward()
    opt.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # weights and BatchNorm running statistics untouched
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.parameters())
    assert model.train().backbone.training


def test_load_backbone_state_checks_keys_and_shapes():
    base = create_model("resnet18", features=4)
    gated = create_model("resnet18", variant="exact", features=4)
    gated.load_backbone_state({f"model.{k}": v for k, v in base.state_dict().items()})  # Lightning prefix
    for k, v in base.state_dict().items():
        assert torch.equal(gated.state_dict()[k], v)
    pooled = create_model("resnet18", variant="exact", exact_mode="pool", features=4)
    pooled.load_backbone_state(base.state_dict())  # drops the unused head
    with pytest.raises(ValueError, match="shape mismatch"):
        create_model("resnet18", variant="exact", features=8).load_backbone_state(base.state_dict())
    with pytest.raises(ValueError, match="missing"):
        gated.load_backbone_state({k: v for k, v in base.state_dict().items() if "block2" not in k})


# ----------------------------------------------------------------------------- parameter counts


def _unet_hand_count(cin: int, f: int, classes: int) -> int:
    widths = [f * 2**i for i in range(5)]
    total, prev = 0, cin
    for w in widths:
        total += 9 * prev * w + 9 * w * w + 2 * (2 * w)  # two bias-free 3x3 convs + two BatchNorms
        prev = w
    return total + widths[-1] * classes + classes


def test_parameter_counts_pinned():
    with torch.device("meta"):
        unet = create_model("unet_encoder", in_channels=4)
        r18 = create_model("resnet18", in_channels=3, num_classes=1000)
        r50 = create_model("resnet50", in_channels=3, num_classes=1000)
    assert count_parameters(unet) == _unet_hand_count(4, 32, 2) == 4_715_522  # "about 4.7M"
    # torchvision's published counts for the ImageNet ResNets (same architecture, 1000 classes)
    assert count_parameters(r18) == 11_689_512
    assert count_parameters(r50) == 25_557_032
    with torch.device("meta"):
        gated = create_model("unet_encoder", variant="unconstrained", in_channels=4)
    # two gates: U (C x E) and u (E x 1), E = min(C, 64), for C = 128 and 256
    assert count_parameters(gated) - count_parameters(unet) == 128 * 64 + 64 + 256 * 64 + 64
    with torch.device("meta"):
        wide = create_model("unet_encoder", variant="unconstrained", in_channels=4, gate_embed=256)
    assert count_parameters(wide) - count_parameters(unet) == 128 * 256 + 256 + 256 * 256 + 256


# ------------------------------------------------------------------------------ Captum explainers


def _captum_model(name: str, spatial_dims: int):
    torch.manual_seed(0)
    model, x = _make(name, "baseline", spatial_dims)
    # a few training-mode passes give BatchNorm non-trivial statistics
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn_like(x))
    return model.eval(), x[:2]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", list(CNNS))
def test_captum_gradcam_deeplift_lrp_run_on_baselines(name, spatial_dims):
    captum = pytest.importorskip("captum.attr")
    from captum.attr._utils.lrp_rules import EpsilonRule

    model, x = _captum_model(name, spatial_dims)
    layer = model.feature_layers()["block3"]
    # GradCAM against a hand-written reference
    cam = captum.LayerGradCam(model, layer).attribute(x, target=1, relu_attributions=True)
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    xin = x.clone()
    logits = model(xin)
    handle.remove()
    grads = torch.autograd.grad(logits[:, 1].sum(), acts["a"])[0]
    weights = grads.mean(dim=tuple(range(2, grads.dim())), keepdim=True)
    ref = F.relu((weights * acts["a"]).sum(1, keepdim=True))
    torch.testing.assert_close(cam, ref.detach(), atol=1e-5, rtol=1e-4)
    # DeepLIFT: summation to delta holds only when every nonlinearity is its own module. (Captum's
    # MaxPool multiplier is not summation-exact in the U-Net's stacked 2x2 pools, so only ResNets
    # are held to it.)
    dl, delta = captum.DeepLift(model).attribute(x, target=1, return_convergence_delta=True)
    assert dl.shape == x.shape and torch.isfinite(dl).all() and dl.abs().sum() > 0
    if name.startswith("resnet"):
        scale = (model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]).abs().max().item()
        assert delta.abs().max().item() <= 1e-4 * max(scale, 1.0)
    # LRP: rules for layer types Captum lacks (3D convs, BatchNorm3d...); LRP deletes them after each call
    for _ in range(2):
        for module in model.modules():
            if not list(module.children()):
                module.rule = EpsilonRule()
        rel = captum.LRP(model).attribute(x, target=1)
        assert rel.shape == x.shape and torch.isfinite(rel).all() and rel.abs().sum() > 0


def test_no_identity_or_shared_activation_modules():
    for name, f in CNNS.items():
        for variant in ("baseline", "exact"):
            model = create_model(name, variant=variant, features=f, img_size=64)
            assert not any(isinstance(m, torch.nn.Identity) for m in model.modules())
            relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
            assert all(not m.inplace for m in relus)
            assert len({id(m) for m in relus}) == len(relus)


def test_gradcam_feature_layers_cover_map_blocks():
    model = create_model("resnet50", variant="multilevel", features=2)
    assert model.map_blocks == ("block2", "block3", "block4")
    assert set(model.map_blocks) <= set(model.feature_layers())
    assert create_model("unet_encoder", features=4).map_blocks == ("block3", "block4")


# ------------------------------------------------------------------------------------------- ViT


def _tiny_vit(spatial_dims: int = 2):
    size = 32 if spatial_dims == 2 else 16
    patch = 8
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny", spatial_dims=spatial_dims, img_size=size, patch_size=patch, num_layers=3, in_channels=2
    )
    return model, torch.randn(2, 2, *(size,) * spatial_dims)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_vit_attention_maps_match_a_naive_rollout(spatial_dims):
    model, x = _tiny_vit(spatial_dims)
    model.eval()
    maps = model.vit_attention_maps(x)
    grid = (4,) * spatial_dims if spatial_dims == 2 else (2,) * 3
    assert maps["last"].shape == maps["rollout"].shape == (2, *grid)
    for m in maps.values():
        _assert_distribution(m)
    att = [blk.attn.att_mat for blk in model.vit.blocks]  # (B, heads, T, T) of the last forward
    t = att[0].shape[-1]
    for b in range(2):
        last = att[-1][b].mean(0)[0, 1:]
        np.testing.assert_allclose(maps["last"][b].flatten().numpy(), (last / last.sum()).numpy(), atol=1e-6)
        roll = np.eye(t)
        for a in att:
            a = 0.5 * a[b].mean(0).double().numpy() + 0.5 * np.eye(t)
            a = a / a.sum(1, keepdims=True)
            roll = a @ roll
        ref = roll[0, 1:] / roll[0, 1:].sum()
        np.testing.assert_allclose(maps["rollout"][b].flatten().numpy(), ref, atol=1e-5)
    out = model.forward_with_attention(x)
    assert out.logits.shape == (2, 2) and out.mu == {} and out.penalty.item() == 0.0
    out.logits.sum().backward()
    with pytest.raises(ValueError, match="img_size|expected"):
        model(torch.randn(1, 2, *(size + 8 for size in x.shape[2:])))


def test_vit_b16_builds_and_runs_small_input():
    torch.manual_seed(0)
    model = create_model("vit_b16", img_size=32)
    assert count_parameters(model) > 85e6
    with torch.no_grad():
        out = model.eval().forward_with_attention(torch.randn(1, 1, 32, 32))
    assert out.logits.shape == (1, 2) and out.tau["rollout"].shape == (1, 2, 2)
    with pytest.raises(ValueError, match="multiples"):
        create_model("vit_small", img_size=30)


# ------------------------------------------------------- sharpness term and the detached exact proposal
# References: entropies of hand-built maps, and the two exact proposals compared in eval mode, where
# they compute the same thing.


def _unet(variant: str, **kw):
    return create_model("unet_encoder", variant=variant, features=4, img_size=32, **kw)


def test_normalized_entropy_hand_computed():
    uniform = torch.full((3, 4, 4), -math.log(16))
    assert float(normalized_entropy([uniform])) == pytest.approx(1.0, abs=1e-6)
    one_hot = torch.full((2, 4, 4), -torch.inf)
    one_hot[:, 1, 2] = 0.0
    assert float(normalized_entropy([one_hot])) == pytest.approx(0.0, abs=1e-7)
    # half the mass on one cell, half spread evenly on 2 more: H = 0.5 log 2 + 2 * 0.25 log 4 = 1.5 log 2
    mixed = torch.full((1, 2, 4), -torch.inf)
    mixed[0, 0, 0], mixed[0, 0, 1], mixed[0, 1, 3] = math.log(0.5), math.log(0.25), math.log(0.25)
    assert float(normalized_entropy([mixed])) == pytest.approx(1.5 * math.log(2) / math.log(8), rel=1e-6)
    # the mean over maps: (1 + 0) / 2
    assert float(normalized_entropy([uniform[:2], one_hot])) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("variant", ["tau_k", "unconstrained", "kl", "dual", "exact", "multilevel"])
def test_entropy_weight_adds_beta_times_the_entropy_of_the_weighting_maps(variant):
    torch.manual_seed(0)
    kw = {"alpha": 0.0} if variant in ("kl", "dual") else {}
    model = _unet(variant, gate_scale=8.0, entropy_weight=0.7, **kw).train()
    x = torch.randn(3, 1, 32, 32)
    out = model.forward_with_attention(x)
    maps = out.mu if out.mu else out.tau
    expected = 0.7 * normalized_entropy([m.clamp_min(1e-38).log() for m in maps.values()])
    torch.testing.assert_close(out.penalty, expected, rtol=1e-5, atol=1e-6)
    plain = _unet(variant, gate_scale=8.0, **kw)
    plain.load_state_dict(model.state_dict())
    assert float(plain.train().forward_with_attention(x).penalty.detach()) == 0.0
    with pytest.raises(ValueError, match="entropy_weight"):
        _unet(variant, entropy_weight=-1.0)


def test_entropy_term_sharpens_the_maps_when_trained():
    torch.manual_seed(0)
    model = _unet("exact", gate_scale=16.0, gate_zero_init=True, entropy_weight=1.0).train()
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 1, 0])
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(15):
        out = model.forward_with_attention(x)
        first = float(out.penalty) if first is None else first
        opt.zero_grad()
        # a uniform map is a stationary point of the entropy: the cross-entropy moves u off zero first
        (F.cross_entropy(out.logits, y) + out.penalty).backward()
        opt.step()
    assert first == pytest.approx(1.0, abs=1e-5)  # zero-initialised gates: uniform maps
    with torch.no_grad():
        assert float(model.forward_with_attention(x).penalty) < 0.8


@pytest.mark.parametrize("variant", ["exact", "multilevel"])
def test_detached_proposal_equals_the_graded_one_in_eval_and_saves_the_backward(variant):
    torch.manual_seed(0)
    det = _unet(variant, gate_scale=4.0)
    grad = _unet(variant, gate_scale=4.0, exact_proposal="grad")
    grad.load_state_dict(det.state_dict())
    x = torch.randn(3, 1, 32, 32)
    det.eval(), grad.eval()
    with torch.no_grad():
        a, b = det.forward_with_attention(x), grad.forward_with_attention(x)
    torch.testing.assert_close(a.logits, b.logits)
    for blk in a.mu:
        torch.testing.assert_close(a.mu[blk], b.mu[blk])
    # training: the proposal stages' BatchNorm statistics move once per step (the second pass only)
    det.train()
    bn = [m for m in det.backbone.stages["block4"].modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = int(bn.num_batches_tracked)
    out = det.forward_with_attention(x)
    assert int(bn.num_batches_tracked) == before + 1 and bn.training
    F.cross_entropy(out.logits, torch.tensor([0, 1, 0])).backward()
    # the coarse gate still learns (its input is a detached proposal), the stages learn from pass 2
    assert det.gates["block4"].U.weight.grad.abs().sum() > 0
    assert det.backbone.stages["block4"][1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exact_proposal"):
        _unet(variant, exact_proposal="nope")


@pytest.mark.parametrize("variant", ["exact", "multilevel"])
def test_hybrid_logits_are_the_two_pass_network_plus_the_pooled_head(variant):
    """``exact_mode="hybrid"``: the same weights give the two-pass logits plus the attention-pooling head's."""
    torch.manual_seed(0)
    hybrid, x = _make("unet_encoder", variant, exact_mode="hybrid")
    with torch.no_grad():
        for gate in hybrid.gates.values():
            gate.u.weight.mul_(30.0)
    state = hybrid.state_dict()
    two_pass, _ = _make("unet_encoder", variant, exact_mode="two_pass")
    pool, _ = _make("unet_encoder", variant, exact_mode="pool")
    two_pass.load_state_dict({k: v for k, v in state.items() if not k.startswith("attn_fc.")})
    pool.load_state_dict({k: v for k, v in state.items() if k in pool.state_dict()})
    for m in (hybrid, two_pass, pool):
        m.eval()
    with torch.no_grad():
        out = hybrid.forward_with_attention(x)
        torch.testing.assert_close(out.logits, two_pass(x) + pool(x), rtol=1e-5, atol=1e-5)
        for block, mu in pool.forward_with_attention(x).mu.items():
            torch.testing.assert_close(out.mu[block], mu)
    # both heads learn: every parameter gets a gradient in training mode
    hybrid.train()
    hybrid.forward_with_attention(x).logits.sum().backward()
    assert hybrid.attn_fc.weight.grad is not None and hybrid.fc.weight.grad is not None
    assert all(g.u.weight.grad is not None and g.u.weight.grad.abs().sum() > 0 for g in hybrid.gates.values())
