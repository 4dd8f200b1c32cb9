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


# ----------------------------------------------------------------------------- bad input


def _csv(root: Path, rows: list[str]) -> None:
    (root / "labels.csv").write_text("image,label,mask\n" + "\n".join(rows) + "\n")


def test_bad_folder_inputs_raise_data_error_naming_file_and_problem(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    np.save(root / "images" / "a.npy", np.zeros((1, 8, 8), np.float32))
    np.save(root / "images" / "rgb.npy", np.zeros((3, 8, 8), np.float32))
    np.save(root / "images" / "nan.npy", np.full((1, 8, 8), np.nan, np.float32))
    np.save(root / "images" / "m_small.npy", np.zeros((1, 4, 4), np.uint8))
    np.save(root / "images" / "m_multi.npy", np.arange(64).reshape(1, 8, 8))
    (root / "images" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)

    with pytest.raises(DataError, match=r"labels.csv not found"):
        FolderDataset(root)
    _csv(root, ["images/a.npy,0,", "images/missing.npy,1,"])
    with pytest.raises(DataError, match=r"row 3: image file 'images/missing.npy' does not exist"):
        FolderDataset(root)
    (root / "dataset.json").write_text('{"class_names": ["no", "yes"]}')
    _csv(root, ["images/a.npy,0,", "images/a.npy,maybe,"])
    with pytest.raises(DataError, match=r"row 3: unknown label 'maybe'"):
        FolderDataset(root)
    _csv(root, ["images/a.npy,0,", "images/a.npy,2,"])
    with pytest.raises(DataError, match=r"unknown label '2'"):
        FolderDataset(root)
    _csv(root, ["images/a.npy,no,", "images/rgb.npy,yes,"])
    ds = FolderDataset(root, in_channels=1)
    assert int(ds[0]["label"]) == 0
    with pytest.raises(DataError, match=r"rgb\.npy: image has 3 channels; expected 1"):
        ds[1]
    _csv(root, ["images/a.npy,0,", "images/nan.npy,1,"])
    with pytest.raises(DataError, match=r"nan\.npy: 64 NaN/Inf"):
        FolderDataset(root)[1]
    _csv(root, ["images/a.npy,0,images/m_small.npy"])
    with pytest.raises(DataError, match=r"m_small\.npy: mask size \(4, 4\) differs from image size \(8, 8\)"):
        FolderDataset(root)[0]
    _csv(root, ["images/a.npy,0,images/m_multi.npy"])
    with pytest.raises(DataError, match=r"m_multi\.npy: mask is not binary"):
        FolderDataset(root)[0]
    _csv(root, ["images/bad.png,0,"])
    with pytest.raises(DataError, match=r"bad\.png: cannot decode image"):
        FolderDataset(root)
    (root / "labels.csv").write_text("file,label\nimages/a.npy,0\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['image'\]"):
        FolderDataset(root)


def test_float_written_integer_labels(tmp_path):
    root = _write_folder(tmp_path / "d", n=4)
    text = (root / "labels.csv").read_text().replace(",0,", ",0.0,").replace(",1,", ",1.0,")
    (root / "labels.csv").write_text(text)
    assert FolderDataset(root).labels == [0, 1, 0, 1]
    (root / "dataset.json").unlink()
    ds = FolderDataset(root)
    assert ds.class_names == ["0", "1"] and ds.labels == [0, 1, 0, 1]


def test_string_labels_and_split_column(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    for i in range(6):
        np.save(root / "images" / f"{i}.npy", np.full((1, 4, 4), float(i), np.float32))
    (root / "labels.csv").write_text(
        "image,label,patient,split\n" + "\n".join(f"images/{i}.npy,{'yes' if i % 2 else 'no'},p{i},{['train', 'val', 'test'][i % 3]}" for i in range(6)) + "\n"
    )
    ds = FolderDataset(root, split="val", normalize="none")
    assert ds.class_names == ["no", "yes"] and ds.ids == ["images/1.npy", "images/4.npy"] and ds.labels == [1, 0]


def test_augment_train_only_deterministic_and_mask_aligned(tmp_path):
    from dualattn.data.transforms import augment

    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    with FolderWriter(root, class_names=["a", "b"]) as w:
        for i in range(20):
            m = np.zeros((1, 16, 16), np.uint8)
            m[0, 3:9, 2:7] = 1
            w.add(f"x{i}", image=np.concatenate([m.astype(np.float32), rng.normal(size=(1, 16, 16)).astype(np.float32)]), label=i % 2, patient=f"p{i}", mask=m)
    a = FolderDataset(root, split="train", augment=True, seed=1, normalize="none")
    b = FolderDataset(root, split="train", augment=True, seed=1, normalize="none")
    assert torch.equal(a[0]["image"], b[0]["image"])
    assert not torch.equal(a[0]["image"], a[0]["image"])  # a new draw each time an item is read
    assert FolderDataset(root, split="test", augment=True).augment is False
    a.set_epoch(3)
    first = a[2]["image"]
    b.set_epoch(3)  # a fresh object that never read epoch 0 gets the same epoch-3 stream
    assert torch.equal(b[2]["image"], first)
    a.set_epoch(3)
    assert torch.equal(a[2]["image"], first)
    for k in range(5):
        item = a[k]
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        # channel 0 is the mask itself, resampled bilinearly: it agrees with the nearest-resampled mask
        agree = ((item["image"][0] > 0.5).float() == item["mask"][0]).float().mean()
        assert agree > 0.93
    # pure flip (no affine): exactly torch.flip along the last axis, for image and mask
    img = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    msk = (img[:1] > 20).float()
    for seed in range(6):
        out_i, out_m = augment(img, msk, rng=np.random.default_rng(seed), max_rotate_deg=0, max_scale=0, max_shift=0)
        flipped = torch.equal(out_i, torch.flip(img, dims=[2]))
        assert flipped or torch.allclose(out_i, img, atol=1e-5)
        assert torch.equal(out_m, torch.flip(msk, dims=[2]) if flipped else msk)
