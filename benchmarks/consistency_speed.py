"""Speed of the exact consistency projection against the alternatives (writes JSON; not a test).

Compares, on one batch of attention maps (default: 32 samples, 32x32 fine + 16x16 coarse, float32, CPU):

- ``project_exact`` (autograd, log space) and ``project_exact(fused=True)`` (analytic backward), forward
  and forward+backward;
- the M=3 chain (32x32, 16x16, 8x8), forward+backward;
- the cvxpy per-sample loop (``solve_cvx``; the paper's CVX baseline), forward only;
- cvxpylayers (forward+backward through the conic program) if it is installed;
- the paper's dual reparameterization given lambda (written independently here, in probability space,
  as the paper's code does it) and ours (``reparameterize``, log space), forward+backward;
- a floor: one elementwise op over the fine map (forward, and forward+backward);
- the Eq. 6 penalty: the paper's way (reparameterize the fine map, pool, KL) against ``dual_penalty``
  (the same value from the coarse grid alone), and ``kl_consistency``, forward+backward;
- for orientation, 3D volumes (4 x 16^3 fine + 8^3 coarse), forward+backward.

cvxpylayers: ``pip install --dry-run cvxpylayers`` on this machine pulls only cvxpylayers 1.2.0 and
diffcp 1.1.9 (no new torch), so it was installed for this benchmark; it is not a dependency of dualattn.

Each timing is the median over ``--repeats`` repeats of the mean of ``--number`` calls (after warm-up),
in process CPU time (``median_s``; wall-clock beside it as ``wall_median_s``): on a shared machine other
jobs preempt this one, which inflates wall-clock time at random but not CPU time;
the fast methods are timed round-robin (repeat k runs every method once) so that the drifting load of a
shared machine hits all of them alike.
Backward passes use fixed random upstream gradients for both outputs.

Run:
    python benchmarks/consistency_speed.py                       # writes benchmarks/results/consistency_speed.json
    python benchmarks/consistency_speed.py --threads 2 --out /tmp/speed2.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from dualattn._io import atomic_write_json
from dualattn.consistency import (
    dual_penalty,
    kl_consistency,
    project_exact,
    project_exact_chain,
    project_exact_log,
    reparameterize,
    solve_cvx,
)

logger = logging.getLogger("consistency_speed")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "consistency_speed.json"


def _summary(wall: list[float], cpu: list[float], *, repeats: int, number: int) -> dict[str, float]:
    return {
        "median_s": statistics.median(cpu),
        "min_s": min(cpu),
        "max_s": max(cpu),
        "wall_median_s": statistics.median(wall),
        "wall_min_s": min(wall),
        "repeats": repeats,
        "number": number,
    }


def timeit(fn: Callable[[], Any], *, number: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and spread (over repeats) of the mean time of ``number`` calls, in seconds.

    ``median_s`` is process CPU time (robust to other jobs on a shared machine taking the cores);
    ``wall_median_s`` is wall-clock time.
    """
    return timeit_round_robin({"f": fn}, number=number, repeats=repeats, warmup=warmup)["f"]


def timeit_round_robin(
    fns: dict[str, Callable[[], Any]], *, number: int, repeats: int, warmup: int = 3
) -> dict[str, dict[str, float]]:
    """Like :func:`timeit` for several functions, interleaved: repeat ``k`` times every function once.

    On a shared machine the load drifts over seconds; interleaving exposes every method to the same
    drift, so the ratios stay meaningful even when absolute times are inflated.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(number):
                fn()
            wall[name].append((time.perf_counter() - t0) / number)
            cpu[name].append((time.process_time() - c0) / number)
    return {k: _summary(wall[k], cpu[k], repeats=repeats, number=number) for k in fns}


def paper_reparameterization(tau_k: torch.Tensor, tau_l: torch.Tensor, lam: torch.Tensor, factor: int):
    """The paper's Theorem 3.1 map as its code computes it: exp, nearest upsampling, normalizing sums."""
    e = torch.exp(lam)
    ul = tau_l * e
    mu_l = ul / ul.sum(dim=(1, 2), keepdim=True)
    down = F.interpolate((1.0 / e).unsqueeze(1), scale_factor=factor, mode="nearest").squeeze(1)
    uk = tau_k * down
    mu_k = uk / uk.sum(dim=(1, 2), keepdim=True)
    return mu_k, mu_l


def paper_penalty(tau_k: torch.Tensor, tau_l: torch.Tensor, lam: torch.Tensor, factor: int) -> torch.Tensor:
    """Eq. 6 the paper's way: reparameterize the fine map, sum-pool it, KL against the coarse one (mean)."""
    mu_k, mu_l = paper_reparameterization(tau_k, tau_l, lam, factor)
    marg = F.avg_pool2d(mu_k.unsqueeze(1), factor).squeeze(1) * factor**2
    return (mu_l * (mu_l.log() - marg.log())).flatten(1).sum(1).mean()


