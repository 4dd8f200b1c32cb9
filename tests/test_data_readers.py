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
from dualattn.data.readers import read_dicom_series, write_nifti

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
    ref = np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0)  # time -> channels
    assert arr.shape == (2, 128, 96, 24)
    np.testing.assert_array_equal(arr, ref)
    np.testing.assert_allclose(geo.affine, img.affine)
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
    np.testing.assert_allclose(back.affine, affine)


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
    np.testing.assert_allclose(arr, ref)
    # RAS affine: LPS (x, y) flipped; slice step 2.5 mm along +z
    np.testing.assert_allclose(geo.affine[:3, 0], [0, 0, 2.5])
    np.testing.assert_allclose(geo.affine[:3, 1], [0, -0.5, 0])
    np.testing.assert_allclose(geo.affine[:3, 2], [-0.75, 0, 0])


def test_nrrd_scalar_and_vector(tmp_path):
    import nrrd

    scalar = np.random.default_rng(4).normal(size=(6, 7, 8)).astype(np.float32)
    nrrd.write(str(tmp_path / "s.nrrd"), scalar, {"space": "left-posterior-superior", "space directions": np.diag([1.0, 2.0, 3.0]), "space origin": [1.0, 2.0, 3.0]})
    arr, geo = read_volume(tmp_path / "s.nrrd")
    np.testing.assert_array_equal(arr[0], scalar)
    np.testing.assert_allclose(geo.affine[:3, :3], np.diag([-1.0, -2.0, 3.0]))
    np.testing.assert_allclose(geo.affine[:3, 3], [-1.0, -2.0, 3.0])
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
