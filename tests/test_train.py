"""Training end to end on tiny generated data: learning, run folder, resume equality, DDP, seeds, init-from."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dualattn.train import fit, fit_seeds, load_config, load_run
from dualattn.train.callbacks import METRIC_COLUMNS, read_metrics, state_digest
from _train_helpers import write_blobs as _write_blobs

SIZE = 32


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return _write_blobs(tmp_path_factory.mktemp("blobs"), n=96)


def _cfg(data: Path, *extra: str):
    return load_config(
        overrides=[
            f"dataset={data}",
            "accelerator=cpu",
            "devices=1",
            "batch_size=16",
            "model_kwargs.features=4",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def baseline_run(blobs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "baseline"
    return fit(_cfg(blobs, "max_epochs=5", "batch_size=8", "model_kwargs.features=8"), out=out)


def _sklearn_bal_acc(model, data: Path, split: str) -> float:
    from sklearn.metrics import balanced_accuracy_score

    from dualattn.data import FolderDataset

    ds = FolderDataset(data, split=split, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = np.array([int(ds[i]["label"]) for i in range(len(ds))])
    with torch.no_grad():
        pred = model.eval()(x).argmax(1).numpy()
    return float(balanced_accuracy_score(y, pred))


def test_end_to_end_learns_and_writes_the_run_folder(blobs, baseline_run):
    run = baseline_run
    for name in ("config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "summary.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert all(r["train_penalty"] == 0.0 and r["train_loss"] == r["train_ce"] for r in rows)  # baseline
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((run / "summary.json").read_text())
    best = max(rows, key=lambda r: (r["val_balanced_accuracy"], -r["epoch"]))
    assert summary["best_epoch"] == best["epoch"]
    assert summary["val_balanced_accuracy"] == best["val_balanced_accuracy"]
    assert summary["epochs"] == 5 and summary["seed"] == 0 and summary["world_size"] == 1
    assert set(summary["versions"]) >= {"torch", "lightning", "dualattn"}
    model = load_run(run)
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    # the best weights reproduce the recorded numbers, checked independently with sklearn
    assert _sklearn_bal_acc(model, blobs, "val") == pytest.approx(summary["val_balanced_accuracy"], abs=1e-12)
    assert _sklearn_bal_acc(model, blobs, "test") == pytest.approx(summary["test_balanced_accuracy"], abs=1e-12)
    # better than chance (0.5) on held-out data
    assert summary["val_balanced_accuracy"] >= 0.8
    assert summary["test_balanced_accuracy"] >= 0.7
    # the resolved config sits beside the weights and rebuilds the run
    assert load_config(run / "config.yaml") == _cfg(blobs, "max_epochs=5", "batch_size=8", "model_kwargs.features=8")


def test_existing_run_is_not_overwritten_silently(blobs, baseline_run):
    with pytest.raises(FileExistsError, match="resume"):
        fit(_cfg(blobs, "max_epochs=1"), out=baseline_run)


def test_resume_equals_uninterrupted(blobs, tmp_path):
    # the dual variant exercises the penalty; patience 0 makes the plateau scheduler act, so its
    # state must survive the checkpoint too
    args = ("variant=dual", "plateau_patience=0", "plateau_factor=0.5")
    straight = fit(_cfg(blobs, *args, "max_epochs=3"), out=tmp_path / "straight")
    # the resumed part loads data in 2 worker processes: that must not change the result either
    part = fit(_cfg(blobs, *args, "max_epochs=1", "num_workers=0"), out=tmp_path / "resumed")
    assert len(read_metrics(part / "metrics.csv")) == 1
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.002"):
        fit(_cfg(blobs, *args, "max_epochs=3", "lr=2e-3"), out=tmp_path / "resumed", resume=True)
    resumed = fit(_cfg(blobs, *args, "max_epochs=3", "num_workers=2"), out=tmp_path / "resumed", resume=True)
    assert load_config(resumed / "config.yaml").max_epochs == 3
    a, b = read_metrics(straight / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for key in METRIC_COLUMNS:
            if key != "epoch_time_s":
                assert ra[key] == rb[key], (ra["epoch"], key)
    assert any(r["lr"] < 1e-3 for r in a) or all(
        a[i]["val_balanced_accuracy"] > a[i - 1]["val_balanced_accuracy"] for i in range(1, 3)
    )
    for which in ("best", "last"):
        assert state_digest(load_run(straight, which)) == state_digest(load_run(resumed, which))
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((resumed / "summary.json").read_text())
    for key in ("val_balanced_accuracy", "test_balanced_accuracy", "best_epoch", "epochs"):
        assert sa[key] == sb[key]
    assert sb["resumed"] is True and sa["resumed"] is False
    # a finished run asked to resume with nothing left to do returns at once
    assert fit(_cfg(blobs, *args, "max_epochs=3"), out=resumed, resume=True) == resumed
    assert len(read_metrics(resumed / "metrics.csv")) == 3


def test_checkpoint_loads_with_weights_only(baseline_run):
    state = torch.load(baseline_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert state["epoch"] == 4 and "state_dict" in state and "optimizer_states" in state
    assert state["dualattn"]["config"]["max_epochs"] == 5


def test_fit_seeds_aggregates_mean_and_std(blobs, tmp_path):
    out = fit_seeds(_cfg(blobs, "max_epochs=1"), [0, 1], tmp_path / "seeds")
    agg = json.loads((out / "summary.json").read_text())
    assert agg["seeds"] == [0, 1] and agg["runs"] == ["seed0", "seed1"]
    per_seed = [json.loads((out / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [s["seed"] for s in per_seed] == [0, 1]
    for key in ("val_balanced_accuracy", "test_balanced_accuracy", "wall_time_s"):
        values = [s[key] for s in per_seed]
        m = agg["metrics"][key]
        assert m["values"] == values
        assert m["mean"] == pytest.approx(statistics.fmean(values))
        assert m["std"] == pytest.approx(float(np.std(values, ddof=1)))
    # different seeds give different initialisations
    assert state_digest(load_run(out / "seed0", "last")) != state_digest(load_run(out / "seed1", "last"))


def test_init_from_baseline_with_frozen_backbone(blobs, baseline_run, tmp_path):
    cfg = _cfg(blobs, "variant=dual", "max_epochs=1", "freeze_backbone=true", "model_kwargs.features=8")
    run = fit(cfg, out=tmp_path / "dual", init_from=baseline_run)
    base, dual = load_run(baseline_run).state_dict(), load_run(run, "last")
    backbone = dict(dual.state_dict())
    names = [n for n, _ in dual.named_parameters()]
    backbone_names = {n for n, p in dual.named_parameters() if any(p is q for q in dual.backbone_parameters())}
    assert backbone_names and backbone_names != set(names)
    for name in backbone_names:
        # frozen: identical to the baseline's weights after training
        assert torch.equal(backbone[name], base[name]), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["init_from"] == str(baseline_run) and summary["freeze_backbone"] is True
    assert summary["trainable_parameters"] < summary["parameters"]
    assert load_config(run / "config.yaml").init_from == str(baseline_run)


def test_cli_train_bad_key_print_config_resume(blobs, baseline_run, tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--set", "learning_rate=1"])
    assert res.exit_code == 2
    assert "learning_rate" in res.output and "max_epochs" in res.output
    res = runner.invoke(
        app,
        ["train", "--out", str(tmp_path / "x"), "--set", f"dataset={blobs}", "--set", "lr=3e-4", "--print-config"],
    )
    assert res.exit_code == 0, res.output
    assert "lr: 0.0003" in res.output
    # --resume without --config reads OUT/config.yaml; a finished run has nothing left to do
    before = (baseline_run / "metrics.csv").read_text()
    res = runner.invoke(app, ["train", "--out", str(baseline_run), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "val balanced accuracy" in res.output
    assert (baseline_run / "metrics.csv").read_text() == before


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP on CPU is tested on POSIX")
def test_ddp_two_cpu_processes_agree(blobs, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    cmd = [
        sys.executable, "-m", "dualattn", "train", "--out", str(out), "--no-progress",
        "--set", f"dataset={blobs}", "--set", "accelerator=cpu", "--set", "strategy=ddp",
        "--set", "devices=2", "--set", "max_epochs=2", "--set", "batch_size=8",
        "--set", "variant=dual", "--set", "model_kwargs.features=4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / "checkpoints" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    # both ranks end with the same weights (incl. BatchNorm buffers) and the same epoch metrics
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    drop = lambda row: {k: v for k, v in row.items() if k != "epoch_time_s"}  # noqa: E731
    assert drop(ranks[0]["last_row"]) == drop(ranks[1]["last_row"])
    assert ranks[0]["best"] == ranks[1]["best"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert ranks[0]["state_sha256"] == state_digest(load_run(out, "last"))
    # the reduced train loss is the sample-weighted mean over both ranks' shards
    rows = read_metrics(out / "metrics.csv")
    assert math.isfinite(rows[-1]["train_loss"]) and rows[-1]["train_loss"] == ranks[0]["last_row"]["train_loss"]
