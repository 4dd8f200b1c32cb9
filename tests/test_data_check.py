"""``dualattn check``: every problem of a dataset at once; the dataset fingerprint a run records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.data import FolderWriter
from dualattn.data.check import (
    CheckReport,
    DataCheckError,
    check_dataset,
    dataset_fingerprint,
    fingerprint_changes,
)

SIZE = 16


def _png(path: Path, value: int = 0, *, size: int = SIZE, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)


def _write(root: Path, rows: list[dict[str, str]], *, class_names: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cols = ["image", "label", "mask", "patient", "split"]
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    if class_names is not None:
        (root / "dataset.json").write_text(json.dumps({"class_names": class_names}))
    return root


def _good_rows(root: Path, n: int = 12) -> list[dict[str, str]]:
    """n good PNGs, labels normal/tumor alternating, explicit splits (train, train, val, test, ...)."""
    rows = []
    splits = ["train", "train", "val", "test"]
    for i in range(n):
        _png(root / "images" / f"ok{i:02d}.png", i)
        rows.append({"image": f"images/ok{i:02d}.png", "label": ["normal", "tumor"][i % 2], "patient": f"p{i}",
                     "split": splits[(i // 2) % 4]})
    return rows


@pytest.fixture
def broken(tmp_path) -> Path:
    """A folder with exactly five problems: a truncated PNG, a NaN NPY, a mask of another size, an
    unknown label and a missing file."""
    root = tmp_path / "broken"
    rows = _good_rows(root)
    # 1. truncated PNG
    _png(root / "images" / "cut.png", 99)
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    rows.append({"image": "images/cut.png", "label": "tumor", "patient": "q1", "split": "train"})
    # 2. NaN voxels in an NPY
    arr = np.zeros((1, SIZE, SIZE), np.float32)
    arr[0, 3, 4] = np.nan
    np.save(root / "images" / "nan.npy", arr)
    rows.append({"image": "images/nan.npy", "label": "normal", "patient": "q2", "split": "train"})
    # 3. a mask of another size than its image
    _png(root / "images" / "masked.png", 7)
    (root / "masks").mkdir()
    np.save(root / "masks" / "masked.npy", np.ones((1, SIZE // 2, SIZE // 2), np.uint8))
    rows.append({"image": "images/masked.png", "label": "tumor", "mask": "masks/masked.npy", "patient": "q3",
                 "split": "val"})
    # 4. an unknown label (a typo)
    _png(root / "images" / "typo.png", 8)
    rows.append({"image": "images/typo.png", "label": "tumour", "patient": "q4", "split": "test"})
    # 5. a missing file
    rows.append({"image": "images/gone.png", "label": "normal", "patient": "q5", "split": "test"})
    return _write(root, rows, class_names=["normal", "tumor"])


def test_every_problem_is_listed_at_once(broken):
    report = check_dataset(broken)
    assert isinstance(report, CheckReport) and not report.ok
    text = [str(p) for p in report.problems]
    assert len(report.problems) == 5, text
    by_file = {Path(p.file).name: p for p in report.problems}
    assert "cannot decode image" in by_file["cut.png"].problem
    assert "NaN/Inf" in by_file["nan.npy"].problem and "1 NaN" in by_file["nan.npy"].problem
    assert "mask size (8, 8) differs from image size (16, 16)" in by_file["masked.npy"].problem
    csv_problems = sorted((p.row, p.problem) for p in report.problems if Path(p.file).name == "labels.csv")
    assert [row for row, _ in csv_problems] == [17, 18]  # header, 12 good rows, cut, nan, masked
    assert "unknown label 'tumour'" in csv_problems[0][1] and "['normal', 'tumor']" in csv_problems[0][1]
    assert "'images/gone.png' does not exist" in csv_problems[1][1]
    # the summary: 17 rows; counts per split over the rows with a known label (16), from the split column
    assert report.rows == 17 and report.class_names == ["normal", "tumor"]
    assert report.split_counts == {"train": [5, 5], "val": [1, 2], "test": [2, 1]}
    assert report.sizes == {(SIZE, SIZE): 14} and report.channels == {1: 14} and report.masks == 1
    with pytest.raises(DataCheckError, match="5 problem") as exc:
        report.raise_if_problems("training data")
    assert all(str(p) in str(exc.value) for p in report.problems)
    assert json.loads(json.dumps(report.to_dict()))["ok"] is False


def test_cli_check_lists_all_five_and_exits_2(broken):
    result = CliRunner().invoke(app, ["check", str(broken), "--no-progress"])
    assert result.exit_code == 2, result.output
    for needle in ("cut.png", "nan.npy", "masked.npy", "unknown label 'tumour'", "gone.png", "5 problem(s)"):
        assert needle in result.output, needle
    assert "normal" in result.output and "16x16 (14)" in result.output
    as_json = CliRunner().invoke(app, ["check", str(broken), "--json"])
    assert as_json.exit_code == 2 and len(json.loads(as_json.output)["problems"]) == 5


def test_a_clean_dataset_exits_0_with_a_summary(tmp_path):
    root = _write(tmp_path / "ok", _good_rows(tmp_path / "ok"))
    report = check_dataset(root)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.split_counts == {"train": [4, 4], "val": [1, 1], "test": [1, 1]}
    result = CliRunner().invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert "no problem found" in result.output and "12 item(s), 2 class(es) ['normal', 'tumor']" in result.output


def test_channel_counts_are_checked_against_the_majority(tmp_path):
    root = tmp_path / "rgb"
    rows = []
    for i in range(6):
        _png(root / "images" / f"c{i}.png", i, mode="RGB")
        rows.append({"image": f"images/c{i}.png", "label": str(i % 2)})
    _png(root / "images" / "gray.png", 50)  # single channel: repeated to 3, no problem
    rows.append({"image": "images/gray.png", "label": "0"})
    np.save(root / "images" / "two.npy", np.zeros((2, SIZE, SIZE), np.float32))  # 2 channels: a problem
    rows.append({"image": "images/two.npy", "label": "1"})
    _write(root, rows)
    report = check_dataset(root)
    assert report.channels == {1: 1, 2: 1, 3: 6} and report.in_channels == 3
    assert [(Path(p.file).name, "2 channel(s)" in p.problem) for p in report.problems] == [("two.npy", True)]
    # the model's own channel count wins over the majority
    assert {Path(p.file).name for p in check_dataset(root, in_channels=2).problems} == {f"c{i}.png" for i in range(6)}


def test_sizes_dimensions_empty_split_and_bad_masks(tmp_path):
    root = tmp_path / "mixed"
    rows = []
    for i in range(6):
        _png(root / "images" / f"a{i}.png", i)
        rows.append({"image": f"images/a{i}.png", "label": str(i % 2), "split": "train"})
    _png(root / "images" / "big.png", 9, size=SIZE * 2)
    rows.append({"image": "images/big.png", "label": "1", "split": "train"})
    np.save(root / "images" / "vol.npy", np.zeros((1, 4, SIZE, SIZE), np.float32))
    rows.append({"image": "images/vol.npy", "label": "0", "split": "train"})
    np.save(root / "grey_mask.npy", np.full((1, SIZE, SIZE), 0.5, np.float32) * np.arange(SIZE))
    rows[0]["mask"] = "grey_mask.npy"
    _write(root, rows)
    report = check_dataset(root)
    problems = {Path(p.file).name: p.problem for p in report.problems}
    assert "image is 3D; the dataset's images are 2D" in problems["vol.npy"]
    assert "not binary" in problems["grey_mask.npy"]
    assert "the 'val' split is empty" in problems["labels.csv"]
    assert "big.png" not in problems and any("2 different sizes" in w for w in report.warnings)
    strict = check_dataset(root, same_size=True)
    assert "differs from the dataset's (16, 16)" in {Path(p.file).name: p.problem for p in strict.problems}["big.png"]


def test_unreadable_labels_csv_and_empty_cells(tmp_path):
    assert "does not exist" in str(check_dataset(tmp_path / "nope").problems[0])
    (tmp_path / "nolabels").mkdir()
    assert "labels.csv not found" in str(check_dataset(tmp_path / "nolabels").problems[0])
    root = _write(tmp_path / "cells", [{"image": "", "label": "1"}, {"image": "x.png", "label": ""}])
    assert sorted((p.row, p.problem) for p in check_dataset(root).problems) == [(2, "empty 'image'"),
                                                                                (3, "empty 'label'")]


def test_every_file_is_read_exactly_once(broken, monkeypatch):
    import dualattn.data.check as check_mod

    reads: list[str] = []
    real = check_mod.read_image
    monkeypatch.setattr(check_mod, "read_image", lambda p: reads.append(Path(p).name) or real(p))
    check_dataset(broken)
    assert sorted(reads) == sorted({*reads}) and len(reads) == 12 + 4 + 1  # 16 existing images + 1 mask


# --------------------------------------------------------------------------- fingerprint


def _dataset(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with FolderWriter(root, class_names=["normal", "tumor"]) as w:
        for i in range(10):
            w.add(f"c{i}", image=rng.normal(size=(1, 8, 8)), label=i % 2, patient=f"p{i}")
    return root


def test_fingerprint_survives_a_copy_and_names_what_changed(tmp_path):
    import shutil

    a = _dataset(tmp_path / "a")
    fp = dataset_fingerprint(a)
    assert fp["rows"] == 10 and fp["files"] == 10 and fp["bytes"] == sum(
        f.stat().st_size for f in (a / "images").iterdir())
    b = Path(shutil.copytree(a, tmp_path / "b", copy_function=shutil.copy))  # new mtimes, same data
    assert dataset_fingerprint(b) == fp and fingerprint_changes(fp, dataset_fingerprint(b)) == []
    # regenerated in place with other values: same names and sizes, other content
    shutil.rmtree(b)
    c = _dataset(tmp_path / "b", seed=1)
    assert fingerprint_changes(fp, dataset_fingerprint(c)) == [
        "the content of the listed files differs (same names and sizes)"]
    # a relabelled row
    text = (a / "labels.csv").read_text().replace("images/c0.npy,0", "images/c0.npy,1")
    (a / "labels.csv").write_text(text)
    changes = fingerprint_changes(fp, dataset_fingerprint(a))
    assert len(changes) == 1 and changes[0].startswith("labels.csv or dataset.json differ (10 -> 10 rows")
    # a truncated file
    f = a / "images" / "c3.npy"
    f.write_bytes(f.read_bytes()[:-8])
    assert any("differ in name or size" in c for c in fingerprint_changes(fp, dataset_fingerprint(a)))
    # other versions are not compared
    assert fingerprint_changes({**fp, "version": 0}, dataset_fingerprint(a)) == []
