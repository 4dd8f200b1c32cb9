"""``evaluate_runs``: explain trained runs with every method and score them by the paper's protocols.

Which model each method explains (the paper's protocol, as :func:`dualattn.demo.method_sources`):

* a variant-named attention method (``tau_k``, ``dual``, ``exact`` ...) explains the runs of that
  variant; ``cvx`` the ``unconstrained`` runs;
* ``vit_attention`` / ``vit_rollout`` the ViT runs;
* post-hoc methods (GradCAM, IxG, DeepLIFT, LRP, IG) and the references (``raw_channel_<k>``,
  ``random``) the baseline runs (``--baseline``, else every CNN run of variant ``baseline``).

For every method, block and run (DESIGN.md §2):

* implicit segmentation on the test images with a non-empty mask: IoU at q = 0.975/0.95/0.90,
  AP and the pointing game (x100), maps brought to the mask grid mass-preservingly;
* input perturbation on all test images, the perturbed images fed to a baseline classifier
  (run ``k`` of a method is paired with baseline run ``k mod #baselines``): balanced accuracy
  per removed fraction, least important first (the paper's curve, AUC x100, higher is better)
  and most important first (lower is better);
* sharpness (exp(entropy)/N), cost (ms per image), the model-randomization sanity check
  (Spearman correlation of maps before and after re-initializing every weight, on the first
  ``sanity_images`` images) and, with two blocks, the consistency KL of the marginalized fine
  map to the coarse map.

Per run: balanced accuracy on the test split and parameter counts (Table 3). Every number is
aggregated as mean ± std (sample std) over runs. The ``results.json`` schema is in
``docs/evaluation.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from .._io import atomic_write_json
from . import metrics as M

__all__ = ["evaluate_runs", "RunInfo", "discover_runs", "load_test_set", "adapt_images", "randomized_copy"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
QUANTILES: dict[str, float] = {"iou@97.5": 0.975, "iou@95": 0.95, "iou@90": 0.90}

_LABELS = {
    "iou@97.5": "IoU@97.5 ×100",
    "iou@95": "IoU@95 ×100",
    "iou@90": "IoU@90 ×100",
    "ap": "AP ×100",
    "pointing_game": "pointing game ×100",
    "auc_least_first": "AUC least-first ×100",
    "auc_most_first": "AUC most-first ×100",
    "consistency_kl": "KL(marg fine ‖ coarse)",
    "randomization_spearman": "Spearman after weight randomization",
    "sharpness": "sharpness exp(H)/N",
    "cost_ms": "ms / image",
    "balanced_accuracy": "balanced accuracy ×100",
    "params": "#params",
}
_DESCRIPTIONS = {
    "iou@97.5": "IoU of the map's top 2.5 % pixels with the mask, positive images, x100",
    "iou@95": "IoU of the map's top 5 % pixels with the mask, positive images, x100",
    "iou@90": "IoU of the map's top 10 % pixels with the mask, positive images, x100",
    "ap": "average precision of the map's pixel scores vs the mask (sklearn's), positive images, x100",
    "pointing_game": "share of positive images whose map maximum lies in the mask, x100",
    "auc_least_first": "area under balanced accuracy vs fraction removed, least important first (paper), x100",
    "auc_most_first": "area under balanced accuracy vs fraction removed, most important first, x100",
    "consistency_kl": "KL(marginalize(fine map) || coarse map), mean over images",
    "randomization_spearman": "Spearman rank correlation of maps before/after randomizing all weights",
    "sharpness": "exp(entropy)/N of the map: 1 uniform, 1/N a single cell (descriptive)",
    "cost_ms": "milliseconds per image to compute the map on this machine",
    "balanced_accuracy": "balanced accuracy on the test split, x100",
    "params": "number of parameters",
}

SEGMENTATION_COLUMNS = ("iou@97.5", "iou@95", "iou@90", "ap")
PERTURBATION_COLUMNS = ("auc_least_first", "auc_most_first")
DIAGNOSTIC_COLUMNS = ("pointing_game", "sharpness", "randomization_spearman", "consistency_kl", "cost_ms")
CLASSIFICATION_COLUMNS = ("balanced_accuracy", "params")


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """A trained run folder and what its ``config.yaml`` / model say about it."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None

    @property
    def variant(self) -> str:
        v = self.config.get("variant")
        if not v and self.model is not None:
            v = (getattr(self.model, "config", {}) or {}).get("variant")
        return str(v or "baseline")

    @property
    def model_name(self) -> str:
        name = self.config.get("model")
        if not name and self.model is not None:
            name = (getattr(self.model, "config", {}) or {}).get("name")
        return str(name or "model")

    @property
    def is_vit(self) -> bool:
        return self.model is not None and hasattr(self.model, "vit_attention_maps")

    @property
    def seed(self) -> int | None:
        s = self.config.get("seed")
        return int(s) if isinstance(s, (int, float)) else None

    @property
    def label(self) -> str:
        return str(self.path)


