"""Precise BatchNorm (``TrainConfig.precise_bn``): statistics recomputed on un-augmented training images, weights fixed.

The 3-D demo's classifiers learned on the training split while their BatchNorm running averages (momentum 0.1,
14 optimizer steps an epoch) lagged the weights: in eval mode they predicted one class on val. These tests check
the recomputation against a hand computation, the images it reads, and that a trained run's saved statistics are
the ones its final weights give on those images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dualattn.data import FolderDataset
from dualattn.train import fit, load_config, load_run
from dualattn.train.config import TrainConfig
from dualattn.train.datamodule import TrainDataModule, build_datasets
from dualattn.train.module import ClassifierModule
from _train_helpers import write_blobs


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return write_blobs(tmp_path_factory.mktemp("blobs"), n=40)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def test_recompute_is_the_cumulative_average_of_the_batches_and_restores_modes_and_rng():
    model = _tiny().eval()
    module = ClassifierModule(model, config=TrainConfig(dataset="x", precise_bn=8))
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 1, 8, 8, generator=g) * s + s for s in (1.0, 2.0, 3.0)]
    conv, bn = model[0], model[1]
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    # hand: cumulative average of the per-batch means and unbiased variances
    want_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    want_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    bn.running_mean.fill_(123.0)
    state = torch.random.get_rng_state()
    assert module.recompute_batchnorm(batches) == 1
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and not model.training and not any(m.training for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), state)  # dropout ran in train mode, the stream is untouched
    model.train()
    module.recompute_batchnorm(batches)
    assert all(m.training for m in model.modules())


def test_recompute_without_batchnorm_reads_nothing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    module = ClassifierModule(model, config=TrainConfig(dataset="x", precise_bn=8))
    assert module.recompute_batchnorm() == 0  # no data module needed: nothing is read


def test_calibration_batches_are_evenly_spaced_unaugmented_training_images(blobs):
    cfg = load_config(overrides=[f"dataset={blobs}", "batch_size=4", "augment=true", "precise_bn=7"])
    datasets = build_datasets(cfg)
    dm = TrainDataModule(datasets, config=cfg)
    train = datasets["train"]
    assert train.augment  # the training split augments; the calibration reads must not
    n = len(train)
    batches = dm.calibration_batches(7)
    assert [b.shape[0] for b in batches] == [4, 3]
    clean = FolderDataset(blobs, split="train", seed=cfg.split_seed, fractions=tuple(cfg.split_fractions),
                          size=cfg.image_size, normalize="zscore")
    idx = sorted({i * n // 7 for i in range(7)})
    want = torch.stack([clean[i]["image"] for i in idx])
    assert torch.equal(torch.cat(batches), want)
    everything = dm.calibration_batches(10_000)
    assert sum(b.shape[0] for b in everything) == n and min(b.shape[0] for b in everything) > 1


def test_config_rejects_bad_precise_bn():
    for bad in (-1, True, 2.5):
        with pytest.raises(ValueError, match="precise_bn"):
            TrainConfig(dataset="x", precise_bn=bad)


def test_a_run_saves_the_statistics_its_weights_give_on_the_calibration_images(blobs, tmp_path):
    cfg = load_config(overrides=[f"dataset={blobs}", "accelerator=cpu", "devices=1", "batch_size=8", "max_epochs=2",
                                 "model_kwargs.features=4", "precise_bn=12"])
    run = fit(cfg, out=tmp_path / "run")
    model = load_run(run, "last")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    module = ClassifierModule(model, config=cfg)
    batches = TrainDataModule(build_datasets(cfg), config=cfg).calibration_batches(12)
    module.recompute_batchnorm(batches)
    for m, (mean, var) in zip(bns, saved):
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, var, rtol=1e-5, atol=1e-6)


def test_select_predict_recomputes_only_the_learning_parts_each_on_its_own_inputs():
    """Phase 2: the frozen predictor keeps its statistics (never from the selector's masks); phase 1: the predictor's
    come from seeded random blob masks (the same every epoch) and the selector's from the images."""
    from dualattn.models import create_model
    from dualattn.train.select_predict import SelectPredictModule

    torch.manual_seed(0)
    model = create_model("unet_encoder", variant="select_predict", in_channels=2, features=2).eval()
    cfg = TrainConfig(dataset="x", variant="select_predict", precise_bn=8, max_epochs=4)
    module = SelectPredictModule(model, config=cfg)
    g = torch.Generator().manual_seed(2)
    batches = [torch.rand(4, 2, 32, 32, generator=g) * 3 + 1 for _ in range(2)]

    def stats(part):
        return {k: v.clone() for k, v in part.state_dict().items() if k.endswith("running_mean")}

    pred0, sel0 = stats(model.predictor), stats(model.backbone)
    module._phase = lambda: 2
    assert module.recompute_batchnorm(batches) > 0
    assert all(torch.equal(v, pred0[k]) for k, v in stats(model.predictor).items())
    assert any(not torch.equal(v, sel0[k]) for k, v in stats(model.backbone).items())
    module._phase = lambda: 1
    module.recompute_batchnorm(batches)
    pred1 = stats(model.predictor)
    assert any(not torch.equal(v, pred0[k]) for k, v in pred1.items())
    module.recompute_batchnorm(batches)
    assert all(torch.equal(v, pred1[k]) for k, v in stats(model.predictor).items())
    assert not model.training and not any(m.training for m in model.modules())


def test_penalty_warmup_ramps_the_penalty_from_zero_and_validates():
    module = ClassifierModule(_tiny(), config=TrainConfig(dataset="x", penalty_warmup_epochs=3))
    got = []
    for epoch in range(5):
        module.epoch_index = lambda e=epoch: e
        got.append(module.penalty_factor())
    assert got == [0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    off = ClassifierModule(_tiny(), config=TrainConfig(dataset="x"))
    off.epoch_index = lambda: 0
    assert off.penalty_factor() == 1.0
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="penalty_warmup_epochs"):
            TrainConfig(dataset="x", penalty_warmup_epochs=bad)


def test_penalty_warmup_reaches_the_runs_from_a_preset(tmp_path):
    from dualattn.pipelines import demo

    preset = demo.get_preset("tiny3d", penalty_warmup_epochs=2)
    assert demo._train_config(preset, data=tmp_path, variant="dual", seed=0, progress=False).penalty_warmup_epochs == 2
    assert preset.to_dict()["penalty_warmup_epochs"] == 2
    assert "penalty_warmup_epochs" not in demo.get_preset("tiny3d").to_dict()
    with pytest.raises(ValueError, match="penalty_warmup_epochs=-1 must be an int >= 0"):
        demo.get_preset("3d", penalty_warmup_epochs=-1)


def test_penalty_warmup_trains_the_first_epoch_on_cross_entropy_alone(blobs, tmp_path):
    from dualattn.train.callbacks import read_metrics

    cfg = load_config(overrides=[f"dataset={blobs}", "accelerator=cpu", "devices=1", "batch_size=8", "max_epochs=2",
                                 "model_kwargs.features=4", "variant=dual", "penalty_warmup_epochs=2"])
    run = fit(cfg, out=tmp_path / "run")
    rows = read_metrics(run / "metrics.csv")
    first, second = rows[0], rows[1]
    assert first["train_penalty"] > 0 and first["train_loss"] == pytest.approx(first["train_ce"], abs=1e-6)
    assert second["train_loss"] == pytest.approx(second["train_ce"] + 0.5 * second["train_penalty"], rel=1e-5)
