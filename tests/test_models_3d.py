"""3-D models: every variant of ``unet_encoder`` and ``resnet18`` builds, runs forward/backward and trains a step;
the exact / multilevel maps are the reference solver's projection; ``dualattn train`` fits a 3-D run from YAML."""

from __future__ import annotations

import json

import pytest
import torch

from dualattn.models import PENALTY_VARIANTS, create_model, list_variants

# tiny sizes: 16^3 inputs; the ResNet with the "small" stem (no /4) so that block4 is 2^3, not 1^3
MODELS = {
    "unet_encoder": {"features": 2},
    "resnet18": {"features": 4, "stem": "small"},
}
SIZE = 16
CASES = [(name, variant) for name in MODELS for variant in list_variants(name)]
CASES += [(name, "exact_pool") for name in MODELS]  # the other designs of the exact forward
CASES += [(name, "multilevel_hybrid") for name in MODELS if "multilevel" in list_variants(name)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _build(name: str, variant: str, **extra):
    kw = dict(MODELS[name], **extra)
    if variant == "exact_pool":
        variant, kw["exact_mode"] = "exact", "pool"
    if variant == "multilevel_hybrid":
        variant, kw["exact_mode"] = "multilevel", "hybrid"
    torch.manual_seed(0)
    return create_model(name, variant=variant, in_channels=4, spatial_dims=3, img_size=SIZE, **kw)


@pytest.mark.parametrize("name,variant", CASES)
def test_forward_backward_and_one_step(name, variant):
    model = _build(name, variant)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, SIZE, SIZE, SIZE, generator=gen)
    y = torch.tensor([0, 1])
    out = model.forward_with_attention(x)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    blocks = set(model.attention_blocks)
    assert set(out.tau) == blocks
    for block, tau in out.tau.items():
        assert tau.dim() == 4 and tau.shape[0] == 2  # (B, D, H, W)
        torch.testing.assert_close(tau.flatten(1).sum(1), torch.ones(2), rtol=0, atol=1e-5)
    if variant in ("dual", "exact", "multilevel", "exact_pool", "multilevel_hybrid"):
        assert set(out.mu) == blocks
        for mu in out.mu.values():
            torch.testing.assert_close(mu.flatten(1).sum(1), torch.ones(2), rtol=0, atol=1e-5)
    loss = torch.nn.functional.cross_entropy(out.logits, y) + out.penalty
    if variant in PENALTY_VARIANTS:
        assert out.penalty.item() > 0
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    gate = [g for n, g in grads.items() if n.startswith("gates.")]
    assert (len(gate) > 0) == bool(blocks)
    assert all(g.abs().sum() > 0 for g in gate[:1])  # the gates get a learning signal
    # one optimizer step changes the weights and keeps the output finite
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()  # (in training mode BatchNorm statistics move between two calls)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_with_attention(x).logits)  # forward(x): the same function


@pytest.mark.cvx
@pytest.mark.parametrize("name", list(MODELS))
def test_exact_3d_maps_are_the_solver_projection(name):
    """The maps an ``exact`` 3-D model weights its features with solve Eq. 4 on its own gate maps."""
    pytest.importorskip("cvxpy")
    from dualattn.consistency import solve_cvx

    model = _build(name, "exact").double().eval()
    x = torch.randn(2, 4, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        out = model.forward_with_attention(x)
    ref_k, ref_l = solve_cvx(out.tau["block3"], out.tau["block4"])
    assert out.mu["block3"].shape[1:] == (4, 4, 4) and out.mu["block4"].shape[1:] == (2, 2, 2)
    assert (out.mu["block3"] - ref_k).abs().max() <= 1e-5
    assert (out.mu["block4"] - ref_l).abs().max() <= 1e-5
    # and it is exactly consistent: each coarse cell holds the mass of its 2x2x2 fine block
    pooled = out.mu["block3"].reshape(2, 2, 2, 2, 2, 2, 2).sum(dim=(2, 4, 6))
    torch.testing.assert_close(pooled, out.mu["block4"], rtol=1e-12, atol=1e-14)


@pytest.mark.cvx
def test_multilevel_3d_maps_are_the_solver_chain():
    pytest.importorskip("cvxpy")
    from dualattn.consistency import solve_cvx_chain

    model = _build("unet_encoder", "multilevel").double().eval()
    x = torch.randn(1, 4, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        out = model.forward_with_attention(x)
    blocks = ["block2", "block3", "block4"]
    refs = solve_cvx_chain([out.tau[b] for b in blocks])
    for b, ref in zip(blocks, refs):
        assert (out.mu[b] - ref).abs().max() <= 1e-5, b


def test_dualattn_train_3d_from_yaml(tmp_path):
    """``dualattn train --config`` on a 3-D dataset: spatial_dims comes from the data; the run rebuilds in 3-D."""
    import yaml
    from typer.testing import CliRunner

    from dualattn.cli import app
    from dualattn.data import make_dataset
    from dualattn.runs import RunDir

    data = make_dataset("synthetic-brain-3d", tmp_path / "d", n=12, size=16, seed=0)
    cfg = {
        "dataset": str(data), "image_size": 16, "model": "unet_encoder", "variant": "exact",
        "model_kwargs": {"features": 2}, "batch_size": 4, "max_epochs": 1, "accelerator": "cpu", "devices": 1,
        "split_fractions": [0.5, 0.25, 0.25],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), "--config", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    run = RunDir(tmp_path / "run")
    model = run.load_model()
    assert model.config["spatial_dims"] == 3 and model.variant == "exact"
    assert run.model_input() == (4, (16, 16, 16))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["val_balanced_accuracy"] <= 1.0
    with torch.no_grad():
        out = model.forward_with_attention(torch.randn(1, 4, 16, 16, 16))
    assert out.mu["block3"].shape == (1, 4, 4, 4)
