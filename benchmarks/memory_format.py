"""Time of the CNN classifiers with channels-last vs contiguous activations (``GatedClassifier.channels_last``).

oneDNN's CPU convolutions run faster on channels-last tensors; ``GatedClassifier`` therefore converts float32
CPU inputs to channels-last by default (``channels_last=None``). This script measures what that buys: a
training step (forward + backward) and an inference forward of every variant the demo presets train, for the
2-D default size (64x64, 8 features) and the 3-D preset's size (32^3, 8 features), batch 16, 4 channels.
Both layouts take turns step by step (round robin) and the median over steps is reported, so machine load
hits both alike. Also records the largest difference between the two layouts' logits (float32 rounding).

Usage:
    python benchmarks/memory_format.py [--steps 8] [--warmup 2] [--device cpu] [--out benchmarks/results/memory_format.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from dualattn._io import atomic_write_json  # noqa: E402
from dualattn.models import create_model  # noqa: E402

CASES = (  # (spatial dims, size, features)
    (2, 64, 8),
    (3, 32, 8),
)
VARIANTS = ("baseline", "dual", "exact", "multilevel")


def _step(model: torch.nn.Module, x: torch.Tensor, train: bool) -> None:
    if train:
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)
    if x.is_cuda:
        torch.cuda.synchronize()


def measure(dims: int, size: int, features: int, variant: str, *, steps: int, warmup: int, batch: int,
            device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model = create_model("unet_encoder", variant=variant, in_channels=4, spatial_dims=dims, features=features,
                         img_size=size).to(device)
    x = torch.randn(batch, 4, *([size] * dims), device=device)
    out: dict = {"dims": dims, "size": size, "features": features, "variant": variant, "device": device}
    with torch.no_grad():
        model.eval()
        model.channels_last = True
        a = model(x)
        model.channels_last = False
        b = model(x)
    out["max_abs_logit_difference"] = float((a - b).abs().max())
    for train in (True, False):
        times: dict[bool, list[float]] = {True: [], False: []}
        for i in range(warmup + steps):
            for layout in (True, False):
                model.channels_last = layout
                t = time.perf_counter()
                _step(model, x, train)
                if i >= warmup:
                    times[layout].append(time.perf_counter() - t)
        key = "train_step" if train else "inference"
        cl, co = statistics.median(times[True]), statistics.median(times[False])
        out[key] = {"channels_last_ms": round(1e3 * cl, 2), "contiguous_ms": round(1e3 * co, 2),
                    "speedup": round(co / cl, 3)}
    model.channels_last = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the default layout leaves CUDA inputs as they are)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_format.json"))
    args = ap.parse_args(argv)
    rows = []
    for dims, size, features in CASES:
        for variant in args.variants.split(","):
            row = measure(dims, size, features, variant, steps=args.steps, warmup=args.warmup, batch=args.batch,
                          device=args.device)
            rows.append(row)
            print(f"{dims}-D {size} {variant:>11}: train x{row['train_step']['speedup']:.2f} "
                  f"({row['train_step']['contiguous_ms']:.0f} -> {row['train_step']['channels_last_ms']:.0f} ms), "
                  f"inference x{row['inference']['speedup']:.2f}, max |logit diff| {row['max_abs_logit_difference']:.1e}",
                  flush=True)
    result = {
        "what": "median ms per step, channels-last vs contiguous activations, batch %d, 4 channels" % args.batch,
        "command": "python benchmarks/memory_format.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
                   + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "steps": args.steps, "warmup": args.warmup, "rows": rows,
    }
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
