"""Explaining one scan: the checks made before the model runs, then a 2-D image, a volume with a 3-D model, or a
volume slice by slice with a 2-D model (:func:`explain_scan`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...data import read_volume
from ...data.readers import PLANE_NAMES, edge_labels_from_cosines, radiological_view
from ...explain import METHOD_ALIASES, explain, get_method, list_methods, method_family
from ...report.figures import map_sharpness
from ...report.triplanar import peak_in_slice
from ...runs import RunDir
from .inputs import _bounded_size, fit_channels, map_to_scan_grid, model_meta, resolve_target, scan_to_model_input
from .result import AS_STORED, ScanExplanation, class_label
from .volumes import (
    BACKGROUND_FRACTION,
    CONVENTION,
    EDGE_LABELS,
    VOLUME_RULES,
    display_point,
    explain_volume_2d,
    instance_number,
    plane,
    resolve_axis,
    squeezed_axis,
)

__all__ = ["explain_scan", "CLASS_DEPENDENT_FAMILIES", "GATED_FAMILIES"]

#: Method families whose map depends on the class explained (``--target``); the others (a model's attention,
#: its post-hoc projection, a ViT's attention, the controls) give one map whatever the class.
CLASS_DEPENDENT_FAMILIES: tuple[str, ...] = ("posthoc",)
#: Method families (and controls) that need a model with attention gates.
GATED_FAMILIES: tuple[str, ...] = ("attention", "cvx")
_GATED_CONTROLS = ("prior", "dual_tau")
#: What to use instead of an attention map on a run without gates.
_POSTHOC_HINT = "a post-hoc method (--method gradcam, lrp or ig)"


def _default_method(model: Any) -> str:
    """The run's own map: the variant-named attention method (e.g. ``exact``, ``dual``, ``tau_l``: mu where
    the variant has it, else tau) for a gated model, ``attention`` for a gated model of an unlisted variant,
    ``gradcam`` for one without gates (the baseline)."""
    if not tuple(getattr(model, "attention_blocks", ()) or ()):
        return "gradcam"
    variant = (getattr(model, "config", {}) or {}).get("variant")
    return variant if isinstance(variant, str) and variant in list_methods() else "attention"


def _default_block(model: Any, block: str | None) -> str:
    if block is not None:
        return block
    blocks = tuple(getattr(model, "map_blocks", ()) or getattr(model, "attention_blocks", ()) or ())
    return "block3" if not blocks or "block3" in blocks else blocks[0]


def _check_method_fits_run(method: str, model: Any, run_dir: Path, block: str) -> None:
    """Refuse, before anything runs, a method the run cannot give, saying what would work."""
    family = method_family(method)
    gated = tuple(getattr(model, "attention_blocks", ()) or ())
    variant = (getattr(model, "config", {}) or {}).get("variant")
    if (family in GATED_FAMILIES or method in _GATED_CONTROLS) and not gated:
        raise ValueError(f"method {method!r} shows an attention map, but run {run_dir} ({variant or 'no variant'}) "
                         f"has no attention gates: use {_POSTHOC_HINT} on it, or a run of a gated variant "
                         "(e.g. DEMO/runs/exact/seed0)")
    source = get_method(method).source_variant
    if family == "attention" and method != "attention" and variant is not None and source not in (None, variant):
        raise ValueError(f"method {method!r} is the map of a model of variant {method!r}, but run {run_dir} is of "
                         f"variant {variant!r}: use --method {variant} (or attention, its own map), cvx, or "
                         f"{_POSTHOC_HINT}")
    if family == "attention":
        blocks = tuple(getattr(model, "map_blocks", ()) or gated)
        if blocks and block not in blocks:
            numbers = ", ".join(b.replace("block", "") for b in blocks)
            raise ValueError(f"--block {block.replace('block', '')}: this run's attention maps are at block(s) "
                             f"{numbers}; give one of those")


def _target_note(method: str, target: int, names: list[str] | None, volume: bool) -> str | None:
    """The note saying that ``--target`` changes no map of a class-independent method."""
    if method_family(method) in CLASS_DEPENDENT_FAMILIES or get_method(method).uses_target:
        return None
    what = f"{target} ({names[target]!r})" if names and target < len(names) else str(target)
    return (f"--target {what}: method {method!r} gives the same map for every class, so the target changes no map"
            + ("; it picks the slice that decides the volume (volume rule max)" if volume else ""))


def explain_scan(scan: str | os.PathLike[str], *, run: str | os.PathLike[str], method: str | None = None,
                 block: str | None = None, which: str = "best", target: int | str | None = None,
                 size: Sequence[int] | None = None, axis: int | str | None = None, volume_rule: str = "max",
                 background: float = BACKGROUND_FRACTION, progress: bool = False) -> ScanExplanation:
    """Predict and explain one scan with a trained run.

    Args:
        scan: image or volume file (PNG/JPG/NPY/NIfTI/DICOM/NRRD) or a DICOM series folder.
        run: a run folder written by :func:`dualattn.train.fit`.
        method: explanation method or alias (see :func:`dualattn.explain.list_methods` and
            :data:`dualattn.explain.METHOD_ALIASES`), e.g. ``"exact"``, ``"attention"``, ``"gradcam"``,
            ``"ig"``. Default: the run's own attention map (the method named after its variant, e.g.
            ``"exact"``, ``"dual"``, ``"tau_l"``) for a gated variant, ``"gradcam"`` for a baseline.
        block: block to explain; default ``"block3"`` (the paper's fine gate) when the model has it.
        which: ``"best"`` or ``"last"`` checkpoint.
        target: class to explain, an index or one of the run's class names (checked against the model's
            classes); default the predicted class (for a volume: the volume's class). With
            ``volume_rule="max"`` it is also the class whose probability picks the deciding slice. Only
            post-hoc maps depend on it (:data:`CLASS_DEPENDENT_FAMILIES`); for the others a note says so.
        size: model input size; default the run's training size (``config.yaml``), else the scan's own.
        axis: for a volume and a 2-D model, the axis to cut: ``"axial"``, ``"coronal"``, ``"sagittal"``
            (oriented volumes), or ``0``/``1``/``2`` (axes of the array as read); default the axis the
            slices were acquired along (:attr:`dualattn.data.readers.Geometry.slice_axis`).
        volume_rule: ``"max"`` (default) or ``"mean"`` (:mod:`dualattn.pipelines.scan`).
        background: the background threshold of :func:`~dualattn.pipelines.scan.background_slices`.
        progress: show a progress bar on stderr while slices are explained (tqdm).

    Returns:
        A :class:`ScanExplanation`.

    Raises:
        ValueError: an unknown method, axis, volume rule or target, a method the run cannot give (an attention
            map of a run without gates), a missing run, an unreadable scan (``DataError``), a channel count
            the model cannot take, or a volume whose every slice is background; each message says what to
            give instead.
        FileNotFoundError: the run has no weights file ``which``.
    """
    scan_path = Path(scan)
    run_dir = Path(run)
    if not scan_path.exists():
        raise ValueError(f"scan {scan_path} does not exist: give an image or volume file, or a DICOM series folder")
    if not run_dir.is_dir():
        raise ValueError(f"run folder {run_dir} does not exist: give a folder written by `dualattn train` (one with "
                         "best.safetensors), e.g. DEMO/runs/exact/seed0 inside a demo folder")
    if method is not None:
        method = METHOD_ALIASES.get(method, method)
        get_method(method)  # ValueError naming the valid methods
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    if volume_rule not in VOLUME_RULES:
        raise ValueError(f"unknown volume rule {volume_rule!r}; choose one of {', '.join(VOLUME_RULES)}")
    if not 0.0 <= float(background) < 1.0:
        raise ValueError(f"background fraction must be in [0, 1), got {background}")
    if axis is not None:
        resolve_axis(axis, type("G", (), {"oriented": True})())  # the spelling, before the model loads
    run_info = RunDir(run_dir)
    model = run_info.load_model(which)
    if method is None:
        method = _default_method(model)
    gated = tuple(getattr(model, "attention_blocks", ()) or ())
    variant = (getattr(model, "config", {}) or {}).get("variant")
    if block is None and method in ("attention", variant) and gated and "block3" not in gated:
        block = gated[0]  # e.g. a tau_l run gates only block4: its attention map is there
    in_channels, model_dims, num_classes = model_meta(model)
    blk = _default_block(model, block)
    _check_method_fits_run(method, model, run_dir, blk)
    names = run_info.class_names
    if num_classes is None:
        num_classes = len(names) if names else 2
    target_index = resolve_target(target, num_classes=num_classes, names=names)
    array, geometry = read_volume(scan_path)
    array = np.asarray(array, dtype=np.float32)
    notes: list[str] = []
    if not names:
        notes.append("the run records no class names: classes are named by their index")
    array = fit_channels(array, in_channels=in_channels, notes=notes)
    spatial = tuple(array.shape[1:])
    if target_index is not None:
        note = _target_note(method, target_index, names, volume=len(spatial) == 3 and model_dims == 2)
        if note:
            notes.append(note)
    if size is None:
        size = run_info.recorded_size
    oriented = bool(getattr(geometry, "oriented", False))
    extra: dict[str, Any] = {"class_names": names, "target": target_index}
    if len(spatial) == 3 and model_dims == 2:
        a, why = resolve_axis(axis, geometry)
        return explain_volume_2d(
            scan_path, run_dir, model, array, geometry, axis=a, axis_why=why, method=method, block=blk,
            target=target_index, size=size, in_channels=in_channels, volume_rule=volume_rule, background=background,
            progress=progress, names=names, notes=notes, normalization=run_info.input_normalization)
    if len(spatial) != model_dims:
        raise ValueError(f"scan {scan_path} has a {len(spatial)}-D grid {spatial} but the run's model is "
                         f"{model_dims}-D: give a {model_dims}-D scan, or use a run trained on "
                         f"{len(spatial)}-D images")
    if size is None:
        size = _bounded_size(spatial, notes)
    x = scan_to_model_input(array, in_channels=in_channels, size=size, notes=notes,
                            normalization=run_info.input_normalization)
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=1)[0]
    pred = int(probs.argmax())
    note = _threshold_form_note(model, x, class_label(pred, names))
    if note:
        notes.append(note)
    tgt = pred if target_index is None else target_index
    hm = explain(model, x, method=method, block=blk, target=torch.tensor([tgt]))
    hm_model = hm.detach().float().cpu().numpy()[0, 0]
    heatmap = map_to_scan_grid(hm_model, spatial)
    probabilities = [float(p) for p in probs]
    model_shape = tuple(int(s) for s in x.shape[2:])
    extra["sharpness"] = map_sharpness(hm_model)
    if len(spatial) == 2:
        extra.update(_image_display(array, heatmap, geometry, oriented))
    else:  # a 3-D model: the overlay shows the slice with the most map mass along the slice axis
        a, why = resolve_axis(axis, geometry)
        mass = np.abs(heatmap).sum(axis=tuple(i for i in range(3) if i != a))
        k = int(np.argmax(mass))
        file_axis, file_k = geometry.source_index(a, k) if hasattr(geometry, "source_index") else (a, k)
        point = peak_in_slice(heatmap, axis=a, index=k)
        extra.update(overlay_image=plane(array, a, k, oriented),
                     overlay_map=plane(heatmap[None], a, k, oriented)[0], overlay_slice=file_k,
                     slice_axis={"axis": a, "file_axis": file_axis,
                                 "plane": PLANE_NAMES[a] if oriented else None, "from": why},
                     orientation=CONVENTION[a] if oriented else AS_STORED,
                     edge_labels=EDGE_LABELS[a] if oriented else None, volume_point=point,
                     overlay_point=display_point(point, a, spatial, oriented),
                     instance_number=instance_number(geometry, file_k))
        notes.append(f"a 3-D model sees the whole volume; the overlay shows slice {file_k + 1} along "
                     f"{PLANE_NAMES[a] if oriented else f'axis {a}'}, the one with the most map mass")
    return ScanExplanation(
        scan_path=scan_path, run=run_dir, method=method, block=blk, predicted_class=pred,
        class_name=class_label(pred, names), probability=probabilities[pred], probabilities=probabilities,
        scan=array, heatmap=heatmap.astype(np.float32), heatmap_model=np.asarray(hm_model, dtype=np.float32),
        model_input_shape=model_shape, geometry=geometry, notes=notes, **extra,
    )


def _threshold_form_note(model: Any, x: Any, class_name: str) -> str | None:
    """What a select-then-predict model of the threshold form showed (docs/models.md, "The threshold form")."""
    if getattr(model, "mask_rule", None) != "threshold":
        return None
    with torch.no_grad():
        cells = model.mask(x)[model.finest_block][0]
    shown, total = int(cells.sum()), int(cells.numel())
    if shown == 0:
        return (f"threshold form: no cell passed the threshold, so the model calls '{class_name}' (no finding) and "
                "its map singles out nothing")
    return (f"threshold form: {shown} of {total} cells shown; the prediction rests on them alone (a hidden cell could "
            "change it only by passing the threshold itself)")


def _image_display(array: np.ndarray, heatmap: np.ndarray, geometry: Any, oriented: bool) -> dict[str, Any]:
    """How a 2-D image is shown: a slice of a canonical volume in the radiological view; a single DICOM image as
    stored, with the letters its ``ImageOrientationPatient`` gives; anything else as stored, without letters."""
    plane_axis = squeezed_axis(geometry) if oriented else None
    if plane_axis is not None:
        return {"overlay_image": radiological_view(array), "overlay_map": radiological_view(heatmap),
                "orientation": CONVENTION[plane_axis], "edge_labels": EDGE_LABELS[plane_axis]}
    extra = getattr(geometry, "extra", None) or {}
    out: dict[str, Any] = {"overlay_image": array, "overlay_map": heatmap, "orientation": AS_STORED,
                           "edge_labels": None, "instance_number": instance_number(geometry, None)}
    cosines = extra.get("image_orientation")
    if cosines is not None and len(cosines) == 6:
        out["edge_labels"] = edge_labels_from_cosines(cosines[:3], cosines[3:])
        out["orientation"] = "drawn as stored; letters from the file's ImageOrientationPatient"
    return out
