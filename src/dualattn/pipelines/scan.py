"""Explain one scan with a trained run: the predicted class, its probability, and the heatmap written
back in the scan's own geometry (what a clinician opens next to the original file).

Pipeline for one file (PNG/JPG, NPY, NIfTI, DICOM, NRRD — whatever :func:`dualattn.data.read_volume`
reads):

1. read the scan ``(C, *S)`` and its geometry (e.g. the NIfTI affine);
2. bring it to the model: channels averaged or repeated to ``in_channels``; resized (trilinear/bilinear)
   to the run's training size when it differs, with a note; normalized per sample like the training data;
   a 3-D volume given to a 2-D model is explained slice by slice along its last axis;
3. ``forward`` -> softmax -> predicted class and probability;
4. ``dualattn.explain.explain(model, x, method=..., block=..., target=predicted)`` -> map ``(1, 1, *grid)``;
5. the map is resized to the scan's grid (linear interpolation, scaled by ``cells(map) / voxels(scan)``
   so the total mass is kept up to interpolation) and written as NPY, as NIfTI with the scan's affine
   (for NIfTI inputs, or whenever the geometry has an affine), and as an overlay PNG with the prediction.

Example:
    >>> from dualattn.pipelines.scan import explain_scan, write_scan_explanation  # doctest: +SKIP
    >>> result = explain_scan("case.nii.gz", run="runs/exact/seed0", method="exact")  # doctest: +SKIP
    >>> write_scan_explanation(result, "out/")  # doctest: +SKIP

Output file names: ``scan-<first 12 hex digits of the content SHA-256>.*`` by default (the same digest
the prediction JSON records), never the scan's file or folder name, which often carry patient
identifiers; ``keep_name=True`` (CLI ``--keep-name``) opts in to naming them after the scan, and
``stem=`` (CLI ``--name``) sets the name explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._io import atomic_path, atomic_write_bytes, atomic_write_json
from ..data import read_volume
from ..data.readers import write_nifti
from ..data.transforms import normalize
from ..evaluate.testset import fit_to_model
from ..explain import explain, list_methods
from ..report.figures import overlay_png
from ..runs import RunDir

logger = logging.getLogger(__name__)

__all__ = ["ScanExplanation", "explain_scan", "write_scan_explanation", "run_input_size", "run_class_names",
           "scan_to_model_input", "map_to_scan_grid", "scan_record"]


@dataclasses.dataclass
class ScanExplanation:
    """Everything known about one explained scan.

    Attributes:
        scan_path: the input file.
        run: the run folder of the model used.
        method: the explanation method.
        block: the block whose map was explained.
        predicted_class: argmax of the model's probabilities.
        class_name: the class's name when the run records names, else ``str(predicted_class)``.
        probability: softmax probability of the predicted class (for volumes explained slice by slice:
            of the slice with the highest positive-class probability; see ``notes``).
        probabilities: all class probabilities.
        scan: the scan as read, ``(C, *S)`` float32.
        heatmap: the map on the scan's grid, ``S`` float32.
        heatmap_model: the map on the model's grid, ``grid`` (or ``(slices, *grid)`` slice-wise).
        model_input_shape: spatial shape the model saw.
        geometry: the reader's geometry (affine etc.), passed through to the writer.
        notes: human-readable remarks (resizing, channel conversion, slice-wise processing).
        record_path: write the scan's path into :meth:`summary` (and so the prediction JSON). Off by
            default: folder and file names often carry patient identifiers; the summary then records
            the scan's format and a SHA-256 of its content only (:func:`scan_record`).
    """

    scan_path: Path
    run: Path
    method: str
    block: str
    predicted_class: int
    class_name: str
    probability: float
    probabilities: list[float]
    scan: np.ndarray
    heatmap: np.ndarray
    heatmap_model: np.ndarray
    model_input_shape: tuple[int, ...]
    geometry: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)
    record_path: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-serializable summary (no arrays); ``scan`` is :func:`scan_record` of the input."""
        if getattr(self, "_scan_record", None) is None:
            self._scan_record = scan_record(self.scan_path)
        record = dict(self._scan_record)
        if self.record_path:
            record["path"] = str(self.scan_path)
        return {
            "scan": record,
            "run": str(self.run),
            "method": self.method,
            "block": self.block,
            "predicted_class": int(self.predicted_class),
            "class_name": self.class_name,
            "probability": float(self.probability),
            "probabilities": [float(p) for p in self.probabilities],
            "scan_shape": list(self.scan.shape),
            "model_input_shape": list(self.model_input_shape),
            "heatmap_shape": list(self.heatmap.shape),
            "heatmap_model_shape": list(self.heatmap_model.shape),
            "notes": list(self.notes),
        }


