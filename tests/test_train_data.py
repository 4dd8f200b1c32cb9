"""Runs that describe themselves: class names, where the data is (and whether it changed), file modes;
the data check before the first epoch."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualattn.data.check import DataCheckError, dataset_fingerprint
from dualattn.runs import RunDir
from dualattn.train import fit, load_config
from dualattn.train.run import data_record
from dualattn.weights import read_metadata

SIZE = 16


def _write_byo(root: Path, n: int = 24, *, extra: list[dict[str, str]] = ()) -> Path:
    """A bring-your-own folder as a clinician has it: PNGs, labels ``normal``/``tumor``, no dataset.json."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        y = i % 2
        img = rng.integers(0, 80, (SIZE, SIZE)).astype(np.uint8)
        if y:
            img[4:10, 4:10] = 250
        Image.fromarray(img).save(root / "images" / f"case{i:02d}.png")
        rows.append({"image": f"images/case{i:02d}.png", "label": ["normal", "tumor"][y], "split": ""})
    rows += list(extra)
    with open(root / "labels.csv", "w", newline="") as fh:
        cols = ["image", "label"] + (["split"] if any(r.get("split") for r in rows) else [])
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return root


def _cfg(dataset: str, *extra: str):
    return load_config(overrides=[f"dataset={dataset}", "accelerator=cpu", "devices=1", "batch_size=8",
                                  "model_kwargs.features=4", "max_epochs=1", "augment=false", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(project folder, run): trained from inside the project with ``dataset=byo`` as typed, umask 022."""
    project = tmp_path_factory.mktemp("project")
    _write_byo(project / "byo")
    old_cwd, old_mask = os.getcwd(), os.umask(0o022)
    try:
        os.chdir(project)
        run = fit(_cfg("byo"), out=Path("runs") / "r1")
    finally:
        os.chdir(old_cwd)
        os.umask(old_mask)
    return project, project / run


def test_string_labels_are_the_class_names_everywhere(trained):
    project, run = trained
    assert RunDir(run).class_names == ["normal", "tumor"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["class_names"] == ["normal", "tumor"]
    for weights in ("best.safetensors", "last.safetensors"):
        assert read_metadata(run / weights)["metadata"]["class_names"] == ["normal", "tumor"]
    # a copied weights file alone still names its classes
    alone = project / "alone"
    alone.mkdir()
    shutil.copy(run / "best.safetensors", alone / "best.safetensors")
    assert RunDir(alone).class_names == ["normal", "tumor"]


def test_the_run_records_a_resolvable_path_and_a_fingerprint(trained, tmp_path, monkeypatch):
    project, run = trained
    record = RunDir(run).recorded_data
    assert record["dataset"] == "byo" and record["embedded"] is False
    assert record["path"] == str((project / "byo").resolve())
    assert record["relative_to_run"] == "../../byo"
    assert record["fingerprint"] == dataset_fingerprint(project / "byo")
    assert json.loads((run / "summary.json").read_text())["data"] == record
    monkeypatch.chdir(tmp_path)  # evaluate from another folder: the recorded absolute path is found
    assert RunDir(run).dataset() == project / "byo"


def test_moved_and_changed_data_are_named(trained, tmp_path, monkeypatch, caplog):
    project, run = trained
    moved = tmp_path / "moved"
    shutil.copytree(project, moved)
    run2 = moved / "runs" / "r1"
    monkeypatch.chdir(tmp_path)
    shutil.move(str(project / "byo"), str(project / "byo.away"))
    try:
        # run and data moved together (another machine): found through the run-relative path
        assert RunDir(run2).dataset().resolve() == (moved / "byo").resolve()
        # the data moved away alone: say where it was and how to point at it
        shutil.move(str(moved / "byo"), str(tmp_path / "elsewhere"))
        with pytest.raises(ValueError) as err:
            RunDir(run2).dataset()
        msg = str(err.value)
        assert str((project / "byo").resolve()) in msg and "moved or deleted" in msg and "--data" in msg
        assert RunDir(run2).dataset(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # --data, same data: quiet
        # the data changed in place: say what changed
        (tmp_path / "elsewhere" / "labels.csv").write_text(
            (tmp_path / "elsewhere" / "labels.csv").read_text().replace("case00.png,normal", "case00.png,tumor"))
        shutil.move(str(tmp_path / "elsewhere"), str(moved / "byo"))
        with pytest.raises(ValueError, match=r"has changed since: .*labels.csv or dataset.json differ \(24 -> 24 rows"):
            RunDir(run2).dataset()
        assert RunDir(run2).dataset(check=False) == moved / "runs" / "r1" / "../../byo"
        with caplog.at_level(logging.WARNING, logger="dualattn.runs"):  # --data on changed data: a warning
            assert RunDir(run2).dataset(moved / "byo") == moved / "byo"
        assert "is not the data run" in caplog.text and "relabelled" in caplog.text
    finally:
        shutil.move(str(project / "byo.away"), str(project / "byo"))


def test_embedded_names_stay_names_and_old_runs_use_the_typed_path(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    record = data_record("synthetic-brain", None, run)
    assert record == {"dataset": "synthetic-brain", "embedded": True, "path": None, "relative_to_run": None,
                      "fingerprint": None}
    RunDir(run).write_summary({"data": record})
    assert RunDir(run).dataset() == "synthetic-brain"
    # a run written before the record: config.yaml's dataset as typed, relative to the working directory
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text("dataset: byo\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'byo'.*moved or deleted.*--data PATH"):
        RunDir(old).dataset()
    _write_byo(tmp_path / "byo", n=4)
    assert RunDir(old).dataset() == Path("byo")
    assert RunDir(old).class_names is None  # no record, no dataset.json: nothing names the classes
    (tmp_path / "none").mkdir()
    with pytest.raises(ValueError, match="records no dataset"):
        RunDir(tmp_path / "none").dataset()


def test_every_file_of_a_run_follows_the_umask(trained):
    _, run = trained
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in files}
    assert {"config.yaml", "metrics.csv", "best.safetensors", "last.safetensors", "summary.json",
            "checkpoints/last.ckpt"} <= names
    modes = {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE((run / "checkpoints").stat().st_mode) == 0o755


def test_results_report_and_secret_key_modes_under_umask_022(tmp_path, monkeypatch):
    """The evaluation's and report's writers (atomic_write_*) give 0644; the PET pseudonym key stays 0600."""
    from dualattn.data.pet import load_or_create_key
    from dualattn.evaluate.tables import write_tables  # noqa: F401  (its files go through atomic_write_text)
    from dualattn._io import atomic_write_json, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "results.json", {"meta": {}})
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        monkeypatch.setenv("DUALATTN_SECRET_DIR", str(tmp_path / "secrets"))
        load_or_create_key()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secrets" / "prepare-pet.key").stat().st_mode) == 0o600


def test_a_truncated_test_image_fails_before_the_first_epoch(tmp_path, caplog):
    root = tmp_path / "bad"
    _write_byo(root, extra=[{"image": "images/cut.png", "label": "tumor", "split": "test"},
                            {"image": "images/nan.npy", "label": "normal", "split": "test"}])
    Image.fromarray(np.full((SIZE, SIZE), 200, np.uint8)).save(root / "images" / "cut.png")
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    arr = np.zeros((1, SIZE, SIZE), np.float32)
    arr[0, 0, 0] = np.inf
    np.save(root / "images" / "nan.npy", arr)
    # the split column is filled on the two extra rows only: fill it for all (the good ones train/val)
    lines = (root / "labels.csv").read_text().splitlines()
    lines = [lines[0]] + [ln.rstrip(",") + ("," + ("val" if i % 8 in (0, 1) else "train")) if not ln.endswith("test") else ln
                          for i, ln in enumerate(lines[1:])]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        with pytest.raises(DataCheckError) as err:
            fit(_cfg(str(root), "max_epochs=3"), out=out)
    msg = str(err.value)
    assert "2 problem(s)" in msg and str(root / "images" / "cut.png") in msg and "cannot decode image" in msg
    assert str(root / "images" / "nan.npy") in msg and "NaN/Inf" in msg
    assert not (out / "metrics.csv").exists() and "epoch 1" not in caplog.text
    # the check can be switched off: the first broken file read fails alone, as before
    with pytest.raises(ValueError) as plain:
        fit(_cfg(str(root), "check_data=false"), out=tmp_path / "run2")
    assert not isinstance(plain.value, DataCheckError) and "problem(s)" not in str(plain.value)


def test_resume_refuses_changed_data(tmp_path):
    root = _write_byo(tmp_path / "byo")
    out = fit(_cfg(str(root)), out=tmp_path / "run")
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("case01.png,tumor", "case01.png,normal"))
    with pytest.raises(ValueError, match="cannot resume .*not the data the run started on.*relabelled"):
        fit(_cfg(str(root), "max_epochs=2"), out=out, resume=True)
