"""Which gate recipe should the attention variants train with? Selected on val, confirmed on a fresh draw.

The sharp-gate study, run so that the test split plays no part in the choice:

1. **Selection** (data draw ``--data-seed``): every candidate in :data:`CANDIDATES` trains (a U-Net
   encoder, ``features`` wide, plain PyTorch loop) on the train split of the embedded
   ``synthetic-brain`` dataset for every seed in ``--seeds`` and is scored on the **val split only**:
   balanced accuracy; AP of the attention map (mu where the variant has consistent maps, else tau,
   nearest-upsampled to the mask grid) against the tumour mask, mean over tumour-positive images, x100,
   for the fine (block3) and coarse (block4) map; sharpness exp(entropy)/N; marginal violation
   ``|marginalize(block3) - block4|_1``. The weights of every run are kept on disk.
2. **The rule** (:func:`select`, stated in the JSON as ``selection.rule``), applied to val numbers only.
3. **Test** (same draw): only the selected recipe and the references fixed before the study (the
   baseline and the paper's gate for each variant) are evaluated on the test split, from the kept weights.
4. **Confirmation** (a fresh draw, ``--confirm-data-seed``, never used before, and fresh training seeds
   ``--confirm-seeds``): baseline, paper gate and the selected recipe are retrained and scored on
   that draw's test split; the per-seed paired difference selected - paper gate is reported.

Both data seeds are written into the JSON (``data_seed``, ``confirm_data_seed``); neither may be the sealed
draw of the default demo (:data:`dualattn.data.sealed.SEALED_DATA_SEED`), which no study reads.

Using the val masks (attention AP) for selection is a prior only the attention variants get; the
post-hoc explainers of a baseline have no such tuning knob. docs/models.md says so beside the numbers.

Every summary is mean ± sample std (ddof=1) over seeds, with a 95 % t interval.

Usage (about 35 min wall time on one torch thread of a shared 2-core CPU)::

    python benchmarks/recipe_study.py --out benchmarks/results/recipe_study.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

logger = logging.getLogger("recipe_study")

#: The variants a recipe is chosen for (the consistent-attention variants the report compares).
VARIANTS: tuple[str, ...] = ("exact", "dual", "multilevel")

#: Gate options to choose from: the paper's gate (gain 1, random start, no sharpness term) and the
#: sharp gate -- gain ``gate_scale``, ``u`` started at zero, and the area hinge (the entropy term,
#: weight 1, only above the entropy of a map spread over ``attention_area`` of the image; "off" = no
#: entropy term). See ``dualattn.attention.AttentionGate`` and ``dualattn.models.base``.
GATES: dict[str, dict] = {
    "paper gate": {},
    "g8 hinge off": {"gate_scale": 8.0, "gate_zero_init": True},
    "g8 area0.25": {"gate_scale": 8.0, "gate_zero_init": True, "entropy_weight": 1.0, "attention_area": 0.25},
    "g16 hinge off": {"gate_scale": 16.0, "gate_zero_init": True},
    "g16 area0.15": {"gate_scale": 16.0, "gate_zero_init": True, "entropy_weight": 1.0, "attention_area": 0.15},
    "g16 area0.25": {"gate_scale": 16.0, "gate_zero_init": True, "entropy_weight": 1.0, "attention_area": 0.25},
    "g16 area0.4": {"gate_scale": 16.0, "gate_zero_init": True, "entropy_weight": 1.0, "attention_area": 0.4},
}

#: Penalty weights tried for ``dual`` (1 = the current recipe, 10 = the paper's).
DUAL_ALPHAS: tuple[float, ...] = (1.0, 10.0)

#: The references fixed before the study: the paper's gate (dual at the paper's alpha, 10), and the
#: recipe this study re-examines (gain 16, zero start, area hinge 0.25, dual at alpha 1).
REFERENCE_GATE = "paper gate"
PREVIOUS_GATE = "g16 area0.25"


def _label(variant: str, gate: str, alpha: float | None = None) -> str:
    return f"{variant} a={alpha:g} {gate}" if alpha is not None else f"{variant} {gate}"


def candidates() -> list[dict]:
    """Every (variant, gate, alpha) trained in the selection phase; the baseline first."""
    out = [{"label": "baseline", "variant": "baseline", "gate": None, "alpha": None, "kwargs": {}}]
    for variant in VARIANTS:
        for gate, kw in GATES.items():
            alphas = DUAL_ALPHAS if variant == "dual" else (None,)
            for alpha in alphas:
                extra = {} if alpha is None else {"alpha": alpha}
                out.append({"label": _label(variant, gate, alpha), "variant": variant, "gate": gate,
                            "alpha": alpha, "kwargs": {**kw, **extra}})  # fmt: skip
    return out


CANDIDATES: list[dict] = candidates()


def mean_std_ci(values: list[float]) -> dict[str, float | int]:
    """Mean, sample std (ddof=1) and the 95 % t interval of the mean; std and interval NaN for n < 2.

    Example:
        >>> r = mean_std_ci([1.0, 2.0, 3.0])
        >>> r["mean"], r["std"], r["n"]
        (2.0, 1.0, 3)
    """
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(vals)
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    mean = float(np.mean(vals))
    if n < 2:
        return {"mean": mean, "std": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 1}
    from scipy import stats

    std = float(np.std(vals, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def _score(row: dict) -> float:
    """The selection score of one run: mean of the block3 and block4 val AP."""
    return 0.5 * (row["ap_block3"] + row["ap_block4"])


SELECTION_RULE = (
    "Val split only. For each variant (exact, dual at alpha=1, multilevel), a gate candidate is admissible when its "
    "mean val balanced accuracy over seeds is at least the best candidate's mean minus that best candidate's sample "
    "std over seeds (accuracy may not be traded away for a sharper map). The selection score of a run is the mean "
    "of its block3 and block4 val AP (both maps are reported, so neither block is picked after the fact). One gate "
    "is chosen for all three variants (the recipes share one gate dict): the gate admissible for every variant with "
    "the highest mean score over the three variants (if none is admissible for all, the highest mean score, flagged). "
    "Then dual's alpha in {1, 10} at that gate by the same rule (admissible within 1 std of the better balanced "
    "accuracy, higher mean score; a tie keeps 1)."
)


def select(runs: list[dict], variants: tuple[str, ...] = VARIANTS) -> dict:
    """Apply :data:`SELECTION_RULE` to selection-phase runs (``label``, ``seed``, ``val``: the val metrics).

    Returns:
        ``{"gate", "gate_kwargs", "dual_alpha", "admissible_for_all", "per_variant", "gate_scores",
        "alpha_scores"}``; ``per_variant[v]`` names each variant's own best admissible gate (information only).
    """
    by_label: dict[str, list[dict]] = {}
    for r in runs:
        by_label.setdefault(r["label"], []).append(r)

    def stats(label: str) -> dict:
        rows = by_label[label]
        return {"bal_acc": mean_std_ci([r["val"]["bal_acc"] for r in rows]),
                "score": mean_std_ci([_score(r["val"]) for r in rows])}

    def admissible(labels: list[str]) -> dict[str, bool]:
        st = {lab: stats(lab) for lab in labels}
        best = max(labels, key=lambda lab: st[lab]["bal_acc"]["mean"])
        sd = st[best]["bal_acc"]["std"]
        floor = st[best]["bal_acc"]["mean"] - (0.0 if math.isnan(sd) else sd)
        return {lab: st[lab]["bal_acc"]["mean"] >= floor - 1e-12 for lab in labels}

    gates = [g for g in GATES if all(_label(v, g, 1.0 if v == "dual" else None) in by_label for v in variants)]
    if not gates:
        raise ValueError("no gate was run for every variant; nothing to select from")
    adm: dict[str, dict[str, bool]] = {}
    per_variant = {}
    for v in variants:
        labels = [_label(v, g, 1.0 if v == "dual" else None) for g in gates]
        a = admissible(labels)
        adm[v] = {g: a[lab] for g, lab in zip(gates, labels)}
        ok = [g for g in gates if adm[v][g]]
        per_variant[v] = max(ok, key=lambda g: stats(_label(v, g, 1.0 if v == "dual" else None))["score"]["mean"])
    gate_scores = {
        g: {
            "mean_score_over_variants": float(np.mean(
                [stats(_label(v, g, 1.0 if v == "dual" else None))["score"]["mean"] for v in variants])),
            "admissible": {v: adm[v][g] for v in variants},
        }
        for g in gates
    }  # fmt: skip
    pool = [g for g in gates if all(adm[v][g] for v in variants)]
    admissible_for_all = bool(pool)
    chosen = max(pool or gates, key=lambda g: gate_scores[g]["mean_score_over_variants"])
    alpha_labels = {a: _label("dual", chosen, a) for a in DUAL_ALPHAS if _label("dual", chosen, a) in by_label}
    a_ok = admissible(list(alpha_labels.values()))
    alpha_scores = {f"{a:g}": {"score": stats(lab)["score"], "bal_acc": stats(lab)["bal_acc"], "admissible": a_ok[lab]}
                    for a, lab in alpha_labels.items()}  # fmt: skip
    best_alpha, best = 1.0, -math.inf
    for a, lab in alpha_labels.items():
        sc = stats(lab)["score"]["mean"]
        if a_ok[lab] and sc > best + 1e-12:
            best_alpha, best = a, sc
    return {"gate": chosen, "gate_kwargs": GATES[chosen], "dual_alpha": best_alpha,
            "admissible_for_all": admissible_for_all, "per_variant": per_variant, "gate_scores": gate_scores,
            "alpha_scores": alpha_scores}  # fmt: skip


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from dualattn.data import FolderDataset

    ds = FolderDataset(root, split=split)
    items = [ds[i] for i in range(len(ds))]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items]).long()
    m = torch.stack([it["mask"] for it in items])[:, 0]
    return x, y, m


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, pred))


def map_metrics(maps: torch.Tensor, masks: torch.Tensor, positive: torch.Tensor) -> dict[str, float]:
    """AP vs mask (positives), sharpness exp(H)/N (all images)."""
    from sklearn.metrics import average_precision_score

    n = maps[0].numel()
    p = maps.flatten(1).double().clamp_min(1e-300)
    entropy = -(p * p.log()).sum(1)
    sharp = (entropy.exp() / n).mean().item()
    f = masks.shape[-1] // maps.shape[-1]
    up = maps.repeat_interleave(f, 1).repeat_interleave(f, 2)
    aps = [
        average_precision_score(masks[i].flatten().numpy() > 0.5, up[i].flatten().numpy())
        for i in torch.nonzero(positive).flatten().tolist()
        if masks[i].sum() > 0
    ]
    return {"ap": 100.0 * float(np.mean(aps)) if aps else float("nan"), "sharpness": sharp}


def evaluate(model, x, y, m, *, batch: int = 64) -> dict[str, float]:
    model.eval()
    logits, maps = [], {}
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model.forward_with_attention(x[i : i + batch])
            logits.append(out.logits)
            src = out.mu if out.mu else out.tau
            for b, t in src.items():
                maps.setdefault(b, []).append(t)
    pred = torch.cat(logits).argmax(1).numpy()
    res = {"bal_acc": balanced_accuracy(y.numpy(), pred)}
    pos = y == 1
    cat = {b: torch.cat(v) for b, v in maps.items()}
    for b in ("block3", "block4"):
        if b in cat:
            mm = map_metrics(cat[b], m, pos)
            res[f"ap_{b}"] = mm["ap"]
            res[f"sharpness_{b}"] = mm["sharpness"]
    if "block3" in cat and "block4" in cat:
        fine, coarse = cat["block3"], cat["block4"]
        f = fine.shape[-1] // coarse.shape[-1]
        marg = F.avg_pool2d(fine.unsqueeze(1), f).squeeze(1) * f * f
        res["marginal_violation_l1"] = (marg - coarse).abs().flatten(1).sum(1).mean().item()
    return res


def train(model, x, y, *, epochs: int, batch: int, lr: float, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    times, penalties = [], []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            xb = x[idx]
            if torch.rand((), generator=g) < 0.5:  # horizontal flip augmentation
                xb = xb.flip(-1)
            t0 = time.perf_counter()
            out = model.forward_with_attention(xb)
            loss = F.cross_entropy(out.logits, y[idx]) + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
            penalties.append(float(out.penalty.detach()))
    return {"step_ms": 1000.0 * float(np.mean(times)), "final_penalty": float(np.mean(penalties[-5:]))}


def _versions() -> dict[str, str]:
    import subprocess

    import scipy
    import sklearn

    import dualattn

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()  # fmt: skip
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                                    check=True, cwd=Path(__file__).resolve().parent).stdout.strip())  # fmt: skip
        commit += " (benchmarks/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "dualattn": getattr(dualattn, "__version__", "unknown"), "git_commit": commit}  # fmt: skip


def _machine(threads: int) -> str:
    import os

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
            f"{threads} torch thread(s), {platform.system()} {platform.release()}")  # fmt: skip


def _dataset(root: Path, n: int, size: int, seed: int) -> Path:
    from dualattn.data import make_dataset

    out = root / f"synthetic-brain-n{n}-s{size}-seed{seed}"
    if not (out / "labels.csv").exists():
        make_dataset("synthetic-brain", out, n=n, size=size, seed=seed)
    return out


def _build(args: argparse.Namespace, cand: dict, in_channels: int):
    from dualattn.models import create_model

    return create_model(args.model, variant=cand["variant"], in_channels=in_channels, features=args.features,
                        img_size=args.size, **cand["kwargs"])  # fmt: skip


def _fit_eval(args, cand, seed, xtr, ytr, splits: dict, ckpt: Path | None) -> dict:
    torch.manual_seed(seed)
    model = _build(args, cand, xtr.shape[1])
    t0 = time.perf_counter()
    stats = train(model, xtr, ytr, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=seed)
    row = {"label": cand["label"], "variant": cand["variant"], "gate": cand["gate"], "alpha": cand["alpha"],
           "seed": seed, **stats, "train_s": time.perf_counter() - t0}  # fmt: skip
    for split, (x, y, m) in splits.items():
        row[split] = evaluate(model, x, y, m)
    if ckpt is not None:
        torch.save(model.state_dict(), ckpt)
    return row


_METRICS = ("bal_acc", "ap_block3", "ap_block4", "sharpness_block3", "sharpness_block4", "marginal_violation_l1")


def summarize(runs: list[dict], split: str) -> list[dict]:
    """Per label: mean, sample std and 95 % interval over seeds of every metric of ``split``."""
    out = []
    for label in dict.fromkeys(r["label"] for r in runs if split in r):
        rows = [r for r in runs if r["label"] == label and split in r]
        s = {"label": label, "variant": rows[0]["variant"], "gate": rows[0]["gate"], "alpha": rows[0]["alpha"],
             "seeds": [r["seed"] for r in rows]}  # fmt: skip
        for k in _METRICS:
            vals = [r[split][k] for r in rows if k in r[split]]
            if vals:
                s[k] = mean_std_ci(vals)
        out.append(s)
    return out


def paired(runs: list[dict], split: str, a: str, b: str) -> dict:
    """Per metric: the per-seed difference ``a - b`` (same seed, same data) summarized over seeds."""
    ra = {r["seed"]: r[split] for r in runs if r["label"] == a and split in r}
    rb = {r["seed"]: r[split] for r in runs if r["label"] == b and split in r}
    seeds = sorted(set(ra) & set(rb))
    out = {"a": a, "b": b, "seeds": seeds}
    for k in ("bal_acc", "ap_block3", "ap_block4"):
        diffs = [ra[s][k] - rb[s][k] for s in seeds if k in ra[s] and k in rb[s]]
        if diffs:
            out[k] = {**mean_std_ci(diffs), "per_seed": diffs}
    return out


def _pairs(rows: list[dict], arms: dict[str, str]) -> dict:
    """selected - paper gate and selected - previous default, per seed, on the test split."""
    return {f"selected - {ref}": paired(rows, "test", arms["selected"], arms[ref]) for ref in ("paper", "previous default")}


def _write(path: str, payload: dict) -> None:
    from dualattn._io import atomic_write_json

    atomic_write_json(path, payload)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    variants = tuple(args.variants)
    gates = args.gates or list(GATES)
    unknown = [g for g in gates if g not in GATES]
    if unknown:
        raise SystemExit(f"unknown gates {unknown}; valid: {list(GATES)}")
    if args.confirm_data_seed == args.data_seed:
        raise SystemExit("--confirm-data-seed must differ from --data-seed (the confirmation needs a fresh draw)")
    from dualattn.data.sealed import refuse_sealed

    refuse_sealed(args.data_seed, who="benchmarks/recipe_study.py --data-seed")
    refuse_sealed(args.confirm_data_seed, who="benchmarks/recipe_study.py --confirm-data-seed")
    root = Path(args.data_dir or tempfile.mkdtemp(prefix="recipe_study_data_"))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="recipe_study_ckpt_"))
    work.mkdir(parents=True, exist_ok=True)
    sel_dir = _dataset(root, args.n, args.size, args.data_seed)
    xtr, ytr, _ = load_split(sel_dir, "train")
    val = load_split(sel_dir, "val")
    cands = [c for c in CANDIDATES if c["variant"] == "baseline" or (c["variant"] in variants and c["gate"] in gates)]
    setup = {k: getattr(args, k) for k in ("model", "n", "size", "features", "epochs", "batch", "lr", "seeds",
                                           "data_seed", "confirm_data_seed", "confirm_seeds", "threads")}  # fmt: skip
    base = {"benchmark": "recipe_study", "study": "sharp-gate, val-selected", "dataset": "synthetic-brain",
            "data_seed": args.data_seed, "confirm_data_seed": args.confirm_data_seed,
            "command": "python benchmarks/recipe_study.py " + " ".join(args.argv),
            "machine": _machine(args.threads), "versions": _versions(), "setup": setup,
            "variants": list(variants), "gates": {g: GATES[g] for g in gates}, "dual_alphas": list(DUAL_ALPHAS),
            "splits": {"selection_draw": {s: len(load_split(sel_dir, s)[1]) for s in ("train", "val", "test")}},
            "selection": {"rule": SELECTION_RULE}}  # fmt: skip
    logger.info("selection draw %s: train %s, val %s", sel_dir.name, tuple(xtr.shape), tuple(val[0].shape))

    # 1. selection phase: val only
    runs: list[dict] = []
    for seed in args.seeds:
        for cand in cands:
            ckpt = work / f"{cand['label'].replace(' ', '_').replace('=', '')}_seed{seed}.pt"
            row = _fit_eval(args, cand, seed, xtr, ytr, {"val": val}, ckpt)
            runs.append(row)
            _write(args.out, {**base, "partial": True, "phase": "selection", "selection_runs": runs})
            logger.info("val %s seed %d: %s (%.0fs)", cand["label"], seed,
                        {k: round(v, 3) for k, v in row["val"].items()}, row["train_s"])  # fmt: skip

    # 2. the rule, on val numbers only
    chosen = select(runs, variants)
    logger.info("selected gate %s, dual alpha %g (admissible for all: %s)", chosen["gate"], chosen["dual_alpha"],
                chosen["admissible_for_all"])  # fmt: skip
    by_label = {c["label"]: c for c in CANDIDATES}
    ref_alpha = 10.0
    arms: dict[str, dict[str, str]] = {}
    for v in variants:
        arms[v] = {
            "paper": _label(v, REFERENCE_GATE, ref_alpha if v == "dual" else None),
            "previous default": _label(v, PREVIOUS_GATE, 1.0 if v == "dual" else None),
            "selected": _label(v, chosen["gate"], chosen["dual_alpha"] if v == "dual" else None),
        }
    test_labels = ["baseline", *dict.fromkeys(lab for v in variants for lab in arms[v].values())]
    test_labels = [lab for lab in test_labels if any(r["label"] == lab for r in runs)]

    # 3. test split of the selection draw: the selected recipe and the fixed references only
    test = load_split(sel_dir, "test")
    test_rows = []
    for seed in args.seeds:
        for lab in test_labels:
            cand = by_label[lab]
            model = _build(args, cand, xtr.shape[1])
            model.load_state_dict(torch.load(work / f"{lab.replace(' ', '_').replace('=', '')}_seed{seed}.pt"))
            test_rows.append({"label": lab, "variant": cand["variant"], "gate": cand["gate"], "alpha": cand["alpha"],
                              "seed": seed, "test": evaluate(model, *test)})  # fmt: skip
    partial = {**base, "partial": True, "phase": "confirmation", "selection_runs": runs,
               "selection": {**base["selection"], **chosen, "arms": arms}, "test_runs": test_rows}  # fmt: skip
    _write(args.out, partial)

    # 4. confirmation on a fresh draw with fresh training seeds
    conf_dir = _dataset(root, args.n, args.size, args.confirm_data_seed)
    cxtr, cytr, _ = load_split(conf_dir, "train")
    cval, ctest = load_split(conf_dir, "val"), load_split(conf_dir, "test")
    conf_rows = []
    for seed in args.confirm_seeds:
        for lab in test_labels:
            row = _fit_eval(args, by_label[lab], seed, cxtr, cytr, {"val": cval, "test": ctest}, None)
            conf_rows.append(row)
            _write(args.out, {**partial, "confirmation_runs": conf_rows})
            logger.info("confirm %s seed %d: %s", lab, seed, {k: round(v, 3) for k, v in row["test"].items()})

    result = {
        **base,
        "partial": False,
        "selection": {**base["selection"], **chosen, "arms": arms},
        "val_summary": summarize(runs, "val"),
        "test_summary": summarize(test_rows, "test"),
        "test_paired": {v: _pairs(test_rows, arms[v]) for v in variants},
        "confirmation": {
            "data_seed": args.confirm_data_seed,
            "splits": {s: len(load_split(conf_dir, s)[1]) for s in ("train", "val", "test")},
            "summary": summarize(conf_rows, "test"),
            "paired": {v: _pairs(conf_rows, arms[v]) for v in variants},
        },
        "wall_s": time.perf_counter() - t_start,
        "selection_runs": runs,
        "test_runs": test_rows,
        "confirmation_runs": conf_rows,
    }
    _write(args.out, result)
    print("val (every candidate):\n" + format_table(result["val_summary"]))
    print("test, selection draw (selected + references):\n" + format_table(result["test_summary"]))
    print("test, fresh draw (confirmation):\n" + format_table(result["confirmation"]["summary"]))
    return result


def show(path: str) -> str:
    """The markdown tables docs/models.md quotes, printed from a finished result file."""
    res = json.loads(Path(path).read_text())
    if res.get("partial"):
        raise SystemExit(f"{path} is a partial result (phase {res.get('phase')!r})")
    sel = res["selection"]
    out = [f"selected gate: {sel['gate']} {sel['gate_kwargs']}, dual alpha {sel['dual_alpha']:g}, "
           f"admissible for all variants: {sel['admissible_for_all']}; per variant: {sel['per_variant']}", "",
           "val, every candidate:", format_table(res["val_summary"]), "",
           "test of the selection draw, selected recipe and fixed references:", format_table(res["test_summary"]), "",
           f"fresh draw (data seed {res['confirmation']['data_seed']}), test:",
           format_table(res["confirmation"]["summary"]), "", "paired differences (per seed, mean ± std [95 % t interval]):",
           "| where | variant | comparison | bal_acc | ap_block3 | ap_block4 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for where, pairs in (("test", res["test_paired"]), ("fresh draw", res["confirmation"]["paired"])):
        for v, comps in pairs.items():
            for name, c in comps.items():
                cells = []
                for k, scale in (("bal_acc", 100.0), ("ap_block3", 1.0), ("ap_block4", 1.0)):
                    d = c.get(k)
                    cells.append("-" if d is None else
                                 f"{scale * d['mean']:+.1f} ± {scale * d['std']:.1f} "
                                 f"[{scale * d['ci_low']:+.1f}, {scale * d['ci_high']:+.1f}]")  # fmt: skip
                out.append(f"| {where} | {v} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def format_table(summary: list[dict]) -> str:
    """A markdown table: mean ± sample std over seeds (balanced accuracy and AP x100)."""
    cols = ["bal_acc", "ap_block3", "ap_block4", "sharpness_block3", "sharpness_block4", "marginal_violation_l1"]
    lines = ["| config | n | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for s in summary:
        cells = []
        for c in cols:
            v = s.get(c)
            if v is None:
                cells.append("-")
            elif c == "bal_acc":
                cells.append(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}")
            elif c.startswith(("sharp", "marginal")):
                cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}")
            else:
                cells.append(f"{v['mean']:.1f} ± {v['std']:.1f}")
        lines.append(f"| {s['label']} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_times(args: argparse.Namespace) -> dict:
    """Median wall time of one training step per variant on random inputs (interleaved, so load is shared)."""
    from dualattn._io import atomic_write_json
    from dualattn.models import count_parameters, create_model

    torch.set_num_threads(args.threads)
    variants = [("baseline", {}), ("unconstrained", {}), ("dual", {}), ("kl", {}),
                ("exact", {"exact_mode": "two_pass"}), ("exact", {"exact_mode": "pool"}), ("multilevel", {})]
    models = []
    for variant, kw in variants:
        torch.manual_seed(0)
        m = create_model("unet_encoder", variant=variant, in_channels=4, features=args.features, img_size=args.size, **kw)
        models.append((f"{variant} {kw.get('exact_mode', '')}".strip(), m, torch.optim.Adam(m.parameters(), lr=1e-3)))
    x = torch.randn(args.batch, 4, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))
    times: dict[str, list[float]] = {label: [] for label, _, _ in models}
    for rep in range(args.steps + 2):
        for label, m, opt in models:
            t0 = time.perf_counter()
            out = m.forward_with_attention(x)
            loss = F.cross_entropy(out.logits, y) + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rep >= 2:  # warm-up
                times[label].append(1000.0 * (time.perf_counter() - t0))
    rows = [{"label": label, "median_ms": float(np.median(times[label])), "params": count_parameters(m)}
            for label, m, _ in models]
    result = {"benchmark": "recipe_step_time", "machine": f"CPU, {args.threads} torch threads (shared)",
              "torch": torch.__version__, "batch": args.batch, "size": args.size, "features": args.features,
              "rows": rows}
    atomic_write_json(args.out, result)
    for r in rows:
        print(f"{r['label']:<20} {r['median_ms']:8.1f} ms  {r['params']:,} params")
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/recipe_study.json")
    p.add_argument("--model", default="unet_encoder", help="backbone (dualattn.models.list_models())")
    p.add_argument("--data-dir", default=None, help="cache folder for the generated datasets (one per data seed)")
    p.add_argument("--work-dir", default=None, help="folder for the selection runs' weights (default: a temp dir)")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--confirm-data-seed", type=int, default=1, help="the fresh draw for the confirmation")
    p.add_argument("--confirm-seeds", type=int, nargs="+", default=[10, 11, 12])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--gates", nargs="+", default=None, help=f"gate candidates (default all: {list(GATES)})")
    p.add_argument("--show", default=None, metavar="JSON", help="print the tables of a finished result file")
    p.add_argument("--step-time", action="store_true", help="only time one training step per variant")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (--step-time)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.show:
        print(show(args.show))
    elif args.step_time:
        step_times(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