def softmax_map(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.flatten(1), 1).reshape(logits.shape)


def make_inputs(batch: int, fine: int, coarse: int, *, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    tau_k = softmax_map(torch.randn(batch, fine, fine, generator=gen, dtype=dtype))
    tau_l = softmax_map(torch.randn(batch, coarse, coarse, generator=gen, dtype=dtype))
    lam = 0.1 * torch.randn(batch, coarse, coarse, generator=gen, dtype=dtype)
    g_k = torch.randn(batch, fine, fine, generator=gen, dtype=dtype)
    g_l = torch.randn(batch, coarse, coarse, generator=gen, dtype=dtype)
    return tau_k, tau_l, lam, g_k, g_l


def fwd_bwd(fn: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor], grads: list[torch.Tensor]):
    def run() -> None:
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        outs = fn(*leaves)
        torch.autograd.backward(list(outs), grads)

    return run


def fwd_only(fn: Callable[..., Any], inputs: list[torch.Tensor]):
    def run() -> None:
        with torch.no_grad():
            fn(*inputs)

    return run


def bench_cvxpylayers(tau_k, tau_l, g_k, g_l, *, repeats: int) -> dict[str, Any]:
    """Forward+backward through cvxpylayers (differentiating the conic program), if installed."""
    try:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer
    except ImportError as exc:
        return {"skipped": f"cvxpylayers not importable: {exc}"}
    from dualattn.consistency.cvx import _block_sum_matrix

    fine, coarse = tuple(tau_k.shape[1:]), tuple(tau_l.shape[1:])
    n_k, n_l = tau_k[0].numel(), tau_l[0].numel()
    a = _block_sum_matrix(fine, coarse)
    x = cp.Variable(n_k, nonneg=True)
    pk, pl = cp.Parameter(n_k), cp.Parameter(n_l)
    y = a @ x
    obj = cp.sum(-cp.entr(x)) - pk @ x + cp.sum(-cp.entr(y)) - pl @ y
    problem = cp.Problem(cp.Minimize(obj), [cp.sum(x) == 1])
    layer = CvxpyLayer(problem, parameters=[pk, pl], variables=[x])
    batch = tau_k.shape[0]
    lk = tau_k.double().log().reshape(batch, -1)
    ll = tau_l.double().log().reshape(batch, -1)

    def run():
        a_ = lk.clone().requires_grad_(True)
        b_ = ll.clone().requires_grad_(True)
        (mu,) = layer(a_, b_)
        mu.backward(g_k.double().reshape(batch, -1))
        return mu, a_.grad

    c0, t0 = time.process_time(), time.perf_counter()
    mu, grad = run()
    wall = [time.perf_counter() - t0]
    samples = [time.process_time() - c0]
    for _ in range(max(0, repeats - 1)):
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        wall.append(time.perf_counter() - t0)
        samples.append(time.process_time() - c0)
    # accuracy of its forward and of its gradient against the closed form (float64 autograd)
    lk_ = lk.clone().requires_grad_(True)
    ll_ = ll.clone().requires_grad_(True)
    ref_k, _ = project_exact_log(lk_.reshape(tau_k.shape), ll_.reshape(tau_l.shape))
    ref_k = ref_k.exp()
    ref_k.backward(g_k.double())
    ref_grad = lk_.grad.reshape(batch, -1)
    # gradients w.r.t. log tau are defined up to a per-sample constant only through the normalization
    # (inputs off the simplex); compare after removing the per-sample mean
    cen = lambda t: t - t.mean(1, keepdim=True)  # noqa: E731
    return {
        "fwd_bwd": _summary(wall, samples, repeats=len(samples), number=1),
        "max_abs_err_mu": float((mu.detach() - ref_k.detach().reshape(batch, -1)).abs().max()),
        "max_abs_err_grad_log_tau_fine": float((cen(grad) - cen(ref_grad)).abs().max()),
        "max_abs_grad_log_tau_fine": float(cen(ref_grad).abs().max()),
    }


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "cvxpy", "clarabel", "cvxpylayers", "diffcp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--fine", type=int, default=32)
    parser.add_argument("--coarse", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=200, help="calls per repeat for the fast methods")
    parser.add_argument("--cvx-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cvxpylayers", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    tau_k, tau_l, lam, g_k, g_l = make_inputs(args.batch, args.fine, args.coarse, seed=args.seed)
    factor = args.fine // args.coarse
    n, r = args.number, args.repeats
    res: dict[str, Any] = {}
    fast: dict[str, Callable[[], Any]] = {}

    def record(name: str, fn: Callable[[], Any]) -> None:
        fast[name] = fn

    record("floor_elementwise_fwd", fwd_only(lambda a: a * 2.0, [tau_k]))
    record("floor_elementwise_fwd_bwd", fwd_bwd(lambda a: (a * 2.0,), [tau_k], [g_k]))
    record("project_exact_fwd", fwd_only(project_exact, [tau_k, tau_l]))
    record("project_exact_fwd_bwd", fwd_bwd(project_exact, [tau_k, tau_l], [g_k, g_l]))
    fused = lambda a, b: project_exact(a, b, fused=True)  # noqa: E731
    record("project_exact_fused_fwd", fwd_only(fused, [tau_k, tau_l]))
    record("project_exact_fused_fwd_bwd", fwd_bwd(fused, [tau_k, tau_l], [g_k, g_l]))
    record("project_exact_log_fwd_bwd", fwd_bwd(project_exact_log, [tau_k.log(), tau_l.log()], [g_k, g_l]))
    paper = lambda a, b, c: paper_reparameterization(a, b, c, factor)  # noqa: E731
    record("paper_reparameterization_fwd", fwd_only(paper, [tau_k, tau_l, lam]))
    record("paper_reparameterization_fwd_bwd", fwd_bwd(paper, [tau_k, tau_l, lam], [g_k, g_l]))
    record("reparameterize_fwd_bwd", fwd_bwd(reparameterize, [tau_k, tau_l, lam], [g_k, g_l]))
    one = torch.ones(())
    record(
        "paper_penalty_fwd_bwd",
        fwd_bwd(lambda a, b, c: (paper_penalty(a, b, c, factor),), [tau_k, tau_l, lam], [one]),
    )
    record("dual_penalty_fwd_bwd", fwd_bwd(lambda a, b, c: (dual_penalty(a, b, c),), [tau_k, tau_l, lam], [one]))
    record("kl_consistency_fwd_bwd", fwd_bwd(lambda a, b: (kl_consistency(a, b),), [tau_k, tau_l], [one]))
    c3 = args.coarse // 2
    tau_3 = softmax_map(torch.randn(args.batch, c3, c3, generator=torch.Generator().manual_seed(1)))
    g_3 = torch.randn_like(tau_3)
    record(
        "project_exact_chain3_fwd_bwd",
        fwd_bwd(lambda a, b, c: tuple(project_exact_chain([a, b, c])), [tau_k, tau_l, tau_3], [g_k, g_l, g_3]),
    )

    res.update(timeit_round_robin(fast, number=n, repeats=r))
    for name in fast:
        logger.info("%-36s %10.1f us", name, res[name]["median_s"] * 1e6)

    # 3D for orientation (not part of the targets): 4 volumes, 16^3 fine + 8^3 coarse
    gen3 = torch.Generator().manual_seed(args.seed + 3)
    v_k = softmax_map(torch.randn(4, 16, 16, 16, generator=gen3))
    v_l = softmax_map(torch.randn(4, 8, 8, 8, generator=gen3))
    vg_k, vg_l = torch.randn_like(v_k), torch.randn_like(v_l)
    extra = timeit_round_robin(
        {
            "project_exact_3d_fwd_bwd": fwd_bwd(project_exact, [v_k, v_l], [vg_k, vg_l]),
            "project_exact_fused_3d_fwd_bwd": fwd_bwd(fused, [v_k, v_l], [vg_k, vg_l]),
        },
        number=max(1, n // 4),
        repeats=r,
    )
    res.update(extra)
    for name in extra:
        logger.info("%-36s %10.1f us", name, res[name]["median_s"] * 1e6)

    # agreement of the fast paths (float32 here)
    with torch.no_grad():
        a_k, a_l = project_exact(tau_k, tau_l)
        b_k, b_l = project_exact(tau_k, tau_l, fused=True)
        c_k, c_l = (x.exp() for x in project_exact_log(tau_k.log(), tau_l.log()))
    agreement = {
        "max_abs_diff_fused_vs_autograd": float(max((a_k - b_k).abs().max(), (a_l - b_l).abs().max())),
        "max_abs_diff_log_space_vs_autograd": float(max((a_k - c_k).abs().max(), (a_l - c_l).abs().max())),
    }

    # cvxpy loop (float64, Clarabel at 1e-10) and its error against the closed form
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t64k, t64l = tau_k.double(), tau_l.double()
        res["cvxpy_loop_fwd"] = timeit(lambda: solve_cvx(t64k, t64l), number=1, repeats=args.cvx_repeats, warmup=1)
        ref_k, ref_l = solve_cvx(t64k, t64l)
        ex_k, ex_l = project_exact(t64k, t64l)
    logger.info("%-36s %10.1f us", "cvxpy_loop_fwd", res["cvxpy_loop_fwd"]["median_s"] * 1e6)
    agreement["max_abs_diff_closed_form_vs_cvxpy"] = float(max((ref_k - ex_k).abs().max(), (ref_l - ex_l).abs().max()))

    if args.no_cvxpylayers:
        res["cvxpylayers"] = {"skipped": "--no-cvxpylayers"}
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["cvxpylayers"] = bench_cvxpylayers(tau_k, tau_l, g_k, g_l, repeats=args.cvx_repeats)
            # gradient accuracy on small very peaked maps (logits x15), where it is cheap to run
            pk, pl, _, pgk, pgl = make_inputs(4, 8, 4, seed=args.seed + 1)
            gen = torch.Generator().manual_seed(args.seed + 2)
            pk = softmax_map(15 * torch.randn(4, 8, 8, generator=gen))
            pl = softmax_map(15 * torch.randn(4, 4, 4, generator=gen))
            peaked = bench_cvxpylayers(pk, pl, pgk, pgl, repeats=1)
            res["cvxpylayers"]["peaked_8x8_4x4"] = {k: v for k, v in peaked.items() if k != "fwd_bwd"}
        if "fwd_bwd" in res["cvxpylayers"]:
            logger.info("%-36s %10.1f us", "cvxpylayers_fwd_bwd", res["cvxpylayers"]["fwd_bwd"]["median_s"] * 1e6)

    med = {k: v["median_s"] for k, v in res.items() if isinstance(v, dict) and "median_s" in v}
    ratios = {
        "cvxpy_loop_over_project_exact_fwd_bwd": med["cvxpy_loop_fwd"] / med["project_exact_fwd_bwd"],
        "cvxpy_loop_over_project_exact_fused_fwd_bwd": med["cvxpy_loop_fwd"] / med["project_exact_fused_fwd_bwd"],
        "project_exact_fwd_bwd_over_paper_reparameterization_fwd_bwd": med["project_exact_fwd_bwd"]
        / med["paper_reparameterization_fwd_bwd"],
        "project_exact_fused_fwd_bwd_over_paper_reparameterization_fwd_bwd": med["project_exact_fused_fwd_bwd"]
        / med["paper_reparameterization_fwd_bwd"],
        "project_exact_fused_fwd_over_floor_fwd": med["project_exact_fused_fwd"] / med["floor_elementwise_fwd"],
        "project_exact_fused_fwd_bwd_over_floor_fwd": med["project_exact_fused_fwd_bwd"] / med["floor_elementwise_fwd"],
        "project_exact_fused_fwd_bwd_over_floor_fwd_bwd": med["project_exact_fused_fwd_bwd"]
        / med["floor_elementwise_fwd_bwd"],
        "project_exact_fwd_bwd_over_fused_fwd_bwd": med["project_exact_fwd_bwd"] / med["project_exact_fused_fwd_bwd"],
    }
    if "fwd_bwd" in res.get("cvxpylayers", {}):
        ratios["cvxpylayers_fwd_bwd_over_project_exact_fwd_bwd"] = (
            res["cvxpylayers"]["fwd_bwd"]["median_s"] / med["project_exact_fwd_bwd"]
        )
    targets = {
        "project_exact_fwd_bwd_at_least_1000x_faster_than_cvxpy_loop": ratios["cvxpy_loop_over_project_exact_fwd_bwd"]
        >= 1000,
        "project_exact_fwd_bwd_at_most_1.5x_paper_reparameterization": ratios[
            "project_exact_fwd_bwd_over_paper_reparameterization_fwd_bwd"
        ]
        <= 1.5,
        "fused_fwd_bwd_at_most_1.5x_paper_reparameterization": ratios[
            "project_exact_fused_fwd_bwd_over_paper_reparameterization_fwd_bwd"
        ]
        <= 1.5,
        "stretch_fused_fwd_bwd_within_5x_elementwise_fwd": ratios["project_exact_fused_fwd_bwd_over_floor_fwd"] <= 5,
    }
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    out = {
        "config": {
            "batch": args.batch,
            "fine": [args.fine, args.fine],
            "coarse": [args.coarse, args.coarse],
            "dtype": "float32 (cvxpy: float64)",
            "threads": args.threads,
            "seed": args.seed,
            "repeats": args.repeats,
            "number": args.number,
        },
        "versions": _versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_at_end": load,
        },
        "timings": res,
        "ratios": ratios,
        "targets_met": targets,
        "agreement": agreement,
    }
    atomic_write_json(args.out, out)
    for k, v in ratios.items():
        logger.info("%-66s %10.2f", k, v)
    logger.info("targets: %s", targets)
    logger.info("wrote %s", args.out)
    return out


if __name__ == "__main__":
    main()
