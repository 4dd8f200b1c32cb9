"""``select_by``: which epoch becomes ``best.safetensors`` (highest val balanced accuracy or lowest val objective)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dualattn.train import TrainConfig, fit, load_config, load_run
from dualattn.train.callbacks import METRIC_COLUMNS, RunRecorder, read_metrics, select_best_row, state_digest
from dualattn.train.config import SELECT_BY
from _train_helpers import write_blobs as _write_blobs

SIZE = 32
NAN = math.nan


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return _write_blobs(tmp_path_factory.mktemp("blobs"), n=32)


def _cfg(data: Path, *extra: str) -> TrainConfig:
    return load_config(
        overrides=[
            f"dataset={data}",
            "accelerator=cpu",
            "devices=1",
            "batch_size=8",
            "model_kwargs.features=2",
            *extra,
        ]
    )


# -- the config -----------------------------------------------------------------------------------


def test_default_and_allowed_values():
    assert TrainConfig().select_by == "val_balanced_accuracy"
    assert SELECT_BY == {"val_balanced_accuracy": "max", "val_objective": "min"}
    cfg = load_config(overrides=["select_by=val_objective"])
    assert cfg.select_by == "val_objective"
    assert "select_by: val_objective" in cfg.to_yaml()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("value", ["val_loss", "objective", "", "VAL_OBJECTIVE"])
def test_unknown_value_names_the_allowed_ones(value):
    with pytest.raises(ValueError, match=r"select_by=.*val_balanced_accuracy.*val_objective"):
        TrainConfig(select_by=value)
    with pytest.raises(ValueError, match="select_by"):
        load_config(overrides=[f"select_by={value}"])


def test_cli_print_config_and_bad_value(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["train", "--set", "select_by=val_objective", "--print-config"])
    assert res.exit_code == 0, res.output
    assert "select_by: val_objective" in res.output
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--set", "select_by=val_loss"])
    assert res.exit_code == 2
    assert "val_objective" in res.output


# -- the rule (hand-made rows) ------------------------------------------------------------------


def _rows(key: str, values: list[float]) -> list[dict[str, float]]:
    return [{"epoch": e, key: v} for e, v in enumerate(values, start=1)]


@pytest.mark.parametrize(
    ("select_by", "values", "epoch"),
    [
        # accuracy: highest; ties keep the earliest epoch (the epoch-1 case on easy data)
        ("val_balanced_accuracy", [1.0, 1.0, 1.0], 1),
        ("val_balanced_accuracy", [0.5, 0.9, 0.9, 0.75], 2),
        ("val_balanced_accuracy", [0.5, 0.75, 0.9], 3),
        # objective: lowest; ties keep the earliest
        ("val_objective", [0.9, 0.4, 0.5, 0.4], 2),
        ("val_objective", [0.9, 0.7, 0.5, 0.3], 4),
        ("val_objective", [0.2, 0.7, 0.5, 0.3], 1),
        ("val_objective", [-1.0, 0.0, -2.0], 3),
        # NaN is never selected, before or after the best
        ("val_balanced_accuracy", [NAN, 0.5, NAN, 0.25], 2),
        ("val_objective", [NAN, 0.5, NAN, 0.75], 2),
        ("val_objective", [0.5, NAN, 0.25], 3),
        # +-inf are values like others
        ("val_objective", [math.inf, 0.5], 2),
        ("val_balanced_accuracy", [-math.inf, NAN], 1),
    ],
)
def test_select_best_row(select_by, values, epoch):
    row = select_best_row(_rows(select_by, values), select_by)
    assert row is not None and row["epoch"] == epoch
    # the order rows arrive in does not matter: ties still keep the earliest epoch
    assert select_best_row(list(reversed(_rows(select_by, values))), select_by)["epoch"] == epoch


@pytest.mark.parametrize("select_by", sorted(SELECT_BY))
def test_select_best_row_without_values(select_by):
    assert select_best_row([], select_by) is None
    assert select_best_row(_rows(select_by, [NAN, NAN]), select_by) is None
    # rows of a run made before the column existed
    assert select_best_row(_rows("val_loss", [0.3, 0.2]), select_by) is None


def test_select_best_row_unknown_metric():
    with pytest.raises(ValueError, match="val_objective"):
        select_best_row(_rows("val_loss", [0.3]), "val_loss")


def test_recorder_rebuilds_its_best_from_the_rows(tmp_path):
    rows = [
        {"epoch": e, "val_balanced_accuracy": acc, "val_objective": obj}
        for e, acc, obj in ((1, 1.0, 0.9), (2, 1.0, 0.3), (3, 0.5, 0.6))
    ]
    by_acc = RunRecorder(tmp_path, checkpoint=False)
    by_obj = RunRecorder(tmp_path, checkpoint=False, select_by="val_objective")
    # a checkpoint written before select_by existed: no select_by key, best by accuracy
    old_state = {"rows": rows, "best": 1.0, "best_epoch": 1}
    for rec in (by_acc, by_obj):
        rec.load_state_dict(old_state)
    assert (by_acc.best_epoch, by_acc.best) == (1, 1.0)
    assert (by_obj.best_epoch, by_obj.best) == (2, 0.3)
    state = by_obj.state_dict()
    assert state["select_by"] == "val_objective" and state["best_epoch"] == 2
    again = RunRecorder(tmp_path, checkpoint=False, select_by="val_objective")
    again.load_state_dict(state)
    assert again.state_dict() == state
    with pytest.raises(ValueError, match="select_by"):
        RunRecorder(tmp_path, select_by="val_loss")


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exact_run(blobs, tmp_path_factory) -> Path:
    # the sharp gate (entropy_weight 1) gives the variant a penalty > 0 (multilevel's recipe keeps it; exact's
    # corrected recipe has none)
    cfg = _cfg(blobs, "variant=multilevel", "select_by=val_objective", "max_epochs=3")
    assert resolve_entropy_weight(cfg) > 0
    return fit(cfg, out=tmp_path_factory.mktemp("runs") / "exact")


def resolve_entropy_weight(cfg: TrainConfig) -> float:
    from dualattn.train.recipes import resolve_recipe

    return float(cfg.model_kwargs.get("entropy_weight", resolve_recipe(cfg)["model_kwargs"].get("entropy_weight", 0)))


def test_fit_selects_the_lowest_val_objective(exact_run):
    rows = read_metrics(exact_run / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS) and "val_objective" in rows[0]
    assert len(rows) == 3
    objectives = [r["val_objective"] for r in rows]
    assert all(math.isfinite(v) for v in objectives)
    summary = json.loads((exact_run / "summary.json").read_text())
    assert summary["select_by"] == "val_objective"
    argmin = min(range(3), key=lambda i: (objectives[i], i))  # earliest of equal minima
    assert summary["best_epoch"] == rows[argmin]["epoch"]
    assert summary["selected_value"] == objectives[argmin]
    assert summary["val_balanced_accuracy"] == rows[argmin]["val_balanced_accuracy"]
    # the objective is CE + penalty: the exact variant's sharpness term makes it larger than the CE
    assert all(r["val_objective"] > r["val_loss"] for r in rows)
    assert all(r["train_penalty"] > 0 for r in rows)


def test_selected_value_is_the_best_weights_objective_on_val(blobs, exact_run):
    """Recompute CE + penalty of best.safetensors on the val split, independently of the training loop."""
    import torch.nn.functional as F

    from dualattn.data import FolderDataset

    summary = json.loads((exact_run / "summary.json").read_text())
    model = load_run(exact_run, "best")
    ds = FolderDataset(blobs, split="val", seed=0)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.tensor([int(ds[i]["label"]) for i in range(len(ds))])
    assert len(ds) <= 16  # one validation batch (eval batch 2 x 8): the batch-mean penalty is the val mean
    with torch.no_grad():
        out = model.forward_with_attention(x)
        ce = float(F.cross_entropy(out.logits.float(), y))
        objective = ce + float(out.penalty)
    assert float(out.penalty) > 0
    assert objective == pytest.approx(summary["selected_value"], rel=1e-5)
    rows = read_metrics(exact_run / "metrics.csv")
    best = next(r for r in rows if r["epoch"] == summary["best_epoch"])
    assert ce == pytest.approx(best["val_loss"], rel=1e-5)


def test_resume_keeps_the_selection(blobs, exact_run, tmp_path):
    args = ("variant=multilevel", "select_by=val_objective")
    fit(_cfg(blobs, *args, "max_epochs=1"), out=tmp_path / "r")
    resumed = fit(_cfg(blobs, *args, "max_epochs=3"), out=tmp_path / "r", resume=True)
    a = json.loads((exact_run / "summary.json").read_text())
    b = json.loads((resumed / "summary.json").read_text())
    for key in ("select_by", "best_epoch", "selected_value", "val_balanced_accuracy"):
        assert a[key] == b[key], key
    assert state_digest(load_run(exact_run, "best")) == state_digest(load_run(resumed, "best"))
    # the selection rule is part of what a run computes: it may not change on resume
    with pytest.raises(ValueError, match="select_by"):
        fit(_cfg(blobs, "variant=multilevel", "max_epochs=4"), out=resumed, resume=True)


def test_early_stopping_watches_the_selection_metric(blobs, tmp_path):
    run = fit(_cfg(blobs, "select_by=val_objective", "early_stopping_patience=1", "max_epochs=4"), out=tmp_path / "es")
    rows = read_metrics(run / "metrics.csv")
    objectives = [r["val_objective"] for r in rows]
    # patience 1: training stops after the first epoch that does not lower the best objective so far
    expected = next((i + 1 for i in range(1, 4) if objectives[i] >= min(objectives[:i])), 4)
    assert len(rows) == expected
