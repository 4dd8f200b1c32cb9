"""The ``norm`` option of every CNN backbone ("batch", "group", "instance"), 2-D and 3-D: builds, trains a step,
saves and loads, explains (LRP and GradCAM), keeps parameter counts, channels-last numbers, freezing and
backbone loading. References: PyTorch's own GroupNorm / InstanceNorm on the same tensors, and the number of
parameters of the BatchNorm model."""

from __future__ import annotations

import doctest
import json
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dualattn.explain import explain
from dualattn.models import _layers, count_parameters, create_model
from dualattn.models._layers import NORMS, group_count, norm_layer
from dualattn.weights import load_model, save_model

CNNS = {"unet_encoder": 4, "resnet18": 4, "resnet50": 2}  # backbone -> tiny width
NORM_TYPES = {"batch": nn.modules.batchnorm._BatchNorm, "group": nn.GroupNorm,
              "instance": nn.modules.instancenorm._InstanceNorm}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _size(name: str, dims: int, norm: str) -> int:
    if name == "unet_encoder":  # block5 is S/16: instance statistics need more than one position
        return 32 if (dims == 2 or norm == "instance") else 16
    return 16  # the small stem: block4 is S/8


def _make(name: str, dims: int, norm: str, **kw):
    size = _size(name, dims, norm)
    if name.startswith("resnet"):
        kw.setdefault("stem", "small")
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=dims, features=CNNS[name], norm=norm, img_size=size, **kw)
    x = torch.randn(3, 1, *(size,) * dims, generator=torch.Generator().manual_seed(1))
    return model, x


# ------------------------------------------------------------------------------------ the group rule


@pytest.mark.parametrize(("channels", "groups"), [(1, 1), (3, 1), (4, 1), (7, 1), (8, 2), (12, 3), (16, 4), (20, 5),
                                                  (24, 6), (32, 8), (48, 12), (64, 16), (96, 24), (128, 32),
                                                  (256, 32), (2048, 32)])
def test_group_count_by_hand(channels, groups):
    assert group_count(channels) == groups
    assert channels % groups == 0 and groups <= 32
    assert groups == 1 or channels // groups >= 4


def test_norm_layer_types_and_errors():
    assert isinstance(norm_layer("batch", 3, 8), nn.BatchNorm3d)
    gn = norm_layer("group", 2, 16)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4 and gn.num_channels == 16
    inorm = norm_layer("instance", 3, 8)
    assert isinstance(inorm, nn.InstanceNorm3d) and inorm.affine and not inorm.track_running_stats
    with pytest.raises(ValueError, match="unknown norm 'layer'; valid: batch, group, instance"):
        create_model("unet_encoder", features=4, norm="layer")
    with pytest.raises(ValueError, match="unknown arguments for vit_tiny.*norm"):
        create_model("vit_tiny", img_size=32, patch_size=8, num_layers=1, norm="group")
    result = doctest.testmod(_layers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------- every backbone x norm x dims


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(CNNS))
def test_backbone_norm_builds_trains_saves_and_explains(name, norm, dims, tmp_path):
    model, x = _make(name, dims, norm)
    norms = [m for m in model.modules() if isinstance(m, tuple(NORM_TYPES.values()))]
    assert norms and all(isinstance(m, NORM_TYPES[norm]) for m in norms)
    assert model.config["norm"] == norm
    # one training step changes the weights and gives finite numbers
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = F.cross_entropy(model(x), torch.tensor([0, 1, 1]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k.endswith("weight"))
    # save / load: the config rebuilds the same norm, the logits are the same
    model.eval()
    path = save_model(model, tmp_path / "m.safetensors")
    again = load_model(path).eval()
    assert again.config == model.config and type(norms[0]) in {type(m) for m in again.modules()}
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-6)
    # explain: LRP (canonized: no fallback warning) and GradCAM give finite, non-trivial maps on the block3 grid
    grid = model.backbone.grid_shapes(tuple(x.shape[2:]))["block3"]
    target = torch.tensor([0, 1])
    for method in ("lrp", "gradcam"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            maps = explain(model, x[:2], method=method, block="block3", target=target)
        assert tuple(maps.shape[2:]) == tuple(grid) and torch.isfinite(maps).all() and maps.abs().sum() > 0, method


def test_per_sample_norms_do_not_depend_on_the_batch_or_the_mode():
    """GroupNorm / InstanceNorm: an image's logits do not change with its batch or with train/eval mode; BatchNorm's
    do (the reason for the option)."""
    for norm in ("group", "instance"):
        model, x = _make("unet_encoder", 3, norm)
        with torch.no_grad():
            model.train()
            alone = model(x[:1])
            batched = model(x)[:1]
            model.eval()
            evaluated = model(x[:1])
        torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(alone, evaluated, rtol=1e-5, atol=1e-6)
    model, x = _make("unet_encoder", 3, "batch")
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x[:2])[:1], model(x)[:1], atol=1e-4)


