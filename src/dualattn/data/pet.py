"""``dualattn prepare pet``: 3D PET DICOM series -> SUVbw -> coronal MIP -> equalized 2D images.

Pipeline per series (the paper's PET preprocessing):

1. read the series (slices sorted by position; per-slice ``RescaleSlope``/``RescaleIntercept``
   applied, giving activity concentration in Bq/ml). ``Units`` must be present and ``BQML``, or
   ``CNTS`` with the Philips *Activity Concentration Scale Factor* (7053,xx09 of the private group
   ``Philips PET Private Group``) that turns rescaled counts into Bq/ml; anything else (a missing
   ``Units`` tag included) is refused, never guessed;
2. SUVbw = activity x patient weight (g) / decay-corrected injected dose (Bq), with the dose
   decayed from ``RadiopharmaceuticalStartTime`` to ``SeriesTime`` (else ``AcquisitionTime``)
   using ``RadionuclideHalfLife`` (:func:`suv_bw_factor`);
3. coronal maximum-intensity projection (max over the anterior-posterior axis), head at the top;
4. 256-bin histogram equalization (:func:`histogram_equalize`);
5. optional padding to a physically square field of view, then resize to ``size x size``.

Privacy: no patient identifier (name, ID, birth date, accession number, any UID, nor the series
folder names, which often embed them) is written to any output, log message or report. Outputs
are named by a running index (``pet00000``...); bad series are reported by their row number in
LABELS.csv. Patient pseudonyms (``labels.csv``) and the resume state's series fingerprints are
HMAC-SHA256 values keyed by a secret that is **never written into the output folder**: the
caller's secret (``salt`` / ``key_file``; CLI ``--salt`` / ``--key-file``) or a random per-user key kept in a ``0600`` file
under the user's config folder (:func:`default_key_file`; ``$DUALATTN_SECRET_DIR`` overrides).
Holding the output alone, one cannot test a candidate patient ID against a pseudonym.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import hmac
import io
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["prepare_pet", "suv_bw_factor", "coronal_mip", "histogram_equalize", "parse_dicom_time", "PET_CLASSES",
           "default_key_file", "load_or_create_key", "counts_scale_factor"]

logger = logging.getLogger(__name__)

PET_CLASSES: tuple[str, ...] = ("normal", "mild", "severe")
_STATE = ".prepare_pet_state.json"
_REPORT = "prepare_report.json"
_STATE_VERSION = 2
_KEY_FILE = "prepare-pet.key"
_MIN_KEY_CHARS = 8
_PHILIPS_GROUP = "Philips PET Private Group"
# Attributes whose values must never reach an output (checked by the tests).
IDENTIFYING_TAGS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
    "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyID", "OtherPatientIDs",
    "InstitutionName", "ReferringPhysicianName",
)


def parse_dicom_time(value: Any) -> float:
    """Seconds since midnight of a DICOM TM (``HHMMSS.FFFFFF``, ``HHMM``, ``HH:MM:SS``) or DT value.

    Raises:
        ValueError: empty or unparsable value (named).
    """
    text = str(value or "").strip()
    if not text:
        raise ValueError("empty DICOM time")
    if len(text) >= 14 and text[:8].isdigit() and "." not in text[:8]:  # DT: YYYYMMDDHHMMSS...
        text = text[8:]
    text = text.split("+")[0].split("-")[0].replace(":", "")
    main, _, frac = text.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        raise ValueError(f"cannot parse DICOM time {value!r}")
    hh = int(main[0:2])
    mm = int(main[2:4]) if len(main) >= 4 else 0
    ss = int(main[4:6]) if len(main) >= 6 else 0
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError(f"cannot parse DICOM time {value!r}")
    return hh * 3600 + mm * 60 + ss + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def suv_bw_factor(ds: Any) -> float:
    """Factor turning Bq/ml pixels into SUVbw: ``weight_g / decay_corrected_dose_Bq``.

    Args:
        ds: a pydicom Dataset of the series (any slice) with ``PatientWeight`` (kg),
            ``RadiopharmaceuticalInformationSequence[0]`` (``RadionuclideTotalDose`` in Bq,
            ``RadionuclideHalfLife`` in s, ``RadiopharmaceuticalStartTime`` or
            ``...StartDateTime``) and ``SeriesTime`` (or ``AcquisitionTime``).

    Returns:
        The factor (multiply the activity concentration by it). When ``DecayCorrection`` is
        ``NONE`` the images are not decay corrected and the dose is not decayed either.

    Raises:
        ValueError: a missing or non-positive tag (named); ``Units`` missing, or other than ``BQML``
            and ``CNTS`` with the Philips activity-concentration scale factor
            (:func:`counts_scale_factor`), which then multiplies the returned factor.

    Example:
        >>> # 70 kg, 370 MBq injected 60 min before the scan, F-18 (6586.2 s):
        >>> # factor = 70000 / (370e6 * 2 ** (-3600 / 6586.2))
    """
    units = str(ds.get("Units", "") or "").strip().upper()
    if not units:
        raise ValueError("PET Units tag (0054,1001) missing: cannot tell whether pixels are Bq/ml; refusing "
                         "rather than guessing")
    if units == "BQML":
        scale = 1.0
    elif units == "CNTS":
        scale = counts_scale_factor(ds)
    else:
        raise ValueError(f"PET Units {units!r} not supported (need BQML activity concentration, or CNTS with the "
                         f"Philips Activity Concentration Scale Factor)")
    weight = ds.get("PatientWeight")
    if weight is None or float(weight) <= 0:
        raise ValueError(f"PatientWeight missing or not positive ({weight!r})")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise ValueError("RadiopharmaceuticalInformationSequence missing")
    info = seq[0]
    dose = info.get("RadionuclideTotalDose")
    half_life = info.get("RadionuclideHalfLife")
    if dose is None or float(dose) <= 0:
        raise ValueError(f"RadionuclideTotalDose missing or not positive ({dose!r})")
    if half_life is None or float(half_life) <= 0:
        raise ValueError(f"RadionuclideHalfLife missing or not positive ({half_life!r})")
    start = info.get("RadiopharmaceuticalStartDateTime") or info.get("RadiopharmaceuticalStartTime")
    if not start:
        raise ValueError("RadiopharmaceuticalStartTime missing")
    scan = ds.get("SeriesTime") or ds.get("AcquisitionTime")
    if not scan:
        raise ValueError("SeriesTime and AcquisitionTime missing")
    decay = str(ds.get("DecayCorrection", "START") or "START").upper()
    elapsed = parse_dicom_time(scan) - parse_dicom_time(start)
    if elapsed < 0:  # scan after midnight
        elapsed += 24 * 3600
    dose_at_scan = float(dose) * (2.0 ** (-elapsed / float(half_life)) if decay != "NONE" else 1.0)
    return scale * float(weight) * 1000.0 / dose_at_scan


def counts_scale_factor(ds: Any) -> float:
    """Bq/ml per rescaled count for a ``Units == "CNTS"`` PET slice (Philips scanners).

    Philips writes counts plus the *Activity Concentration Scale Factor* (private element
    ``(7053,xx09)`` of the block reserved by ``"Philips PET Private Group"``, normally
    ``(7053,1009)``): ``Bq/ml = (stored x RescaleSlope + RescaleIntercept) x factor`` (Philips
    PET/CT DICOM conformance statements). Without it counts cannot be converted.

    Args:
        ds: a pydicom Dataset (one slice).

    Returns:
        The factor (> 0, finite).

    Raises:
        ValueError: the private block or element is missing, or its value is not a positive number.
    """
    try:
        block = ds.private_block(0x7053, _PHILIPS_GROUP)
        value = block[0x09].value
    except (KeyError, ValueError, AttributeError, TypeError) as exc:
        raise ValueError("PET Units 'CNTS' without the Philips Activity Concentration Scale Factor (7053,1009): "
                         "counts cannot be converted to Bq/ml") from exc
    try:
        factor = float(value[0] if isinstance(value, (list, tuple)) else value)
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"Philips Activity Concentration Scale Factor (7053,1009) is not a number ({value!r})") from exc
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"Philips Activity Concentration Scale Factor (7053,1009) must be positive; got {factor!r}")
    return factor


def coronal_mip(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Coronal maximum-intensity projection of ``(D, rows, cols)`` axial slices.

    Args:
        volume: ``(slices, rows, cols)``; slices sorted along the slice normal (as read).
        affine: ``(4, 4)`` RAS affine of the volume (from :func:`~dualattn.data.readers.read_volume`).

    Returns:
        ``(mip (slices, cols) with the most superior slice first, (slice_mm, col_mm))``. The
        projection axis is whichever in-plane axis points most anterior-posterior.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, rows, cols); got shape {volume.shape}")
    axes = affine[:3, :3]
    ap = int(np.argmax(np.abs(axes[1, 1:3]))) + 1  # in-plane axis most along A-P
    keep = 3 - ap  # the other in-plane axis (L-R)
    mip = volume.max(axis=ap)  # (slices, other)
    if axes[2, 0] > 0:  # slice index increases towards superior: put the head on top
        mip = mip[::-1]
    if axes[0, keep] > 0:  # columns run towards patient right: flip so patient right is on the left
        mip = mip[:, ::-1]
    spacing = (float(np.linalg.norm(axes[:, 0])), float(np.linalg.norm(axes[:, keep])))
    return np.ascontiguousarray(mip), spacing


def histogram_equalize(image: np.ndarray, *, bins: int = 256) -> np.ndarray:
    """Histogram equalization with ``bins`` equal-width bins over ``[min, max]``, output in ``(0, 1]``.

    Each pixel maps to the normalized cumulative histogram at the centre of its bin (linear
    interpolation between bin centres), the same definition as ``skimage.exposure.equalize_hist``
    (the tests compare the two). It is not delegated to scikit-image because the results differ where
    it matters here: a constant image maps to all ones (scikit-image: 0.5), and float32 inputs are
    computed in float64 (scikit-image keeps float32, so the two differ in the last bits).

    Args:
        image: any-shaped finite array.
        bins: number of histogram bins (the paper: 256).

    Returns:
        float32 array of the same shape.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2; got {bins}")
    x = np.asarray(image, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.ones_like(x, dtype=np.float32)
    hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(hist) / x.size
    return np.interp(x, centers, cdf).astype(np.float32)


def _to_square(img: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Zero-pad so the physical field of view is square (keeps the body's aspect ratio)."""
    h_mm, w_mm = img.shape[0] * spacing[0], img.shape[1] * spacing[1]
    if abs(h_mm - w_mm) < 1e-6:
        return img
    if h_mm > w_mm:
        extra = int(round((h_mm - w_mm) / spacing[1]))
        return np.pad(img, ((0, 0), (extra // 2, extra - extra // 2)))
    extra = int(round((w_mm - h_mm) / spacing[0]))
    return np.pad(img, ((extra // 2, extra - extra // 2), (0, 0)))


def _label_index(value: str) -> int:
    v = value.strip().lower()
    if v in PET_CLASSES:
        return PET_CLASSES.index(v)
    if v in ("0", "1", "2"):
        return int(v)
    raise ValueError(f"unknown label {value!r} (expected {list(PET_CLASSES)} or 0/1/2)")


def _scrub(text: str, secrets_: list[str]) -> str:
    for s in sorted(secrets_, key=len, reverse=True):
        if s and len(s) >= 3:
            text = text.replace(s, "[redacted]")
    return text


def _header_secrets(ds: Any) -> list[str]:
    out = []
    for tag in IDENTIFYING_TAGS:
        v = ds.get(tag)
        if v is not None and str(v).strip():
            out.append(str(v).strip())
            out.extend(p for p in str(v).replace("^", " ").split() if len(p) >= 3)
    return out


def prepare_series(folder: str | os.PathLike[str], *, size: int = 512, bins: int = 256, keep_aspect: bool = True) -> np.ndarray:
    """One PET series folder -> equalized coronal SUV MIP ``(1, size, size)`` float32 in ``(0, 1]``.

    Raises:
        DataError: unreadable series, not PET, or SUV tags missing (message names the tag).
    """
    import torch

    from .readers import read_dicom_series
    from .transforms import resize

    vol, geo, headers = read_dicom_series(folder)
    ds = headers[0]
    modality = str(ds.get("Modality", "")).upper()
    if modality not in ("PT", "PET"):
        raise DataError(folder, f"series modality is {modality!r}, not PT")
    try:
        factor = suv_bw_factor(ds)
        units = {str(h.get("Units", "") or "").strip().upper() for h in headers}
        if len(units) > 1:
            raise ValueError(f"PET Units differ between slices ({sorted(units)})")
        if units == {"CNTS"}:
            scales = np.array([counts_scale_factor(h) for h in headers])
            if not np.allclose(scales, scales[0], rtol=1e-9, atol=0):
                raise ValueError("the Philips Activity Concentration Scale Factor differs between slices")
    except ValueError as exc:
        raise DataError(folder, f"cannot compute SUVbw: {exc}") from exc
    suv = vol[0] * np.float32(factor)
    if not np.isfinite(suv).all():
        raise DataError(folder, "non-finite SUV values")
    mip, spacing = coronal_mip(suv, geo.affine)
    eq = histogram_equalize(mip, bins=bins)
    if keep_aspect:
        eq = _to_square(eq, spacing)
    out = resize(torch.from_numpy(np.ascontiguousarray(eq))[None], (size, size))
    return out.clamp(0, 1).numpy().astype(np.float32)


def default_key_file() -> Path:
    """Where the automatic per-user pseudonym key lives (never inside an output folder).

    ``$DUALATTN_SECRET_DIR/prepare-pet.key`` when that variable is set, else
    ``$XDG_CONFIG_HOME/dualattn/secrets/prepare-pet.key`` (``~/.config`` without ``XDG_CONFIG_HOME``).
    """
    env = os.environ.get("DUALATTN_SECRET_DIR")
    if env:
        return Path(env).expanduser() / _KEY_FILE
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "dualattn" / "secrets" / _KEY_FILE


def load_or_create_key(path: str | os.PathLike[str] | None = None, *, create: bool = True) -> bytes:
    """Read a pseudonym key file, creating it (32 random bytes, hex, mode ``0600``) when absent.

    Args:
        path: the key file; default :func:`default_key_file`.
        create: create the file when missing (else a missing file is an error).

    Returns:
        The key bytes (the file's stripped content).

    Raises:
        ValueError: the file is missing (``create=False``), empty, or shorter than 8 characters.
    """
    path = Path(path) if path is not None else default_key_file()
    if not path.is_file():
        if not create:
            raise ValueError(f"key file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # written in full to a private temp file, then hard-linked into place: a concurrent run either
        # creates the key or reads a complete one (never an empty file), and never overwrites it
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
                logger.info("created a pseudonym key in the user's secret folder (kept outside every output folder)")
            except FileExistsError:
                pass  # another run created it first: use theirs
            except OSError:  # no hard links on this file system
                if not path.exists():
                    os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_bytes().strip()
    if len(key) < _MIN_KEY_CHARS:
        raise ValueError(f"key file {path} holds fewer than {_MIN_KEY_CHARS} characters")
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("key file %s is readable by other users; chmod 600 it", path)
    return key


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _unsafe_series_path(series: str) -> str | None:
    """Why a LABELS.csv ``series`` value may not be read (absolute, or escaping RAW), else ``None``."""
    from pathlib import PurePosixPath, PureWindowsPath

    for pure in (PurePosixPath(series), PureWindowsPath(series)):
        if pure.is_absolute() or pure.anchor:
            return "series path is absolute; LABELS.csv may only name folders inside RAW (relative paths)"
        if ".." in pure.parts:
            return "series path contains '..' and would leave RAW; LABELS.csv may only name folders inside RAW"
    return None


def _resolve_key(*, salt: str | bytes | None, key_file: str | os.PathLike[str] | None, out: Path) -> bytes:
    """The pseudonym secret: ``salt``, else ``key_file``'s content, else the per-user key."""
    if salt is not None and key_file is not None:
        raise ValueError("give either salt (--salt) or key_file (--key-file), not both")
    if salt is not None:
        secret = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
        if len(secret.strip()) < _MIN_KEY_CHARS:
            raise ValueError(f"--salt must have at least {_MIN_KEY_CHARS} characters; got {len(secret.strip())}")
        return secret
    path = Path(key_file) if key_file is not None else default_key_file()
    if _inside(path, out):
        raise ValueError(f"the key file {path} is inside the output folder {out}: anyone holding the output could "
                         "reverse the pseudonyms; keep it elsewhere")
    return load_or_create_key(path, create=key_file is None)


def prepare_pet(
    raw: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 512,
    bins: int = 256,
    keep_aspect: bool = True,
    salt: str | bytes | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Prepare every PET series listed in ``labels_csv`` into the folder format at ``out``.

    Args:
        raw: folder holding the series folders.
        labels_csv: CSV with columns ``series`` (folder relative to ``raw``) and ``label``
            (``normal``/``mild``/``severe`` or 0/1/2); optional ``patient`` (hashed before use).
        out: destination folder.
        size: output side (the paper: 512).
        bins: histogram-equalization bins (the paper: 256).
        keep_aspect: zero-pad the MIP to a physically square field of view before resizing.
        salt: secret key (at least 8 characters) for the patient pseudonyms and the resume
            state's series fingerprints (HMAC-SHA256). Never written anywhere.
        key_file: file holding that secret instead (its stripped content). With neither, a random
            per-user key is read from (or created in) :func:`default_key_file`. A re-run must use
            the same key to resume (checked through a key-derived check value in the state file;
            the state holds nothing else derived from the key but the series fingerprints).

    Returns:
        The report (also written to ``out/prepare_report.json``): ``items``, ``new``,
        ``resumed``, ``bad_series`` (``[{"row": n, "problem": ...}]``), ``class_counts``.
        Bad series are skipped, never fatal; a re-run only processes series not done yet.

    Raises:
        DataError: ``raw`` or ``labels_csv`` missing, or the CSV lacks ``series``/``label``.
        ValueError: both ``salt`` and ``key_file`` given, a key shorter than 8 characters, a key file
            inside ``out``, a key differing from the one ``out`` was started with, or a state file
            written by an older version (which stored its salt in ``out``).
    """
    import json

    from .._io import atomic_write_json
    from .folder import FolderWriter, _save_npy

    raw, out, labels_csv = Path(raw), Path(out), Path(labels_csv)
    if not raw.is_dir():
        raise DataError(raw, "raw PET folder does not exist")
    if not labels_csv.is_file():
        raise DataError(labels_csv, "labels CSV does not exist")
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    try:
        rows = list(csv.DictReader(io.StringIO(labels_csv.read_text(encoding="utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(labels_csv, f"not a UTF-8 CSV file ({exc})") from exc
    if not rows or not {"series", "label"} <= set(rows[0]):
        raise DataError(labels_csv, "needs columns series,label")
    secret = _resolve_key(salt=salt, key_file=key_file, out=out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / _STATE
    check = hmac.new(secret, b"dualattn prepare-pet key check", hashlib.sha256).hexdigest()[:16]
    state: dict[str, Any] = {"version": _STATE_VERSION, "key_check": check, "done": {}}
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DataError(state_path, f"resume state is not valid JSON ({exc})") from exc
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION or "salt" in state:
            raise ValueError(f"{out} was prepared by an older dualattn that stored its salt in the output folder "
                             "(reversible pseudonyms); delete that folder and prepare again into a new one")
        if state.get("key_check") != check:
            raise ValueError(f"{out} was started with another pseudonym key; re-run with the same --salt/--key-file "
                             "(or the same user key) to resume, or prepare into a new folder")

    def key(text: str) -> str:
        return hmac.new(secret, text.encode("utf-8"), hashlib.sha256).hexdigest()[:24]
    bad: list[dict[str, Any]] = []
    new = resumed = 0
    seen: dict[str, int] = {}
    next_index = len(state["done"])
    for n, row in enumerate(rows, start=2):
        series = (row.get("series") or "").strip()
        fp = key("series:" + series)
        secrets_: list[str] = [series, *Path(series).parts]
        try:
            unsafe = _unsafe_series_path(series)
            if unsafe is not None:
                raise DataError(None, unsafe)
            label = _label_index(row.get("label") or "")
            if fp in seen:
                raise DataError(None, f"series listed again (first at row {seen[fp]})")
            seen[fp] = n
            if fp in state["done"]:
                resumed += 1
                continue
            folder = raw / series
            if not series or not folder.is_dir():
                raise DataError(None, "series folder listed in LABELS.csv does not exist")
            try:
                from .readers import _dcmread

                files = [f for f in sorted(folder.iterdir()) if f.is_file()]
                secrets_ += [f.name for f in files] + [f.stem for f in files]
                first = files[0]
                secrets_ += _header_secrets(_dcmread(first, stop_before_pixels=True))
            except (IndexError, DataError):
                pass
            img = prepare_series(folder, size=size, bins=bins, keep_aspect=keep_aspect)
        except (DataError, ValueError) as exc:
            problem = exc.problem if isinstance(exc, DataError) else str(exc)
            problem = _scrub(problem.replace(str(raw), "RAW"), secrets_)
            bad.append({"row": n, "problem": problem})
            logger.warning("LABELS.csv row %d skipped: %s", n, problem)
            continue
        name = f"pet{next_index:05d}"
        next_index += 1
        _save_npy(out / "images" / f"{name}.npy", img)
        patient = row.get("patient", "").strip()
        state["done"][fp] = {"name": name, "label": label, "patient": f"pt-{key('patient:' + patient)[:12]}" if patient else name}
        atomic_write_json(state_path, state)
        new += 1
        logger.info("LABELS.csv row %d -> %s", n, name)
    writer = FolderWriter(out, class_names=PET_CLASSES, channel_names=["PET"], meta={"name": "prepared-pet", "size": size, "bins": bins})
    for entry in sorted(state["done"].values(), key=lambda e: e["name"]):
        writer.rows.append({"image": f"images/{entry['name']}.npy", "label": str(entry["label"]), "mask": "", "patient": entry["patient"]})
        writer._shape = (1, size, size)
    writer.close()
    counts = [sum(1 for e in state["done"].values() if e["label"] == k) for k in range(3)]
    report = {"items": len(state["done"]), "new": new, "resumed": resumed, "bad_series": bad, "class_counts": dict(zip(PET_CLASSES, counts)), "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(out / _REPORT, report)
    return report