def _weights_file(run: Path) -> Path | None:
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).is_file():
            return run / name
    return None


def discover_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Run folders under ``paths``: a folder with ``best.safetensors``/``last.safetensors`` is a run,
    any other folder is searched recursively (sorted). Duplicates are dropped.

    Raises:
        ValueError: a path that does not exist or holds no run.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ValueError(f"run path {str(p)!r} does not exist")
        if p.is_file() and p.suffix == ".safetensors":
            runs = [p.parent]
        elif _weights_file(p) is not None:
            runs = [p]
        else:
            runs = sorted({w.parent for w in p.rglob("*.safetensors") if _weights_file(w.parent) is not None})
        if not runs:
            raise ValueError(f"no run (best.safetensors or last.safetensors) under {str(p)!r}")
        for r in runs:
            if r.resolve() not in {f.resolve() for f in found}:
                found.append(r)
    return found


def _load_run(path: Path) -> RunInfo:
    import yaml

    from ..weights import load_model

    cfg: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        cfg = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    weights = _weights_file(path)
    if weights is None:
        raise ValueError(f"run {str(path)!r} has no best.safetensors or last.safetensors")
    model = load_model(weights).eval()
    return RunInfo(path=path, config=cfg, model=model)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class TestSet:
    """The evaluation images as tensors."""

    images: Tensor  # (N, C, *S)
    labels: Tensor  # (N,)
    masks: Tensor  # (N, 1, *S)
    has_mask: Tensor  # (N,) bool
    ids: list[str]
    root: Path
    class_names: list[str]


def load_test_set(
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    size: int | Sequence[int] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    max_images: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    n: int | None = None,
    progress: bool = False,
) -> TestSet:
    """Read a split of a dataset (folder or embedded name) into tensors (z-scored per sample).

    Args:
        data: folder or embedded dataset name (:func:`dualattn.data.resolve_dataset`).
        split: ``"test"`` (default), ``"val"``, ``"train"`` or ``"all"``.
        size: resize images (and masks, nearest) to this size; ``None`` keeps the files' size.
        seed, fractions: the split's seed and fractions (the training run's ``split_seed``).
        max_images: keep at most this many (the first ones, in split order).
        cache_dir, n: passed to ``resolve_dataset`` for embedded names.
    """
    from ..data import FolderDataset, resolve_dataset

    int_size = size if isinstance(size, int) or size is None else None
    root = resolve_dataset(data, cache_dir=cache_dir, n=n, size=int_size, seed=seed)
    ds = FolderDataset(root, split=None if split == "all" else split, size=size, seed=seed, fractions=tuple(fractions))
    count = len(ds) if max_images is None else min(len(ds), int(max_images))
    if count == 0:
        raise ValueError(f"dataset {str(root)!r} has no images in split {split!r}")
    items = [ds[i] for i in _progress(range(count), progress, "reading test images")]
    return TestSet(
        images=torch.stack([it["image"] for it in items]).float(),
        labels=torch.stack([torch.as_tensor(it["label"]) for it in items]).long(),
        masks=torch.stack([it["mask"] for it in items]).float(),
        has_mask=torch.tensor([bool(it["has_mask"]) for it in items]),
        ids=[str(it["id"]) for it in items],
        root=Path(root),
        class_names=list(ds.class_names),
    )


def _model_input(model: nn.Module, run_cfg: dict[str, Any]) -> tuple[int | None, tuple[int, ...] | None]:
    cfg = getattr(model, "config", {}) or {}
    in_ch = cfg.get("in_channels")
    size = None
    img = getattr(model, "img_size", None) or cfg.get("img_size") or run_cfg.get("image_size")
    sd = int(cfg.get("spatial_dims", 2) or 2)
    if isinstance(img, int):
        size = (img,) * sd
    elif isinstance(img, (list, tuple)) and img:
        size = tuple(int(s) for s in img)
    return (int(in_ch) if in_ch else None), size


def adapt_images(
    images: Tensor, *, in_channels: int | None, size: Sequence[int] | None
) -> tuple[Tensor, list[str]]:
    """Fit images to a model: resize (bilinear/trilinear) to ``size`` and repeat a single channel
    to ``in_channels``; re-standardize per sample and channel after resizing.

    Returns:
        ``(adapted images, notes)`` (a note per change made).

    Raises:
        ValueError: a channel mismatch with no unambiguous mapping (e.g. 4 channels -> 1).
    """
    notes: list[str] = []
    x = images
    c = x.shape[1]
    if in_channels is not None and c != in_channels:
        if c == 1:
            x = x.repeat(1, in_channels, *([1] * (x.dim() - 2)))
            notes.append(f"single-channel data repeated to the model's {in_channels} channels")
        else:
            raise ValueError(
                f"data has {c} channels but the model expects {in_channels}; no unambiguous channel mapping"
            )
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        mode = "bilinear" if x.dim() == 4 else "trilinear"
        old = tuple(x.shape[2:])
        x = torch.nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
        dims = tuple(range(2, x.dim()))
        x = (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-6)
        notes.append(f"images resized from {old} to the model's input size {tuple(size)} (maps scored on the mask grid {old})")
    return x, notes


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _progress(it: Iterable[Any], enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False)


