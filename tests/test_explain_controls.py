"""The control maps (prior, dual_tau, center) against hand-computed maps and the model's own maps."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from dualattn.explain import (
    center_map,
    center_sigma,
    explain,
    explain_blocks,
    list_methods,
    method_family,
    method_sources,
    methods_in_family,
    select_sources,
)
from dualattn.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _dual(witness: str = "global", *, spatial_dims: int = 2):
    torch.manual_seed(0)
    size = 32 if spatial_dims == 2 else 16
    model = create_model("unet_encoder", variant="dual", features=4, witness=witness, img_size=size,
                         spatial_dims=spatial_dims).eval()
    with torch.no_grad():
        if witness == "global":
            grid = model.witness.lam.shape
            idx = [torch.arange(n, dtype=torch.float32) for n in grid]
            # lambda by hand: a slope over the coarse grid, e.g. 0.3 i - 0.2 j (+ 0.1 k in 3-D)
            lam = sum(c * a.reshape([-1 if k == j else 1 for k in range(len(grid))])
                      for j, (c, a) in enumerate(zip((0.3, -0.2, 0.1), idx)))
            model.witness.lam.copy_(lam)
        else:  # the amortized witness starts at lambda = 0: give it an image-dependent output
            torch.nn.init.normal_(model.witness.conv2.weight, std=0.5)
    return model


def _normalized(t: torch.Tensor) -> torch.Tensor:
    return t / t.flatten(1).sum(1).reshape(-1, *([1] * (t.dim() - 1)))


def _up(lam: torch.Tensor, f: int) -> torch.Tensor:
    """Each coarse cell copied over its f x f (x f) block, by repeat_interleave (not the package's helper)."""
    for axis in range(1, lam.dim()):
        lam = lam.repeat_interleave(f, dim=axis)
    return lam


# ---------------------------------------------------------------- prior
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_prior_of_a_global_witness_is_exp_lambda_by_hand(spatial_dims):
    model = _dual("global", spatial_dims=spatial_dims)
    lam = model.witness.lam.detach().double().unsqueeze(0)
    x = torch.randn(3, 1, *([32 if spatial_dims == 2 else 16] * spatial_dims))
    fine = explain(model, x, method="prior", block="block3")
    coarse = explain(model, x, method="prior", block="block4")
    want_fine = _normalized(torch.exp(-_up(lam, 2))).float()
    want_coarse = _normalized(torch.exp(lam)).float()
    for i in range(3):  # the same map for every image
        torch.testing.assert_close(fine[i, 0], want_fine[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(coarse[i, 0], want_coarse[0], rtol=1e-5, atol=1e-7)
    # and it is the factor that turns the model's tau into its mu: mu ∝ tau * prior at both blocks
    with torch.no_grad():
        out = model.forward_with_attention(x)
    for block, prior in (("block3", fine), ("block4", coarse)):
        torch.testing.assert_close(_normalized(out.tau[block] * prior[:, 0]), out.mu[block], rtol=1e-4, atol=1e-7)
    # another image set gives the same prior
    torch.testing.assert_close(explain(model, torch.randn(1, *x.shape[1:]), method="prior", block="block3")[0], fine[0])


def test_prior_of_an_amortized_witness_is_the_mean_factor():
    model = _dual("amortized")
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        out = model.forward_with_attention(x)
    for block in ("block3", "block4"):
        # each image's factor read off its own maps: mu / tau (mu ∝ tau * factor), normalized
        per_image = _normalized(out.mu[block].double() / out.tau[block].double())
        want = per_image.mean(0).float()
        got = explain(model, x, method="prior", block=block)
        assert got.shape == (5, 1, *want.shape)
        for i in range(5):
            torch.testing.assert_close(got[i, 0], want, rtol=1e-4, atol=1e-7)
        assert float((per_image[0] - per_image[1]).abs().max()) > 1e-3  # the factor does depend on the image
        # with a population, one image's prior is the population's mean; without, the batch's
        torch.testing.assert_close(explain(model, x[:1], method="prior", block=block, population=x), got[:1])
        assert not torch.allclose(explain(model, x[:2], method="prior", block=block), got[:2], atol=1e-6)


def test_prior_population_in_chunks():
    model = _dual("amortized")
    pop = torch.randn(70, 1, 32, 32)  # more than one chunk of 64
    with torch.no_grad():
        out = model.forward_with_attention(pop)
    want = _normalized(out.mu["block4"].double() / out.tau["block4"].double()).mean(0).float()
    got = explain(model, pop[:2], method="prior", block="block4", population=pop)
    torch.testing.assert_close(got[1, 0], want, rtol=1e-4, atol=1e-7)
    assert abs(float(got[0].sum()) - 1) < 1e-5


def test_prior_refusals():
    x = torch.randn(1, 1, 32, 32)
    for variant in ("exact", "baseline"):
        torch.manual_seed(0)
        other = create_model("unet_encoder", variant=variant, features=4).eval()
        with pytest.raises(ValueError, match=f"explains a 'dual' model, but this model is '{variant}'"):
            explain(other, x, method="prior")
        with pytest.raises(ValueError, match=f"but this model is '{variant}'"):
            explain(other, x, method="dual_tau")
    model = _dual("global")
    with pytest.raises(ValueError, match="block 'block2' has no attention map"):
        explain(model, x, method="prior", block="block2")
    with pytest.raises(ValueError, match="population must be a non-empty"):
        explain(model, x, method="prior", population=torch.randn(0, 1, 32, 32))
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['seed'\]"):
        explain(model, x, method="prior", seed=1)


# ---------------------------------------------------------------- dual_tau
@pytest.mark.parametrize("witness", ["global", "amortized"])
def test_dual_tau_is_the_models_gate_map(witness):
    model = _dual(witness)
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        out = model.forward_with_attention(x)
    maps = explain_blocks(model, x, method="dual_tau", blocks=("block3", "block4"))
    for block in ("block3", "block4"):
        torch.testing.assert_close(maps[block][:, 0], out.tau[block])
        assert not torch.allclose(out.tau[block], out.mu[block])  # before the reparameterization
    errors: dict[str, str] = {}
    assert explain_blocks(model, x, method="dual_tau", blocks=("block2",), errors=errors) == {}
    assert "block2" in errors


def test_controls_leave_the_model_alone():
    model = _dual("amortized")
    model.train()
    x = torch.randn(2, 1, 32, 32)
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("prior", "dual_tau", "center"):
        explain(model, x, method=method, block="block4")
    assert model.training and all(m.training for m in model.modules())
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- center
def test_center_sigma_by_hand():
    assert center_sigma((10, 10), 4 * math.pi / 100) == pytest.approx(2.0)  # a disk of area 4 pi
    assert center_sigma((6, 6, 6), 4 / 3 * math.pi * 8 / 216) == pytest.approx(2.0)  # a ball of volume 32/3 pi
    assert center_sigma((64, 64), 0.05) == pytest.approx(math.sqrt(0.05 * 4096 / math.pi))
    for bad in (0, 0.0, 1.5, -0.1, True, "0.1", float("nan")):
        with pytest.raises(ValueError, match="lesion_fraction must be a number in"):
            center_sigma((8, 8), bad)


def test_center_2d_hand_case():
    x = torch.randn(2, 1, 16, 16)
    m = center_map(x, grid=(5, 5), lesion_fraction=math.pi / 25)  # sigma = 1 cell
    assert m.shape == (2, 1, 5, 5)
    torch.testing.assert_close(m[0], m[1])
    g = m[0, 0].double()
    assert abs(float(g.sum()) - 1) < 1e-6 and int(g.argmax()) == 12  # the centre (2, 2)
    assert float(g[2, 3] / g[2, 2]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(g[3, 3] / g[2, 2]) == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert float(g[0, 2] / g[2, 2]) == pytest.approx(math.exp(-2.0), rel=1e-5)
    torch.testing.assert_close(g, g.T)  # isotropic


def test_center_3d_hand_case_and_even_grid():
    x = torch.randn(1, 1, 8, 8, 8)
    m = center_map(x, grid=(3, 3, 3), lesion_fraction=4 / 3 * math.pi / 27)[0, 0].double()  # sigma = 1
    assert abs(float(m.sum()) - 1) < 1e-6 and int(m.argmax()) == 13
    assert float(m[1, 1, 2] / m[1, 1, 1]) == pytest.approx(math.exp(-0.5), rel=1e-5)
    assert float(m[2, 2, 2] / m[1, 1, 1]) == pytest.approx(math.exp(-1.5), rel=1e-5)
    even = center_map(x, grid=(8, 8), lesion_fraction=0.1)[0, 0]
    top = even[3:5, 3:5]
    assert torch.allclose(top, top.max().expand(2, 2)) and float(top.max()) == float(even.max())


def test_center_through_explain_takes_the_blocks_grid():
    torch.manual_seed(0)
    model = create_model("unet_encoder", features=4).eval()
    x = torch.randn(2, 1, 32, 32)
    m3 = explain(model, x, method="center", block="block3", lesion_fraction=0.2)
    torch.testing.assert_close(m3, center_map(x, grid=(8, 8), lesion_fraction=0.2))
    assert explain(model, x, method="center", block="block4").shape == (2, 1, 4, 4)
    torch.testing.assert_close(explain(model, x, method="center", grid=(5, 5)),
                               center_map(x, grid=(5, 5)))  # default lesion fraction 0.05
    wider = explain(model, x, method="center", lesion_fraction=0.5)
    assert float(wider.max()) < float(m3.max())  # a larger lesion: a flatter map
    model3 = create_model("unet_encoder", features=4, spatial_dims=3).eval()
    m = explain(model3, torch.randn(1, 1, 16, 16, 16), method="center", block="block3")
    assert m.shape == (1, 1, 4, 4, 4) and abs(float(m.sum()) - 1) < 1e-6


# ---------------------------------------------------------------- the registry
def test_controls_in_the_registry():
    assert methods_in_family("control") == ("prior", "dual_tau", "center", "raw_channel_<k>", "random")
    for m in ("prior", "dual_tau", "center", "raw_channel_0", "random"):
        assert method_family(m) == "control"
    dual = _dual("global")
    names = list_methods(dual)
    assert names[-5:] == ["prior", "dual_tau", "center", "raw_channel_0", "random"]
    torch.manual_seed(0)
    exact = create_model("unet_encoder", variant="exact", features=4)
    assert list_methods(exact)[-3:] == ["center", "raw_channel_0", "random"] and "prior" not in list_methods(exact)
    vit = create_model("vit_tiny", img_size=16, patch_size=8, num_layers=1, hidden_size=16, mlp_dim=16, num_heads=2)
    assert list_methods(vit)[-3:] == ["center", "raw_channel_0", "random"]
    assert {"prior", "dual_tau", "center"} <= set(list_methods(in_channels=1))


def test_controls_sources():
    runs = [SimpleNamespace(variant=v, is_vit=False, name=f"{v}-{k}") for v in ("baseline", "dual", "exact")
            for k in range(2)]
    runs.append(SimpleNamespace(variant="baseline", is_vit=True, name="vit"))
    baselines = [r for r in runs if r.variant == "baseline" and not r.is_vit]
    names = lambda rs: [r.name for r in rs]  # noqa: E731
    assert names(select_sources("prior", runs, baselines)) == ["dual-0", "dual-1"]
    assert names(select_sources("dual_tau", runs, baselines)) == ["dual-0", "dual-1"]
    assert names(select_sources("center", runs, baselines)) == ["baseline-0", "baseline-1"]
    assert select_sources("prior", [r for r in runs if r.variant != "dual"], baselines) == []
    assert method_sources(["prior", "dual_tau", "center", "random"], ["baseline", "dual"]) == \
        {"prior": "dual", "dual_tau": "dual", "center": "baseline", "random": "baseline"}
    assert method_sources(["prior", "center"], ["baseline"]) == {"center": "baseline"}
