"""``dualattn prepare msd``: a fake Task01_BrainTumour written here (4-D NIfTI images, 3-D labels, a corrupt file,
a missing label, bad label values), converted to 2-D halves (the same files ``prepare brats`` writes from the
same volumes) and to 3-D hemispheres / whole volumes; resume, settings, the CLI. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.data import DataError, FolderDataset, check_dataset
from dualattn.data.brats import prepare_brats
from dualattn.data.msd import CHANNELS, prepare_msd, read_msd_task

SHAPE = (40, 32, 10)  # X, Y, Z
#: MSD's file order and names: the output order is T1, T1ce, T2, FLAIR
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
BRATS_NAME = {"FLAIR": "flair", "T1w": "t1", "t1gd": "t1ce", "T2w": "t2"}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _volumes(seed: int, tumor: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """``(image (X, Y, Z, 4) in MSD's modality order, label (X, Y, Z))``: an ellipsoid brain whose four modalities
    differ (each has a bright marker at its own place) and a planted tumor (edema around an enhancing core)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    brain = (x / 0.9) ** 2 + (y / 0.9) ** 2 + (z / 1.2) ** 2 < 1
    image = np.zeros((*SHAPE, 4), np.float32)
    for k in range(4):
        image[..., k] = np.where(brain, rng.uniform(80, 120, SHAPE), 0)
        image[14 + 3 * k, 16, 5, k] = 900.0  # the modality's marker
    label = np.zeros(SHAPE, np.uint8)
    label[tumor] = 1  # edema
    core = tuple(slice(s.start + 1, s.stop - 1) for s in tumor)
    label[core] = 3  # enhancing
    image[tumor + (slice(None),)] += 60.0
    return image, label


LEFT = (slice(6, 14), slice(10, 20), slice(2, 8))  # low X: the patient's left in RAS
CROSSING = (slice(15, 26), slice(10, 20), slice(2, 8))


def _task(root: Path) -> Path:
    task = root / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    cases = {
        "BRATS_001": (_volumes(1, LEFT), np.eye(4)),
        "BRATS_002": (_volumes(2, LEFT), LPS),  # stored left-right flipped: its tumor is on the patient's right
        "BRATS_003": (_volumes(3, CROSSING), np.eye(4)),
    }
    for case, ((image, label), affine) in cases.items():
        nib.save(nib.Nifti1Image(image, affine), str(task / "imagesTr" / f"{case}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(task / "labelsTr" / f"{case}.nii.gz"))
    (task / "imagesTr" / "BRATS_004.nii.gz").write_bytes(b"\x1f\x8b not really a gzip NIfTI")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), str(task / "labelsTr" / "BRATS_004.nii.gz"))
    image, _ = _volumes(5, LEFT)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(task / "imagesTr" / "BRATS_005.nii.gz"))  # no label file
    image, label = _volumes(6, LEFT)
    label[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(task / "imagesTr" / "BRATS_006.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(task / "labelsTr" / "BRATS_006.nii.gz"))
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"macOS resource fork, as in the real archive")
    names = [f"BRATS_00{k}" for k in range(1, 7)]
    meta = {
        "name": "BRATS", "licence": "CC-BY-SA 4.0", "tensorImageSize": "4D", "modality": MSD_MODALITY,
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(names), "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
    }
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def _brats_copy(root: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    folder = root / case
    folder.mkdir(parents=True)
    for k, name in MSD_MODALITY.items():
        nib.save(nib.Nifti1Image(image[..., int(k)], affine), str(folder / f"{case}_{BRATS_NAME[name]}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / f"{case}_seg.nii.gz"))


# ----------------------------------------------------------------------------------------------- 2-D


def test_2d_halves_are_prepare_brats_halves_and_bad_cases_are_reported(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "msd2d"
    report = prepare_msd(task.parent, out, mode="2d", min_area=20, size=16)
    problems = {b["case"]: b["problem"] for b in report["bad_cases"]}
    assert set(problems) == {"BRATS_004", "BRATS_005", "BRATS_006"}, report
    assert "cannot read NIfTI" in problems["BRATS_004"] and "BRATS_004.nii.gz" in problems["BRATS_004"]
    assert "label file listed in dataset.json does not exist" in problems["BRATS_005"]
    assert "label values [7]" in problems["BRATS_006"]
    assert report["cases_total"] == 6 and report["cases_done"] == 3 and report["mode"] == "2d"
    assert report["items"] == sum(report["class_counts"]) and report["class_counts"][0] == report["class_counts"][1]
    assert report["channel_names"] == ["T1", "T1ce", "T2", "FLAIR"] == list(CHANNELS)
    # the same volumes in the BraTS layout: prepare brats writes the very same halves
    raw = tmp_path / "brats"
    for case, affine in (("BRATS_001", np.eye(4)), ("BRATS_002", LPS), ("BRATS_003", np.eye(4))):
        img = np.asarray(nib.load(str(task / "imagesTr" / f"{case}.nii.gz")).dataobj)
        lab = np.asarray(nib.load(str(task / "labelsTr" / f"{case}.nii.gz")).dataobj)
        _brats_copy(raw, case, img, lab, affine)
    ref = prepare_brats(raw, tmp_path / "brats_out", min_area=20, size=16)
    assert ref["items"] == report["items"] > 0
    rows = _rows(out)
    assert rows == _rows(tmp_path / "brats_out")
    for row in rows:
        for col in ("image", "mask"):
            assert np.array_equal(np.load(out / row[col]), np.load(tmp_path / "brats_out" / row[col])), row
    assert {r["patient"] for r in rows} <= {"BRATS_001", "BRATS_002", "BRATS_003"}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["orientation"] == "radiological" and meta["channel_names"] == list(CHANNELS)
    assert meta["class_names"] == ["no_tumor", "tumor"] and "Decathlon" in meta["source"]
    ds = FolderDataset(out)
    assert ds.in_channels == 4 and ds.spatial_dims == 2 and ds.orientation == "radiological"
    assert not check_dataset(out).problems


def test_channels_are_reordered_by_the_modality_names(tmp_path):
    """Output channel k is the file channel dataset.json names CHANNELS[k]: each modality's marker says which."""
    task = _task(tmp_path)
    out = tmp_path / "o"
    prepare_msd(task, out, mode="3d", negatives="none", size=16, margin=0)
    _, order, _, _ = read_msd_task(task)
    assert order == [1, 2, 3, 0]  # T1w, t1gd, T2w, FLAIR in the file
    img = np.asarray(nib.load(str(task / "imagesTr" / "BRATS_001.nii.gz")).dataobj)
    for k, file_channel in enumerate(order):
        assert np.unravel_index(np.argmax(img[..., file_channel]), SHAPE)[0] == 14 + 3 * file_channel
    # reorder dataset.json's modality list: the output stays T1, T1ce, T2, FLAIR because the names say so
    meta = json.loads((task / "dataset.json").read_text())
    meta["modality"] = {"0": "T2w", "1": "FLAIR", "2": "t1gd", "3": "T1w"}
    (task / "dataset.json").write_text(json.dumps(meta))
    assert read_msd_task(task)[1] == [3, 2, 0, 1]
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "PD"}
    (task / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'PD' is not one of FLAIR, T1w, t1gd, T2w"):
        read_msd_task(task)


def test_resume_skips_finished_cases_and_other_settings_are_refused(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "o"
    first = prepare_msd(task, out, mode="2d", min_area=20, size=16)
    again = prepare_msd(task, out, mode="2d", min_area=20, size=16)
    assert again["cases_skipped_resume"] == 3 and again["cases_done"] == 0
    assert len(again["bad_cases"]) == 3  # bad cases are retried, and still bad
    assert again["items"] == first["items"] and _rows(out) and len(_rows(out)) == first["items"]
    with pytest.raises(ValueError, match="prepared with other settings"):
        prepare_msd(task, out, mode="2d", min_area=20, size=32)
    with pytest.raises(ValueError, match="mode must be one of"):
        prepare_msd(task, tmp_path / "x", mode="4d")
    with pytest.raises(DataError, match="no dataset.json"):
        prepare_msd(tmp_path / "nowhere", tmp_path / "y")


# ----------------------------------------------------------------------------------------------- 3-D


def test_3d_hemispheres_by_anatomy(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "msd3d"
    report = prepare_msd(task, out, mode="3d", size=16, margin=2)
    assert report["cases_done"] == 3 and len(report["bad_cases"]) == 3
    assert report["cases_crossing_midline"] == 1  # BRATS_003: no item
    # BRATS_001 is stored in RAS with the tumor at low X (left); BRATS_002 in LPS: the same indices are the right
    assert report["tumor_side"] == {"left": 1, "right": 1}
    assert report["class_counts"] == [2, 2] and report["items"] == 4
    rows = {r["image"]: r for r in _rows(out)}
    assert set(rows) == {f"images/{n}.npy" for n in ("BRATS_001_left_tumor", "BRATS_001_right_clean",
                                                       "BRATS_002_left_clean", "BRATS_002_right_tumor")}
    for name, row in rows.items():
        img, msk = np.load(out / name), np.load(out / row["mask"])
        assert img.shape == (4, 8, 16, 16) and msk.shape == (1, 8, 16, 16) and img.dtype == np.float32
        assert row["label"] == ("1" if "tumor" in name else "0")
        assert (msk.sum() > 0) == (row["label"] == "1")
        assert np.abs(img).sum() > 0  # a hemisphere of brain, not padding
    # the tumor mask lies on the tumor's bright voxels (the core enhances on every channel)
    img = np.load(out / "images/BRATS_001_left_tumor.npy")
    msk = np.load(out / "masks/BRATS_001_left_tumor.npy")[0].astype(bool)
    assert img[:, msk].mean() > img[:, ~msk & (np.abs(img).sum(0) > 0)].mean() + 0.5
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["orientation"] == "RAS" and meta["image_size"] == [8, 16, 16] and meta["spatial_dims"] == 3
    ds = FolderDataset(out, augment="anatomy", split=None)
    assert ds.spatial_dims == 3 and ds.augment_policy.flip_axes == (0,)
    assert not check_dataset(out).problems


def test_3d_whole_volumes_are_all_positives_with_a_note(tmp_path):
    task = _task(tmp_path)
    report = prepare_msd(task, tmp_path / "o", mode="3d", negatives="none", size=16)
    assert report["class_counts"] == [0, 3] and "only one class" in report["note"]
    for row in _rows(tmp_path / "o"):
        assert np.load(tmp_path / "o" / row["image"]).shape == (4, 16, 16, 16)
        assert np.load(tmp_path / "o" / row["mask"]).sum() > 0
    with pytest.raises(ValueError, match="even number >= 16"):
        prepare_msd(task, tmp_path / "p", mode="3d", size=15)


def test_prepare_msd_cli(tmp_path):
    task = _task(tmp_path)
    res = CliRunner().invoke(app, ["prepare", "msd", str(task), str(tmp_path / "out"), "--mode", "3d", "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "3 cases done" in res.output and "3 bad" in res.output and "2 / 2" in res.output
    res = CliRunner().invoke(app, ["prepare", "msd", str(task), str(tmp_path / "out2"), "--mode", "sideways"])
    assert res.exit_code == 2 and "mode must be one of" in res.output


def _rows(root: Path) -> list[dict[str, str]]:
    import csv

    with open(root / "labels.csv", newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: r["image"])