def scan_record(path: str | os.PathLike[str]) -> dict[str, str]:
    """What the prediction JSON says about its input: the format and a content digest, never the path.

    Args:
        path: the scan file, or a DICOM series folder.

    Returns:
        ``{"format": "png" | "nii.gz" | ... | "dicom-series", "sha256": hex}``. For a folder the digest is
        the SHA-256 of the sorted SHA-256 digests of its (non-hidden) files, so file names do not count.
    """
    def digest(f: Path) -> str:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    p = Path(path)
    if p.is_dir():
        parts = sorted(digest(f) for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
        return {"format": "dicom-series", "sha256": hashlib.sha256("\n".join(parts).encode()).hexdigest()}
    name = p.name.lower()
    fmt = "nii.gz" if name.endswith(".nii.gz") else (p.suffix.lower().lstrip(".") or "unknown")
    return {"format": fmt, "sha256": digest(p)}


def _default_method(model: Any) -> str:
    """The run's own map: the variant-named attention method (e.g. ``exact``, ``dual``, ``tau_l``: mu where
    the variant has it, else tau) for a gated model, ``attention`` for a gated model of an unlisted variant,
    ``gradcam`` for one without gates (the baseline)."""
    if not tuple(getattr(model, "attention_blocks", ()) or ()):
        return "gradcam"
    variant = (getattr(model, "config", {}) or {}).get("variant")
    return variant if isinstance(variant, str) and variant in list_methods() else "attention"


def run_input_size(run: str | os.PathLike[str]) -> tuple[int, ...] | None:
    """The spatial input size a run was trained at (from its ``config.yaml``), or ``None`` if not recorded.

    Args:
        run: run folder (``config.yaml``, ``best.safetensors`` ...).

    Returns:
        A tuple of ints, e.g. ``(64, 64)``, or ``None`` (:attr:`dualattn.runs.RunDir.recorded_size`).
    """
    return RunDir(run).recorded_size


def run_class_names(run: str | os.PathLike[str]) -> list[str] | None:
    """Class names recorded in a run's ``summary.json``/``config.yaml`` or in its training dataset's
    ``dataset.json``, or ``None`` (:attr:`dualattn.runs.RunDir.class_names`)."""
    return RunDir(run).class_names


def _normalize_per_sample(x: Any, *, method: str = "zscore") -> Any:
    """Per-sample, per-channel normalization of a batch ``(1, C, *S)`` like the folder datasets'."""
    return normalize(x[0], method=method)[None]


def scan_to_model_input(scan: np.ndarray, *, in_channels: int, size: Sequence[int] | None,
                        notes: list[str] | None = None, normalization: str = "zscore") -> Any:
    """Turn a scan ``(C, *S)`` into a model batch ``(1, in_channels, *size)`` float32 tensor.

    Channels and grid are fitted by the one rule the evaluation uses too
    (:func:`dualattn.evaluate.testset.fit_to_model`: several channels averaged into a single-channel model, one
    channel repeated, the grid resized as training resizes); intensities are then normalized per sample and
    channel.

    Args:
        scan: array ``(C, *S)``.
        in_channels: the model's input channels.
        size: the training grid, or ``None`` to keep ``S``.
        notes: list that receives a sentence per conversion.
        normalization: ``"zscore"`` (the datasets' default), ``"minmax"`` or ``"none"``.

    Returns:
        Tensor ``(1, in_channels, *size)``.

    Raises:
        ValueError: on a channel count that cannot be converted or a size of the wrong dimensionality.
    """
    notes = notes if notes is not None else []
    arr = np.asarray(scan, dtype=np.float32)
    if arr.ndim < 3:
        raise ValueError(f"scan must be channels-first (C, *spatial), got shape {arr.shape}")
    x = torch.from_numpy(np.nan_to_num(arr)).unsqueeze(0)
    x, fit_notes = fit_to_model(x, in_channels=in_channels, size=size, normalization=None)
    notes.extend(fit_notes)
    return _normalize_per_sample(x, method=normalization)


def map_to_scan_grid(heatmap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a map ``grid`` to the scan grid ``shape`` keeping its total mass (up to interpolation).

    Linear interpolation (``align_corners=False``), then scaled by ``prod(grid) / prod(shape)`` so that a
    constant map keeps its sum exactly.

    Args:
        heatmap: array ``grid`` (2-D or 3-D).
        shape: the scan's spatial shape, same dimensionality.

    Returns:
        float32 array of ``shape``.

    Raises:
        ValueError: if the dimensionalities differ.
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if hm.ndim != len(shape):
        raise ValueError(f"map of shape {hm.shape} cannot be resized to a {len(shape)}-D grid {shape}")
    if hm.shape == shape:
        return hm.copy()
    t = torch.from_numpy(np.ascontiguousarray(hm))[None, None]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(len(shape))
    if mode is None:
        raise ValueError(f"maps must be 1-, 2- or 3-D, got {hm.ndim}-D")
    out = F.interpolate(t, size=shape, mode=mode, align_corners=False)[0, 0].numpy()
    return (out * (hm.size / out.size)).astype(np.float32)


def _model_meta(model: Any) -> tuple[int, int]:
    cfg = getattr(model, "config", {}) or {}
    return int(cfg.get("in_channels", 1)), int(cfg.get("spatial_dims", 2))


def _default_block(model: Any, block: str | None) -> str:
    if block is not None:
        return block
    blocks = tuple(getattr(model, "map_blocks", ()) or getattr(model, "attention_blocks", ()) or ())
    return "block3" if not blocks or "block3" in blocks else blocks[0]


def explain_scan(scan: str | os.PathLike[str], *, run: str | os.PathLike[str], method: str | None = None,
                 block: str | None = None, which: str = "best", target: int | None = None,
                 size: Sequence[int] | None = None) -> ScanExplanation:
    """Predict and explain one scan with a trained run.

    Args:
        scan: image or volume file (PNG/JPG/NPY/NIfTI/DICOM/NRRD).
        run: a run folder written by :func:`dualattn.train.fit`.
        method: explanation method (see :func:`dualattn.explain.list_methods`), e.g. ``"exact"``,
            ``"attention"``, ``"gradcam"``, ``"ig"``. Default: the run's own attention map (the method named
            after its variant, e.g. ``"exact"``, ``"dual"``, ``"tau_l"``) for a gated variant, ``"gradcam"`` for
            a baseline without gates.
        block: block to explain; default ``"block3"`` (the paper's fine gate) when the model has it.
        which: ``"best"`` or ``"last"`` checkpoint.
        target: class to explain; default the predicted class.
        size: model input size; default the run's training size (``config.yaml``), else the scan's own.

    Returns:
        A :class:`ScanExplanation`.

    Raises:
        ValueError: on an unknown method, a missing run or an unreadable scan (``DataError``).
        FileNotFoundError: the run has no weights file ``which``.
    """
    scan_path = Path(scan)
    run_dir = Path(run)
    if not scan_path.exists():
        raise ValueError(f"scan {scan_path} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist")
    methods = list(list_methods())
    if method is not None and method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods)}")

    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run_info = RunDir(run_dir)
    model = run_info.load_model(which)
    if method is None:
        method = _default_method(model)
    gated = tuple(getattr(model, "attention_blocks", ()) or ())
    variant = (getattr(model, "config", {}) or {}).get("variant")
    if block is None and method in ("attention", variant) and gated and "block3" not in gated:
        block = gated[0]  # e.g. a tau_l run gates only block4: its attention map is there
    in_channels, model_dims = _model_meta(model)
    array, geometry = read_volume(scan_path)
    array = np.asarray(array, dtype=np.float32)
    notes: list[str] = []
    if size is None:
        size = run_info.recorded_size
    spatial = tuple(array.shape[1:])
    if size is None:
        size = _bounded_size(spatial[:model_dims] if len(spatial) > model_dims else spatial, notes)
    if len(spatial) == model_dims:
        x = scan_to_model_input(array, in_channels=in_channels, size=size, notes=notes)
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1)[0]
        pred = int(probs.argmax())
        tgt = pred if target is None else int(target)
        blk = _default_block(model, block)
        hm = explain(model, x, method=method, block=blk, target=torch.tensor([tgt]))
        hm_model = hm.detach().float().cpu().numpy()[0, 0]
        heatmap = map_to_scan_grid(hm_model, spatial)
    elif len(spatial) == 3 and model_dims == 2:
        notes.append(f"a {spatial[0]}x{spatial[1]}x{spatial[2]} volume given to a 2-D model: each slice along the "
                     "last axis was classified and explained separately; the reported class is that of the "
                     "slice most confidently positive")
        blk = _default_block(model, block)
        slice_probs, slice_maps = [], []
        for k in range(spatial[2]):
            sl = array[..., k]
            x = scan_to_model_input(sl, in_channels=in_channels, size=size, notes=[] if k else notes)
            with torch.no_grad():
                p = torch.softmax(model(x).float(), dim=1)[0]
            slice_probs.append(p)
            tgt = int(p.argmax()) if target is None else int(target)
            m = explain(model, x, method=method, block=blk, target=torch.tensor([tgt]))
            slice_maps.append(m.detach().float().cpu().numpy()[0, 0])
        all_probs = torch.stack(slice_probs)
        pos = all_probs[:, -1] if all_probs.shape[1] > 1 else all_probs[:, 0]
        best = int(pos.argmax())
        probs = all_probs[best]
        pred = int(probs.argmax())
        hm_model = np.stack(slice_maps)
        heatmap = np.stack([map_to_scan_grid(m, spatial[:2]) for m in slice_maps], axis=-1)
    else:
        raise ValueError(f"scan {scan_path} has a {len(spatial)}-D grid {spatial} but the model is {model_dims}-D")
    names = run_info.class_names
    class_name = names[pred] if names and pred < len(names) else str(pred)
    return ScanExplanation(
        scan_path=scan_path, run=run_dir, method=method, block=blk, predicted_class=pred, class_name=class_name,
        probability=float(probs[pred]), probabilities=[float(p) for p in probs], scan=array,
        heatmap=heatmap.astype(np.float32), heatmap_model=np.asarray(hm_model, dtype=np.float32),
        model_input_shape=tuple(int(s) for s in x.shape[2:]), geometry=geometry, notes=notes,
    )


