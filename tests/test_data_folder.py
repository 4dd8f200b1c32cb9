"""FolderDataset, FolderWriter, splits and the embedded-dataset registry."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from dualattn.data import DataError, FolderDataset, FolderWriter, list_datasets, make_dataset, resolve_dataset
from dualattn.data.splits import split_indices, split_patients


def _write_folder(root: Path, n: int = 12, *, channels: int = 1, size: int = 8, masks: bool = True) -> Path:
    rng = np.random.default_rng(0)
    with FolderWriter(root, class_names=["neg", "pos"]) as w:
        for i in range(n):
            img = rng.normal(size=(channels, size, size)).astype(np.float32)
            m = np.zeros((1, size, size), np.uint8)
            m[0, 2:5, 3:6] = 1
            w.add(f"x{i}", image=img, label=i % 2, patient=f"p{i // 2}", mask=m if (masks and i % 2) else None)
    return root


def test_writer_roundtrip_and_item_contract(tmp_path):
    root = _write_folder(tmp_path / "d")
    ds = FolderDataset(root, normalize="none")
    assert len(ds) == 12 and ds.num_classes == 2 and ds.class_names == ["neg", "pos"]
    assert ds.in_channels == 1 and ds.spatial_dims == 2
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 8, 8)
    assert item["label"].dtype == torch.int64 and item["label"].shape == () and int(item["label"]) == 1
    assert item["has_mask"] is True and item["mask"].shape == (1, 8, 8)
    expected = np.zeros((1, 8, 8), np.float32)
    expected[0, 2:5, 3:6] = 1
    np.testing.assert_array_equal(item["mask"].numpy(), expected)
    raw = np.load(root / "images" / "x1.npy")
    np.testing.assert_allclose(item["image"].numpy(), raw)
    assert ds[0]["has_mask"] is False and float(ds[0]["mask"].sum()) == 0.0


def test_zscore_is_per_sample_and_per_channel(tmp_path):
    root = _write_folder(tmp_path / "d", channels=3)
    ds = FolderDataset(root)
    img = ds[3]["image"].numpy()
    raw = np.load(root / "images" / "x3.npy")
    ref = (raw - raw.mean(axis=(1, 2), keepdims=True)) / raw.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(img, ref, rtol=1e-4, atol=1e-5)


def test_resize_and_channel_repeat(tmp_path):
    root = _write_folder(tmp_path / "d")
    ds = FolderDataset(root, size=16, in_channels=3, normalize="none")
    item = ds[1]
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert torch.equal(item["image"][0], item["image"][2])
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    # nearest-neighbour upsampling by 2 of the 3x3 block -> a 6x6 block
    assert float(item["mask"].sum()) == 36.0


def test_split_patient_level_disjoint_and_order_independent(tmp_path):
    patients = [f"p{i // 3}" for i in range(90)]
    labels = [i % 2 for i in range(90)]
    a = split_indices(patients, labels=labels, seed=3)
    sets = {k: {patients[i] for i in v} for k, v in a.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in a.values()) == 90
    perm = np.random.default_rng(0).permutation(90)
    b = split_patients([patients[i] for i in perm], strata=[labels[i] for i in perm], seed=3)
    assert b == split_patients(patients, strata=labels, seed=3)
    assert split_patients(patients, seed=4) != split_patients(patients, seed=3)


def test_embedded_registry_and_cache(tmp_path):
    assert {"synthetic-brain", "synthetic-pet", "br35h"} <= set(list_datasets())
    p = resolve_dataset("synthetic-brain", cache_dir=tmp_path, n=6, size=16, seed=0)
    assert (p / "labels.csv").is_file()
    mtime = (p / "labels.csv").stat().st_mtime_ns
    assert resolve_dataset("synthetic-brain", cache_dir=tmp_path, n=6, size=16, seed=0) == p
    assert (p / "labels.csv").stat().st_mtime_ns == mtime
    assert resolve_dataset(p) == p
    with pytest.raises(DataError, match="neither"):
        resolve_dataset("no-such-set", cache_dir=tmp_path)
    with pytest.raises(DataError, match="already holds"):
        make_dataset("synthetic-brain", p, n=2, size=16)
