"""Train-time augmentation flips left-right only: X of a ``(C, X, Y, Z)`` RAS volume, the columns of a
radiological 2-D image (unchanged); the demo's presets carry the flag and its metadata names 3-D sizes."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch

from dualattn.data import FolderWriter
from dualattn.data import transforms
from dualattn.data.transforms import augment
from dualattn.pipelines import demo
from dualattn.pipelines.demo import PRESETS, get_preset

NO_AFFINE = dict(max_rotate_deg=0, max_scale=0, max_shift=0)


def _marked_volume() -> tuple[torch.Tensor, torch.Tensor]:
    """``(2, 5, 6, 7)``: every voxel distinct (no flip of any axis set maps it to itself), a mask marker in
    one corner, so that each of the 7 non-empty flip combinations gives a different array."""
    img = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 5, 6, 7)
    msk = torch.zeros(1, 5, 6, 7)
    msk[0, 0:2, 0:3, 0:1] = 1.0  # left, posterior, inferior corner
    return img, msk


def _flip_outcome(out: torch.Tensor, ref: torch.Tensor) -> tuple[int, ...] | None:
    """Which set of spatial axes (0-based) ``out`` is ``ref`` flipped along; ``None`` when no set matches."""
    combos = [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    for axes in combos:
        flipped = torch.flip(ref, dims=[a + 1 for a in axes]) if axes else ref
        if torch.allclose(out, flipped, rtol=0, atol=1e-3):  # voxel values differ by >= 1
            return axes
    return None


def test_3d_flips_left_right_only_over_many_seeds():
    img, msk = _marked_volume()
    seen = []
    for seed in range(40):
        out_i, out_m = augment(img, msk, rng=np.random.default_rng(seed), **NO_AFFINE)
        # the identity affine resamples at voxel centres: the image up to rounding, the mask exactly
        got_i, got_m = _flip_outcome(out_i, img), _flip_outcome(out_m, msk)
        assert got_i in ((), (0,)), (seed, got_i)  # never Y (anterior-posterior) or Z (superior-inferior)
        assert got_m == got_i and set(torch.unique(out_m).tolist()) <= {0.0, 1.0}, seed  # the mask follows
        seen.append(got_i)
    assert seen.count(()) >= 8 and seen.count((0,)) >= 8, seen  # both outcomes, about half each


def test_3d_marker_moves_to_the_right_only():
    img, msk = _marked_volume()
    for seed in range(20):
        _, out_m = augment(img, msk, rng=np.random.default_rng(seed), **NO_AFFINE)
        voxels = torch.nonzero(out_m[0] > 0.5)
        xs, ys, zs = (set(voxels[:, k].tolist()) for k in range(3))
        assert ys == {0, 1, 2} and zs == {0}  # still posterior and inferior
        assert xs in ({0, 1}, {3, 4})  # left, or mirrored to the right


def test_3d_affine_keeps_the_flip_left_right():
    """With the default affine on, the flip decision is still about X: the mirrored volume's mask mass
    moves to the right half, never to the top or the front."""
    img, msk = _marked_volume()
    sides = set()
    for seed in range(30):
        _, out_m = augment(img, msk, rng=np.random.default_rng(seed))
        voxels = torch.nonzero(out_m[0] > 0.5).float()
        if len(voxels) == 0:
            continue
        x, y, z = voxels.mean(dim=0).tolist()
        assert y < 3.0 and z < 2.5, (seed, y, z)  # stays posterior and inferior (the corner is at y~1, z=0)
        sides.add(x > 2.0)
    assert sides == {False, True}


def test_3d_explicit_flip_axes_still_honoured():
    img, msk = _marked_volume()
    outcomes = {_flip_outcome(augment(img, msk, rng=np.random.default_rng(s), flip_axes=(2,), **NO_AFFINE)[0], img)
                for s in range(20)}
    assert outcomes == {(), (2,)}


@pytest.mark.parametrize("seed", range(12))
def test_2d_flip_unchanged(seed):
    """2-D: the last axis (columns: left-right in the radiological view), with the same random stream as
    before (one draw per flip axis, then the affine)."""
    img = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5)
    msk = (img[:1] > 20).float()
    out_i, out_m = augment(img, msk, rng=np.random.default_rng(seed), **NO_AFFINE)
    expected_flip = np.random.default_rng(seed).random() < 0.5  # the first draw decides the flip
    expected_i = torch.from_numpy(img.numpy()[:, :, ::-1].copy())  # by hand, not through torch.flip
    expected_m = torch.from_numpy(msk.numpy()[:, :, ::-1].copy())
    assert torch.allclose(out_i, expected_i if expected_flip else img, rtol=0, atol=1e-5)
    assert torch.equal(out_m, expected_m if expected_flip else msk)


def test_2d_with_affine_matches_the_explicit_last_axis():
    img = torch.randn(3, 12, 10, generator=torch.Generator().manual_seed(0))
    msk = (img[:1] > 0).float()
    for seed in range(6):
        a = augment(img, msk, rng=np.random.default_rng(seed))
        b = augment(img, msk, rng=np.random.default_rng(seed), flip_axes=(1,))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_flip_axis_raises():
    img, msk = _marked_volume()
    with pytest.raises(ValueError, match="flip axis 3 out of range"):
        augment(img, msk, rng=np.random.default_rng(0), flip_axes=(3,))


def test_transforms_examples_run():
    result = doctest.testmod(transforms, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- the demo


def test_presets_keep_augmentation_on_and_pass_it_to_training(tmp_path):
    assert all(p.augment is True for p in PRESETS.values())  # the behaviour before the field existed
    for name in ("tiny", "tiny3d"):
        cfg = demo._train_config(PRESETS[name], data=tmp_path, variant="baseline", seed=0, progress=False)
        assert cfg.augment is True
    off = get_preset("tiny3d", augment=False)
    assert demo._train_config(off, data=tmp_path, variant="baseline", seed=0, progress=False).augment is False
    assert json.loads(json.dumps(off.to_dict()))["augment"] is False


@pytest.mark.parametrize(("shape", "expected"), [((4, 16, 16, 16), "16x16x16"), ((4, 16, 16), "16x16")])
def test_image_size_label_follows_the_dataset(tmp_path, shape, expected):
    root = tmp_path / "d"
    with FolderWriter(root, class_names=["a", "b"]) as w:
        for i in range(2):
            w.add(f"x{i}", image=np.zeros(shape, np.float32), label=i, patient=f"p{i}")
    size = PRESETS["tiny3d"].image_size
    assert demo._image_size_label(size, demo._spatial_dims(root)) == expected
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        demo._image_size_label(size, 4)


def test_preset_fills_reach_the_evaluation_and_are_checked():
    from dualattn.pipelines.demo import get_preset

    assert "fills" not in get_preset("tiny").to_dict()  # a preset without fills keeps old demo folders resuming
    assert get_preset("default").to_dict()["fills"] == ["mean", "road"]  # the paper's fill and ROAD
    assert get_preset("3d", fills=("road", "mean")).to_dict()["fills"] == ["road", "mean"]
    with pytest.raises(ValueError, match="fills"):
        get_preset("3d", fills=("road", "road"))
    with pytest.raises(ValueError, match="fills"):
        get_preset("3d", fills=("sand",))
