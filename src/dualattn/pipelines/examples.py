"""Example scans for the report's figure grid: every method's map on a few positive test scans.

``examples.npz`` holds ``image`` ``(N, C, *S)``, ``mask`` ``(N, 1, *S)``, ``label`` ``(N,)``, ``id``
``(N,)``, optionally ``pred`` ``(N,)`` (the baseline's class) and one ``map/<method>`` ``(N, *grid)`` per
method. The demo writes it as its ``examples`` step; ``dualattn evaluate --examples N`` writes it beside
``results.json`` (:func:`examples_for_results`), and ``dualattn report RESULTS`` draws the grid from the
``examples.npz`` beside ``RESULTS`` (:func:`load_examples`).

Example:
    >>> from dualattn.pipelines.examples import collect_examples, load_examples  # doctest: +SKIP
    >>> collect_examples({"baseline": ["runs/baseline/seed0"], "exact": ["runs/exact/seed0"]},  # doctest: +SKIP
    ...                  data="my_scans", methods=["exact", "gradcam"], out_file="eval/examples.npz", n=4)
    {'n': 4, 'methods': ['exact', 'gradcam']}
    >>> rows = load_examples("eval/examples.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from .._io import atomic_path
from ..data import FolderDataset
from ..evaluate.testset import fit_to_model
from ..explain import explain, method_family, method_sources
from ..runs import RunDir

logger = logging.getLogger(__name__)

__all__ = ["collect_examples", "examples_for_results", "load_examples", "EXAMPLES_FILE"]

#: The file name the demo and ``dualattn evaluate --examples`` write, beside ``results.json``.
EXAMPLES_FILE = "examples.npz"

PathLike = Union[str, "os.PathLike[str]"]


def _pick(test: FolderDataset, n: int) -> list[int]:
    """Up to ``n`` positive items (label > 0) spread over the split: those with a mask, else any positive."""
    labels = [(int(test[i]["label"]), bool(test[i]["has_mask"])) for i in range(len(test))]
    picked = [i for i, (y, m) in enumerate(labels) if y > 0 and m]
    if not picked:
        picked = [i for i, (y, _m) in enumerate(labels) if y > 0]
    if len(picked) > n:  # spread over the split (neighbouring items are often one patient)
        spots = np.linspace(0, len(picked) - 1, n).round().astype(int)
        picked = [picked[int(k)] for k in dict.fromkeys(spots.tolist())]
    return picked


def collect_examples(
    runs: Mapping[str, Sequence[PathLike]],
    *,
    data: PathLike,
    methods: Sequence[str],
    out_file: PathLike,
    n: int = 4,
    size: int | Sequence[int] | None = None,
    split: str = "test",
    split_seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    blocks: Sequence[str] = ("block3", "block4"),
) -> dict[str, Any]:
    """Compute every method's map on ``n`` positive scans of ``split`` and save them as ``out_file`` (NPZ).

    Args:
        runs: variant -> run folders; the first of each explains that variant's methods (the demo's
            protocol, :func:`dualattn.explain.method_sources`); ``"vit"`` -> ViT runs for the ViT maps.
        data: a dataset folder (folder format).
        methods: method names; those whose model is not in ``runs`` are left out.
        out_file: the NPZ to write (atomically).
        n: number of scans: positives with a mask, else any positives, spread over the split.
        size: image size (``None``: the files' own); images are then fitted to each model's input
            (:func:`dualattn.evaluate.testset.fit_to_model`).
        split, split_seed, fractions: the split, as the runs were trained.
        blocks: each map is the first of these blocks the method can explain (the fine gate's map first;
            a coarse-only model has ``block4``).

    Returns:
        ``{"n": scans written, "methods": [methods with a map]}``; ``{"n": 0}`` and no file when the split
        holds no positive scan.

    Raises:
        ValueError: ``n < 1``, or ``data`` is not a dataset folder.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    test = FolderDataset(data, split=None if split == "all" else split, size=size, seed=int(split_seed),
                         fractions=tuple(fractions))
    picked = _pick(test, int(n))
    if not picked:
        logger.warning("no positive %s scan: the report has no example grid", split)
        return {"n": 0}
    items = [test[i] for i in picked]
    images = torch.stack([torch.as_tensor(it["image"]) for it in items])
    target = torch.as_tensor([int(it["label"]) for it in items])
    arrays: dict[str, np.ndarray] = {
        "image": images.numpy(),
        "mask": torch.stack([torch.as_tensor(it["mask"]) for it in items]).numpy(),
        "label": target.numpy(),
        "id": np.array([Path(str(it["id"])).name.split(".")[0] for it in items]),
    }
    models: dict[str, Any] = {}

    def model_and_input(variant: str) -> tuple[Any, torch.Tensor]:
        if variant not in models:
            run = RunDir(runs[variant][0])
            in_channels, model_size = run.model_input()
            x, _notes = fit_to_model(images, in_channels=in_channels, size=model_size)
            models[variant] = (run.load_model("best"), x)
        return models[variant]

    if runs.get("baseline"):
        model, x = model_and_input("baseline")
        with torch.no_grad():
            arrays["pred"] = model(x).argmax(dim=1).numpy()
    cnn = [v for v in runs if v != "vit" and runs[v]]
    sources = method_sources([m for m in methods if _family(m) != "vit"], cnn)
    if runs.get("vit"):
        sources.update({m: "vit" for m in methods if _family(m) == "vit"})
    names = []
    for method, variant in sources.items():
        model, x = model_and_input(variant)
        maps = None
        for block in blocks:
            try:
                maps = explain(model, x, method=method, block=block, target=target)
                break
            except ValueError as exc:
                logger.debug("example maps for %s at %s: %s", method, block, exc)
        if maps is None:
            logger.warning("no example map for %s", method)
            continue
        arrays[f"map/{method}"] = maps.detach().float().numpy()[:, 0]
        names.append(method)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_file) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return {"n": len(items), "methods": names}


