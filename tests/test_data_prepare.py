"""prepare brats / prepare pet on files the tests write (nibabel, pydicom) and on real nibabel data."""

from __future__ import annotations

import csv
import json
import zlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dualattn.data import DataError, FolderDataset
from dualattn.data.brats import cut_at_tumor_edge, prepare_brats
from dualattn.data.pet import coronal_mip, histogram_equalize, parse_dicom_time, prepare_pet, suv_bw_factor

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.fixture(autouse=True)
def _secret_dir(tmp_path, monkeypatch):
    """prepare pet's per-user pseudonym key goes below tmp_path, not into the real ~/.config."""
    monkeypatch.setenv("DUALATTN_SECRET_DIR", str(tmp_path / "secret-dir"))

# ----------------------------------------------------------------------------- BraTS


def _brats_case(root: Path, case: str, *, shape=(40, 32, 6), skip: tuple[str, ...] = (), base: np.ndarray | None = None) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    folder = root / case
    folder.mkdir(parents=True)
    X, Y, Z = shape
    xx, yy = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    brain = ((xx - X / 2) ** 2 / (X / 2.2) ** 2 + (yy - Y / 2) ** 2 / (Y / 2.2) ** 2) < 1
    seg = np.zeros(shape, np.uint8)
    for z in (2, 3, 4):  # tumor on the low-x side, area grows with z
        r = 2 + z
        seg[:, :, z] = (((xx - 9) ** 2 + (yy - 16) ** 2) < r**2) * brain * (1 if z < 4 else 4)
    for mod in ("t1", "t1ce", "t2", "flair"):
        if mod in skip:
            continue
        vol = base if base is not None else (rng.uniform(50, 150, shape) * brain[..., None]).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{case}_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{case}_seg.nii.gz"))
    return seg


def test_cut_at_tumor_edge_hand_cases():
    assert cut_at_tumor_edge(np.array([10, 11, 12]), 40) == (slice(0, 13), slice(13, 40))
    assert cut_at_tumor_edge(np.array([25, 30]), 40) == (slice(25, 40), slice(0, 25))
    assert cut_at_tumor_edge(np.array([5, 35]), 40) is None  # tumor spans the slice
    assert cut_at_tumor_edge(np.array([2, 33]), 40, min_width=0.2) is None
    assert cut_at_tumor_edge(np.array([2, 33]), 40, min_width=0.1) == (slice(0, 34), slice(34, 40))


def test_prepare_brats_halves_masks_resume_and_bad_case(tmp_path, caplog):
    raw, out = tmp_path / "raw", tmp_path / "out"
    segs = {c: _brats_case(raw, c) for c in ("BraTS_001", "BraTS_002")}
    _brats_case(raw, "BraTS_003", skip=("flair",))
    report = prepare_brats(raw, out, min_area=20)
    assert report["cases_done"] == 2 and report["items"] == 2 * 2 * 3
    assert [b["case"] for b in report["bad_cases"]] == ["BraTS_003"] and "flair" in report["bad_cases"][0]["problem"]
    ds = FolderDataset(out, normalize="none")
    assert ds.in_channels == 4 and ds.class_counts() == [6, 6]
    assert set(ds.patients) == {"BraTS_001", "BraTS_002"}
    for i in range(len(ds)):
        item = ds[i]
        case, z = ds.ids[i].split("/")[1].rsplit("_z", 1)
        z = int(z[:3])
        tumor_px = int((segs[case][:, :, z] > 0).sum())
        if ds.labels[i] == 1:  # the whole tumor is in this half, mask == seg > 0
            assert int(item["mask"].sum()) == tumor_px
            assert item["image"].shape[-1] == 11 + z  # cut right after the tumor's last column 9 + r - 1, r = 2 + z
        else:
            assert int(item["mask"].sum()) == 0 and item["image"].shape[-1] == 40 - (11 + z)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    # resume: finished cases are not redone; fixing the bad case processes it alone
    _brats_case(tmp_path / "fix", "BraTS_003")
    (raw / "BraTS_003" / "BraTS_003_flair.nii.gz").write_bytes((tmp_path / "fix" / "BraTS_003" / "BraTS_003_flair.nii.gz").read_bytes())
    again = prepare_brats(raw, out, min_area=20)
    assert again["cases_skipped_resume"] == 2 and again["cases_done"] == 1 and not again["bad_cases"]
    assert again["items"] == 18
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert json.loads((out / "prepare_report.json").read_text())["items"] == 18


