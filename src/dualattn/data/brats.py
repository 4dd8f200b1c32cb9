"""``dualattn prepare brats``: BraTS volumes -> tumor / no-tumor hemisphere halves (the paper's set).

For every case, anywhere under RAW, named in one of the BraTS naming schemes (:data:`NAMING_SCHEMES`):

* BraTS 2018-2021: ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` ``.nii[.gz]``
  (e.g. ``BraTS2021_00000_t1.nii.gz``);
* BraTS 2023 and later: ``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg`` ``.nii[.gz]``
  (e.g. ``BraTS-GLI-00000-000-t1n.nii.gz``; T1 native, T1 contrast, T2 weighted, T2 FLAIR):

1. each modality is z-scored over its brain (non-zero) voxels; the background stays 0;
2. axial slices whose tumor area (``seg > 0``) exceeds ``min_area`` pixels are kept;
3. each kept slice is cut vertically (along the anterior-posterior axis) at the tumor's edge:
   of the two cuts (just left / just right of the tumor) the one nearer the slice centre is used,
   so one part holds the whole tumor (label 1, whole-tumor mask) and the other none (label 0).
   Slices where the tumor-free part would be narrower than ``min_width`` of the slice are skipped;
4. halves are written channels-first ``(4, rows=A->P, cols)`` (optionally resized to
   ``size x size``) in the folder format; the case id is the patient id.

Bad cases (missing modality, unreadable file, shape mismatch, NaN, a folder of NIfTI files none of
which follows a naming scheme) are skipped and listed in ``prepare_report.json``; finished cases leave a marker in ``.cases/`` so a re-run resumes without
redoing them (and retries the bad ones). Items are read lazily by :class:`FolderDataset`, so sets
larger than RAM need no special handling.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .readers import radiological_view

__all__ = ["prepare_brats", "find_cases", "MODALITIES", "NAMING_SCHEMES", "expected_names", "cut_at_tumor_edge",
           "write_halves"]

logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
_MARKERS = ".cases"
_REPORT = "prepare_report.json"

#: The BraTS file naming schemes: name -> (separator before the suffix, {modality or "seg": file suffix}).
#: BraTS 2018, 2019, 2020 and 2021 share the first; 2023 (and 2024) use the second.
NAMING_SCHEMES: dict[str, tuple[str, dict[str, str]]] = {
    "BraTS 2018-2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "BraTS 2023": ("-", {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}),
}
_SCHEME_RES = [
    (re.compile(rf"^(?P<case>.+){re.escape(sep)}(?P<kind>{'|'.join(sorted(kinds.values(), key=len, reverse=True))})"
                r"\.nii(\.gz)?$", re.IGNORECASE), {v: k for k, v in kinds.items()})
    for sep, kinds in NAMING_SCHEMES.values()
]


def expected_names() -> str:
    """The file names each naming scheme expects, for error messages.

    Example:
        >>> print(expected_names())
        CASE_t1, CASE_t1ce, CASE_t2, CASE_flair, CASE_seg (BraTS 2018-2021) or CASE-t1n, CASE-t1c, CASE-t2w, CASE-t2f, CASE-seg (BraTS 2023), each .nii or .nii.gz
    """
    parts = [", ".join(f"CASE{sep}{kinds[k]}" for k in (*MODALITIES, "seg")) + f" ({name})"
             for name, (sep, kinds) in NAMING_SCHEMES.items()]
    return " or ".join(parts) + ", each .nii or .nii.gz"


def _match(name: str) -> tuple[str, str] | None:
    """``(case, modality or "seg")`` for a file name in any naming scheme, else ``None``."""
    for pattern, kinds in _SCHEME_RES:
        m = pattern.match(name)
        if m:
            return m.group("case"), kinds[m.group("kind").lower()]
    return None


def _scan_cases(raw: Path) -> tuple[dict[str, dict[str, Path | None]], dict[str, str], dict[str, str]]:
    """Cases found from *any* of their files, the problems of cases found in several folders, and the
    folders holding NIfTI files of which none follows a naming scheme (relative folder -> problem)."""
    found: dict[tuple[Path, str], dict[str, Path | None]] = {}
    unmatched: dict[Path, list[str]] = {}
    matched_folders: set[Path] = set()
    for f in sorted(raw.rglob("*.nii*")):
        if not f.is_file() or not f.name.lower().endswith((".nii", ".nii.gz")):
            continue
        hit = _match(f.name)
        if hit is None:
            unmatched.setdefault(f.parent, []).append(f.name)
            continue
        matched_folders.add(f.parent)
        case, kind = hit
        files = found.setdefault((f.parent, case), {k: None for k in (*MODALITIES, "seg")})
        if files[kind] is None or f.name.endswith(".gz"):  # CASE_x.nii.gz wins over CASE_x.nii
            files[kind] = f
    cases: dict[str, dict[str, Path | None]] = {}
    problems: dict[str, str] = {}
    for (folder, case), files in found.items():
        if case in cases:
            problems[case] = "case id found in several folders; rename one (case ids must be unique)"
            continue
        cases[case] = files
    strays: dict[str, str] = {}
    for folder, names in unmatched.items():
        if folder in matched_folders:  # extra files beside a case (notes, other masks) are ignored
            continue
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        key = folder.relative_to(raw).as_posix() if folder != raw else "."
        strays[key] = f"no file name follows a BraTS naming scheme (found {shown}); expected {expected_names()}"
    return cases, problems, strays


def find_cases(raw: str | os.PathLike[str]) -> dict[str, dict[str, Path | None]]:
    """Map case id -> {modality or "seg": path or None} for every case under ``raw``.

    A case is found from any of its files in either naming scheme (:data:`NAMING_SCHEMES`:
    ``CASE_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg`` or ``CASE-t1n``, ``-t1c``, ``-t2w``, ``-t2f``,
    ``-seg``, ``.nii[.gz]``), so a case missing its segmentation or a modality is listed with ``None``
    there (and reported as bad by :func:`prepare_brats`) rather than silently ignored. Modalities are
    keyed by the 2018 names (:data:`MODALITIES`): ``t1n`` -> ``t1``, ``t1c`` -> ``t1ce``,
    ``t2w`` -> ``t2``, ``t2f`` -> ``flair``.

    Raises:
        DataError: ``raw`` is not a folder or holds no BraTS file (the message lists the expected names).

    Example:
        >>> find_cases("BraTS2023/")  # doctest: +SKIP
        {'BraTS-GLI-00000-000': {'t1': PosixPath('BraTS2023/BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz'), ...}}
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError(raw, "raw BraTS folder does not exist")
    cases, _, strays = _scan_cases(raw)
    if not cases:
        seen = f" (folders with other NIfTI files: {', '.join(sorted(strays)[:5])})" if strays else ""
        raise DataError(raw, f"no BraTS case found{seen}; expected files named {expected_names()}")
    return cases


