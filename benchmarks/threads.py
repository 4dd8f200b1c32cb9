"""Wall time of the CLI with each thread policy, on an idle machine and on one whose cores another job keeps busy.

Why: torch starts one OpenMP thread per core whatever else runs; on a busy machine the threads take turns and
every parallel region waits for the slowest (the issue that prompted this: the tiny demo took 138 s with the
default threads and 9 s with one thread on a busy 2-core machine). The CLI now chooses a count from the free
cores and lets idle OpenMP threads sleep (``dualattn._threads``); this script measures the alternatives.

Policies (``--configs``), each a fresh ``dualattn`` process:

- ``torch_default``: what the CLI did before: torch's own count (one per physical core), OpenMP's default
  waiting (no ``OMP_WAIT_POLICY``);
- ``one_thread``: ``--threads 1``;
- ``free_cores``: the new count rule (usable cores minus the CPUs busy over 0.25 s, at least 1), OpenMP's
  default waiting;
- ``torch_default_passive``: torch's count with ``OMP_WAIT_POLICY=PASSIVE``;
- ``free_cores_passive``: the CLI's new default (``python -m dualattn`` without ``--threads``: the count rule
  and passive waiting, set by the entry point).

Workloads (``--workloads``): ``demo_tiny`` (``dualattn demo --preset tiny``, a fresh output folder each time)
and ``explain_64`` (``dualattn explain`` of a 64^3 NIfTI volume, slice by slice, with the tiny demo's exact
run, trained once before the timings with one thread).

States (``--states``): ``idle`` (nothing started; the load before each run is recorded) and ``busy``: one
``python -c 'while True: pass'`` per usable core, started ``--warmup-s`` seconds before the timings and
killed (by pid) afterwards.

Each run records the CPUs other processes kept busy just before it (``busy_cpus_before``, over 0.5 s) and
the 1-minute load: on a shared machine "idle" only means that this script started no load.

Usage:
    python benchmarks/threads.py [--states idle,busy] [--workloads demo_tiny,explain_64] [--repeats 1]
        [--out benchmarks/results/threads.json] [--append --note "what else ran"]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from dualattn._env import versions  # noqa: E402
from dualattn._io import atomic_write_json  # noqa: E402
from dualattn._threads import busy_cores, load_average, usable_cores  # noqa: E402

CONFIGS = ("torch_default", "one_thread", "free_cores", "torch_default_passive", "free_cores_passive")
WORKLOADS = ("demo_tiny", "explain_64")
STATES = ("idle", "busy")
#: the CLI without its entry point (``main()`` sets OMP_WAIT_POLICY; ``app()`` is the command line alone)
_BYPASS = "import sys; from dualattn.cli import app; sys.argv[0] = 'dualattn'; app()"


def torch_default_threads(env: dict[str, str]) -> int:
    """torch's own thread count in a fresh process (one per physical core)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def command(config: str, args: list[str], *, default_threads: int) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one policy (module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["PYTHONWARNINGS"] = "ignore"
    if config == "free_cores_passive":
        return [sys.executable, "-m", "dualattn", *args], env
    threads = {"torch_default": [f"--threads={default_threads}"], "torch_default_passive": [f"--threads={default_threads}"],
               "one_thread": ["--threads=1"], "free_cores": []}[config]
    if config == "torch_default_passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return [sys.executable, "-c", _BYPASS, *args, *threads], env


def workload_args(workload: str, tmp: Path, tag: str) -> list[str]:
    if workload == "demo_tiny":
        return ["demo", "--preset", "tiny", "--out", str(tmp / f"demo-{tag}")]
    if workload == "explain_64":
        return ["explain", str(tmp / "vol64.nii.gz"), "--run", str(tmp / "setup" / "runs" / "exact" / "seed0"),
                "--out", str(tmp / f"explain-{tag}")]
    raise SystemExit(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")


def setup(tmp: Path, workloads: list[str]) -> None:
    """The explain workload's run (the tiny demo, one thread) and its 64^3 volume."""
    if "explain_64" not in workloads:
        return
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    vol = rng.random((64, 64, 64)).astype(np.float32) * 100
    vol[20:30, 30:40, 32:40] += 300
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.5, 1.0])), str(tmp / "vol64.nii.gz"))
    argv, env = command("one_thread", ["demo", "--preset", "tiny", "--out", str(tmp / "setup")], default_threads=1)
    subprocess.run(argv, env=env, capture_output=True, check=True)


