"""Time of ROAD's imputation (``dualattn.evaluate.road.road_impute``) against the size of its solver chunks.

``road_impute`` solves one conjugate-gradient system per image and channel, ``_CHUNK_ELEMENTS`` pixels of
systems at a time. Each system is solved on its own (its iterations and stopping do not depend on the other
systems of the chunk), so the chunk size changes only the speed: a chunk whose working set (about six tensors
of its size) stays in the CPU's cache runs faster than one streamed from memory. This script times the
evaluation's shapes (16 images x 4 channels; 3-D 32^3 and 2-D 64^2; smooth images; block maps upsampled from
an 8^d grid as the gated maps are; removed fractions 0.25 / 0.5 / 0.75, least and most first, as the demo's
curves) for several chunk sizes, in turns (round robin, median of the repeats), and checks that every chunk
size gives bit-identical fills.

Usage:
    python benchmarks/road_speed.py [--repeats 3] [--exponents 16,17,18,19,20,23] [--out benchmarks/results/road_speed.json]
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from dualattn._io import atomic_write_json  # noqa: E402
from dualattn.evaluate import road  # noqa: E402
from dualattn.evaluate.perturbation import removal_masks  # noqa: E402


def cases(dims: int, size: int, *, batch: int = 16, channels: int = 4, seed: int = 0) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(seed)
    pool = F.avg_pool3d if dims == 3 else F.avg_pool2d
    x = pool(torch.randn(batch, channels, *([size] * dims), generator=g), 5, 1, 2) * 5
    coarse = torch.rand(batch, 1, *([8] * dims), generator=g)
    masks = []
    for order in ("least_first", "most_first"):
        masks.extend(removal_masks(coarse, [size] * dims, (0.25, 0.5, 0.75), order=order))
    return x, masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--exponents", default="16,17,18,19,20,23", help="chunk sizes as powers of two")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "road_speed.json")
    args = ap.parse_args()
    exps = [int(e) for e in args.exponents.split(",")]
    default = road._CHUNK_ELEMENTS
    rows = []
    try:
        for dims, size in ((3, 32), (2, 64)):
            x, masks = cases(dims, size)
            times: dict[int, list[float]] = {e: [] for e in exps}
            ref = None
            identical = {e: True for e in exps}
            for _ in range(args.repeats):
                for e in exps:
                    road._CHUNK_ELEMENTS = 1 << e
                    t = time.perf_counter()
                    out = [road.road_impute(x, m, noise_std=0.0) for m in masks]
                    times[e].append(time.perf_counter() - t)
                    if ref is None:
                        ref = out
                    identical[e] = identical[e] and all(torch.equal(a, b) for a, b in zip(out, ref))
            for e in exps:
                rows.append({"dims": dims, "size": size, "chunk_exponent": e, "chunk_elements": 1 << e,
                             "median_s": statistics.median(times[e]), "times_s": times[e],
                             "bit_identical": identical[e], "default": (1 << e) == default})
                print(f"{dims}-D {size}: 2^{e} {statistics.median(times[e]):.2f} s identical={identical[e]}")
    finally:
        road._CHUNK_ELEMENTS = default
    atomic_write_json(args.out, {
        "command": "python benchmarks/road_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "what": "seconds to fill 16 images x 4 channels at 3 fractions x 2 orders (6 road_impute calls)",
        "rows": rows,
    })


if __name__ == "__main__":
    main()