def _normalize_brain(vol: np.ndarray) -> np.ndarray:
    brain = vol != 0
    if brain.sum() < 2:
        return np.zeros_like(vol, dtype=np.float32)
    mu, sd = float(vol[brain].mean()), float(vol[brain].std())
    out = np.where(brain, (vol - mu) / max(sd, 1e-6), 0.0)
    return out.astype(np.float32)


def cut_at_tumor_edge(tumor_cols: np.ndarray, width: int, *, min_width: float = 0.25) -> tuple[slice, slice] | None:
    """Where to cut a slice of ``width`` columns whose tumor occupies columns ``tumor_cols``.

    Returns:
        ``(tumor_part, clean_part)`` column slices, or ``None`` when the tumor-free part would be
        narrower than ``min_width * width``. Of the two possible cuts the one nearer the centre wins.

    Example:
        >>> cut_at_tumor_edge(np.array([10, 11, 12]), 40)
        (slice(0, 13, None), slice(13, 40, None))
    """
    lo, hi = int(tumor_cols.min()), int(tumor_cols.max()) + 1
    options = []
    if width - hi >= min_width * width:  # tumor on the low side, cut right after it
        options.append((abs(hi - width / 2), (slice(0, hi), slice(hi, width))))
    if lo >= min_width * width:  # tumor on the high side, cut right before it
        options.append((abs(lo - width / 2), (slice(lo, width), slice(0, lo))))
    if not options:
        return None
    return min(options, key=lambda o: o[0])[1]


