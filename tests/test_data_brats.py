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


# ----------------------------------------------------------------------------- naming schemes

#: (case id, separator, file suffix per modality in MODALITIES order + seg): 2018, 2021, 2023 names
_SCHEMES = {
    "2018": ("Brats18_2013_2_1", "_", ("t1", "t1ce", "t2", "flair", "seg")),
    "2021": ("BraTS2021_00000", "_", ("t1", "t1ce", "t2", "flair", "seg")),
    "2023": ("BraTS-GLI-00000-000", "-", ("t1n", "t1c", "t2w", "t2f", "seg")),
}


def _volumes() -> list[np.ndarray]:
    """t1, t1ce, t2, flair (each a different random volume) and the segmentation."""
    shape = (24, 20, 4)
    seg = np.zeros(shape, np.uint8)
    seg[3:9, 6:12, 1:3] = 1
    return [np.random.default_rng(k).uniform(50, 150, shape).astype(np.float32) for k in range(4)] + [seg]


def _write_case(folder: Path, case: str, sep: str, suffixes: tuple[str, ...], *, skip: tuple[int, ...] = ()) -> None:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for k, (suffix, arr) in enumerate(zip(suffixes, _volumes())):
        if k not in skip:
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(folder / f"{case}{sep}{suffix}.nii.gz"))


def _halves(out: Path) -> dict[str, np.ndarray]:
    return {p.name.split("_z", 1)[1]: np.load(p) for p in sorted((out / "images").glob("*.npy"))}


@pytest.mark.parametrize("year", ["2021", "2023"])
def test_prepare_brats_reads_each_naming_scheme_like_2018(tmp_path, year):
    """The same volumes named the 2018, 2021 or 2023 way give identical halves: t1n/t1c/t2w/t2f map to
    t1/t1ce/t2/flair in that channel order (each modality is a different volume, so a swap would show)."""
    from dualattn.data.brats import find_cases, prepare_brats

    ref_case, ref_sep, ref_suffixes = _SCHEMES["2018"]
    _write_case(tmp_path / "raw18" / ref_case, ref_case, ref_sep, ref_suffixes)
    case, sep, suffixes = _SCHEMES[year]
    _write_case(tmp_path / "raw" / case, case, sep, suffixes)
    cases = find_cases(tmp_path / "raw")
    assert list(cases) == [case]
    assert cases[case]["flair"].name == f"{case}{sep}{suffixes[3]}.nii.gz"
    assert cases[case]["t1ce"].name == f"{case}{sep}{suffixes[1]}.nii.gz"
    want = prepare_brats(tmp_path / "raw18", tmp_path / "out18", min_area=5)
    got = prepare_brats(tmp_path / "raw", tmp_path / "out", min_area=5)
    assert got["cases_done"] == 1 and got["bad_cases"] == [] and got["items"] == want["items"] == 4
    ref, new = _halves(tmp_path / "out18"), _halves(tmp_path / "out")
    assert list(ref) == list(new)
    for key in ref:
        np.testing.assert_array_equal(new[key], ref[key])
    # a swap of two modalities is visible in the output (the comparison above can fail)
    swapped = (suffixes[1], suffixes[0], *suffixes[2:])
    _write_case(tmp_path / "raw_swap" / case, case, sep, swapped)
    prepare_brats(tmp_path / "raw_swap", tmp_path / "out_swap", min_area=5)
    first = next(iter(ref))
    assert not np.array_equal(_halves(tmp_path / "out_swap")[first], ref[first])


def test_prepare_brats_2023_case_missing_seg_names_the_expected_file(tmp_path):
    from dualattn.data.brats import prepare_brats

    case, sep, suffixes = _SCHEMES["2023"]
    _write_case(tmp_path / "raw" / case, case, sep, suffixes, skip=(4,))
    report = prepare_brats(tmp_path / "raw", tmp_path / "out", min_area=5)
    (bad,) = report["bad_cases"]
    assert bad["case"] == case
    assert "['seg']" in bad["problem"] and f"{case}-seg.nii.gz" in bad["problem"], bad


def test_prepare_brats_folder_matching_no_scheme_is_reported_with_the_expected_names(tmp_path):
    import nibabel as nib

    from dualattn.data import DataError
    from dualattn.data.brats import expected_names, find_cases, prepare_brats

    case, sep, suffixes = _SCHEMES["2023"]
    _write_case(tmp_path / "raw" / "ok" / case, case, sep, suffixes)
    odd = tmp_path / "raw" / "odd" / "patient7"
    odd.mkdir(parents=True)
    for name in ("patient7_T1w.nii.gz", "patient7_mask.nii.gz"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(odd / name))
    report = prepare_brats(tmp_path / "raw", tmp_path / "out", min_area=5)
    assert report["cases_done"] == 1
    (bad,) = report["bad_cases"]
    assert bad["case"] == "odd/patient7"
    assert "patient7_T1w.nii.gz" in bad["problem"] and expected_names() in bad["problem"]
    for name in ("CASE_t1ce", "CASE_flair", "CASE-t1n", "CASE-t1c", "CASE-t2w", "CASE-t2f", "CASE-seg"):
        assert name in expected_names()
    # only such folders: an error that lists the expected names
    with pytest.raises(DataError, match="expected files named CASE_t1, CASE_t1ce.*CASE-t1n") as info:
        find_cases(tmp_path / "raw" / "odd")
    assert "patient7" in str(info.value)
