"""Readers: every format against an independent decoder, real files shipped in nibabel, bad input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from dualattn.data import DataError, read_image, read_volume
from dualattn.data.readers import Geometry, from_radiological_view, radiological_view, read_dicom_series, write_nifti

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def _dicom(path: Path, pixels: np.ndarray, *, z: float = 0.0, instance: int = 1, slope: float = 1.0, intercept: float = 0.0, series_uid: str | None = None, extra: dict | None = None) -> Path:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.PixelSpacing = [0.5, 0.75]
    ds.InstanceNumber = instance
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- good files


@pytest.mark.parametrize(
    "mode,shape,channels",
    [("L", (7, 5), 1), ("RGB", (7, 5, 3), 3), ("RGBA", (7, 5, 4), 3), ("I;16", (7, 5), 1)],
)
def test_png_modes(tmp_path, mode, shape, channels):
    rng = np.random.default_rng(0)
    hi = 65535 if mode == "I;16" else 255
    arr = rng.integers(0, hi, size=shape).astype(np.uint16 if mode == "I;16" else np.uint8)
    path = tmp_path / "x.png"
    Image.fromarray(arr).save(path)  # mode inferred: L, RGB, RGBA, I;16
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (channels, 7, 5)
    ref = arr if arr.ndim == 2 else arr[..., :3]
    ref = ref[None] if ref.ndim == 2 else np.moveaxis(ref, -1, 0)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_jpg_and_npy(tmp_path):
    arr = (np.arange(64 * 48) % 251).reshape(64, 48).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.jpg", quality=95)
    ref = np.asarray(Image.open(tmp_path / "x.jpg"), dtype=np.float32)[None]
    np.testing.assert_array_equal(read_image(tmp_path / "x.jpg"), ref)
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.int16).reshape(3, 4))
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy"), np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    vol = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float64)
    np.save(tmp_path / "v.npy", vol)
    np.testing.assert_allclose(read_image(tmp_path / "v.npy"), vol.astype(np.float32))


def test_real_nifti_volumes_from_nibabel():
    arr, geo = read_volume(NIB_DATA / "example4d.nii.gz")
    img = nib.load(str(NIB_DATA / "example4d.nii.gz"))
    assert nib.aff2axcodes(img.affine) != ("R", "A", "S")  # the file is not canonical: the reader reorients
    canon = nib.as_closest_canonical(img)  # the independent reference
    ref = np.moveaxis(np.asarray(canon.dataobj, dtype=np.float32), -1, 0)  # time -> channels
    assert arr.shape == ref.shape == (2, 128, 96, 24)
    np.testing.assert_array_equal(arr, ref)
    np.testing.assert_allclose(geo.affine, canon.affine)
    assert geo.oriented and geo.slice_axis == 2  # 4 mm slices vs 2 mm in-plane
    np.testing.assert_array_equal(geo.to_source_grid(arr), np.moveaxis(np.asarray(img.dataobj, np.float32), -1, 0))
    arr, geo = read_volume(NIB_DATA / "anatomical.nii")
    assert arr.shape == (1, 33, 41, 25) and geo.spacing == (2.0, 2.0, 2.0)


def test_nifti_2d_and_roundtrip_writer(tmp_path):
    data = np.random.default_rng(2).normal(size=(9, 7, 1)).astype(np.float32)
    affine = np.diag([0.5, 0.6, 2.0, 1.0])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "s.nii.gz"))
    arr, geo = read_volume(tmp_path / "s.nii.gz")
    assert arr.shape == (1, 9, 7)
    np.testing.assert_array_equal(arr[0], data[..., 0])
    write_nifti(tmp_path / "back.nii.gz", arr[0], geometry=geo)
    back = nib.load(str(tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(np.asarray(back.dataobj)[..., 0], data[..., 0])
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)


def test_real_dicom_series_from_nibabel(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    # copy under names that sort opposite to slice position: order must come from the headers
    shutil.copy(NIB_DATA / "0.dcm", series / "b.dcm")
    shutil.copy(NIB_DATA / "1.dcm", series / "a.dcm")
    vol, geo, headers = read_dicom_series(series)
    ref0 = pydicom.dcmread(str(NIB_DATA / "0.dcm")).pixel_array.astype(np.float32)
    ref1 = pydicom.dcmread(str(NIB_DATA / "1.dcm")).pixel_array.astype(np.float32)
    assert vol.shape == (1, 2, 256, 256)
    np.testing.assert_array_equal(vol[0, 0], ref0)  # z = -75.1 comes first
    np.testing.assert_array_equal(vol[0, 1], ref1)
    assert geo.spacing[0] == pytest.approx(3.0)
    single = read_image(NIB_DATA / "0.dcm")
    np.testing.assert_array_equal(single[0], ref0)


def test_written_dicom_series_rescale_and_order(tmp_path):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 1000, size=(6, 5)) for _ in range(4)]
    folder = tmp_path / "s"
    folder.mkdir()
    for k, (z, px) in enumerate(zip((10.0, 12.5, 15.0, 17.5), slices)):
        _dicom(folder / f"{(7 * k) % 4}.dcm", px, z=z, instance=4 - k, slope=0.5 + k, intercept=-3.0, series_uid=uid)
    (folder / "notes.txt").write_text("not dicom")
    arr, geo = read_volume(folder)
    ref = np.stack([px * (0.5 + k) - 3.0 for k, px in enumerate(slices)])[None].astype(np.float32)
    stack, sgeo, headers = read_dicom_series(folder)  # the series' own layout: (1, slices, rows, cols)
    np.testing.assert_allclose(stack, ref)
    assert [int(h.InstanceNumber) for h in headers] == [4, 3, 2, 1]  # position order, not instance order
    # RAS affine: LPS (x, y) flipped; slice step 2.5 mm along +z
    np.testing.assert_allclose(sgeo.affine[:3, 0], [0, 0, 2.5])
    np.testing.assert_allclose(sgeo.affine[:3, 1], [0, -0.5, 0])
    np.testing.assert_allclose(sgeo.affine[:3, 2], [-0.75, 0, 0])
    # read_volume: canonical RAS (C, X, Y, Z): columns run to the patient's left, rows to posterior -> both flipped
    np.testing.assert_allclose(arr, ref.transpose(0, 3, 2, 1)[:, ::-1, ::-1, :])
    np.testing.assert_allclose(geo.affine[:3, :3], np.diag([0.75, 0.5, 2.5]))
    assert geo.spacing == (0.75, 0.5, 2.5) and geo.slice_axis == 2 and geo.oriented
    assert geo.extra["instance_numbers"] == [4, 3, 2, 1]
    # a DICOM image as stored is already in radiological display: the view of each axial slice gives it back
    for k in range(4):
        np.testing.assert_allclose(radiological_view(arr[0, :, :, k]), ref[0, k])


def test_nrrd_scalar_and_vector(tmp_path):
    import nrrd

    scalar = np.random.default_rng(4).normal(size=(6, 7, 8)).astype(np.float32)
    nrrd.write(str(tmp_path / "s.nrrd"), scalar, {"space": "left-posterior-superior", "space directions": np.diag([1.0, 2.0, 3.0]), "space origin": [1.0, 2.0, 3.0]})
    arr, geo = read_volume(tmp_path / "s.nrrd")
    np.testing.assert_array_equal(arr[0], scalar[::-1, ::-1, :])  # LPS -> RAS: x and y flipped
    np.testing.assert_allclose(geo.source_affine[:3, :3], np.diag([-1.0, -2.0, 3.0]))
    np.testing.assert_allclose(geo.source_affine[:3, 3], [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(geo.affine[:3, :3], np.diag([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(geo.affine[:3, 3], [-1.0 - 5 * 1.0, -2.0 - 6 * 2.0, 3.0])
    assert geo.slice_axis == 2
    vec = np.random.default_rng(5).normal(size=(3, 5, 4)).astype(np.float32)
    nrrd.write(str(tmp_path / "v.nrrd"), vec, {"kinds": ["vector", "domain", "domain"]})
    np.testing.assert_array_equal(read_image(tmp_path / "v.nrrd"), vec)


# ----------------------------------------------------------------------------- bad input


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def test_bad_files_raise_data_error_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(tmp_path / "t.png")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), np.eye(4)), str(tmp_path / "t.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.eye(4)), str(tmp_path / "t.nii"))
    _dicom(tmp_path / "t.dcm", np.ones((32, 32)))
    cases = {
        "t.png": "cannot decode",
        "t.nii.gz": "cannot read NIfTI",
        "t.nii": "cannot read NIfTI",
        "t.dcm": "DICOM",
    }
    for name, msg in cases.items():
        _truncate(tmp_path / name, 0.3)
        with pytest.raises(DataError, match=msg) as info:
            read_image(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="junk.dcm"):
        read_image(tmp_path / "junk.dcm")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan], [np.inf, 0.0]]))
    with pytest.raises(DataError, match=r"nan\.npy: 2 NaN/Inf"):
        read_image(tmp_path / "nan.npy")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(DataError, match="unknown image type"):
        read_image(tmp_path / "x.xyz")
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    assert issubclass(DataError, ValueError)


def test_dicom_folder_with_two_series_is_rejected(tmp_path):
    _dicom(tmp_path / "a.dcm", np.ones((4, 4)))
    _dicom(tmp_path / "b.dcm", np.ones((4, 4)))
    with pytest.raises(DataError, match="2 DICOM series"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------- orientation


def _tilted_series(folder: Path, n: int = 5, *, spacing: float = 3.0, tilt_deg: float = 20.0, rows: int = 6,
                   cols: int = 7, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """An axial series tilted about the LPS x axis, written in shuffled file order and instance numbers."""
    from pydicom.uid import generate_uid

    t = np.deg2rad(tilt_deg)
    row_cos, col_cos = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), np.sin(t)])
    normal = np.cross(row_cos, col_cos)
    uid = generate_uid()
    rng = np.random.default_rng(seed)
    slices = [rng.integers(0, 1000, size=(rows, cols)) for _ in range(n)]
    folder.mkdir(parents=True)
    order = rng.permutation(n)
    for j, k in enumerate(order):  # file j holds slice k; instance numbers scrambled too
        pos = np.array([-10.0, 20.0, 30.0]) + k * spacing * normal
        _dicom(folder / f"IM{j:03d}.dcm", slices[k], instance=int((k * 3) % n) + 1, series_uid=uid,
               extra={"ImageOrientationPatient": [*row_cos, *col_cos], "ImagePositionPatient": [float(v) for v in pos]})
    return slices, normal


def test_tilted_series_is_ordered_by_position_along_the_normal(tmp_path):
    slices, normal = _tilted_series(tmp_path / "s")
    stack, geo, headers = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(stack[0], np.stack(slices).astype(np.float32))
    along = [float(np.dot(normal, [float(v) for v in h.ImagePositionPatient])) for h in headers]
    assert along == sorted(along)
    assert geo.spacing == pytest.approx((3.0, 0.5, 0.75))  # slice spacing from the positions, not a tag
    # read_volume: the tilted axial stack stays the axial axis (Z) of the canonical array, position order kept
    arr, vgeo = read_volume(tmp_path / "s")
    assert arr.shape == (1, 7, 6, 5) and vgeo.slice_axis == 2
    for k in range(5):
        np.testing.assert_array_equal(radiological_view(arr[0, :, :, k]), slices[k])
        assert vgeo.source_index(2, k) == (0, k)
    np.testing.assert_array_equal(vgeo.to_source_grid(arr), stack)
    # every voxel's RAS position is the same through both affines
    ijk = np.array([2, 3, 4, 1.0])
    src = np.array([4, 6 - 1 - 3, 7 - 1 - 2, 1.0])  # canonical (x, y, z) -> series (slice, row, col)
    np.testing.assert_allclose(vgeo.affine @ ijk, vgeo.source_affine @ src, atol=1e-9)


def test_series_with_mixed_orientations_or_sizes_is_refused_naming_the_folder(tmp_path):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    mixed = tmp_path / "localizer_and_axial"
    mixed.mkdir()
    _dicom(mixed / "a.dcm", np.ones((4, 4)), z=0.0, series_uid=uid)
    _dicom(mixed / "b.dcm", np.ones((4, 4)), z=2.0, series_uid=uid)
    _dicom(mixed / "c.dcm", np.ones((4, 4)), series_uid=uid,
           extra={"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]})  # a sagittal localizer
    with pytest.raises(DataError, match="2 different orientations") as info:
        read_volume(mixed)
    assert str(mixed) in str(info.value)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    _dicom(sizes / "a.dcm", np.ones((4, 4)), z=0.0, series_uid=uid)
    _dicom(sizes / "b.dcm", np.ones((4, 5)), z=2.0, series_uid=uid)
    with pytest.raises(DataError, match="different sizes") as info:
        read_volume(sizes)
    assert str(sizes) in str(info.value)
    dup = tmp_path / "echoes"
    dup.mkdir()
    for k in range(3):
        _dicom(dup / f"{k}.dcm", np.ones((4, 4)), z=2.0 * (k // 2), series_uid=uid)
    with pytest.raises(DataError, match="share one position") as info:
        read_volume(dup)
    assert str(dup) in str(info.value)


@pytest.mark.parametrize("codes", ["LPS", "PSR", "ILA"])
def test_non_canonical_nifti_is_read_as_ras_and_written_back_on_its_own_grid(tmp_path, codes):
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    # a canonical volume with a 'lesion' at RAS voxel (x=5, y=2, z=1) (right, posterior, inferior part)
    canon = np.zeros((7, 5, 3), np.float32)
    canon[5, 2, 1] = 100.0
    canon[0, 0, 0] = 1.0  # the left-posterior-inferior corner
    canon_affine = np.diag([0.8, 1.1, 2.5, 1.0])
    canon_affine[:3, 3] = [-3.0, 4.0, 5.0]
    # store it on a grid with the axis codes `codes` (the same physical image)
    to_file = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes)))
    data = nib.orientations.apply_orientation(canon, to_file)
    affine = canon_affine @ inv_ornt_aff(to_file, canon.shape)
    assert nib.aff2axcodes(affine) == tuple(codes)
    path = tmp_path / f"{codes}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))

    arr, geo = read_volume(path)
    np.testing.assert_array_equal(arr[0], canon)  # lesion back at (5, 2, 1)
    np.testing.assert_allclose(geo.affine, canon_affine, atol=1e-5)  # the header stores float32
    assert geo.spacing == pytest.approx((0.8, 1.1, 2.5)) and geo.slice_axis == 2  # thick 2.5 mm slices
    np.testing.assert_allclose(geo.source_affine, affine)
    # a map computed on the canonical array goes back voxel-for-voxel onto the file's grid
    heat = arr[0] * 2.0
    write_nifti(tmp_path / "map.nii.gz", heat, geometry=geo)
    back = nib.load(str(tmp_path / "map.nii.gz"))
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(back.dataobj), data * 2.0)
    # the slice index along the slice axis maps to the file's own index
    src_axis, src_index = geo.source_index(2, 1)
    assert np.take(data, src_index, axis=src_axis).max() == 100.0


def test_nifti_slice_axis_rules(tmp_path):
    vol = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    iso = tmp_path / "iso.nii"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0])[[1, 2, 0, 3]]), str(iso))  # axes are (A, S, R)
    _, geo = read_volume(iso)
    assert geo.slice_axis == 2 and "superior-inferior" in geo.extra["slice_axis_from"]  # axial by default
    thick = tmp_path / "thick.nii"
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 5.0, 1.0, 1.0])), str(thick))  # 5 mm coronal slices
    _, geo = read_volume(thick)
    assert geo.slice_axis == 1 and "largest voxel spacing" in geo.extra["slice_axis_from"]
    hdr = tmp_path / "dim_info.nii"
    img = nib.Nifti1Image(vol, np.diag([1.0, 5.0, 1.0, 1.0]))
    img.header.set_dim_info(slice=0)  # the header names file axis 0 (sagittal) as the slice axis
    nib.save(img, str(hdr))
    _, geo = read_volume(hdr)
    assert geo.slice_axis == 0 and "dim_info" in geo.extra["slice_axis_from"]


def test_2d_nifti_with_permuted_affine_roundtrips(tmp_path):
    data = np.random.default_rng(1).random((5, 4, 1)).astype(np.float32)
    affine = np.array([[0, 0, 3.0, 0], [-1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]])  # file axes (P, S, R)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "s.nii"))
    arr, geo = read_volume(tmp_path / "s.nii")
    assert arr.shape == (1, 5, 4)  # the singleton (R) axis dropped; (A, S) remain: a sagittal image
    np.testing.assert_array_equal(arr[0], data[::-1, :, 0])  # P -> A: flipped
    write_nifti(tmp_path / "back.nii", arr[0], geometry=geo)
    back = nib.load(str(tmp_path / "back.nii"))
    np.testing.assert_array_equal(np.asarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        geo.to_source_grid(np.zeros((3, 3)))


def test_radiological_view_hand_case():
    axial = np.zeros((3, 2))  # (X: left -> right, Y: posterior -> anterior)
    axial[2, 1] = 1.0  # most right, most anterior -> top left in radiological display
    axial[0, 0] = 2.0  # most left, most posterior -> bottom right
    view = radiological_view(axial)
    assert view.shape == (2, 3) and view[0, 0] == 1.0 and view[1, 2] == 2.0
    np.testing.assert_array_equal(from_radiological_view(view), axial)
    g = Geometry(np.eye(4), "npy", (1.0, 1.0))
    assert g.to_source_grid(axial) is not None and g.source_index(0, 2) == (0, 2)
