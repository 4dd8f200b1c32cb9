"""GatedClassifier's activation layout: channels-last for float32 CPU inputs, same numbers as contiguous."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dualattn.models import create_model
from dualattn.weights import load_model, save_model

VARIANTS = ("baseline", "dual", "exact", "multilevel")


def _model(variant: str, dims: int, size: int):
    torch.manual_seed(0)
    return create_model("unet_encoder", variant=variant, in_channels=3, spatial_dims=dims, features=4, img_size=size)


def _stage_layouts(model, x):
    """Which memory format each stage's output has, for one forward pass."""
    seen = {}
    hooks = [stage.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
             for name, stage in model.backbone.stages.items()]
    try:
        out = model.forward_with_attention(x)
    finally:
        for h in hooks:
            h.remove()
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return out, {n: o.is_contiguous(memory_format=fmt) and not o.is_contiguous() for n, o in seen.items()}


@pytest.mark.parametrize("dims,size", [(2, 32), (3, 32)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_cpu_runs_channels_last_with_the_contiguous_numbers(variant, dims, size):
    model = _model(variant, dims, size).eval()
    x = torch.randn(2, 3, *([size] * dims))
    assert model.channels_last is None
    out, layouts = _stage_layouts(model, x.clone().requires_grad_(True))
    assert layouts and all(layouts.values()), layouts  # every stage ran channels-last
    model.channels_last = False
    ref, ref_layouts = _stage_layouts(model, x)
    assert not any(ref_layouts.values())
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5)
    for block in ref.mu:
        torch.testing.assert_close(out.mu[block], ref.mu[block], rtol=1e-5, atol=1e-6)
    # gradients w.r.t. the input agree too (the explainers take them)
    for flag in (None, False):
        model.channels_last = flag
        xi = x.clone().requires_grad_(True)
        model(xi)[:, 1].sum().backward()
        if flag is None:
            g = xi.grad
    torch.testing.assert_close(g, xi.grad, rtol=1e-4, atol=1e-6)


def test_float64_inputs_keep_their_layout_so_gradcheck_sees_the_reference_path():
    model = _model("exact", 2, 32).double().eval()
    _, layouts = _stage_layouts(model, torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert not any(layouts.values())
    model.channels_last = True  # forcing it works in float64 too
    _, layouts = _stage_layouts(model, torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert all(layouts.values())


def test_weights_trained_channels_last_save_and_load(tmp_path):
    """Parameters stay contiguous (only activations change layout): safetensors saves them as they are."""
    model = _model("dual", 3, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3, 16, 16, 16)).sum().backward()
    opt.step()
    assert all(p.is_contiguous() for p in model.parameters())
    path = save_model(model, tmp_path / "w.safetensors")
    back = load_model(path).eval()
    model.eval()
    x = torch.randn(2, 3, 16, 16, 16)
    torch.testing.assert_close(back(x), model(x))


def test_memory_format_benchmark_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "memory_format", Path(__file__).resolve().parents[1] / "benchmarks" / "memory_format.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.CASES = ((2, 16, 2),)
    out = tmp_path / "mf.json"
    assert module.main(["--steps", "1", "--warmup", "0", "--batch", "2", "--variants", "baseline",
                        "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["variant"] == "baseline" and row["train_step"]["speedup"] > 0
    assert row["max_abs_logit_difference"] < 1e-4
