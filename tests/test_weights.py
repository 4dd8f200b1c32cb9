"""dualattn.weights: safetensors round trip, header config, and refusal of anything else (never unpickles)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from dualattn.models import create_model
from dualattn.weights import WeightsError, load_model, read_metadata, save_model


def _trained_ish(name: str, **kw):
    torch.manual_seed(0)
    model = create_model(name, **kw)
    size = kw.get("img_size", 32)
    spatial = kw.get("spatial_dims", 2)
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        model(torch.randn(2, kw.get("in_channels", 1), *(size,) * spatial))
    return model


@pytest.mark.parametrize(
    "name,kw",
    [
        ("unet_encoder", {"variant": "dual", "features": 4, "img_size": 32, "alpha": 1.5}),
        ("resnet18", {"variant": "exact", "exact_mode": "pool", "features": 4, "spatial_dims": 3, "stem": "small", "img_size": 16}),
        ("resnet50", {"variant": "multilevel", "features": 2, "in_channels": 3}),
        ("vit_tiny", {"img_size": 32, "patch_size": 8, "num_layers": 2}),
    ],
)
def test_round_trip_is_bit_identical(tmp_path, name, kw):
    model = _trained_ish(name, **kw)
    path = save_model(model, tmp_path / "sub" / "m.safetensors", metadata={"epoch": 3, "val": [0.5, 0.25]})
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left behind
    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    ref, got = model.state_dict(), loaded.state_dict()
    assert list(ref) == list(got)
    for k in ref:
        assert ref[k].dtype == got[k].dtype and torch.equal(ref[k], got[k]), k
    info = read_metadata(path)
    assert info["config"] == model.config and info["metadata"] == {"epoch": 3, "val": [0.5, 0.25]}
    x = torch.randn(2, kw.get("in_channels", 1), *(kw.get("img_size", 32),) * kw.get("spatial_dims", 2))
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_overwrite_is_atomic_and_keeps_a_valid_file(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(create_model("unet_encoder", features=4), path)
    second = create_model("unet_encoder", features=8)
    save_model(second, path)
    assert load_model(path).config["features"] == 8


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")


class _Bomb:
    """Unpickling this would create a file (a stand-in for arbitrary code execution)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"state_dict": _Bomb(str(marker))}))
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_model(bad)
    assert not marker.exists()
    pt = tmp_path / "torch.pt"
    torch.save(create_model("unet_encoder", features=4).state_dict(), pt)
    with pytest.raises(WeightsError, match="torch.pt"):
        load_model(pt)


def test_corrupt_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(create_model("unet_encoder", features=4), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated.safetensors"):
        load_model(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="foreign.safetensors.*dualattn_config"):
        load_model(foreign)
    wrong = tmp_path / "wrong.safetensors"
    cfg = create_model("unet_encoder", features=8).config
    save_file({"fc.weight": torch.zeros(2, 4)}, str(wrong), metadata={"dualattn_config": json.dumps(cfg)})
    with pytest.raises(WeightsError, match="wrong.safetensors.*do not match"):
        load_model(wrong)


def test_save_rejects_models_without_config_and_bad_metadata(tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="JSON"):
        save_model(create_model("unet_encoder", features=4), tmp_path / "y.safetensors", metadata={"x": object()})
    assert not list(tmp_path.iterdir())
