"""dualattn.train.recipes: every variant has a recipe that builds, alpha has one default, the recipe
fills what the config leaves unset (and the config wins), and the old import path still resolves."""

from __future__ import annotations

import pytest

from dualattn.models import CNN_VARIANTS, PAPER_ALPHA, PENALTY_VARIANTS, create_model
from dualattn.train.config import TrainConfig
from dualattn.train.recipes import DEFAULT_RECIPES, DUAL_GATE, MULTILEVEL_GATE, SHARP_GATE, resolve_recipe


def test_default_recipes_cover_every_variant():
    assert set(DEFAULT_RECIPES) == set(CNN_VARIANTS)
    for recipe in DEFAULT_RECIPES.values():
        assert recipe["init"] in ("scratch", "baseline")
        assert isinstance(recipe["freeze_backbone"], bool)
        assert recipe["alpha"] >= 0
    assert "model_kwargs" not in DEFAULT_RECIPES["baseline"]
    for variant in CNN_VARIANTS[1:]:  # every gated variant's recipe builds, with the options it names
        model = create_model("unet_encoder", variant=variant, features=2, img_size=32,
                             **DEFAULT_RECIPES[variant]["model_kwargs"])  # fmt: skip
        for key, value in DEFAULT_RECIPES[variant]["model_kwargs"].items():
            assert model.config[key] == value
        assert all(g.scale == model.config["gate_scale"] for g in model.gates.values())


def test_sharp_gate_values_and_penalty_alpha():
    assert SHARP_GATE == {"gate_scale": 16.0, "gate_zero_init": True, "entropy_weight": 1.0, "attention_area": 0.15,
                          "gate_form": "cascaded", "gate_bias": True}
    assert DUAL_GATE == {**SHARP_GATE, "gate_zero_init": False}  # dual alone starts u at random (method study)
    assert MULTILEVEL_GATE == {**SHARP_GATE, "exact_mode": "hybrid"}  # multilevel adds the pooling head (round 5)
    from dualattn.train.recipes import EXACT_GATE

    # exact: what the method study's corrected rule selects (round 5): the pooling head, no sharpness term
    assert EXACT_GATE == {**SHARP_GATE, "exact_mode": "hybrid", "entropy_weight": 0.0}
    special = {"dual": DUAL_GATE, "multilevel": MULTILEVEL_GATE, "exact": EXACT_GATE}
    for variant in CNN_VARIANTS[1:]:
        assert DEFAULT_RECIPES[variant]["model_kwargs"] == special.get(variant, SHARP_GATE)
        assert DEFAULT_RECIPES[variant]["model_kwargs"] is not SHARP_GATE  # each recipe owns its copy
        assert DEFAULT_RECIPES[variant]["alpha"] == (1.0 if variant in PENALTY_VARIANTS else 0.0)


def test_resolve_recipe_fills_unset_fields_and_the_config_wins():
    got = resolve_recipe(TrainConfig(variant="dual"))
    assert got == {"alpha": 1.0, "init": "scratch", "freeze_backbone": False, "model_kwargs": DUAL_GATE}
    got = resolve_recipe(TrainConfig(variant="kl", alpha=3.0, freeze_backbone=True))
    assert got["alpha"] == 3.0 and got["freeze_backbone"] is True


def test_a_variant_without_recipe_gets_the_papers_alpha(monkeypatch):
    monkeypatch.delitem(DEFAULT_RECIPES, "dual")
    got = resolve_recipe(TrainConfig(variant="dual"))
    assert got == {"alpha": PAPER_ALPHA, "init": "scratch", "freeze_backbone": False, "model_kwargs": {}}


def test_models_hold_architecture_only():
    import dualattn.models as models

    assert not hasattr(models, "DEFAULT_RECIPES") and not hasattr(models, "SHARP_GATE")
    assert models.PAPER_ALPHA == 10.0  # the one default of alpha: the paper's, used by create_model
