"""Bad input, property-based: every reader, FolderDataset and the preparers get corrupt, truncated,
empty, huge-header, wrong-dtype, NaN/Inf and mismatched-size files.

The property, for each generated file: within a time limit, the reader either raises
:class:`dualattn.data.DataError` (a ``ValueError``) whose message names the file, or returns a
channels-first float32 array with only finite values; a *truncated* file may only be read when the
bytes cut were not needed (then the array equals the original). Anything else — another exception
type, a hang, a MemoryError, NaN in the output — fails.

Every case is counted in ``CASES`` (by format and outcome); the last test prints the table.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _reliability_helpers import TimeLimitExceeded, dicom_series, dicom_slice, time_limit

CASES: collections.Counter = collections.Counter()
SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
TIME_LIMIT_S = 20.0


# --------------------------------------------------------------------------- valid files, one per format


def _image(shape=(12, 10), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 200 + 20).astype(np.uint8)


def _volume(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 100).astype(np.float32)


def _write_png(p: Path) -> None:
    from PIL import Image

    Image.fromarray(_image()).save(p)


def _write_jpg(p: Path) -> None:
    from PIL import Image

    Image.fromarray(_image()).save(p, quality=90)


def _write_npy(p: Path) -> None:
    np.save(p, _volume())


def _write_nii(p: Path) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(p))


def _write_nrrd(p: Path, encoding: str) -> None:
    import nrrd

    nrrd.write(str(p), _volume(), header={"encoding": encoding})


def _write_dcm(p: Path) -> None:
    dicom_slice(p, _image().astype(np.uint16) * 10)


WRITERS = {
    "png": ("a.png", _write_png),
    "jpg": ("a.jpg", _write_jpg),
    "npy": ("a.npy", _write_npy),
    "nii": ("a.nii", _write_nii),
    "nii.gz": ("a.nii.gz", _write_nii),
    "nrrd-raw": ("a.nrrd", lambda p: _write_nrrd(p, "raw")),
    "nrrd-gzip": ("a.nrrd", lambda p: _write_nrrd(p, "gzip")),
    "dcm": ("a.dcm", _write_dcm),
}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, tuple[str, bytes, np.ndarray]]:
    """format -> (file name, bytes, the array read_volume gives for the intact file)."""
    from dualattn.data import read_volume

    root = tmp_path_factory.mktemp("valid")
    out = {}
    for fmt, (name, write) in WRITERS.items():
        d = root / fmt
        d.mkdir()
        write(d / name)
        out[fmt] = (name, (d / name).read_bytes(), read_volume(d / name)[0])
    return out


class _Files:
    """Unique file paths per example (hypothesis reuses the test's fixtures)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def new(self, name: str, data: bytes) -> Path:
        self.n += 1
        d = self.root / f"case{self.n:05d}"
        d.mkdir()
        p = d / name
        p.write_bytes(data)
        return p


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> _Files:
    return _Files(tmp_path_factory.mktemp("bad"))


def _read_checked(path: Path, *, kind: str, fmt: str, expect: np.ndarray | None = None) -> str:
    """Apply the property to one file; return and count the outcome."""
    from dualattn.data import DataError, read_volume

    try:
        with time_limit(TIME_LIMIT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, _geo = read_volume(path)
    except TimeLimitExceeded:
        CASES[(fmt, kind, "HANG")] += 1
        raise AssertionError(f"{path}: reader ran past {TIME_LIMIT_S} s")
    except DataError as exc:
        assert str(path) in str(exc) or path.name in str(exc), f"error does not name the file: {exc}"
        CASES[(fmt, kind, "DataError")] += 1
        return "error"
    except ValueError as exc:  # allowed by the contract, but must name the file too
        assert str(path) in str(exc), f"{type(exc).__name__} does not name the file: {exc}"
        CASES[(fmt, kind, "ValueError")] += 1
        return "error"
    # a result: must be a sane array
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32, (path, type(arr), getattr(arr, "dtype", None))
    assert arr.ndim in (3, 4) and arr.size > 0, (path, arr.shape)
    assert np.isfinite(arr).all(), f"{path}: non-finite values returned silently"
    if expect is not None:
        np.testing.assert_array_equal(arr, expect, err_msg=f"{path}: a truncated file gave a different array")
    CASES[(fmt, kind, "read")] += 1
    return "read"


# --------------------------------------------------------------------------- readers: byte-level mutations

FORMATS = st.sampled_from(sorted(WRITERS))


@SETTINGS
@given(fmt=FORMATS, frac=st.floats(0.0, 0.999))
def test_truncated_files(valid, files, fmt, frac):
    name, good, ref = valid[fmt]
    cut = good[: int(len(good) * frac)]
    _read_checked(files.new(name, cut), kind="truncated", fmt=fmt, expect=ref)


@SETTINGS
@given(fmt=FORMATS, data=st.data())
def test_corrupted_bytes(valid, files, fmt, data):
    name, good, _ = valid[fmt]
    buf = bytearray(good)
    n = data.draw(st.integers(1, 8), label="flips")
    # bias half the flips into the first 512 bytes: the headers
    for _ in range(n):
        hi = min(len(buf), 512) if data.draw(st.booleans(), label="header") else len(buf)
        pos = data.draw(st.integers(0, hi - 1), label="pos")
        buf[pos] = data.draw(st.integers(0, 255), label="byte")
    _read_checked(files.new(name, bytes(buf)), kind="corrupted", fmt=fmt)


@SETTINGS
@given(fmt=FORMATS, junk=st.binary(min_size=0, max_size=300), where=st.sampled_from(["replace", "prefix", "suffix"]))
def test_garbage_and_empty_files(valid, files, fmt, junk, where):
    name, good, _ = valid[fmt]
    data = {"replace": junk, "prefix": junk + good, "suffix": good + junk}[where]
    _read_checked(files.new(name, data), kind=f"garbage-{where}", fmt=fmt)


# --------------------------------------------------------------------------- huge headers, wrong dtypes, NaN/Inf


def _png_with_size(w: int, h: int) -> bytes:
    def chunk(t: bytes, b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _npy_with_shape(shape: tuple[int, ...], dtype: str = "<f4", body: bytes = b"\x00" * 64) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def _nii_with_dims(good: bytes, dims: tuple[int, ...]) -> bytes:
    b = bytearray(good)
    full = (len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<8h", b, 40, *full)
    return bytes(b)


def _nrrd_with_sizes(good: bytes, sizes: str) -> bytes:
    head, sep, body = good.partition(b"\n\n")
    lines = [ln if not ln.startswith(b"sizes:") else b"sizes: " + sizes.encode() for ln in head.split(b"\n")]
    return b"\n".join(lines) + sep + body


DIM = st.integers(1, 2**15 - 1)


@SETTINGS
@given(
    case=st.one_of(
        st.tuples(st.just("png"), st.tuples(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))),
        st.tuples(st.just("npy"), st.lists(st.integers(0, 10**7), min_size=0, max_size=5).map(tuple)),
        st.tuples(st.just("nii"), st.lists(DIM, min_size=1, max_size=7).map(tuple)),
        st.tuples(st.just("nrrd-raw"), st.lists(st.integers(1, 10**6), min_size=3, max_size=3)),
    )
)
def test_huge_or_lying_headers(valid, files, case):
    """Headers that promise far more (or other) data than the file holds: an error, never a
    multi-GiB allocation, a MemoryError or a hang."""
    fmt, dims = case
    name, good, _ = valid[fmt]
    if fmt == "png":
        data = _png_with_size(*dims)
    elif fmt == "npy":
        data = _npy_with_shape(dims)
    elif fmt == "nii":
        data = _nii_with_dims(good, dims)
    else:
        data = _nrrd_with_sizes(good, " ".join(map(str, dims)))
    _read_checked(files.new(name, data), kind="huge-header", fmt=fmt)


NUMERIC = st.sampled_from(["<f2", "<f4", ">f8", "<i2", "<u1", "|b1", "<i8"])
ODD = st.sampled_from(["<c8", "<c16", "<U4", "|S3", "|V8", "<M8[s]", "<m8[s]"])


@SETTINGS
@given(dtype=st.one_of(NUMERIC, ODD), shape=st.sampled_from([(), (5,), (0, 4), (3, 4), (2, 3, 4), (1, 2, 3, 4), (1, 1, 2, 2, 2)]))
def test_npy_dtypes_and_shapes(files, dtype, shape):
    arr = np.ones(shape, dtype=np.dtype(dtype)) if np.dtype(dtype).kind not in "USV" else np.zeros(shape, dtype=dtype)
    buf = io.BytesIO()
    np.save(buf, arr)
    p = files.new("x.npy", buf.getvalue())
    outcome = _read_checked(p, kind="dtype/shape", fmt="npy")
    ok_kind = np.dtype(dtype).kind in "biuf"
    ok_shape = len(shape) in (2, 3, 4) and 0 not in shape
    assert (outcome == "read") == (ok_kind and ok_shape), (dtype, shape, outcome)


@SETTINGS
@given(
    fmt=st.sampled_from(["npy", "nii", "nii.gz", "nrrd-raw", "nrrd-gzip"]),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
    index=st.tuples(st.integers(0, 5), st.integers(0, 4), st.integers(0, 3)),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_nan_inf_voxels_are_refused(files, fmt, value, index, dtype):
    import nibabel as nib
    import nrrd

    vol = _volume().astype(dtype)
    vol[index] = value
    name = WRITERS[fmt][0]
    p = files.new(name, b"")
    if fmt == "npy":
        np.save(p, vol)
    elif fmt.startswith("nii"):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(p))
    else:
        nrrd.write(str(p), vol, header={"encoding": fmt.split("-")[1]})
    assert _read_checked(p, kind="nan/inf", fmt=fmt) == "error"


def test_nifti_complex_and_rgb_are_refused_not_cast(files):
    """A complex NIfTI cast to float32 would silently drop the imaginary part."""
    import nibabel as nib

    vol = _volume()
    p = files.new("c.nii", b"")
    nib.save(nib.Nifti1Image((vol + 1j * vol).astype(np.complex64), np.eye(4)), str(p))
    assert _read_checked(p, kind="dtype", fmt="nii") == "error"


def test_huge_image_headers_specific(files, valid):
    """Hand-picked instances of the property above (each failed before the reader fixes)."""
    # 20000 x 20000 PNG (PIL's DecompressionBombError escaped as a non-ValueError)
    assert _read_checked(files.new("bomb.png", _png_with_size(20000, 20000)), kind="huge-header", fmt="png") == "error"
    # NPY promising 10^10 floats in 64 bytes (MemoryError: numpy allocated before reading)
    assert _read_checked(files.new("h.npy", _npy_with_shape((100000, 100000))), kind="huge-header", fmt="npy") == "error"
    # NIfTI promising 30000^3 voxels
    nii = _nii_with_dims(valid["nii"][1], (30000, 30000, 30000))
    assert _read_checked(files.new("h.nii", nii), kind="huge-header", fmt="nii") == "error"


# --------------------------------------------------------------------------- DICOM series folders


@SETTINGS
@given(
    problem=st.sampled_from(["other-size", "corrupt-slice", "two-series", "junk-file", "no-pixels", "empty"]),
    which=st.integers(0, 3),
)
def test_dicom_series_problems(files, problem, which):
    from dualattn.data import DataError, read_volume

    files.n += 1
    folder = files.root / f"series{files.n:05d}"
    vol = (np.random.default_rng(which).random((4, 8, 6)) * 1000).astype(np.uint16)
    if problem != "empty":
        dicom_series(folder, vol)
    else:
        folder.mkdir()
    names = sorted(p.name for p in folder.iterdir())
    target = folder / names[which] if names else None
    if problem == "other-size":
        dicom_slice(target, vol[0, :7, :6], position=(0, 0, 2.0 * which), instance=which + 1)
    elif problem == "corrupt-slice":
        target.write_bytes(target.read_bytes()[:-17])
    elif problem == "two-series":
        from pydicom import dcmread

        ds = dcmread(str(target))
        ds.SeriesInstanceUID = "1.2.3.4.5"
        ds.save_as(str(target))
    elif problem == "junk-file":
        (folder / "notes.txt").write_text("not dicom")
        (folder / "DICOMDIR.bak").write_bytes(b"\x00" * 10)
    elif problem == "no-pixels":
        for n in names:
            from pydicom import dcmread

            ds = dcmread(str(folder / n))
            del ds.PixelData
            ds.save_as(str(folder / n))
    outcome = _read_checked(folder, kind=f"series-{problem}", fmt="dicom-series")
    if problem == "junk-file":
        assert outcome == "read"  # non-DICOM files beside the slices are skipped
        arr, _ = read_volume(folder)
        assert arr.shape == (1, 6, 8, 4)  # canonical (C, X, Y, Z): cols, rows, slices
    else:
        assert outcome == "error", problem
        with pytest.raises(DataError) as info:
            read_volume(folder)
        culprit = str(info.value)
        assert str(folder) in culprit


# --------------------------------------------------------------------------- FolderDataset


def _folder(root: Path, rows: list[dict[str, str]] | None = None, *, csv_text: str | bytes | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    if csv_text is None:
        cols = ["image", "label", "mask"]
        lines = [",".join(cols)] + [",".join(r.get(c, "") for c in cols) for r in (rows or [])]
        csv_text = "\n".join(lines) + "\n"
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    (root / "labels.csv").write_bytes(data)
    return root


def _npy(path: Path, arr: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return str(path.relative_to(path.parents[1]))


FOLDER_PROBLEMS = [
    "missing-image", "missing-mask", "unknown-label", "negative-label", "wrong-channels", "mask-size",
    "mask-not-binary", "nan-voxels", "inf-voxels", "corrupt-image", "wrong-spatial-dims",
]  # fmt: skip


@pytest.mark.parametrize("problem", FOLDER_PROBLEMS)
def test_folder_dataset_problems_name_the_file(tmp_path, problem):
    from dualattn.data import DataError, FolderDataset

    root = tmp_path / "ds"
    good = np.random.default_rng(0).random((1, 8, 8)).astype(np.float32)
    rows = []
    for i in range(4):
        img = _npy(root / "images" / f"i{i}.npy", good)
        rows.append({"image": img, "label": str(i % 2), "mask": _npy(root / "masks" / f"m{i}.npy", (good > 0.5).astype(np.uint8))})
    bad = root / "images" / "i2.npy"
    culprit = root / "labels.csv"
    if problem == "missing-image":
        bad.unlink()
    elif problem == "missing-mask":
        (root / "masks" / "m2.npy").unlink()
    elif problem == "unknown-label":
        rows[2]["label"] = "7x"
    elif problem == "negative-label":
        for r in rows:
            r["label"] = "-1"
    elif problem == "wrong-channels":
        np.save(bad, np.concatenate([good, good]))
        culprit = bad
    elif problem == "mask-size":
        np.save(root / "masks" / "m2.npy", np.ones((1, 7, 8), np.uint8))
        culprit = root / "masks" / "m2.npy"
    elif problem == "mask-not-binary":
        np.save(root / "masks" / "m2.npy", np.arange(64, dtype=np.uint8).reshape(1, 8, 8))
        culprit = root / "masks" / "m2.npy"
    elif problem in ("nan-voxels", "inf-voxels"):
        arr = good.copy()
        arr[0, 3, 3] = np.nan if problem == "nan-voxels" else np.inf
        np.save(bad, arr)
        culprit = bad
    elif problem == "corrupt-image":
        bad.write_bytes(bad.read_bytes()[:40])
        culprit = bad
    elif problem == "wrong-spatial-dims":
        np.save(bad, np.ones((1, 2, 8, 8), np.float32))
        culprit = bad
    _folder(root, rows)
    (root / "dataset.json").write_text(json.dumps({"class_names": ["no", "yes"]}))  # makes "7x" unknown
    with time_limit(TIME_LIMIT_S):
        with pytest.raises(DataError) as info:
            ds = FolderDataset(root, in_channels=1)
            for i in range(len(ds)):
                ds[i]
    assert str(culprit) in str(info.value), (problem, str(info.value))
    CASES[("folder", problem, "DataError")] += 1


@SETTINGS
@given(text=st.one_of(st.binary(max_size=200), st.text(max_size=200), st.just(""), st.just("image,label\n"),
                      st.just("\ufeff"), st.just("a,b,c\n1,2,3\n"), st.just("image,label\n,\n,\n")))
def test_garbage_labels_csv(files, text):
    from dualattn.data import DataError, FolderDataset

    files.n += 1
    root = _folder(files.root / f"ds{files.n:05d}", csv_text=text)
    try:
        with time_limit(TIME_LIMIT_S):
            ds = FolderDataset(root)
            for i in range(len(ds)):
                ds[i]
    except DataError as exc:
        assert str(root) in str(exc), str(exc)
        CASES[("labels.csv", "garbage", "DataError")] += 1
        return
    raise AssertionError(f"garbage labels.csv {text!r} was accepted")


# --------------------------------------------------------------------------- preparers


def _pet_raw(root: Path, n: int, *, size: int = 8) -> tuple[Path, Path]:
    raw = root / "raw"
    rng = np.random.default_rng(0)
    rows = ["series,label"]
    for i in range(n):
        dicom_series(raw / f"s{i}", (rng.random((6, size, size)) * 3000).astype(np.uint16), pet=True)
        rows.append(f"s{i},{['normal', 'mild', 'severe'][i % 3]}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return raw, labels


PET_BREAKS = ["truncated-slice", "not-pet", "counts-units", "nan-slope", "mixed-sizes", "empty-folder", "garbage-files"]


def _break_series(folder: Path, how: str) -> None:
    from pydicom import dcmread

    files_ = sorted(folder.iterdir())
    if how == "truncated-slice":
        files_[1].write_bytes(files_[1].read_bytes()[:-40])
    elif how in ("not-pet", "counts-units", "nan-slope"):
        for f in files_:
            ds = dcmread(str(f))
            if how == "not-pet":
                ds.Modality = "CT"
            elif how == "counts-units":
                ds.Units = "CNTS"  # raw counts: no SUV can be computed
            else:
                ds.RescaleSlope = "NaN"
            ds.save_as(str(f))
    elif how == "mixed-sizes":
        dicom_slice(files_[2], np.ones((5, 8), np.uint16), position=(0, 0, 4.0), instance=3, pet=True)
    elif how == "empty-folder":
        for f in files_:
            f.unlink()
    elif how == "garbage-files":
        for f in files_:
            f.write_bytes(b"\x00garbage" * 10)


@pytest.mark.parametrize("how", PET_BREAKS)
def test_prepare_pet_skips_and_reports_bad_series(tmp_path, how):
    pet = pytest.importorskip("dualattn.data.pet")
    raw, labels = _pet_raw(tmp_path, 3)
    _break_series(raw / "s1", how)
    out = tmp_path / "out"
    with time_limit(60):
        report = pet.prepare_pet(raw, labels, out, size=16)
    assert report["items"] == 2, report
    assert len(report["bad_series"]) == 1, report
    bad = report["bad_series"][0]
    assert bad.get("row") in (3, "3") or "s1" in json.dumps(bad), bad  # the row (line 3 of LABELS.csv)
    from dualattn.data import FolderDataset

    ds = FolderDataset(out)
    assert len(ds) == 2 and all(np.isfinite(ds[i]["image"].numpy()).all() for i in range(2))
    CASES[("prepare-pet", how, "skipped")] += 1


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(series=st.integers(0, 2), slice_=st.integers(0, 5), data=st.data())
def test_prepare_pet_survives_random_corruption(tmp_path_factory, series, slice_, data):
    """Random bytes of one slice of one series overwritten: the job finishes, every series is either
    written (finite image) or reported bad; none is lost, none crashes the job."""
    pet = pytest.importorskip("dualattn.data.pet")
    from dualattn.data import FolderDataset

    root = tmp_path_factory.mktemp("petfuzz")
    raw, labels = _pet_raw(root, 3)
    target = sorted((raw / f"s{series}").iterdir())[slice_]
    buf = bytearray(target.read_bytes())
    for _ in range(data.draw(st.integers(1, 6), label="flips")):
        pos = int(data.draw(st.floats(0.0, 0.999), label="pos") * len(buf))  # file lengths vary (random UIDs)
        buf[pos] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.sampled_from([None, 0.5, 0.9]), label="truncate")
    target.write_bytes(bytes(buf) if cut is None else bytes(buf[: int(len(buf) * cut)]))
    with time_limit(60):
        report = pet.prepare_pet(raw, labels, root / "out", size=16)
    assert report["items"] + len(report["bad_series"]) == 3, report
    if report["items"]:
        ds = FolderDataset(root / "out")
        assert len(ds) == report["items"]
        assert all(np.isfinite(ds[i]["image"].numpy()).all() for i in range(len(ds)))
    CASES[("prepare-pet", "random-bytes", "bad" if report["bad_series"] else "read")] += 1


def _brats_case(root: Path, name: str, *, shape=(16, 16, 6), seed=0) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    case = root / name
    case.mkdir(parents=True)
    seg = np.zeros(shape, np.int16)
    seg[2:7, 3:9, :] = 1
    for mod in ("t1", "t1ce", "t2", "flair"):
        vol = rng.random(shape).astype(np.float32) * 100
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(case / f"{name}_{mod}.nii.gz"))
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(case / f"{name}_seg.nii.gz"))
    return case


BRATS_BREAKS = ["truncated-modality", "missing-modality", "mismatched-size", "nan-voxels", "garbage-seg"]


@pytest.mark.parametrize("how", BRATS_BREAKS)
def test_prepare_brats_skips_and_reports_bad_cases(tmp_path, how):
    brats = pytest.importorskip("dualattn.data.brats")
    import nibabel as nib

    raw = tmp_path / "raw"
    for i in range(3):
        _brats_case(raw, f"BraTS_{i:03d}", seed=i)
    case = raw / "BraTS_001"
    flair = case / "BraTS_001_flair.nii.gz"
    if how == "truncated-modality":
        flair.write_bytes(flair.read_bytes()[:100])
    elif how == "missing-modality":
        (case / "BraTS_001_t2.nii.gz").unlink()
    elif how == "mismatched-size":
        nib.save(nib.Nifti1Image(np.ones((16, 15, 6), np.float32), np.eye(4)), str(flair))
    elif how == "nan-voxels":
        vol = np.ones((16, 16, 6), np.float32)
        vol[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(flair))
    elif how == "garbage-seg":
        (case / "BraTS_001_seg.nii.gz").write_bytes(b"\x1f\x8b garbage")
    out = tmp_path / "out"
    with time_limit(60):
        report = brats.prepare_brats(raw, out, min_area=4, size=None, workers=1)
    assert report["cases_done"] == 2, report
    assert len(report["bad_cases"]) == 1 and "BraTS_001" in json.dumps(report["bad_cases"]), report
    CASES[("prepare-brats", how, "skipped")] += 1


def test_decompression_bombs_are_refused_from_the_header(files, monkeypatch):
    """A compressed NIfTI/NRRD whose header declares more voxels than the readers' limit is refused
    before inflating (the limit is lowered here so that the files stay tiny)."""
    import nibabel as nib
    import nrrd

    import dualattn.data.readers as readers

    vol = np.zeros((24, 24, 24), np.float32)  # compresses ~500:1, like a real bomb
    nii = files.new("bomb.nii.gz", b"")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(nii))
    nr = files.new("bomb.nrrd", b"")
    nrrd.write(str(nr), vol, header={"encoding": "gzip"})
    assert nii.stat().st_size < 2000 and nr.stat().st_size < 2000
    monkeypatch.setattr(readers, "MAX_VOXELS", 10_000)
    for path, fmt in ((nii, "nii.gz"), (nr, "nrrd-gzip")):
        assert _read_checked(path, kind="bomb", fmt=fmt) == "error"
        with pytest.raises(readers.DataError, match="above the readers' limit"):
            readers.read_volume(path)
    monkeypatch.undo()
    assert _read_checked(nii, kind="bomb-under-limit", fmt="nii.gz") == "read"


@SETTINGS
@given(text=st.one_of(st.binary(max_size=120), st.text(max_size=120),
                      st.sampled_from(["", "series,label\n", "a,b\n1,2\n", "series,label\ns0,purple\n",
                                       "series,label\nnope,mild\n", "series,label\ns0,mild\ns0,mild\n"])))
def test_prepare_pet_cli_with_garbage_labels(files, text):
    """`dualattn prepare pet` with any labels file: exit 2 with an error naming the file, or exit 0
    with every row either written or reported bad; never a traceback."""
    pytest.importorskip("dualattn.data.pet")
    from typer.testing import CliRunner

    from dualattn.cli import app

    files.n += 1
    root = files.root / f"petcli{files.n:05d}"
    raw = root / "raw"
    dicom_series(raw / "s0", (np.arange(4 * 8 * 8).reshape(4, 8, 8) * 10).astype(np.uint16), pet=True)
    labels = root / "labels.csv"
    labels.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with time_limit(TIME_LIMIT_S):
        res = CliRunner().invoke(app, ["prepare", "pet", str(raw), str(labels), str(root / "out"), "--size", "8"])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        assert str(labels) in res.output.replace("\n", ""), res.output
        CASES[("prepare-pet-cli", "garbage-csv", "DataError")] += 1
    else:
        assert res.exit_code == 0, res.output
        report = json.loads((root / "out" / "prepare_report.json").read_text())
        assert report["items"] + len(report["bad_series"]) >= 1
        CASES[("prepare-pet-cli", "garbage-csv", "read")] += 1


@pytest.mark.parametrize("case", ["truncated-nifti", "garbage-png", "nan-npy", "bomb-png", "empty-dcm", "1d-npy"])
def test_explain_cli_on_bad_scans(tmp_path, valid, case):
    """`dualattn explain` on a bad scan: exit 2 and an error naming the file, no traceback, no output."""
    from typer.testing import CliRunner

    from _reliability_helpers import make_run
    from dualattn.cli import app

    run = make_run(tmp_path, size=16)
    if case == "truncated-nifti":
        scan = tmp_path / "s.nii"
        scan.write_bytes(valid["nii"][1][:400])
    elif case == "garbage-png":
        scan = tmp_path / "s.png"
        scan.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    elif case == "nan-npy":
        scan = tmp_path / "s.npy"
        np.save(scan, np.full((8, 8), np.nan, np.float32))
    elif case == "bomb-png":
        scan = tmp_path / "s.png"
        scan.write_bytes(_png_with_size(40000, 40000))
    elif case == "empty-dcm":
        scan = tmp_path / "s.dcm"
        scan.write_bytes(b"")
    else:
        scan = tmp_path / "s.npy"
        np.save(scan, np.zeros(7, np.float32))
    with time_limit(TIME_LIMIT_S):
        res = CliRunner().invoke(app, ["explain", str(scan), "--run", str(run), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.output, repr(res.exception))
    assert str(scan) in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o").exists()
    CASES[("explain-cli", case, "DataError")] += 1


# --------------------------------------------------------------------------- the count


def test_zz_report_case_count():
    """Print the number of bad-input cases tried (by format and outcome); ran last in this module."""
    total = sum(CASES.values())
    by_fmt = collections.Counter()
    for (fmt, _kind, outcome), n in CASES.items():
        by_fmt[(fmt, outcome)] += n
    lines = [f"{total} bad-input cases:"] + [f"  {f:14s} {o:10s} {n}" for (f, o), n in sorted(by_fmt.items())]
    print("\n".join(lines))
    assert "HANG" not in {o for (_f, o) in by_fmt}
    if any(f == "png" for (f, _o) in by_fmt):  # when the whole module ran
        assert total >= 300, total
