"""Shared helpers of the reliability tests: hostile payloads, time limits, tiny runs, byte-level grep.

Nothing here runs at import time; every helper writes only below the folder it is given.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import re
import signal
import struct
import threading
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

# --------------------------------------------------------------------------- hostile pickles


class MarkerPayload:
    """Unpickling this object calls ``builtins.open(marker, "w")``: it creates ``marker``.

    That is the smallest proof that a loader ran code from the file: if ``marker`` exists after a
    load attempt, the loader unpickled an arbitrary callable.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105 - the attack itself
        return (open, (self.marker, "w"))


def evil_pickle_bytes(marker: Path) -> bytes:
    """A plain pickle (what ``torch.save`` used to write, and ``pickle.dump`` writes) of a dict
    shaped like a checkpoint whose unpickling creates ``marker``."""
    return pickle.dumps({"state_dict": {}, "epoch": 1, "payload": MarkerPayload(marker)}, protocol=2)


def write_evil_torch_checkpoint(path: Path, marker: Path) -> Path:
    """A real ``torch.save`` zip archive (tensors + a code-running object), as a hostile ``.ckpt``/``.pt``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "epoch": 1, "global_step": 1, "payload": MarkerPayload(marker)},
        str(path),
    )
    return path


# --------------------------------------------------------------------------- time limits


class TimeLimitExceeded(Exception):
    """Raised inside the guarded block when it runs past its time limit (a hang)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail a block that runs longer than ``seconds`` (SIGALRM; main thread only, else no limit).

    Python code (parsers in pure Python such as pydicom, pynrrd, nibabel's header code) is
    interrupted at the next bytecode; C loops are interrupted when they return.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001
        raise TimeLimitExceeded(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- tiny data and runs


def write_blobs(root: Path, *, n: int = 32, size: int = 16, seed: int = 0, channels: int = 1) -> Path:
    """A tiny folder-format dataset: class 1 has a bright square (and its mask), class 0 noise only."""
    from dualattn.data import FolderWriter

    rng = np.random.default_rng(seed)
    with FolderWriter(root, class_names=["no", "yes"]) as w:
        for i in range(n):
            y = i % 2
            img = rng.normal(0.0, 1.0, (channels, size, size)).astype(np.float32)
            mask = np.zeros((size, size), np.uint8)
            if y:
                r, c = rng.integers(1, size - size // 3, 2)
                s = max(2, size // 4)
                img[:, r : r + s, c : c + s] += 2.5
                mask[r : r + s, c : c + s] = 1
            w.add(f"img{i:03d}", image=img, label=y, patient=f"p{i:03d}", mask=mask)
    return root


def make_run(
    root: Path,
    *,
    variant: str = "exact",
    size: int | tuple[int, ...] = 32,
    spatial_dims: int = 2,
    in_channels: int = 1,
    features: int = 4,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """A run folder as ``dualattn train`` writes it (weights + ``config.yaml``) from an untrained model."""
    import torch
    import yaml

    from dualattn.models import create_model
    from dualattn.weights import save_model

    torch.manual_seed(seed)
    model = create_model(
        "unet_encoder", variant=variant, in_channels=in_channels, spatial_dims=spatial_dims, features=features
    )
    run = root / (name or f"run-{variant}-{spatial_dims}d")
    run.mkdir(parents=True)
    save_model(model, run / "best.safetensors")
    save_model(model, run / "last.safetensors")
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": "unet_encoder", "variant": variant, "image_size": size}), encoding="utf-8"
    )
    (run / "summary.json").write_text(json.dumps({"class_names": ["healthy", "lesion"]}), encoding="utf-8")
    return run


# --------------------------------------------------------------------------- byte-level grep


def _png_text_chunks(data: bytes) -> list[bytes]:
    """Decoded text of a PNG's tEXt/zTXt/iTXt chunks (compressed ones inflated)."""
    out: list[bytes] = []
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return out
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            out.append(body)
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            with contextlib.suppress(zlib.error):
                out.append(key + b"\x00" + zlib.decompress(rest[1:]))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed = rest[:1] == b"\x01"
            rest = rest[2:]
            _lang, _, rest = rest.partition(b"\x00")
            _tkey, _, text = rest.partition(b"\x00")
            if compressed:
                with contextlib.suppress(zlib.error):
                    text = zlib.decompress(text)
            out.append(key + b"\x00" + text)
        elif kind == b"IDAT":
            continue
    return out


def readable_views(path: Path) -> list[tuple[str, bytes]]:
    """Every byte view of a file a person or program could read an identifier from.

    The raw bytes; gzip members inflated (``.nii.gz``, ``.gz``); PNG text chunks inflated; NPZ
    members; and, for every view, a UTF-16 decoding attempt is unnecessary (needles are searched
    in UTF-16 too, see :func:`find_identifiers`).
    """
    raw = path.read_bytes()
    views = [("raw", raw)]
    if raw[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError, zlib.error):
            views.append(("gunzip", gzip.decompress(raw)))
    views.extend(("png-text", t) for t in _png_text_chunks(raw))
    if raw[:4] == b"PK\x03\x04":
        import io
        import zipfile

        with contextlib.suppress(zipfile.BadZipFile):
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                for info in zf.infolist():
                    views.append((f"zip:{info.filename}", zf.read(info)))
    return views


def needle_forms(value: str) -> list[bytes]:
    """Byte patterns one identifier may take in a file: as is, its DICOM name parts, UTF-16."""
    forms = {value}
    if "^" in value:  # DICOM person name: also each component and the space-joined form
        parts = [p for p in value.split("^") if p]
        forms.update(p for p in parts if len(p) >= 4)
        forms.add(" ".join(parts))
    out: list[bytes] = []
    for f in forms:
        out.append(f.encode("utf-8"))
        out.append(f.encode("utf-16-le"))
    return out


def find_identifiers(paths: Iterable[Path], identifiers: dict[str, str]) -> list[str]:
    """Names ``"file [view]: TAG"`` for every identifier found (case-insensitive) in any view of any file."""
    hits: list[str] = []
    patterns = {tag: [re.compile(re.escape(n), re.IGNORECASE) for n in needle_forms(v)] for tag, v in identifiers.items()}
    for path in paths:
        if not path.is_file():
            continue
        for view, data in readable_views(path):
            for tag, pats in patterns.items():
                if any(p.search(data) for p in pats):
                    hits.append(f"{path} [{view}]: {tag}")
        # the file name is an output too
        for tag, value in identifiers.items():
            if any(f.decode("utf-8", "ignore").lower() in str(path).lower() for f in needle_forms(value)[::2]):
                hits.append(f"{path} [name]: {tag}")
    return hits


def all_files(*roots: Path) -> list[Path]:
    """Every regular file below the roots (hidden ones included)."""
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files.extend(p for p in sorted(root.rglob("*")) if p.is_file())
    return files


# --------------------------------------------------------------------------- DICOM builders

#: Identifying values planted in the synthetic DICOM series of the privacy tests.
PATIENT = {
    "PatientName": "Zyxwvutsr^Quintessa",
    "PatientID": "PID-8817-4402",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC99317702",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.77123456789012345678",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.88123456789012345678",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.8.498.99123456789012345678",
}


def dicom_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    position: tuple[float, float, float] = (0.0, 0.0, 0.0),
    instance: int = 1,
    modality: str = "PT",
    tags: dict[str, str] | None = None,
    sop_uid: str | None = None,
    pet: bool = False,
    slope: float = 1.0,
) -> Path:
    """Write one uncompressed DICOM slice (uint16 pixels) with optional identifying ``tags``.

    ``pet=True`` adds the SUVbw tags (units BQML, weight, dose, half-life, times).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.128"  # PET image storage
    sop = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.Modality = modality
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 2.0
    ds.InstanceNumber = int(instance)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = 0
    for key, value in (tags or {}).items():
        setattr(ds, key, value)
    if pet:
        ds.Units = "BQML"
        ds.PatientWeight = 70
        ds.SeriesTime = "103000"
        ds.AcquisitionTime = "103000"
        ds.DecayCorrection = "START"
        info = Dataset()
        info.RadionuclideTotalDose = 3.5e8
        info.RadionuclideHalfLife = 6586.2
        info.RadiopharmaceuticalStartTime = "093000"
        ds.RadiopharmaceuticalInformationSequence = Sequence([info])
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    tags: dict[str, str] | None = None,
    pet: bool = False,
    slope: float = 1.0,
    file_names: Iterable[str] | None = None,
) -> Path:
    """Write ``volume`` ``(slices, rows, cols)`` as a DICOM series (one file per slice, shuffled names)."""
    names = list(file_names) if file_names is not None else [f"IM{(7 * k) % 101:04d}.dcm" for k in range(len(volume))]
    for k, sl in enumerate(volume):
        dicom_slice(folder / names[k], sl, position=(0.0, 0.0, 2.0 * k), instance=k + 1, tags=tags, pet=pet,
                    slope=slope)
    return folder


def small_png(path: Path, seed: int = 0) -> Path:
    """A 16x16 8-bit grey PNG with a bright rectangle (a scan for ``dualattn explain``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    px = (rng.random((16, 16)) * 255).astype(np.uint8)
    px[4:9, 5:11] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)
    return path