def randomized_copy(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialized (``reset_parameters``; other
    parameters redrawn from N(0, 0.02^2)) -- the model-randomization test of Adebayo et al. 2018."""
    import copy

    clone = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        done: set[int] = set()
        for m in clone.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
                done.update(id(p) for p in m.parameters(recurse=False))
        with torch.no_grad():
            for p in clone.parameters():
                if id(p) not in done:
                    p.normal_(0.0, 0.02)
    return clone


def _stats(values: Sequence[float]) -> dict[str, Any]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "n": 0, "values": [None if v is None else float(v) for v in values]}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "n": len(vals),
        "values": [float(v) for v in values],
    }


def _nanmean(x: Tensor) -> float:
    x = x.double()
    ok = torch.isfinite(x)
    return float(x[ok].mean()) if bool(ok.any()) else math.nan


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


def _methods_for(method: str) -> str:
    from ..explain import method_family

    return method_family(method)


def _source_runs(method: str, runs: list[RunInfo], baselines: list[RunInfo]) -> list[RunInfo]:
    from ..explain.attention import VARIANT_METHODS

    family = _methods_for(method)
    if family == "attention":
        return [r for r in runs if not r.is_vit and r.variant == method] if method in VARIANT_METHODS else []
    if family == "cvx":
        return [r for r in runs if not r.is_vit and r.variant == "unconstrained"]
    if family == "vit":
        return [r for r in runs if r.is_vit]
    return list(baselines)


def _maps_for_blocks(
    model: nn.Module, images: Tensor, *, method: str, blocks: Sequence[str], targets: Tensor | None,
    kw: dict[str, Any], batch_size: int, device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, float], dict[str, str]]:
    """Maps of ``method`` for every block over all images (batched), the ms/image per block and
    the error per block that could not be explained.

    Pixel-level methods compute their attribution once per batch and pool it to every block's grid
    (the attribution does not depend on the block), so their cost is shared by the blocks.
    """
    from ..explain import explain
    from ..explain._pool import block_grid, normalize_and_pool, resolve_target
    from ..explain.posthoc import PIXEL_METHODS, pixel_attribution

    n = images.shape[0]
    maps: dict[str, Tensor] = {}
    cost: dict[str, float] = {}
    errors: dict[str, str] = {}
    if method in PIXEL_METHODS:
        grids: dict[str, tuple[int, ...]] = {}
        for block in blocks:
            try:
                grids[block] = block_grid(model, images[:1].to(device), block)
            except ValueError as exc:
                errors[block] = str(exc)
        if not grids:
            return maps, cost, errors
        parts: dict[str, list[Tensor]] = {b: [] for b in grids}
        t0 = time.perf_counter()
        for s in _batches(n, batch_size):
            x = images[s].to(device)
            tgt = targets[s].to(device) if targets is not None else None
            attr = pixel_attribution(model, x, method=method, target=resolve_target(model, x, tgt), **kw)
            for b, g in grids.items():
                parts[b].append(normalize_and_pool(attr, g).cpu())
        ms = 1000.0 * (time.perf_counter() - t0) / n
        for b in grids:
            maps[b] = torch.cat(parts[b])
            cost[b] = ms
        return maps, cost, errors
    for block in blocks:
        t0 = time.perf_counter()
        try:
            out = []
            for s in _batches(n, batch_size):
                tgt = targets[s] if targets is not None else None
                out.append(explain(model, images[s].to(device), method=method, block=block, target=tgt, **kw).cpu())
        except ValueError as exc:
            errors[block] = str(exc)
            continue
        maps[block] = torch.cat(out)
        cost[block] = 1000.0 * (time.perf_counter() - t0) / n
    return maps, cost, errors


@torch.no_grad()
def _predict(model: nn.Module, images: Tensor, batch_size: int, device: torch.device) -> Tensor:
    from ..explain._state import eval_mode

    with eval_mode(model):
        return torch.cat([model(images[s].to(device)).argmax(1).cpu() for s in _batches(images.shape[0], batch_size)])


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


# --------------------------------------------------------------------------------------------
# resume: one (method, run) unit of work, its record under OUT/.partial/ and its merge
# --------------------------------------------------------------------------------------------

#: bump when a unit record's content or meaning changes: older records are then recomputed
RESUME_FORMAT = 1
#: folder under ``out`` holding one JSON record per finished (method, run) unit
PARTIAL_DIR = ".partial"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode_floats(obj: Any) -> Any:
    """NaN/±Inf as the strings ``"nan"``/``"inf"``/``"-inf"`` (the JSON writer would turn them into null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def _decode_floats(obj: Any) -> Any:
    if isinstance(obj, str):
        if obj not in _NONFINITE:
            raise ValueError(f"unexpected string {obj!r} where a number belongs")
        return _NONFINITE[obj]
    if isinstance(obj, bool) or obj is None:
        raise ValueError(f"unexpected {obj!r} where a number belongs")
    if isinstance(obj, (int, float)):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _decode_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_floats(v) for v in obj]
    raise ValueError(f"unexpected {type(obj).__name__} in a unit record")


def _run_digest(info: RunInfo | None) -> dict[str, Any] | None:
    """What identifies a run's weights: resolved path, weights file, its size and mtime (ns)."""
    if info is None:
        return None
    weights = _weights_file(info.path)
    st = weights.stat() if weights is not None else None
    return {
        "path": str(info.path.resolve()),
        "weights": weights.name if weights is not None else None,
        "size": st.st_size if st is not None else None,
        "mtime_ns": st.st_mtime_ns if st is not None else None,
    }


def _unit_fingerprint(
    common: dict[str, Any], *, method: str, k: int, method_blocks: Sequence[str], source: RunInfo,
    classifier: RunInfo | None,
) -> str:
    """SHA-256 over every setting that changes a unit's numbers."""
    payload = {
        "resume_format": RESUME_FORMAT, **common, "method": method, "k": int(k), "method_blocks": list(method_blocks),
        "source": _run_digest(source), "classifier": _run_digest(classifier),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _unit_filename(method: str, method_blocks: Sequence[str], k: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", method)
    return f"{safe}__{'+'.join(method_blocks) or 'none'}__{int(k)}.json"


def _save_unit(path: Path, record: dict[str, Any]) -> None:
    rec = dict(record)
    for key in ("metrics", "curves", "consistency"):
        rec[key] = _encode_floats(rec[key])
    atomic_write_json(path, rec)


def _load_unit(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The record at ``path`` if it parses and matches ``fingerprint``, else ``None`` (with a warning
    when a file is there but unusable)."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict):
            raise ValueError("not a JSON object")
        if rec.get("format") != RESUME_FORMAT or rec.get("fingerprint") != fingerprint:
            logger.warning("ignoring resume record %s: it was made with other settings, runs or data "
                           "(fingerprint differs); recomputing", path)
            return None
        metrics = _decode_floats(rec["metrics"])
        curves = _decode_floats(rec["curves"])
        cons = rec["consistency"]
        if cons is not None:
            cons = {"pair": str(cons["pair"]), "value": _decode_floats(cons["value"])}
        errors = [str(e) for e in rec["errors"]]
        if not all(isinstance(v, dict) for v in (metrics, curves, *metrics.values(), *curves.values())):
            raise ValueError("malformed metrics or curves")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("ignoring unreadable resume record %s (%s); recomputing", path, exc)
        return None
    return {**rec, "metrics": metrics, "curves": curves, "consistency": cons, "errors": errors}


def _append_at(lst_owner: dict[str, list[float]], name: str, value: float, k: int) -> None:
    """Append ``value`` as run ``k``'s entry, padding the runs without one with NaN."""
    lst = lst_owner.setdefault(name, [])
    while len(lst) < k:
        lst.append(math.nan)
    lst.append(value)


def _merge_unit(
    record: dict[str, Any], *, method: str, k: int, per_run: dict, curves_raw: dict, notes: list[str],
) -> None:
    """Add a unit's record to the per-run metric lists, the raw curves and the notes."""
    notes.extend(record["errors"])
    for block, vals in record["metrics"].items():
        target = per_run.setdefault(method, {}).setdefault(block, {})
        for name, value in vals.items():
            _append_at(target, name, value, k)
        if block in record["curves"]:
            crv = curves_raw.setdefault(method, {}).setdefault(block, {"least_first": [], "most_first": []})
            for order, acc in record["curves"][block].items():
                crv[order].append(acc)
    cons = record.get("consistency")
    if cons is not None:
        _append_at(per_run.setdefault(method, {}).setdefault(cons["pair"], {}), "consistency_kl", cons["value"], k)


def _evaluate_unit(
    *, method: str, family: str, k: int, info: RunInfo, method_blocks: tuple[str, ...], blocks: tuple[str, ...],
    x: Tensor, clf: RunInfo | None, xb: Tensor | None, test: TestSet, pos_idx: Tensor,
    fractions_pt: tuple[float, ...], perturbation: str, sanity_images: int, ig_steps: int, seed: int,
    batch_size: int, dev: torch.device, warm_up: bool, perturbation_predictions: Any, eval_mode: Any,
) -> dict[str, Any]:
    """Explain run ``k`` of ``method`` and score it: the unit's JSON-serializable record
    (per-block metrics in the order they are added, perturbation curves, consistency KL, notes)."""
    n_img = test.images.shape[0]
    metrics: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    errors_out: list[str] = []
    consistency: dict[str, Any] | None = None
    maps_by_block: dict[str, Tensor] = {}
    kw: dict[str, Any] = {}
    if method == "integrated_gradients":
        kw["n_steps"] = ig_steps
    if method == "random":
        kw["seed"] = seed
    target_all = test.labels if family == "posthoc" else None
    if warm_up:
        # warm-up (lazy imports, allocator) so that cost_ms measures the method itself
        _maps_for_blocks(info.model, x[:1], method=method, blocks=method_blocks[:1],
                         targets=None if target_all is None else target_all[:1], kw=kw,
                         batch_size=1, device=dev)
    all_maps, all_costs, errors = _maps_for_blocks(
        info.model, x, method=method, blocks=method_blocks, targets=target_all, kw=kw,
        batch_size=batch_size, device=dev,
    )
    for block, err in errors.items():
        text = f"{method} at {block} on {info.path.name}: not computed ({err})"
        logger.warning(text)
        errors_out.append(text)
    sanity_after: dict[str, Tensor] = {}
    if sanity_images > 0 and family in ("attention", "cvx", "posthoc", "vit") and all_maps:
        n_s = min(sanity_images, n_img)
        rnd = randomized_copy(info.model, seed=seed + 1)
        sanity_after, _, _ = _maps_for_blocks(
            rnd, x[:n_s], method=method, blocks=tuple(all_maps), kw=kw, batch_size=batch_size, device=dev,
            targets=None if target_all is None else target_all[:n_s],
        )
        del rnd
    for block in method_blocks:
        if block not in all_maps:
            continue
        maps, cost = all_maps[block], all_costs[block]
        maps_by_block[block] = maps
        vals = metrics.setdefault(block, {})
        vals["cost_ms"] = cost
        vals["sharpness"] = _nanmean(M.sharpness(maps))
        if len(pos_idx):
            pm, mk = maps[pos_idx], test.masks[pos_idx]
            for name, q in QUANTILES.items():
                vals[name] = 100.0 * _nanmean(M.iou_at_quantile(pm, mk, q))
            vals["ap"] = 100.0 * _nanmean(M.average_precision(pm, mk))
            vals["pointing_game"] = 100.0 * _nanmean(M.pointing_game(pm, mk))
        if clf is not None and xb is not None:
            crv = curves.setdefault(block, {})
            for order in ("least_first", "most_first"):
                preds = []
                with eval_mode(clf.model):
                    for s in _batches(n_img, batch_size):
                        preds.append(perturbation_predictions(
                            clf.model, xb[s].to(dev), maps[s].to(dev), fractions=fractions_pt, order=order,
                            perturbation=perturbation,
                        ).cpu())
                pr = torch.cat(preds)
                acc = [float(100.0 * M.balanced_accuracy(test.labels, pr[:, j])) for j in range(len(fractions_pt))]
                crv[order] = acc
                vals[f"auc_{order}"] = M.curve_auc(fractions_pt, [a / 100.0 for a in acc])
        if block in sanity_after:
            n_s = sanity_after[block].shape[0]
            vals["randomization_spearman"] = _nanmean(M.spearman_rank_correlation(maps[:n_s], sanity_after[block]))
    if len(blocks) >= 2 and all(b in maps_by_block for b in blocks[:2]):
        fine, coarse = maps_by_block[blocks[0]], maps_by_block[blocks[1]]
        if fine.shape[2:] != coarse.shape[2:]:
            consistency = {"pair": f"{blocks[0]}+{blocks[1]}", "value": _nanmean(M.consistency_kl(fine, coarse))}
    return {
        "format": RESUME_FORMAT,
        "method": method,
        "k": int(k),
        "run": str(info.path),
        "classifier": None if clf is None else str(clf.path),
        "blocks": list(method_blocks),
        "metrics": {b: {n: float(v) for n, v in vals.items()} for b, vals in metrics.items()},
        "curves": curves,
        "consistency": consistency,
        "errors": errors_out,
    }


# --------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------


def evaluate_runs(
    runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    baseline: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    methods: str | Sequence[str] = "all",
    blocks: Sequence[str] = ("block3", "block4"),
    split: str = "test",
    size: int | Sequence[int] | None = None,
    max_images: int | None = None,
    batch_size: int = 16,
    perturbation: str = "zero",
    perturbation_steps: int = 10,
    sanity_images: int = 8,
    ig_steps: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    resume: bool = True,
) -> Path:
    """Explain every run with every applicable method and write ``results.json`` and the tables.

    Args:
        runs: run folders, or folders containing runs (searched recursively), e.g. a demo's ``runs/``.
        out: output folder (``results.json``, ``table1_perturbation.md/.csv`` ... ``tables.md``).
        data: dataset folder or embedded name; default the first run's ``config.yaml`` dataset.
        baseline: baseline run(s) for the post-hoc methods and the perturbation classifier;
            default every CNN run of variant ``baseline`` among ``runs``.
        methods: ``"all"`` or method names (:func:`dualattn.explain.list_methods`);
            ``raw_channel_<k>`` are added for every data channel under ``"all"``.
        blocks: blocks to explain (ViT maps use their patch grid, recorded as block ``"patches"``).
        split: data split to evaluate on.
        size: evaluation image size; default the runs' common training size (``image_size``).
        max_images: cap on the number of test images.
        batch_size: images per explain call.
        perturbation: ``"zero"``, ``"mean"`` or ``"blur"`` (value replacing removed pixels).
        perturbation_steps: fractions 0, 1/steps, ..., 1.
        sanity_images: images used for the randomization check (0 disables it).
        ig_steps: integrated-gradients steps.
        seed: seed of the ``random`` reference and of the weight randomization.
        cache_dir: cache for embedded datasets.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``; models and batches go there,
            metrics are computed on the CPU.
        progress: show progress bars.
        resume: reuse finished (method, run) units recorded under ``out/.partial/`` whose
            fingerprint (method, run index, run path and weights, classifier run, data, split,
            image size, labels, blocks, perturbation, fractions, sanity images, IG steps, seed)
            matches; ``False`` recomputes every unit and overwrites the records. The records are
            kept after ``results.json`` is written, so a re-run with more methods reuses them.

    Returns:
        Path of ``results.json``.

    Raises:
        ValueError: no runs, unknown methods or blocks, data that cannot be adapted to a model.
    """
    from ..evaluate.perturbation import perturbation_predictions
    from ..explain import list_methods
    from ..explain._state import eval_mode
    from ..models import count_parameters

    t_start = time.perf_counter()
    out = Path(out)
    if perturbation_steps < 1:
        raise ValueError(f"perturbation_steps must be >= 1, got {perturbation_steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    blocks = tuple(blocks)
    if not blocks:
        raise ValueError("blocks must name at least one block")
    notes: list[str] = []
    dev = _resolve_device(device)

    run_infos = [_load_run(p) for p in discover_runs(runs)]
    base_infos: list[RunInfo]
    if baseline is not None:
        base_paths = discover_runs(baseline)
        known = {r.path.resolve(): r for r in run_infos}
        base_infos = [known.get(p.resolve()) or _load_run(p) for p in base_paths]
        for b in base_infos:
            if b.path.resolve() not in known:
                run_infos.append(b)
    else:
        base_infos = [r for r in run_infos if r.variant == "baseline" and not r.is_vit]
    if not base_infos:
        notes.append("no baseline run: post-hoc methods, references and input perturbation were skipped")
    first_cfg = run_infos[0].config
    for info in run_infos:
        info.model.to(dev)

    # ---- data
    sizes = {tuple(_model_input(r.model, r.config)[1] or ()) for r in run_infos if not r.is_vit}
    eval_size = size
    if eval_size is None and len(sizes) == 1 and () not in sizes:
        eval_size = next(iter(sizes))
        eval_size = eval_size[0] if len(set(eval_size)) == 1 else eval_size
    data = data if data is not None else first_cfg.get("dataset")
    if data is None:
        raise ValueError("no data given and the runs' config.yaml names no dataset")
    split_seed = int(first_cfg.get("split_seed", 0) or 0)
    fractions = tuple(first_cfg.get("split_fractions") or (0.7, 0.15, 0.15))
    test = load_test_set(
        data, split=split, size=eval_size, seed=split_seed, fractions=fractions, max_images=max_images,
        cache_dir=cache_dir if cache_dir is not None else first_cfg.get("cache_dir"), n=first_cfg.get("data_n"),
        progress=progress,
    )
    n_img = test.images.shape[0]
    positives = test.has_mask & (test.masks.flatten(1).sum(1) > 0)
    pos_idx = torch.nonzero(positives).flatten()
    logger.info("evaluating on %d images (%d with a mask) from %s", n_img, len(pos_idx), test.root)
    if len(pos_idx) == 0:
        notes.append("no test image has a mask: implicit-segmentation metrics are empty")

    inputs: dict[int, Tensor] = {}

    def model_images(info: RunInfo) -> Tensor:
        key = id(info)
        if key not in inputs:
            in_ch, msize = _model_input(info.model, info.config)
            x, adapt_notes = adapt_images(test.images, in_channels=in_ch, size=msize)
            for note in adapt_notes:
                text = f"{info.path.name} ({info.variant}): {note}"
                if text not in notes:
                    notes.append(text)
            inputs[key] = x
        return inputs[key]

    # ---- classification (Table 3)
    run_rows: list[dict[str, Any]] = []
    for info in _progress(run_infos, progress, "classifying"):
        pred = _predict(info.model, model_images(info), batch_size, dev)
        run_rows.append({
            "run": str(info.path), "variant": info.variant, "model": info.model_name, "seed": info.seed,
            "balanced_accuracy": 100.0 * M.balanced_accuracy(test.labels, pred),
            "params": count_parameters(info.model),
        })

    # ---- methods
    in_channels = test.images.shape[1]
    if methods == "all" or methods == ["all"] or methods == ("all",):
        wanted = [m for m in list_methods(in_channels=in_channels) if m != "attention"]
    else:
        from ..explain import METHOD_ALIASES

        wanted = [methods] if isinstance(methods, str) else list(methods)
        wanted = list(dict.fromkeys(METHOD_ALIASES.get(m, m) for m in wanted))
        valid = set(list_methods(in_channels=max(in_channels, 1)))
        bad = [m for m in wanted if m not in valid and not m.startswith("raw_channel_")]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid: {sorted(valid)}")
    plan = [(m, _source_runs(m, run_infos, base_infos)) for m in wanted]
    skipped = [m for m, src in plan if not src]
    if skipped:
        notes.append(f"methods without a run to explain (skipped): {', '.join(skipped)}")
    plan = [(m, src) for m, src in plan if src]

    fractions_pt = tuple(round(i / perturbation_steps, 6) for i in range(perturbation_steps + 1))
    per_run: dict[str, dict[str, dict[str, list[float]]]] = {}
    curves_raw: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    sources: dict[str, dict[str, Any]] = {}
    partial_dir = out / PARTIAL_DIR
    common = {
        "data_root": str(Path(test.root).resolve()),
        "split": split,
        "image_size": list(test.images.shape[2:]),
        "n_images": n_img,
        "labels_sha256": hashlib.sha256(test.labels.cpu().numpy().astype("int64").tobytes()).hexdigest(),
        "positives_sha256": hashlib.sha256(pos_idx.cpu().numpy().astype("int64").tobytes()).hexdigest(),
        "blocks": list(blocks),
        "perturbation": perturbation,
        "fractions": list(fractions_pt),
        "sanity_images": sanity_images,
        "ig_steps": ig_steps,
        "seed": seed,
    }
    reused = 0
    total_units = 0
    work = [(m, src) for m, src in plan]
    for method, src in _progress(work, progress, "methods"):
        sources[method] = {"variant": src[0].variant, "runs": [str(r.path) for r in src]}
        family = _methods_for(method)
        method_blocks: tuple[str, ...] = ("patches",) if family == "vit" else blocks
        if family in ("attention", "cvx"):
            gated = tuple(getattr(src[0].model, "attention_blocks", ()) or ())
            kept = tuple(b for b in blocks if b in gated)
            if kept != blocks:
                notes.append(f"{method}: the model has attention maps only at {', '.join(gated) or 'no block'}; "
                             f"evaluated at {', '.join(kept) or 'none'}")
            method_blocks = kept
        warmed_up = False
        for k, info in enumerate(src):
            total_units += 1
            clf = base_infos[k % len(base_infos)] if base_infos else None
            fingerprint = _unit_fingerprint(
                common, method=method, k=k, method_blocks=method_blocks, source=info, classifier=clf,
            )
            record_path = partial_dir / _unit_filename(method, method_blocks, k)
            record = _load_unit(record_path, fingerprint) if resume else None
            if record is not None:
                logger.info("reusing %s (%s on %s, run %d)", record_path, method, info.path.name, k)
                reused += 1
            else:
                record = _evaluate_unit(
                    method=method, family=family, k=k, info=info, method_blocks=method_blocks, blocks=blocks,
                    x=model_images(info), clf=clf, xb=model_images(clf) if clf is not None else None,
                    test=test, pos_idx=pos_idx, fractions_pt=fractions_pt, perturbation=perturbation,
                    sanity_images=sanity_images, ig_steps=ig_steps, seed=seed, batch_size=batch_size, dev=dev,
                    warm_up=not warmed_up, perturbation_predictions=perturbation_predictions, eval_mode=eval_mode,
                )
                warmed_up = True
                record["fingerprint"] = fingerprint
                _save_unit(record_path, record)
            _merge_unit(record, method=method, k=k, per_run=per_run, curves_raw=curves_raw, notes=notes)

    # ---- aggregate
    results = _assemble(
        per_run=per_run, curves_raw=curves_raw, fractions=fractions_pt, sources=sources, run_rows=run_rows,
        blocks=blocks, notes=notes,
    )
    results["meta"] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": str(data),
        "data_path": str(test.root),
        "split": split,
        "n_images": n_img,
        "n_positive_with_mask": int(len(pos_idx)),
        "class_names": test.class_names,
        "image_size": list(test.images.shape[2:]),
        "model": ", ".join(sorted({r.model_name for r in run_infos})),
        "runs": [str(r.path) for r in run_infos],
        "baselines": [str(r.path) for r in base_infos],
        "seeds": sorted({r.seed for r in run_infos if r.seed is not None}),
        "methods": [m for m, _ in plan],
        "blocks": list(blocks),
        "perturbation": {"value": perturbation, "fractions": list(fractions_pt), "classifier": "baseline run k mod #baselines"},
        "sanity_images": sanity_images,
        "device": str(dev),
        "ig_steps": ig_steps,
        "reused_units": reused,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "wall_time_s": round(time.perf_counter() - t_start, 2),
    }
    from .tables import write_tables

    results["tables"] = write_tables(results, out)
    path = out / "results.json"
    atomic_write_json(path, results)
    logger.info("wrote %s (%.1f s; reused %d of %d (method, run) units from %s)", path,
                time.perf_counter() - t_start, reused, total_units, partial_dir)
    return path


def _section(rows: dict[str, dict[str, Any]], columns: Sequence[str]) -> dict[str, Any]:
    return {
        "columns": list(columns),
        "column_labels": {c: _LABELS.get(c, c) for c in columns},
        "higher_is_better": {
            c: {"higher": True, "lower": False}.get(M.METRIC_DIRECTIONS[c].value) for c in columns
        },
        "rows": rows,
    }


def _assemble(
    *, per_run: dict, curves_raw: dict, fractions: Sequence[float], sources: dict, run_rows: list,
    blocks: Sequence[str], notes: list[str],
) -> dict[str, Any]:
    methods_out: dict[str, Any] = {}
    seg_rows: dict[str, dict[str, Any]] = {}
    pert_rows: dict[str, dict[str, Any]] = {}
    diag_rows: dict[str, dict[str, Any]] = {}
    for method, by_block in per_run.items():
        entry: dict[str, Any] = {"source": sources.get(method, {}), "blocks": {}}
        pair_kl = None
        for block, vals in by_block.items():
            stats = {name: _stats(v) for name, v in vals.items()}
            if "+" in block:
                entry["consistency"] = {"blocks": block.split("+"), **stats}
                pair_kl = stats.get("consistency_kl")
                continue
            entry["blocks"][block] = stats
            row = f"{method} [{block}]"
            if any(c in stats for c in SEGMENTATION_COLUMNS):
                seg_rows[row] = {c: stats[c] for c in SEGMENTATION_COLUMNS if c in stats}
            if any(c in stats for c in PERTURBATION_COLUMNS):
                pert_rows[row] = {c: stats[c] for c in PERTURBATION_COLUMNS if c in stats}
            diag_rows[row] = {c: stats[c] for c in DIAGNOSTIC_COLUMNS if c in stats}
        if pair_kl is not None:
            for block in entry["blocks"]:
                diag_rows[f"{method} [{block}]"]["consistency_kl"] = pair_kl
        methods_out[method] = entry

    curves: dict[str, Any] = {}
    report_curves: dict[str, Any] = {}
    for method, by_block in curves_raw.items():
        for block, orders in by_block.items():
            c = {"fractions": list(fractions)}
            for order, runs in orders.items():
                if not runs:
                    continue
                t = torch.tensor(runs, dtype=torch.float64)
                c[order] = {
                    "mean": t.mean(0).tolist(),
                    "std": (t.std(0, unbiased=True) if t.shape[0] > 1 else torch.zeros(t.shape[1])).tolist(),
                    "runs": runs,
                    "auc": methods_out[method]["blocks"][block].get(f"auc_{order}"),
                }
            curves.setdefault(method, {})[block] = c
            if block == blocks[0] or block == "patches":
                lf = c.get("least_first")
                if lf:
                    report_curves[method] = {"fractions": list(fractions), "mean": lf["mean"], "std": lf["std"],
                                             "auc": lf["auc"]}

    cls_rows: dict[str, dict[str, Any]] = {}
    multi_model = len({r["model"] for r in run_rows}) > 1
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in run_rows:
        key = f"{r['model']}:{r['variant']}" if multi_model else r["variant"]
        grouped.setdefault(key, []).append(r)
    for key, rows in grouped.items():
        params = sorted({r["params"] for r in rows})
        cls_rows[key] = {
            "balanced_accuracy": _stats([r["balanced_accuracy"] for r in rows]),
            "params": params[0] if len(params) == 1 else _stats(params),
        }

    return {
        "schema_version": SCHEMA_VERSION,
        "notes": notes,
        "metrics": {
            name: {"direction": M.METRIC_DIRECTIONS[name].value, "label": _LABELS[name],
                   "description": _DESCRIPTIONS[name]}
            for name in _LABELS
        },
        "methods": methods_out,
        "curves": curves,
        "segmentation": _section(seg_rows, SEGMENTATION_COLUMNS),
        "perturbation": {**_section(pert_rows, PERTURBATION_COLUMNS), "curves": report_curves},
        "classification": _section(cls_rows, CLASSIFICATION_COLUMNS),
        "diagnostics": _section(diag_rows, DIAGNOSTIC_COLUMNS),
        "runs": run_rows,
    }