def _process_case(case: str, files: dict[str, Path | None], out: Path, min_area: int, size: int | None, min_width: float) -> dict[str, Any]:
    """Write one case's halves; return its marker record. Raises DataError for a bad case."""
    from .readers import read_volume

    missing = [k for k in (*MODALITIES, "seg") if files.get(k) is None]
    if missing:
        where = next((p for p in files.values() if p is not None), None)
        what = "segmentation (_seg) and modality file(s)" if "seg" in missing and len(missing) > 1 else (
            "segmentation file (_seg)" if missing == ["seg"] else "modality file(s)")
        sep, kinds = next((v for v in NAMING_SCHEMES.values() if where is not None and
                           where.name.startswith(f"{case}{v[0]}")), NAMING_SCHEMES["BraTS 2018-2021"])
        names = ", ".join(f"{case}{sep}{kinds[k]}.nii.gz" for k in missing)
        raise DataError(where.parent if where is not None else None,
                        f"case {case}: missing {what} {missing} (expected {names})")
    vols = []
    shape = None
    for mod in (*MODALITIES, "seg"):
        arr, _ = read_volume(files[mod])  # type: ignore[arg-type]
        if arr.shape[0] != 1 or arr.ndim != 4:
            raise DataError(files[mod], f"expected a single 3D volume, got array shape {arr.shape}")
        if shape is not None and arr.shape != shape:
            raise DataError(files[mod], f"shape {arr.shape[1:]} differs from {MODALITIES[0]}'s {shape[1:]}")
        shape = arr.shape
        vols.append(arr[0])
    image = np.stack([_normalize_brain(v) for v in vols[:4]])  # (4, X, Y, Z)
    seg = vols[4] > 0
    rows, skipped_midline = write_halves(case, image, seg, out, min_area=min_area, size=size, min_width=min_width)
    return {"case": case, "rows": rows, "slices_skipped_midline": skipped_midline}


def write_halves(case: str, image: np.ndarray, seg: np.ndarray, out: Path, *, min_area: int, size: int | None,
                 min_width: float) -> tuple[list[dict[str, str]], int]:
    """Write the tumor / no-tumor halves of one case's axial slices (steps 2-4 of the module docstring).

    Args:
        case: the case id (patient id and file-name prefix).
        image: ``(C, X, Y, Z)`` RAS, already normalized.
        seg: ``(X, Y, Z)`` bool whole-tumor mask.
        out: the destination folder (``images/`` and ``masks/`` are written there).
        min_area, size, min_width: as :func:`prepare_brats`.

    Returns:
        ``(rows, slices_skipped_midline)``: the ``labels.csv`` rows written, and how many kept slices had
        no cut leaving a wide enough tumor-free part.
    """
    import torch

    from .folder import _save_npy
    from .transforms import resize

    areas = seg.sum(axis=(0, 1))
    rows: list[dict[str, str]] = []
    skipped_midline = 0
    for z in np.flatnonzero(areas > min_area):
        # the radiological view `dualattn explain` shows a 2-D model: anterior up, the patient's right on the left
        sl = np.ascontiguousarray(radiological_view(image[:, :, :, z]))
        m = np.ascontiguousarray(radiological_view(seg[:, :, z]))
        cols = np.flatnonzero(m.any(axis=0))
        cut = cut_at_tumor_edge(cols, m.shape[1], min_width=min_width)
        if cut is None:
            skipped_midline += 1
            continue
        for part, label, tag in ((cut[0], 1, "tumor"), (cut[1], 0, "clean")):
            img_h = sl[:, :, part]
            msk_h = (m[:, part] if label else np.zeros_like(m[:, part]))[None].astype(np.float32)
            if size is not None:
                img_h = resize(torch.from_numpy(np.ascontiguousarray(img_h)), size).numpy()
                msk_h = resize(torch.from_numpy(np.ascontiguousarray(msk_h)), size, is_mask=True).numpy()
            name = f"{case}_z{int(z):03d}_{tag}"
            _save_npy(out / "images" / f"{name}.npy", img_h.astype(np.float32))
            _save_npy(out / "masks" / f"{name}.npy", (msk_h > 0.5).astype(np.uint8))
            rows.append({"image": f"images/{name}.npy", "label": str(label), "mask": f"masks/{name}.npy", "patient": case})
    return rows, skipped_midline


