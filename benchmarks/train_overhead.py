"""Time per training step (forward + backward + Adam step) of attention variants vs the baseline.

The U-Net encoder (the paper's BraTS classifier) at 128x128, batch 16, 4 input channels, measured
side by side in one process: the variants take turns step by step (round robin), so a change in
machine load hits all of them alike, and the median over steps is reported.

Two measurements:
  raw        a plain loop: loss = CE + penalty, backward, Adam step.
  lightning  the same steps inside ``dualattn.train``'s LightningModule under a Lightning Trainer
             (timed from on_train_batch_start to on_train_batch_end): the loop's own overhead. The
             variants alternate in 4 rounds of short fits (warm-up steps dropped in each).

Usage:
    python benchmarks/train_overhead.py [--steps 12] [--warmup 2] [--size 128] [--batch 16]
        [--variants baseline,dual,exact,exact-grad] [--no-lightning] [--out benchmarks/results/train_overhead.json]

A variant label may carry suffixes: ``-grad`` (exact's first pass with gradient, the former default),
``-pool`` (attention pooling), ``-paper`` (the paper's gate: no gain, no sharpness term). Without a
suffix a variant gets its training recipe's gate options (``dualattn.train.recipes.DEFAULT_RECIPES``).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TARGET = 1.15


def _stats(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "mean_ms": statistics.fmean(ms), "q1_ms": q[0], "q3_ms": q[2],
            "min_ms": ms[0], "n": len(ms)}  # fmt: skip


def _models(variants: list[str], *, channels: int, size: int, features: int) -> dict[str, torch.nn.Module]:
    from dualattn.models import PAPER_ALPHA, PENALTY_VARIANTS, create_model
    from dualattn.train.recipes import DEFAULT_RECIPES

    out = {}
    for label in variants:
        v, options = _spec(label)
        torch.manual_seed(0)
        # the variant as `dualattn train` builds it: its recipe's gate options, then the label's
        kw: dict[str, Any] = {**DEFAULT_RECIPES.get(v, {}).get("model_kwargs", {}), **options}
        kw.update({"features": features, "img_size": [size, size]})
        if v in PENALTY_VARIANTS:
            kw["alpha"] = PAPER_ALPHA
        out[label] = create_model("unet_encoder", variant=v, in_channels=channels, num_classes=2, **kw).train()
    return out


#: label suffixes selecting model options (e.g. ``exact-grad``: the first pass with gradient)
_SUFFIXES: dict[str, dict[str, Any]] = {
    "grad": {"exact_proposal": "grad"},
    "pool": {"exact_mode": "pool"},
    "paper": {"gate_scale": 1.0, "gate_zero_init": False, "entropy_weight": 0.0, "attention_area": None},
}


def _spec(label: str) -> tuple[str, dict[str, Any]]:
    """``"exact-grad-sharp"`` -> (``"exact"``, the options of every suffix)."""
    variant, *suffixes = label.split("-")
    kw: dict[str, Any] = {}
    for suffix in suffixes:
        if suffix not in _SUFFIXES:
            raise SystemExit(f"unknown variant suffix {suffix!r} in {label!r}; valid: {', '.join(_SUFFIXES)}")
        kw.update(_SUFFIXES[suffix])
    return variant, kw


def bench_raw(variants: list[str], *, steps: int, warmup: int, batch: int, size: int, channels: int,
              features: int) -> dict[str, Any]:  # fmt: skip
    models = _models(variants, channels=channels, size=size, features=features)
    opts = {v: torch.optim.Adam(m.parameters(), lr=1e-3) for v, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    y = torch.randint(0, 2, (batch,), generator=gen)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(warmup + steps):
        for v in variants:
            model, opt = models[v], opts[v]
            t0 = time.perf_counter()
            out = model.forward_with_attention(x)
            loss = F.cross_entropy(out.logits, y) + out.penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[v].append(dt)
    return {v: _stats(t) for v, t in times.items()}


def bench_lightning(variants: list[str], *, steps: int, warmup: int, batch: int, size: int, channels: int,
                    features: int) -> dict[str, Any]:  # fmt: skip
    import lightning.pytorch as pl

    from dualattn.train import TrainConfig
    from dualattn.train.module import ClassifierModule

    class Timer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001
            self.times.append(time.perf_counter() - self._t0)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    y = torch.randint(0, 2, (batch,), generator=gen)
    rounds = max(1, min(4, steps))
    per_round = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]

    class Repeat(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"image": x, "label": y}

    models = _models(variants, channels=channels, size=size, features=features)
    times: dict[str, list[float]] = {v: [] for v in variants}
    # Lightning owns the loop, so the variants cannot alternate step by step: they alternate in rounds
    # (one short fit each, the order rotating), so a drift in machine speed hits them all alike
    for r, n in enumerate(per_round):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for v in order:
            cfg = TrainConfig(variant=_spec(v)[0], scheduler="none", accelerator="cpu", devices=1)
            timer = Timer()
            trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                 limit_val_batches=0, callbacks=[timer])  # fmt: skip
            loader = torch.utils.data.DataLoader(Repeat(warmup + n), batch_size=None)
            trainer.fit(ClassifierModule(models[v], config=cfg), train_dataloaders=loader)
            times[v].extend(timer.times[warmup:])
    return {v: _stats(t) for v, t in times.items()}


def _ratios(stats: dict[str, Any], base: str = "baseline") -> dict[str, float]:
    b = stats[base]["median_ms"]
    return {v: s["median_ms"] / b for v, s in stats.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--variants", default="baseline,dual,exact,exact-grad")
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train_overhead.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if variants[0] != "baseline":
        variants = ["baseline", *[v for v in variants if v != "baseline"]]
    common = dict(steps=args.steps, warmup=args.warmup, batch=args.batch, size=args.size, channels=args.channels,
                  features=args.features)  # fmt: skip
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    raw = bench_raw(variants, **common)
    result: dict[str, Any] = {"raw": {"steps": raw, "ratio_to_baseline": _ratios(raw)}}
    if not args.no_lightning:
        lit = bench_lightning(variants, **common)
        result["lightning"] = {
            "steps": lit,
            "ratio_to_baseline": _ratios(lit),
            "lightning_over_raw": {v: lit[v]["median_ms"] / raw[v]["median_ms"] for v in variants},
        }
    import lightning

    import dualattn

    report = {
        "benchmark": "train_overhead",
        "what": "median time per training step (forward + backward + Adam step), unet_encoder",
        "setup": {**common, "model": "unet_encoder", "variants": variants, "alpha": 10.0},
        "target_ratio": TARGET,
        "meets_target": {v: r <= TARGET for v, r in result["raw"]["ratio_to_baseline"].items() if v != "baseline"},
        **result,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_start": load0,
            "loadavg_end": os.getloadavg(),
            "note": "CPU shared with other processes; variants interleaved step by step so load hits all alike",
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "lightning": lightning.__version__, "dualattn": dualattn.__version__},  # fmt: skip
        "wall_time_s": time.perf_counter() - t0,
    }
    from dualattn._io import atomic_write_json

    atomic_write_json(args.out, report)
    for kind in ("raw", "lightning"):
        if kind in result:
            for v, s in result[kind]["steps"].items():
                r = result[kind]["ratio_to_baseline"][v]
                print(f"{kind:9s} {v:9s} median {s['median_ms']:8.1f} ms  ({r:.3f}x baseline)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
