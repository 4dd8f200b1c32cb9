"""`dualattn data list|make` and `dualattn prepare brats|pet` through the real typer app."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.data import FolderDataset


def test_data_list_and_make(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "synthetic-brain" in res.output and "br35h" in res.output
    res = runner.invoke(app, ["data", "make", "synthetic-pet", str(tmp_path / "p"), "--n", "7", "--size", "32", "--seed", "3"])
    assert res.exit_code == 0, res.output
    ds = FolderDataset(tmp_path / "p")
    assert len(ds) == 7 and ds[0]["image"].shape == (1, 32, 32)
    res = runner.invoke(app, ["data", "make", "nope", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown dataset 'nope'" in res.output


def test_prepare_brats_cli(tmp_path):
    raw = tmp_path / "raw" / "C1"
    raw.mkdir(parents=True)
    shape = (24, 20, 3)
    vol = np.random.default_rng(0).uniform(1, 2, shape).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[2:8, 5:12, 1] = 1
    for mod in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(raw / f"C1_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(raw / "C1_seg.nii"))
    res = CliRunner().invoke(app, ["prepare", "brats", str(tmp_path / "raw"), str(tmp_path / "out"), "--min-area", "10", "--size", "16"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["items"] == 2 and report["cases_done"] == 1
    res = CliRunner().invoke(app, ["prepare", "brats", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_folder_dataset_3d_nifti(tmp_path):
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        vol = rng.normal(size=(10, 12, 8)).astype(np.float32)
        m = np.zeros((10, 12, 8), np.uint8)
        m[2:6, 3:7, 1:4] = 1
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / "img" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(m, np.eye(4)), str(root / "img" / f"m{i}.nii.gz"))
        rows.append(f"img/v{i}.nii.gz,{i % 2},img/m{i}.nii.gz")
    (root / "labels.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")
    ds = FolderDataset(root, size=(20, 24, 16), augment=True, split=None)
    assert ds.spatial_dims == 3 and ds.in_channels == 1
    item = ds[1]
    assert item["image"].shape == (1, 20, 24, 16) and item["mask"].shape == (1, 20, 24, 16)
    assert set(np.unique(item["mask"].numpy()).tolist()) <= {0.0, 1.0}
    plain = FolderDataset(root, size=(20, 24, 16))[1]
    assert float(plain["mask"].sum()) == 4 * 4 * 3 * 8  # nearest upsampling by 2 in every axis


def test_prepare_pet_cli(tmp_path):
    from test_data_prepare import _pet_series

    vol = np.full((6, 8, 8), 500.0)
    vol[2, 3, 3] = 9000.0
    _pet_series(tmp_path / "raw" / "s1", vol, slopes=np.ones(6))
    (tmp_path / "labels.csv").write_text("series,label\ns1,mild\n")
    res = CliRunner().invoke(app, ["prepare", "pet", str(tmp_path / "raw"), str(tmp_path / "labels.csv"), str(tmp_path / "out"), "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "1 series written, 0 bad" in res.output
    ds = FolderDataset(tmp_path / "out", normalize="none")
    assert ds.labels == [1] and ds[0]["image"].shape == (1, 16, 16)