#: Largest grid a model is run on when the run records no training size (2-D: 512x512, 3-D: 128^3):
#: bigger scans are shrunk (aspect kept) so that memory stays bounded, with a note.
MAX_MODEL_VOXELS = {2: 512 * 512, 3: 128**3}


def _bounded_size(spatial: Sequence[int], notes: list[str]) -> tuple[int, ...] | None:
    """``None`` (keep the scan's grid) when it fits :data:`MAX_MODEL_VOXELS`, else a shrunk grid."""
    cap = MAX_MODEL_VOXELS.get(len(spatial))
    n = int(np.prod(spatial))
    if cap is None or n <= cap:
        return None
    factor = (cap / n) ** (1.0 / len(spatial))
    # multiples of 32: every backbone's total downsampling (U-Net 16, ResNet 32, ViT patches 16) divides them
    size = tuple(max(32, int(s * factor) // 32 * 32) for s in spatial)
    notes.append(f"the run records no training size and the scan grid {'x'.join(map(str, spatial))} exceeds "
                 f"{cap} voxels: the model sees it at {'x'.join(map(str, size))} to bound memory")
    return size


def _wants_nifti(result: ScanExplanation) -> bool:
    """A NIfTI heatmap is written for volumetric formats, or any scan whose affine is not the identity."""
    geo = result.geometry
    fmt = str(getattr(geo, "format", "")).lower()
    if fmt in {"nifti", "dicom", "nrrd"} or _is_nifti(result.scan_path):
        return True
    affine = getattr(geo, "affine", None)
    return affine is not None and not np.allclose(np.asarray(affine, dtype=np.float64), np.eye(4))


def _is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _validate_stem(stem: str) -> str:
    """An explicit file-name stem: non-empty, one path component, no NUL."""
    if not isinstance(stem, str) or not stem or stem in (".", "..") or any(c in stem for c in "/\\\0"):
        raise ValueError(f"invalid output name (stem) {stem!r}: it must be a non-empty file name without "
                         "path separators ('/', '\\'), NUL, and not '.' or '..'")
    return stem


def _scan_name_stem(path: Path) -> str:
    """The scan's file name without its extension (the old default; opt-in via ``keep_name``)."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".npy", ".dcm", ".nrrd"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name or "scan"


def write_scan_explanation(result: ScanExplanation, out: str | os.PathLike[str], *,
                           stem: str | None = None, keep_name: bool = False) -> dict[str, Path]:
    """Write the prediction JSON, the heatmap (NPY, NIfTI in the scan's geometry) and an overlay PNG.

    Files:
        ``{stem}.prediction.json``  class, probability, shapes, notes, file names;
        ``{stem}.heatmap.npy``      the map on the scan grid ``S``;
        ``{stem}.heatmap.nii.gz``   the same map with the scan's affine (NIfTI/DICOM/NRRD scans, or any
                                    scan whose affine is not the identity);
        ``{stem}.overlay.png``      the scan (middle slice of the map's peak for volumes) with the heatmap.

    ``stem`` defaults to ``scan-`` + the first 12 hex digits of the scan's content SHA-256 (the digest
    of :func:`scan_record`, also in the JSON): deterministic, and free of the scan's file and folder
    names, which often carry patient identifiers.

    Args:
        result: from :func:`explain_scan`.
        out: output folder (created).
        stem: explicit file-name stem (wins over ``keep_name``); one file name: non-empty, no ``/`` or
            ``\\``, no NUL, not ``.`` or ``..``.
        keep_name: name the files after the scan's file name without extension (the old default) instead
            of its digest. Opt-in: file names often carry patient identifiers.

    Returns:
        Kind -> path written.

    Raises:
        ValueError: an invalid explicit ``stem``.
    """

    if stem is not None:
        stem = _validate_stem(stem)
    elif keep_name:
        stem = _scan_name_stem(result.scan_path)
    else:
        stem = "scan-" + result.summary()["scan"]["sha256"][:12]  # summary() caches the record: hashed once
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    npy = out_dir / f"{stem}.heatmap.npy"
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, result.heatmap)
    written["heatmap_npy"] = npy

    if _wants_nifti(result):
        nii = out_dir / f"{stem}.heatmap.nii.gz"
        write_nifti(nii, result.heatmap.astype(np.float32), geometry=result.geometry)
        written["heatmap_nifti"] = nii

    scan2d, map2d = result.scan, result.heatmap
    if result.heatmap.ndim == 3:
        k = int(np.argmax(np.abs(result.heatmap).reshape(-1, result.heatmap.shape[-1]).sum(axis=0)))
        scan2d, map2d = result.scan[..., k], result.heatmap[..., k]
    title = f"{result.class_name} (p={result.probability:.2f}) · {result.method}"
    png = out_dir / f"{stem}.overlay.png"
    atomic_write_bytes(png, overlay_png(scan2d, map2d, title=title, size_inches=4.0))
    written["overlay_png"] = png

    summary = result.summary()
    summary["files"] = {k: p.name for k, p in written.items()}
    js = out_dir / f"{stem}.prediction.json"
    atomic_write_json(js, summary)
    written["prediction_json"] = js
    logger.info("explained %s: class %s p=%.3f -> %s", js.name, result.class_name, result.probability, out_dir)
    return written