def _family(method: str) -> str | None:
    try:
        return method_family(method)
    except ValueError:
        return None


def examples_for_results(results_file: PathLike, *, n: int = 4, out_file: PathLike | None = None) -> dict[str, Any]:
    """Write the example grid of an evaluation (``dualattn evaluate``'s ``results.json``) beside it.

    The runs, baselines, data folder, split, image size and methods are read from the results' ``meta``;
    each variant is explained by its lowest-seed run, the post-hoc methods by the lowest-seed baseline.

    Args:
        results_file: ``results.json`` written by :func:`dualattn.evaluate.evaluate_runs`.
        n: number of example scans.
        out_file: default ``examples.npz`` beside ``results_file``.

    Returns:
        What :func:`collect_examples` returns, plus ``"file"`` (the path written, or ``None``).

    Raises:
        ValueError: ``results_file`` records no runs or no data folder.
    """
    results_file = Path(results_file)
    meta = json.loads(results_file.read_text(encoding="utf-8")).get("meta") or {}
    if not meta.get("runs") or not meta.get("data_path"):
        raise ValueError(f"{results_file}: its meta records no runs or no data_path; cannot draw examples")
    baselines = {Path(p).resolve() for p in meta.get("baselines") or []}
    groups: dict[str, list[tuple[int, str, RunDir]]] = {}
    for path in meta["runs"]:
        run = RunDir(path)
        variant = "vit" if run.is_vit else ("baseline" if run.path.resolve() in baselines else run.variant)
        if variant == "baseline" and run.path.resolve() not in baselines:
            continue  # a baseline run the evaluation did not use as one
        groups.setdefault(variant, []).append((run.seed if run.seed is not None else 1 << 30, str(run.path), run))
    runs = {v: [r.path for _s, _p, r in sorted(rs, key=lambda t: t[:2])] for v, rs in groups.items()}
    first = RunDir(meta["runs"][0]).config
    size = meta.get("image_size")
    out = Path(out_file) if out_file is not None else results_file.parent / EXAMPLES_FILE
    done = collect_examples(
        runs, data=meta["data_path"], methods=list(meta.get("methods") or []), out_file=out, n=n,
        size=tuple(size) if size else None, split=str(meta.get("split") or "test"),
        split_seed=int(first.get("split_seed", 0) or 0),
        fractions=tuple(first.get("split_fractions") or (0.7, 0.15, 0.15)),
        blocks=tuple(meta.get("blocks") or ("block3", "block4")),
    )
    return {**done, "file": str(out) if done.get("n") else None}


def load_examples(path: PathLike) -> list[dict[str, Any]]:
    """Read ``examples.npz`` back as the list :func:`dualattn.report.write_report` takes.

    Returns:
        One dict per scan: ``id``, ``image``, ``mask``, ``label``, ``pred`` (``None`` when not stored),
        ``maps`` (method -> map); ``[]`` when ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
    maps = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("map/")}
    out = []
    for i in range(len(data.get("image", []))):
        out.append({
            "id": str(data["id"][i]), "image": data["image"][i], "mask": data["mask"][i],
            "label": int(data["label"][i]), "pred": int(data["pred"][i]) if "pred" in data else None,
            "maps": {m: v[i] for m, v in maps.items()},
        })
    return out
