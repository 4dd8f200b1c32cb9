"""``prepare brats``: a case without ``_seg`` (or without modalities) is reported, not silently ignored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _brats_case(root: Path, case: str, *, skip: tuple[str, ...] = ()) -> None:
    import nibabel as nib

    folder = root / case
    folder.mkdir(parents=True)
    shape = (24, 20, 4)
    rng = np.random.default_rng(len(case))
    seg = np.zeros(shape, np.uint8)
    seg[3:9, 6:12, 1:3] = 1
    for mod in ("t1", "t1ce", "t2", "flair", "seg"):
        if mod in skip:
            continue
        arr = seg if mod == "seg" else rng.uniform(50, 150, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(folder / f"{case}_{mod}.nii.gz"))


def test_prepare_brats_reports_cases_without_seg_or_modalities(tmp_path):
    from dualattn.data.brats import find_cases, prepare_brats

    raw = tmp_path / "raw"
    _brats_case(raw, "good")
    _brats_case(raw, "noseg", skip=("seg",))
    _brats_case(raw, "onlyflair", skip=("t1", "t1ce", "t2", "seg"))
    _brats_case(raw, "noseg_not1", skip=("seg", "t1"))
    _brats_case(raw / "batch2", "good")  # the same case id in another folder
    cases = find_cases(raw)
    assert set(cases) == {"good", "noseg", "onlyflair", "noseg_not1"}
    assert cases["noseg"]["seg"] is None and cases["noseg"]["flair"] is not None
    report = prepare_brats(raw, tmp_path / "out", min_area=5)
    problems = {b["case"]: b["problem"] for b in report["bad_cases"]}
    assert set(problems) == {"good", "noseg", "onlyflair", "noseg_not1"}, report
    assert "segmentation file (_seg)" in problems["noseg"] and "['seg']" in problems["noseg"]
    assert "['t1', 't1ce', 't2', 'seg']" in problems["onlyflair"]
    assert "['t1', 'seg']" in problems["noseg_not1"]
    assert "several folders" in problems["good"]
    assert report["cases_total"] == 4 and report["cases_done"] == 0 and report["items"] == 0


def test_prepare_brats_case_without_seg_beside_a_good_one(tmp_path):
    from dualattn.data.brats import prepare_brats

    raw = tmp_path / "raw"
    _brats_case(raw, "A")
    _brats_case(raw, "B", skip=("seg",))
    report = prepare_brats(raw, tmp_path / "out", min_area=5)
    assert report["cases_done"] == 1 and report["items"] == 2 * 2
    assert [b["case"] for b in report["bad_cases"]] == ["B"]
    saved = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert saved["bad_cases"] == report["bad_cases"]


def test_brats_no_file_at_all_still_an_error(tmp_path):
    from dualattn.data import DataError
    from dualattn.data.brats import prepare_brats

    (tmp_path / "raw" / "x").mkdir(parents=True)
    (tmp_path / "raw" / "x" / "notes.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="no BraTS case"):
        prepare_brats(tmp_path / "raw", tmp_path / "out")
