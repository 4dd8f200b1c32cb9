"""RunDir: the one reader/writer of a training run folder (discover, load, digest, class names, finished)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from dualattn.models import create_model
from dualattn.runs import RUN_FILES, RunDir
from dualattn.train.callbacks import state_digest
from dualattn.weights import save_model


def _model(variant: str = "exact", seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet_encoder", variant=variant, in_channels=1, features=4, **kw)


def _run(root: Path, name: str, *, best: bool = True, last: bool = True, config: dict | None = None,
         seed: int = 0, **kw) -> tuple[Path, torch.nn.Module]:
    run = root / name
    run.mkdir(parents=True)
    model = _model(seed=seed, **kw)
    if best:
        save_model(model, run / "best.safetensors")
    if last:
        save_model(_model(seed=seed + 100, **kw), run / "last.safetensors")
    if config is not None:
        (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return run, model


def test_discover_takes_run_folders_files_and_searches_others_sorted_without_duplicates(tmp_path):
    b, _ = _run(tmp_path / "runs", "b")
    a, _ = _run(tmp_path / "runs", "a", best=False)  # last.safetensors alone makes a run
    c, _ = _run(tmp_path / "runs" / "deep" / "er", "c", last=False)
    (tmp_path / "runs" / "not-a-run").mkdir()
    (tmp_path / "runs" / "not-a-run" / "x.safetensors").write_bytes(b"")  # a weights file of another name
    found = RunDir.discover(tmp_path / "runs")
    assert [r.path for r in found] == [a, b, c]
    assert all(isinstance(r, RunDir) for r in found)
    # a run folder as is, a .safetensors file for its folder, the same run twice only once, order kept
    again = RunDir.discover([c, b / "best.safetensors", str(tmp_path / "runs"), b])
    assert [r.path for r in again] == [c, b, a]
    assert [r.path for r in RunDir.discover(str(b))] == [b]


def test_discover_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RunDir.discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run"):
        RunDir.discover([tmp_path / "empty"])


def test_config_variant_seed_and_fallbacks_to_the_weights(tmp_path):
    run, _ = _run(tmp_path, "r", config={"model": "unet_encoder", "variant": "exact", "seed": 3, "image_size": 32})
    info = RunDir(run)
    assert info.config["image_size"] == 32
    assert (info.variant, info.model_name, info.seed, info.label) == ("exact", "unet_encoder", 3, str(run))
    assert info.recorded_size == (32,)
    # without config.yaml: variant and backbone from the weights file's header; no seed, no recorded size
    bare, _ = _run(tmp_path, "bare", variant="tau_k")
    info = RunDir(bare)
    assert info.config == {}
    assert (info.variant, info.model_name, info.seed, info.recorded_size) == ("tau_k", "unet_encoder", None, None)
    # a config given by the caller wins over the file
    assert RunDir(run, config={"variant": "dual"}).variant == "dual"
    # a run of a model without a variant key anywhere is a baseline
    assert RunDir(tmp_path / "missing", config={}, model=torch.nn.Linear(1, 1)).variant == "baseline"


def test_recorded_size_forms(tmp_path):
    for cfg, expect in [({"image_size": [40, 48]}, (40, 48)), ({"data": {"size": 16}}, (16,)),
                        ({"img_size": "x"}, None), ({"model": "m"}, None)]:
        assert RunDir(tmp_path, config=cfg).recorded_size == expect, cfg


def test_load_model_best_else_last_cached_eval_mode(tmp_path):
    run, best = _run(tmp_path, "r")
    info = RunDir(run)
    model = info.load_model()
    assert not model.training
    assert state_digest(model) == state_digest(best)  # best wins over last
    assert info.model is model and info.load_model() is model  # loaded once
    last = info.load_model("last")
    assert state_digest(last) != state_digest(best) and info.load_model("last") is last
    only_last, _ = _run(tmp_path, "only-last", best=False)
    assert state_digest(RunDir(only_last).model) == state_digest(_model(seed=100))
    assert RunDir(only_last).weights_file == only_last / "last.safetensors"


def test_load_model_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no best.safetensors or last.safetensors"):
        RunDir(tmp_path / "empty").load_model()
    with pytest.raises(FileNotFoundError, match="best.safetensors does not exist"):
        RunDir(tmp_path / "empty").load_model("best")
    with pytest.raises(ValueError, match="must be 'best' or 'last'"):
        RunDir(tmp_path / "empty").load_model("first")


def test_model_input_and_is_vit(tmp_path):
    run, _ = _run(tmp_path, "r", config={"image_size": 24})
    info = RunDir(run)
    assert info.model_input() == (1, (24, 24))  # the run's image_size when the model records none
    assert (info.in_channels, info.input_size) == (1, (24, 24))
    assert info.is_vit is False
    sized, _ = _run(tmp_path, "sized", config={"image_size": 24}, img_size=[32, 32])
    assert RunDir(sized).input_size == (32, 32)  # the model's own img_size wins


def test_digest_identifies_the_weights_file(tmp_path):
    run, _ = _run(tmp_path, "r")
    d = RunDir(run).digest()
    st = (run / "best.safetensors").stat()
    assert d == {"path": str(run.resolve()), "weights": "best.safetensors", "size": st.st_size,
                 "mtime_ns": st.st_mtime_ns}
    os.utime(run / "best.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert RunDir(run).digest()["mtime_ns"] != d["mtime_ns"]
    (tmp_path / "none").mkdir()
    assert RunDir(tmp_path / "none").digest()["weights"] is None


def test_class_names_from_summary_config_or_training_dataset(tmp_path):
    run, _ = _run(tmp_path, "r", config={"variant": "exact"})
    assert RunDir(run).class_names is None
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"class_names": ["no_tumor", "tumor"]}), encoding="utf-8")
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": str(data)}), encoding="utf-8")
    assert RunDir(run).class_names == ["no_tumor", "tumor"]
    (run / "config.yaml").write_text(yaml.safe_dump({"dataset": str(data), "data": {"class_names": ["a", "b"]}}))
    assert RunDir(run).class_names == ["a", "b"]  # the config wins over the dataset
    (run / "summary.json").write_text(json.dumps({"class_names": ["healthy", "tumour"]}), encoding="utf-8")
    assert RunDir(run).class_names == ["healthy", "tumour"]  # the summary wins over both
    (run / "summary.json").write_text("{not json", encoding="utf-8")
    assert RunDir(run).summary == {} and RunDir(run).class_names == ["a", "b"]


def test_finished_and_writers(tmp_path):
    info = RunDir(tmp_path / "r")
    assert not info.finished and info.existing_run_files() == []
    info.write_config({"variant": "exact", "seed": 1})
    assert info.config == {"variant": "exact", "seed": 1}
    model = _model()
    info.save_weights(model, "last", {"epoch": "1"})
    assert not info.finished  # no best weights, no summary yet
    info.save_weights(model, "best", {"epoch": "1"})
    assert not info.finished
    info.write_summary({"epochs": 1})
    assert info.finished and info.summary == {"epochs": 1}
    assert state_digest(info.load_model("best")) == state_digest(model)
    info.checkpoint_file.parent.mkdir()
    info.checkpoint_file.write_bytes(b"x")
    assert info.remove_run_files() == [f for f in RUN_FILES if f != "metrics.csv"]
    assert not info.checkpoint_file.exists() and info.existing_run_files() == [] and info.config == {}
    with pytest.raises(ValueError, match="must be 'best' or 'last'"):
        info.save_weights(model, "middle")


def test_equality_and_repr(tmp_path):
    assert RunDir(tmp_path) == RunDir(str(tmp_path)) and len({RunDir(tmp_path), RunDir(tmp_path)}) == 1
    assert repr(RunDir(tmp_path)) == f"RunDir({str(tmp_path)!r})"
