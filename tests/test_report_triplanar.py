"""Tri-planar figure: planes through a known lesion, peaks mapped to the volume grid, rows = methods."""

from __future__ import annotations

import io

import numpy as np
import pytest

from dualattn.report.triplanar import (
    lesion_centroid,
    map_peak,
    peak_in_slice,
    triplanar_figure,
    triplanar_png,
    upsample_nearest,
)

SHAPE = (20, 24, 28)


def _case():
    rng = np.random.default_rng(0)
    vol = rng.random((4, *SHAPE))
    mask = np.zeros(SHAPE)
    mask[3:8, 10:15, 17:22] = 1  # a 5^3 cube centred on (5, 12, 19)
    return vol, mask


def _titles(fig) -> list[list[str]]:
    axes = [a for a in fig.axes if a.get_subplotspec() is not None]  # the panels, not the colour bar
    ncols = axes[0].get_subplotspec().get_gridspec().ncols
    return [[a.get_title() for a in axes[r : r + ncols]] for r in range(0, len(axes), ncols)]


def test_centroid_is_the_cube_centre_and_planes_go_through_it():
    vol, mask = _case()
    assert lesion_centroid(mask) == (5, 12, 19)
    assert lesion_centroid(mask[None]) == (5, 12, 19)
    hm = np.zeros((5, 6, 7))
    hm[1, 3, 4] = 1.0  # its cell's centre: voxels (1.5 * 4, 3.5 * 4, 4.5 * 4) = (6, 14, 18)
    fig = triplanar_figure(vol, {"a": hm, "b": upsample_nearest(hm, SHAPE)}, mask=mask)
    rows = _titles(fig)
    assert len(rows) == 4  # per map: the planes through the lesion, then through the map's peak
    for row in rows[::2]:  # planes numbered from 1: voxel i=5 is sagittal plane 6 of 20
        assert row == ["sagittal 6/20", "coronal 13/24", "axial 20/28"]
    assert rows[1] == ["sagittal 7/20 (peak)", "coronal 15/24 (peak)", "axial 19/28 (peak)"]
    # on the volume's grid the upsampled block's voxels tie: the one nearest the block's centre (5.5, 13.5, 17.5)
    assert rows[3] == ["sagittal 6/20 (peak)", "coronal 14/24 (peak)", "axial 18/28 (peak)"]
    panels = [a for a in fig.axes if a.get_subplotspec() is not None]
    assert [a.get_ylabel() for a in panels[::3]] == ["a", "a\n(its peak)", "b", "b\n(its peak)"]


def test_every_panel_holds_a_plane_and_a_flat_map_is_one_colour():
    """No blank panels or half-rows; a uniform map shows 1.0 x uniform everywhere (one colour), a peaked one
    shows its ratio to uniform, on one fixed scale."""
    vol, mask = _case()
    flat = np.full((5, 6, 7), 1 / 210)
    peaked = np.full((5, 6, 7), 0.5 / 209)
    peaked[1, 3, 4] = 0.5
    fig = triplanar_figure(vol, {"flat": flat, "peaked": peaked}, mask=mask)
    panels = [a for a in fig.axes if a.get_images()]
    assert len(panels) == 3 * 3  # flat: one row (a constant map has no peak row); peaked: two rows
    for ax in panels:
        assert ax.axison and len(ax.get_images()) == 2
    for ax in panels[:3]:
        np.testing.assert_allclose(np.asarray(ax.get_images()[1].get_array()), 1.0)
    norms = {(ax.get_images()[1].norm.vmin, ax.get_images()[1].norm.vmax) for ax in panels}
    assert norms == {(1 / 8, 32.0)}  # the same fixed scale on every panel
    peak_panel = np.asarray(panels[6].get_images()[1].get_array())  # peaked, through its peak, sagittal
    assert peak_panel.max() == pytest.approx(min(0.5 * 210, 32.0))


def test_flat_and_tied_maps_peak_at_their_centre_not_a_corner():
    assert map_peak(np.ones((3, 3, 3)), (9, 9, 9)) == (4, 4, 4)
    hm = np.zeros((6, 6, 6))
    hm[1:3, 2:4, 4:6] = 1.0  # a block of tied cells: the one nearest its centre of mass, first in C order
    assert map_peak(hm, (6, 6, 6)) == (1, 2, 4)
    vol_map = np.zeros((8, 10, 12))
    vol_map[2:4, 3, 5] = 1.0  # in slice k=5 two tied voxels; elsewhere all zero
    assert peak_in_slice(vol_map, axis=2, index=5) == (2, 3, 5)
    assert peak_in_slice(vol_map, axis=2, index=0) == (3, 4, 0)  # an empty slice: its centre
    with pytest.raises(ValueError, match="outside"):
        peak_in_slice(vol_map, axis=2, index=12)