def run_one(config: str, workload: str, state: str, tmp: Path, tag: str, *, default_threads: int,
            timeout: float) -> dict:
    argv, env = command(config, workload_args(workload, tmp, tag), default_threads=default_threads)
    load_before = load_average()
    busy_before = busy_cores(0.5)[0]  # CPUs other processes used over 0.5 s (the spinners included)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        rc, err = res.returncode, res.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = None, (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
    wall = time.perf_counter() - t0
    chosen = re.search(r"CPU threads: (\d+) \(([^)]*)\)", err or "")
    row = {"config": config, "workload": workload, "state": state, "wall_s": round(wall, 2), "returncode": rc,
           "timed_out": rc is None, "busy_cpus_before": None if busy_before is None else round(busy_before, 2),
           "load_1min_before": load_before, "load_1min_after": load_average(),
           "threads": int(chosen.group(1)) if chosen else None, "threads_reason": chosen.group(2) if chosen else None}
    if rc not in (0, None):
        row["stderr_tail"] = (err or "")[-800:]
    for out in (tmp / f"demo-{tag}", tmp / f"explain-{tag}"):
        shutil.rmtree(out, ignore_errors=True)
    print(f"{state:5s} {workload:11s} {config:22s} {wall:7.1f} s  threads={row['threads']}  busy={row['busy_cpus_before']}",
          flush=True)
    return row


class Spinners:
    """One busy-looping process per core, started on enter and killed (by pid) on exit."""

    def __init__(self, n: int, warmup_s: float) -> None:
        self.n, self.warmup_s, self.procs = n, warmup_s, []

    def __enter__(self) -> "Spinners":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(self.warmup_s)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def summarize(rows: list[dict]) -> dict:
    """state -> workload -> config -> median wall time (s) and the threads used."""
    out: dict = {}
    for r in rows:
        cell = out.setdefault(r["state"], {}).setdefault(r["workload"], {}).setdefault(r["config"], {"wall_s": []})
        cell["wall_s"].append(r["wall_s"])
        cell["threads"] = r["threads"]
    for workloads in out.values():
        for configs in workloads.values():
            for cell in configs.values():
                cell["median_s"] = round(statistics.median(cell.pop("wall_s")), 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--states", default=",".join(STATES))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds per run")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="busy state: seconds between starting the load and timing")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "threads.json")
    ap.add_argument("--append", action="store_true",
                    help="add these runs to the ones already in --out (another session: e.g. an idle window)")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded with the runs)")
    ap.add_argument("--idle-label", default="idle",
                    help="the name the no-load state's runs get, e.g. 'shared' when other jobs ran meanwhile")
    args = ap.parse_args(argv)
    states = [s for s in args.states.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    configs = [c for c in args.configs.split(",") if c]
    for name, vals, allowed in (("state", states, STATES), ("workload", workloads, WORKLOADS),
                                ("config", configs, CONFIGS)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise SystemExit(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
    cores = usable_cores()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dualattn-threads-") as tmp_name:
        tmp = Path(tmp_name)
        probe_env = command("torch_default", [], default_threads=1)[1]
        default_threads = torch_default_threads(probe_env)
        setup(tmp, workloads)
        for state in states:
            spin = Spinners(cores, args.warmup_s) if state == "busy" else None
            if spin is not None:
                spin.__enter__()
            try:
                k = 0
                for _rep in range(args.repeats):
                    for workload in workloads:
                        for config in configs:  # round robin: load drift hits every policy alike
                            label = args.idle_label if state == "idle" else state
                            row = run_one(config, workload, label, tmp, f"{state}{k}", default_threads=default_threads,
                                          timeout=args.timeout)
                            row["session"] = time.strftime("%Y-%m-%dT%H:%M:%S")
                            if args.note:
                                row["note"] = args.note
                            rows.append(row)
                            k += 1
            finally:
                if spin is not None:
                    spin.__exit__(None, None, None)
    sessions = []
    if args.append and args.out.is_file():
        import json

        previous = json.loads(args.out.read_text(encoding="utf-8"))
        sessions = previous.get("sessions", [previous["setup"]])
        rows = previous["runs"] + rows
    report = {
        "setup": {"states": states, "workloads": workloads, "configs": configs, "repeats": args.repeats,
                  "timeout_s": args.timeout, "busy_warmup_s": args.warmup_s, "busy_load": f"{cores} x `python -c 'while True: pass'`",
                  "torch_default_threads": default_threads,
                  "command": "python benchmarks/threads.py " + " ".join(argv if argv is not None else sys.argv[1:])},
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "usable_cores": cores},
        "versions": versions(),
        "sessions": [*sessions, {"command": "python benchmarks/threads.py " + " ".join(
            argv if argv is not None else sys.argv[1:]), "note": args.note}] if sessions else None,
        "runs": rows,
        "summary": summarize(rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