def test_prepare_brats_real_nibabel_volume_resized(tmp_path):
    base = np.asarray(nib.load(str(NIB_DATA / "anatomical.nii")).dataobj, dtype=np.float32)  # (33, 41, 25)
    raw = tmp_path / "raw"
    _brats_case(raw, "real", shape=base.shape, base=base)
    report = prepare_brats(raw, tmp_path / "out", min_area=10, size=16)
    ds = FolderDataset(tmp_path / "out", normalize="none")
    assert report["items"] == len(ds) > 0
    item = ds[0]
    assert item["image"].shape == (4, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert np.isfinite(item["image"].numpy()).all()
    # per-modality normalization: brain voxels of the volume have mean 0, std 1
    brain = base != 0
    z = (base - base[brain].mean()) / base[brain].std()
    assert abs(float(z[brain].mean())) < 1e-4


def test_prepare_brats_rejects_missing_raw(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare_brats(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BraTS case"):
        prepare_brats(tmp_path / "empty", tmp_path / "out")


# ----------------------------------------------------------------------------- PET

SECRETS = {
    "PatientName": "Doe^Janet",
    "PatientID": "PID98765",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC55555",
}


def _pet_series(folder: Path, vol: np.ndarray, *, slopes: np.ndarray, weight: float | None = 70.0, label_uid: str | None = None) -> list[str]:
    """Write a PT series (slices along +z, 3 mm apart); return every UID written."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    uids = [study, series, frame]
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        uids.append(meta.MediaStorageSOPInstanceUID)
        ds = pydicom.Dataset()
        ds.file_meta = meta
        for tag, v in SECRETS.items():
            setattr(ds, tag, v)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.Units, ds.DecayCorrection = "PT", "BQML", "START"
        if weight is not None:
            ds.PatientWeight = weight
        info = pydicom.Dataset()
        info.RadionuclideTotalDose = 370e6
        info.RadionuclideHalfLife = 6586.2
        info.RadiopharmaceuticalStartTime = "100000.00"
        ds.RadiopharmaceuticalInformationSequence = Sequence([info])
        ds.SeriesTime = "110000.00"
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 3.0 * k]
        ds.PixelSpacing = [2.0, 2.0]
        ds.InstanceNumber = k + 1
        ds.RescaleSlope, ds.RescaleIntercept = float(slopes[k]), 0.0
        ds.PixelData = np.round(vol[k] / slopes[k]).astype(np.uint16).tobytes()
        pydicom.dcmwrite(str(folder / f"{(5 * k) % vol.shape[0]:03d}.dcm"), ds, enforce_file_format=True)
    return uids


def test_parse_dicom_time_and_suv_factor_by_hand():
    assert parse_dicom_time("110000.50") == 39600.5
    assert parse_dicom_time("0930") == 9 * 3600 + 30 * 60
    assert parse_dicom_time("20240102103000") == 10 * 3600 + 30 * 60
    with pytest.raises(ValueError):
        parse_dicom_time("")
    ds = pydicom.Dataset()
    ds.PatientWeight = 70
    ds.Units = "BQML"  # a missing Units tag is refused (tests/test_data_pet.py)
    info = pydicom.Dataset()
    info.RadionuclideTotalDose, info.RadionuclideHalfLife, info.RadiopharmaceuticalStartTime = 370e6, 6586.2, "100000"
    ds.RadiopharmaceuticalInformationSequence = [info]
    ds.SeriesTime = "110000"
    assert suv_bw_factor(ds) == pytest.approx(70000 / (370e6 * 0.5 ** (3600 / 6586.2)), rel=1e-12)
    ds.SeriesTime = "000500"  # after midnight: 14 h 05 min later
    assert suv_bw_factor(ds) == pytest.approx(70000 / (370e6 * 0.5 ** ((14 * 3600 + 300) / 6586.2)), rel=1e-12)
    del ds.PatientWeight
    with pytest.raises(ValueError, match="PatientWeight"):
        suv_bw_factor(ds)


def test_coronal_mip_and_equalization_against_references():
    from skimage.exposure import equalize_hist

    vol = np.random.default_rng(0).gamma(2.0, size=(5, 6, 7)).astype(np.float32)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])[:, [2, 1, 0, 3]]  # axis0 -> +z (superior), axis1 -> -y, axis2 -> -x
    mip, spacing = coronal_mip(vol, affine)
    ref = np.array([[max(vol[d, r, c] for r in range(6)) for c in range(7)] for d in range(5)])[::-1]
    np.testing.assert_array_equal(mip, ref)
    assert spacing == (3.0, 2.0)
    img = np.random.default_rng(1).lognormal(size=(40, 30))
    np.testing.assert_allclose(histogram_equalize(img, bins=256), equalize_hist(img, nbins=256), atol=1e-6)


def test_prepare_pet_pipeline_privacy_resume_and_bad_rows(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    raw = tmp_path / "raw"
    D, R, C = 8, 12, 12
    vol = np.full((D, R, C), 1000.0)
    vol[6, 4, 2] = 50000.0  # hot spot: superior slice 6, patient-right column 2
    uids = []
    uids += _pet_series(raw / f"{SECRETS['PatientID']}_{SECRETS['PatientName']}", vol, slopes=np.linspace(0.5, 2.0, D))
    uids += _pet_series(raw / "second", vol[::-1].copy(), slopes=np.ones(D))
    uids += _pet_series(raw / "noweight", vol, slopes=np.ones(D), weight=None)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "series,label\n"
        f"{SECRETS['PatientID']}_{SECRETS['PatientName']},severe\n"
        "second,normal\n"
        "noweight,mild\n"
        "second,moderate\n"
        "missing_folder,mild\n"
    )
    report = prepare_pet(raw, labels, tmp_path / "out", size=24)
    assert report["items"] == 2 and report["new"] == 2
    problems = {b["row"]: b["problem"] for b in report["bad_series"]}
    assert set(problems) == {4, 5, 6} and "PatientWeight" in problems[4] and "moderate" in problems[5]
    ds = FolderDataset(tmp_path / "out", normalize="none")
    assert ds.class_names == ["normal", "mild", "severe"] and sorted(ds.labels) == [0, 2]
    first = ds[ds.labels.index(2)]["image"][0].numpy()
    assert first.shape == (24, 24) and 0 < first.min() and first.max() <= 1.0
    # the hot spot: slice 6 of 8 -> row 1 of the MIP -> rows 3-5 of 24; column 2 of 12 -> 4-6 of 24
    r, c = np.unravel_index(np.argmax(first), first.shape)
    assert 2 <= r <= 6 and 3 <= c <= 7
    # privacy: no identifier, UID or folder name in any output file or log line
    needles = [*SECRETS.values(), "Janet", *uids, f"{SECRETS['PatientID']}_{SECRETS['PatientName']}"]
    blobs = [p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for needle in needles:
        assert all(needle.encode() not in b for b in blobs), needle
        assert needle not in logs, needle
    again = prepare_pet(raw, labels, tmp_path / "out", size=24)
    assert again["new"] == 0 and again["resumed"] == 2 and again["items"] == 2


def test_prepare_brats_parallel_equals_serial(tmp_path):
    raw = tmp_path / "raw"
    for c in ("A", "B"):
        _brats_case(raw, c)
    serial = prepare_brats(raw, tmp_path / "s", min_area=20, size=16)
    parallel = prepare_brats(raw, tmp_path / "p", min_area=20, size=16, workers=2)
    assert serial["items"] == parallel["items"] == 12
    assert (tmp_path / "s" / "labels.csv").read_text() == (tmp_path / "p" / "labels.csv").read_text()
    for p in (tmp_path / "s" / "images").iterdir():
        np.testing.assert_array_equal(np.load(p), np.load(tmp_path / "p" / "images" / p.name))