@pytest.mark.parametrize("name", list(CNNS))
def test_parameter_counts_do_not_depend_on_norm(name):
    with torch.device("meta"):
        counts = {norm: count_parameters(create_model(name, in_channels=4, norm=norm)) for norm in NORMS}
    assert len(set(counts.values())) == 1, counts
    with torch.device("meta"):
        bn = create_model(name, in_channels=4, norm="batch")
        gn = create_model(name, in_channels=4, norm="group")
    buffers = {k for k, _ in bn.named_buffers()}
    assert buffers and not list(gn.named_buffers())  # only BatchNorm keeps running statistics
    assert {k for k, _ in bn.named_parameters()} == {k for k, _ in gn.named_parameters()}


def test_group_norm_matches_pytorch_functional_group_norm():
    """The backbone's GroupNorm layers compute ``F.group_norm`` with :func:`group_count` groups."""
    model, x = _make("resnet18", 2, "group")
    model.eval()
    seen = {}
    bn1 = model.backbone.stages["block3"][0].bn1
    conv1 = model.backbone.stages["block3"][0].conv1
    hooks = [conv1.register_forward_hook(lambda m, i, o: seen.setdefault("z", o)),
             bn1.register_forward_hook(lambda m, i, o: seen.setdefault("y", o))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    c = conv1.out_channels
    ref = F.group_norm(seen["z"].contiguous(), group_count(c), bn1.weight, bn1.bias, eps=1e-5)
    torch.testing.assert_close(seen["y"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("norm", ["group", "instance"])
def test_channels_last_gives_the_contiguous_numbers(norm, dims):
    model, x = _make("unet_encoder", dims, norm, variant="exact")
    model.eval()
    with torch.no_grad():
        fast = model.forward_with_attention(x)
        model.channels_last = False
        plain = model.forward_with_attention(x)
    torch.testing.assert_close(fast.logits, plain.logits, rtol=1e-4, atol=1e-5)
    for block in plain.mu:
        torch.testing.assert_close(fast.mu[block], plain.mu[block], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", ["group", "instance"])
def test_freeze_backbone_and_load_backbone_state_with_per_sample_norms(norm):
    base, x = _make("resnet18", 3, norm)
    gated, _ = _make("resnet18", 3, norm, variant="dual", witness="amortized")
    gated.load_backbone_state(base.state_dict())
    for k, v in base.state_dict().items():
        assert torch.equal(gated.state_dict()[k], v), k
    gated.freeze_backbone()
    gated.train()
    frozen = {k: v.clone() for k, v in gated.state_dict().items() if k.startswith(("backbone.", "fc."))}
    opt = torch.optim.SGD([p for p in gated.parameters() if p.requires_grad], lr=0.1)
    out = gated.forward_with_attention(x)
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 1])) + out.penalty).backward()
    opt.step()
    assert all(torch.equal(v, gated.state_dict()[k]) for k, v in frozen.items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gated.gate_parameters())


def test_load_backbone_state_names_a_norm_mismatch():
    bn, _ = _make("unet_encoder", 2, "batch")
    gn, _ = _make("unet_encoder", 2, "group", variant="exact")
    with pytest.raises(ValueError, match="norm='group'.*has BatchNorm running statistics"):
        gn.load_backbone_state(bn.state_dict())
    bn_gated, _ = _make("unet_encoder", 2, "batch", variant="exact")
    with pytest.raises(ValueError, match="norm='batch'.*has no BatchNorm running statistics"):
        bn_gated.load_backbone_state(gn.state_dict())


@pytest.mark.parametrize("name", list(CNNS))
def test_config_round_trip_and_the_default_is_not_recorded(name):
    default = create_model(name, features=CNNS[name])
    assert "norm" not in default.config  # configs saved before the option rebuild the same model
    model = create_model(name, features=CNNS[name], norm="group", spatial_dims=3)
    cfg = model.config
    assert json.loads(json.dumps(cfg)) == cfg and cfg["norm"] == "group"
    again = create_model(**cfg)
    assert again.config == cfg
    assert {k: tuple(v.shape) for k, v in again.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_weights_saved_with_one_norm_are_refused_under_another(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dualattn.weights import WeightsError

    model, _ = _make("unet_encoder", 2, "group")
    good = save_model(model, tmp_path / "gn.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    cfg = json.loads(meta["dualattn_config"])
    cfg["norm"] = "batch"
    meta["dualattn_config"] = json.dumps(cfg)
    bad = tmp_path / "relabelled.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(WeightsError, match="relabelled.safetensors"):
        load_model(bad)
