"""``dualattn prepare msd``: the Medical Segmentation Decathlon's Task01_BrainTumour -> the folder format.

The layout (Simpson et al., 2019; CC-BY-SA 4.0, derived from BraTS 2016/2017)::

    Task01_BrainTumour/
      dataset.json    {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
                       "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor",
                                  "3": "enhancing tumour"},
                       "training": [{"image": "./imagesTr/BRATS_001.nii.gz",
                                     "label": "./labelsTr/BRATS_001.nii.gz"}, ...], ...}
      imagesTr/BRATS_001.nii.gz   4-D NIfTI (X, Y, Z, 4): the four modalities
      labelsTr/BRATS_001.nii.gz   3-D NIfTI (X, Y, Z): 0 background, 1 edema, 2 non-enhancing, 3 enhancing

Only the ``training`` cases carry labels (``imagesTs`` has none and is not read). Every case is read in RAS
(:func:`~dualattn.data.read_volume`), its channels put in the order of ``prepare brats``
(:data:`CHANNELS`: T1, T1ce, T2, FLAIR -- MSD's ``T1w``, ``t1gd``, ``T2w``, ``FLAIR``; the names in
``dataset.json``'s ``modality`` decide, so a reordered file is read right), each z-scored over its brain
(non-zero) voxels with the background kept 0, and the whole tumor (label > 0) is the mask. The patient id is
the case name (``BRATS_001``).

``mode="2d"``: the paper's halves, cut exactly as :func:`~dualattn.data.prepare_brats` cuts them
(:func:`~dualattn.data.brats.write_halves`): axial slices with more than ``min_area`` tumor pixels, cut at the
tumor's edge nearest the centre into a tumor part (label 1) and a tumor-free part (label 0), in the
radiological view (``dataset.json``: ``"orientation": "radiological"``).

``mode="3d"``: volumes cut around the brain (bounding box of its non-zero voxels plus ``margin`` voxels),
zero-padded to keep the voxels isotropic, and resized to ``size`` (area averaging when shrinking; the mask
averaged the same way and thresholded at 0.5), kept in RAS (``"orientation": "RAS"``). MSD has a tumor in
every training case, so whole volumes are all positives; ``negatives`` says where the negatives come from:

* ``"hemisphere"`` (default): the brain is cut at its mid-sagittal plane (the middle of its left-right
  extent) into two hemisphere volumes of ``(size // 2, size, size)``: the one holding the tumor is label 1
  (whole-tumor mask), the other, tumor-free, label 0 (empty mask) -- the 2-D paper's healthy-half idea in
  3-D, with both halves of one shape so that a box's size says nothing about its label. Cases whose tumor
  crosses the midline give no item (``cases_crossing_midline`` in the report). Hemispheres stay in RAS
  (not mirrored): left and right halves of either label occur about equally (``tumor_side`` in the report).
* ``"none"``: one ``size^3`` volume per case, label 1 when it has a tumor (all of MSD's): a set for scoring
  maps of real tumors (activation precision, AP) on positives, not for training a tumor / no-tumor classifier
  (the report's ``class_counts`` says so; bring negatives from elsewhere).

Bad cases (an image or label that is missing, unreadable, not 4 channels, of another grid than its image,
labels outside ``dataset.json``'s ``labels``, no brain voxel) are skipped and listed in
``prepare_report.json``; finished cases leave a marker in ``.cases/`` so a re-run resumes (and retries the bad
ones). A re-run with other settings into the same folder is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["CHANNELS", "MODES", "NEGATIVES", "prepare_msd", "read_msd_task"]

logger = logging.getLogger(__name__)

#: Output channel order (that of ``prepare brats``, so models and runs carry over between the two).
CHANNELS: tuple[str, ...] = ("T1", "T1ce", "T2", "FLAIR")
#: ``dataset.json`` modality names (lower case) -> output channel.
MODALITY_NAMES: dict[str, str] = {
    "t1w": "T1", "t1": "T1", "t1n": "T1", "t1gd": "T1ce", "t1ce": "T1ce", "t1c": "T1ce", "t1-gd": "T1ce",
    "t2w": "T2", "t2": "T2", "flair": "FLAIR", "t2f": "FLAIR", "t2-flair": "FLAIR",
}
MODES: tuple[str, ...] = ("2d", "3d")
NEGATIVES: tuple[str, ...] = ("hemisphere", "none")
_MARKERS = ".cases"
_SETTINGS = "settings.json"
_REPORT = "prepare_report.json"
_SOURCE = "Medical Segmentation Decathlon, Task01_BrainTumour (CC-BY-SA 4.0; derived from BraTS 2016/2017)"


def _task_json(raw: Path) -> Path:
    for candidate in (raw / "dataset.json", raw / "Task01_BrainTumour" / "dataset.json"):
        if candidate.is_file():
            return candidate
    raise DataError(raw, "no dataset.json here or in Task01_BrainTumour/ (expected the Medical Segmentation "
                         "Decathlon's Task01_BrainTumour folder)")


def read_msd_task(raw: str | os.PathLike[str]) -> tuple[Path, list[int], list[tuple[str, Path, Path]], set[int]]:
    """Read a Task01_BrainTumour ``dataset.json``.

    Args:
        raw: the task folder (or its parent).

    Returns:
        ``(task folder, order, cases, labels)``: ``order[k]`` is the file channel of output channel
        ``CHANNELS[k]``; ``cases`` are ``(case id, image path, label path)`` in ``training`` order; ``labels``
        the label values ``dataset.json`` declares (``{0, 1, 2, 3}`` when it has no ``labels``).

    Raises:
        DataError: no ``dataset.json``, not JSON, no ``training`` list, a modality that is not one of the
            four, or a case id listed twice.
    """
    path = _task_json(Path(raw))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot parse JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise DataError(path, "must hold a JSON object with a \"training\" list of {\"image\", \"label\"}")
    modality = meta.get("modality")
    if not isinstance(modality, dict):
        raise DataError(path, "has no \"modality\" mapping (expected {\"0\": \"FLAIR\", \"1\": \"T1w\", "
                              "\"2\": \"t1gd\", \"3\": \"T2w\"})")
    found: dict[str, int] = {}
    for key, name in modality.items():
        channel = MODALITY_NAMES.get(str(name).strip().lower())
        if channel is None or not str(key).isdigit() or channel in found:
            raise DataError(path, f"modality {key!r}: {name!r} is not one of FLAIR, T1w, t1gd, T2w (or is "
                                  f"listed twice): {modality}")
        found[channel] = int(key)
    missing = [c for c in CHANNELS if c not in found]
    if missing:
        raise DataError(path, f"modality lacks {missing}: {modality}")
    labels = {0, 1, 2, 3}
    if isinstance(meta.get("labels"), dict):
        try:
            labels = {int(k) for k in meta["labels"]}
        except ValueError:
            raise DataError(path, f"labels keys must be integers: {meta['labels']}") from None
    task = path.parent
    cases: list[tuple[str, Path, Path]] = []
    seen: set[str] = set()
    for k, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or \
                not isinstance(entry.get("label"), str):
            raise DataError(path, f"training[{k}] must be {{\"image\": ..., \"label\": ...}}; got {entry!r}")
        image = (task / entry["image"]).resolve()
        case = image.name.split(".nii")[0]
        if case in seen:
            raise DataError(path, f"case {case!r} is listed twice in \"training\"")
        seen.add(case)
        cases.append((case, image, (task / entry["label"]).resolve()))
    if not cases:
        raise DataError(path, "\"training\" lists no case")
    return task, [found[c] for c in CHANNELS], cases, labels


# ----------------------------------------------------------------------------------------- one case


def _read_case(image_path: Path, label_path: Path, order: list[int], labels: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(image (4, X, Y, Z) normalized, channels in CHANNELS order; label (X, Y, Z) int)``; DataError if bad."""
    from .brats import _normalize_brain
    from .readers import read_volume

    for what, p in (("image", image_path), ("label", label_path)):
        if not p.is_file():
            raise DataError(p, f"{what} file listed in dataset.json does not exist")
    arr, geo = read_volume(image_path)
    if arr.ndim != 4 or arr.shape[0] != len(order):
        raise DataError(image_path, f"expected a 4-D NIfTI (X, Y, Z, {len(order)}), read channels-first shape "
                                    f"{arr.shape}")
    lab, lgeo = read_volume(label_path)
    if lab.ndim != 4 or lab.shape[0] != 1:
        raise DataError(label_path, f"expected a 3-D label volume, read shape {lab.shape}")
    if lab.shape[1:] != arr.shape[1:] or not np.allclose(lgeo.affine, geo.affine, atol=1e-3):
        raise DataError(label_path, f"label grid {lab.shape[1:]} differs from the image's {arr.shape[1:]} "
                                    f"(shape or affine)")
    values = np.unique(lab)
    bad = [int(v) if v == int(v) else v for v in values.tolist() if v != int(v) or int(v) not in labels]
    if bad:
        raise DataError(label_path, f"label values {bad[:6]} are not among dataset.json's labels {sorted(labels)}")
    image = np.stack([_normalize_brain(arr[c]) for c in order])
    return image, lab[0].astype(np.int16)