def test_peak_at_the_centroid_gives_three_columns_and_png_decodes():
    from PIL import Image

    vol, mask = _case()
    hm = np.zeros(SHAPE)
    hm[5, 12, 19] = 1.0
    fig = triplanar_figure(vol, {"m1": hm, "m2": hm, "m3": hm}, mask=mask)
    assert [len(r) for r in _titles(fig)] == [3, 3, 3]
    png = triplanar_png(vol, {"m1": hm, "m2": hm, "m3": hm}, mask=mask)
    with Image.open(io.BytesIO(png)) as im:
        im.load()
        w, h = im.size
    assert im.format == "PNG" and h > w / 3 * 2  # three rows of three square-ish panels


def test_map_peak_hand_computed_and_point_override():
    hm = np.zeros((2, 2, 2))
    hm[1, 0, 1] = 3.0
    assert map_peak(hm, (8, 8, 8)) == (6, 2, 6)
    assert map_peak(hm, (2, 2, 2)) == (1, 0, 1)
    assert map_peak(hm, (3, 5, 7)) == (2, 1, 5)  # floor((a + 0.5) * S / n)
    vol, mask = _case()
    fig = triplanar_figure(vol[0], {"x": hm}, mask=mask, point=(0, 0, 0), show_peaks=False)
    assert _titles(fig) == [["sagittal 1/20", "coronal 1/24", "axial 1/28"]]


def test_radiological_orientation_of_the_planes():
    """A bright voxel on the patient's right (high i), anterior (high j), superior (high k) shows up
    left (right -> image left), top (superior / anterior up) on the planes."""
    from dualattn.report.triplanar import _plane

    vol = np.zeros((10, 10, 10))
    vol[8, 8, 8] = 1.0
    for axis in range(3):
        plane = _plane(vol, axis, 8)
        r, c = np.argwhere(plane == 1.0)[0]
        assert r == 1 and c == 1, (axis, r, c)  # top-left corner region


def test_argument_checks():
    vol, mask = _case()
    with pytest.raises(ValueError, match="empty"):
        lesion_centroid(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="heatmaps"):
        triplanar_png(vol, {})
    with pytest.raises(ValueError, match="mask shape"):
        triplanar_png(vol, {"a": np.ones((2, 2, 2))}, mask=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="point"):
        triplanar_png(vol, {"a": np.ones((2, 2, 2))}, point=(20, 0, 0))
    with pytest.raises(ValueError, match="volume"):
        triplanar_png(np.ones((4, 4)), {"a": np.ones((2, 2, 2))})
    with pytest.raises(ValueError, match="NaN"):
        map_peak(np.full((2, 2, 2), np.nan), (4, 4, 4))


def test_example_pngs_for_the_report():
    from dualattn.report.triplanar import example_pngs, is_volume_example

    vol, mask = _case()
    maps = {f"m{k}": np.random.default_rng(k).random((5, 6, 7)) for k in range(5)}
    ex3 = {"image": vol, "mask": mask[None], "maps": maps, "id": "v1", "label": 1, "pred": 0}
    assert is_volume_example(ex3) and not is_volume_example({"image": vol[:, 0]})
    pngs = example_pngs([ex3, {**ex3, "mask": np.zeros((1, *SHAPE)), "id": "v2"}], max_rows=2)
    assert len(pngs) == 6  # 5 methods in chunks of 2, per example
    assert pngs[0][0] == "v1, y=1, ŷ=0: planes through the lesion centroid (i, j, k) = (5, 12, 19)"
    assert "no lesion mask" in pngs[3][0] and all(p[:4] == b"\x89PNG" for _, p in pngs)
    with pytest.raises(ValueError, match="not a 3-D"):
        example_pngs([{"image": vol[:, 0], "maps": maps}])


def test_reorient_to_ras_matches_nibabel_canonical():
    import nibabel as nib

    from dualattn.report.triplanar import reorient_to_ras

    rng = np.random.default_rng(1)
    data = rng.random((5, 6, 7))
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [-1.0, 0.0, 0.0, 5.0], [0.0, 3.0, 0.0, -4.0], [0, 0, 0, 1.0]])
    ref = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(data, affine)).dataobj)
    np.testing.assert_array_equal(reorient_to_ras(data, affine), ref)
    np.testing.assert_array_equal(reorient_to_ras(np.stack([data, 2 * data]), affine)[1], 2 * ref)
    with pytest.raises(ValueError, match="4 x 4"):
        reorient_to_ras(data, np.eye(3))
