"""``synthetic-brain-3d``: volumes, masks inside the brain, balanced labels, determinism, hardness guard."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from dualattn.data import FolderDataset, list_datasets, make_dataset, resolve_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "dataset.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def vols(tmp_path_factory) -> Path:
    return make_dataset("synthetic-brain-3d", tmp_path_factory.mktemp("v") / "d", n=11, size=24, seed=3)


def test_shapes_labels_masks(vols):
    assert "synthetic-brain-3d" in list_datasets()
    ds = FolderDataset(vols, normalize="none")
    assert len(ds) == 11 and ds.spatial_dims == 3 and ds.in_channels == 4
    assert ds.channel_names == ["T1", "T1ce", "T2", "FLAIR"] and ds.class_names == ["no_tumor", "tumor"]
    assert sorted(ds.class_counts()) == [5, 6]  # balanced: n // 2 and n - n // 2
    assert len(set(ds.patients)) == 11  # one volume per patient
    for i in range(len(ds)):
        item = ds[i]
        img, mask = item["image"].numpy(), item["mask"][0].numpy()
        assert img.shape == (4, 24, 24, 24) and np.isfinite(img).all() and item["has_mask"]
        brain = img.mean(axis=0) > 0.15  # above the Rician background
        assert 0.15 < brain.mean() < 0.7  # a head in the cube, background around it
        if ds.labels[i] == 1:
            assert mask.sum() >= 8, ds.ids[i]  # non-empty exactly for tumour volumes
            assert brain[mask > 0].mean() > 0.97  # the lesion lies inside the brain
        else:
            assert mask.sum() == 0


def test_tumour_changes_the_image_where_the_mask_is(vols):
    """Inside the mask, a tumour volume differs from the healthy tissue around it in some channel."""
    ds = FolderDataset(vols, normalize="none")
    for i in range(len(ds)):
        if ds.labels[i] == 0:
            continue
        img, mask = ds[i]["image"].numpy(), ds[i]["mask"][0].numpy() > 0
        brain = (img.mean(axis=0) > 0.15) & ~mask
        gaps = [abs(img[c][mask].mean() - img[c][brain].mean()) for c in range(4)]
        assert max(gaps) > 0.05, (ds.ids[i], gaps)


def test_deterministic_by_seed(tmp_path, vols):
    again = make_dataset("synthetic-brain-3d", tmp_path / "a", n=11, size=24, seed=3)
    other = make_dataset("synthetic-brain-3d", tmp_path / "o", n=11, size=24, seed=4)
    assert _digest(again) == _digest(vols)
    assert _digest(other) != _digest(vols)


def test_resolve_dataset_caches(tmp_path):
    first = resolve_dataset("synthetic-brain-3d", cache_dir=tmp_path, n=3, size=16, seed=0)
    assert first.name == "synthetic-brain-3d-n3-s16-seed0-v1"
    assert np.load(next((first / "images").glob("*.npy"))).shape == (4, 16, 16, 16)
    assert resolve_dataset("synthetic-brain-3d", cache_dir=tmp_path, n=3, size=16, seed=0) == first


def test_raw_channels_are_poor_heatmaps(tmp_path):
    """Regression guard: no raw channel localises the tumour well, yet FLAIR is better than chance."""
    from dualattn.data._hardness import raw_channel_ap

    root = make_dataset("synthetic-brain-3d", tmp_path / "h", n=16, size=32, seed=11)
    ap = raw_channel_ap(root)
    assert max(ap[c] for c in ("T1", "T1ce", "T2", "FLAIR")) < 0.5, ap
    assert ap["FLAIR"] > 2 * ap["prevalence"], ap


def test_arguments_checked(tmp_path):
    from dualattn.data.synthetic_brain_3d import generate, voxel_to_mni

    with pytest.raises(ValueError, match="size"):
        generate(tmp_path / "x", n=2, size=4)
    with pytest.raises(ValueError, match="n"):
        generate(tmp_path / "y", n=0, size=16)
    aff = voxel_to_mni(44)  # 4 mm voxels; the cube's centre voxel corner lies at the cube centre
    np.testing.assert_allclose(aff @ [21.5, 21.5, 21.5, 1], [0.0, -18.0, 12.0, 1.0])
