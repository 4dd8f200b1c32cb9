"""Pieces of dualattn.train checked against references: balanced accuracy vs sklearn, the epoch sampler
vs DistributedSampler's contract, the metrics CSV round trip, the state digest."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dualattn.train.callbacks import METRIC_COLUMNS, _metrics_text, read_metrics, state_digest
from dualattn.train.datamodule import EpochSampler, _set_dataset_epoch, epoch_seed
from dualattn.evaluate.metrics import balanced_accuracy  # the one implementation training uses too


@pytest.mark.parametrize(
    "preds, labels, expected",
    [
        ([0, 0, 1, 1], [0, 1, 1, 1], (1 / 1 + 2 / 3) / 2),
        ([1, 1, 1, 1], [0, 0, 1, 1], 0.5),
        ([0, 1, 2, 2], [0, 1, 2, 0], (1 / 2 + 1 + 1) / 3),
        ([2, 2], [0, 0], 0.0),  # a class only predicted does not count
    ],
)
def test_balanced_accuracy_hand_cases(preds, labels, expected):
    assert balanced_accuracy(torch.tensor(labels), torch.tensor(preds)) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_balanced_accuracy_matches_sklearn(seed):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 5))
    n = int(rng.integers(5, 60))
    y = rng.integers(0, k, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes only predicted
        ref = balanced_accuracy_score(y, p)
    assert balanced_accuracy(torch.from_numpy(y), torch.from_numpy(p)) == pytest.approx(ref, abs=1e-12)


def test_balanced_accuracy_errors_and_empty():
    assert math.isnan(balanced_accuracy(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        balanced_accuracy(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_epoch_sampler_is_a_fixed_function_of_seed_and_epoch():
    a = EpochSampler(50, shuffle=True, seed=3)
    b = EpochSampler(50, shuffle=True, seed=3)
    orders = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        orders.append(list(a))
        assert orders[-1] == list(b) and sorted(orders[-1]) == list(range(50))
    assert orders[0] != orders[1] != orders[2]
    # a fresh sampler jumping straight to epoch 2 (a resumed run) yields the same order
    c = EpochSampler(50, shuffle=True, seed=3, epoch_fn=lambda: 2)
    assert list(c) == orders[2]
    assert list(EpochSampler(50, shuffle=True, seed=4)) != orders[0]
    assert list(EpochSampler(7, shuffle=False)) == list(range(7))


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (7, 3), (2, 4)])
def test_epoch_sampler_shards(n, world):
    # training: padded like DistributedSampler (every rank the same length, union covers everything)
    shards = [list(EpochSampler(n, shuffle=True, seed=0, rank=r, world_size=world)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == math.ceil(n / world)
    assert set().union(*shards) == set(range(n))
    assert all(len(s) == len(EpochSampler(n, shuffle=True, rank=r, world_size=world)) for r, s in enumerate(shards))
    # evaluation: no padding, a partition of the items
    shards = [list(EpochSampler(n, shuffle=False, rank=r, world_size=world, pad=False)) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))
    with pytest.raises(ValueError, match="rank=2"):
        EpochSampler(n, shuffle=False, rank=2, world_size=2)


def test_epoch_seed_distinct_and_stable():
    seeds = {epoch_seed(0, e, r) for e in range(20) for r in range(4)}
    assert len(seeds) == 80
    assert epoch_seed(5, 1, 2) == epoch_seed(5, 1, 2)
    assert 0 <= epoch_seed(2**40, 3) < 2**63


def test_set_dataset_epoch_resets_augmentation_stream():
    class DS:
        def __init__(self):
            self._draws = {1: 3}
            self.epoch = None

        def set_epoch(self, e):
            self.epoch = e

    ds = DS()
    _set_dataset_epoch(ds, 4)
    assert ds.epoch == 4 and ds._draws == {}
    _set_dataset_epoch([1, 2], 1)  # plain sequences are left alone


def test_metrics_csv_round_trip(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 0.1 + 1e-17, "train_ce": 1 / 3, "train_penalty": 0.0,
         "val_balanced_accuracy": 0.75, "val_loss": math.nan, "val_objective": 0.625, "lr": 1e-3,
         "epoch_time_s": 2.5},
    ]  # fmt: skip
    f = tmp_path / "metrics.csv"
    f.write_text(_metrics_text(rows))
    back = read_metrics(f)
    assert list(back[0]) == list(METRIC_COLUMNS)
    for key in METRIC_COLUMNS:
        if key == "val_loss":
            assert math.isnan(back[0][key])
        else:
            assert back[0][key] == rows[0][key]  # repr() keeps every bit


def test_state_digest_sees_every_bit():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    d0 = state_digest(m)
    with torch.no_grad():
        m[0].weight[0, 0] = torch.nextafter(m[0].weight[0, 0], torch.tensor(2.0))
    d1 = state_digest(m)
    m[1].num_batches_tracked += 1
    assert len({d0, d1, state_digest(m)}) == 3


def test_augmentation_stream_depends_on_training_seed_and_epoch():
    from dualattn.train import TrainConfig
    from dualattn.train.datamodule import TrainDataModule

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.streams = []

        def set_epoch(self, e):
            self.streams.append(e)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.zeros(1, 2, 2), "label": torch.tensor(i % 2)}

    streams = {}
    for seed in (0, 0, 1):
        ds = DS()
        dm = TrainDataModule({"train": ds, "val": DS()}, config=TrainConfig(seed=seed))
        loader = dm.train_dataloader()
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            assert len(list(loader)) == 1
        streams.setdefault(seed, []).append(ds.streams)
    assert streams[0][0] == streams[0][1]  # reproducible
    assert len(set(streams[0][0])) == 2  # a new stream per epoch
    assert not set(streams[0][0]) & set(streams[1][0])  # another training seed, other augmentations


def test_recipe_gate_options_reach_the_model_and_the_config_overrides_them(monkeypatch):
    """build_model: the variant's recipe fills gate options the config leaves unset, key by key."""
    from dualattn.train import recipes
    from dualattn.train import TrainConfig
    from dualattn.train.run import build_model, resolve_recipe

    recipe = {"init": "scratch", "freeze_backbone": False, "alpha": 1.0,
              "model_kwargs": {"gate_scale": 8.0, "gate_zero_init": True, "entropy_weight": 0.5}}  # fmt: skip
    monkeypatch.setitem(recipes.DEFAULT_RECIPES, "exact", recipe)
    cfg = TrainConfig(variant="exact", model_kwargs={"features": 2, "entropy_weight": 0.25})
    assert resolve_recipe(cfg)["model_kwargs"] == recipe["model_kwargs"]
    model = build_model(cfg, in_channels=1, num_classes=2, spatial_dims=2, img_size=(32, 32))
    assert model.gates["block3"].scale == 8.0 and float(model.gates["block3"].u.weight.abs().sum()) == 0.0
    assert model.entropy_weight == 0.25  # the config's own model_kwargs win
    assert model.config["gate_scale"] == 8.0 and model.config["entropy_weight"] == 0.25  # rebuilt from weights
    base = build_model(TrainConfig(variant="baseline", model_kwargs={"features": 2}), in_channels=1, num_classes=2,
                       spatial_dims=2)  # fmt: skip
    assert "gate_scale" not in base.config