def _crop(arr: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """``arr[..., start:start + size]`` over the last ``len(start)`` axes, zero where it leaves the array."""
    lead = arr.shape[: arr.ndim - len(start)]
    out = np.zeros(lead + tuple(size), dtype=arr.dtype)
    src, dst = [], []
    for s, n, full in zip(start, size, arr.shape[arr.ndim - len(start):]):
        lo, hi = max(s, 0), min(s + n, full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(Ellipsis, *dst)] = arr[(Ellipsis, *src)]
    return out


def _resize3d(arr: np.ndarray, size: tuple[int, ...], *, is_mask: bool) -> np.ndarray:
    """``(C, *S) -> (C, *size)``: area averaging along shrinking axes, trilinear otherwise; masks thresholded."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    if tuple(x.shape[2:]) != tuple(size):
        if all(t <= s for t, s in zip(size, x.shape[2:])):
            x = F.adaptive_avg_pool3d(x, size)
        else:
            x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    out = x[0].numpy()
    return (out > 0.5).astype(np.uint8) if is_mask else out.astype(np.float32)


def _write_3d(case: str, image: np.ndarray, seg: np.ndarray, out: Path, *, size: int, margin: int,
              negatives: str) -> dict[str, Any]:
    from .folder import _save_npy

    brain = (image != 0).any(axis=0)
    if not brain.any():
        raise DataError(None, f"case {case}: no brain voxel (every channel is 0)")
    idx = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    lo = [int(i[0]) - margin for i in idx]
    hi = [int(i[-1]) + 1 + margin for i in idx]
    rows: list[dict[str, str]] = []

    def write_item(name: str, img: np.ndarray, msk: np.ndarray, label: int, shape: tuple[int, ...]) -> None:
        _save_npy(out / "images" / f"{name}.npy", _resize3d(img, shape, is_mask=False))
        _save_npy(out / "masks" / f"{name}.npy", _resize3d(msk[None].astype(np.float32), shape, is_mask=True))
        rows.append({"image": f"images/{name}.npy", "label": str(label), "mask": f"masks/{name}.npy",
                     "patient": case})

    if negatives == "none":
        side = max(h - l for l, h in zip(lo, hi))
        start = tuple((l + h) // 2 - side // 2 for l, h in zip(lo, hi))
        box = (side,) * 3
        write_item(case, _crop(image, start, box), _crop(seg, start, box), int(seg.any()), (size,) * 3)
        return {"case": case, "rows": rows}
    mid = (lo[0] + hi[0]) // 2  # the mid-sagittal plane: the middle of the brain's left-right extent
    left, right = bool(seg[:mid].any()), bool(seg[mid:].any())
    if left and right:
        return {"case": case, "rows": rows, "crossing_midline": True}
    side = max(hi[1] - lo[1], hi[2] - lo[2], 2 * max(mid - lo[0], hi[0] - mid))
    side += side % 2
    yz = tuple((l + h) // 2 - side // 2 for l, h in zip(lo[1:], hi[1:]))
    box = (side // 2, side, side)
    shape = (size // 2, size, size)
    for tag, x0, has in (("left", mid - side // 2, left), ("right", mid, right)):
        start = (x0, *yz)
        label = int(has)
        write_item(f"{case}_{tag}_{'tumor' if label else 'clean'}", _crop(image, start, box), _crop(seg, start, box),
             label, shape)
    side_name = "left" if left else ("right" if right else None)
    return {"case": case, "rows": rows, "tumor_side": side_name}


def _process(job: tuple) -> tuple[str, dict[str, Any] | None, str | None]:
    case, image_path, label_path, order, labels, out, settings = job
    try:
        image, lab = _read_case(image_path, label_path, order, labels)
        seg = lab > 0
        if settings["mode"] == "2d":
            from .brats import write_halves

            rows, skipped = write_halves(case, image, seg, out, min_area=settings["min_area"], size=settings["size"],
                                         min_width=settings["min_width"])
            rec: dict[str, Any] = {"case": case, "rows": rows, "slices_skipped_midline": skipped}
        else:
            rec = _write_3d(case, image, seg, out, size=settings["size"], margin=settings["margin"],
                            negatives=settings["negatives"])
    except DataError as exc:
        return case, None, str(exc)
    from .._io import atomic_write_json

    atomic_write_json(out / _MARKERS / f"{case}.json", rec)
    return case, rec, None


# ----------------------------------------------------------------------------------------- the command


def prepare_msd(
    raw: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mode: str = "2d",
    size: int | None = None,
    min_area: int = 1000,
    min_width: float = 0.25,
    negatives: str = "hemisphere",
    margin: int = 4,
    workers: int = 1,
) -> dict[str, Any]:
    """Convert Task01_BrainTumour's labelled cases into the folder format (module docstring).

    Args:
        raw: the ``Task01_BrainTumour`` folder (or its parent).
        out: destination folder (created; re-running resumes).
        mode: ``"2d"`` (the paper's tumor / no-tumor halves) or ``"3d"`` (volumes around the brain).
        size: 2-D: resize each half to ``size x size`` (``None``: native height and part width). 3-D: the
            side of the output volume (default 64; hemispheres are ``(size // 2, size, size)``; even, >= 16).
        min_area: 2-D: keep axial slices with more tumor pixels than this (the paper: 1000).
        min_width: 2-D: smallest tumor-free part, as a fraction of the slice width.
        negatives: 3-D: ``"hemisphere"`` or ``"none"`` (module docstring).
        margin: 3-D: voxels kept around the brain's bounding box.
        workers: parallel processes (1 = in this process).

    Returns:
        The report, also written to ``out/prepare_report.json``: ``mode``, ``cases_total``, ``cases_done``,
        ``cases_skipped_resume``, ``bad_cases`` (``[{"case", "problem"}]``), ``items``, ``class_counts``
        (``[no_tumor, tumor]``), ``channel_names`` and, for 2-D, ``slices_skipped_midline``; for 3-D
        hemispheres ``cases_crossing_midline`` and ``tumor_side`` (``{"left": n, "right": n}``).

    Raises:
        DataError: ``raw`` has no usable ``dataset.json``.
        ValueError: a bad option, or ``out`` prepared with other settings.
    """
    from .._io import atomic_write_json
    from .folder import FolderWriter

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {NEGATIVES}; got {negatives!r}")
    if min_area < 0 or not 0 < min_width < 0.5 or workers < 1 or margin < 0:
        raise ValueError(f"need min_area >= 0, 0 < min_width < 0.5, workers >= 1, margin >= 0; got {min_area}, "
                         f"{min_width}, {workers}, {margin}")
    if mode == "3d":
        size = 64 if size is None else size
        if size < 16 or size % 2:
            raise ValueError(f"3-D size must be an even number >= 16; got {size}")
    elif size is not None and size < 8:
        raise ValueError(f"size must be >= 8 or None; got {size}")
    settings: dict[str, Any] = {"mode": mode, "size": size}
    if mode == "2d":
        settings.update(min_area=int(min_area), min_width=float(min_width))
    else:
        settings.update(negatives=negatives, margin=int(margin))
    _, order, cases, labels = read_msd_task(raw)
    out = Path(out)
    markers = out / _MARKERS
    markers.mkdir(parents=True, exist_ok=True)
    saved = markers / _SETTINGS
    if saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8"))
        if before != settings:
            raise ValueError(f"{out} was prepared with other settings ({before}); these are {settings}: choose "
                             f"another output folder")
    else:
        atomic_write_json(saved, settings)
    todo, resumed = [], 0
    for case, image, label in cases:
        if (markers / f"{case}.json").is_file():
            resumed += 1
        else:
            todo.append((case, image, label, order, labels, out, settings))
    if workers > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
            results = list(pool.map(_process, todo))
    else:
        results = [_process(job) for job in todo]
    bad: list[dict[str, str]] = []
    done = 0
    for case, rec, err in results:
        if err is not None:
            bad.append({"case": case, "problem": err})
            logger.warning("skipping MSD case %s: %s", case, err)
        else:
            done += 1
            logger.info("MSD case %s: %d item(s)", case, len(rec["rows"]) if rec else 0)
    wanted = {case for case, _, _ in cases}
    records = [json.loads(m.read_text(encoding="utf-8")) for m in sorted(markers.glob("*.json"))
               if m.name != _SETTINGS and m.stem in wanted]
    meta = {"name": f"prepared-msd-{mode}", "source": _SOURCE, "orientation": "radiological" if mode == "2d" else "RAS",
            **settings}
    writer = FolderWriter(out, class_names=("no_tumor", "tumor"), channel_names=CHANNELS, meta=meta)
    for rec in records:
        writer.rows.extend(rec["rows"])
    if writer.rows:
        if mode == "3d":
            writer._shape = (4, size, size, size) if negatives == "none" else (4, size // 2, size, size)  # type: ignore[operator]
        elif size is not None:
            writer._shape = (4, size, size)
    writer.close()
    if mode == "2d" and size is None:  # native sizes vary per half: no image_size entry
        folder_meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
        folder_meta.pop("image_size", None)
        atomic_write_json(out / "dataset.json", folder_meta)
    counts = [sum(1 for r in writer.rows if r["label"] == str(k)) for k in (0, 1)]
    report: dict[str, Any] = {
        "mode": mode,
        "cases_total": len(cases),
        "cases_done": done,
        "cases_skipped_resume": resumed,
        "bad_cases": bad,
        "items": len(writer.rows),
        "class_counts": counts,
        "channel_names": list(CHANNELS),
    }
    if mode == "2d":
        report["slices_skipped_midline"] = int(sum(r.get("slices_skipped_midline", 0) for r in records))
    elif negatives == "hemisphere":
        report["cases_crossing_midline"] = sum(1 for r in records if r.get("crossing_midline"))
        report["tumor_side"] = {s: sum(1 for r in records if r.get("tumor_side") == s) for s in ("left", "right")}
    if writer.rows and min(counts) == 0:
        report["note"] = (f"only one class ({'tumor' if counts[1] else 'no_tumor'}): a set for scoring maps on "
                          "positives, not for training a classifier")
    atomic_write_json(out / _REPORT, report)
    return report
