"""``dualattn models``: the backbones x variants table with parameter counts."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.models import CNN_VARIANTS, count_parameters, create_model


def test_models_json_counts_match_the_models():
    result = CliRunner().invoke(app, ["models", "--json", "--in-channels", "4", "--features", "8", "--img-size", "64"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {"unet_encoder", "resnet18", "resnet50", "vit_b16"} <= set(rows)
    for variant in CNN_VARIANTS:
        model = create_model("unet_encoder", variant=variant, in_channels=4, features=8, img_size=64)
        assert rows["unet_encoder"]["params"][variant] == count_parameters(model)
    assert rows["vit_b16"]["params"]["dual"] is None
    with torch.device("meta"):
        assert rows["vit_b16"]["params"]["baseline"] == count_parameters(create_model("vit_b16", in_channels=4, img_size=64))


def test_models_table_prints_every_variant():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for word in ("unet_encoder", "resnet50", "multilevel", "baseline"):
        assert word in result.output


def test_models_lists_the_registered_designs():
    """select_predict and additive are variants registered in their own files: the table lists them too."""
    from dualattn.cli._models import _table_rows, all_variants

    assert {"select_predict", "additive"} <= set(all_variants())
    rows = {r["name"]: r["params"] for r in _table_rows(in_channels=4, spatial_dims=2, img_size=64, num_classes=2,
                                                        features=4)}
    assert rows["unet_encoder"]["additive"] > 0 and rows["unet_encoder"]["select_predict"] > 0
    assert rows["resnet18"]["additive"] is None  # additive is a U-Net encoder design
