"""TrainConfig: YAML round trip, typed overrides, errors naming the bad key/value, shipped configs."""

from __future__ import annotations

import dataclasses
from importlib import resources

import pytest
import yaml

from dualattn.train import TrainConfig, config_keys, load_config, save_config
from dualattn.train.config import parse_override


def test_defaults_follow_the_paper():
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.scheduler, cfg.augment) == ("adam", 1e-3, "plateau", True)
    assert cfg.alpha is None  # resolved from the variant's recipe, else the paper's 10


def test_yaml_round_trip(tmp_path):
    cfg = load_config(
        overrides=[
            "variant=dual",
            "lr=5e-4",
            "alpha=10",
            "split_fractions=[0.8, 0.1, 0.1]",
            "model_kwargs.features=8",
            "model_kwargs.witness=amortized",
            "devices=2",
            "early_stopping_patience=4",
        ]
    )
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.to_dict() == yaml.safe_load((tmp_path / "config.yaml").read_text())
    # every key survives a dict round trip too
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("lr=1e-3", "lr", 1e-3),  # YAML 1.1 reads this as a string
        ("lr=0.01", "lr", 0.01),
        ("lr=2", "lr", 2.0),  # ints are accepted for floats
        ("batch_size=8", "batch_size", 8),
        ("augment=false", "augment", False),
        ("alpha=null", "alpha", None),
        ("devices=2", "devices", 2),
        ("devices=auto", "devices", "auto"),
        ("devices=0,1", "devices", "0,1"),
        ("dataset=./data/brain", "dataset", "./data/brain"),
        ("init_from=runs/baseline/seed0", "init_from", "runs/baseline/seed0"),
        ("precision=bf16-mixed", "precision", "bf16-mixed"),
    ],
)
def test_overrides_are_typed(text, key, value):
    cfg = load_config(overrides=[text])
    got = getattr(cfg, key)
    assert got == value and type(got) is type(value)


def test_overrides_apply_in_order_over_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("variant: exact\nlr: 0.01\nmax_epochs: 7\n")
    cfg = load_config(f, ["lr=0.02", "lr=0.03"])
    assert (cfg.variant, cfg.lr, cfg.max_epochs) == ("exact", 0.03, 7)


@pytest.mark.parametrize("where", ["override", "file"])
def test_unknown_key_lists_valid_keys(tmp_path, where):
    if where == "override":
        call = lambda: load_config(overrides=["learning_rate=0.1"])  # noqa: E731
    else:
        f = tmp_path / "c.yaml"
        f.write_text("learning_rate: 0.1\n")
        call = lambda: load_config(f)  # noqa: E731
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert "'learning_rate'" in msg
    for key in config_keys():
        assert key in msg
    assert config_keys() == [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("lr=abc", "lr='abc'"),
        ("lr=-1", "lr=-1.0"),
        ("batch_size=1.5", "batch_size=1.5"),
        ("batch_size=0", "batch_size=0"),
        ("augment=maybe", "augment='maybe'"),
        ("optimizer=rmsprop", "optimizer='rmsprop'"),
        ("split_fractions=[0.5, 0.1, 0.1]", "split_fractions"),
        ("split_fractions=[0.5, 0.5]", "split_fractions"),
        ("deterministic=sometimes", "deterministic='sometimes'"),
        ("plateau_factor=1.5", "plateau_factor=1.5"),
        ("lr.x=1", "lr.x=1"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_name_the_value(text, needle):
    with pytest.raises(ValueError, match=None) as err:
        load_config(overrides=[text])
    assert needle in str(err.value)


def test_parse_override_keeps_strings_with_dots():
    assert parse_override("dataset=synthetic-brain") == ("dataset", "synthetic-brain")
    assert parse_override("cache_dir=/tmp/x.y") == ("cache_dir", "/tmp/x.y")
    assert parse_override("lr=3e-4") == ("lr", 3e-4)


def test_replace_validates():
    cfg = TrainConfig()
    assert cfg.replace(seed=3).seed == 3
    with pytest.raises(ValueError, match="max_epochs=0"):
        cfg.replace(max_epochs=0)
    with pytest.raises(ValueError, match="unknown config key 'epochs'"):
        cfg.replace(epochs=3)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "nope.yaml")


def test_file_must_be_a_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(f)


def test_shipped_configs_load_by_name():
    names = sorted(p.name for p in (resources.files("dualattn") / "configs").iterdir() if p.name.endswith(".yaml"))
    assert names, "no shipped configs"
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, TrainConfig)
        # the file holds only valid keys, and no key is repeated by the defaults needlessly
        data = yaml.safe_load((resources.files("dualattn") / "configs" / name).read_text())
        assert set(data) <= set(config_keys())