def _worker(args: tuple) -> tuple[str, dict[str, Any] | None, str | None]:
    case, files, out, min_area, size, min_width = args
    try:
        rec = _process_case(case, files, out, min_area, size, min_width)
    except DataError as exc:
        return case, None, str(exc)
    from .._io import atomic_write_json

    atomic_write_json(out / _MARKERS / f"{case}.json", rec)
    return case, rec, None


def prepare_brats(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    min_area: int = 1000,
    size: int | None = None,
    min_width: float = 0.25,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert BraTS cases under ``raw`` into tumor / no-tumor halves at ``out`` (folder format).

    Args:
        raw: folder with BraTS cases (searched recursively; a case is found from any of its files in
            either naming scheme, a case missing its ``_seg`` or a modality is reported in ``bad_cases``,
            and so is a folder of NIfTI files none of which follows a naming scheme, by its path
            relative to ``raw``).
        out: destination folder (created; re-running resumes).
        min_area: keep axial slices with more tumor pixels than this (the paper: 1000).
        size: resize each half to ``size x size``; ``None`` keeps the native height and part width.
        min_width: smallest tumor-free part, as a fraction of the slice width.
        workers: parallel processes (1 = in this process).

    Returns:
        The report, also written to ``out/prepare_report.json``: ``cases_total``, ``cases_done``,
        ``cases_skipped_resume``, ``bad_cases`` (``[{"case", "problem"}]``), ``items``,
        ``slices_skipped_midline``.

    Raises:
        DataError: ``raw`` missing or without cases.
    """
    from .._io import atomic_write_json
    from .folder import FolderWriter

    if min_area < 0 or not 0 < min_width < 0.5 or workers < 1:
        raise ValueError(f"need min_area >= 0, 0 < min_width < 0.5, workers >= 1; got {min_area}, {min_width}, {workers}")
    if size is not None and size < 8:
        raise ValueError(f"size must be >= 8 or None; got {size}")
    cases = find_cases(raw)
    _, duplicated, strays = _scan_cases(Path(raw))
    out = Path(out)
    (out / _MARKERS).mkdir(parents=True, exist_ok=True)
    todo, resumed = [], 0
    bad: list[dict[str, str]] = []
    for folder, problem in sorted(strays.items()):
        bad.append({"case": folder, "problem": problem})
        logger.warning("skipping folder %s: %s", folder, problem)
    for case, files in cases.items():
        if case in duplicated:
            bad.append({"case": case, "problem": duplicated[case]})
            logger.warning("skipping BraTS case %s: %s", case, duplicated[case])
        elif (out / _MARKERS / f"{case}.json").is_file():
            resumed += 1
        else:
            todo.append((case, files, out, int(min_area), size, float(min_width)))
    done = 0
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # fork (Linux) also works when the caller is an interactive/stdin script; the parent has not
        # started torch threads here (torch is only used inside the workers)
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            results = list(pool.map(_worker, todo))
    else:
        results = [_worker(t) for t in todo]
    for case, rec, err in results:
        if err is not None:
            bad.append({"case": case, "problem": err})
            logger.warning("skipping BraTS case %s: %s", case, err)
        else:
            done += 1
            logger.info("BraTS case %s: %d halves", case, len(rec["rows"]) if rec else 0)
    records = []
    for marker in sorted((out / _MARKERS).glob("*.json")):
        records.append(json.loads(marker.read_text()))
    writer = FolderWriter(out, class_names=("no_tumor", "tumor"), channel_names=("T1", "T1ce", "T2", "FLAIR"), meta={"name": "prepared-brats", "min_area": min_area, "size": size})
    for rec in records:
        writer.rows.extend(rec["rows"])
    if writer.rows:
        writer._shape = (4, size, size) if size is not None else (4, 0, 0)
    writer.close()
    if size is None:  # native sizes vary per half: drop the misleading image_size entry
        meta = json.loads((out / "dataset.json").read_text())
        meta.pop("image_size", None)
        atomic_write_json(out / "dataset.json", meta)
    report = {
        "cases_total": len(cases),
        "cases_done": done,
        "cases_skipped_resume": resumed,
        "bad_cases": bad,
        "items": len(writer.rows),
        "slices_skipped_midline": int(sum(r.get("slices_skipped_midline", 0) for r in records)),
    }
    atomic_write_json(out / _REPORT, report)
    return report
