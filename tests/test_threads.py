"""CPU threads chosen so a shared machine is not oversubscribed: the rule, its inputs, the CLI option on every
command that computes, and OpenMP's passive waiting set before torch loads."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dualattn import _threads
from dualattn._threads import ThreadChoice, apply_threads, busy_cores, choose_threads, free_cores

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(
    ("cores", "online", "busy", "expected"),
    [
        (2, 2, 0.0, 2),  # idle
        (2, 2, 0.4, 2),
        (2, 2, 0.6, 1),  # most of a core busy
        (2, 2, 1.0, 1),  # one other job
        (2, 2, 2.0, 1),  # both cores busy: still one thread, never zero
        (2, 2, 9.0, 1),
        (8, 8, 3.0, 5),
        (4, 64, 32.0, 2),  # pinned to 4 of 64 CPUs, half the machine busy
        (1, 1, 0.0, 1),
    ],
)
def test_free_cores_hand_computed(cores, online, busy, expected):
    assert free_cores(cores=cores, online=online, busy=busy) == expected


def test_free_cores_unknown_load_uses_every_core():
    assert free_cores(cores=3, online=3, busy=float("nan")) == 3


def test_choose_threads_precedence():
    assert choose_threads(3, environ={"OMP_NUM_THREADS": "1"}) == ThreadChoice(3, "--threads", "option")
    env = choose_threads(environ={"OMP_NUM_THREADS": "2"}, cores=8, online=8, busy=7.0)
    assert (env.threads, env.source) == (2, "environment")
    free = choose_threads(environ={}, cores=2, online=2, busy=2.0)
    assert (free.threads, free.source) == (1, "free cores") and "2.00 CPUs busy" in free.reason
    assert choose_threads(environ={"OMP_NUM_THREADS": "4,2"}).threads == 4  # OpenMP's nested list
    assert choose_threads(environ={"OMP_NUM_THREADS": "lots"}, cores=2, online=2, busy=0.0).source == "free cores"
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        choose_threads(0)


def test_cpu_counters_parsed_and_busy_share_measured(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
                    "cpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n")
    assert _threads._cpu_times(stat) == (150.0, 1000.0, 2)
    samples = iter([(150.0, 1000.0, 2), (150.0 + 75.0, 1100.0, 2)])  # 75 of 100 ticks busy in the window
    monkeypatch.setattr(_threads, "_cpu_times", lambda path: next(samples))
    busy, how = busy_cores(0.01, stat=stat)
    assert busy == pytest.approx(1.5) and how == "CPU use over 0.01 s"
    monkeypatch.setattr(_threads, "_cpu_times", lambda path: None)
    monkeypatch.setattr(_threads, "load_average", lambda: 0.7)
    assert busy_cores(0.01, stat=stat) == (0.7, "1-minute load average")


def test_busy_cores_reads_this_machine():
    busy, how = busy_cores(0.05)
    assert busy is None or 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9
    assert how


def test_cgroup_quota(tmp_path):
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert _threads._cgroup_cpus(f) == 1.5
    f.write_text("max 100000\n")
    assert _threads._cgroup_cpus(f) is None
    assert _threads._cgroup_cpus(tmp_path / "missing") is None


def test_apply_threads_sets_torch_logs_and_splits_over_processes(monkeypatch, caplog):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with caplog.at_level(logging.INFO, logger="dualattn._threads"):
        choice = apply_threads(2)
    assert torch.get_num_threads() == 2 and choice.threads == 2
    assert "CPU threads: 2 (--threads)" in caplog.text
    assert apply_threads(4, processes=2).threads == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # already a count per process: not split again
    assert apply_threads(None, processes=2).threads == 1


def _run(code: str, env: dict[str, str]) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    full.update(env, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout


def test_passive_waiting_only_when_other_jobs_keep_a_cpu_busy(monkeypatch):
    from dualattn._threads import IDLE_BUSY, prefer_passive_waiting

    monkeypatch.delitem(sys.modules, "torch")  # as before torch loads (only the check reads it)

    env: dict[str, str] = {}
    assert prefer_passive_waiting(env, busy=0.0) is False and "OMP_WAIT_POLICY" not in env  # idle: spin
    assert prefer_passive_waiting(env, busy=IDLE_BUSY + 0.5) is True and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert prefer_passive_waiting({"OMP_WAIT_POLICY": "ACTIVE"}, busy=2.0) is False  # the user's choice stays
    env = {}
    assert prefer_passive_waiting(env, measure=False) is True and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_entry_point_decides_the_waiting_policy_before_torch_loads():
    code = ("import os, sys\nimport dualattn._threads as T\nT.busy_cores = lambda *a, **k: (1.5, 'test')\n"
            "from dualattn.cli import main\nsys.argv = ['dualattn', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('POLICY', os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    assert "POLICY PASSIVE False" in _run(code, {})  # another job keeps 1.5 CPUs busy: threads sleep
    assert "POLICY ACTIVE" in _run(code, {"OMP_WAIT_POLICY": "ACTIVE"})  # the user's choice stays
    late = "import torch\nfrom dualattn._threads import prefer_passive_waiting\nprint(prefer_passive_waiting())"
    assert _run(late, {}).strip() == "False"  # too late once torch is loaded: nothing set


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "explain"])
def test_every_computing_command_has_threads(command):
    from typer.testing import CliRunner

    from dualattn.cli import app

    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--threads" in res.output and "free" in res.output


def test_threads_zero_is_refused(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    res = CliRunner().invoke(app, ["explain", str(tmp_path / "x.png"), "--run", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--threads", "0"])
    assert res.exit_code == 2 and "--threads" in res.output


def test_demo_script_leaves_the_thread_count_and_the_waiting_policy_to_the_entry_point():
    text = (SRC.parent / "scripts" / "demo.sh").read_text()
    assert "export OMP_WAIT_POLICY" not in text
    assert "OMP_NUM_THREADS=" not in text and "--threads" not in text


def test_threads_benchmark_builds_each_policy_and_summarizes(monkeypatch):
    """benchmarks/threads.py (run by hand, minutes): each policy's command line and environment, and the summary."""
    monkeypatch.syspath_prepend(str(SRC.parent / "benchmarks"))
    import threads as bench

    argv, env = bench.command("torch_default", ["demo"], default_threads=2)
    assert argv[1] == "-c" and "--threads=2" in argv and "OMP_WAIT_POLICY" not in env  # no entry point: no PASSIVE
    argv, env = bench.command("torch_default_passive", ["demo"], default_threads=2)
    assert "--threads=2" in argv and env["OMP_WAIT_POLICY"] == "PASSIVE"
    argv, env = bench.command("free_cores", ["demo"], default_threads=2)
    assert not any(a.startswith("--threads") for a in argv) and "OMP_NUM_THREADS" not in env
    argv, _ = bench.command("free_cores_passive", ["demo"], default_threads=2)
    assert argv[1:3] == ["-m", "dualattn"]  # the real entry point, which sets the waiting policy
    rows = [{"state": "busy", "workload": "demo_tiny", "config": "one_thread", "wall_s": w, "threads": 1}
            for w in (3.0, 1.0, 2.0)]
    assert bench.summarize(rows) == {"busy": {"demo_tiny": {"one_thread": {"threads": 1, "median_s": 2.0}}}}
