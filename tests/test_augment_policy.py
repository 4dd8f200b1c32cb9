"""Augmentation policies declared per axis from the data's orientation (``dualattn.data.transforms``).

References: the augmentation as it was before policies existed (copied below: ``lr-flip-affine`` must stay bit
for bit), MONAI's deterministic ``Affine`` / ``AdjustContrast`` / ``ScaleIntensity`` / ``ShiftIntensity`` for the
geometry and the intensity formulas, and a numpy generator replaying the documented draw order."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dualattn.data import DataError, FolderDataset, FolderWriter
from dualattn.data import transforms
from dualattn.data.transforms import (
    AUGMENT_POLICIES,
    AugmentPolicy,
    augment,
    augment_policy,
    left_right_axis,
    resolve_augment,
)


def _legacy_augment(image, mask, *, rng, flip_axes=None, max_rotate_deg=10.0, max_scale=0.1, max_shift=0.05):
    """``dualattn.data.transforms.augment`` as released before augmentation policies (commit 2de9ef0)."""
    spatial = image.dim() - 1
    axes = ((1,) if spatial == 2 else (0,)) if flip_axes is None else tuple(flip_axes)
    flips = [a + 1 for a in axes if rng.random() < 0.5]
    if flips:
        image = torch.flip(image, dims=flips)
        mask = torch.flip(mask, dims=flips)
    angle = math.radians(rng.uniform(-max_rotate_deg, max_rotate_deg))
    scale = 1.0 + rng.uniform(-max_scale, max_scale)
    shift = rng.uniform(-max_shift, max_shift, size=spatial) * 2.0
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.zeros(spatial, spatial + 1, dtype=torch.float32)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float32) / scale
    if spatial == 2:
        theta[:, :2] = rot
    else:
        theta[:2, :2] = rot
        theta[2, 2] = 1.0 / scale
    theta[:, -1] = torch.as_tensor(shift, dtype=torch.float32)
    size = (1, 1, *image.shape[1:])
    grid = F.affine_grid(theta[None], list(size), align_corners=False)
    img = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    msk = F.grid_sample(mask[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return img, msk


def _volume(shape=(2, 9, 11, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(*shape, generator=g)
    return img, (torch.rand(1, *shape[1:], generator=g) > 0.7).float()


# ---------------------------------------------------------------------------- the default is unchanged


@pytest.mark.parametrize("shape", [(3, 20, 17), (2, 9, 11, 7), (1, 16, 16, 16)])
def test_default_policy_is_the_old_augmentation_bit_for_bit(shape):
    img, msk = _volume(shape)
    policy = augment_policy("lr-flip-affine", spatial_dims=len(shape) - 1)
    assert resolve_augment(True, spatial_dims=len(shape) - 1) == policy
    for seed in range(60):
        ref = _legacy_augment(img, msk, rng=np.random.default_rng(seed))
        for got in (augment(img, msk, rng=np.random.default_rng(seed)),
                    policy.spatial(img, msk, rng=np.random.default_rng(seed))):
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), seed


def test_folder_dataset_augment_true_is_the_default_policy(tmp_path):
    root = _folder(tmp_path, spatial=3)
    a = FolderDataset(root, split="train", augment=True, seed=3)
    b = FolderDataset(root, split="train", augment="lr-flip-affine", seed=3)
    for ds in (a, b):
        ds.set_epoch(2)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])


# ---------------------------------------------------------------------------- anatomy: which axes flip


def _marked(n: int = 24):
    """A RAS volume with a bright block in the left, posterior, inferior corner and its mask."""
    img = torch.zeros(2, n, n, n)
    msk = torch.zeros(1, n, n, n)
    img[:, 2:7, 2:7, 2:7] = 1.0
    msk[0, 2:7, 2:7, 2:7] = 1.0
    return img, msk


@pytest.mark.parametrize("name", ["anatomy", "anatomy-spatial", "lr-flip-affine"])
def test_ras_marker_is_never_flipped_along_y_or_z(name):
    img, msk = _marked()
    policy = augment_policy(name, spatial_dims=3)
    assert policy.flip_axes == (0,)
    sides = set()
    for seed in range(60):
        out_i, out_m = policy.spatial(img, msk, rng=np.random.default_rng(seed))
        for out in (out_i[0], out_m[0]):
            where = torch.nonzero(out > 0.5).float()
            assert len(where), seed
            x, y, z = where.mean(0).tolist()
            assert y < 9 and z < 9, (seed, y, z)  # stays posterior and inferior (centre 11.5; the block at 4)
        sides.add(x > 11.5)
    assert sides == {False, True}  # left-right happens, both ways


@pytest.mark.parametrize(("orientation", "dims", "flips"), [
    ("RAS", 3, (0,)), ("radiological", 2, (1,)), ("radiological-sagittal", 2, ()), ("unoriented", 2, (0, 1)),
    ("unoriented", 3, (0, 1, 2)),
])
def test_flip_axes_come_from_the_orientation(orientation, dims, flips):
    for name in ("lr-flip-affine", "anatomy", "anatomy-spatial"):
        assert augment_policy(name, spatial_dims=dims, orientation=orientation).flip_axes == flips
    assert augment_policy("intensity", spatial_dims=dims, orientation=orientation).flip_axes == ()
    shape = (1,) + (6, 7, 5)[:dims]
    img = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    policy = AugmentPolicy(spatial_dims=dims, flip_axes=augment_policy("anatomy", spatial_dims=dims,
                                                                       orientation=orientation).flip_axes)
    seen = set()
    for seed in range(40):
        out, _ = policy.spatial(img, img.clone(), rng=np.random.default_rng(seed))
        seen.add(next(axes for axes in _subsets(dims) if torch.equal(out, torch.flip(img, [a + 1 for a in axes]))))
    assert seen == set(_subsets_of(flips))


def _subsets(n):
    return [tuple(a for a in range(n) if k >> a & 1) for k in range(2**n)]


def _subsets_of(axes):
    return [tuple(a for i, a in enumerate(axes) if k >> i & 1) for k in range(2 ** len(axes))]


def test_2d_radiological_slice_flips_its_columns_only():
    """Rows of an axial radiological slice run anterior -> posterior, columns right -> left."""
    img = torch.zeros(1, 20, 20)
    img[0, 2:6, 3:8] = 1.0  # anterior, patient's right
    policy = augment_policy("anatomy-spatial", spatial_dims=2)
    cols = set()
    for seed in range(40):
        out, _ = policy.spatial(img, img.clone(), rng=np.random.default_rng(seed))
        r, c = torch.nonzero(out[0] > 0.5).float().mean(0).tolist()
        assert r < 8, (seed, r)  # stays anterior
        cols.add(c > 9.5)
    assert cols == {False, True}


# ---------------------------------------------------------------------------- the mask follows the image


@pytest.mark.parametrize("name,dims", [("anatomy", 3), ("anatomy-spatial", 2), ("lr-flip-affine", 3)])
def test_mask_follows_the_image_exactly(name, dims):
    """The image is the mask itself: wherever the image's interpolation is exactly 0 or 1 (all neighbours
    agree) the nearest-neighbour mask has that value; the mask stays binary; flips act alike."""
    g = torch.Generator().manual_seed(0)
    shape = (20, 24, 16)[:dims]
    blocks = (torch.rand(1, *(s // 4 for s in shape), generator=g) > 0.5).float()
    msk = F.interpolate(blocks[None], size=shape, mode="nearest")[0]
    policy = augment_policy(name, spatial_dims=dims)
    moved = 0
    for seed in range(30):
        out_i, out_m = policy.spatial(msk.clone(), msk, rng=np.random.default_rng(seed))
        assert set(torch.unique(out_m).tolist()) <= {0.0, 1.0}
        sure = (out_i == 0) | (out_i == 1)
        assert sure.float().mean() > 0.4
        assert torch.equal(out_m[sure], out_i[sure]), seed
        moved += not torch.equal(out_m, msk)
    assert moved > 20


def test_rotation_zoom_and_shift_are_monai_affine_in_voxel_units():
    """One rotation plane with a per-axis zoom and a shift equals MONAI's ``Affine`` (rotation about the third
    axis, ``scale_params = 1 / zoom``, translation in voxels) on a non-cubic volume."""
    from monai.transforms import Affine

    x = torch.zeros(1, 15, 17, 13)
    x[0, 3:7, 4:9, 2:5] = 1.0
    x[0, 8:12, 10:14, 7:11] = 2.0
    about = {(1, 2): (0, -1), (0, 2): (1, 1), (0, 1): (2, -1)}  # plane -> (MONAI's axis, sign of its angle)
    for plane, (axis, sign) in about.items():
        policy = AugmentPolicy(spatial_dims=3, rotations=((*plane, 20.0),), scale=0.1, isotropic_scale=False,
                               shift=0.05)
        out, _ = policy.spatial(x, x[:1], rng=np.random.default_rng(7))
        rng = np.random.default_rng(7)  # the documented draw order: angles, zooms, shifts (grid order: last axis first)
        angle = math.radians(rng.uniform(-20, 20))
        zoom = 1.0 + rng.uniform(-0.1, 0.1, size=3)
        shift = (rng.uniform(-0.05, 0.05, size=3) * 2.0)[::-1] * np.array(x.shape[1:]) / 2.0
        rotate = [0.0, 0.0, 0.0]
        rotate[axis] = sign * angle
        rot = np.eye(3)  # ours: input = R (output / zoom) + shift; MONAI's: input = R (output / zoom + t)
        a, b = plane
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = math.cos(angle), math.sin(angle), -math.sin(angle), math.cos(angle)
        shift = rot.T @ shift
        ref = Affine(rotate_params=rotate, scale_params=[float(v) for v in 1.0 / zoom],
                     translate_params=[float(v) for v in shift],
                     padding_mode="zeros", mode="bilinear", image_only=True)(x)
        torch.testing.assert_close(out, torch.as_tensor(ref).float(), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- reproducibility, intensity


def test_same_seed_same_augmentation_other_seed_another():
    img, msk = _volume((2, 12, 12, 12))
    policy = augment_policy("anatomy", spatial_dims=3)

    def run(seed):
        rng = np.random.default_rng(seed)
        i, m = policy.spatial(img, msk, rng=rng)
        return policy.intensity(i, rng=rng), m

    outs = [run(s) for s in range(8)]
    for s in range(8):
        again = run(s)
        assert torch.equal(again[0], outs[s][0]) and torch.equal(again[1], outs[s][1])
    assert len({o[0].sum().item() for o in outs}) == 8


def test_dataset_stream_is_reproducible_and_varies_per_epoch(tmp_path):
    root = _folder(tmp_path, spatial=3)
    a = FolderDataset(root, split="train", augment="anatomy", seed=5)
    b = FolderDataset(root, split="train", augment="anatomy", seed=5)
    for ds in (a, b):
        ds.set_epoch(1)
    first = [a[i]["image"] for i in range(len(a))]
    assert all(torch.equal(x, b[i]["image"]) for i, x in enumerate(first))
    a.set_epoch(2)
    assert any(not torch.equal(x, a[i]["image"]) for i, x in enumerate(first))


def test_intensity_formulas_are_monais_per_channel_with_our_draws():
    from monai.transforms import AdjustContrast, ScaleIntensity, ShiftIntensity

    x = torch.randn(3, 6, 7, 5, generator=torch.Generator().manual_seed(2))
    policy = AugmentPolicy(spatial_dims=3, gamma=(0.7, 1.5), gamma_prob=1.0, intensity_scale=0.1,
                           intensity_shift=0.2, scale_shift_prob=1.0, noise_std=0.1, noise_prob=1.0)
    out = policy.intensity(x, rng=np.random.default_rng(11))
    rng = np.random.default_rng(11)  # replay: coin, gammas, coin, factors, offsets, coin, std, noise
    assert rng.random() < 1.0
    gammas = rng.uniform(0.7, 1.5, size=3)
    rng.random()
    factors, offsets = rng.uniform(-0.1, 0.1, size=3), rng.uniform(-0.2, 0.2, size=3)
    rng.random()
    std = rng.uniform(0.0, 0.1)
    noise = torch.as_tensor(rng.normal(0.0, std, size=x.shape), dtype=torch.float32)
    ref = []
    for c in range(3):
        y = torch.as_tensor(AdjustContrast(float(gammas[c]), retain_stats=True)(x[c]))
        y = torch.as_tensor(ScaleIntensity(minv=None, maxv=None, factor=float(factors[c]))(y))
        ref.append(torch.as_tensor(ShiftIntensity(float(offsets[c]))(y)))
    torch.testing.assert_close(out, torch.stack(ref) + noise, rtol=1e-5, atol=1e-5)


def test_intensity_never_touches_the_mask(tmp_path):
    root = _folder(tmp_path, spatial=3)
    plain = FolderDataset(root, split="train", augment=False, seed=1)
    only = FolderDataset(root, split="train", augment="intensity", seed=1)
    spatial = FolderDataset(root, split="train", augment="anatomy-spatial", seed=1)
    full = FolderDataset(root, split="train", augment="anatomy", seed=1)
    changed = 0
    for i in range(len(plain)):
        assert torch.equal(only[i]["mask"], plain[i]["mask"])  # no spatial change, intensity does not see it
        changed += not torch.equal(only[i]["image"], plain[i]["image"])
        s, f = spatial[i], full[i]
        assert torch.equal(s["mask"], f["mask"])  # the same spatial draws; intensity comes after
    assert changed >= 1
    assert any(not torch.equal(spatial[i]["image"], full[i]["image"]) for i in range(len(plain)))
    assert only.augment_policy.has_intensity and not only.augment_policy.has_spatial


# ---------------------------------------------------------------------------- declarations and errors


def test_named_policies_declare_their_axes():
    assert augment_policy("none", spatial_dims=3).is_identity
    lr = augment_policy("lr-flip-affine", spatial_dims=3)
    assert lr.rotations == ((1, 2, 10.0),) and lr.isotropic_scale and not lr.has_intensity
    ana = augment_policy("anatomy", spatial_dims=3)
    assert ana.rotations == ((1, 2, 15.0), (0, 1, 10.0), (0, 2, 10.0)) and not ana.isotropic_scale
    assert ana.has_intensity and ana.has_spatial and ana.voxel_rotation
    assert augment_policy("anatomy", spatial_dims=2).rotations == ((0, 1, 15.0),)
    assert augment_policy("anatomy-spatial", spatial_dims=3).has_intensity is False
    assert augment_policy("intensity", spatial_dims=3).has_spatial is False
    assert json.loads(json.dumps(ana.to_dict()))["rotations"][0] == [1, 2, 15.0]
    assert left_right_axis(3, "RAS") == 0 and left_right_axis(2, "unoriented") is None
    img, msk = _volume((1, 5, 6, 7))
    same = augment_policy("none", spatial_dims=3).spatial(img, msk, rng=np.random.default_rng(0))
    assert same[0] is img and same[1] is msk


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(flip_axes=(3,)), "flip axis 3 out of range"),
    (dict(rotations=((2, 1, 10.0),)), "rotation plane"),
    (dict(scale=1.5), "scale must be in"),
    (dict(affine_prob=2.0), "affine_prob"),
    (dict(gamma=(1.5, 0.7)), "gamma must be"),
    (dict(noise_std=-1.0), "noise_std"),
])
def test_policy_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugmentPolicy(spatial_dims=3, **kwargs)


def test_names_and_orientations_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown augmentation policy 'flips'; valid: none, lr-flip-affine"):
        augment_policy("flips", spatial_dims=2)
    with pytest.raises(ValueError, match="orientation 'RAS' is for 3-D images"):
        augment_policy("anatomy", spatial_dims=2, orientation="RAS")
    with pytest.raises(ValueError, match="is for 3-D images, the data is 2-D"):
        resolve_augment(augment_policy("anatomy", spatial_dims=3), spatial_dims=2)
    root = _folder(tmp_path, spatial=2, meta={"orientation": "LPS"})
    with pytest.raises(DataError, match="dataset.json.*orientation.*'LPS'"):
        FolderDataset(root, split="train", augment=True)
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        FolderDataset(_folder(tmp_path / "b", spatial=2), split="train", augment="sideways")


def test_dataset_orientation_decides_the_flips(tmp_path):
    sag = FolderDataset(_folder(tmp_path / "s", spatial=2, meta={"orientation": "radiological-sagittal"}),
                        split="train", augment="anatomy")
    assert sag.orientation == "radiological-sagittal" and sag.augment_policy.flip_axes == ()
    syn = FolderDataset(_folder(tmp_path / "v", spatial=3, meta={"axes": "RAS"}), split="train", augment=True)
    assert syn.orientation == "RAS" and syn.augment_policy.flip_axes == (0,)
    val = FolderDataset(_folder(tmp_path / "w", spatial=3), split="val", augment="anatomy")
    assert not val.augment and val.augment_policy.is_identity


def test_train_config_chooses_the_policy(tmp_path):
    from dualattn.train import TrainConfig, load_config
    from dualattn.train.datamodule import build_datasets

    assert TrainConfig().augment_policy == "lr-flip-affine"
    with pytest.raises(ValueError, match="augment_policy='flip' must be one of"):
        load_config(overrides=["augment_policy=flip"])
    root = _folder(tmp_path, spatial=3)
    ds = build_datasets(load_config(overrides=["augment_policy=anatomy"]), root=root)
    assert ds["train"].augment_policy.name == "anatomy" and ds["val"].augment_policy.name == "none"
    off = build_datasets(load_config(overrides=["augment_policy=anatomy", "augment=false"]), root=root)
    assert off["train"].augment_policy.is_identity
    assert set(AUGMENT_POLICIES) >= {"none", "lr-flip-affine", "anatomy"}


def test_transforms_examples_run():
    result = doctest.testmod(transforms, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _folder(root, *, spatial: int, meta: dict | None = None, n: int = 8):
    rng = np.random.default_rng(0)
    shape = (2, 10, 12, 8) if spatial == 3 else (2, 12, 10)
    with FolderWriter(root, class_names=["a", "b"], meta=meta or {}) as w:
        for i in range(n):
            img = rng.uniform(1, 5, shape).astype(np.float32)
            mask = np.zeros((1, *shape[1:]), np.uint8)
            if i % 2:
                mask[(0,) + tuple(slice(2, 5) for _ in shape[1:])] = 1
            w.add(f"x{i}", image=img, label=i % 2, mask=mask, patient=f"p{i}")
    return root
