"""``synthetic-brain-easy``: synthetic-brain with its confounders off; the default output unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualattn.data import FolderDataset, dataset_info, list_datasets, make_dataset, resolve_dataset
from dualattn.data.synthetic_brain import generate

N, SIZE, SEED = 16, 32, 0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("default") / "d", n=N, size=SIZE, seed=SEED)


@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("easy") / "d", n=N, size=SIZE, seed=SEED, confounders=False)


def test_confounders_on_is_the_default_output(default, tmp_path):
    on = generate(tmp_path / "on", n=N, size=SIZE, seed=SEED, confounders=True)
    assert _files(on) == _files(default)  # every file, dataset.json included, byte for byte
    a, b = FolderDataset(default, normalize="none"), FolderDataset(on, normalize="none")
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())
    assert "confounders" not in (default / "dataset.json").read_text()


def test_easy_changes_only_the_images(default, easy):
    a, b = FolderDataset(default, normalize="none"), FolderDataset(easy, normalize="none")
    assert a.ids == b.ids and list(a.labels) == list(b.labels)
    assert (easy / "labels.csv").read_bytes() == (default / "labels.csv").read_bytes()  # patients, splits
    changed = 0
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i]["mask"].numpy(), b[i]["mask"].numpy())  # the same tumors
        changed += not np.array_equal(a[i]["image"].numpy(), b[i]["image"].numpy())
    assert changed == len(a)
    import json

    meta = json.loads((easy / "dataset.json").read_text())
    assert meta["confounders"] is False and meta["name"] == "synthetic-brain"


def _flair_peak_ratios(root: Path) -> list[float]:
    """Per negative half: the 99.5th percentile of FLAIR inside the brain over its median."""
    ds = FolderDataset(root, normalize="none")
    ratios = []
    for i in range(len(ds)):
        if ds.labels[i] != 0:
            continue
        x = ds[i]["image"].numpy()
        brain = x[0] > 0.2  # T1 outside the brain is Rician noise below 0.15
        flair = x[3][brain]
        ratios.append(float(np.percentile(flair, 99.5) / np.median(flair)))
    return ratios


def test_easy_negatives_have_no_bright_blobs(default, easy):
    on, off = _flair_peak_ratios(default), _flair_peak_ratios(easy)
    assert len(on) == len(off) == N // 2
    # the same negative halves (seed-matched): each one's bright tail is lower without the confounders
    assert all(b < a for a, b in zip(on, off)), (on, off)
    assert np.mean(off) < 0.85 * np.mean(on), (on, off)
    # and what is left is plain tissue: nothing brighter than 1.5x the median brain FLAIR
    assert max(off) < 1.5, off


def test_registry_entry(tmp_path, easy):
    assert "synthetic-brain-easy" in list_datasets()
    info = dataset_info("synthetic-brain-easy")
    assert info.module == "synthetic_brain" and dict(info.options) == {"confounders": False, "lesion_contrast": 1.0}
    assert info.version == dataset_info("synthetic-brain").version  # one generator, one version
    assert dict(dataset_info("synthetic-brain").options) == {}
    made = make_dataset("synthetic-brain-easy", tmp_path / "made", n=N, size=SIZE, seed=SEED)
    easy = generate(tmp_path / "direct", n=N, size=SIZE, seed=SEED, confounders=False, lesion_contrast=1.0)
    assert _files(made) == _files(easy)
    # the cache key holds the options: another entry of the same generator never shares a folder
    first = resolve_dataset("synthetic-brain-easy", cache_dir=tmp_path / "cache", n=N, size=SIZE, seed=SEED)
    assert first.name == info.cache_name(n=N, size=SIZE, seed=SEED)
    assert first.name.startswith(f"synthetic-brain-easy-n{N}-s{SIZE}-seed{SEED}-v{info.version}-o")
    assert _files(first) == _files(easy)
    assert resolve_dataset("synthetic-brain-easy", cache_dir=tmp_path / "cache", n=N, size=SIZE, seed=SEED) == first
    # entries without options keep their cache names
    assert dataset_info("synthetic-brain").cache_name(n=3, size=16, seed=0) == "synthetic-brain-n3-s16-seed0-v3"


def test_cli_data_make_and_list(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    runner = CliRunner()
    out = tmp_path / "e"
    res = runner.invoke(app, ["data", "make", "synthetic-brain-easy", str(out), "--n", "4", "--size", "16"])
    assert res.exit_code == 0, res.output
    assert (out / "labels.csv").is_file() and '"confounders": false' in (out / "dataset.json").read_text()
    res = runner.invoke(app, ["data", "list"], env={"COLUMNS": "240"})
    assert res.exit_code == 0 and "synthetic-brain-easy" in res.output


def test_lesion_contrast_sets_every_lesion_to_full_contrast(default, tmp_path):
    import json

    import numpy as np

    from dualattn.data import FolderDataset

    full = generate(tmp_path / "full", n=N, size=SIZE, seed=SEED, lesion_contrast=1.0)
    assert json.loads((full / "dataset.json").read_text())["lesion_contrast"] == 1.0
    a, b = FolderDataset(default), FolderDataset(full)
    ratios = []
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert int(x["label"]) == int(y["label"])
        if "mask" not in x or int(x["label"]) == 0:
            continue
        m = np.asarray(x["mask"]).astype(bool).squeeze()
        assert np.array_equal(m, np.asarray(y["mask"]).astype(bool).squeeze())  # same tumours
        if m.sum() < 4:
            continue
        flair_a, flair_b = np.asarray(x["image"])[-1], np.asarray(y["image"])[-1]
        ratios.append((flair_b[m].mean() / np.abs(flair_b).mean()) / (flair_a[m].mean() / np.abs(flair_a).mean()))
    assert ratios and np.median(ratios) >= 1.0  # lesions at least as conspicuous as drawn, mostly more
    with pytest.raises(ValueError, match="lesion_contrast"):
        generate(tmp_path / "bad", n=2, size=SIZE, seed=SEED, lesion_contrast=0.0)
