"""Demo presets carry their training choices: the augmentation policy and the backbone's normalization reach every
run's ``TrainConfig``, are checked when the preset is built, and stay out of ``to_dict`` at their defaults (old demo
folders keep resuming)."""

from __future__ import annotations

import json

import pytest

from dualattn.data.transforms import AUGMENT_POLICIES, DEFAULT_AUGMENT_POLICY
from dualattn.models import NORMS
from dualattn.pipelines import demo
from dualattn.pipelines.demo import PRESETS, get_preset


@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
@pytest.mark.parametrize("norm", NORMS)
def test_policy_and_norm_reach_the_train_config(tmp_path, policy, norm):
    preset = get_preset("tiny3d", augment_policy=policy, model_kwargs={"features": 2, "norm": norm})
    cfg = demo._train_config(preset, data=tmp_path, variant="exact", seed=1, progress=False)
    assert cfg.augment_policy == policy and cfg.augment is True
    assert cfg.model_kwargs == {"features": 2, "norm": norm}
    cfg.validate()  # TrainConfig accepts what the preset accepted


def test_defaults_stay_out_of_to_dict_and_others_are_kept():
    tiny = get_preset("tiny")
    assert tiny.augment_policy == DEFAULT_AUGMENT_POLICY
    assert "augment_policy" not in tiny.to_dict()  # a folder written before the field existed still resumes
    d = json.loads(json.dumps(get_preset("tiny", augment_policy="anatomy").to_dict()))
    assert d["augment_policy"] == "anatomy"
    assert demo.DemoPreset(**{**d, "variants": tuple(d["variants"]), "seeds": tuple(d["seeds"])}).augment_policy \
        == "anatomy"


def test_bad_policy_or_norm_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="augment_policy='flip-ud' must be one of none, lr-flip-affine"):
        get_preset("3d", augment_policy="flip-ud")
    with pytest.raises(ValueError, match="norm='layer' must be one of batch, group, instance"):
        get_preset("3d", model_kwargs={"features": 8, "norm": "layer"})


def test_every_preset_builds_its_train_config(tmp_path):
    for name, preset in PRESETS.items():
        cfg = demo._train_config(preset, data=tmp_path, variant="baseline", seed=preset.seeds[0], progress=False)
        cfg.validate()
        assert cfg.augment_policy == preset.augment_policy, name
        assert cfg.model_kwargs == dict(preset.model_kwargs), name
        assert cfg.precise_bn == preset.precise_bn, name


def test_precise_bn_reaches_the_runs_and_stays_out_of_to_dict_when_off(tmp_path):
    assert get_preset("3d").precise_bn == 64 and get_preset("3d-full").precise_bn == 64
    assert get_preset("default").precise_bn == 0 and "precise_bn" not in get_preset("default").to_dict()
    d = json.loads(json.dumps(get_preset("3d").to_dict()))
    assert d["precise_bn"] == 64
    with pytest.raises(ValueError, match="precise_bn=-1 must be an int >= 0"):
        get_preset("3d", precise_bn=-1)
